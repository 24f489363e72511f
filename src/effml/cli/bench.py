"""``effml bench``: latency and throughput per runtime and batch size."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from effml.cli._common import InputSizeOpt, ModelArg, parse_ints, parse_names


def bench(
    model: ModelArg,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,16",
    iters: Annotated[int, typer.Option(min=1, help="Timed iterations.")] = 20,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed iterations first.")] = 5,
    input_size: InputSizeOpt = None,
    runtimes: Annotated[str, typer.Option(
        help="Comma-separated: eager, channels_last, fused, fused_channels_last, onnxruntime.")
    ] = "eager,channels_last,onnxruntime",
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads (torch and ONNX Runtime).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Time a model (random weights: speed does not depend on them) on random input."""
    from effml.deploy import benchmark
    from effml.zoo import get_entry

    sizes = parse_ints(batch_sizes, "--batch-sizes")
    size = input_size or get_entry(model).preprocess.input_size
    results = benchmark(model, batch_sizes=sizes, input_size=size, runtimes=parse_names(runtimes),
                        warmup=warmup, iters=iters, threads=threads)
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in results], indent=2))
        return
    table = Table(title=f"{model} at {size}x{size}, {results[0].threads} thread(s), {iters} iters",
                  header_style="bold")
    for col in ("runtime", "batch", "p50 (ms)", "p90 (ms)", "images/s"):
        table.add_column(col, justify="left" if col == "runtime" else "right", no_wrap=True)
    for r in results:
        table.add_row(r.runtime, str(r.batch_size), f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}",
                      f"{r.images_per_s:.1f}")
    Console(file=sys.stdout).print(table)
    if get_entry(model).task == "detect":
        typer.echo("timed the network forward (pre-NMS); anchor decoding and NMS are not included "
                   "(benchmarks/detection_speed.py times the whole detector)")

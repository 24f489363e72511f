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
    """Time a model on random input: a zoo name (random weights: speed does not depend on them), a
    spec JSON file or a run directory (e.g. a child exported by `effml supernet export`)."""
    from effml.deploy import benchmark
    from effml.train.run_dir import is_run_dir
    from effml.zoo import get_entry

    sizes = parse_ints(batch_sizes, "--batch-sizes")
    if is_run_dir(model) or model.endswith(".json"):
        from effml.cli._common import resolve_model

        resolved = resolve_model(model, input_size=input_size)
        target, size, task = resolved.net, resolved.preprocess.input_size, resolved.task
    else:
        entry = get_entry(model)
        target, size, task = model, input_size or entry.preprocess.input_size, entry.task
    results = benchmark(target, batch_sizes=sizes, input_size=size, runtimes=parse_names(runtimes),
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
    if task == "detect":
        typer.echo("timed the network forward (pre-NMS); anchor decoding and NMS are not included "
                   "(benchmarks/detection_speed.py times the whole detector)")

"""``effml bench``: latency and throughput per runtime and batch size, optionally against a peer."""

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
    iters: Annotated[int, typer.Option(min=1, help="Timed rounds.")] = 20,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed calls first.")] = 5,
    input_size: InputSizeOpt = None,
    runtimes: Annotated[str | None, typer.Option(
        help="Comma-separated: eager, channels_last, fused, fused_channels_last, compiled "
             "(torch.compile: about a minute to compile), fused_compiled, onnxruntime, int8, openvino "
             "(the extra effml[openvino]). Default: eager, fused_channels_last, compiled, onnxruntime, "
             "int8, and openvino where it is installed.")
    ] = None,
    compare: Annotated[str | None, typer.Option(
        help="Time the same model of a peer library in the same rounds: timm, torchvision or effdet.")
    ] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads (torch and ONNX Runtime).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Time a model on random input: a zoo name (random weights: speed does not depend on them), a
    spec JSON file or a run directory (e.g. a child exported by `effml supernet export`)."""
    from effml.cli._common import load_model
    from effml.deploy.benchmark import RUNTIME_NOTES, benchmark, fastest, ratios
    from effml.deploy.peers import peer_model
    from effml.errors import InputError

    sizes = parse_ints(batch_sizes, "--batch-sizes")
    resolved = load_model(model, input_size=input_size, warn_random=False)
    if compare and resolved.source != "zoo":
        raise InputError(f"--compare needs a zoo model name that the peer library also has; {model} "
                         f"is a {'run directory' if resolved.source == 'run' else 'spec file'}")
    target, size, task = resolved.net, resolved.preprocess.input_size, resolved.task
    peer = peer_model(model, compare) if compare else None
    names = parse_names(runtimes) if runtimes else None
    results = benchmark(target, batch_sizes=sizes, input_size=size, runtimes=names, warmup=warmup,
                        iters=iters, threads=threads, peer=peer, peer_name=compare or "peer",
                        progress=lambda line: typer.echo(line, err=True))
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in results], indent=2))
        return
    ratio = ratios(results)
    table = Table(title=f"{model} at {size}x{size}, {results[0].threads} thread(s), {iters} rounds",
                  header_style="bold")
    columns = ["library", "runtime", "batch", "p50 (ms)", "p90 (ms)", "images/s"]
    if compare:
        columns.append("ratio")
    for col in columns:
        table.add_column(col, justify="left" if col in ("library", "runtime") else "right", no_wrap=True)
    for r in results:
        row = [r.library, r.runtime, str(r.batch_size), f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}", f"{r.images_per_s:.1f}"]
        if compare:
            row.append(f"{ratio[r.runtime, r.batch_size]:.2f}" if r.library != "effml" else "")
        table.add_row(*row)
    Console(file=sys.stdout).print(table)
    for b in sizes:
        ours = fastest(results, "effml", b)
        theirs = fastest(results, compare, b) if compare else None
        if ours and theirs:
            typer.echo(f"batch {b}: fastest effml ({ours.runtime}) vs fastest {compare} ({theirs.runtime}): "
                       f"{theirs.p50_ms / ours.p50_ms:.2f}x")
    for name in dict.fromkeys(r.runtime for r in results):
        if name in RUNTIME_NOTES:
            typer.echo(f"{name}: {RUNTIME_NOTES[name]}")
    if compare:
        typer.echo(f"ratio: {compare}'s p50 over effml's in the same rounds (above 1: effml is faster)")
    if task == "detect":
        typer.echo("timed the network forward (pre-NMS); anchor decoding and NMS are not included "
                   "(benchmarks/detection_speed.py times the whole detector)")

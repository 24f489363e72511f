"""``effml supernet``: train a BigNAS supernet, select children at MACs targets, export a child as an
ordinary run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from effml.cli._common import echo, resumable_config, warn

supernet_app = typer.Typer(
    no_args_is_help=True, add_completion=False,
    help="BigNAS (arXiv 2003.11142): train one supernet, then take children of any size from it "
         "without retraining: train, select, export.")


@supernet_app.command("train")
def train(
    args: Annotated[list[str] | None, typer.Argument(
        help="A supernet YAML (a training config with a `supernet` section), then section.key=value "
             "overrides.", show_default=False)] = None,
    resume: Annotated[Path | None, typer.Option(
        "--resume", help="Continue the supernet run in this directory exactly where it stopped.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
) -> None:
    """Train a supernet with the sandwich rule and inplace distillation (works under torchrun)."""
    from effml.search.oneshot.bignas import load_supernet_config, train_supernet

    cfg = resumable_config(args, resume, load_supernet_config, "supernet", quiet=quiet)
    result = train_supernet(cfg, resume=resume is not None, quiet=quiet)
    echo(f"done: {result.global_step} steps, largest child {result.summary}; run directory {result.run_dir}\n"
         f"  next: effml supernet select {result.run_dir} --flops <MACs>[,<MACs>...]")


FlopsOpt = Annotated[str | None, typer.Option(
    "--flops", help="MACs target(s) (what papers call FLOPs), comma-separated: 1M,2.5M,500K.")]
LatencyOpt = Annotated[str | None, typer.Option(
    "--latency", help="Latency target(s) in ms, comma-separated, predicted by --table.")]
TableOpt = Annotated[Path | None, typer.Option(
    "--table", help="A latency table of the space on this machine (effml search latency-table bignas "
                    "--resolution R --num-classes C), for --latency.")]


def _targets(flops: str | None, latency: str | None, table: Path | None) -> tuple[list[float], object]:
    """The targets and the latency table (None: MACs targets) that the options give."""
    from effml.errors import EffmlError
    from effml.search.oneshot.selection import parse_macs

    if (flops is None) == (latency is None):
        raise EffmlError("give one of --flops (MACs targets) or --latency (ms targets, with --table)")
    if flops is not None:
        return [parse_macs(t) for t in flops.split(",") if t.strip()], None
    if table is None:
        raise EffmlError("--latency needs --table: a latency table of the space measured on this machine")
    from effml.measure.latency_table import load_latency_table

    try:
        targets = [float(t) for t in latency.split(",") if t.strip()]
    except ValueError:
        raise EffmlError(f"--latency {latency!r}: give milliseconds, e.g. 4.5 or 3,5") from None
    if not targets or min(targets) <= 0:
        raise EffmlError(f"--latency {latency!r}: give positive milliseconds")
    return targets, load_latency_table(table)


@supernet_app.command("select")
def select(
    run: Annotated[Path, typer.Argument(help="A supernet run directory (effml supernet train).")],
    flops: FlopsOpt = None,
    latency: LatencyOpt = None,
    table: TableOpt = None,
    coarse_top: Annotated[int, typer.Option(min=1, help="Skeletons scored per target (closest to it).")] = 4,
    mutations: Annotated[int, typer.Option(min=0, help="Random mutations of the best scored per target.")] = 12,
    seed: Annotated[int, typer.Option(help="Seed of the mutations.")] = 0,
) -> None:
    """Coarse-to-fine selection of the best child at each target, scored on the held-out images with the
    shared weights after BN calibration; writes RUN/selection.json and RUN/selection.png."""
    import json

    from effml.files import atomic_write_text
    from effml.search.oneshot.bignas import load_supernet, select_child
    from effml.search.oneshot.selection import describe_cost, merge_selections, plot_selection
    from effml.train.trainer import preserved_global_state

    targets, lut = _targets(flops, latency, table)
    with preserved_global_state():
        trained = load_supernet(run)
        results = []
        for target in targets:
            echo(f"target {describe_cost(target, 'MACs' if lut is None else 'ms')}:")
            results.append(select_child(trained, target, table=lut, coarse_top=coarse_top, mutations=mutations,
                                        seed=seed, echo=echo))
    echo(f"{'target':>12} {'MMACs':>7} {'res':>4} {'held-out top-1':>15}")
    for s in results:
        echo(f"{describe_cost(s.target, s.unit):>12} {s.best.macs / 1e6:7.3f} {s.best.spec.resolution:>4} "
             f"{s.best.score:14.2f}%")
    path = run / "selection.json"
    try:
        earlier = json.loads(path.read_text()) if path.is_file() else []
    except (OSError, ValueError) as err:
        warn(f"{path} is unreadable ({err}); it is replaced by this selection")
        earlier = []
    records, replaced = merge_selections(earlier, [s.to_dict() for s in results])
    atomic_write_text(path, json.dumps(records, indent=2))
    plot_selection([r for r in records if r["unit"] == results[0].unit], run / "selection.png")
    kept = len(records) - len(results)
    if kept or replaced:
        echo(f"selection.json keeps {kept} selection(s) at other targets" +
             (f" and replaces {replaced} at these targets" if replaced else ""))
    first = f"--flops {flops.split(',')[0]}" if flops else f"--latency {latency.split(',')[0]} --table {table}"
    echo(f"wrote {path} and {run / 'selection.png'}\n"
         f"  next: effml supernet export {run} {first} -o CHILD_DIR")


@supernet_app.command("export")
def export(
    run: Annotated[Path, typer.Argument(help="A supernet run directory (effml supernet train, or a TuNAS "
                                              "search's proxy.run.dir).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The run directory to write (must not exist).")],
    flops: Annotated[str | None, typer.Option(
        "--flops", help="Select the best child within this many MACs (e.g. 2M) and export it.")] = None,
    latency: Annotated[str | None, typer.Option(
        "--latency", help="Select the best child within this many ms (predicted by --table).")] = None,
    table: TableOpt = None,
    child: Annotated[Path | None, typer.Option(
        "--child", help="Export this child spec (JSON, e.g. from selection) instead of selecting.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the selection's mutations.")] = 0,
) -> None:
    """Write a child as an ordinary run directory (plain spec, sliced and BN-calibrated weights) that
    effml predict / eval / bench / export and effml train (fine-tuning) take like any run."""
    import json

    from effml.errors import EffmlError
    from effml.search.oneshot.bignas import export_child, select_child
    from effml.search.oneshot.tunas import is_tunas_run, load_trained_supernet
    from effml.train.trainer import preserved_global_state
    from effml.zoo import load_spec

    if child is not None and (flops or latency):
        raise EffmlError("give --child SPEC.json or a target (--flops / --latency), not both")
    if child is None and is_tunas_run(run):
        raise EffmlError(f"{run} is a TuNAS search: export the child it found with --child "
                         f"{run / 'found_model.json'} (or any member of its space)")
    targets, lut = _targets(flops, latency, table) if child is None else ([], None)
    if len(targets) > 1:
        raise EffmlError("export writes one child: give one target")
    with preserved_global_state():
        trained = load_trained_supernet(run)
        if child is not None:
            spec = load_spec(child)
        else:
            spec = select_child(trained, targets[0], table=lut, seed=seed, echo=echo).best.spec
        written = export_child(trained, spec, out)
    info = json.loads((written / "run.json").read_text())
    task = trained.trainer.task
    echo(f"wrote {written}: {info['macs'] / 1e6:.3f}M MACs, {info['params'] / 1e6:.3f}M params, "
         f"{info['input_size']} px; val {task.describe(info['val'])}; held-out {task.describe(info['holdout'])}\n"
         f"  try: effml eval {written}")

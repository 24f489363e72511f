"""``effml train`` and ``effml eval``: the training engine and run evaluation from the shell."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer


def train(
    args: Annotated[list[str] | None, typer.Argument(
        help="An optional YAML config file, then section.key=value overrides "
             "(e.g. train.epochs=5 data.batch_size=32).", show_default=False)] = None,
    resume: Annotated[Path | None, typer.Option(
        "--resume", help="Continue the run in this directory exactly where it stopped.")] = None,
    show_config: Annotated[bool, typer.Option(
        "--show-config", help="Print every config field with its default and meaning, and exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
) -> None:
    """Train a model (default: the embedded digits data set); works under torchrun for DDP.

    With --resume RUN, the run's saved config is the base, a config file and overrides change it
    (only what its checkpoint does not depend on: more epochs, intervals, workers...), and RUN is
    the run directory whatever run.dir they give."""
    from effml.cli._common import resumable_config
    from effml.train.config import describe_config
    from effml.train.engine import fit

    if show_config:
        typer.echo(describe_config())
        return
    cfg = resumable_config(args, resume, quiet=quiet)
    result = fit(cfg, resume=resume is not None, quiet=quiet)
    typer.echo(f"done: {result.global_step} steps, {result.summary}; run directory {result.run_dir}")


def evaluate_run(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `effml train`.")],
    weights: Annotated[str, typer.Option(help="best (EMA if kept), ema or raw.")] = "best",
    pgd_epsilon: Annotated[float | None, typer.Option(
        help="Classification: also report accuracy under an L-inf PGD attack of this radius "
             "(0-255 pixel units).")] = None,
    pgd_steps: Annotated[int | None, typer.Option(help="PGD iterations (default: epsilon + 1).")] = None,
    pgd_step_size: Annotated[float, typer.Option(help="PGD step in pixel units.")] = 1.0,
    onnx: Annotated[Path | None, typer.Option(
        help="Evaluate this exported model of the run instead (ONNX, fp32 or int8 from `effml export "
             "--int8`, or an OpenVINO .xml): its accuracy against the val labels, not only its agreement "
             "with fp32.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Evaluate a trained run on its validation set: top-1/top-5 (optionally under PGD) for a
    classifier, COCO AP/AR for a detector (all in percent)."""
    import torch

    from effml.train.data import build_datasets, run_eval_loader
    from effml.train.run_dir import load_run, read_run_config
    from effml.train.tasks import task_for

    for name, value, low in (("--pgd-epsilon", pgd_epsilon, 0.0), ("--pgd-step-size", pgd_step_size, None)):
        if value is not None and not (math.isfinite(value) and (value >= 0 if low == 0.0 else value > 0)):
            raise typer.BadParameter(f"{name} must be a finite number {'>= 0' if low == 0.0 else '> 0'} "
                                     f"(pixel units, 0-255), got {value}")
    if pgd_steps is not None and pgd_steps < 1:  # 0 steps: no attack, a 'pgd' accuracy equal to the clean one
        raise typer.BadParameter(f"--pgd-steps must be 1 or more (PGD iterations), got {pgd_steps}")
    trained = load_run(run_dir, weights)
    if onnx is not None and pgd_epsilon is not None:
        raise typer.BadParameter("--pgd-epsilon attacks the PyTorch model through its gradients; give it "
                                 "without --onnx")
    if trained.task == "detect" and pgd_epsilon is not None:
        from effml.errors import EffmlError

        raise EffmlError(f"--pgd-epsilon evaluates classifiers under attack; {run_dir} is a detection "
                         f"run. Drop --pgd-epsilon to get its COCO AP")
    cfg = read_run_config(run_dir)
    bundle = build_datasets(cfg, trained.preprocess)
    loader = run_eval_loader(cfg, bundle.val)
    network = None
    if onnx is not None:
        from effml.cli._common import fast_network

        network = fast_network(trained.model, trained.preprocess.input_size, onnx, False)
    metrics = task_for(trained.spec).evaluate(cfg, trained.model, loader, torch.device("cpu"), bundle.val,
                                              network=network)
    source = str(onnx if onnx is not None else trained.weights_path)
    if trained.task == "detect":
        _print_detection_metrics(run_dir, source, metrics, as_json)
        return
    result: dict[str, object] = {"weights": source, "clean": metrics}
    if pgd_epsilon is not None:
        from effml.train.advprop import PGDAttacker, evaluate_under_attack

        attacker = PGDAttacker(epsilon=pgd_epsilon, step_size=pgd_step_size, steps=pgd_steps)
        batches = ((x, y) for x, y, *_ in loader)
        result["pgd"] = {"epsilon": pgd_epsilon, **evaluate_under_attack(
            trained.model, batches, attacker, trained.preprocess.mean, trained.preprocess.std)}
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    clean = result["clean"]
    typer.echo(f"{run_dir} ({Path(str(result['weights'])).name}): top-1 {clean['top1']:.2f}% "  # type: ignore[index]
               f"top-5 {clean['top5']:.2f}% on {clean['count']} images")  # type: ignore[index]
    if "pgd" in result:
        typer.echo(f"under PGD: {json.dumps(result['pgd'])}")


# The COCO summary rows `effml eval` prints for a detection run (the JSON has all twelve).
_DETECTION_ROWS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


def _print_detection_metrics(run_dir: Path, source: str, metrics: dict[str, Any], as_json: bool) -> None:
    """A detection run's COCO AP/AR (percent) on its val set (evaluated with the NMS settings it was
    trained with); ``source``: the weights or exported model evaluated."""
    import math
    import sys

    from rich.console import Console
    from rich.table import Table

    # NaN where COCO has no ground truth in an area range: JSON gets null, the table "n/a".
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    if as_json:
        typer.echo(json.dumps({"weights": source, "task": "detect", "coco": clean}, indent=2))
        return
    typer.echo(f"{run_dir} ({Path(source).name}): COCO box metrics on "
               f"{int(metrics.get('count', 0))} val images")
    table = Table(header_style="bold")
    table.add_column("metric", no_wrap=True)
    table.add_column("value (%)", justify="right")
    for key in _DETECTION_ROWS:
        value = clean.get(key)
        table.add_row(key, "n/a" if value is None else f"{value:.1f}")
    Console(file=sys.stdout, width=120).print(table)

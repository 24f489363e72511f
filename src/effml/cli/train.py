"""``effml train`` and ``effml eval``: the training engine and run evaluation from the shell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

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
    """Train a model (default: the embedded digits data set); works under torchrun for DDP."""
    from effml.train.config import describe_config, load_config
    from effml.train.engine import fit

    if show_config:
        typer.echo(describe_config())
        return
    args = list(args or [])
    config_file = None
    if args and "=" not in args[0]:
        config_file = args.pop(0)
    bad = [a for a in args if "=" not in a]
    if bad:
        raise typer.BadParameter(f"{bad[0]!r}: overrides are section.key=value; only the first "
                                 f"argument may be a config file")
    if resume is not None:
        saved = resume / "config.yaml"
        if not saved.is_file():
            from effml.errors import EffmlError

            raise EffmlError(f"{resume} has no config.yaml: not a run directory written by effml train")
        cfg = load_config(saved, [*args, f"run.dir={resume}"])
        if config_file:
            cfg = load_config(config_file, args, base=cfg)
    else:
        cfg = load_config(config_file, args)
    result = fit(cfg, resume=resume is not None, quiet=quiet)
    line = f"done: {result.global_step} steps, val top-1 {result.val.get('top1', float('nan')):.2f}%"
    if result.ema_val:
        line += f", EMA top-1 {result.ema_val['top1']:.2f}%"
    typer.echo(f"{line}; run directory {result.run_dir}")


def evaluate_run(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `effml train`.")],
    weights: Annotated[str, typer.Option(help="best (EMA if kept), ema or raw.")] = "best",
    pgd_epsilon: Annotated[float | None, typer.Option(
        help="Also report accuracy under an L-inf PGD attack of this radius (0-255 pixel units).")] = None,
    pgd_steps: Annotated[int | None, typer.Option(help="PGD iterations (default: epsilon + 1).")] = None,
    pgd_step_size: Annotated[float, typer.Option(help="PGD step in pixel units.")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Evaluate a trained run on its validation set (top-1/top-5; optionally under PGD)."""
    import torch

    from effml.train.config import load_config
    from effml.train.data import build_datasets, eval_loader
    from effml.train.evaluate import evaluate
    from effml.train.run_dir import load_run

    trained = load_run(run_dir, weights)
    cfg = load_config(run_dir / "config.yaml")
    bundle = build_datasets(cfg, trained.preprocess)
    loader = eval_loader(bundle.val, cfg.data.eval_batch_size or cfg.data.batch_size, cfg.data.workers, 0, 1)
    result: dict[str, object] = {"weights": str(trained.weights_path),
                                 "clean": evaluate(trained.model, loader, torch.device("cpu"))}
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

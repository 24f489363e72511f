"""Small helpers shared by the command modules: list parsing, stderr output, MODEL arguments."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from effml.errors import EffmlError

if TYPE_CHECKING:
    from torch import nn

    from effml.train.resolve import ResolvedModel


def parse_ints(value: str, what: str) -> list[int]:
    """'1,16' -> [1, 16]; a usage error naming the option otherwise."""
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated integers, got {value!r}") from None
    if not items or any(i < 1 for i in items):
        raise typer.BadParameter(f"{what} must be integers >= 1, got {value!r}")
    return items


def parse_floats3(value: str, what: str, *, positive: bool = False) -> tuple[float, float, float]:
    """'0.5,0.5,0.5' -> (0.5, 0.5, 0.5): one finite value per RGB channel (``positive``: each > 0,
    as a standard deviation that divides)."""
    try:
        items = tuple(float(v) for v in value.split(","))
    except ValueError:
        items = ()
    if len(items) != 3:
        raise typer.BadParameter(f"{what} needs three comma-separated numbers (R,G,B), got {value!r}")
    if not all(math.isfinite(v) for v in items):
        raise typer.BadParameter(f"{what} needs finite numbers, got {value!r}")
    if positive and min(items) <= 0:
        raise typer.BadParameter(f"{what} divides the pixels: each value must be above 0, got {value!r}")
    return items  # type: ignore[return-value]


def parse_names(value: str) -> list[str]:
    """'a, b' -> ['a', 'b']."""
    return [v.strip() for v in value.split(",") if v.strip()]


def split_config_args(args: list[str] | None) -> tuple[str | None, list[str]]:
    """``[CONFIG] KEY=VALUE...``: the config file (if the first argument is one) and the overrides."""
    args = list(args or [])
    config_file = args.pop(0) if args and "=" not in args[0] else None
    bad = [a for a in args if "=" not in a]
    if bad:
        raise typer.BadParameter(f"{bad[0]!r}: overrides are section.key=value; only the first argument "
                                 f"may be a config file")
    return config_file, args


def resumable_config(args: list[str] | None, resume: Path | None, load: Callable[..., Any] | None = None,
                     what: str = "training", *, quiet: bool = False) -> Any:
    """The config of a command with ``--resume RUN``: ``load(config file, overrides)`` (default: a
    training config), or with RUN its saved config under them and ``run.dir`` set to RUN whatever
    they say (``what`` names the run in errors)."""
    from effml.train.config import config_from_dict, load_config

    load = load or load_config
    config_file, overrides = split_config_args(args)
    if resume is None:
        return load(config_file, overrides)
    saved = _saved_config(resume, load, what, quiet)
    cfg = load(config_file, overrides, base=saved)
    if cfg.run.dir != saved.run.dir and Path(cfg.run.dir).resolve() != resume.resolve() and not quiet:
        typer.echo(f"note: --resume {resume} continues that run; run.dir={cfg.run.dir} from the config "
                   f"file or overrides is ignored", err=True)
    return config_from_dict({"run": {"dir": str(resume)}}, cfg)


def _saved_config(run: Path, load: Callable[..., Any], what: str, quiet: bool) -> Any:
    """RUN's saved config: a training run's ``config.yaml`` or, when it is missing, the copy in its
    checkpoint; a training config plus a section (supernet, AutoHAS) from its ``config.yaml``."""
    from effml.train.config import load_config
    from effml.train.run_dir import CONFIG_YAML, read_run_config

    if load is not load_config:
        if not (run / CONFIG_YAML).is_file():
            raise EffmlError(f"--resume {run}: no {what} run there (no {CONFIG_YAML})")
        import yaml

        section = what.lower()  # the config section of that kind of run: supernet, autohas
        try:
            saved = yaml.safe_load((run / CONFIG_YAML).read_text())
        except (OSError, yaml.YAMLError):
            saved = None  # ``load`` says what is wrong with it
        if isinstance(saved, dict) and section not in saved:
            raise EffmlError(f"--resume {run}: this is no {what} run (its {CONFIG_YAML} has no {section}: "
                             f"section); resume a run with the command that made it (a training run: effml "
                             f"train --resume {run})")
        return load(run / CONFIG_YAML, saved=True)
    if not run.is_dir():
        raise EffmlError(f"--resume {run}: no such run directory")
    if not (run / CONFIG_YAML).is_file() and (run / "checkpoints" / "last.pt").is_file() and not quiet:
        typer.echo(f"note: {run / CONFIG_YAML} is missing; resuming with the config recorded in its "
                   f"checkpoint", err=True)
    return read_run_config(run)


def echo(text: str = "") -> None:
    """A line on stdout: a closed pipe (``| head``) ends the command quietly; a full disk or
    another write error is an ``InputError``, not a traceback."""
    try:
        typer.echo(text)
    except BrokenPipeError:
        _detach_stdout()
        raise typer.Exit(0) from None
    except OSError as e:
        _detach_stdout()
        from effml.files import os_error

        raise os_error(e, "write the output to", "standard output") from None


def _detach_stdout() -> None:
    # What could not be written stays in the buffer; Python's exit would retry it and print a
    # second error, so stdout is pointed at the null device.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def warn(message: str) -> None:
    """A warning line on stderr."""
    typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW, bold=True)


def warn_random_weights(model: str) -> None:
    """The loud notice that a model runs with its random initial weights."""
    warn(f"no --weights given: {model} has RANDOM weights, its outputs are meaningless. "
         f"Pass --weights PATH (a timm or effml checkpoint) for real predictions.")


# Options shared by several commands.
ModelArg = Annotated[str, typer.Argument(
    help="Model name (efficientnet_b0; with a weight tag: tf_efficientnet_b0.ap_in1k), a spec JSON "
         "file, or a run directory written by `effml train`.")]
WeightsOpt = Annotated[Path | None, typer.Option(
    "--weights", "-w", help="Checkpoint: timm or effml safetensors / state_dict.")]
InputSizeOpt = Annotated[int | None, typer.Option(
    min=8, help="Image size (default: the size the model's weights are evaluated at).")]
OnnxRunOpt = Annotated[Path | None, typer.Option(
    "--onnx", help="Run this ONNX file (from `effml export`, fp32 or --int8) in ONNX Runtime, or this "
                   "OpenVINO IR (.xml from `effml export --openvino`) in OpenVINO, instead of the "
                   "PyTorch network; MODEL still gives the preprocessing and labels.")]
FastOpt = Annotated[bool, typer.Option(
    "--fast", help="Export the network to ONNX first and run it in ONNX Runtime, the fastest CPU "
                   "path measured (README, Benchmarks). The export takes 10-30 s, so this pays off "
                   "over hundreds of images; for repeated use, `effml export` once and pass --onnx.")]
NumClassesOpt = Annotated[int | None, typer.Option(
    min=1, help="Classes of the checkpoint (default: the model's: 1000 for ImageNet classifiers, "
         "90 for COCO detectors).")]


def load_model(model: str, *, weights: Path | None = None, num_classes: int | None = None,
               input_size: int | None = None, task: str | None = None,
               warn_random: bool = True) -> ResolvedModel:
    """A MODEL argument resolved (``effml.train.resolve``) and built, in ``net``: a run directory
    (its weights unless ``weights`` is given), a spec JSON file or a registered model name.

    A detector is built at ``input_size`` (its spec's image size otherwise); a classifier keeps its
    spec and is only fed images of that size. Random weights get the loud warning (unless
    ``warn_random`` is false). ``task`` ("classify" / "detect") refuses a model of the other task,
    before building it.
    """
    from effml.train.resolve import resolve_model
    from effml.zoo import resolve_spec

    resolved = resolve_model(model, weights=weights)
    _check_task(model, resolved.task, task)
    _check_num_classes(model, resolved, num_classes)
    preprocess = replace(resolved.preprocess, input_size=input_size) if input_size else resolved.preprocess
    resolution = input_size if resolved.task == "detect" else None
    net = resolved.build(resolve_spec(resolved.spec, num_classes=num_classes, resolution=resolution)).eval()
    if resolved.weights is None and warn_random:
        warn_random_weights(model)
    return replace(resolved, preprocess=preprocess, net=net)


def _check_num_classes(model: str, resolved: ResolvedModel, num_classes: int | None) -> None:
    """``--num-classes`` builds a zoo name or spec file with that many classes; a run directory's
    network is already built with its own (``ResolvedModel.build`` keeps it): refuse another count."""
    if num_classes is None or resolved.net is None:
        return
    ours = getattr(resolved.net, "num_classes", None)
    if isinstance(ours, int) and ours != num_classes:
        what = "a run directory whose model" if resolved.source == "run" else "a built network that"
        raise EffmlError(f"--num-classes {num_classes}: {model} is {what} has {ours} classes; --num-classes "
                         f"applies to zoo names and spec JSON files: drop it")


def _check_task(model: str, kind: str, wanted: str | None) -> None:
    if wanted is None or kind == wanted:
        return
    if kind == "classify":
        raise EffmlError(f"{model} is a classification model; `effml detect` takes detection models "
                         f"(`effml models --task detect` lists them). Classify images with "
                         f"`effml predict {model} IMAGE...`")
    raise EffmlError(f"{model} is a detection model; `effml predict` takes classification models. "
                     f"Detect objects with `effml detect {model} IMAGE...`")


def fast_network(net: nn.Module, input_size: int, onnx: Path | None, fast: bool):
    """What runs the network: for ``--onnx FILE`` an OpenVINO runner (an IR, ``.xml``) or an ONNX
    Runtime one, for ``--fast`` an ONNX Runtime one, else None (the PyTorch network itself). ONNX
    Runtime's threads do not spin between calls: PyTorch pre- and post-processing run in between
    (measured on SSDLite, benchmarks/deploy_speed.py)."""
    from effml.deploy.openvino_runtime import IR_SUFFIX, OpenVinoRunner
    from effml.deploy.runtime import OnnxRunner, onnx_runner
    from effml.measure.onnx import model_in_channels

    if onnx is not None:
        if fast:
            raise EffmlError("give --onnx FILE or --fast, not both (--fast exports the model itself)")
        runner = OpenVinoRunner(onnx) if onnx.suffix == IR_SUFFIX else OnnxRunner(onnx, spin=False)
        runner.check_input(model_in_channels(net), input_size, input_size)
        if isinstance(getattr(net, "num_classes", None), int):
            runner.check_classes(net.num_classes)
        return runner
    return onnx_runner(net, input_size, spin=False) if fast else None

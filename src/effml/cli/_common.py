"""Small helpers shared by the command modules: list parsing, stderr output."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def parse_ints(value: str, what: str) -> list[int]:
    """'1,16' -> [1, 16]; a usage error naming the option otherwise."""
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated integers, got {value!r}") from None
    if not items or any(i < 1 for i in items):
        raise typer.BadParameter(f"{what} must be integers >= 1, got {value!r}")
    return items


def parse_floats3(value: str, what: str) -> tuple[float, float, float]:
    """'0.5,0.5,0.5' -> (0.5, 0.5, 0.5): one value per RGB channel."""
    try:
        items = tuple(float(v) for v in value.split(","))
    except ValueError:
        items = ()
    if len(items) != 3:
        raise typer.BadParameter(f"{what} needs three comma-separated numbers (R,G,B), got {value!r}")
    return items  # type: ignore[return-value]


def parse_names(value: str) -> list[str]:
    """'a, b' -> ['a', 'b']."""
    return [v.strip() for v in value.split(",") if v.strip()]


def warn(message: str) -> None:
    """A warning line on stderr."""
    typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW, bold=True)


def warn_random_weights(model: str) -> None:
    """The loud notice that a model runs with its random initial weights."""
    warn(f"no --weights given: {model} has RANDOM weights, its outputs are meaningless. "
         f"Pass --weights PATH (a timm or effml checkpoint) for real predictions.")


# Options shared by several commands.
ModelArg = Annotated[str, typer.Argument(
    help="Model name (efficientnet_b0; with a weight tag: tf_efficientnet_b0.ap_in1k) "
         "or a run directory written by `effml train`.")]
WeightsOpt = Annotated[Path | None, typer.Option(
    "--weights", "-w", help="Checkpoint: timm or effml safetensors / state_dict.")]
InputSizeOpt = Annotated[int | None, typer.Option(
    min=8, help="Image size (default: the size the model's weights are evaluated at).")]
NumClassesOpt = Annotated[int | None, typer.Option(
    help="Classifier size of the checkpoint (default: the model's, 1000).")]

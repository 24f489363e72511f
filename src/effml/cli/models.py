"""``effml models``: the zoo as a table of size and cost."""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from enum import Enum
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from effml.zoo import get_entry, list_models
from effml.zoo.profile import ModelProfile, profile_model


class Task(str, Enum):
    """What a model does."""

    classify = "classify"
    detect = "detect"


def models(
    pattern: Annotated[str, typer.Argument(
        help="Glob over model names ('tf_*_b?'); without wildcards, a substring ('mixnet').")] = "*",
    no_macs: Annotated[bool, typer.Option("--no-macs", help="Skip counting MACs (faster).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    task: Annotated[Task | None, typer.Option(
        help="Only models of this task: classify (effml predict) or detect (effml detect).")] = None,
) -> None:
    """List models with task, family, parameters, MACs at the default resolution and that resolution."""
    glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    names = list_models(glob)
    if task is not None:
        names = [n for n in names if get_entry(n).task == task.value]
    if not names:
        what = f"{task.value} model" if task is not None else "model"
        typer.echo(f"no {what} matches {pattern!r}; run `effml models` to list all", err=True)
        raise typer.Exit(1)
    err = Console(stderr=True)
    profiles: list[ModelProfile] = []
    with err.status("counting parameters and MACs...", spinner="dots") if err.is_terminal else nullcontext():
        for name in names:
            profiles.append(profile_model(name, macs=not no_macs))
    if as_json:
        typer.echo(json.dumps([{**p.as_dict(), "task": get_entry(p.name).task} for p in profiles], indent=2))
        return
    table = Table(title=None, header_style="bold")
    table.add_column("model", no_wrap=True)
    table.add_column("task")
    table.add_column("family")
    table.add_column("params (M)", justify="right")
    if not no_macs:
        table.add_column("MACs (G)", justify="right")
    table.add_column("resolution", justify="right")
    for p in profiles:
        row = [p.name, get_entry(p.name).task, p.family, f"{p.params / 1e6:.2f}"]
        if not no_macs:
            row.append(f"{(p.macs or 0) / 1e9:.3f}")
        row.append(str(p.resolution))
        table.add_row(*row)
    out = Console(file=sys.stdout)
    if not out.is_terminal:  # piped: don't squeeze the table into 80 columns
        out = Console(file=sys.stdout, width=120)
    out.print(table)

"""The ``effml`` app: registers the command groups and turns every ``EffmlError`` into one line."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from effml.cli.autohas import autohas
from effml.cli.bench import bench
from effml.cli.detect import detect
from effml.cli.export import export
from effml.cli.models import models
from effml.cli.predict import predict
from effml.cli.search import search_app
from effml.cli.supernet import supernet_app
from effml.cli.train import evaluate_run, train
from effml.errors import EffmlError

USER_ERROR_EXIT = 2


def _terminate_cleanly() -> None:
    """SIGTERM (``kill``, a job scheduler, torchrun stopping its workers) ends a command as Ctrl-C
    does: by an exception, so that what it was writing is removed or left whole (temporary files,
    run locks) instead of the process vanishing mid-write. A handler someone else installed is kept."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


class _EffmlGroup(TyperGroup):
    """The one place user errors are reported: ``error: <message>`` on stderr, exit code 2."""

    def invoke(self, ctx: click.Context) -> object:
        _terminate_cleanly()
        try:
            return super().invoke(ctx)
        except EffmlError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(USER_ERROR_EXIT) from None


app = typer.Typer(
    name="effml", cls=_EffmlGroup, no_args_is_help=True, add_completion=False, rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
    help="Efficient vision models (EfficientNet, EfficientNet-Lite, MixNet, EfficientDet): list, train, eval, predict, detect, bench, export, search, supernet, autohas.",
)


def _version(value: bool) -> None:
    if value:
        from effml import __version__

        typer.echo(f"effml {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Efficient vision models (EfficientNet, EfficientNet-Lite, MixNet, EfficientDet): list, train, eval, predict, detect, bench, export, search, supernet, autohas."""


app.command("models")(models)
app.command("predict")(predict)
app.command("detect")(detect)
app.command("bench")(bench)
app.command("export")(export)
app.command("train")(train)
app.command("eval")(evaluate_run)
app.command("autohas")(autohas)
app.add_typer(search_app, name="search")
app.add_typer(supernet_app, name="supernet")

if __name__ == "__main__":
    app()

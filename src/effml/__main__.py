"""``python -m effml`` (and ``torchrun -m effml train ...``) runs the command-line tool."""

from effml.cli.main import app

app()

"""The one small error hierarchy: every user mistake surfaces as an ``EffmlError``."""

from __future__ import annotations


class EffmlError(Exception):
    """Base class: a message that says what was wrong, where, and what to do."""


class SpecError(EffmlError, ValueError):
    """A network spec, block string or spec JSON is malformed."""


class UnknownModelError(EffmlError, KeyError):
    """A model name is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsError(EffmlError):
    """A checkpoint cannot be read, is unsafe, or does not fit the model."""


class InputError(EffmlError):
    """An input file (image, path) is missing or unreadable."""


class ExportError(EffmlError):
    """An export did not produce a model that matches PyTorch."""


class SearchError(EffmlError, ValueError):
    """A search space, search config, study or latency table is invalid or does not fit."""

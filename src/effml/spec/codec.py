"""One codec for every spec: frozen dataclasses <-> JSON-ready dicts, driven by the fields' types.

Nested specs become objects, tuples become lists, and every ``BlockSpec`` is written in the block
notation (``ir_r2_k5_s2_e6_c40_se0.25``), so a NetworkSpec's stages read as the architecture
table they are. Decoding checks every key against the dataclass: an unknown key, a missing
required one or a value of the wrong type is a ``SpecError`` naming its path
(``backbone.stages[3][0]``) and what to do. The JSON tag of a top-level spec (its kind) is the
zoo's business (``effml.zoo.kinds``); this module knows no families.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, TypeVar, Union

from effml.errors import SpecError
from effml.spec.blocks import BlockSpec
from effml.spec.notation import format_block, parse_block

T = TypeVar("T")

# Types written as a string rather than an object: (encode, decode).
_AS_STRING: dict[type, tuple[Any, Any]] = {BlockSpec: (format_block, parse_block)}


def to_dict(spec: Any) -> dict[str, Any]:
    """A JSON-ready dict of a spec dataclass (nested specs as dicts, tuples as lists)."""
    if not dataclasses.is_dataclass(spec) or isinstance(spec, type):
        raise SpecError(f"expected a spec (a dataclass instance), got {type(spec).__name__}")
    return {f.name: _encode(getattr(spec, f.name)) for f in dataclasses.fields(spec) if f.init}


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Rebuild a ``cls`` spec from ``to_dict`` output; errors name the offending key's path."""
    if not isinstance(data, dict):
        raise SpecError(f"{_at(path)}expected a JSON object for {cls.__name__}, got {_what(data)}")
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise SpecError(f"unknown key {_join(path, unknown[0])!r} for {cls.__name__}; "
                        f"known keys are {sorted(known)}")
    missing = [name for name, f in known.items() if name not in data and _required(f)]
    if missing:
        raise SpecError(f"missing required key {_join(path, missing[0])!r} for {cls.__name__}")
    hints = _hints(cls)
    kwargs = {name: _decode(hints[name], value, _join(path, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except SpecError as err:
        raise SpecError(f"{_at(path)}{err}") from None
    except (TypeError, ValueError) as err:
        raise SpecError(f"{_at(path)}invalid {cls.__name__} ({err})") from None


def _encode(value: Any) -> Any:
    for kind, (encode, _) in _AS_STRING.items():
        if isinstance(value, kind):
            return encode(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    return value


def _decode(hint: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _decode(arg, value, path)
            except SpecError as err:
                errors.append(str(err))
        raise SpecError(errors[0] if len(errors) == 1 else
                        f"{path}: {_what(value)} fits none of {' | '.join(map(_name, args))}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"{path}: expected a list, got {_what(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise SpecError(f"{path}: expected a list of {len(args)} values, got {len(value)}")
        return tuple(_decode(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if hint in _AS_STRING:
        if not isinstance(value, str):
            raise SpecError(f"{path}: expected a block string such as 'ir_r1_k3_s1_e6_c16', got {_what(value)}")
        try:
            return _AS_STRING[hint][1](value)
        except SpecError as err:
            raise SpecError(f"{path}: {err}") from None
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    return _decode_scalar(hint, value, path)


def _decode_scalar(hint: Any, value: Any, path: str) -> Any:
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    else:
        raise SpecError(f"{path}: the codec cannot read fields of type {_name(hint)}")
    if not ok:
        raise SpecError(f"{path}: expected {_name(hint)}, got {_what(value)}")
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _at(path: str) -> str:
    return f"{path}: " if path else ""


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _what(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"

"""A config schema in words: the JSON schema pydantic derives from it, a field's type and allowed
values as a YAML file writes them, and pydantic's validation errors as one line that names the key,
what was wrong and what is allowed (``effml.train.config``'s ``ConfigError``, a search space file's
errors). Works for any pydantic dataclass or model; ``describe_config`` prints a whole schema with it.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError


@functools.cache
def adapter(schema: type) -> TypeAdapter:
    """pydantic's adapter of ``schema`` (built once per schema)."""
    return TypeAdapter(schema)


@functools.cache
def json_schema(schema: type) -> dict[str, Any]:
    """The JSON schema pydantic derives from ``schema``: types, defaults, ranges, descriptions."""
    return adapter(schema).json_schema()


def deref(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node`` with its ``$ref`` (a definition of ``root``) resolved."""
    if "$ref" not in node:
        return node
    return {**root["$defs"][node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}}


def _branch(node: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the non-null alternative, whether null is allowed) of a field's schema."""
    options = node.get("anyOf", [node])
    rest = [o for o in options if o.get("type") != "null"]
    return (rest[0] if len(rest) == 1 else node), len(rest) < len(options)


def _locate(root: dict[str, Any], loc: tuple) -> tuple[str, dict[str, Any]]:
    """The key (``proxy.optim.betas[0]``) and the schema of the value at ``loc``, an error's
    location: properties, tuple items, list items, mapping values."""
    key, node = "", root
    for part in loc:
        node = deref(root, _branch(deref(root, node))[0])
        if part == "[key]":  # a mapping's key
            key, node = f"{key} (a key)", {"type": "string"}
        elif isinstance(part, int):
            items = node.get("prefixItems")
            key, node = f"{key}[{part}]", items[part] if items and part < len(items) else node.get("items", {})
        elif "anyOf" not in node or part in node.get("properties", {}):  # else: pydantic names a union's member
            extra = node.get("additionalProperties")
            key, node = f"{key}.{part}", node.get("properties", {}).get(part, extra if isinstance(extra, dict) else {})
    return key.lstrip("."), deref(root, node)


_TYPES = {"integer": "int", "number": "float", "string": "str", "boolean": "bool", "null": "null",
          "object": "mapping", "array": "list"}


def type_text(node: dict[str, Any]) -> str:
    """A field's type in the words of a YAML file: ``int``, ``float | null``, ``[float, float]``."""
    if "anyOf" in node:
        return " | ".join(type_text(o) for o in node["anyOf"])
    if "enum" in node:
        return " | ".join(str(v) for v in node["enum"])
    if "const" in node:
        return str(node["const"])
    if "prefixItems" in node:
        return "[" + ", ".join(type_text(i) for i in node["prefixItems"]) + "]"
    return _TYPES.get(node.get("type", ""), "any")


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def allowed_text(node: dict[str, Any]) -> str:
    """A field's allowed values in words (``>= 1``, ``in [0, 1)``, ``in (0, 1), or null``); ''
    when its type says it all."""
    value, nullable = _branch(node)
    lo = (("[", value["minimum"]) if "minimum" in value else
          ("(", value["exclusiveMinimum"]) if "exclusiveMinimum" in value else None)
    hi = (("]", value["maximum"]) if "maximum" in value else
          (")", value["exclusiveMaximum"]) if "exclusiveMaximum" in value else None)
    if lo and hi:
        text = f"in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
    elif lo:
        text = f"{'>=' if lo[0] == '[' else '>'} {_num(lo[1])}"
    elif hi:
        text = f"{'<=' if hi[0] == ']' else '<'} {_num(hi[1])}"
    else:
        text = "not empty" if value.get("minLength") else ""
    if "prefixItems" in value:
        items = {allowed_text(i) for i in value["prefixItems"]}
        each = f", each {items.pop()}" if len(items) == 1 and "" not in items else ""
        text = f"a list of {len(value['prefixItems'])}{each}"
    text = ", ".join(t for t in (text, node.get("rule", "")) if t)
    return f"{text}, or null" if text and nullable else text


def _unknown(key: str, known: list[str], what: str, reason: str | None = None) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" ({reason})." if reason else f". Did you mean {close[0]!r}?" if close else "."
    return f"unknown key {key!r}{hint} Known {what}: {', '.join(known)}"


_UNKNOWN_KEY = ("unexpected_keyword_argument", "extra_forbidden")  # pydantic dataclasses, models


def _explain(err: dict[str, Any], schema: type, removed: Mapping[tuple[str, ...], str]) -> str:
    """One pydantic error as ``key: what was wrong; what is allowed``, in YAML's words (``removed``:
    keys the schema no longer has, with the reason)."""
    root = json_schema(schema)
    loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
    value = list(value) if isinstance(value, tuple) else value  # as YAML writes it
    if kind in _UNKNOWN_KEY:
        where, parent = _locate(root, loc[:-1])
        known = parent.get("properties", {})
        what = "sections" if all("properties" in deref(root, p) for p in known.values()) else "keys"
        return (f"{where}: " if where else "") + _unknown(str(loc[-1]), list(known), what, removed.get(loc))
    key, node = _locate(root, loc)
    value_node = _branch(node)[0]
    if kind == "missing":
        return f"{key}: missing; give a value"
    if "properties" in value_node:  # a record given something else; the whole document: its keys too
        return (f"{key}: expected a mapping of keys" if key else
                f"expected a mapping of keys ({', '.join(value_node['properties'])})") + f", got {value!r}"
    if kind == "string_too_short":
        return f"{key}: {value!r} is empty; give a value"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{key}: {value!r} is out of range; it must be {allowed_text(node)}"
    if kind == "literal_error" and "enum" in value_node:
        return f"{key}: {value!r} is not one of {value_node['enum']}"
    if kind == "finite_number":
        return f"{key}: {value!r} is not a finite number; it must be {allowed_text(node) or 'finite'}"
    if kind == "value_error":
        return f"{key}: {value!r}: {err.get('ctx', {}).get('error', err['msg'])}"
    if "prefixItems" in value_node:
        return f"{key}: expected a list of {len(value_node['prefixItems'])} numbers, got {value!r}"
    if kind.endswith(("_type", "_parsing", "_from_float")):
        return f"{key}: expected {type_text(node)}, got {value!r} ({type(value).__name__})"
    return f"{key}: {value!r}: {err['msg']}"


def validation_message(errors: ValidationError | list[dict[str, Any]], schema: type,
                       removed: Mapping[tuple[str, ...], str] | None = None) -> str:
    """pydantic's errors for ``schema`` (any pydantic dataclass or model) as one line, each problem
    as ``key: what was wrong; what is allowed``, a misspelt key first (one of ``removed``, keys the
    schema no longer has, with the reason it was removed)."""
    errors = errors.errors() if isinstance(errors, ValidationError) else errors
    errors = sorted(errors, key=lambda err: err["type"] not in _UNKNOWN_KEY)
    return "; ".join(dict.fromkeys(_explain(err, schema, removed or {}) for err in errors))  # a union's members: once

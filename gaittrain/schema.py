"""The one strict validator of gait's YAML: a mapping in, a typed dataclass out.

Every section is a dataclass; a key that no field names is an error that names it (with the
closest known key), so a typo never silently falls back to a default. Every number has a range
(finite, and large enough for any real run but not absurd): :func:`int_field`,
:func:`float_field` and :func:`ints_field` declare a field with its default and its range. A
union of dataclasses is a tagged union: its ``name`` picks the member (the first by default), and
a key of another member is an error that says whose key it is.

Examples
--------
>>> from dataclasses import dataclass
>>> @dataclass
... class Optim:
...     lr: float = float_field(0.001, above=0.0)
>>> build(Optim, {"lr": "1e-4"})
Optim(lr=0.0001)
>>> build(Optim, {"lrr": 0.1}, "optim")
Traceback (most recent call last):
...
gaittrain.schema.ConfigError: unknown key 'optim.lrr' (did you mean 'lr'?); known: lr
"""

from __future__ import annotations

import difflib
import math
import reprlib
import types
import typing
from dataclasses import MISSING, field, fields, is_dataclass
from typing import Any

from gaitprep.errors import GaitError


class ConfigError(GaitError, ValueError):
    """A configuration that cannot be used, explained in one line."""


def int_field(default: int, lo: int, hi: int) -> Any:
    """An int field that must lie in [lo, hi]."""
    return field(default=default, metadata={"range": (lo, hi)})


def float_field(
    default: float, lo: float | None = None, hi: float | None = None, *, above=None
) -> Any:
    """A finite float field; ``lo``/``hi`` are inclusive bounds, ``above`` an exclusive one."""
    return field(default=default, metadata={"range": (lo, hi), "above": above})


def ints_field(default: list[int], lo: int, hi: int, length: tuple[int, int]) -> Any:
    """A list of ints, each in [lo, hi], with a length in ``length``."""
    return field(
        default_factory=lambda: list(default), metadata={"range": (lo, hi), "length": length}
    )


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 2, 4, 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 40


def show(value: Any) -> str:
    """A short one-line repr, safe for huge or deeply nested values."""
    return " ".join(_REPR.repr(value).split())


def build(cls: type, data: Any, where: str = "", tag: str | None = None, siblings=None) -> Any:
    """Build dataclass ``cls`` from ``data``, refusing unknown keys, wrong types, bad ranges.

    ``where`` is the dotted path of ``data`` ("" for the whole config). ``tag`` is set for a
    member of a tagged union (the loss): ``name`` is then already chosen, and ``siblings`` are
    the union's members by name (a key of another member is named as such).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    required = [
        f.name
        for f in known.values()
        if f.init and f.default is MISSING and f.default_factory is MISSING
    ]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise ConfigError(_unknown(path, key, known, where, tag, siblings or {}))
        if not known[key].init:  # the tag of a union member, checked by _tagged
            continue
        kwargs[key] = _value(hints[key], value, path, known[key].metadata)
    missing = [k for k in required if k not in kwargs]
    if missing:
        path = f"{where}.{missing[0]}" if where else missing[0]
        raise ConfigError(f"missing key {path!r} (required: {', '.join(required)})")
    return cls(**kwargs)


def _unknown(path: str, key: Any, known: dict, where: str, tag: str | None, siblings: dict) -> str:
    if tag is not None:
        owners = [name for name, c in siblings.items() if key in {f.name for f in fields(c)}]
        if owners:
            return (
                f"unknown key {path!r} for {where} {tag!r} ({key} belongs to "
                f"{', '.join(owners)}); known: {', '.join(known)}"
            )
        return unknown_key(path, known, str(key), f" for {where} {tag!r}")
    return unknown_key(path, known, str(key))


def unknown_key(path: str, known, key: str | None = None, context: str = "") -> str:
    """``unknown key 'PATH' (did you mean 'K'?); known: ...``: the closest of ``known`` to
    ``key`` (the last part of ``path`` by default)."""
    close = difflib.get_close_matches(key or path, [str(k) for k in known], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {path!r}{context}{hint}; known: {', '.join(map(str, known))}"


def set_dotted(data: dict, dotted: str, value: Any, where: str) -> dict:
    """Set ``data[a][b] = value`` for ``dotted`` ``a.b``, creating sections; returns the section
    that received the key. A part of the path that holds a value, not a section, is a one-line
    :class:`ConfigError` beginning with ``where``."""
    keys = dotted.split(".")
    node = data
    for i, k in enumerate(keys[:-1]):
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {'.'.join(keys[: i + 1])} is not a section")
    node[keys[-1]] = value
    return node


def _tagged(options: tuple[type, ...], data: Any, path: str) -> Any:
    """A member of a union of dataclasses, picked by ``data['name']`` (default: the first)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping, got {type(data).__name__}")
    tags = {c.name: c for c in options}
    name = data.get("name", options[0].name)
    if not isinstance(name, str) or name not in tags:
        raise ConfigError(f"{path}.name is {show(name)}; use one of {', '.join(tags)}")
    return build(tags[name], data, path, tag=name, siblings=tags)


def _value(hint: Any, value: Any, path: str, meta: Any = None) -> Any:
    meta = meta or {}
    if hint is Any:  # any YAML value: its own reader checks it
        return value
    if is_dataclass(hint):
        return build(hint, value, path)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if all(is_dataclass(o) for o in options):
            return _tagged(options, value, path)
        others = [o for o in options if o is not type(None)]
        if len(others) == 1 and len(options) == 2:  # X | None: None, or an X
            return None if value is None else _value(others[0], value, path, meta)
        raise ConfigError(f"{path}: unsupported type")  # not used by the schema
    if origin is dict:
        _, item = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {show(value)}")
        for k in value:
            if not isinstance(k, str):
                raise ConfigError(f"{path}: its keys must be names, got {show(k)}")
        return {k: _value(item, v, f"{path}.{k}", meta) for k, v in value.items()}
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{path} must be a list, got {show(value)}")
        lo, hi = meta.get("length", (0, None))
        if len(value) < lo or (hi is not None and len(value) > hi):
            count = f"{lo}" if lo == hi else f"{lo} to {hi}"
            raise ConfigError(f"{path} must hold {count} values, got {len(value)}")
        return [_value(item, v, f"{path}[{i}]", meta) for i, v in enumerate(value)]
    if hint is float:
        return _check_float(_to_float(value, path), path, meta)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{path} must be true or false, got {show(value)}")
    if hint in (int, str) and (not isinstance(value, hint) or isinstance(value, bool)):
        if hint is int and _is_number(value):  # 1e20, 30.0: a float where a count belongs
            number = show(value).strip("'")
            raise ConfigError(f"{path} must be int (a whole number), got {number}")
        raise ConfigError(f"{path} must be {hint.__name__}, got {show(value)}")
    if hint is int and "range" in meta:
        lo, hi = meta["range"]
        if value < lo:
            raise ConfigError(f"{path} must be at least {lo} (got {show(value)})")
        if value > hi:
            raise ConfigError(f"{path} must be at most {hi} (got {show(value)})")
    return value


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return not isinstance(value, bool)


def _to_float(value: Any, path: str) -> float:
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:  # PyYAML reads 1e-4 (no dot) as a string
            return float(value)
        except OverflowError:
            raise ConfigError(f"{path} must be a finite number, got {show(value)}") from None
        except ValueError:
            pass
    raise ConfigError(f"{path} must be float, got {show(value)}")


def _check_float(value: float, path: str, meta: dict) -> float:
    if not math.isfinite(value):
        raise ConfigError(f"{path} must be a finite number, got {value}")
    lo, hi = meta.get("range", (None, None))
    above = meta.get("above")
    if above is not None and not value > above:
        raise ConfigError(f"{path} must be greater than {above:g} (got {value:g})")
    if lo is not None and value < lo:
        raise ConfigError(f"{path} must be at least {lo:g} (got {value:g})")
    if hi is not None and value > hi:
        raise ConfigError(f"{path} must be at most {hi:g} (got {value:g})")
    return value

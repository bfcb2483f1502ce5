"""Strict, typed loading of frozen config dataclasses (the machinery behind ``params.yaml``).

:func:`build_section` walks a mapping against a dataclass's fields and fails at load, naming
the dotted key, on unknown keys, wrong types and out-of-range values::

    split.labeled_ratio: expected a float in (0, 1), got 'five'

Fields carry their constraints in ``metadata`` (see :func:`bounded`); types come from the
annotations (``int``, ``float``, ``str``, ``bool``, ``X | None``, ``tuple[X, ...]`` from YAML
lists, ``Literal[...]`` and nested dataclasses). A field marked runtime-only (``bounded(...,
runtime_only=True)`` or :func:`runtime_only`) changes how fast or where a stage runs, never
what it computes; :func:`pipeline.config.runtime_only_keys` lists them.

The sections themselves are in :mod:`pipeline.config` (the pipeline's) and
``l2l_train.config`` (the trainer's).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

import yaml

RUNTIME_ONLY = "runtime_only"  # field metadata key, see runtime_only()


class ConfigError(ValueError):
    """A ``params.yaml`` value that does not fit the schema; the message names the key."""


def bounded(
    default: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    runtime_only: bool = False,
) -> Any:
    """A dataclass field whose value must lie in an interval (ends inclusive unless open);
    ``runtime_only`` marks it as :func:`runtime_only` does."""
    metadata = {"range": (lo, hi, lo_open, hi_open)}
    if runtime_only:
        metadata[RUNTIME_ONLY] = True
    return field(default=default, metadata=metadata)


def runtime_only(default: Any) -> Any:
    """A dataclass field that changes how fast or where a stage runs, not what it computes:
    batch sizes, workers, devices, logging. Such keys leave prior keys and resumable runs
    alone. (A whole section: ``field(default_factory=..., metadata={RUNTIME_ONLY: True})``.)"""
    return field(default=default, metadata={RUNTIME_ONLY: True})


def _describe_range(lo, hi, lo_open, hi_open) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    return f"{'<' if hi_open else '<='} {hi:g}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if tp in (int, float, str, bool):
        return {int: "an int", float: "a float", str: "a string", bool: "a boolean"}[tp]
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0]).removeprefix('an ').removeprefix('a ')}s"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} keys"
    return str(tp)


def _coerce(value: Any, tp: Any, key: str, expected: str | None = None) -> Any:
    """Check ``value`` against annotation ``tp``; return it (lists become tuples).
    ``expected`` overrides the type's description in the error (to mention a range)."""
    origin = typing.get_origin(tp)
    fail = ConfigError(f"{key}: expected {expected or _type_name(tp)}, got {value!r}")
    if origin in (types.UnionType, typing.Union):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise fail
    if tp is type(None):
        if value is None:
            return None
        raise fail
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise fail
    if origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if not isinstance(value, list | tuple):
            raise fail
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise fail
        return build_section(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise fail
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail
    raise TypeError(f"{key}: unsupported annotation {tp!r} in the config schema")


def build_section(cls: type, raw: Mapping[str, Any], prefix: str = "") -> Any:
    """Build frozen dataclass ``cls`` from mapping ``raw``; missing keys take defaults."""
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    dotted = (lambda k: f"{prefix}.{k}") if prefix else (lambda k: k)
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(
            f"{dotted(unknown[0])}: unknown key (expected one of: {', '.join(names)})"
        )
    values = {}
    for name, value in raw.items():
        f, key = names[name], dotted(name)
        expected = _type_name(hints[name])
        if "range" in f.metadata:
            expected += " " + _describe_range(*f.metadata["range"])
        value = _coerce(value, hints[name], key, expected)
        if "range" in f.metadata and value is not None:
            lo, hi, lo_open, hi_open = f.metadata["range"]
            too_low = lo is not None and (value <= lo if lo_open else value < lo)
            too_high = hi is not None and (value >= hi if hi_open else value > hi)
            if too_low or too_high:
                raise ConfigError(f"{key}: expected {expected}, got {value!r}")
        values[name] = value
    try:
        section = cls(**values)
    except ConfigError as err:  # cross-field checks in __post_init__
        raise ConfigError(f"{prefix}: {err}" if prefix else str(err)) from None
    return section


def read_params_file(path: str | Path) -> Mapping[str, Any]:
    """The YAML mapping in ``path`` (sections by name), unvalidated; a missing file, YAML that
    does not parse, or a top level that is not a mapping raise :class:`ConfigError` naming
    ``path``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        with path.open() as fh:
            raw = yaml.safe_load(fh) or {}
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw

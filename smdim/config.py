"""Typed configuration: params.yaml sections -> validated frozen dataclasses, via pydantic.

Each layer owns its config dataclass (e.g. `smdim.model.config.ModelConfig`), and its defaults
are the project's defaults: `tests/test_config.py` proves that every section of params.yaml
equals them. This module only turns a mapping into such a dataclass, with one line per error
that names `section.key`, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError

from smdim.errors import ConfigError

T = TypeVar("T")
PARAMS_FILE = "params.yaml"


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Read params.yaml as a dict (one-line error if missing or not YAML)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run from the project root or pass --params") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML; fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def load_section(cls: type[T], section: str, path: str | Path = PARAMS_FILE) -> T:
    """Build `cls` from one top-level section of params.yaml."""
    params = load_params(path)
    if section not in params:
        raise ConfigError(f"{path}: section '{section}' is missing; add it (see README)")
    return build(cls, params[section], section)


def build(cls: type[T], data: Mapping[str, Any] | None, where: str) -> T:
    """Validate `data` into dataclass `cls`; `where` (e.g. 'train') prefixes every error."""
    if data is None:  # an empty YAML section
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of parameters, got {data!r}")
    try:
        return _adapter(cls).validate_python(dict(data))
    except ValidationError as e:
        raise ConfigError("\n".join(_describe(cls, err, where) for err in e.errors())) from None


def build_partial(cls: type, data: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """Validate a partial section (defaults fill the rest) and return only the keys it gave, in
    their checked form: for settings that override others, such as a checkpoint's sampler defaults."""
    checked = to_dict(build(cls, data, where))
    return {k: checked[k] for k in data or {}}


def build_saved(cls: type[T], saved: Mapping[str, Any] | None, absent_means: Mapping[str, Any], where: str) -> T:
    """`build` for a config read back from a saved file (a checkpoint): a field the file predates
    takes `absent_means[field]`, what its absence meant when it was written, not today's default."""
    return build(cls, {**absent_means, **(saved or {})}, where)


def saved_dict(obj: Any, absent_means: Mapping[str, Any]) -> dict[str, Any]:
    """`to_dict` of a config for a canonical saved file: fields at what their absence means are left
    out, so a field added later (with its `absent_means` entry) never changes an older file's bytes."""
    return {k: v for k, v in to_dict(obj).items() if k not in absent_means or v != absent_means[k]}


def to_dict(obj: Any) -> Any:
    """Dataclass (possibly nested) -> plain dict/list values, for JSON and checkpoints."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    _forbid_unknown(cls)
    return TypeAdapter(cls)


def _forbid_unknown(cls: type) -> None:
    """Make pydantic reject unknown keys in `cls` and every dataclass nested in it.

    Set here rather than in each config module, so those stay plain dataclasses that import
    nothing (the CLI reads their defaults without paying for pydantic's import).
    """
    if "__pydantic_config__" not in vars(cls):
        cls.__pydantic_config__ = ConfigDict(extra="forbid")
    for tp in typing.get_type_hints(cls).values():
        for t in (tp, *typing.get_args(tp)):
            if dataclasses.is_dataclass(t):
                _forbid_unknown(t)


def _describe(cls: type, err: Mapping[str, Any], where: str) -> str:
    """One pydantic error -> 'section.key: what is wrong (got value)'."""
    loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
    key = ".".join([where, *(str(p) for p in err["loc"])])
    kind, msg = err["type"], err["msg"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        known = _field_names(cls, loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(known)}"
        return f"{key}: unknown parameter; {hint}"
    if kind == "missing":
        return f"{key}: required parameter is missing"
    if kind == "value_error":  # raised by a __post_init__: its message names the field
        return f"{key}: {msg.removeprefix('Value error, ')}"
    return f"{key}: {msg[0].lower()}{msg[1:]}, got {err.get('input')!r}"


def _field_names(cls: type, path: list[str]) -> list[str]:
    """Field names of the dataclass reached from `cls` by following `path` (field names)."""
    for name in path:
        tp = typing.get_type_hints(cls).get(name)
        nested = [t for t in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(t)]
        if not nested:
            return []
        cls = nested[0]
    return [f.name for f in dataclasses.fields(cls)]

"""TOML tables checked against frozen dataclasses: the one validator of gridminer's TOML files.

A dataclass declares its keys with `key(default, lo=, hi=, lo_open=, choices=, path=)` (no
default: required); `build(cls, where, table)` reads one TOML table into it, `read` returns the
checked values instead (for a table that fills a dataclass only in part). Unknown keys are
rejected by name with a suggestion, types are checked and converted (int -> float, list ->
tuple, nested tables -> dataclasses), ranges and choices enforced. Every error is a
`ConfigError` that starts with the key's dotted path and says what is allowed, e.g.
``envelope.max_power_w: 5000 is out of range [1, 4000]``; `read_toml` reports syntax errors
with the file, line and column. Used by the agent's config (`agent/config.py`) and the lab
rig's scenarios (`hil/scenario.py`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

REQUIRED: Any = dataclasses.MISSING  # the default of a key that must be given


def key(
    default: Any = REQUIRED,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    choices: tuple[str, ...] | None = None,
    path: bool = False,
) -> Any:
    """A TOML key as a dataclass field: its default (absent: required), numeric range (`lo_open`:
    `lo` itself is out) or choices; `path` keys are resolved against the file's folder. A string
    must not be empty unless its default is."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices, "path": path,
            "blank": default == ""}
    return dataclasses.field(default=default, metadata=meta)


def fmt(value: Any) -> str:
    """A value as an error message shows it: 5000.0 as 5000, strings quoted."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, str) else str(value)


def _suggestion(name: Any, allowed: Collection[Any]) -> str:
    close = difflib.get_close_matches(str(name), [str(a) for a in allowed], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def reject_unknown(where: str, table: Mapping[str, Any], allowed: Collection[str],
                   noun: str = "key") -> None:
    """A ConfigError naming the first key of `table` not in `allowed`, with the closest allowed
    name, or all of them when none is close."""
    for name in table:
        if name not in allowed:
            hint = _suggestion(name, allowed) or f" (allowed: {', '.join(allowed)})"
            raise ConfigError(f"{where}.{name}: unknown {noun}{hint}" if where else
                              f"{name}: unknown {noun}{hint}")


def range_error(key: str, value: float, lo: float | None, hi: float | None, why: str = "",
                *, lo_open: bool = False) -> ConfigError:
    """``KEY: VALUE is out of range [LO, HI] (WHY)``; one bound only: ``(must be >= LO)``."""
    if lo is not None and hi is not None:
        allowed = f"{'(' if lo_open else '['}{fmt(lo)}, {fmt(hi)}]"
    elif lo is not None:
        allowed = f"(must be {'>' if lo_open else '>='} {fmt(lo)})"
    else:
        allowed = f"(must be <= {fmt(hi)})"
    return ConfigError(f"{key}: {fmt(value)} is out of range {allowed}"
                       + (f" ({why})" if why else ""))


def check_range(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    """The choices and the range of `meta` (as `key` declares them) applied to `value`."""
    if value is None:
        return
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: {fmt(value)} is not one of {', '.join(choices)}"
                          + (_suggestion(value, choices) if isinstance(value, str) else ""))
    lo_open = bool(meta.get("lo_open"))
    below = lo is not None and (value < lo or (lo_open and value == lo))
    if below or (hi is not None and value > hi):
        raise range_error(key, value, lo, hi, lo_open=lo_open)


def _scalar(tp: type, value: Any, key: str, base_dir: Path | None, meta: Mapping[str, Any]) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {fmt(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {fmt(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {fmt(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value}")
        return float(value)
    if not isinstance(value, str) or not (value or meta.get("blank")):
        raise ConfigError(f"{key}: expected a non-empty string, got {fmt(value)}")
    if meta.get("path") and base_dir is not None:
        try:
            return str(base_dir / Path(value).expanduser())
        except (RuntimeError, ValueError) as exc:  # ~user unknown, a NUL byte
            raise ConfigError(f"{key}: {fmt(value)} is not a usable path ({exc})") from None
    return value


def _list_hint(item: Any, key: str) -> str:
    """What a list of tables looks like: its [[header]] (at top level) and its items' keys."""
    if not (dataclasses.is_dataclass(item) or typing.get_origin(item) is dict):
        return ""
    parts = [f"[[{key}]]"] if "[" not in key else []
    if dataclasses.is_dataclass(item):
        parts.append("keys " + ", ".join(f.name for f in dataclasses.fields(item)))
    return " of tables" + (f" ({'; '.join(parts)})" if parts else "")


def _items(tp: Any, value: Any, key: str, base_dir: Path | None,
           meta: Mapping[str, Any]) -> tuple[Any, ...]:
    """A TOML array as the tuple type `tp` (`tuple[X, ...]` or a fixed `tuple[X, Y]`)."""
    args = typing.get_args(tp)
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{key}: expected a list{_list_hint(args[0], key)}, got {fmt(value)}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(convert(args[0], v, f"{key}[{i}]", base_dir, meta)
                     for i, v in enumerate(value))
    if len(args) != len(value):
        raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
    return tuple(convert(a, v, f"{key}[{i}]", base_dir, meta)
                 for i, (a, v) in enumerate(zip(args, value, strict=True)))


def convert(tp: Any, value: Any, key: str, base_dir: Path | None = None,
            meta: Mapping[str, Any] | None = None) -> Any:
    """`value` checked against the annotated type `tp` and converted (int -> float, list ->
    tuple, tables -> dicts or dataclasses); scalars also against the range and choices of
    `meta`. `key` is the dotted path errors name."""
    meta = meta or {}
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        inner = next(a for a in args if a is not type(None))
        return convert(inner, value, key, base_dir, meta)
    if tp in (bool, int, float, str):
        result = _scalar(tp, value, key, base_dir, meta)
        check_range(key, result, meta)
        return result
    if origin is tuple:
        return _items(tp, value, key, base_dir, meta)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, got {fmt(value)}")
        return {str(k): convert(args[1], v, f"{key}.{k}", base_dir, meta)
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(typing.cast(type, tp), key, value, base_dir)
    raise ConfigError(f"{key}: unsupported type")  # pragma: no cover - programming error


def _default(f: dataclasses.Field[Any], meta: Mapping[str, Any], key: str) -> Any:
    if "default" in meta:
        default = meta["default"]
    elif f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    else:
        default = f.default
    if default is REQUIRED:
        choices = meta.get("choices")
        raise ConfigError(f"{key}: required" + (f" (one of {', '.join(choices)})"
                                                if choices else ""))
    return default


def read(
    cls: type,
    where: str,
    raw: Any,
    base_dir: Path | None = None,
    *,
    keys: Collection[str] | None = None,
    allow: Collection[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The checked values of `cls`'s fields named in `keys` (default: all of them, in order) from
    the TOML table `raw` at dotted path `where`, defaults filled in. A key of `raw` not in
    `allow` (default: `keys`) is an error. `overrides` replace a field's metadata in this table,
    for what is known only while reading: ``{"at_s": {"hi": duration_s}}``,
    ``{"until_s": {"default": REQUIRED}}``."""
    table = convert(dict[str, Any], raw, where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(keys) if keys is not None else list(fields)
    reject_unknown(where, table, sorted(allow if allow is not None else names))
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name in names:
        meta = {**fields[name].metadata, **(overrides or {}).get(name, {})}
        path = f"{where}.{name}" if where else name
        if name in table:
            values[name] = convert(hints[name], table[name], path, base_dir, meta)
        else:
            values[name] = _default(fields[name], meta, path)
    return values


def build(cls: type, where: str, raw: Any, base_dir: Path | None = None, **options: Any) -> Any:
    """One `cls` from one TOML table; `options` as `read`'s (fields not read keep defaults)."""
    return cls(**read(cls, where, raw, base_dir, **options))


def read_toml(path: str | Path) -> dict[str, Any]:
    """The raw table of a TOML file (ConfigError when unreadable or not TOML, with the line and
    column of a syntax error)."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: not UTF-8 at byte {exc.start}") from None
    except RecursionError:
        raise ConfigError(f"{p}: not valid TOML: arrays or tables nested too deep") from None

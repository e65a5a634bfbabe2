"""Typed step options: one dataclass per step drives its defaults, ranges, choices, TOML and CLI.

A step's options are a dataclass whose class attributes RANGES ({key: (low, high)}) and
CHOICES ({key: (allowed, ...)}) state what is valid. From that one definition come:
`load_options` (TOML file + `--set key=value` overrides, coerced by the field's type and
validated), `to_toml` (written with tomli-w, so any string — a Windows path included — is
escaped), and `dataclass_option` (a click option whose default, choices and range are the
dataclass's, so the CLI never retypes them).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from leukedge.edge.errors import LeukedgeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(LeukedgeError, ValueError):
    """An option key or value that is unknown, of the wrong type, or out of range; the message names it."""


def _base_type(typ):
    """`int | None` -> int; `tuple[str, ...]` -> tuple; plain types unchanged."""
    args = [a for a in get_args(typ) if a is not type(None)]
    if get_origin(typ) is tuple:
        return tuple
    if args and get_origin(typ) is not tuple and len(args) == 1:
        return _base_type(args[0])
    return typ


def coerce(cls, key: str, value: Any) -> Any:
    """`value` (from TOML or a `key=value` string) as the type of `cls`'s field `key`.

    bool accepts true/false/yes/no/on/off/1/0; tuple accepts a list or a comma-separated string;
    an Optional field accepts "" or "none" as None. Raises ConfigError naming the key.
    """
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    if key not in names:
        raise ConfigError(f"unknown config key {key!r}; known: {', '.join(names)}")
    typ = hints[key]
    optional = type(None) in get_args(typ)
    base = _base_type(typ)
    if optional and (value is None or (isinstance(value, str) and value.strip().lower() in ("", "none"))):
        return None
    try:
        if base is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if not isinstance(value, (bool, int)):
                raise ValueError(value)
            return bool(value)
        if base is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(v).strip() for v in items if str(v).strip())
        if base in (int, float) and isinstance(value, bool):
            raise ValueError(value)
        if base is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return base(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key {key}: {value!r} is not a valid {getattr(base, '__name__', base)}") from None


def validate(obj):
    """Check `obj`'s fields against its class's RANGES and CHOICES; returns obj; raises ConfigError."""
    cls = type(obj)
    for key, (lo, hi) in getattr(cls, "RANGES", {}).items():
        v = getattr(obj, key)
        if v is not None and not lo <= v <= hi:
            raise ConfigError(f"config key {key}={v} out of range [{lo}, {hi}]")
    for key, allowed in getattr(cls, "CHOICES", {}).items():
        v = getattr(obj, key)
        values = v if isinstance(v, tuple) else (v,)
        bad = [x for x in values if x not in allowed and not _family_member(x, allowed)]
        if bad:
            raise ConfigError(f"config key {key}={', '.join(map(str, bad))} not one of {', '.join(allowed)}")
    return obj


def _family_member(value, allowed) -> bool:
    """'int8@160' belongs to a choice list holding 'int8@SIZE'."""
    return isinstance(value, str) and "@" in value and f"{value.split('@')[0]}@SIZE" in allowed


def load_options(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                 table: str | None = None, base=None):
    """Options of `cls`: its defaults (or `base`), then a TOML file's `[table]` (or top level), then overrides
    (None values ignored). Every value is coerced and the result validated; raises ConfigError."""
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{p}: config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: invalid TOML: {exc}") from None
        data.update(raw.get(table, raw) if table else raw)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    obj = dataclasses.replace(base) if base is not None else cls()
    for key, value in data.items():
        setattr(obj, key, coerce(cls, key, value))
    post = getattr(obj, "validate", None)
    return post() if callable(post) else validate(obj)


def parse_overrides(pairs) -> dict[str, str]:
    """('key=value', ...) from repeated --set options -> {key: value}; dashes in keys become underscores."""
    out = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not key=value")
        k, v = pair.split("=", 1)
        out[k.strip().replace("-", "_")] = v.strip()
    return out


def to_toml(values: dict[str, Any], table: str = "train") -> str:
    """A TOML document with one table; written by tomli-w (strings escaped, None dropped, tuples as arrays)."""
    import tomli_w

    clean = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if v is not None}
    return tomli_w.dumps({table: clean})


def option(default: Any = dataclasses.MISSING, help: str = "", *, flags: tuple[str, ...] = (), cli: bool = True,
           default_factory: Any = dataclasses.MISSING):
    """A dataclass field that carries its own command-line words (issue 19: help next to the field).

    default / default_factory: as dataclasses.field; help: the flag's help text; flags: its names (default
    --key-with-dashes; extra names are aliases, e.g. an old spelling); cli: False for a key that is only a
    config/--set key. `dataclass_options(cls)` turns every such field into a click option.
    """
    metadata = {"help": help, "flags": tuple(flags), "cli": cli}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def help_of(cls, key: str) -> str:
    """The help text a field of `cls` declares with `option(...)` ('' when none)."""
    return {f.name: f for f in dataclasses.fields(cls)}[key].metadata.get("help", "")


def dataclass_options(cls, exclude: tuple[str, ...] = ()):
    """A decorator adding one click option per field of `cls` (in field order), each from the field's own
    type, default, RANGES/CHOICES entry and `option(...)` metadata (help, flag names); fields declared with
    cli=False and names in `exclude` are left out. The command receives them as keyword arguments (None
    when not typed), so a TOML config and --set keep their say."""

    def decorate(fn):
        for f in reversed(dataclasses.fields(cls)):
            if f.name in exclude or not f.metadata.get("cli", True):
                continue
            fn = dataclass_option(cls, f.name, *f.metadata.get("flags", ()))(fn)
        return fn

    return decorate


def dataclass_option(cls, key: str, *decls: str, help: str = ""):
    """A click option for field `key` of `cls`: flag names `decls` (default: --key-with-dashes), type,
    choices and range from the dataclass, default None (so only what the user typed overrides the
    options), and the dataclass default shown in the help; help defaults to the field's own (`option`)."""
    import click

    field = {f.name: f for f in dataclasses.fields(cls)}[key]
    help = help or field.metadata.get("help", "")
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    base = _base_type(get_type_hints(cls)[key])
    choices = getattr(cls, "CHOICES", {}).get(key)
    rng = getattr(cls, "RANGES", {}).get(key)
    if base is tuple:
        ptype = str
        shown = ",".join(default)
        if choices:
            help = f"{help} Comma-separated, from: {', '.join(choices)}."
    elif choices:
        ptype, shown = click.Choice(list(choices)), default
    elif rng and base is int:
        ptype, shown = click.IntRange(*rng), default
    elif rng and base is float:
        ptype, shown = click.FloatRange(*rng), default
    else:
        ptype, shown = (base if base in (int, float, str) else str), default
    flag = key.replace("_", "-")
    decls = decls or (f"--{flag}",)
    if base is bool:  # --x / --no-x, so a default of True can be turned off too
        return click.option(f"--{flag}/--no-{flag}", key, default=None,
                            help=f"{help} [default: {'on' if default else 'off'}]".strip())
    return click.option(*decls, key, type=ptype, default=None,
                        help=f"{help} [default: {shown if shown not in (None, '') else 'none'}]".strip())

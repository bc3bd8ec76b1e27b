"""Settings dataclasses -> command-line flags and value checks: the one engine behind TrainConfig (config.py),
PretrainConfig (training/pretrain_config.py) and the search settings (search/settings.py).

A field's metadata says what it is: help (text), choices (allowed values), rule (value -> what is wrong with it,
None when nothing), cli (False: no flag), aliases (extra flags), nargs and metavar (a list of numbers); a field that
holds a mapping (and no scalar) takes a JSON object or a JSON file's path on the command line; other keys
are the owner's own (data, yaml, searchable, per_model). A class may keep its range rules beside its fields instead
(`rules`, by field name), so that its field list reads as a list of settings.
"""

from __future__ import annotations

import argparse
import json
import math
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, Field, field, fields
from pathlib import Path
from typing import Any

from tune_ph.errors import ConfigError

# value -> what is wrong with it (None: nothing).
Rule = Callable[[Any], "str | None"]


def setting(default: Any = MISSING, help: str = "", **meta: Any) -> Any:
    """A settings field with its help text and metadata (choices, rule, cli, aliases, and the owner's own keys)."""
    if default is MISSING:
        return field(metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


# ------------------------------------------------------------------------------------------------ types


def annotation_types(cls: type, name: str) -> tuple[type, ...]:
    """The Python types a dataclass field accepts, from its annotation (an int is accepted for a float)."""
    hint = typing.get_type_hints(cls)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = typing.get_args(hint)
    else:
        args = (hint,)
    out: list[type] = []
    for arg in args:
        origin = typing.get_origin(arg) or arg
        out.append(origin)
        if origin is float:
            out.append(int)
    return tuple(out)


def scalar_types(cls: type, name: str) -> tuple[type, ...]:
    """The types of a field's single value: its annotation's, less null and mappings (a per-model mapping)."""
    return tuple(t for t in annotation_types(cls, name) if t not in (dict, type(None)))


_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true/false",
    dict: "a mapping",
    list: "a list",
    type(None): "null",
}


def type_name(t: type) -> str:
    return _TYPE_NAMES.get(t, t.__name__)


def check_type(name: str, value: Any, allowed: tuple[type, ...]) -> None:
    """Raise ConfigError naming the field unless value has one of the allowed types (a finite number)."""
    # bool is an int in Python; true/false is never a number here.
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    if isinstance(value, float) and float in allowed and not math.isfinite(value):
        raise ConfigError(name, f"{name} must be a finite number, got {value!r}")
    if not ok:
        names = " or ".join(type_name(t) for t in allowed)
        raise ConfigError(name, f"expected {names}, got {value!r} ({type_name(type(value))})")


# ------------------------------------------------------------------------------------------------ values


def problem(cls: type, name: str, value: Any, rules: Mapping[str, Rule] | None = None) -> str | None:
    """What is wrong with one (well-typed, non-null) value of a field: not one of its choices, or against its range
    rule (the field's own, else rules[name]); None when nothing is."""
    meta = cls.__dataclass_fields__[name].metadata
    choices = meta.get("choices")
    if choices and value not in choices:
        return f"unknown {name} {value!r}; allowed: {', '.join(choices)}"
    rule = meta.get("rule") or (rules or {}).get(name)
    return rule(value) if rule else None


def check(cls: type, name: str, value: Any, rules: Mapping[str, Rule] | None = None) -> None:
    """Type, choices and range rule of one value of a field; raise ConfigError naming the field."""
    check_type(name, value, annotation_types(cls, name))
    if value is None:
        return
    found = problem(cls, name, value, rules)
    if found:
        raise ConfigError(name, found)


# ------------------------------------------------------------------------------------------------ CLI flags


def flag_fields(cls: type, only: tuple[str, ...] | None = None) -> Iterator[Field]:
    """The fields of cls that have a command-line flag (all of `only`'s, when given)."""
    for f in fields(cls):
        if f.metadata.get("cli", True) and (only is None or f.name in only):
            yield f


def _required(f: Field) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def default_tail(f: Field) -> str:
    """What a flag's help ends with: the field's default (a required field has none)."""
    return "" if _required(f) else f" (default: {f.default})"


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    only: tuple[str, ...] | None = None,
    defaults: bool = True,
    help_tail: Callable[[Field], str] = default_tail,
) -> None:
    """One flag per field (``--learning-rate`` for learning_rate, and its aliases) with its help and choices; true/false
    fields get --x/--no-x. A field without a default is a required flag.

    defaults: a flag's default is the field's; False: None, meaning "not given" (overrides of a file, a resumed
    run's saved settings). help_tail(field): what the help text ends with (the default, where a YAML key lives).
    """
    for f in flag_fields(cls, only):
        meta = f.metadata
        flags = [f"--{f.name.replace('_', '-')}", *meta.get("aliases", ())]
        default = f.default if defaults and not _required(f) else None
        help_text = f"{meta['help']}{help_tail(f)}"
        if is_mapping(cls, f.name):  # parsed by given(), so that bad JSON is one error line naming the flag
            parser.add_argument(*flags, default=default, metavar="JSON", help=help_text)
            continue
        kind = scalar_types(cls, f.name)[0]
        if kind is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        extra: dict[str, Any] = {"required": True} if _required(f) else {}
        if "nargs" in meta:  # a list of numbers (TrainConfig.target_range: --target-range LO HI)
            kind = float
            extra.update(nargs=meta["nargs"], metavar=meta.get("metavar"))
        parser.add_argument(*flags, type=kind, default=default, choices=meta.get("choices"), help=help_text, **extra)


def given(args: argparse.Namespace, cls: type, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The values of cls's flags on a parsed command line, by field name; None (not given) left out.

    only: the fields add_arguments() was given; another flag may share a field's name (a search's --output-dir).
    """
    names = only if only is not None else tuple(f.name for f in flag_fields(cls))
    out = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    for name, value in out.items():
        if isinstance(value, str) and name in cls.__dataclass_fields__ and is_mapping(cls, name):
            out[name] = json_object(name, value)
    return out


def is_mapping(cls: type, name: str) -> bool:
    """Whether a field holds a mapping and no single value (its flag takes JSON: TrainConfig.model_config)."""
    return dict in annotation_types(cls, name) and not scalar_types(cls, name)


def json_object(name: str, value: str) -> dict[str, Any]:
    """A mapping field's flag value: a JSON file's path or inline JSON, holding one object."""
    flag = f"--{name.replace('_', '-')}"
    path = Path(value).expanduser()
    try:
        text = path.read_text() if path.is_file() else value
        parsed = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(name, f"{flag} {value!r} is neither a JSON file nor JSON ({err})") from None
    if not isinstance(parsed, dict):
        raise ConfigError(name, f"{flag} must hold a JSON object {{...}}, got {type(parsed).__name__}")
    return parsed

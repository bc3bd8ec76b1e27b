"""One search-space entry (a value, a distribution, values per model or per another field's value, a `when` condition)
-> a validated Param.

The errors name the file and the key path (space.py's sections use the same checker).
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from tune_ph import config, schema
from tune_ph.errors import ConfigError, SpaceError
from tune_ph.search.spec import FIELD_TYPES, Param, per_key

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")


class Checker:
    """Collects the file name so every error says where it is."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, key: str, message: str) -> None:
        raise SpaceError(f"{self.path}: {key}: {message}")

    def check_type(self, key: str, value: Any, types: type | tuple[type, ...]) -> None:
        try:
            # The message names the last part of the key; the key itself comes first.
            schema.check_type(key.rsplit(".", 1)[-1], value, types if isinstance(types, tuple) else (types,))
        except ConfigError as err:
            self.fail(key, err.message)

    def check_keys(self, key: str, mapping: Any, allowed: Any) -> None:
        if not isinstance(mapping, dict):
            self.fail(key, f"expected a mapping, got {mapping!r}")
        for k in mapping:
            if k not in allowed:
                where = f"{key}.{k}" if key else str(k)
                close = difflib.get_close_matches(str(k), list(map(str, allowed)), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.fail(where, f"unknown key{hint}; allowed: {', '.join(map(str, allowed))}")


def coerce(name: str, value: Any) -> Any:
    """YAML 1.1 reads 1e-5 (no dot) as a string; accept it as the number it obviously is."""
    if isinstance(value, str) and float in FIELD_TYPES.get(name, ()):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def check_value(ck: Checker, key: str, name: str, value: Any) -> None:
    """Type and range of one TrainConfig value, by TrainConfig's own rules."""
    try:
        config.check_field(name, value)
    except ConfigError as err:
        ck.fail(key, err.message)


def parse_param(ck: Checker, key: str, name: str, spec: Any, nested: bool = False) -> Param:
    """One `space` entry: a plain value, one distribution, or `per: FIELD` values; with an optional `when`."""
    if not isinstance(spec, dict):
        spec = coerce(name, spec)
        if isinstance(spec, list):
            ck.fail(key, "a list is not a value; write {choice: [...]} to search over it")
        check_value(ck, key, name, spec)
        return Param(name, None, spec)
    dists = [k for k in spec if k in DISTRIBUTIONS]
    if "per" in spec:
        param = _parse_per(ck, key, name, spec, nested)
    elif len(dists) != 1:
        ck.fail(
            key,
            f"expected exactly one of {', '.join(DISTRIBUTIONS)} (or per: model|FIELD, or a plain value); "
            f"got keys {', '.join(map(str, spec)) or 'none'}",
        )
        raise AssertionError  # unreachable: fail() raises
    else:
        param = _parse_distribution(ck, key, name, spec, dists[0])
    if "when" in spec:
        if nested:  # one condition for the whole setting: an entry's own would be dropped when its value is chosen
            ck.fail(f"{key}.when", "a `when` goes on the setting itself, beside `per`, not inside one of its values")
        param.when = _parse_when(ck, f"{key}.when", spec["when"])
    return param


def _parse_per(ck: Checker, key: str, name: str, spec: dict, nested: bool) -> Param:
    """`{per: model, values: {size: value or distribution}}`, or per another field's value (`per: head`, values
    keyed by each head): what suits one choice of that field need not suit another."""
    if nested:
        ck.fail(key, "`per` cannot be nested")
    ck.check_keys(key, spec, ("per", "values", "when"))
    per = spec["per"]
    if not isinstance(per, str) or per not in FIELD_TYPES:
        close = difflib.get_close_matches(str(per), list(FIELD_TYPES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        ck.fail(f"{key}.per", f"{per!r} is not a setting{hint}; `per` names the setting whose value picks the entry")
    values = spec.get("values")
    if not isinstance(values, dict) or not values:
        ck.fail(f"{key}.values", f"expected a non-empty mapping of {per} -> value or distribution")
    parsed = {per_key(m): parse_param(ck, f"{key}.values.{m}", name, v, nested=True) for m, v in values.items()}
    return Param(name, per=per, values=parsed)


def _parse_distribution(ck: Checker, key: str, name: str, spec: dict, dist: str) -> Param:
    """`{choice: [...]}` or `{uniform|loguniform|randint: [low, high]}`, each value checked by the field's rules."""
    ck.check_keys(key, spec, (dist, "when"))
    args = spec[dist]
    if isinstance(args, list):
        args = [coerce(name, v) for v in args] if dist != "randint" else args
    dkey = f"{key}.{dist}"
    if dist == "choice":
        if not isinstance(args, list) or not args:
            ck.fail(dkey, "expected a non-empty list of values")
        for i, v in enumerate(args):
            check_value(ck, f"{dkey}[{i}]", name, v)
        if len({repr(v) for v in args}) != len(args):
            ck.fail(dkey, f"duplicate values in {args!r}")
    else:
        _check_range(ck, key, name, dist, args)
    return Param(name, dist, args)


def _check_range(ck: Checker, key: str, name: str, dist: str, args: Any) -> None:
    """[low, high] of a uniform, loguniform or randint: of a type the field takes, finite, low below high."""
    dkey = f"{key}.{dist}"
    if not isinstance(args, list) or len(args) != 2:
        ck.fail(dkey, f"expected [low, high], got {args!r}")
    needed = int if dist == "randint" else float
    if needed not in FIELD_TYPES[name]:
        takes = " or ".join(schema.type_name(t) for t in FIELD_TYPES[name])
        ck.fail(key, f"{name} takes {takes}; {dist} cannot produce that (use choice)")
    for i, v in enumerate(args):
        ck.check_type(f"{dkey}[{i}]", v, (int,) if dist == "randint" else (float, int))
        check_value(ck, f"{dkey}[{i}]", name, v)
    low, high = args
    if not low < high:
        ck.fail(dkey, f"low must be below high, got [{low}, {high}]")
    if dist == "loguniform" and low <= 0:
        ck.fail(dkey, f"loguniform needs low > 0, got {low}")
    if not (math.isfinite(low) and math.isfinite(high)):
        ck.fail(dkey, "bounds must be finite")


def _parse_when(ck: Checker, key: str, when: Any) -> dict[str, list]:
    """`when: {field: value or [values]}` -> {field: [values]}."""
    if not isinstance(when, dict) or not when:
        ck.fail(key, "expected a mapping like {head: [mlp2, mlp3]}")
    out = {}
    for dep, allowed in when.items():
        if not isinstance(allowed, list) or not allowed:
            allowed = [allowed]
        out[str(dep)] = allowed
    return out

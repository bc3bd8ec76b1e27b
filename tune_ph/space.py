"""Search-space YAML -> a validated SearchSpec: yaml.safe_load, every error naming the file, key and fix.

The file format is documented in search_spaces/README.md.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from pathlib import Path
from typing import Any

import yaml

from tune_ph import config
from tune_ph.config import TrainConfig, model_max_length
from tune_ph.errors import ConfigError, SpaceError
from tune_ph.search_spec import (
    DATA_FIELDS,
    FIELD_TYPES,
    UNSEARCHABLE,
    OptunaSpace,
    Param,
    SearchSpec,
    default_of,
    dependency_order,
    values_of,
)

__all__ = ["FIELD_TYPES", "OptunaSpace", "SearchSpec", "SpaceError", "apply_overrides", "load_space", "parse_space"]

METRICS = tuple(config.METRIC_MODES)
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
SECTIONS = ("name", "fixed", "space", "search", "scheduler", "resources")
SEARCH_KEYS = {"num_samples": int, "seed": int, "max_concurrent": int, "metric": str}
SCHEDULER_KEYS = {"grace_period": int, "reduction_factor": (int, float), "max_epochs": int}
RESOURCE_KEYS = {"cpus_per_trial": (int, float), "gpus_per_trial": (int, float)}
# An experiment name becomes a folder under --output-dir: one plain path component, nothing that climbs out.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class _Checker:
    """Collects the file name so every error says where it is."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, key: str, message: str) -> None:
        raise SpaceError(f"{self.path}: {key}: {message}")

    def check_type(self, key: str, value: Any, types: type | tuple[type, ...]) -> None:
        try:
            config.check_type(key, value, types if isinstance(types, tuple) else (types,))
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


def _coerce(name: str, value: Any) -> Any:
    """YAML 1.1 reads 1e-5 (no dot) as a string; accept it as the number it obviously is."""
    if isinstance(value, str) and float in FIELD_TYPES.get(name, ()):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _check_value(ck: _Checker, key: str, name: str, value: Any) -> None:
    """Type and range of one TrainConfig value, by TrainConfig's own rules."""
    try:
        config.check_field(name, value)
    except ConfigError as err:
        ck.fail(key, err.message)


def _parse_param(ck: _Checker, key: str, name: str, spec: Any, nested: bool = False) -> Param:
    if not isinstance(spec, dict):
        spec = _coerce(name, spec)
        if isinstance(spec, list):
            ck.fail(key, "a list is not a value; write {choice: [...]} to search over it")
        _check_value(ck, key, name, spec)
        return Param(name, None, spec)
    dists = [k for k in spec if k in DISTRIBUTIONS]
    if "per" in spec:
        if nested:
            ck.fail(key, "`per` cannot be nested")
        ck.check_keys(key, spec, ("per", "values", "when"))
        per = spec["per"]
        if per != "model":
            ck.fail(f"{key}.per", f"only `per: model` is supported, got {per!r}")
        values = spec.get("values")
        if not isinstance(values, dict) or not values:
            ck.fail(f"{key}.values", "expected a non-empty mapping of model size -> value or distribution")
        parsed = {str(m): _parse_param(ck, f"{key}.values.{m}", name, v, nested=True) for m, v in values.items()}
        param = Param(name, per=per, values=parsed)
    elif len(dists) != 1:
        ck.fail(
            key,
            f"expected exactly one of {', '.join(DISTRIBUTIONS)} (or per: model, or a plain value); "
            f"got keys {', '.join(map(str, spec)) or 'none'}",
        )
        raise AssertionError  # unreachable: fail() raises
    else:
        dist = dists[0]
        ck.check_keys(key, spec, (dist, "when"))
        args = spec[dist]
        if isinstance(args, list):
            args = [_coerce(name, v) for v in args] if dist != "randint" else args
        dkey = f"{key}.{dist}"
        if dist == "choice":
            if not isinstance(args, list) or not args:
                ck.fail(dkey, "expected a non-empty list of values")
            for i, v in enumerate(args):
                _check_value(ck, f"{dkey}[{i}]", name, v)
            if len({repr(v) for v in args}) != len(args):
                ck.fail(dkey, f"duplicate values in {args!r}")
        else:
            if not isinstance(args, list) or len(args) != 2:
                ck.fail(dkey, f"expected [low, high], got {args!r}")
            needed = int if dist == "randint" else float
            if needed not in FIELD_TYPES[name]:
                takes = " or ".join(config.type_name(t) for t in FIELD_TYPES[name])
                ck.fail(key, f"{name} takes {takes}; {dist} cannot produce that (use choice)")
            for i, v in enumerate(args):
                ck.check_type(f"{dkey}[{i}]", v, (int,) if dist == "randint" else (float, int))
                _check_value(ck, f"{dkey}[{i}]", name, v)
            low, high = args
            if not low < high:
                ck.fail(dkey, f"low must be below high, got [{low}, {high}]")
            if dist == "loguniform" and low <= 0:
                ck.fail(dkey, f"loguniform needs low > 0, got {low}")
            if not (math.isfinite(low) and math.isfinite(high)):
                ck.fail(dkey, "bounds must be finite")
        param = Param(name, dist, args)
    if "when" in spec:
        when = spec["when"]
        if not isinstance(when, dict) or not when:
            ck.fail(f"{key}.when", "expected a mapping like {head: [mlp2, mlp3]}")
        param.when = {}
        for dep, allowed in when.items():
            if not isinstance(allowed, list) or not allowed:
                allowed = [allowed]
            param.when[str(dep)] = allowed
    return param


def parse_space(raw: Any, path: str = "<space>") -> SearchSpec:
    """Validate a loaded YAML document; raise SpaceError naming the file and key on the first problem."""
    ck = _Checker(path)
    if not isinstance(raw, dict):
        ck.fail("(top level)", f"expected a mapping with sections {', '.join(SECTIONS)}")
    ck.check_keys("", raw, SECTIONS)
    if "space" not in raw or not raw["space"]:
        ck.fail(
            "space",
            "missing or empty; name at least one TrainConfig field to search, e.g. {head: {choice: [linear, mlp2]}}",
        )
    spec = SearchSpec(path=path, name=str(raw.get("name") or Path(path).stem), raw=copy.deepcopy(raw))
    check_name(ck, "name", spec.name)

    fixed = dict(raw.get("fixed") or {})
    ck.check_keys("fixed", fixed, list(FIELD_TYPES))
    for name, value in fixed.items():
        key = f"fixed.{name}"
        if name == "max_length" and isinstance(value, dict):
            ck.check_keys(key, value, ("per", "values"))
            if value.get("per") != "model" or not isinstance(value.get("values"), dict) or not value["values"]:
                ck.fail(key, "expected a number or {per: model, values: {size: number}}")
            for m, v in value["values"].items():
                _check_value(ck, f"{key}.values.{m}", "max_length", v)
            fixed[name] = {str(m): v for m, v in value["values"].items()}
        else:
            fixed[name] = value = _coerce(name, value)
            _check_value(ck, key, name, value)
    spec.fixed = dict(fixed)

    space = raw["space"]
    ck.check_keys("space", space, list(FIELD_TYPES))
    for name, value in space.items():
        key = f"space.{name}"
        if name in fixed:
            ck.fail(key, f"{name} is also in fixed; keep it in one section")
        param = _parse_param(ck, key, name, value)
        if param.dist is None and param.per is None:
            spec.fixed[name] = param.args  # a plain scalar under space: just a fixed value
            continue
        if name in UNSEARCHABLE:
            what = "the tokenized data" if name in DATA_FIELDS else "the architecture"
            ck.fail(
                key,
                f"{name} decides {what} (built once, before the trials) and cannot be searched; put a "
                "single value in fixed",
            )
        spec.params[name] = param

    for name, param in spec.params.items():
        key = f"space.{name}"
        deps = list((param.when or {}).keys()) + ([param.per] if param.per else [])
        for dep in deps:
            if dep == name:
                ck.fail(key, "a parameter cannot depend on itself")
            if dep not in spec.params and dep not in spec.fixed and dep != "model":
                ck.fail(key, f"depends on {dep!r}, which is neither searched nor fixed")
        for dep, allowed in (param.when or {}).items():
            possible = _possible_values(spec, dep)
            for v in allowed:
                if dep in FIELD_TYPES:
                    _check_value(ck, f"{key}.when.{dep}", dep, v)
                if dep in spec.params and possible is not None and v not in possible:
                    ck.fail(
                        f"{key}.when.{dep}", f"{v!r} is not a possible {dep}; possible: {', '.join(map(str, possible))}"
                    )
        if param.per:
            missing = [m for m in spec.model_choices() if m not in param.values]
            if missing:
                ck.fail(
                    f"{key}.values",
                    f"no value for model {', '.join(missing)}; every model the search can pick needs one",
                )
    if "model" in spec.params and values_of(spec.params["model"]) == []:
        ck.fail("space.model", "model can only be searched with choice")
    try:
        dependency_order(spec.params)
    except RecursionError:
        ck.fail("space", "circular `when`/`per` dependencies")

    spec.search = _section(ck, raw, "search", SEARCH_KEYS)
    spec.search.setdefault("num_samples", 10)
    spec.search.setdefault("seed", 0)
    spec.search.setdefault("max_concurrent", 1)
    spec.search.setdefault("metric", "val_loss")
    spec.scheduler = _section(ck, raw, "scheduler", SCHEDULER_KEYS)
    spec.resources = _section(ck, raw, "resources", RESOURCE_KEYS, per_model=("gpus_per_trial",))
    spec.resources.setdefault("cpus_per_trial", 1)
    spec.resources.setdefault("gpus_per_trial", 0)
    validate(spec)
    return spec


def _possible_values(spec: SearchSpec, name: str) -> list | None:
    if name in spec.params:
        vals = values_of(spec.params[name])
        return vals or None
    if name in spec.fixed:
        return [spec.fixed[name]]
    return [default_of(name)] if name in FIELD_TYPES else None


def check_name(ck: _Checker, key: str, name: str) -> None:
    """An experiment name is one folder under --output-dir; `../x` or `/abs` would write elsewhere."""
    if not _NAME.match(name) or name in (".", ".."):
        ck.fail(
            key,
            f"{name!r} is not a usable experiment name: use letters, digits, '.', '_' and '-' "
            "(a single folder name, at most 100 characters)",
        )


def _section(ck: _Checker, raw: dict, name: str, keys: dict, per_model: tuple = ()) -> dict:
    section = raw.get(name) or {}
    ck.check_keys(name, section, keys)
    out = {}
    for k, v in section.items():
        if k in per_model and isinstance(v, dict):
            ck.check_keys(f"{name}.{k}", v, ("per", "values"))
            if v.get("per") != "model" or not isinstance(v.get("values"), dict):
                ck.fail(f"{name}.{k}", "expected a number or {per: model, values: {size: number}}")
            for m, x in v["values"].items():
                ck.check_type(f"{name}.{k}.values.{m}", x, keys[k] if isinstance(keys[k], tuple) else (keys[k],))
            out[k] = {str(m): x for m, x in v["values"].items()}
            continue
        ck.check_type(f"{name}.{k}", v, keys[k])  # also refuses NaN and infinities
        out[k] = v
    return out


def _resolve_fixed_conditions(spec: SearchSpec) -> None:
    """A `when` on a fixed field is decided once: drop the parameter, or drop the condition."""
    for name in list(spec.params):
        param = spec.params[name]
        for dep in [d for d in (param.when or {}) if d not in spec.params]:
            value = spec.fixed.get(dep, default_of(dep) if dep in FIELD_TYPES else None)
            if value not in param.when[dep]:
                del spec.params[name]
                break
            del param.when[dep]


def validate(spec: SearchSpec) -> None:
    """Cross-field checks, rerun after CLI overrides: ranges, lengths that fit each model, resources."""
    ck = _Checker(spec.path)
    _resolve_fixed_conditions(spec)
    s, sch, res = spec.search, spec.scheduler, spec.resources
    for k, v in spec.fixed.items():
        if k in FIELD_TYPES and not (k == "max_length" and isinstance(v, dict)):
            _check_value(ck, f"fixed.{k}", k, v)
    if s["num_samples"] < 1:
        ck.fail("search.num_samples", f"must be >= 1, got {s['num_samples']}")
    if s["max_concurrent"] < 1:
        ck.fail("search.max_concurrent", f"must be >= 1, got {s['max_concurrent']}")
    if s["metric"] not in METRICS:
        ck.fail("search.metric", f"unknown metric {s['metric']!r}; allowed: {', '.join(METRICS)}")
    epochs = spec.fixed.get("epochs", default_of("epochs"))
    max_epochs = sch.get("max_epochs", epochs)
    if "epochs" in spec.params:
        ck.fail(
            "space.epochs",
            "epochs cannot be searched; ASHA decides how long each trial trains "
            "(set fixed.epochs / scheduler.max_epochs)",
        )
    if max_epochs < 1:
        ck.fail("scheduler.max_epochs", f"must be >= 1, got {max_epochs}")
    if max_epochs > epochs:
        ck.fail(
            "scheduler.max_epochs",
            f"{max_epochs} is more than fixed.epochs ({epochs}); trials never train longer than epochs",
        )
    grace = sch.get("grace_period", 1)
    if not 1 <= grace <= max_epochs:
        ck.fail("scheduler.grace_period", f"must be between 1 and max_epochs ({max_epochs}), got {grace}")
    if sch.get("reduction_factor", 2) <= 1:
        ck.fail("scheduler.reduction_factor", f"must be > 1, got {sch['reduction_factor']}")
    if res["cpus_per_trial"] <= 0:
        ck.fail("resources.cpus_per_trial", f"must be > 0, got {res['cpus_per_trial']}")
    gpus = res["gpus_per_trial"]
    for m, g in gpus.items() if isinstance(gpus, dict) else [("", gpus)]:
        key = f"resources.gpus_per_trial{'.values.' + m if m else ''}"
        if g < 0 or (g > 1 and g != int(g)):
            ck.fail(key, f"must be a fraction in [0, 1] or a whole number of GPUs, got {g}")
    models = spec.model_choices()
    if isinstance(gpus, dict):
        missing = [m for m in models if m not in gpus]
        if missing:
            ck.fail("resources.gpus_per_trial.values", f"no value for model {', '.join(missing)}")
    if spec.fixed.get("model_config") and "model" in spec.params:
        ck.fail("fixed.model_config", "a custom model_config fixes the architecture; do not also search model")
    lengths = spec.fixed.get("max_length")
    if isinstance(lengths, dict):
        missing = [m for m in models if m not in lengths]
        if missing:
            ck.fail("fixed.max_length.values", f"no value for model {', '.join(missing)}")
    # Cross-field rules (a length that fits the model, model_config needs from_scratch, split fractions) are
    # TrainConfig's: build the config each model choice would get, and point an error at its YAML key.
    scalars = {k: v for k, v in spec.fixed.items() if not isinstance(v, dict) or k == "model_config"}
    for m in models:
        try:  # the search builds one dataset per model's max length before any trial: it must be known now
            model_max_length(m, spec.fixed.get("model_config"))
        except ValueError as err:
            ck.fail("space.model" if "model" in spec.params else "fixed.model", str(err))
        try:
            TrainConfig.from_dict({**scalars, "model": m, "max_length": spec.fixed_length_for(m)})
        except ConfigError as err:
            where = "space" if err.field in spec.params else "fixed"
            ck.fail(f"{where}.{err.field}", err.message)


def load_space(path: str | Path) -> SearchSpec:
    """Read and validate a search-space YAML file (yaml.safe_load)."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(
            f"{path}: no such file; the shipped spaces are in search_spaces/ (heads.yaml, sizes.yaml, quick.yaml)"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpaceError(f"{path}: not valid YAML: {err}") from err
    return parse_space(raw, str(path))


def apply_overrides(spec: SearchSpec, overrides: dict[str, Any]) -> SearchSpec:
    """CLI flags win over the file: keys are fixed TrainConfig fields or search/scheduler/resources keys."""
    for key, value in overrides.items():
        if value is None:
            continue
        if key in SEARCH_KEYS:
            spec.search[key] = value
        elif key in SCHEDULER_KEYS:
            spec.scheduler[key] = value
        elif key in RESOURCE_KEYS:
            spec.resources[key] = value
        elif key in FIELD_TYPES:
            spec.params.pop(key, None)
            spec.fixed[key] = value
        elif key == "name":
            check_name(_Checker(spec.path), "--name", value)
            spec.name = value
        else:
            raise SpaceError(f"{spec.path}: unknown override {key!r}")
    if "epochs" in overrides and overrides["epochs"] is not None and "max_epochs" in spec.scheduler:
        # --epochs shortens (or lengthens) the whole run; ASHA's max follows unless given explicitly.
        if overrides.get("max_epochs") is None:
            spec.scheduler["max_epochs"] = overrides["epochs"]
    spec.scheduler["grace_period"] = min(
        spec.scheduler.get("grace_period", 1),
        spec.scheduler.get("max_epochs", spec.fixed.get("epochs", default_of("epochs"))),
    )
    validate(spec)
    return spec

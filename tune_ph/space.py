"""Search-space YAML: load with yaml.safe_load, validate before Ray starts, and turn into an Optuna define-by-run space.

File format (every section optional except ``space``; unknown keys are errors)::

    name: heads                      # experiment name (default: the file's stem)
    fixed:                           # TrainConfig fields shared by every trial
      dataset: demo                  # "demo", a hub id or a local path
      model: hyenadna-tiny-1k-seqlen
      from_scratch: true
      epochs: 4
      num_sets: 2
      max_length: 256                # tokens per sequence set; omitted = the model's max length
      loss: smoothl1
      model_config: {d_model: 64, n_layer: 2, l_max: 258}   # optional custom backbone (from_scratch
                                     # only): HyenaDNAConfig fields; it reads up to l_max - 2 tokens
    space:                           # what Optuna's TPE searches; one entry per TrainConfig field
      head: {choice: [linear, mlp2, mlp3]}
      pooling: {choice: [pool, last]}
      freeze_backbone: {choice: [false, true]}
      learning_rate: {loguniform: [1.0e-5, 1.0e-3]}
      weight_decay: {uniform: [0.0, 0.1]}
      grad_clip: {choice: [0.5, 1.0]}
      loss_beta: 1.0                 # a plain scalar is a fixed value (same as putting it in `fixed`)
      seed: {randint: [0, 100]}      # integers, both ends included
      head_dropout: {uniform: [0.0, 0.3], when: {head: [mlp2, mlp3]}}   # conditional: only for MLP heads
      batch_size:                    # a value per model size: each entry is a distribution or a scalar
        per: model
        values:
          hyenadna-tiny-1k-seqlen: {choice: [8, 16]}
          hyenadna-small-32k-seqlen: 2
    search:
      num_samples: 20                # trials
      seed: 0                        # seeds TPE
      max_concurrent: 2              # trials at once (TuneConfig.max_concurrent_trials)
      metric: val_loss               # what TPE and the final selection minimise (val_loss|val_rmse|val_mae)
    scheduler:                       # ASHA on val_loss, one rung step per epoch
      grace_period: 1
      reduction_factor: 2
      max_epochs: 4                  # default: fixed.epochs
    resources:
      cpus_per_trial: 1
      gpus_per_trial: 0.25           # a fraction lets several trials share a GPU; may be `per: model` too

``fixed`` values that may not be searched: dataset, model_config, max_length, num_sets (they decide the
tokenized data, which is built once on the driver). ``max_length`` may be a ``per: model`` mapping of scalars.
"""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# TrainConfig fields (tune_ph.train) and the type each must have; tests check this stays in sync with TrainConfig.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "dataset": (str,),
    "model": (str,),
    "from_scratch": (bool,),
    "head": (str,),
    "pooling": (str,),
    "head_dropout": (float, int),
    "freeze_backbone": (bool,),
    "learning_rate": (float, int),
    "weight_decay": (float, int),
    "batch_size": (int,),
    "epochs": (int,),
    "loss": (str,),
    "loss_beta": (float, int),
    "lr_scheduler": (str,),
    "grad_clip": (float, int),
    "seed": (int,),
    "device": (str,),
    "num_sets": (int,),
    "max_length": (int,),
    "early_stopping_patience": (int,),
    "gradient_checkpointing": (bool,),
    "split_seed": (int,),
    "test_fraction": (float,),
    "val_fraction": (float,),
    "cache_dir": (str,),
    "skip_bad_rows": (bool,),
}
# Decide the tokenized data (built once on the driver), so they cannot vary freely between trials.
DATA_FIELDS = ("dataset", "max_length", "num_sets", "split_seed", "test_fraction", "val_fraction", "cache_dir",
               "skip_bad_rows")
LOSSES = ("smoothl1", "mse", "mae", "huber")
LR_SCHEDULERS = ("none", "plateau")
METRICS = ("val_loss", "val_rmse", "val_mae")
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
SECTIONS = ("name", "fixed", "space", "search", "scheduler", "resources")
SEARCH_KEYS = {"num_samples": int, "seed": int, "max_concurrent": int, "metric": str}
SCHEDULER_KEYS = {"grace_period": int, "reduction_factor": (int, float), "max_epochs": int}
RESOURCE_KEYS = {"cpus_per_trial": (int, float), "gpus_per_trial": (int, float)}
MIN_MAX_LENGTH = 8
DEFAULT_MODEL = "hyenadna-tiny-1k-seqlen"


class SpaceError(ValueError):
    """A search-space file that cannot be used; the message names the file, the key path and what is allowed."""


@dataclass
class Param:
    """One searched TrainConfig field: a distribution, a scalar, or a mapping per value of another field."""

    name: str
    dist: str | None = None  # one of DISTRIBUTIONS; None = fixed value
    args: Any = None  # choice list, [low, high], or the fixed value
    when: dict[str, list] | None = None  # only suggested when every named field has one of the listed values
    per: str | None = None  # the field whose value picks an entry of `values`
    values: dict[str, Param] | None = None


@dataclass
class SearchSpec:
    """A validated search-space file: fixed TrainConfig values, searched parameters and run settings."""

    path: str
    name: str
    fixed: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Param] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def model_choices(self) -> list[str]:
        """Every model size a trial may use."""
        if "model" in self.params:
            return [str(v) for v in _values_of(self.params["model"])]
        return [self.fixed.get("model", DEFAULT_MODEL)]

    def max_length_for(self, model: str) -> int:
        """Tokens per sequence set a trial of this model uses."""
        value = self.fixed.get("max_length")
        if isinstance(value, dict):
            value = value.get(model)
        if value is None:
            value = model_max_length(model, self.fixed.get("model_config"))
        return int(value)

    def max_lengths(self) -> list[int]:
        """The distinct max lengths; one tokenized dataset is built for each."""
        return sorted({self.max_length_for(m) for m in self.model_choices()})

    def gpus_for(self, model: str) -> float:
        value = self.resources.get("gpus_per_trial", 0)
        if isinstance(value, dict):
            value = value.get(model, 0)
        return float(value)

    def param_space(self) -> dict[str, Any]:
        """Constants every trial config carries (Tune merges the searcher's suggestions into it)."""
        out = {k: v for k, v in self.fixed.items() if k != "max_length" or not isinstance(v, dict)}
        if isinstance(self.fixed.get("max_length"), dict):
            out["max_length_per_model"] = dict(self.fixed["max_length"])
        return out

    def to_dict(self) -> dict[str, Any]:
        """The effective settings (YAML plus CLI overrides) in the file format, saved with the experiment."""
        raw = copy.deepcopy(self.raw)
        fixed = copy.deepcopy(self.fixed)
        if isinstance(fixed.get("max_length"), dict):
            fixed["max_length"] = {"per": "model", "values": fixed["max_length"]}
        raw["name"] = self.name
        raw["fixed"] = fixed
        # Scalars written under `space` and overridden fields now live in `fixed` only.
        raw["space"] = {k: v for k, v in (raw.get("space") or {}).items() if k in self.params}
        raw["search"] = dict(self.search)
        raw["scheduler"] = dict(self.scheduler)
        raw["resources"] = copy.deepcopy(self.resources)
        gpus = raw["resources"].get("gpus_per_trial")
        if isinstance(gpus, dict):
            raw["resources"]["gpus_per_trial"] = {"per": "model", "values": gpus}
        return raw


class OptunaSpace:
    """Optuna define-by-run space: suggests conditional and per-model parameters so TPE models them.

    A class (not a closure) so that Ray can pickle the searcher into the experiment's state for --resume.
    """

    def __init__(self, params: dict[str, Param]):
        self.params = params
        self.order = _dependency_order(params)

    def __call__(self, trial: Any) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        for name in self.order:
            param = self.params[name]
            if param.when and not all(chosen.get(k) in allowed for k, allowed in param.when.items()):
                continue
            if param.per is not None:
                key = str(chosen.get(param.per))
                # A separate Optuna name per size: each has its own value range, and TPE learns them apart.
                chosen[name] = _suggest(trial, f"{name}__{key}", param.values[key])
            else:
                chosen[name] = _suggest(trial, name, param)
        return chosen


def _suggest(trial: Any, optuna_name: str, param: Param) -> Any:
    if param.dist is None:
        return param.args
    if param.dist == "choice":
        return trial.suggest_categorical(optuna_name, list(param.args))
    low, high = param.args
    if param.dist == "randint":
        return trial.suggest_int(optuna_name, int(low), int(high))
    return trial.suggest_float(optuna_name, float(low), float(high), log=param.dist == "loguniform")


def _dependency_order(params: dict[str, Param]) -> list[str]:
    order: list[str] = []

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in order:
            return
        param = params[name]
        for dep in list((param.when or {}).keys()) + ([param.per] if param.per else []):
            if dep in params:
                visit(dep, stack + (name,))
        order.append(name)

    for name in params:
        visit(name, ())
    return order


def _values_of(param: Param) -> list[Any]:
    """The values a parameter can take (only meaningful for choice and fixed values)."""
    if param.dist == "choice":
        return list(param.args)
    if param.dist is None and param.per is None:
        return [param.args]
    return []


def model_max_length(model: str, model_config: dict | None = None) -> int:
    """Tokens a model reads at most: from a custom model_config, a public size name or a local config.json."""
    if model_config:
        from hyena_dna import HyenaDNAConfig

        return HyenaDNAConfig.from_dict(model_config).max_length
    from hyena_dna import PRETRAINED_SIZES

    size = model.rstrip("/").split("/")[-1]
    if size in PRETRAINED_SIZES:
        return PRETRAINED_SIZES[size][2]
    config_json = Path(model) / "config.json"
    if config_json.is_file():
        from hyena_dna import HyenaDNAConfig

        return HyenaDNAConfig.from_json(config_json).max_length
    raise KeyError(model)


class _Checker:
    """Collects the file name so every error says where it is."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, key: str, message: str) -> None:
        raise SpaceError(f"{self.path}: {key}: {message}")

    def check_type(self, key: str, value: Any, types: type | tuple[type, ...]) -> None:
        types = types if isinstance(types, tuple) else (types,)
        # bool is an int in Python; a YAML `true` is never a number here.
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            names = " or ".join(_type_name(t) for t in types)
            self.fail(key, f"expected {names}, got {value!r} ({_type_name(type(value))})")

    def check_keys(self, key: str, mapping: Any, allowed: Any) -> None:
        if not isinstance(mapping, dict):
            self.fail(key, f"expected a mapping, got {mapping!r}")
        for k in mapping:
            if k not in allowed:
                where = f"{key}.{k}" if key else str(k)
                close = difflib.get_close_matches(str(k), list(map(str, allowed)), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.fail(where, f"unknown key{hint}; allowed: {', '.join(map(str, allowed))}")


def _type_name(t: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false", dict: "a mapping",
            list: "a list", type(None): "null"}.get(t, t.__name__)


def _coerce(name: str, value: Any) -> Any:
    """YAML 1.1 reads 1e-5 (no dot) as a string; accept it as the number it obviously is."""
    if isinstance(value, str) and float in FIELD_TYPES.get(name, ()):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _check_value(ck: _Checker, key: str, name: str, value: Any) -> None:
    """Type and range of one TrainConfig value."""
    from tune_ph.head import ARCHITECTURES, POOLINGS

    ck.check_type(key, value, FIELD_TYPES[name])
    allowed = {"head": ARCHITECTURES, "pooling": POOLINGS, "loss": LOSSES, "lr_scheduler": LR_SCHEDULERS}
    if name in allowed and value not in allowed[name]:
        ck.fail(key, f"unknown {name} {value!r}; allowed: {', '.join(allowed[name])}")
    if name == "model":
        try:
            model_max_length(value)
        except KeyError:
            from hyena_dna import PRETRAINED_SIZES

            ck.fail(key, f"unknown model size {value!r}; allowed: {', '.join(PRETRAINED_SIZES)} "
                         "or a local folder with config.json")
    positive = ("batch_size", "epochs", "num_sets", "learning_rate", "early_stopping_patience", "loss_beta")
    if name in positive and value <= 0:
        ck.fail(key, f"{name} must be > 0, got {value!r}")
    if name in ("weight_decay", "grad_clip") and value < 0:
        ck.fail(key, f"{name} must be >= 0, got {value!r}")
    if name in ("test_fraction", "val_fraction") and not 0 < value < 1:
        ck.fail(key, f"{name} must be between 0 and 1, got {value!r}")
    if name == "head_dropout" and not 0 <= value < 1:
        ck.fail(key, f"head_dropout must be in [0, 1), got {value!r}")
    if name == "max_length" and value < MIN_MAX_LENGTH:
        ck.fail(key, f"max_length must be at least {MIN_MAX_LENGTH} tokens, got {value!r}")
    if name == "device" and not (value in ("auto", "cpu") or value.startswith("cuda")):
        ck.fail(key, f"device must be auto, cpu or cuda[:N], got {value!r}")


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
        ck.fail(key, f"expected exactly one of {', '.join(DISTRIBUTIONS)} (or per: model, or a plain value); "
                     f"got keys {', '.join(map(str, spec)) or 'none'}")
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
                takes = " or ".join(_type_name(t) for t in FIELD_TYPES[name])
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
        ck.fail("space", "missing or empty; name at least one TrainConfig field to search, e.g. "
                         "{head: {choice: [linear, mlp2]}}")
    spec = SearchSpec(path=path, name=str(raw.get("name") or Path(path).stem), raw=copy.deepcopy(raw))

    fixed = raw.get("fixed") or {}
    ck.check_keys("fixed", fixed, list(FIELD_TYPES) + ["model_config"])
    for name, value in fixed.items():
        key = f"fixed.{name}"
        if name == "model_config":
            _check_model_config(ck, key, value, fixed)
        elif name == "max_length" and isinstance(value, dict):
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
        if name in DATA_FIELDS:
            ck.fail(key, f"{name} decides the tokenized data and cannot be searched; put a single value in fixed")
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
                    ck.fail(f"{key}.when.{dep}", f"{v!r} is not a possible {dep}; possible: "
                                                 f"{', '.join(map(str, possible))}")
        if param.per:
            missing = [m for m in spec.model_choices() if m not in param.values]
            if missing:
                ck.fail(f"{key}.values", f"no value for model {', '.join(missing)}; every model the search can "
                                         f"pick needs one")
    if "model" in spec.params and _values_of(spec.params["model"]) == []:
        ck.fail("space.model", "model can only be searched with choice")
    try:
        _dependency_order(spec.params)
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
        vals = _values_of(spec.params[name])
        return vals or None
    if name in spec.fixed:
        return [spec.fixed[name]]
    if name == "model":
        return [DEFAULT_MODEL]
    return None


def _check_model_config(ck: _Checker, key: str, value: Any, fixed: dict) -> None:
    if not isinstance(value, dict):
        ck.fail(key, "expected a mapping of HyenaDNAConfig fields, e.g. {d_model: 64, n_layer: 2}")
    if not fixed.get("from_scratch", False):
        ck.fail(key, "a custom model_config needs `from_scratch: true` (there are no pretrained weights for it)")
    from hyena_dna import HyenaDNAConfig

    known = set(HyenaDNAConfig.__dataclass_fields__) - {"extra"}
    ck.check_keys(key, value, sorted(known))
    try:
        HyenaDNAConfig.from_dict(value)
    except (TypeError, ValueError) as err:
        ck.fail(key, str(err))


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
                ck.check_type(f"{name}.{k}.values.{m}", x, keys[k])
            out[k] = {str(m): x for m, x in v["values"].items()}
            continue
        ck.check_type(f"{name}.{k}", v, keys[k])
        out[k] = v
    return out


def _resolve_fixed_conditions(spec: SearchSpec) -> None:
    """A `when` on a fixed field is decided once: drop the parameter, or drop the condition."""
    for name in list(spec.params):
        param = spec.params[name]
        for dep in [d for d in (param.when or {}) if d not in spec.params]:
            value = spec.fixed.get(dep, DEFAULT_MODEL if dep == "model" else None)
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
    epochs = spec.fixed.get("epochs", 10)
    max_epochs = sch.get("max_epochs", epochs)
    if "epochs" in spec.params:
        ck.fail("space.epochs", "epochs cannot be searched; ASHA decides how long each trial trains "
                                "(set fixed.epochs / scheduler.max_epochs)")
    if max_epochs < 1:
        ck.fail("scheduler.max_epochs", f"must be >= 1, got {max_epochs}")
    if max_epochs > epochs:
        ck.fail("scheduler.max_epochs", f"{max_epochs} is more than fixed.epochs ({epochs}); "
                                        "trials never train longer than epochs")
    grace = sch.get("grace_period", 1)
    if not 1 <= grace <= max_epochs:
        ck.fail("scheduler.grace_period", f"must be between 1 and max_epochs ({max_epochs}), got {grace}")
    if sch.get("reduction_factor", 2) <= 1:
        ck.fail("scheduler.reduction_factor", f"must be > 1, got {sch['reduction_factor']}")
    if res["cpus_per_trial"] <= 0:
        ck.fail("resources.cpus_per_trial", f"must be > 0, got {res['cpus_per_trial']}")
    gpus = res["gpus_per_trial"]
    for m, g in (gpus.items() if isinstance(gpus, dict) else [("", gpus)]):
        key = f"resources.gpus_per_trial{'.values.' + m if m else ''}"
        if g < 0 or (g > 1 and g != int(g)):
            ck.fail(key, f"must be a fraction in [0, 1] or a whole number of GPUs, got {g}")
    models = spec.model_choices()
    if isinstance(gpus, dict):
        missing = [m for m in models if m not in gpus]
        if missing:
            ck.fail("resources.gpus_per_trial.values", f"no value for model {', '.join(missing)}")
    mc = spec.fixed.get("model_config")
    if mc and "model" in spec.params:
        ck.fail("fixed.model_config", "a custom model_config fixes the architecture; do not also search model")
    ml = spec.fixed.get("max_length")
    for m in models:
        try:
            model_max = model_max_length(m, mc)
        except KeyError:
            from hyena_dna import PRETRAINED_SIZES

            ck.fail("space.model" if "model" in spec.params else "fixed.model",
                    f"unknown model size {m!r}; allowed: {', '.join(PRETRAINED_SIZES)} or a local folder")
            raise AssertionError from None
        if isinstance(ml, dict) and m not in ml:
            ck.fail("fixed.max_length.values", f"no value for model {m}")
        length = ml.get(m) if isinstance(ml, dict) else ml
        if length is not None and length > model_max:
            ck.fail("fixed.max_length", f"{length} tokens do not fit model {m}, whose max length is "
                                        f"{model_max}; allowed: {MIN_MAX_LENGTH}..{model_max}")


def load_space(path: str | Path) -> SearchSpec:
    """Read and validate a search-space YAML file (yaml.safe_load)."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"{path}: no such file; the shipped spaces are in search_spaces/ (heads.yaml, "
                         "sizes.yaml, quick.yaml)")
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
            spec.name = value
        else:
            raise SpaceError(f"{spec.path}: unknown override {key!r}")
    if "epochs" in overrides and overrides["epochs"] is not None and "max_epochs" in spec.scheduler:
        # --epochs shortens (or lengthens) the whole run; ASHA's max follows unless given explicitly.
        if overrides.get("max_epochs") is None:
            spec.scheduler["max_epochs"] = overrides["epochs"]
    spec.scheduler["grace_period"] = min(spec.scheduler.get("grace_period", 1),
                                         spec.scheduler.get("max_epochs", spec.fixed.get("epochs", 10)))
    validate(spec)
    return spec

"""A validated search space (SearchSpec) and the Optuna define-by-run space that samples trial configs from it."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from tune_ph import config
from tune_ph.config import TrainConfig, model_max_length
from tune_ph.search_settings import ResourceSettings, SchedulerSettings, SearchSettings, to_dicts

# The TrainConfig fields a search space may set, with the types each accepts (derived from TrainConfig).
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    name: config.field_types(name) for name in config.field_names() if config.field_meta(name).get("yaml", True)
}
# Decide the tokenized data (built once on the driver), so they cannot vary freely between trials.
DATA_FIELDS = tuple(name for name in FIELD_TYPES if config.field_meta(name).get("data"))
UNSEARCHABLE = DATA_FIELDS + tuple(
    name for name in FIELD_TYPES if config.field_meta(name).get("searchable", True) is False
)


def per_key(value: Any) -> str:
    """The key of a `per` entry for a value the field takes: a string is itself, anything else its JSON text, so a
    YAML key (true, 1e-3, null), its JSON copy in the saved settings ("true") and the trial's value all agree."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        if isinstance(parsed, str):
            return value
        value = parsed
    return json.dumps(value)


def default_of(name: str) -> Any:
    """A TrainConfig field's default value."""
    return TrainConfig.__dataclass_fields__[name].default


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
    search: SearchSettings = field(default_factory=SearchSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    resources: ResourceSettings = field(default_factory=ResourceSettings)
    raw: dict[str, Any] = field(default_factory=dict)

    def model_choices(self) -> list[str]:
        """Every model size a trial may use."""
        if "model" in self.params:
            return [str(v) for v in values_of(self.params["model"])]
        return [self.fixed.get("model", default_of("model"))]

    def max_length_for(self, model: str) -> int:
        """Tokens per sequence set a trial of this model uses."""
        value = self.fixed_length_for(model)
        return int(value) if value is not None else model_max_length(model, self.fixed.get("model_config"))

    def fixed_length_for(self, model: str) -> int | None:
        """The max length fixed for this model in the file (None: the model's maximum)."""
        value = self.fixed.get("max_length")
        return value.get(model) if isinstance(value, dict) else value

    def train_config(self, model: str) -> TrainConfig:
        """The TrainConfig of the fixed settings for one model choice (its fixed max_length, else None: the data
        decides it); the data fields are every trial's, so the search prepares its data and baseline from this."""
        fixed = {k: v for k, v in self.fixed.items() if k in config.field_names() and k != "max_length"}
        return TrainConfig.from_dict({**fixed, "model": model, "max_length": self.fixed_length_for(model)})

    def gpus_for(self, model: str) -> float:
        value = self.resources.gpus_per_trial
        if isinstance(value, dict):
            value = value.get(model, 0)
        return float(value)

    def param_space(self) -> dict[str, Any]:
        """Constants every trial config carries (Tune merges the searcher's suggestions into it)."""
        out = {k: v for k, v in self.fixed.items() if k != "max_length" or not isinstance(v, dict)}
        if isinstance(self.fixed.get("max_length"), dict) and "model" not in self.params:
            out["max_length"] = self.fixed_length_for(self.model_choices()[0])
        return out

    def trial_params(self) -> dict[str, Param]:
        """What the Optuna space decides per trial: the searched params, plus per-model fixed values
        (a max length per size), which it returns under their own field names once the model is chosen."""
        params = dict(self.params)
        lengths = self.fixed.get("max_length")
        if isinstance(lengths, dict) and "model" in self.params:
            params["max_length"] = Param(
                "max_length", per="model", values={m: Param("max_length", None, v) for m, v in lengths.items()}
            )
        return params

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
        raw.update(to_dicts(self.search, self.scheduler, self.resources))
        return raw


class OptunaSpace:
    """Optuna define-by-run space: suggests conditional and per-model parameters so TPE models them.

    A class (not a closure) so that Ray can pickle the searcher into the experiment's state for --resume.
    """

    def __init__(self, params: dict[str, Param]):
        self.params = params
        self.order = dependency_order(params)

    def __call__(self, trial: Any) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        for name in self.order:
            param = self.params[name]
            if param.when and not all(chosen.get(k) in allowed for k, allowed in param.when.items()):
                continue
            if param.per is not None:
                if param.per not in chosen:  # the field it depends on did not apply to this trial
                    continue
                key = per_key(chosen[param.per])
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


def dependency_order(params: dict[str, Param]) -> list[str]:
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


def values_of(param: Param) -> list[Any]:
    """The values a parameter can take (only meaningful for choice and fixed values)."""
    if param.dist == "choice":
        return list(param.args)
    if param.dist is None and param.per is None:
        return [param.args]
    return []

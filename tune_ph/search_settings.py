"""The search's run settings, the YAML's `search`, `scheduler` and `resources` sections: each field's default, help,
range rule and command-line flag (`python -m tune_ph.search --num-samples ...`), in one place."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from tune_ph import schema
from tune_ph.metrics import METRIC_MODES, VAL_LOSS

METRICS = tuple(METRIC_MODES)
# numpy's seed range, which Optuna's TPE sampler uses.
SEED_LIMIT = 2**32


def _setting(default: Any, help: str, *, rule: schema.Rule | None = None, cli: bool = False, **meta: Any) -> Any:
    """A settings field with its help text and range rule (schema.setting).

    rule: value -> what is wrong with it (None: nothing); run on the file's values and on the flags' alike.
    cli: a `--flag` of the search command overrides it. meta: choices (allowed values), per_model=True (a
    `{per: model, values: {size: value}}` mapping is also accepted, each value under the rule).
    """
    return schema.setting(default, help, rule=rule, cli=cli, **meta)


def _at_least_one(value: Any) -> str | None:
    return None if value >= 1 else f"must be >= 1, got {value}"


def _seed(value: int) -> str | None:
    return None if 0 <= value < SEED_LIMIT else f"must be >= 0 and below 2**32 (--seed overrides it), got {value}"


def _above_one(value: float) -> str | None:
    return None if value > 1 else f"must be > 1, got {value}"


def _positive(value: float) -> str | None:
    return None if value > 0 else f"must be > 0, got {value}"


def _gpu_share(value: float) -> str | None:
    if value < 0 or (value > 1 and value != int(value)):
        return f"must be a fraction in [0, 1] or a whole number of GPUs, got {value}"
    return None


@dataclass
class SearchSettings:
    """The `search` section: how many trials, how many at once, the sampler's seed and the metric they are ranked by."""

    num_samples: int = _setting(10, "number of trials", rule=_at_least_one, cli=True)
    seed: int = _setting(
        0,
        "seed of the search's TPE sampler (Optuna), which picks each trial's hyperparameters; not the training "
        "seed, which is fixed.seed",
        rule=_seed,
        cli=True,
    )
    max_concurrent: int = _setting(1, "trials run at once", rule=_at_least_one, cli=True)
    metric: str = _setting(
        VAL_LOSS,
        "validation metric that ASHA, TPE, the kept checkpoints and the exported trial all use",
        choices=METRICS,
    )


@dataclass
class SchedulerSettings:
    """The `scheduler` section: ASHA on the search metric, one rung step per epoch."""

    grace_period: int = _setting(1, "epochs every trial trains before ASHA may stop it (1..max_epochs)")
    reduction_factor: float = _setting(2, "ASHA keeps 1 in reduction_factor trials at each rung", rule=_above_one)
    # None only until the file is read: then fixed.epochs (SearchSpec keeps every setting explicit).
    max_epochs: int | None = _setting(
        None, "epochs a trial trains at most (ASHA's max_t; default: fixed.epochs)", rule=_at_least_one
    )


@dataclass
class ResourceSettings:
    """The `resources` section: what Ray reserves for each trial."""

    cpus_per_trial: float = _setting(1, "CPUs per trial, also its torch threads", rule=_positive, cli=True)
    # A float, or {model size: float} (per_model); the command-line flag sets every model's share.
    gpus_per_trial: float | dict[str, float] = _setting(
        0, "GPU share per trial, e.g. 0.25; 0 trains on CPU", rule=_gpu_share, cli=True, per_model=True
    )


@dataclass
class LaunchSettings:
    """How this invocation runs the search (the command's flags, not the experiment's saved settings): resuming,
    the Ray cluster and dashboards, what happens after the trials."""

    resume: bool = False
    retry_errored: bool = False
    export: bool = True
    baseline: bool = True
    verbose: int = 1
    address: str | None = None
    dashboard: bool = False
    dashboard_host: str | None = None
    dashboard_port: int = 8265
    allow_no_auth: bool = False
    optuna_dashboard: int | None = None  # a port: serve optuna-dashboard on the study while the search runs

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LaunchSettings:
        """The search command's parsed flags (--no-export, --no-baseline: export, baseline False)."""
        names = set(cls.__dataclass_fields__) - {"export", "baseline"}
        return cls(
            export=not args.no_export, baseline=not args.no_baseline, **{name: getattr(args, name) for name in names}
        )


# The YAML section each settings class reads, in the file's order.
SECTIONS: dict[str, type] = {"search": SearchSettings, "scheduler": SchedulerSettings, "resources": ResourceSettings}


def section_of(name: str) -> str | None:
    """The section a settings field belongs to (None: not a settings field)."""
    return next((section for section, cls in SECTIONS.items() if name in cls.__dataclass_fields__), None)


def check(section: str, name: str, value: Any) -> str | None:
    """What is wrong with one value of a settings field by its range rule and choices (None: nothing)."""
    return schema.problem(SECTIONS[section], name, value)


def problems(section: str, values: Any) -> Iterator[tuple[str, str]]:
    """(key, what is wrong) for each value of a section's settings that breaks its rule; per-model values each."""
    for f in fields(values):
        value = getattr(values, f.name)
        if value is None:  # not resolved yet (max_epochs before the file's epochs are known)
            continue
        each = value.items() if isinstance(value, dict) else [("", value)]
        for model, item in each:
            problem = check(section, f.name, item)
            if problem:
                yield f"{section}.{f.name}{f'.values.{model}' if model else ''}", problem


def to_dicts(search: SearchSettings, scheduler: SchedulerSettings, resources: ResourceSettings) -> dict[str, dict]:
    """The three sections in the file format (a per-model mapping as {per: model, values: ...})."""
    out = {"search": asdict(search), "scheduler": asdict(scheduler), "resources": asdict(resources)}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            value = out[section][f.name]
            if f.metadata.get("per_model") and isinstance(value, dict):
                out[section][f.name] = {"per": "model", "values": dict(value)}
    return out


# ------------------------------------------------------------------------------------------------ CLI flags


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """One override flag per settings field that has one (``--num-samples`` for search.num_samples); the default
    None means "not given", so the file's value stays."""
    for section, cls in SECTIONS.items():
        schema.add_arguments(
            parser, cls, defaults=False, help_tail=lambda f, section=section: f" (YAML: {section}.{f.name})"
        )


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags on a parsed command line, by field name."""
    out: dict[str, Any] = {}
    for cls in SECTIONS.values():
        out.update(schema.given(args, cls))
    return out


# In a saved search_settings.json: the --storage the experiment was started with.
STORAGE_KEY = "_storage"


def _section(cls: type, data: Any) -> Any:
    """A settings section of a saved file: its known keys (a per-model value as its mapping), defaults elsewhere."""
    values = dict(data) if isinstance(data, dict) else {}
    known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
    for name, value in known.items():
        if cls.__dataclass_fields__[name].metadata.get("per_model") and isinstance(value, dict) and "values" in value:
            known[name] = dict(value["values"])
    return cls(**known)


@dataclass
class SavedSearch:
    """An experiment's saved settings (search_settings.json), parsed: what the report reads of a search.

    fixed and space stay as the file has them (TrainConfig values, and the space's distributions by field); the
    three run sections are their records. A file of an earlier version may lack any part: its default stands.
    """

    name: str | None = None
    fixed: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] = field(default_factory=dict)
    search: SearchSettings = field(default_factory=SearchSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    resources: ResourceSettings = field(default_factory=ResourceSettings)
    storage: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SavedSearch:
        def mapping(key: str) -> dict[str, Any]:
            value = data.get(key)
            return dict(value) if isinstance(value, dict) else {}

        name, storage = data.get("name"), data.get(STORAGE_KEY)
        return cls(
            name=str(name) if name else None,
            fixed=mapping("fixed"),
            space=mapping("space"),
            search=_section(SearchSettings, data.get("search")),
            scheduler=_section(SchedulerSettings, data.get("scheduler")),
            resources=_section(ResourceSettings, data.get("resources")),
            storage=str(storage) if storage else None,
        )

    def planned_epochs(self) -> int | None:
        """Epochs a trial runs unless stopped: the ASHA scheduler's max_epochs, else fixed.epochs."""
        value = self.scheduler.max_epochs or self.fixed.get("epochs")
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    def asha_rungs(self) -> list[int]:
        """The epochs at which ASHA compares trials: grace_period * reduction_factor**k below max_epochs."""
        grace, factor, top = self.scheduler.grace_period, self.scheduler.reduction_factor, self.scheduler.max_epochs
        if not all(isinstance(v, int | float) for v in (grace, factor, top)) or grace < 1 or factor <= 1:
            return []
        rungs, epoch = [], float(grace)
        while epoch < top:
            rungs.append(int(epoch))
            epoch *= factor
        return rungs

    def searched_names(self) -> list[str]:
        """The searched hyperparameters, in the order of the search space."""
        return list(self.space)

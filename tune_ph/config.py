"""TrainConfig: the one schema of a training run (fields, defaults, allowed names, every range rule, CLI flags)."""

from __future__ import annotations

import argparse
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from hyena_dna.config import HyenaDNAConfig, max_length_of
from tune_ph.errors import ConfigError
from tune_ph.metrics import METRIC_MODES  # noqa: F401 - metrics.py owns it; search/space.py still reads it here

DEFAULT_DATASET = "jedick/microbial-DNA-pH"
DEFAULT_MODEL = "hyenadna-tiny-1k-seqlen"
ARCHITECTURES: tuple[str, ...] = ("linear", "mlp2", "mlp2_ln", "mlp3", "mlp4", "mlp5")
POOLINGS: tuple[str, ...] = ("pool", "last", "first", "sum")
# How a sample's set vectors become one prediction (model.SetAggregation).
AGGREGATIONS: tuple[str, ...] = ("mean", "attention", "mean_prediction", "clusters")
LOSSES: tuple[str, ...] = ("smoothl1", "mse", "mae", "huber")
LR_SCHEDULERS: tuple[str, ...] = ("none", "plateau")
# How samples are split (tune_ph.data.split): by sample (the published split) or by holding out whole studies.
SPLIT_BY: tuple[str, ...] = ("none", "study")
MIN_MAX_LENGTH = 8
# Upper bounds of the size-like fields: a file of a few bytes (a checkpoint's train_config, a YAML) must not declare
# gigabytes. A 16,384-cluster MLP head is 134M weights (512 MiB, 2 GiB with AdamW's moments and gradients); the
# rest bound loops and batches far above any useful value.
MAX_SIZES: dict[str, int] = {
    "clusters": 16_384,
    "cluster_dims": 4_096,  # hyena_dna's largest d_model
    "batch_size": 65_536,
    "sets_per_step": 65_536,
    "max_sets": 1_000_000,
    "epochs": 1_000_000,
    "early_stopping_patience": 1_000_000,
}


def _field(default: Any, help: str, **meta: Any) -> Any:
    """A TrainConfig field with its help text and flags for the CLI and the search-space YAML.

    meta: choices (allowed values), aliases (extra CLI flags), cli=False (no CLI flag), yaml=False (not in a
    search space), data=True (decides the tokenized data, so one value per search), searchable=False.
    """
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class TrainConfig:
    """Everything one training run needs, as JSON-able primitives (saved with every checkpoint)."""

    dataset: str = _field(
        DEFAULT_DATASET, "hub dataset id, local folder/.parquet/.jsonl, or 'demo' (offline)", data=True
    )
    model: str = _field(DEFAULT_MODEL, "HyenaDNA size name, hub id or local checkpoint folder")
    from_scratch: bool = _field(False, "random initialisation instead of pretrained weights")
    # A custom backbone (HyenaDNAConfig fields), from scratch only; `model` then only names the run.
    model_config: dict[str, Any] | None = _field(
        None, "custom backbone: HyenaDNAConfig fields", cli=False, searchable=False
    )
    head: str = _field("mlp2", "regression head architecture", choices=ARCHITECTURES)
    pooling: str = _field("pool", "how a set's tokens are pooled (real tokens only)", choices=POOLINGS)
    aggregation: str = _field(
        "mean_prediction",
        "how a sample's set vectors become one prediction: mean_prediction (mean of per-set predictions, the "
        "published recipe; learns fastest from scratch), mean (of set vectors), attention (gated attention "
        "pooling), clusters (learned OTUs: each read set's vector is assigned to one of `clusters` clusters fit "
        "on the train reads; the head sees a sample's cluster abundances; frozen backbone only)",
        choices=AGGREGATIONS,
    )
    clusters: int = _field(1024, "aggregation=clusters: number of clusters (OTUs) fit on the train split's reads")
    cluster_dims: int = _field(
        32, "aggregation=clusters: PCA dimensions (whitened) the read vectors are clustered in; at most d_model"
    )
    head_dropout: float = _field(0.1, "dropout between head layers")
    freeze_backbone: bool = _field(False, "train aggregation and head only (set vectors are then standardised)")
    learning_rate: float = _field(
        1e-4, "AdamW learning rate (the implicit filter uses the backbone's filter_lr)", aliases=("--lr",)
    )
    weight_decay: float = _field(0.01, "AdamW weight decay (not on biases, norms, embeddings or the filter)")
    batch_size: int = _field(4, "samples per step")
    sets_per_step: int | None = _field(
        2,
        "read sets drawn at random from each sample per training step (fresh reads every epoch); "
        "evaluation always uses all; 0: all. Few sets per step mean more steps for the same compute",
    )
    epochs: int = _field(10, "maximum number of epochs")
    loss: str = _field("smoothl1", "training loss on standardised pH", choices=LOSSES)
    loss_beta: float = _field(1.0, "SmoothL1 beta / Huber delta")
    lr_scheduler: str = _field("none", "plateau: ReduceLROnPlateau on val loss, patience 3", choices=LR_SCHEDULERS)
    grad_clip: float | None = _field(1.0, "max gradient norm; 0 disables")
    seed: int = _field(42, "seed for initialisation, shuffling and dropout")
    device: str = _field("auto", "auto, cpu, cuda, cuda:1, ...")
    max_sets: int | None = _field(
        None,
        "read sets a sample is packed into at most (default: as many as its reads fill; 5: the published recipe)",
        data=True,
        aliases=("--num-sets",),
    )
    max_length: int | None = _field(
        None, "tokens per set; default: the model's maximum, capped by the longest sample", data=True
    )
    early_stopping_patience: int | None = _field(None, "stop after this many epochs without improvement")
    gradient_checkpointing: bool = _field(False, "recompute blocks in backward (less memory)")
    output_dir: str | None = _field(None, "run folder; default: runs/<timestamp>", yaml=False)
    # Data options: saved so that evaluate rebuilds exactly the split the run was trained on.
    split_seed: int = _field(42, "seed of the train/val/test split", data=True)
    split_by: str = _field(
        "none",
        "none: split by sample, stratified by environment (the published split; test studies are seen in training); "
        "study: whole studies held out for val and test (how the model does on a new study)",
        choices=SPLIT_BY,
        data=True,
    )
    test_fraction: float = _field(0.2, "share of samples held out for test", data=True)
    val_fraction: float = _field(0.1, "share of all samples used for validation", data=True)
    cache_dir: str | None = _field(None, "where tokenized datasets are cached", data=True)
    skip_bad_rows: bool = _field(False, "drop invalid rows (counted) instead of failing", data=True)

    def __post_init__(self) -> None:
        if self.sets_per_step == 0 and not isinstance(self.sets_per_step, bool):
            self.sets_per_step = None  # "0: all", as grad_clip's 0
        if self.grad_clip == 0 and not isinstance(self.grad_clip, bool):
            self.grad_clip = None  # "0 disables", on the command line and in YAML alike
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the field and what is allowed."""
        for f in fields(self):
            check_field(f.name, getattr(self, f.name))
        if self.model_config is not None and not self.from_scratch:
            raise ConfigError(
                "model_config", "a custom model_config needs from_scratch=True (there are no pretrained weights for it)"
            )
        if self.aggregation == "clusters" and not self.freeze_backbone:
            raise ConfigError(
                "aggregation",
                "clusters are fit once on a frozen backbone's read vectors; set freeze_backbone=True "
                "(--freeze-backbone) or choose another aggregation",
            )
        if self.test_fraction + self.val_fraction >= 1:
            raise ConfigError(
                "val_fraction",
                f"test_fraction + val_fraction must be below 1 (nothing would be left "
                f"to train on), got {self.test_fraction} + {self.val_fraction}",
            )
        if self.max_length is not None:
            try:
                limit = model_max_length(self.model, self.model_config)
            except ValueError:  # a hub id: its length is known once its config.json is fetched (fit checks it)
                return
            if self.max_length > limit:
                raise ConfigError(
                    "max_length",
                    f"{self.max_length} tokens do not fit model {self.model}, whose max "
                    f"length is {limit}; allowed: {MIN_MAX_LENGTH}..{limit}",
                )

    def resolved(self) -> TrainConfig:
        """A copy with max_length filled in (the model's maximum when not set)."""
        return replace(self, max_length=self.max_length or model_max_length(self.model, self.model_config))

    def sets_per_forward(self) -> int:
        """Sets per backbone call at evaluation: a training step's worth, and at least 8 per sample (inference keeps
        no activations for backward, so small training steps would leave evaluation needlessly slow)."""
        return self.batch_size * max(self.sets_per_step or 0, 8)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys are an error (they are usually typos)."""
        known = field_names()
        data = upgrade(data)
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(unknown[0], f"unknown TrainConfig fields {unknown}; known fields: {', '.join(known)}")
        return cls(**data)

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> TrainConfig:
        """A checkpoint's train_config; one saved before set aggregation existed meant per-set predictions,
        averaged, with every set in every step."""
        return cls.from_dict({"aggregation": "mean_prediction", "sets_per_step": None, **data})

    @classmethod
    def from_trial(cls, config: dict[str, Any]) -> TrainConfig:
        """The TrainConfig of a Ray Tune trial config, resolved.

        A trial config holds TrainConfig fields plus Optuna's own names for per-model parameters
        (``batch_size__<model>``), which repeat a field's value and are dropped here.
        """
        known = set(field_names())
        return cls(**{k: v for k, v in config.items() if k in known}).resolved()


# Names of earlier versions, still read from YAML, trial configs and saved checkpoints.
RENAMED = {"num_sets": "max_sets"}


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A config dict with earlier field names renamed (num_sets -> max_sets)."""
    out = dict(data)
    for old, new in RENAMED.items():
        if old in out and new not in out:
            out[new] = out.pop(old)
    return out


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def field_meta(name: str) -> dict[str, Any]:
    return dict(TrainConfig.__dataclass_fields__[name].metadata)


def field_types(name: str) -> tuple[type, ...]:
    """The Python types a TrainConfig field accepts, from its annotation (an int is accepted for a float)."""
    return annotation_types(TrainConfig, name)


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


def model_max_length(model: str, model_config: dict[str, Any] | None = None) -> int:
    """Tokens a model reads at most: a custom model_config's, else hyena_dna's lookup (size name, hub id, folder).

    ConfigError naming the field when hyena_dna knows no such model (its message lists the known sizes).
    """
    try:
        if model_config:
            return HyenaDNAConfig.from_dict(model_config).max_length
        return max_length_of(model)
    except ValueError as err:
        raise ConfigError("model_config" if model_config else "model", str(err)) from None


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
    # bool is an int in Python; true/false is never a number here.
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    if isinstance(value, float) and float in allowed and not math.isfinite(value):
        raise ConfigError(name, f"{name} must be a finite number, got {value!r}")
    if not ok:
        names = " or ".join(type_name(t) for t in allowed)
        raise ConfigError(name, f"expected {names}, got {value!r} ({type_name(type(value))})")


def check_field(name: str, value: Any) -> None:
    """Type and range of one TrainConfig value on its own; raise ConfigError naming the field."""
    if name not in TrainConfig.__dataclass_fields__:
        raise ConfigError(name, f"unknown field {name!r}; known fields: {', '.join(field_names())}")
    check_type(name, value, field_types(name))
    if value is None:
        return
    choices = field_meta(name).get("choices")
    if choices and value not in choices:
        raise ConfigError(name, f"unknown {name} {value!r}; allowed: {', '.join(choices)}")
    if name == "model_config":
        _check_model_config(value)
        return
    problem = _range_problem(name, value)
    if problem:
        raise ConfigError(name, problem)


def _range_problem(name: str, value: Any) -> str | None:
    """What is wrong with a (well-typed, non-None) value of a field by its range rule; None when nothing is."""
    if name == "sets_per_step" and value < 0:
        return f"sets_per_step must be >= 0 (0: all sets), got {value!r}"
    if name in ("batch_size", "epochs", "max_sets", "early_stopping_patience", "cluster_dims") and value < 1:
        return f"{name} must be a positive integer, got {value!r}"
    if name == "clusters" and value < 2:
        return f"clusters must be at least 2 (a sample is described by their abundances), got {value!r}"
    if name in MAX_SIZES and value > MAX_SIZES[name]:
        return f"{name} must be at most {MAX_SIZES[name]:,}, got {value!r}"
    if name in ("learning_rate", "loss_beta") and not value > 0:
        return f"{name} must be > 0, got {value!r}"
    if name in ("weight_decay", "grad_clip") and value < 0:
        return f"{name} must be >= 0, got {value!r}"
    if name in ("seed", "split_seed") and value < 0:
        return f"{name} must be >= 0 (numpy seeds are unsigned), got {value!r}"
    if name == "test_fraction" and not 0 < value < 1:
        return f"test_fraction must be between 0 and 1, got {value!r}"
    if name in ("val_fraction", "head_dropout") and not 0 <= value < 1:
        return f"{name} must be in [0, 1), got {value!r}"
    if name == "max_length" and value < MIN_MAX_LENGTH:
        return f"max_length must be at least {MIN_MAX_LENGTH} tokens, got {value!r}"
    if name == "device" and not (value in ("auto", "cpu") or value == "cuda" or value.startswith("cuda:")):
        return f"device must be auto, cpu or cuda[:N], got {value!r}"
    if name == "model" and not value.strip():
        return "model must name a HyenaDNA size, a hub id or a local checkpoint folder"
    return None


def _check_model_config(value: dict[str, Any]) -> None:
    """A custom backbone: known HyenaDNAConfig fields that make a valid config."""
    known = set(HyenaDNAConfig.__dataclass_fields__) - {"extra"}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(
            "model_config",
            f"unknown HyenaDNAConfig field(s) {', '.join(map(str, unknown))}; allowed: {', '.join(sorted(known))}",
        )
    try:
        HyenaDNAConfig.from_dict(value)
    except (TypeError, ValueError) as err:
        raise ConfigError("model_config", str(err)) from None


# ------------------------------------------------------------------------------------------------ CLI flags


def _base_type(name: str) -> type:
    return next(t for t in field_types(name) if t is not type(None))


def add_arguments(
    parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None, overrides: bool = False
) -> None:
    """One flag per TrainConfig field (``--learning-rate`` for learning_rate), with its help and choices.

    overrides: every default is None, meaning "not given" (a search's flags override its YAML).
    """
    for f in fields(TrainConfig):
        meta = f.metadata
        if not meta.get("cli", True) or (only is not None and f.name not in only):
            continue
        flags = [f"--{f.name.replace('_', '-')}", *meta.get("aliases", ())]
        default = None if overrides else f.default
        kind = _base_type(f.name)
        help_text = meta["help"] if overrides else f"{meta['help']} (default: {f.default})"
        if kind is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            parser.add_argument(*flags, type=kind, default=default, choices=meta.get("choices"), help=help_text)


def given_fields(args: argparse.Namespace, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The TrainConfig values on a parsed command line (None = not given, for override flags).

    only: the fields add_arguments() was given; another flag may share a field's name (a search's --output-dir).
    """
    names = field_names() if only is None else only
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}

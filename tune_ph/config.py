"""TrainConfig: the one schema of a training run (fields, defaults, allowed names, every range rule, CLI flags)."""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from hyena_dna.config import HyenaDNAConfig, max_length_of
from tune_ph import schema
from tune_ph.errors import ConfigError
from tune_ph.metrics import DEFAULT_TARGET
from tune_ph.registry import Catalog

DEFAULT_DATASET = "jedick/microbial-DNA-pH"
DEFAULT_MODEL = "hyenadna-tiny-1k-seqlen"
POOLINGS: tuple[str, ...] = ("pool", "last", "first", "sum")
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
    "topics": 4_096,
    "batch_size": 65_536,
    "sets_per_step": 65_536,
    "max_sets": 1_000_000,
    "epochs": 1_000_000,
    "early_stopping_patience": 1_000_000,
}


@dataclass(frozen=True)
class Part:
    """What a TrainConfig knows of a part (aggregation, head, read encoder, abundance transform) by its name alone;
    the part itself is a class in tune_ph.model, registered there (which declares it here too, torch-free)."""

    name: str
    frozen_only: str | None = None  # why the part needs freeze_backbone=True (the error says so); None: it does not
    gives_features: bool = False  # an aggregation whose head reads fixed features per sample (cluster abundances)
    needs_features: str | None = None  # a head grown once on fixed features: what to choose when there are none


# The parts a config chooses from, by name: those of tune_ph's own, declared here so that the YAML and the CLI know
# them without importing torch (each part's class, registered in tune_ph.model, must agree; registering a new one
# adds it). Heads: a linear layer or an MLP (gradient steps), or gradient-boosted trees on the cluster abundances.
ARCHITECTURES: Catalog[Part] = Catalog(
    "head architecture",
    Part,
    *(Part(name) for name in ("linear", "mlp2", "mlp2_ln", "mlp3", "mlp4", "mlp5")),
    Part("trees", needs_features="trees read a sample's cluster abundances; use aggregation=clusters or another head"),
)
# What turns a read set into a vector: the HyenaDNA backbone, or its k-mer profile (the control; model.read_encoders).
READ_ENCODERS: Catalog[Part] = Catalog(
    "read encoder",
    Part,
    Part("hyena"),
    Part("kmer", frozen_only="read_encoder=kmer has nothing to fine-tune; set freeze_backbone=True or use hyena"),
)
# How a sample's cluster counts become features (model.abundance).
ABUNDANCES: Catalog[Part] = Catalog("abundance transform", Part, Part("clr"), Part("relative"), Part("presence"))
# How a sample's set vectors become one prediction (model.aggregation).
AGGREGATIONS: Catalog[Part] = Catalog(
    "aggregation",
    Part,
    Part("mean"),
    Part("attention"),
    Part("mean_prediction"),
    Part(
        "clusters",
        frozen_only="clusters are fit once on a frozen backbone's read vectors; set freeze_backbone=True "
        "(--freeze-backbone) or choose another aggregation",
        gives_features=True,
    ),
)


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
        DEFAULT_DATASET,
        "hub dataset id, local folder/.parquet/.jsonl, a feature (ASV) table (.biom, or a QIIME 2 / DADA2 .tsv/.csv "
        "of counts, with --metadata), or 'demo' (offline)",
        data=True,
    )
    target: str = _field(
        DEFAULT_TARGET,
        "the dataset's numeric column to predict (pH, temperature, salinity, depth, ...); names every output",
        data=True,
    )
    target_range: list[float] | None = _field(
        None,
        "LO HI: the values the target may take; a row outside is a bad row (default: 0 14 for pH, any finite value "
        "for another target)",
        data=True,
        nargs=2,
        metavar=("LO", "HI"),
    )
    model: str = _field(DEFAULT_MODEL, "HyenaDNA size name, hub id or local checkpoint folder")
    from_scratch: bool = _field(False, "random initialisation instead of pretrained weights")
    # A custom backbone (HyenaDNAConfig fields), from scratch only; `model` then only names the run.
    model_config: dict[str, Any] | None = _field(
        None,
        "custom backbone (needs --from-scratch): HyenaDNAConfig fields as inline JSON or a JSON file, e.g. "
        '{"d_model": 64, "n_layer": 2}',
        searchable=False,
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
    cluster_levels: int = _field(
        1,
        "aggregation=clusters: resolutions clustered at once, each with a quarter of the clusters of the one before "
        "(4 with clusters 1024: 1024 + 256 + 64 + 16); coarse ones gather lineages, fine ones organisms",
    )
    cluster_fits: int = _field(
        1,
        "aggregation=clusters: independent clusterings side by side, each with its own k-means and topic seed "
        "(seed, seed + 1, ...): the head sees several cuts of the same reads, so no one fit's accidents decide "
        "what it learns",
    )
    topics: int = _field(
        0,
        "aggregation=clusters: topics (LDA on the train samples' finest cluster counts) added beside the clusters: "
        "finest clusters that rise and fall together across samples, as reads of one lineage do however diverse "
        "their sequences; 0: none",
    )
    abundance: str = _field(
        "clr",
        "aggregation=clusters: a sample's cluster counts as clr (centred log-ratio), relative (shares) or presence",
        choices=ABUNDANCES,
    )
    read_encoder: str = _field(
        "hyena",
        "what turns a read set into a vector: hyena (the backbone) or kmer (its k-mer profile: the control that "
        "shows what the DNA model adds; frozen only)",
        choices=READ_ENCODERS,
    )
    encoder_k: int = _field(5, "read_encoder=kmer: the k of the k-mer profile (4^k values per read)")
    tree_leaves: int = _field(15, "head=trees: leaves per tree (LightGBM num_leaves)")
    tree_learning_rate: float = _field(0.05, "head=trees: shrinkage per boosting round (rounds stop early on val)")
    tree_min_samples: int = _field(10, "head=trees: samples a leaf holds at least")
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
    taxonomy: str | None = _field(
        None,
        "TSV of sequence (or feature id, named through a feature table's --sequences) and taxon: names the clusters "
        "that drive a clusters model's predictions in drivers.csv and report.html",
        searchable=False,
    )
    skip_bad_rows: bool = _field(False, "drop invalid rows (counted) instead of failing", data=True)
    # A feature table's companions and filters (tune_ph.data.feature_table); other sources refuse them.
    sequences: str | None = _field(
        None,
        "with a feature table whose features are ids: the FASTA of their sequences (QIIME 2: dna-sequences.fasta)",
        data=True,
    )
    metadata: str | None = _field(
        None,
        "with a feature table: the sample metadata TSV/CSV (first column sample-id, #SampleID or id; a pH column, or "
        "the --target column; study and environment columns when present)",
        data=True,
    )
    min_count: int = _field(
        0, "with a feature table: drop features whose total count over all samples is below this (0: none)", data=True
    )
    rarefy: int | None = _field(
        None,
        "with a feature table: subsample each sample to this many reads (fixed seed); samples with fewer are dropped",
        data=True,
    )

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
        self._check_parts()
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

    def _check_parts(self) -> None:
        """What the chosen parts ask of each other and of the backbone (their catalog records say)."""
        aggregation, head = AGGREGATIONS[self.aggregation], ARCHITECTURES[self.head]
        encoder = READ_ENCODERS[self.read_encoder]
        if aggregation.frozen_only and not self.freeze_backbone:
            raise ConfigError("aggregation", aggregation.frozen_only)
        if head.needs_features and not aggregation.gives_features:
            raise ConfigError("head", head.needs_features)
        if encoder.frozen_only and not self.freeze_backbone:
            raise ConfigError("read_encoder", encoder.frozen_only)

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
        """The TrainConfig of a Ray Tune trial config (its max_length is the prepared dataset's: training.run).

        A trial config holds TrainConfig fields plus Optuna's own names for per-model parameters
        (``batch_size__<model>``), which repeat a field's value and are dropped here.
        """
        known = set(field_names())
        return cls(**{k: v for k, v in config.items() if k in known})


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
    return schema.annotation_types(TrainConfig, name)


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


def check_field(name: str, value: Any) -> None:
    """Type and range of one TrainConfig value on its own; raise ConfigError naming the field."""
    if name not in TrainConfig.__dataclass_fields__:
        raise ConfigError(name, f"unknown field {name!r}; known fields: {', '.join(field_names())}")
    if name == "model_config":
        schema.check_type(name, value, field_types(name))
        if value is not None:
            _check_model_config(value)
        return
    schema.check(TrainConfig, name, value, RULES)


def _positive_integer(name: str) -> schema.Rule:
    return lambda value: None if value >= 1 else f"{name} must be a positive integer, got {value!r}"


def _not_negative(name: str, why: str = "") -> schema.Rule:
    return lambda value: None if value >= 0 else f"{name} must be >= 0{why}, got {value!r}"


def _above_zero(name: str) -> schema.Rule:
    return lambda value: None if value > 0 else f"{name} must be > 0, got {value!r}"


def _fraction(name: str) -> schema.Rule:
    return lambda value: None if 0 <= value < 1 else f"{name} must be in [0, 1), got {value!r}"


def _clusters(value: int) -> str | None:
    if value >= 2:
        return None
    return f"clusters must be at least 2 (a sample is described by their abundances), got {value!r}"


def _between(name: str, low: int, high: int) -> schema.Rule:
    return lambda value: None if low <= value <= high else f"{name} must be {low}..{high}, got {value!r}"


def _tree_learning_rate(value: float) -> str | None:
    return None if 0 < value <= 1 else f"tree_learning_rate must be in (0, 1], got {value!r}"


def _test_fraction(value: float) -> str | None:
    return None if 0 < value < 1 else f"test_fraction must be between 0 and 1, got {value!r}"


def _max_length(value: int) -> str | None:
    return None if value >= MIN_MAX_LENGTH else f"max_length must be at least {MIN_MAX_LENGTH} tokens, got {value!r}"


def _device(value: str) -> str | None:
    if value in ("auto", "cpu") or value == "cuda" or value.startswith("cuda:"):
        return None
    return f"device must be auto, cpu or cuda[:N], got {value!r}"


def _target(value: str) -> str | None:
    return None if value.strip() else "target must name a numeric column of the dataset (e.g. pH, temperature)"


def _target_range(value: list[float]) -> str | None:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if len(value) != 2 or not numbers or not value[0] < value[1]:
        return f"target_range must be two finite numbers LO HI with LO < HI, got {value!r}"
    return None


def _model(value: str) -> str | None:
    return None if value.strip() else "model must name a HyenaDNA size, a hub id or a local checkpoint folder"


# The range rule of each TrainConfig field that has one (schema.check runs it on a well-typed, non-null value).
RULES: dict[str, schema.Rule] = {
    "sets_per_step": _not_negative("sets_per_step", " (0: all sets)"),
    **{
        name: _positive_integer(name)
        for name in ("batch_size", "epochs", "max_sets", "early_stopping_patience", "cluster_dims")
    },
    "clusters": _clusters,
    # k-mer profiles have 4^k values per read; each cluster level has a quarter of the clusters of the one before.
    "encoder_k": _between("encoder_k", 1, 6),
    "cluster_levels": _between("cluster_levels", 1, 6),
    "cluster_fits": _between("cluster_fits", 1, 8),
    "topics": _not_negative("topics", " (0: none)"),
    "tree_leaves": _between("tree_leaves", 2, 4096),
    "tree_min_samples": _between("tree_min_samples", 1, 4096),
    "tree_learning_rate": _tree_learning_rate,
    "learning_rate": _above_zero("learning_rate"),
    "loss_beta": _above_zero("loss_beta"),
    "weight_decay": _not_negative("weight_decay"),
    "grad_clip": _not_negative("grad_clip"),
    "seed": _not_negative("seed", " (numpy seeds are unsigned)"),
    "split_seed": _not_negative("split_seed", " (numpy seeds are unsigned)"),
    "test_fraction": _test_fraction,
    "val_fraction": _fraction("val_fraction"),
    "min_count": _not_negative("min_count"),
    "rarefy": _positive_integer("rarefy"),
    "head_dropout": _fraction("head_dropout"),
    "max_length": _max_length,
    "device": _device,
    "model": _model,
    "target": _target,
    "target_range": _target_range,
}


def _bounded(name: str, rule: schema.Rule | None) -> schema.Rule:
    def check(value: int) -> str | None:
        if value > MAX_SIZES[name]:
            return f"{name} must be at most {MAX_SIZES[name]:,}, got {value!r}"
        return rule(value) if rule else None

    return check


RULES.update({name: _bounded(name, RULES.get(name)) for name in MAX_SIZES})


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


def add_arguments(
    parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None, overrides: bool = False
) -> None:
    """One flag per TrainConfig field (``--learning-rate`` for learning_rate), with its help and choices.

    overrides: every default is None, meaning "not given" (a search's flags override its YAML).
    """
    tail = (lambda f: "") if overrides else schema.default_tail
    schema.add_arguments(parser, TrainConfig, only=only, defaults=not overrides, help_tail=tail)


def given_fields(args: argparse.Namespace, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The TrainConfig values on a parsed command line (None = not given, for override flags).

    only: the fields add_arguments() was given; another flag may share a field's name (a search's --output-dir).
    """
    return schema.given(args, TrainConfig, field_names() if only is None else only)

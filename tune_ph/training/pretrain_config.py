"""PretrainConfig: the settings of one pretraining run (TrainConfig's where they mean the same), and its CLI flags."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from tune_ph import config, schema
from tune_ph.config import TrainConfig
from tune_ph.errors import ConfigError


def _shared(name: str, default: Any = MISSING, help: str | None = None) -> Any:
    """A field as TrainConfig defines it (its default, help, choices and CLI aliases), so both tools mean the same
    thing by it; default/help: where pretraining differs."""
    f = TrainConfig.__dataclass_fields__[name]
    meta = dict(f.metadata)
    if help is not None:
        meta["help"] = help
    return field(default=f.default if default is MISSING else default, metadata=meta)


def _own(default: Any, help: str, rule: schema.Rule | None = None) -> Any:
    """A field of pretraining's own, with its range rule."""
    return schema.setting(default, help, rule=rule)


def _positive(name: str) -> schema.Rule:
    return lambda value: None if value >= 1 else f"{name} must be a positive integer, got {value!r}"


def _not_negative(name: str) -> schema.Rule:
    return lambda value: None if value >= 0 else f"{name} must be >= 0, got {value!r}"


def _folder(value: str) -> str | None:
    return None if value.strip() else "output_dir must name a folder"


@dataclass
class PretrainConfig:
    """Everything one pretraining run needs, as JSON-able primitives (saved with every checkpoint)."""

    output_dir: str = schema.setting(
        help="folder of the run: the pretrained backbone, its state and history", rule=_folder
    )
    dataset: str = _shared("dataset")
    # The samples training will see (rows with a value of the target), so that the split is training's too.
    target: str = _shared("target")
    target_range: list[float] | None = _shared("target_range")
    model: str = _shared("model", help="HyenaDNA size name, hub id or local checkpoint folder to start from")
    from_scratch: bool = _shared(
        "from_scratch",
        help="random initialisation of the model's architecture (needed for a size without downloadable weights)",
    )
    model_config: dict[str, Any] | None = _shared("model_config")
    max_length: int | None = _shared("max_length")
    max_sets: int | None = _shared("max_sets")
    epochs: int = _shared("epochs", 1, "passes over the train split's read sets")
    max_steps: int | None = _own(
        None,
        "stop after this many optimizer steps, at most --epochs' worth (the schedule spans them)",
        _positive("max_steps"),
    )
    batch_size: int = _shared("batch_size", 16, "read sets per step")
    learning_rate: float = _shared(
        "learning_rate", 1e-3, "peak AdamW learning rate (the implicit filter uses the backbone's filter_lr)"
    )
    warmup_steps: int = _own(100, "steps of linear warm-up before the cosine decay", _not_negative("warmup_steps"))
    weight_decay: float = _shared("weight_decay")
    grad_clip: float | None = _shared("grad_clip")
    seed: int = _shared("seed")
    split_seed: int = _shared("split_seed")
    split_by: str = _shared("split_by")
    test_fraction: float = _shared("test_fraction")
    val_fraction: float = _shared("val_fraction")
    cache_dir: str | None = _shared("cache_dir")
    skip_bad_rows: bool = _shared("skip_bad_rows")
    sequences: str | None = _shared("sequences")
    metadata: str | None = _shared("metadata")
    min_count: int = _shared("min_count")
    rarefy: int | None = _shared("rarefy")
    device: str = _shared("device")
    checkpoint_every: int = _own(
        200, "save the resumable state and the backbone every this many steps", _positive("checkpoint_every")
    )
    log_every: int = _own(10, "log the mean training loss every this many steps", _positive("log_every"))
    eval_sets: int = _own(
        64, "val read sets the eval loss is computed on, spread over the split (0: all)", _not_negative("eval_sets")
    )
    progress: bool = _own(True, "show a progress bar")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the field and what is allowed."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in TrainConfig.__dataclass_fields__ and f.name != "output_dir":
                config.check_field(f.name, value)  # TrainConfig's rules, for the fields that mean the same
            else:
                schema.check(PretrainConfig, f.name, value)
        self.train_config()  # the rules across fields: model_config needs from_scratch, the fractions, max_length

    def train_config(self) -> TrainConfig:
        """The TrainConfig of the shared fields: the split, the data and the model are then exactly training's."""
        shared = set(TrainConfig.__dataclass_fields__)
        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(self) if f.name in shared})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        """Build from a dict; unknown keys are an error (they are usually typos)."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(unknown[0], f"unknown PretrainConfig fields {unknown}; known fields: {', '.join(known)}")
        return cls(**data)


# Settings that may change when a run is resumed: where and how it runs, not what it computes.
RUNTIME_FIELDS = ("output_dir", "device", "cache_dir", "checkpoint_every", "log_every", "progress")


def field_names(cli_only: bool = True) -> tuple[str, ...]:
    return tuple(f.name for f in fields(PretrainConfig) if not cli_only or f.metadata.get("cli", True))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per PretrainConfig field, as config.add_arguments makes them for TrainConfig.

    Every default is None ("not given"): a resumed run keeps its saved settings unless a flag is given.
    """
    schema.add_arguments(parser, PretrainConfig, defaults=False)


def given_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The PretrainConfig values on a parsed command line (None = not given; --model-config's JSON read)."""
    return schema.given(args, PretrainConfig, field_names())

"""PretrainConfig: the settings of one pretraining run (TrainConfig's where they mean the same), and its CLI flags."""

from __future__ import annotations

import argparse
import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tune_ph import config
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


def _own(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class PretrainConfig:
    """Everything one pretraining run needs, as JSON-able primitives (saved with every checkpoint)."""

    output_dir: str = field(metadata={"help": "folder of the run: the pretrained backbone, its state and history"})
    dataset: str = _shared("dataset")
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
        None, "stop after this many optimizer steps, at most --epochs' worth (the schedule spans them)"
    )
    batch_size: int = _shared("batch_size", 16, "read sets per step")
    learning_rate: float = _shared(
        "learning_rate", 1e-3, "peak AdamW learning rate (the implicit filter uses the backbone's filter_lr)"
    )
    warmup_steps: int = _own(100, "steps of linear warm-up before the cosine decay")
    weight_decay: float = _shared("weight_decay")
    grad_clip: float | None = _shared("grad_clip")
    seed: int = _shared("seed")
    split_seed: int = _shared("split_seed")
    split_by: str = _shared("split_by")
    test_fraction: float = _shared("test_fraction")
    val_fraction: float = _shared("val_fraction")
    cache_dir: str | None = _shared("cache_dir")
    skip_bad_rows: bool = _shared("skip_bad_rows")
    device: str = _shared("device")
    checkpoint_every: int = _own(200, "save the resumable state and the backbone every this many steps")
    log_every: int = _own(10, "log the mean training loss every this many steps")
    eval_sets: int = _own(64, "val read sets the eval loss is computed on, spread over the split (0: all)")
    progress: bool = _own(True, "show a progress bar")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the field and what is allowed."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in TrainConfig.__dataclass_fields__ and f.name != "output_dir":
                config.check_field(f.name, value)  # TrainConfig's rules, for the fields that mean the same
                continue
            config.check_type(f.name, value, _types(f.name))
            if f.name == "output_dir" and not value.strip():
                raise ConfigError(f.name, "output_dir must name a folder")
            if f.name in ("max_steps", "checkpoint_every", "log_every") and value is not None and value < 1:
                raise ConfigError(f.name, f"{f.name} must be a positive integer, got {value!r}")
            if f.name in ("warmup_steps", "eval_sets") and value < 0:
                raise ConfigError(f.name, f"{f.name} must be >= 0, got {value!r}")
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


def _types(name: str) -> tuple[type, ...]:
    """The Python types a PretrainConfig field accepts, from its annotation (an int is accepted for a float)."""
    hint = typing.get_type_hints(PretrainConfig)[name]
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    out: list[type] = []
    for arg in typing.get_args(hint) if union else (hint,):
        out.append(typing.get_origin(arg) or arg)
        if arg is float:
            out.append(int)
    return tuple(out)


def field_names(cli_only: bool = True) -> tuple[str, ...]:
    return tuple(f.name for f in fields(PretrainConfig) if not cli_only or f.metadata.get("cli", True))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per PretrainConfig field, as config.add_arguments makes them for TrainConfig.

    Every default is None ("not given"): a resumed run keeps its saved settings unless a flag is given.
    """
    for f in fields(PretrainConfig):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        flags = [f"--{f.name.replace('_', '-')}", *meta.get("aliases", ())]
        kind = next(t for t in _types(f.name) if t is not type(None))
        required = f.default is MISSING
        help_text = meta["help"] if required else f"{meta['help']} (default: {f.default})"
        if kind is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(
                *flags, type=kind, default=None, required=required, choices=meta.get("choices"), help=help_text
            )


def read_model_config(value: str) -> dict[str, Any]:
    """--model-config: a JSON file's path or inline JSON, holding one object."""
    path = Path(value).expanduser()
    text = path.read_text() if path.is_file() else value
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError("model_config", f"--model-config {value!r} is neither a JSON file nor JSON ({err})") from None
    if not isinstance(parsed, dict):
        raise ConfigError("model_config", f"--model-config must hold a JSON object, got {type(parsed).__name__}")
    return parsed

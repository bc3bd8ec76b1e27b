"""HyenaDNAConfig: the model's hyperparameters, read from and written to the public config.json layout."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# The public LongSafari checkpoints: name -> (d_model, n_layer, max sequence length in tokens).
# l_max in their config.json is the max length + 2 (room for the [CLS]/[SEP] the pretraining added).
PRETRAINED_SIZES: dict[str, tuple[int, int, int]] = {
    "hyenadna-tiny-1k-seqlen": (128, 2, 1024),
    "hyenadna-tiny-1k-seqlen-d256": (256, 2, 1024),
    "hyenadna-tiny-16k-seqlen-d128": (128, 2, 16384),
    "hyenadna-small-32k-seqlen": (256, 4, 32768),
    "hyenadna-medium-160k-seqlen": (256, 8, 160000),
    "hyenadna-medium-450k-seqlen": (256, 8, 450000),
    "hyenadna-large-1m-seqlen": (256, 8, 1000000),
}
HUB_ORG = "LongSafari"

# Keys of the nested "layer" block of the public config.json, mapped to our field names.
_LAYER_KEYS = {
    "emb_dim": "emb_dim",
    "filter_order": "filter_order",
    "local_order": "local_order",
    "l_max": "l_max",
    "modulate": "modulate",
    "w": "w",
    "lr": "filter_lr",
    "wd": "filter_wd",
    "lr_pos_emb": "lr_pos_emb",
    "shift": "shift",
}


@dataclass
class HyenaDNAConfig:
    """Hyperparameters of a HyenaDNA backbone (field names follow the public config.json)."""

    d_model: int = 128
    n_layer: int = 2
    d_inner: int = 512
    vocab_size: int = 12
    pad_vocab_size_multiple: int = 8
    embed_dropout: float = 0.1
    resid_dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5
    residual_in_fp32: bool = True
    # True for checkpoints trained with gradient checkpointing: their keys carry ".mixer.layer"/".mlp.layer".
    checkpoint_mixer: bool = False
    checkpoint_mlp: bool = False
    # Hyena operator ("layer" in config.json).
    l_max: int = 1026
    emb_dim: int = 5
    filter_order: int = 64
    local_order: int = 3
    hyena_order: int = 2
    num_inner_mlps: int = 2
    modulate: bool = True
    w: float = 10.0
    filter_lr: float = 6e-4
    filter_wd: float = 0.0
    lr_pos_emb: float = 0.0
    # Exponential modulation multiplies the filter by (decay + shift). The standalone reference uses 0.05;
    # upstream training code used 0.0 and the public configs do not record which the weights saw.
    shift: float = 0.05
    # Fields of config.json we do not use, kept so that save_pretrained round-trips them.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def max_length(self) -> int:
        """Longest input (tokens) the model was built for."""
        return self.l_max - 2

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return (self.vocab_size + m - 1) // m * m

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HyenaDNAConfig:
        """Build from the public config.json layout (nested "layer") or our flat to_dict() output."""
        data = dict(data)
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {}
        layer = data.pop("layer", None) or {}
        extra_layer = {}
        for key, value in layer.items():
            if key == "_name_":  # always "hyena" for HyenaDNA; written back by to_dict
                continue
            if key in _LAYER_KEYS:
                kwargs[_LAYER_KEYS[key]] = value
            else:
                extra_layer[key] = value
        extra: dict[str, Any] = dict(data.pop("extra", {}) or {})
        for key, value in data.items():
            if key in known:
                kwargs[key] = value
            else:
                extra[key] = value
        if extra_layer:
            extra["layer"] = {**extra.get("layer", {}), **extra_layer}
        config = cls(**kwargs, extra=extra)
        config.validate()
        return config

    @classmethod
    def from_json(cls, path: str | Path) -> HyenaDNAConfig:
        """Read a config.json file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err

    @classmethod
    def from_name(cls, name: str) -> HyenaDNAConfig:
        """The architecture of a public checkpoint by size name, e.g. "hyenadna-small-32k-seqlen"."""
        size = name.split("/")[-1]
        if size not in PRETRAINED_SIZES:
            raise ValueError(f"unknown HyenaDNA size {name!r}; known sizes: {', '.join(PRETRAINED_SIZES)}")
        d_model, n_layer, max_length = PRETRAINED_SIZES[size]
        # The long-context checkpoints were trained with gradient checkpointing; their keys show it.
        ckpt = max_length >= 160000
        return cls(
            d_model=d_model,
            n_layer=n_layer,
            d_inner=4 * d_model,
            l_max=max_length + 2,
            checkpoint_mixer=ckpt,
            checkpoint_mlp=ckpt,
        )

    def to_dict(self) -> dict[str, Any]:
        """The public config.json layout (nested "layer"), plus any fields read but not used."""
        flat = asdict(self)
        extra = flat.pop("extra")
        layer = {"_name_": "hyena"}
        for key, ours in _LAYER_KEYS.items():
            layer[key] = flat.pop(ours)
        layer.update(extra.get("layer", {}))
        out = {k: v for k, v in extra.items() if k != "layer"}
        out.update(flat)
        out["layer"] = layer
        return out

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def validate(self) -> None:
        for name in ("d_model", "n_layer", "d_inner", "vocab_size", "l_max", "filter_order", "local_order"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"config field {name!r} must be a positive integer, got {value!r}")
        if self.emb_dim < 3 or self.emb_dim % 2 == 0:
            raise ValueError(f"config field 'emb_dim' must be odd and >= 3, got {self.emb_dim!r}")
        if self.hyena_order < 2:
            raise ValueError(f"config field 'hyena_order' must be >= 2, got {self.hyena_order!r}")

"""HyenaDNAConfig (read from / written to the public config.json layout), the public sizes table, max_length_of."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple


class PretrainedSize(NamedTuple):
    """One public LongSafari checkpoint's architecture, as its config.json states it.

    A tuple in this order so that `PRETRAINED_SIZES[name][2]` (the max length) keeps working.
    """

    d_model: int
    n_layer: int
    max_length: int  # tokens; l_max in config.json (max_seq_len in the -hf config) is max_length + 2
    checkpoint_mixer: bool  # trained with gradient checkpointing: keys carry ".mixer.layer."
    checkpoint_mlp: bool  # ... and ".mlp.layer."


# The public LongSafari checkpoints (https://huggingface.co/LongSafari/<name>), the one table of their
# architectures. d_inner is 4 * d_model for all of them. The checkpoint flags are what each repo's
# config.json says (absent = false). They only decide the key form that save_pretrained writes for a model
# built by from_name: loading always reads the checkpoint's own config.json and accepts both key forms.
PRETRAINED_SIZES: dict[str, PretrainedSize] = {
    # config.json as of commit 691f36e ("update tiny config"): d_model 128, n_layer 2, l_max 1026, no
    # checkpoint flags. 436096 parameters (asserted in tests).
    "hyenadna-tiny-1k-seqlen": PretrainedSize(128, 2, 1024, False, False),
    # UNVERIFIED flags: its config.json ("add default model config", 7759b1f) was not readable here. d_model
    # 256 / 2 layers / l_max 1026 as in the name and the first tiny-1k config (commit 7da4d1b). Assumed false
    # like the other short-context tiny configs.
    "hyenadna-tiny-1k-seqlen-d256": PretrainedSize(256, 2, 1024, False, False),
    # UNVERIFIED flags: config.json not readable here; architecture from its -hf twin's config.json
    # (d_model 128, n_layer 2, max_seq_len 16386). Assumed false like the other tiny configs.
    "hyenadna-tiny-16k-seqlen-d128": PretrainedSize(128, 2, 16384, False, False),
    # true: commit 1e89e90 "update config with gradient checkpoint flag" adds both flags (config.json 535 B).
    "hyenadna-small-32k-seqlen": PretrainedSize(256, 4, 32768, True, True),
    # false: config.json is 482 B and was never changed after "add weights and config for 160k model"
    # (abdb659). That is exactly the 450k/1m file (536/537 B) without the two flag lines (28 + 26 B), so the
    # flags are absent. (Likely, not seen line by line; whether its weights carry ".layer" does not matter
    # to loading.)
    "hyenadna-medium-160k-seqlen": PretrainedSize(256, 8, 160000, False, False),
    # true (inferred): config.json is 536 B = the 1m file's 537 B with a 6- instead of 7-digit l_max, i.e.
    # the same fields, flags included.
    "hyenadna-medium-450k-seqlen": PretrainedSize(256, 8, 450000, True, True),
    # true: commit 300b717 "update config with checkpointing" adds both flags (config.json 537 B, read).
    "hyenadna-large-1m-seqlen": PretrainedSize(256, 8, 1000000, True, True),
}
HUB_ORG = "LongSafari"
# The transformers ports of the public sizes are named LongSafari/<name>-hf.
HF_SUFFIX = "-hf"

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

CONFIG_NAME = "config.json"


def _parse_size(model: str) -> tuple[str, bool] | None:
    """A public size from a size name or hub id, with or without "-hf": (size, is_hf), else None."""
    name = str(model).rstrip("/").split("/")[-1]
    if name in PRETRAINED_SIZES:
        return name, False
    if name.endswith(HF_SUFFIX) and name[: -len(HF_SUFFIX)] in PRETRAINED_SIZES:
        return name[: -len(HF_SUFFIX)], True
    return None


def _known_models_hint() -> str:
    return (
        f"known sizes: {', '.join(PRETRAINED_SIZES)} (also as {HUB_ORG}/<size> and with the '{HF_SUFFIX}' "
        f"suffix); or a local checkpoint folder with {CONFIG_NAME} (LongSafari layout)"
    )


def max_length_of(model: str | os.PathLike) -> int:
    """Tokens a model reads at most: for a public size name, its hub id (also "-hf") or a local folder.

    A local folder is read from its own config.json; names need no network.
    Unknown -> ValueError listing the known sizes.
    """
    if not str(model).strip():
        raise ValueError(f"unknown HyenaDNA model {str(model)!r}; " + _known_models_hint())
    path = Path(model).expanduser()
    if path.is_dir():
        config_json = path / CONFIG_NAME
        if not config_json.is_file():
            raise ValueError(f"{path} is a folder without {CONFIG_NAME}; " + _known_models_hint())
        return HyenaDNAConfig.from_json(config_json).max_length
    size = _parse_size(str(model))
    if size is None:
        raise ValueError(f"unknown HyenaDNA model {str(model)!r}; " + _known_models_hint())
    return PRETRAINED_SIZES[size[0]].max_length


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
        """The architecture of a public checkpoint by size name, e.g. "hyenadna-small-32k-seqlen".

        Also accepts the hub id and the "-hf" variants; the -hf weights never carry the ".layer" wrapper,
        so their checkpoint flags are false.
        """
        size = _parse_size(name)
        if size is None:
            raise ValueError(f"unknown HyenaDNA size {name!r}; {_known_models_hint()}")
        spec = PRETRAINED_SIZES[size[0]]
        hf = size[1]
        return cls(
            d_model=spec.d_model,
            n_layer=spec.n_layer,
            d_inner=4 * spec.d_model,
            l_max=spec.max_length + 2,
            checkpoint_mixer=spec.checkpoint_mixer and not hf,
            checkpoint_mlp=spec.checkpoint_mlp and not hf,
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

"""HyenaDNAConfig (read from / written to both config.json layouts), the public sizes table, max_length_of."""

from __future__ import annotations

import json
import math
import os
import stat
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
# The transformers ports (LongSafari/<name>-hf): config.json in the layout of their configuration_hyena.py
# HyenaConfig, weights in model.safetensors.
HF_SUFFIX = "-hf"
HF_MODEL_TYPE = "hyenadna"

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
# A config.json is a few hundred bytes; anything far larger is not one (and is never read into memory whole).
MAX_CONFIG_BYTES = 1 << 20

# Upper bounds of the architecture fields: far above every public size (d_model 256, n_layer 8, l_max 1000002,
# filter_order 64), far below what would exhaust a machine's memory before a single weight is read. A config that
# passes them may still be too large for this machine: HyenaDNAModel checks its memory before building it.
MAX_VALUES = {
    "d_model": 4096,
    "n_layer": 128,
    "d_inner": 16384,
    "vocab_size": 4096,
    "pad_vocab_size_multiple": 1024,
    "l_max": (1 << 22) + 2,  # 4 Mi tokens + the two special ones
    "emb_dim": 255,
    "filter_order": 4096,
    "local_order": 255,
    "hyena_order": 8,
    "num_inner_mlps": 32,
}
_MIN_VALUES = {"emb_dim": 3, "hyena_order": 2, "num_inner_mlps": 0}
_FLOAT_RANGES = {  # field: (lowest, highest), inclusive
    "embed_dropout": (0.0, 1.0),
    "resid_dropout": (0.0, 1.0),
    "layer_norm_epsilon": (1e-12, 1.0),
    "w": (-1e6, 1e6),
    "filter_lr": (0.0, 1e3),
    "filter_wd": (0.0, 1e3),
    "lr_pos_emb": (0.0, 1e3),
    "shift": (-1e3, 1e3),
}
_BOOL_FIELDS = ("residual_in_fp32", "checkpoint_mixer", "checkpoint_mlp", "modulate")

# Fields of the -hf HyenaConfig (configuration_hyena.py of the LongSafari/*-hf repos) that carry the
# architecture: -hf name -> (our field, that class's default when the key is absent).
_HF_KEYS: dict[str, tuple[str, Any]] = {
    "d_model": ("d_model", 256),
    "n_layer": ("n_layer", 12),
    "d_inner": ("d_inner", None),  # None: 4 * d_model
    "vocab_size": ("vocab_size", 12),
    "pad_vocab_size_multiple": ("pad_vocab_size_multiple", 8),
    "embed_dropout": ("embed_dropout", 0.1),
    "layer_norm_epsilon": ("layer_norm_epsilon", 1e-5),
    # The -hf positional embedding and filters are built for max_seq_len positions, exactly what l_max is
    # in the original config (the public -hf configs say 1026, 16386, 32770, 160002, 450002, 1000002).
    "max_seq_len": ("l_max", 1024),
    "emb_dim": ("emb_dim", 3),
    "filter_order": ("filter_order", 64),
    "short_filter_order": ("local_order", 3),
    "hyena_order": ("hyena_order", 2),
    "num_inner_mlps": ("num_inner_mlps", 2),
    "activation_freq": ("w", 1),
}
# What the -hf modeling code hard-codes (HyenaExponentialModulation defaults, LayerNorm() defaults in the
# blocks, a short conv padded by 2, a filter MLP whose output width is d_model).
_HF_FIXED = {"modulate": True, "shift": 0.05, "hyena_order": 2, "local_order": 3, "layer_norm_epsilon": 1e-5}


def config_layout(data: dict[str, Any]) -> str:
    """ "hf" for a transformers (-hf repo) config.json, "original" for the LongSafari / our own layout."""
    if "layer" not in data and ("max_seq_len" in data or data.get("model_type") == HF_MODEL_TYPE):
        return "hf"
    return "original"


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
        f"suffix); or a local checkpoint folder with {CONFIG_NAME} (LongSafari or -hf layout)"
    )


def max_length_of(model: str | os.PathLike) -> int:
    """Tokens a model reads at most: for a public size name, its hub id (also "-hf") or a local folder.

    A local folder is read from its own config.json (either layout); names need no network.
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
        """Build from the public config.json layout (nested "layer"), a flat dict of our fields, or an -hf
        (transformers) config.json (detected by its `max_seq_len`; see from_hf_dict)."""
        if not isinstance(data, dict):
            raise ValueError(f"a HyenaDNA config must be a JSON object, got {type(data).__name__}")
        if config_layout(data) == "hf":
            return cls.from_hf_dict(data)
        data = dict(data)
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {}
        layer = data.pop("layer", None) or {}
        if not isinstance(layer, dict):
            raise ValueError(f"config field 'layer' must be an object of Hyena operator settings, got {layer!r}")
        if not isinstance(data.get("extra") or {}, dict):
            raise ValueError(f"config field 'extra' must be an object, got {data['extra']!r}")
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
            data = json.loads(read_small_file(path, MAX_CONFIG_BYTES))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from None

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

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any]) -> HyenaDNAConfig:
        """Translate an -hf (transformers HyenaConfig) config.json; fields it lacks take that class's defaults.

        max_seq_len -> l_max (same meaning), short_filter_order -> local_order, activation_freq -> w. What the
        -hf code hard-codes (modulate, shift 0.05, fp32 residual, no residual dropout) is set to match. Fields we
        do not use (train_freq, use_bias, pad_token_id, hyena_dropout, ...) are kept in extra["hf"] so that
        to_hf_dict writes them back.
        """
        data = dict(data)
        kwargs: dict[str, Any] = {}
        for hf_key, (ours, default) in _HF_KEYS.items():
            kwargs[ours] = data.pop(hf_key, default)
        if kwargs["d_inner"] is None:
            kwargs["d_inner"] = 4 * kwargs["d_model"] if isinstance(kwargs["d_model"], int) else None
        problems = [
            f"{hf_key} {kwargs[ours]!r} (the -hf modeling code only works with {_HF_FIXED[ours]!r})"
            for hf_key, (ours, _) in _HF_KEYS.items()
            if ours in _HF_FIXED and kwargs[ours] != _HF_FIXED[ours]
        ]
        if problems:
            raise ValueError("unsupported -hf config: " + "; ".join(problems))
        config = cls(
            **kwargs,
            modulate=True,
            shift=_HF_FIXED["shift"],
            residual_in_fp32=True,
            resid_dropout=0.0,
            checkpoint_mixer=False,
            checkpoint_mlp=False,
            extra={"hf": data} if data else {},
        )
        config.validate()
        return config

    def to_hf_dict(self) -> dict[str, Any]:
        """This configuration as an -hf (transformers HyenaConfig) config.json; ValueError if it cannot be one."""
        problems = [
            f"{name}={getattr(self, name)!r} (the -hf modeling code hard-codes {value!r})"
            for name, value in _HF_FIXED.items()
            if getattr(self, name) != value
        ]
        if problems:
            raise ValueError("this configuration has no -hf equivalent: " + "; ".join(problems))
        out: dict[str, Any] = {
            "architectures": ["HyenaDNAForCausalLM"],
            "model_type": HF_MODEL_TYPE,
            "hyena_dropout": 0.0,
            "hyena_filter_dropout": 0.0,
            "initializer_range": 0.02,
            "pad_token_id": 4,  # [PAD] of the public vocabulary
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            "train_freq": True,
            "use_bias": True,
        }
        out.update(self.extra.get("hf", {}))
        for hf_key, (ours, _) in _HF_KEYS.items():
            out[hf_key] = getattr(self, ours)
        return dict(sorted(out.items()))

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
        """Raise ValueError naming the first field of the wrong type or outside its range (MAX_VALUES)."""
        for name, highest in MAX_VALUES.items():
            value = getattr(self, name)
            lowest = _MIN_VALUES.get(name, 1)
            if not isinstance(value, int) or isinstance(value, bool) or not lowest <= value <= highest:
                raise ValueError(
                    f"config field {name!r} must be an integer from {lowest} to {highest}, got {_short(value)}"
                )
        if self.emb_dim % 2 == 0:
            raise ValueError(f"config field 'emb_dim' must be odd and >= 3, got {self.emb_dim!r}")
        for name, (lowest, highest) in _FLOAT_RANGES.items():
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or not lowest <= value <= highest:
                raise ValueError(
                    f"config field {name!r} must be a number from {lowest:g} to {highest:g}, got {_short(value)}"
                )
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"config field {name!r} must be true or false, got {_short(getattr(self, name))}")
        if not isinstance(self.extra, dict):
            raise ValueError(f"config field 'extra' must be an object, got {_short(self.extra)}")


def _short(value: Any) -> str:
    """A value for an error message, cut short (a hostile config may hold megabytes in one field)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_small_file(path: str | os.PathLike, max_bytes: int) -> str:
    """A small text file (config.json), refused unread when it is not a regular file or holds over max_bytes.

    A FIFO or a device named config.json would otherwise block the reader or feed it forever.
    """
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file (a FIFO, device or socket); replace it with a file")
        if info.st_size > max_bytes:
            raise ValueError(f"{path} holds {info.st_size} bytes, far more than a config file ({max_bytes} at most)")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ValueError(f"{path} grew beyond {max_bytes} bytes while being read; it is not a config file")
    return data.decode("utf-8")

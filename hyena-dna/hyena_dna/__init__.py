"""hyena_dna: a readable HyenaDNA backbone that loads every public LongSafari checkpoint."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Each public name -> the submodule that defines it, imported on first use (PEP 562): `import hyena_dna.config`
# (or reading its sizes for a command's --help) then never loads torch, which model and pretrained need.
_HOMES = {
    "tokenizer": None,  # a submodule itself
    "HUB_ORG": "config",
    "PRETRAINED_SIZES": "config",
    "HyenaDNAConfig": "config",
    "PretrainedSize": "config",
    "max_length_of": "config",
    "HyenaDNAModel": "model",
    "CheckpointKeyError": "pretrained",
    "PretrainedNotFoundError": "pretrained",
    "UnsafeCheckpointError": "pretrained",
    "from_hf_layout": "pretrained",
    "to_hf_layout": "pretrained",
}

__all__ = [
    "HUB_ORG",
    "PRETRAINED_SIZES",
    "CheckpointKeyError",
    "HyenaDNAConfig",
    "HyenaDNAModel",
    "PretrainedNotFoundError",
    "PretrainedSize",
    "UnsafeCheckpointError",
    "from_hf_layout",
    "max_length_of",
    "to_hf_layout",
    "tokenizer",
]

if TYPE_CHECKING:
    from hyena_dna import tokenizer
    from hyena_dna.config import HUB_ORG, PRETRAINED_SIZES, HyenaDNAConfig, PretrainedSize, max_length_of
    from hyena_dna.model import HyenaDNAModel
    from hyena_dna.pretrained import (
        CheckpointKeyError,
        PretrainedNotFoundError,
        UnsafeCheckpointError,
        from_hf_layout,
        to_hf_layout,
    )


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'hyena_dna' has no attribute {name!r}")
    home = _HOMES[name]
    value = importlib.import_module(f"hyena_dna.{home or name}")
    if home is not None:
        value = getattr(value, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})

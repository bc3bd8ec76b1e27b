"""hyena_dna: a readable HyenaDNA backbone that loads every public LongSafari checkpoint."""

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

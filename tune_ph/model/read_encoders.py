"""Read encoders other than the backbone: token ids of a read set -> one vector (a k-mer profile, the control); the
pooling of hidden states that the backbone's vectors share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from tune_ph.config import POOLINGS, READ_ENCODERS, TrainConfig
from tune_ph.registry import Registry

# HyenaDNA's character vocabulary: A, C, G, T are ids 7..10 (hyena_dna.tokenizer); anything else breaks a k-mer.
_FIRST_BASE_ID = 7
_BASES = 4
# Sets per chunk when a whole dataset's profiles are computed: (chunk, length, 4^k) never materialises.
_CHUNK = 2048


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Reduce (B, L, D) hidden states to (B, D) using only positions where mask is True."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
    if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"expected hidden (B, L, D) and mask (B, L); got {tuple(hidden.shape)} and {tuple(mask.shape)}"
        )
    mask = mask.bool()
    if pooling in ("pool", "sum"):
        # where() rather than multiplication so non-finite values at padded positions cannot leak in.
        total = torch.where(mask.unsqueeze(-1), hidden, hidden.new_zeros(())).sum(dim=1)
        if pooling == "sum":
            return total
        count = mask.sum(dim=1, keepdim=True).clamp(min=1).to(total.dtype)
        return total / count
    length = mask.shape[1]
    positions = torch.arange(length, device=mask.device).expand_as(mask)
    if pooling == "last":
        # Largest real position; computed from the mask so left and right padding both work.
        index = torch.where(mask, positions, -1).amax(dim=1).clamp(min=0)
    else:
        index = torch.where(mask, positions, length).amin(dim=1).clamp(max=length - 1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


class KmerEncoder(nn.Module):
    """A set's k-mer frequencies (4^k, summing to 1; k-mers with N or padding are skipped) -> (B, 4^k).

    The control for the DNA model: the same clusters and heads on profiles anyone can count, so what the
    backbone's vectors add is measured, not assumed. No parameters, nothing to cache.
    """

    name = "kmer"
    fields: ClassVar[tuple[str, ...]] = ("encoder_k",)
    frozen_only = "read_encoder=kmer has nothing to fine-tune; set freeze_backbone=True or use hyena"
    reads_backbone = False  # its vectors are counted by each run in seconds: nothing of the backbone's to share

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.register_buffer("_place", _BASES ** torch.arange(k - 1, -1, -1), persistent=False)

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> KmerEncoder:
        return cls(cfg.encoder_k)

    @classmethod
    def width_of(cls, cfg: TrainConfig, d_model: int) -> int:
        """A set vector's width, before the encoder is built."""
        return _BASES**cfg.encoder_k

    @property
    def width(self) -> int:
        return _BASES**self.k

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        code = input_ids.long() - _FIRST_BASE_ID
        valid = mask.bool() & (code >= 0) & (code < _BASES)
        windows = code.clamp(0, _BASES - 1).unfold(1, self.k, 1)  # (B, L - k + 1, k)
        whole = valid.unfold(1, self.k, 1).all(dim=-1)
        index = (windows * self._place).sum(dim=-1)
        counts = torch.zeros(input_ids.shape[0], self.width, device=input_ids.device)
        counts.scatter_add_(1, index, whole.float())
        return counts / counts.sum(dim=1, keepdim=True).clamp(min=1)


def kmer_vectors(
    encoder: KmerEncoder, tokens_of: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]], n_sets: int
) -> torch.Tensor:
    """Every set's profile (n_sets, 4^k) float32; tokens_of(indices) -> (ids, mask) as TokenizedDataset gives."""
    out = torch.empty(n_sets, encoder.width)
    with torch.inference_mode():
        for start in range(0, n_sets, _CHUNK):
            ids, mask = tokens_of(np.arange(start, min(start + _CHUNK, n_sets)))
            out[start : start + len(ids)] = encoder(ids, mask)
    return out


class Backbone:
    """The task model's own backbone, pooled: no module of its own, so a checkpoint's backbone keys stay where they
    always were (``backbone.``)."""

    name = "hyena"
    fields: ClassVar[tuple[str, ...]] = ("pooling",)
    reads_backbone = True

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> None:
        return None

    @classmethod
    def width_of(cls, cfg: TrainConfig, d_model: int) -> int:
        return d_model


# Name -> the encoder a config builds. A new encoder is its class (name, fields, from_config, width_of,
# reads_backbone, and a module that maps (ids, mask) to set vectors) and one registration line.
ENCODERS: Registry[Any] = Registry(READ_ENCODERS)
ENCODERS.register(Backbone)
ENCODERS.register(KmerEncoder)


def make_encoder(cfg: TrainConfig) -> nn.Module | None:
    """The read encoder cfg names (None: the backbone's pooled hidden states)."""
    return ENCODERS[cfg.read_encoder].from_config(cfg)

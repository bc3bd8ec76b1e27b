"""Heads: the features a sample's aggregation gives -> one value each, each a registered class (HEADS).

A head is a class (here, in its own file, or a test's) registered with ``HEADS.register``: its name(s), the
TrainConfig fields it reads (``fields``), what the config must know of it (``needs_features``: tune_ph.config.Part),
whether gradient steps train it (``trainable_by_gradient``; a head that is not has ``fit``), ``from_config``,
``numel`` (a memory estimate made before it is built) and ``regress``. Its state is saved under ``head.``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from tune_ph.config import ARCHITECTURES, POOLINGS, TrainConfig
from tune_ph.model.read_encoders import pool_hidden
from tune_ph.model.tree_head import TreeHead
from tune_ph.registry import Registry

# Each MLP architecture: its hidden layers (every one halves the width, floored, see _widths) and whether its input
# is layer-normalised first.
MLP_SHAPES: dict[str, tuple[int, bool]] = {
    "linear": (0, False),
    "mlp2": (1, False),
    "mlp2_ln": (1, True),
    "mlp3": (2, False),
    "mlp4": (3, False),
    "mlp5": (4, False),
}
MLP_HEADS: tuple[str, ...] = tuple(MLP_SHAPES)
_MIN_WIDTH = 16


def _widths(d_model: int, n_hidden: int) -> list[int]:
    # Deep heads on a small d_model would otherwise shrink to a handful of units; never go below 16
    # (or below d_model itself when the model is smaller than that).
    floor = min(_MIN_WIDTH, d_model)
    return [max(d_model // 2**k, floor) for k in range(1, n_hidden + 1)]


class RegressionHead(nn.Module):
    """Masked pooling followed by a linear layer or a small MLP; returns one value per sequence."""

    fields: ClassVar[tuple[str, ...]] = ("pooling", "head_dropout")
    trainable_by_gradient: ClassVar[bool] = True

    def __init__(self, d_model: int, architecture: str = "mlp2", pooling: str = "pool", dropout: float = 0.1):
        super().__init__()
        if architecture not in MLP_SHAPES:
            raise ValueError(f"unknown head architecture {architecture!r}; choose one of: {', '.join(MLP_SHAPES)}")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
        self.architecture = architecture
        self.pooling = pooling
        self.d_model = d_model
        n_hidden, layer_norm = MLP_SHAPES[architecture]
        layers: list[nn.Module] = []
        if layer_norm:
            layers.append(nn.LayerNorm(d_model))
        width = d_model
        for hidden in _widths(d_model, n_hidden):
            # nn.Dropout refuses a probability outside [0, 1] itself; TrainConfig narrows it to [0, 1).
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, cfg: TrainConfig, width: int) -> RegressionHead:
        """The head cfg declares on `width` inputs."""
        return cls(width, cfg.head, cfg.pooling, cfg.head_dropout)

    @classmethod
    def numel(cls, cfg: TrainConfig, width: int) -> int:
        """Its weights on `width` inputs (the layer norm aside)."""
        widths = [width, *_widths(width, MLP_SHAPES[cfg.head][0]), 1]
        return sum(a * b + b for a, b in zip(widths, widths[1:]))

    @staticmethod
    def sized_state(saved: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
        """State whose size a checkpoint decides, not the config (none: every layer's size is the config's)."""
        return {}

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden (B, L, D), mask (B, L) bool with True at real tokens -> set vectors (B, D)."""
        return pool_hidden(hidden, mask, self.pooling)

    def regress(self, vectors: torch.Tensor) -> torch.Tensor:
        """Vectors (N, D) -> one value each (N,)."""
        return self.net(vectors).squeeze(-1)

    def used_features(self) -> np.ndarray:
        """The inputs a prediction may depend on: every one, through the first layer's weights."""
        return np.arange(self.d_model)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden (B, L, D), mask (B, L) bool with True at real tokens -> (B,)."""
        return self.regress(self.pool(hidden, mask))

    def extra_repr(self) -> str:
        return f"architecture={self.architecture!r}, pooling={self.pooling!r}"


HEADS: Registry[Any] = Registry(ARCHITECTURES)
HEADS.register(RegressionHead, *MLP_HEADS)
HEADS.register(TreeHead)

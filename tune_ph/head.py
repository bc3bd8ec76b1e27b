"""RegressionHead: pool a backbone's hidden states over real (unpadded) tokens and map them to one value."""

from __future__ import annotations

import torch
from torch import nn

ARCHITECTURES: tuple[str, ...] = ("linear", "mlp2", "mlp2_ln", "mlp3", "mlp4", "mlp5")
POOLINGS: tuple[str, ...] = ("pool", "last", "first", "sum")

# Number of hidden layers of each MLP architecture; every layer halves the width (floored, see _widths).
_HIDDEN_LAYERS = {"linear": 0, "mlp2": 1, "mlp2_ln": 1, "mlp3": 2, "mlp4": 3, "mlp5": 4}
_MIN_WIDTH = 16


def _widths(d_model: int, n_hidden: int) -> list[int]:
    # Deep heads on a small d_model would otherwise shrink to a handful of units; never go below 16
    # (or below d_model itself when the model is smaller than that).
    floor = min(_MIN_WIDTH, d_model)
    return [max(d_model // 2**k, floor) for k in range(1, n_hidden + 1)]


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


class RegressionHead(nn.Module):
    """Masked pooling followed by a linear layer or a small MLP; returns one value per sequence."""

    def __init__(self, d_model: int, architecture: str = "mlp2", pooling: str = "pool", dropout: float = 0.1):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown head architecture {architecture!r}; choose one of: {', '.join(ARCHITECTURES)}")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
        if not isinstance(d_model, int) or d_model <= 0:
            raise ValueError(f"d_model must be a positive integer, got {d_model!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"head dropout must be in [0, 1), got {dropout!r}")
        self.architecture = architecture
        self.pooling = pooling
        layers: list[nn.Module] = []
        if architecture == "mlp2_ln":
            layers.append(nn.LayerNorm(d_model))
        width = d_model
        for hidden in _widths(d_model, _HIDDEN_LAYERS[architecture]):
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden (B, L, D), mask (B, L) bool with True at real tokens -> (B,)."""
        return self.net(pool_hidden(hidden, mask, self.pooling)).squeeze(-1)

    def extra_repr(self) -> str:
        return f"architecture={self.architecture!r}, pooling={self.pooling!r}"

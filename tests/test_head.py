"""Tests for tune_ph.head: shapes of every architecture x pooling, masked pooling, clear errors."""

import pytest
import torch

from tune_ph.config import POOLINGS
from tune_ph.model.heads import MLP_HEADS, RegressionHead
from tune_ph.model.read_encoders import pool_hidden

D = 32


def _left_pad(hidden: torch.Tensor, n_pad: int, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded copy of (1, L, D) hidden states, padding filled with junk, plus its mask."""
    pad = torch.full((1, n_pad, hidden.shape[2]), fill)
    padded = torch.cat([pad, hidden], dim=1)
    mask = torch.cat([torch.zeros(1, n_pad, dtype=torch.bool), torch.ones(1, hidden.shape[1], dtype=torch.bool)], 1)
    return padded, mask


@pytest.mark.parametrize("architecture", MLP_HEADS)
@pytest.mark.parametrize("pooling", POOLINGS)
def test_output_shape_every_head(architecture: str, pooling: str) -> None:
    head = RegressionHead(D, architecture=architecture, pooling=pooling)
    hidden = torch.randn(3, 7, D)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, :4] = False
    out = head(hidden, mask)
    assert out.shape == (3,)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_architectures_have_expected_layers() -> None:
    linear = [m for m in RegressionHead(128, "linear").modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(128, 1)]
    mlp2 = [m for m in RegressionHead(128, "mlp2").modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in mlp2] == [(128, 64), (64, 1)]
    mlp3 = [m for m in RegressionHead(128, "mlp3").modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in mlp3] == [(128, 64), (64, 32), (32, 1)]
    mlp5 = [m.out_features for m in RegressionHead(128, "mlp5").modules() if isinstance(m, torch.nn.Linear)]
    assert mlp5 == [64, 32, 16, 16, 1]  # halving floors at 16
    ln = RegressionHead(128, "mlp2_ln").net
    assert isinstance(ln[0], torch.nn.LayerNorm)
    dropouts = [m.p for m in RegressionHead(128, "mlp3", dropout=0.3).modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.3, 0.3]


@pytest.mark.parametrize("pooling", POOLINGS)
def test_padding_does_not_change_pooled_vector(pooling: str) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(1, 5, D)
    plain = pool_hidden(hidden, torch.ones(1, 5, dtype=torch.bool), pooling)
    for fill in (0.0, 123.0, float("nan")):
        padded, mask = _left_pad(hidden, 4, fill)
        assert torch.allclose(pool_hidden(padded, mask, pooling), plain, atol=1e-6)
    # Right padding too: last/first are found from the mask, not assumed positions.
    right = torch.cat([hidden, torch.full((1, 3, D), 7.0)], dim=1)
    right_mask = torch.tensor([[True] * 5 + [False] * 3])
    assert torch.allclose(pool_hidden(right, right_mask, pooling), plain, atol=1e-6)


def test_pooling_values() -> None:
    hidden = torch.arange(4, dtype=torch.float32).view(1, 4, 1).expand(2, 4, 3).clone()
    mask = torch.tensor([[False, True, True, False], [True, True, True, True]])
    assert pool_hidden(hidden, mask, "pool")[:, 0].tolist() == [1.5, 1.5]
    assert pool_hidden(hidden, mask, "sum")[:, 0].tolist() == [3.0, 6.0]
    assert pool_hidden(hidden, mask, "first")[:, 0].tolist() == [1.0, 0.0]
    assert pool_hidden(hidden, mask, "last")[:, 0].tolist() == [2.0, 3.0]


def test_head_in_batch_matches_head_alone() -> None:
    """A sequence's prediction must not depend on how much padding its batch-mates forced."""
    torch.manual_seed(1)
    head = RegressionHead(D, "mlp2_ln", "pool").eval()
    hidden = torch.randn(1, 6, D)
    alone = head(hidden, torch.ones(1, 6, dtype=torch.bool))
    padded, mask = _left_pad(hidden, 3, 5.0)
    other = torch.randn(1, 9, D)
    batch = head(torch.cat([padded, other]), torch.cat([mask, torch.ones(1, 9, dtype=torch.bool)]))
    assert torch.allclose(batch[0], alone[0], atol=1e-6)


def test_unknown_names_list_allowed_values() -> None:
    with pytest.raises(ValueError, match="mlp2_ln"):
        RegressionHead(D, architecture="mlp9")
    with pytest.raises(ValueError, match="first"):
        RegressionHead(D, pooling="max")
    with pytest.raises(ValueError, match="dropout"):
        RegressionHead(D, dropout=1.5)

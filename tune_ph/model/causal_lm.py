"""HyenaDNA as a causal language model over read sets: the tied next-token head, its loss, right-padded batches."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyena_dna import HyenaDNAModel, tokenizer
from tune_ph.data.tokens import TokenizedDataset
from tune_ph.model.regressor import autocast


class CausalLM(nn.Module):
    """The backbone with HyenaDNA's language-model head: logits = hidden @ word_embeddings.T (tied weights)."""

    def __init__(self, backbone: HyenaDNAModel) -> None:
        super().__init__()
        self.backbone = backbone

    def logits(self, hidden: Tensor) -> Tensor:
        # Only the real vocabulary: the embedding table's padding rows are never a token to predict.
        weight = self.backbone.embeddings.word_embeddings.weight[: self.backbone.config.vocab_size]
        return hidden.float() @ weight.float().T

    def token_losses(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        """Cross entropy of token t+1 given tokens <= t, for every t where both are real tokens: (pairs,)."""
        hidden = self.backbone(input_ids)
        mask = mask.bool()
        pairs = mask[:, :-1] & mask[:, 1:]
        # Logits of the pairs only: the full (B, L, vocab) tensor would be mostly padding.
        return F.cross_entropy(self.logits(hidden[:, :-1][pairs]), input_ids[:, 1:][pairs], reduction="none")

    def forward(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        """Mean next-token loss over the real token pairs of the batch."""
        losses = self.token_losses(input_ids, mask)
        if losses.numel() == 0:  # sets of one token each: nothing to predict, and a mean of nothing is NaN
            return self.backbone.embeddings.word_embeddings.weight.sum() * 0.0
        return losses.mean()


def right_padded(dataset: TokenizedDataset, set_index: np.ndarray) -> tuple[Tensor, Tensor]:
    """(input_ids int64 (S, W), mask bool) of some sets, each from position 0, padded on the right to the longest.

    Not tokens_of's left padding: the backbone is causal, so a real token never sees right padding and padding
    cannot change the loss; each set starts at position 0, as HyenaDNA's pretraining sequences do.
    """
    starts, ends = dataset.offsets[set_index], dataset.offsets[np.asarray(set_index) + 1]
    width = max(int((ends - starts).max(initial=0)), 1)
    ids = np.full((len(set_index), width), tokenizer.PAD_ID, dtype=np.int64)
    mask = np.zeros((len(set_index), width), dtype=bool)
    for row, (start, end) in enumerate(zip(starts, ends)):
        ids[row, : end - start] = dataset.ids[start:end]
        mask[row, : end - start] = True
    return torch.from_numpy(ids), torch.from_numpy(mask)


@torch.no_grad()
def eval_loss(
    lm: CausalLM, dataset: TokenizedDataset, set_index: np.ndarray, batch_size: int, device: torch.device
) -> float | None:
    """Mean next-token loss per real token pair over some sets (None when they hold no pair)."""
    was_training = lm.training
    lm.eval()
    total, count = 0.0, 0
    for first in range(0, len(set_index), batch_size):
        ids, mask = right_padded(dataset, set_index[first : first + batch_size])
        with autocast(device):
            losses = lm.token_losses(ids.to(device), mask.to(device))
        total += float(losses.sum())
        count += losses.numel()
    lm.train(was_training)
    return total / count if count else None


def eval_slice(dataset: TokenizedDataset, count: int) -> np.ndarray:
    """`count` val sets spread evenly over the split (0: all), so every part of it is represented."""
    val = dataset.set_indices("val")
    if count == 0 or count >= len(val):
        return val
    return val[np.unique(np.linspace(0, len(val) - 1, count).round().astype(np.int64))]

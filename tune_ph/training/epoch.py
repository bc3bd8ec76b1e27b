"""One training epoch over the train samples (a random choice of each sample's sets per step), its loss and seeds."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from tune_ph.config import TrainConfig
from tune_ph.data.tokens import SetChoice, TokenizedDataset
from tune_ph.errors import RunFailure
from tune_ph.model.regressor import PhRegressor, autocast
from tune_ph.progress import bar_disable

# On CUDA a finiteness check per step would force a device sync; losses are checked in chunks instead.
_CUDA_CHECK_EVERY = 32


class NonFiniteLossError(RunFailure):
    """The training loss became NaN or infinite (exit code 1, one line: the message says which step and what to try)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_loss(cfg: TrainConfig) -> nn.Module:
    if cfg.loss == "smoothl1":
        return nn.SmoothL1Loss(beta=cfg.loss_beta)
    if cfg.loss == "huber":
        return nn.HuberLoss(delta=cfg.loss_beta)
    if cfg.loss == "mae":
        return nn.L1Loss()
    return nn.MSELoss()


def _check_finite(losses: torch.Tensor, count: int, first_batch: int, epoch: int) -> None:
    """Raise NonFiniteLossError naming the first bad batch among the last `count` recorded losses."""
    window = losses[:count]
    bad = (~torch.isfinite(window)).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise NonFiniteLossError(
            f"non-finite training loss ({float(window[i])}) at epoch {epoch}, batch {first_batch + i} "
            f"(1-based); the run was stopped. Lower --learning-rate, keep --grad-clip on, or check the inputs."
        )


def _from_sets(
    model: PhRegressor, dataset: TokenizedDataset, choice: SetChoice, device: torch.device, vectors: torch.Tensor | None
) -> torch.Tensor:
    """One step's standardised predictions from its chosen sets: their cached vectors, else the backbone."""
    owner = torch.from_numpy(choice.owner).to(device, non_blocking=True)
    count = len(choice.sample_index)
    weights = dataset.weights_of(choice.set_index)
    weights = weights.to(device, non_blocking=True) if weights is not None else None
    if vectors is not None:  # frozen backbone: its pooled vectors are cached, only the rest trains
        chosen = vectors[torch.from_numpy(choice.set_index)].to(device)
        return model.from_set_vectors(chosen, owner, count, weights)
    ids, mask = dataset.tokens_of(choice.set_index)
    with autocast(device):
        return model(ids.to(device, non_blocking=True), mask.to(device, non_blocking=True), owner, count, weights)


def train_epoch(
    model: PhRegressor,
    dataset: TokenizedDataset,
    cfg: TrainConfig,
    *,
    epoch: int,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    target_mean: float,
    target_std: float,
    device: torch.device,
    progress: bool,
    vectors: torch.Tensor | None = None,
    features: torch.Tensor | None = None,
) -> float:
    """One pass over the train samples: each step takes batch_size samples, sets_per_step random sets of each.

    vectors: a frozen backbone's cached set vectors (only the rest trains); features: the train samples' fixed head
    inputs (cluster abundances of every set, in sample_indices order): the head alone trains on them."""
    model.train()
    check_every = _CUDA_CHECK_EVERY if device.type == "cuda" else 1
    # Losses stay on the device and are read in chunks: one host sync per chunk, not per step.
    losses = torch.zeros(check_every, device=device)
    total = torch.zeros((), device=device, dtype=torch.float64)
    n_batches = dataset.num_sample_batches("train", cfg.batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    # A new seed every epoch: other samples share a step, and other reads stand for each sample.
    choices = dataset.choose_sets(
        "train", cfg.batch_size, sets_per_step=cfg.sets_per_step, shuffle=True, seed=cfg.seed * 1000 + epoch
    )
    bar = tqdm(choices, total=n_batches, desc=f"epoch {epoch}/{cfg.epochs}", disable=bar_disable(progress), leave=False)
    pending = 0
    step = 0
    train_samples = dataset.sample_indices("train")
    for step, choice in enumerate(bar, start=1):
        ph = torch.from_numpy(dataset.ph[choice.sample_index]).to(device, non_blocking=True)
        target = (ph.float() - target_mean) / target_std
        if features is not None:
            rows = torch.from_numpy(np.searchsorted(train_samples, choice.sample_index))
            pred = model.from_features(features[rows].to(device, non_blocking=True))
        else:
            pred = _from_sets(model, dataset, choice, device, vectors)
        loss = loss_fn(pred, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        detached = loss.detach()
        losses[pending] = detached
        total += detached
        pending += 1
        if pending == check_every:
            _check_finite(losses, pending, step - pending + 1, epoch)
            pending = 0
            if progress:
                bar.set_postfix(loss=f"{float(total) / step:.4f}", refresh=False)
    if pending:
        _check_finite(losses, pending, step - pending + 1, epoch)
    if step == 0:
        raise ValueError("the 'train' split has no samples; check the split fractions and the dataset size")
    return float(total) / step

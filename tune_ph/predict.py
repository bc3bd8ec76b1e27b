"""Inference: per-set predictions of a split in pH units and their per-sample means."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from tune_ph.metrics import regression_metrics
from tune_ph.model import PhRegressor, autocast, resolve_device
from tune_ph.tokens import TokenizedDataset

__all__ = ["Predictions", "predict", "regression_metrics"]


@dataclass
class Predictions:
    """Per-set predictions of one split, in pH units, with the sample each set belongs to."""

    set_index: np.ndarray  # int64 (n_sets,)
    sample_index: np.ndarray  # int64 (n_sets,)
    predicted: np.ndarray  # float64 (n_sets,)
    true: np.ndarray  # float64 (n_sets,)

    def sample_means(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sample indices sorted, mean predicted pH per sample, true pH per sample)."""
        samples, inverse = np.unique(self.sample_index, return_inverse=True)
        counts = np.bincount(inverse)
        predicted = np.bincount(inverse, weights=self.predicted) / counts
        true = np.bincount(inverse, weights=self.true) / counts
        return samples, predicted, true


def predict(
    model: PhRegressor,
    dataset: TokenizedDataset,
    split: str,
    *,
    target_mean: float,
    target_std: float,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Predictions:
    """Predict every set of one split; returns per-set predictions in pH units."""
    device = resolve_device(device) if isinstance(device, str) else device
    model.eval()
    outputs: list[torch.Tensor] = []
    set_index: list[torch.Tensor] = []
    sample_index: list[torch.Tensor] = []
    batches = dataset.batches(split, batch_size, shuffle=False)
    total = dataset.num_batches(split, batch_size)
    with torch.inference_mode(), autocast(device):
        for batch in tqdm(batches, total=total, desc=f"predict {split}", disable=not progress, leave=False):
            ids = batch.input_ids.to(device, non_blocking=True)
            mask = batch.mask.to(device, non_blocking=True)
            outputs.append(model(ids, mask))
            set_index.append(batch.set_index)
            sample_index.append(batch.sample_index)
    if not outputs:
        raise ValueError(f"the {split!r} split has no sequence sets; check the split fractions and the dataset size")
    predicted = torch.cat(outputs).float().cpu().double().numpy() * target_std + target_mean
    sets = torch.cat(set_index).numpy().astype(np.int64)
    samples = torch.cat(sample_index).numpy().astype(np.int64)
    return Predictions(sets, samples, predicted, dataset.ph[samples].astype(np.float64))

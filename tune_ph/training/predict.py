"""The prediction pass over a tokenized split: per-sample pH from all of a sample's read sets (what validation, test
evaluation and predict_samples share). Light on purpose: every Ray trial imports it (no pandas, scikit-learn or
data sources here; new samples are training/inference.py's)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from tune_ph.data.tokens import TokenizedDataset
from tune_ph.model.regressor import PhRegressor, autocast, resolve_device
from tune_ph.progress import bar_disable


@dataclass
class Predictions:
    """One prediction per sample of a split, in pH units, with how much single read sets disagree."""

    sample_index: np.ndarray  # int64 (n,)
    predicted: np.ndarray  # float64 (n,), the model's prediction from all of the sample's sets
    true: np.ndarray  # float64 (n,)
    set_sd: np.ndarray  # float64 (n,), standard deviation (n - 1) of what each set alone predicts; NaN for one set
    n_sets: np.ndarray  # int64 (n,)


def _single_set_sd(single: torch.Tensor, owner: torch.Tensor, num_samples: int) -> np.ndarray:
    values = single.double().cpu().numpy()
    groups = owner.cpu().numpy()
    counts = np.bincount(groups, minlength=num_samples)
    mean = np.bincount(groups, weights=values, minlength=num_samples) / np.maximum(counts, 1)
    squares = np.bincount(groups, weights=(values - mean[groups]) ** 2, minlength=num_samples)
    spread = np.full(num_samples, np.nan)
    many = counts > 1
    spread[many] = np.sqrt(squares[many] / (counts[many] - 1))
    return spread


def predict(
    model: PhRegressor,
    dataset: TokenizedDataset,
    split: str,
    *,
    target_mean: float,
    target_std: float,
    batch_size: int = 8,
    sets_per_forward: int = 32,
    device: torch.device | str = "cpu",
    progress: bool = False,
    vectors: torch.Tensor | None = None,
) -> Predictions:
    """Predict every sample of one split from all of its read sets.

    batch_size samples are aggregated at once; their sets go through the backbone sets_per_forward at a time, so
    memory stays bounded however many sets a sample has. vectors: the pooled set vectors of every set of the
    dataset (a frozen backbone's embedding cache), used instead of running the backbone.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    model.eval()
    sample_index, predicted, spread, n_sets = [], [], [], []
    choices = dataset.choose_sets(split, batch_size)
    total = dataset.num_sample_batches(split, batch_size)
    with torch.inference_mode(), autocast(device):
        for choice in tqdm(choices, total=total, desc=f"predict {split}", disable=bar_disable(progress), leave=False):
            if vectors is not None:
                vecs = vectors[torch.from_numpy(choice.set_index)].to(device)
            else:
                parts = []
                for start in range(0, len(choice.set_index), sets_per_forward):
                    ids, mask = dataset.tokens_of(choice.set_index[start : start + sets_per_forward])
                    parts.append(model.set_vectors(ids.to(device), mask.to(device)))
                vecs = torch.cat(parts)
            owner = torch.from_numpy(choice.owner).to(device)
            count = len(choice.sample_index)
            weights = dataset.weights_of(choice.set_index)
            weights = weights.to(device) if weights is not None else None
            predicted.append(model.from_set_vectors(vecs, owner, count, weights).double().cpu().numpy())
            # What each set alone would predict: the spread is a rough uncertainty of the sample's prediction.
            single = model.from_set_vectors(vecs, torch.arange(len(vecs), device=device), len(vecs))
            spread.append(_single_set_sd(single, owner, count))
            sample_index.append(choice.sample_index)
            n_sets.append(np.bincount(choice.owner, minlength=count))
    if not predicted:
        raise ValueError(f"the {split!r} split has no samples; check the split fractions and the dataset size")
    samples = np.concatenate(sample_index)
    return Predictions(
        sample_index=samples,
        predicted=np.concatenate(predicted) * target_std + target_mean,
        true=dataset.ph[samples].astype(np.float64),
        set_sd=np.concatenate(spread) * target_std,
        n_sets=np.concatenate(n_sets).astype(np.int64),
    )

"""Inference: per-set and per-sample pH predictions; `python -m tune_ph predict` for new, unlabelled samples."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from tune_ph import files
from tune_ph.data import read_sets, sources, tokens
from tune_ph.data.tokens import TokenizedDataset
from tune_ph.errors import DatasetError, InputError
from tune_ph.metrics import regression_metrics
from tune_ph.model.regressor import PhRegressor, autocast, load_checkpoint, resolve_device
from tune_ph.training.checkpoints import checkpoint_split, find_checkpoint

__all__ = ["Predictions", "predict", "predict_samples", "sample_metrics"]

# A per-batch progress bar pays off from about this many samples on.
_PROGRESS_MIN_SAMPLES = 200


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
        for choice in tqdm(choices, total=total, desc=f"predict {split}", disable=not progress, leave=False):
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
            predicted.append(model.from_set_vectors(vecs, owner, count).double().cpu().numpy())
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


# ---------------------------------------------------------------- new samples


def _reads_used(reads: list[str], max_length: int, max_sets: int | None) -> int:
    """How many of a sample's reads its read sets hold (the packing of tokens.tokenize)."""
    return sum(map(len, read_sets.pack_sets([len(r) for r in reads if r], max_length, max_sets)))


def predict_samples(
    checkpoint: str | Path,
    samples: pd.DataFrame,
    *,
    split: str | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    skip_bad_rows: bool = False,
    progress: bool | None = None,
    max_sets: int | None = None,
) -> pd.DataFrame:
    """Predict the pH of every sample of a table with a checkpoint, tokenized with the checkpoint's max_length.

    Every read of a sample is used (as many sets as its reads fill) unless max_sets caps it: training's max_sets
    bounds what one step sees, while a prediction is best from all of a sample's reads.
    samples: sample_id and sequences (lists of reads); study_name, environment and pH are optional (as
    sources.load_samples(..., labelled=False) or fasta_samples.read_fasta_dir return them). Samples without reads
    are skipped with a warning. split: "train", "val" or "test" predicts only that split of the checkpoint's run.
    Returns one row per sample, files.PREDICT_COLUMNS: sample_id, study_name, predicted_ph_mean, predicted_ph_sd
    (spread of single sets), n_sets, n_reads_used, n_reads; and true_ph, residual_mean (true - predicted) when any
    sample has a pH (the names of evaluate's test_predictions.csv).
    """
    if split is not None and split not in tokens.SPLITS:
        raise InputError(f"unknown split {split!r}; use one of {', '.join(tokens.SPLITS)} (or None for every sample)")
    path = find_checkpoint(checkpoint)
    model, checkpoint = load_checkpoint(path)
    cfg, max_length = checkpoint.train_config, checkpoint.max_length
    df = sources.clean_samples(samples, skip_bad_rows=skip_bad_rows, where="samples", labelled=False)
    if split is not None:
        chosen = set(checkpoint_split(path, checkpoint, df)[split])
        df = df.loc[df["sample_id"].isin(chosen)].reset_index(drop=True)
        if df.empty:
            raise InputError(
                f"none of the samples is in the {split} split of {path}; is it the data it was trained on?"
            )
    if df.empty:
        raise DatasetError("no sample to predict: every sample was empty or skipped")
    dataset = tokens.build(df, {}, max_length=max_length, max_sets=max_sets)
    torch_device = resolve_device(device)
    model.to(torch_device)
    preds = predict(
        model,
        dataset,
        "all",
        target_mean=checkpoint.target_mean,
        target_std=checkpoint.target_std,
        batch_size=batch_size or cfg.batch_size,
        sets_per_forward=cfg.sets_per_forward(),
        device=torch_device,
        progress=dataset.num_samples >= _PROGRESS_MIN_SAMPLES if progress is None else progress,
    )
    index, mean, true = preds.sample_index, preds.predicted, preds.true
    reads = df.set_index("sample_id")["sequences"].loc[dataset.sample_ids[index]]
    table = pd.DataFrame(
        {
            files.SAMPLE_ID: dataset.sample_ids[index],
            files.STUDY_NAME: dataset.study_name[index],
            files.PREDICTED_PH: mean,
            files.PREDICTED_PH_SD: preds.set_sd,
            files.N_SETS: preds.n_sets,
            files.N_READS_USED: [_reads_used(r, max_length, max_sets) for r in reads],
            files.N_READS: [len(r) for r in reads],
        },
        columns=list(files.PREDICT_COLUMNS),
    )
    if np.isfinite(true).any():
        table[files.TRUE_PH] = true.astype(np.float32)  # the dataset's precision, as evaluate writes it
        table[files.RESIDUAL] = true - mean
    return table


def sample_metrics(table: pd.DataFrame) -> dict[str, float] | None:
    """R², RMSE, MAE, MSE and n of the samples of a predict_samples table whose pH is known; None if none is."""
    if files.TRUE_PH not in table.columns:
        return None
    known = table.loc[table[files.TRUE_PH].notna()]
    metrics: dict[str, float] = regression_metrics(
        known[files.TRUE_PH].to_numpy(), known[files.PREDICTED_PH].to_numpy()
    )
    return {**metrics, "n": len(known)}

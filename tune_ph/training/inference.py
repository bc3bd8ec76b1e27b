"""`python -m tune_ph predict`'s library side: the pH of new, unlabelled samples (a table of reads), by checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tune_ph import files
from tune_ph.data import read_sets, sources, tokens
from tune_ph.errors import DatasetError, InputError
from tune_ph.metrics import DEFAULT_TARGET, regression_metrics, target_names
from tune_ph.model.regressor import load_checkpoint, resolve_device
from tune_ph.training.checkpoints import checkpoint_split, find_checkpoint
from tune_ph.training.predict import predict

# A per-batch progress bar pays off from about this many samples on.
_PROGRESS_MIN_SAMPLES = 200


def _reads_used(reads: list[str], max_length: int, max_sets: int | None, counts: list[int] | None = None) -> int:
    """How many of a sample's reads its read sets hold (the packing of tokens.tokenize; with counts, the reads its
    distinct sequences stand for)."""
    if counts is None:
        return sum(map(len, read_sets.pack_sets([len(r) for r in reads if r], max_length, max_sets)))
    return int(sum(read_sets.sample_sets(reads, max_length, max_sets, counts)[1]))


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
    """Predict the target (pH, or the checkpoint's --target) of every sample of a table with a checkpoint, tokenized
    with the checkpoint's max_length.

    Every read of a sample is used (as many sets as its reads fill) unless max_sets caps it: training's max_sets
    bounds what one step sees, while a prediction is best from all of a sample's reads.
    samples: sample_id and sequences (lists of reads); study_name, environment and pH are optional (as
    sources.load_samples(..., labelled=False) or fasta_samples.read_fasta_dir return them). Samples without reads
    are skipped with a warning. split: "train", "val" or "test" predicts only that split of the checkpoint's run.
    Returns one row per sample, files.PREDICT_COLUMNS: sample_id, study_name, predicted_ph_mean, predicted_ph_sd
    (spread of single sets), n_sets, n_reads_used, n_reads; and true_ph, residual_mean (true - predicted) when any
    sample has a value of the target (the names of evaluate's test_predictions.csv; another target's columns are
    named after it, metrics.target_names: predicted_temperature_mean, ...).
    """
    if split is not None and split not in tokens.SPLITS:
        raise InputError(f"unknown split {split!r}; use one of {', '.join(tokens.SPLITS)} (or None for every sample)")
    path = find_checkpoint(checkpoint)
    model, checkpoint = load_checkpoint(path)
    cfg, max_length = checkpoint.train_config, checkpoint.max_length
    target = sources.Target.of(cfg)
    df = sources.clean_samples(samples, skip_bad_rows=skip_bad_rows, where="samples", labelled=False, target=target)
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
    rows = df.set_index("sample_id").loc[dataset.sample_ids[index]]
    reads = rows["sequences"]
    counts = rows["counts"].tolist() if "counts" in rows.columns else [None] * len(rows)
    table = pd.DataFrame(
        {
            files.SAMPLE_ID: dataset.sample_ids[index],
            files.STUDY_NAME: dataset.study_name[index],
            files.PREDICTED_PH: mean,
            files.PREDICTED_PH_SD: preds.set_sd,
            files.N_SETS: preds.n_sets,
            files.N_READS_USED: [_reads_used(r, max_length, max_sets, c) for r, c in zip(reads, counts)],
            files.N_READS: [len(r) if c is None else int(sum(c)) for r, c in zip(reads, counts)],
        },
        columns=list(files.PREDICT_COLUMNS),
    )
    if np.isfinite(true).any():
        table[files.TRUE_PH] = true.astype(np.float32)  # the dataset's precision, as evaluate writes it
        table[files.RESIDUAL] = true - mean
    return table.rename(columns=target_names().renamed(target_names(target.name)))


def sample_metrics(table: pd.DataFrame, target: str = DEFAULT_TARGET) -> dict[str, float] | None:
    """R², RMSE, MAE, MSE and n of the samples of a predict_samples table (of a model of `target`) whose target value
    is known; None if none is."""
    names = target_names(target)
    if names.true not in table.columns:
        return None
    known = table.loc[table[names.true].notna()]
    metrics: dict[str, float] = regression_metrics(known[names.true].to_numpy(), known[names.predicted].to_numpy())
    return {**metrics, "n": len(known)}

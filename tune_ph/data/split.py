"""The published train/val/test split: sorted sample ids, environment-stratified, seeded (scikit-learn)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from tune_ph.errors import DatasetError

log = logging.getLogger(__name__)


def _strata(labels: np.ndarray) -> np.ndarray:
    """Environment labels usable for stratification: classes with < 2 members are merged into "other".

    Only the stratification sees the merged label; with no rare class (the published data) the labels,
    and so the split, are exactly those of the plain stratified split.
    """
    labels = np.asarray(labels, dtype=object)
    values, counts = np.unique(labels, return_counts=True)
    rare = set(values[counts < 2])
    if not rare:
        return labels
    merged = np.array(["\x00other" if v in rare else v for v in labels], dtype=object)
    values, counts = np.unique(merged, return_counts=True)
    if (counts < 2).any():  # a lone rare sample: fold it into the largest class
        largest = values[np.argmax(counts)]
        merged = np.where(merged == "\x00other", largest, merged)
    log.info("environments with fewer than 2 samples (%s) are stratified together", ", ".join(sorted(rare)))
    return merged


def _stratified(ids: np.ndarray, labels: np.ndarray, test_size: float, seed: int, what: str):
    """A stratified split; on data too small to stratify (fewer held-out samples than environments), a
    plain random split with a warning, so tiny datasets still work."""
    try:
        return train_test_split(ids, test_size=test_size, random_state=seed, stratify=_strata(labels))
    except ValueError as exc:
        log.warning("the %s split is not stratified by environment: %s", what, exc)
    try:
        return train_test_split(ids, test_size=test_size, random_state=seed)
    except ValueError as exc:
        raise DatasetError(
            f"cannot make the {what} split of {len(ids)} samples ({exc}); use more samples or other fractions"
        ) from exc


def split_samples(
    df: pd.DataFrame, *, seed: int = 42, test_fraction: float = 0.2, val_fraction: float = 0.1
) -> dict[str, list[str]]:
    """Train/val/test sample ids by the published recipe (sorted ids, environment-stratified 80:20, then val).

    Environments with a single sample are stratified together; a split too small to stratify at all
    falls back to a plain random split (logged).
    """
    if not (0 < test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise ValueError(f"bad split fractions: test {test_fraction}, val {val_fraction}")
    d = df.sort_values("sample_id", kind="stable")
    ids = d["sample_id"].astype(str).to_numpy()
    env = d["environment"].astype(str).to_numpy()
    n_all = len(ids)
    idx_trainval, idx_test = _stratified(np.arange(n_all), env, test_fraction, seed, "train+val : test")
    n_val = int(round(n_all * val_fraction))
    if n_val == 0:
        idx_train, idx_val = idx_trainval, np.zeros(0, dtype=int)
    else:
        # A float fraction, as the published code passes it (sklearn rounds it up to a count).
        idx_train, idx_val = _stratified(
            idx_trainval, env[idx_trainval], n_val / len(idx_trainval), seed, "train : val"
        )
    return {
        "train": [str(s) for s in ids[idx_train]],
        "val": [str(s) for s in ids[idx_val]],
        "test": [str(s) for s in ids[idx_test]],
    }

"""The train/val/test split: by sample (the published recipe) or by study (whole studies held out), seeded."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from tune_ph.config import SPLIT_BY, TrainConfig
from tune_ph.errors import DatasetError

if TYPE_CHECKING:
    from tune_ph.data.tokens import TokenizedDataset

log = logging.getLogger(__name__)

PARTS = ("train", "val", "test")


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


def _folds(fraction: float) -> int:
    """Folds of whole studies whose one fold holds about `fraction` of the samples (0.2: 5 folds)."""
    return max(2, round(1 / fraction))


def min_studies(test_fraction: float, val_fraction: float) -> int:
    """Studies a study split needs: one fold's worth for test, then for val among the remaining studies."""
    n_test = _folds(test_fraction)
    if val_fraction == 0:
        return n_test
    # The studies left after test (n - n/n_test of them) must fill the val step's folds.
    n_val = _folds(val_fraction / (1 - test_fraction))
    return max(n_test, int(np.ceil(n_val * n_test / (n_test - 1))))


def _too_few(n_studies: int, test_fraction: float, val_fraction: float) -> DatasetError:
    return DatasetError(
        f"split_by study holds out whole studies and needs at least {min_studies(test_fraction, val_fraction)} "
        f"studies for test_fraction {test_fraction} and val_fraction {val_fraction}, but the data has {n_studies}; "
        "use split_by none (the published split by sample), or larger fractions"
    )


def _hold_out_studies(idx: np.ndarray, env: np.ndarray, studies: np.ndarray, fraction: float, seed: int):
    """(kept, held out) sample indices: one fold of StratifiedGroupKFold, so whole studies are held out and the
    folds are balanced by environment as far as whole studies allow; None when the studies cannot fill the folds."""
    n_folds = _folds(fraction)
    if len(set(studies[idx].tolist())) < n_folds:
        return None
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # A rare environment in fewer studies than folds cannot be in every fold; that is expected here.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        kept, held = next(folds.split(idx, _strata(env[idx]), groups=studies[idx]))
    return (idx[kept], idx[held]) if len(kept) and len(held) else None


def _by_study(env: np.ndarray, studies: np.ndarray, seed: int, test_fraction: float, val_fraction: float):
    n_studies = len(set(studies.tolist()))
    if n_studies < min_studies(test_fraction, val_fraction):
        raise _too_few(n_studies, test_fraction, val_fraction)
    first = _hold_out_studies(np.arange(len(env)), env, studies, test_fraction, seed)
    if first is None:
        raise _too_few(n_studies, test_fraction, val_fraction)
    idx_trainval, idx_test = first
    if val_fraction == 0:
        return idx_trainval, np.zeros(0, dtype=int), idx_test
    second = _hold_out_studies(idx_trainval, env, studies, val_fraction / (1 - test_fraction), seed)
    if second is None:  # the test fold took more studies than its share
        raise _too_few(n_studies, test_fraction, val_fraction)
    idx_train, idx_val = second
    return idx_train, idx_val, idx_test


def _by_sample(env: np.ndarray, seed: int, test_fraction: float, val_fraction: float):
    n_all = len(env)
    idx_trainval, idx_test = _stratified(np.arange(n_all), env, test_fraction, seed, "train+val : test")
    n_val = int(round(n_all * val_fraction))
    if n_val == 0:
        return idx_trainval, np.zeros(0, dtype=int), idx_test
    # A float fraction, as the published code passes it (sklearn rounds it up to a count).
    idx_train, idx_val = _stratified(idx_trainval, env[idx_trainval], n_val / len(idx_trainval), seed, "train : val")
    return idx_train, idx_val, idx_test


def split_samples(
    df: pd.DataFrame,
    *,
    seed: int = 42,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    by: str = "none",
) -> dict[str, list[str]]:
    """Train/val/test sample ids.

    by "none": the published recipe (sorted ids, environment-stratified 80:20, then val); environments with a
    single sample are stratified together, and a split too small to stratify falls back to a plain random split
    (logged). by "study": whole studies are held out for test, then for val (one fold of scikit-learn's
    StratifiedGroupKFold each, seeded, balanced by environment where whole studies allow), so no test or val
    study is seen in training; a DatasetError when there are too few studies for the fractions.
    """
    if not (0 < test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise ValueError(f"bad split fractions: test {test_fraction}, val {val_fraction}")
    if by not in SPLIT_BY:
        raise ValueError(f"unknown split_by {by!r}; allowed: {', '.join(SPLIT_BY)}")
    d = df.sort_values("sample_id", kind="stable")
    ids = d["sample_id"].astype(str).to_numpy()
    env = d["environment"].astype(str).to_numpy()
    if by == "study":
        parts = _by_study(env, d["study_name"].astype(str).to_numpy(), seed, test_fraction, val_fraction)
    else:
        parts = _by_sample(env, seed, test_fraction, val_fraction)
    return {name: [str(s) for s in ids[np.asarray(idx, dtype=int)]] for name, idx in zip(PARTS, parts)}


def split_for(df: pd.DataFrame, cfg: TrainConfig) -> dict[str, list[str]]:
    """The split a training config asks for (its split_by, split_seed and fractions)."""
    return split_samples(
        df, seed=cfg.split_seed, test_fraction=cfg.test_fraction, val_fraction=cfg.val_fraction, by=cfg.split_by
    )


@dataclass
class SplitRecord:
    """split.json: the sample ids of each part, how they were drawn and which studies each part holds.

    Files written before split_by existed hold the ids only; they read as a split by sample of unknown seed.
    """

    train: list[str]
    val: list[str]
    test: list[str]
    split_by: str = "none"
    split_seed: int | None = None
    test_fraction: float | None = None
    val_fraction: float | None = None
    studies: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def of(
        cls, split: Mapping[str, Sequence[str]], cfg: TrainConfig, study_of: Mapping[str, str] | None = None
    ) -> SplitRecord:
        """The record of a split made for cfg; study_of (sample id -> study) fills in each part's studies."""
        ids = {name: [str(s) for s in split.get(name, [])] for name in PARTS}
        studies = {name: sorted({str(study_of[s]) for s in ids[name]}) for name in PARTS} if study_of else {}
        return cls(
            **ids,
            split_by=cfg.split_by,
            split_seed=cfg.split_seed,
            test_fraction=cfg.test_fraction,
            val_fraction=cfg.val_fraction,
            studies=studies,
        )

    @classmethod
    def of_dataset(cls, dataset: TokenizedDataset, cfg: TrainConfig) -> SplitRecord:
        """The record of a tokenized dataset's split (what a training or pretraining run saves)."""
        return cls.of(dataset.split_dict(), cfg, dict(zip(dataset.sample_ids.tolist(), dataset.study_name.tolist())))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SplitRecord:
        """Read split.json's content (any version); a TypeError or ValueError when it is not a split file."""
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a JSON object, got {type(data).__name__}")
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        for name in PARTS:
            known[name] = [str(s) for s in known.get(name) or []]
        by = known.get("split_by", "none")
        if by not in SPLIT_BY:
            raise ValueError(f"unknown split_by {by!r}")
        return cls(**known)

    def ids(self) -> dict[str, list[str]]:
        """{"train"|"val"|"test": sample ids}: what split_samples returns and the caches key on."""
        return {name: list(getattr(self, name)) for name in PARTS}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.studies:
            del out["studies"]
        return out

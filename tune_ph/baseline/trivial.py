"""Trivial references: the train mean, the environment's train mean and the study's train mean of pH."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from tune_ph.baseline import members
from tune_ph.baseline.choices import REFERENCE_FEATURES, REFERENCE_NAMES
from tune_ph.baseline.members import Baseline

# name -> the columns whose train mean is predicted, most specific first (an unseen value falls back to the next).
REFERENCES: dict[str, tuple[str, ...]] = dict(
    zip(REFERENCE_NAMES, [(), ("environment",), ("study_name", "environment")])
)


def _predict(train: pd.DataFrame, df: pd.DataFrame, by: tuple[str, ...]) -> np.ndarray:
    predicted = np.full(len(df), float(train["pH"].mean()))
    for column in reversed(by):  # the most specific known mean is written last
        means = train.groupby(column)["pH"].mean()
        known = df[column].map(means)
        predicted = np.where(known.notna(), known.to_numpy(dtype=np.float64, na_value=np.nan), predicted)
    return predicted


def seen_test_studies(parts: Mapping[str, pd.DataFrame]) -> int:
    """How many test studies also have train samples (all of them in a split by sample, none by study)."""
    return len(set(parts["test"]["study_name"]) & set(parts["train"]["study_name"]))


def run_references(parts: Mapping[str, pd.DataFrame]) -> dict[str, Baseline]:
    """The trivial references on a split (members.split_frames); the study mean only when a test study was seen
    in training (it is the environment mean otherwise). Instant: never cached."""
    out = {}
    for name, by in REFERENCES.items():
        if by[:1] == ("study_name",) and not seen_test_studies(parts):
            continue
        predicted = {part: _predict(parts["train"], parts[part], by) for part in ("val", "test")}
        out[name] = members.scored(
            name, parts, predicted, features=REFERENCE_FEATURES, model=name, k=None, mean_of=list(by[:1])
        )
    return out

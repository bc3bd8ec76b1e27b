"""The synthetic demo dataset: schema, determinism, and a pH signal that needs the sequences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score

from tune_ph.data import sources
from tune_ph.data.demo import make_demo
from tune_ph.data.split import split_samples


@pytest.fixture(scope="module")
def demo() -> pd.DataFrame:
    return make_demo()


def test_schema_and_shape(demo: pd.DataFrame) -> None:
    assert list(demo.columns) == list(sources.SCHEMA)
    assert len(demo) == 300 and demo["sample_id"].is_unique
    assert demo["pH"].between(0, 14).all() and demo["pH"].notna().all()
    assert demo["environment"].nunique() >= 5
    assert demo["num_sequences"].between(20, 60).all()
    assert (demo["num_sequences"] == demo["sequences"].map(len)).all()
    assert (demo["total_DNA_length"] == demo["sequences"].map(lambda r: sum(map(len, r)))).all()
    assert (demo["Bacteria"] + demo["Archaea"] == demo["num_sequences"]).all()
    lengths = np.concatenate([[len(r) for r in reads] for reads in demo["sequences"]])
    assert lengths.min() >= 200 and lengths.max() <= 450  # 16S-amplicon-like reads
    assert set("".join(demo["sequences"].iloc[0])) <= set("ACGT")
    # It passes our own validation unchanged.
    assert len(sources.clean_samples(demo)) == 300


def test_deterministic(demo: pd.DataFrame) -> None:
    again = make_demo()
    pd.testing.assert_frame_equal(demo, again)
    other = make_demo(seed=1)
    assert not np.allclose(other["pH"], demo["pH"])
    small = make_demo(num_samples=7)
    assert len(small) == 7 and small["sample_id"].tolist() == demo["sample_id"].head(7).tolist()


def _kmer_profiles(df: pd.DataFrame, k: int) -> np.ndarray:
    table = np.full(256, 4, dtype=np.int64)
    table[list(b"ACGT")] = np.arange(4)
    rows = []
    for reads in df["sequences"]:
        codes = table[np.frombuffer("-".join(reads).encode(), dtype=np.uint8)]
        windows = np.lib.stride_tricks.sliding_window_view(codes, k)
        windows = windows[(windows < 4).all(axis=1)]  # no k-mer across two reads
        counts = np.bincount(windows @ 4 ** np.arange(k - 1, -1, -1), minlength=4**k)
        rows.append(counts / counts.sum())
    return np.array(rows)


def test_ph_is_learnable_from_sequence_not_base_counts(demo: pd.DataFrame) -> None:
    split = split_samples(demo)
    train = demo["sample_id"].isin(split["train"]).to_numpy()
    test = demo["sample_id"].isin(split["test"]).to_numpy()
    y = demo["pH"].to_numpy()

    def test_r2(k: int) -> float:
        x = _kmer_profiles(demo, k)
        model = RidgeCV(alphas=np.logspace(-4, 3, 15)).fit(x[train], y[train])
        return r2_score(y[test], model.predict(x[test]))

    # Which taxa are present (seen through 4-mers) predicts pH well; the base composition alone does not.
    assert test_r2(4) > 0.8
    assert test_r2(1) < 0.4
    assert abs(np.corrcoef(demo["total_DNA_length"] / demo["num_sequences"], y)[0, 1]) < 0.2

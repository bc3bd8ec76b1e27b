"""The synthetic demo dataset: schema, determinism, and a pH signal that needs each read's organism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import MiniBatchKMeans
from sklearn.decomposition import PCA
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
    assert (lengths == 250).all()  # denoised amplicon reads of one 16S region
    assert len(set().union(*demo["sequences"])) > 0.85 * len(lengths)  # sequencing errors: few reads repeat
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


def _kmer_profiles(reads_per_row: list[list[str]], k: int) -> np.ndarray:
    table = np.full(256, 4, dtype=np.int64)
    table[list(b"ACGT")] = np.arange(4)
    rows = []
    for reads in reads_per_row:
        codes = table[np.frombuffer("-".join(reads).encode(), dtype=np.uint8)]
        windows = np.lib.stride_tricks.sliding_window_view(codes, k)
        windows = windows[(windows < 4).all(axis=1)]  # no k-mer across two reads
        counts = np.bincount(windows @ 4 ** np.arange(k - 1, -1, -1), minlength=4**k)
        rows.append(counts / counts.sum())
    return np.array(rows)


def test_ph_needs_which_organism_each_read_comes_from(demo: pd.DataFrame) -> None:
    split = split_samples(demo)
    train = demo["sample_id"].isin(split["train"]).to_numpy()
    test = demo["sample_id"].isin(split["test"]).to_numpy()
    y = demo["pH"].to_numpy()

    def test_r2(x: np.ndarray) -> float:
        model = RidgeCV(alphas=np.logspace(-4, 3, 15)).fit(x[train], y[train])
        return r2_score(y[test], model.predict(x[test]))

    # A whole sample's k-mer counts say little: every variant of either hypervariable stretch, and every strain's
    # mutations, occur in every pH niche; nor does its base composition (and every read has the same length).
    samples = demo["sequences"].tolist()
    assert test_r2(_kmer_profiles(samples, 1)) < 0.4
    assert test_r2(_kmer_profiles(samples, 4)) < 0.6
    assert test_r2(_kmer_profiles(samples, 8)) < 0.6

    # Which combination each read carries does: reads clustered by their own 5-mer profile (OTUs fitted on the
    # train reads), each sample's share of reads per cluster.
    owner = np.repeat(np.arange(len(demo)), demo["num_sequences"].to_numpy())
    reads = _kmer_profiles([[r] for reads in samples for r in reads], 5)
    pca = PCA(32, whiten=True, random_state=0).fit(reads[train[owner]])
    z = pca.transform(reads)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    labels = MiniBatchKMeans(128, batch_size=4096, n_init=1, random_state=0).fit(z[train[owner]]).predict(z)
    shares = np.zeros((len(demo), 128))
    np.add.at(shares, (owner, labels), 1.0)
    assert test_r2(shares / shares.sum(axis=1, keepdims=True)) > 0.9

"""The streamed cluster fit: scikit-learn's whitened PCA to float error (signs included) however the rows are
chunked, read from a read-only memory map a chunk at a time, and the clusters fit on its train rows alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from tune_ph.errors import ConfigError
from tune_ph.model import streamed
from tune_ph.model.clusters import ReadClusters

pytestmark = pytest.mark.usefixtures("one_thread")


def _vectors(n: int = 3000, d: int = 24, seed: int = 0, offset: float = 3.0) -> np.ndarray:
    """Correlated float32 vectors away from the origin (a mean the covariance must not lose precision to)."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.linspace(2.0, 0.2, d)[:, None]  # distinct variances: a well-posed PCA
    return (rng.normal(size=(n, d)) @ mixing + offset).astype(np.float32)


def _read_only_map(tmp_path, array: np.ndarray) -> np.memmap:
    np.save(tmp_path / "vectors.npy", array)
    return np.load(tmp_path / "vectors.npy", mmap_mode="r")


@pytest.mark.parametrize("solver", ["full", "auto"])
def test_the_streamed_projection_is_scikit_learns_whitened_pca_signs_included(solver):
    vectors = _vectors(offset=0.5)
    center, projection = streamed.whitened_pca(vectors, 8, chunk=1000)
    assert center.dtype == projection.dtype == np.float32 and projection.shape == (24, 8)
    pca = PCA(8, whiten=True, svd_solver=solver, random_state=0).fit(vectors)
    expected = pca.transform(vectors)
    np.testing.assert_allclose((vectors - center) @ projection, expected, atol=1e-4)
    np.testing.assert_allclose(center, pca.mean_, atol=1e-5)


def test_a_large_mean_costs_no_precision():
    """Far from the origin scikit-learn's float32 covariance loses digits; the float64 sums about a first row do
    not: still the exact (full SVD) PCA."""
    vectors = _vectors(offset=50.0)
    center, projection = streamed.whitened_pca(vectors, 8)
    expected = PCA(8, whiten=True, svd_solver="full").fit(vectors).transform(vectors)
    np.testing.assert_allclose((vectors - center) @ projection, expected, atol=2e-4)


def test_chunks_of_any_size_give_the_one_chunk_result():
    vectors = _vectors(n=1000)
    rows = np.random.default_rng(1).permutation(1000)[:700]
    whole = streamed.whitened_pca(vectors, 6, rows, chunk=10**6)
    for chunk in (1, 7, 699):
        parts = streamed.whitened_pca(vectors, 6, rows, chunk=chunk)
        np.testing.assert_allclose(parts[0], whole[0], atol=1e-5)
        np.testing.assert_allclose(parts[1], whole[1], rtol=1e-4, atol=1e-5)
    chunks = list(streamed.row_chunks(vectors, rows, chunk=64))
    assert [len(c) for c in chunks] == [64] * 10 + [60]
    np.testing.assert_array_equal(np.concatenate(chunks), vectors[rows])


def test_a_read_only_memory_map_is_read_a_chunk_at_a_time(tmp_path):
    vectors = _vectors(n=500)
    mapped = _read_only_map(tmp_path, vectors)
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    rows = np.arange(0, 500, 3)
    chunks = list(streamed.row_chunks(mapped, rows, chunk=50))
    assert all(c.flags.writeable and not isinstance(c, np.memmap) for c in chunks)  # copies, not views of the map
    np.testing.assert_array_equal(np.concatenate(chunks), vectors[rows])
    np.testing.assert_array_equal(np.concatenate(list(streamed.row_chunks(mapped, chunk=64))), vectors)
    center, projection = streamed.whitened_pca(mapped, 5, rows, chunk=50)
    expected = PCA(5, whiten=True, svd_solver="full").fit(vectors[rows]).transform(vectors[rows])
    np.testing.assert_allclose((vectors[rows] - center) @ projection, expected, atol=1e-4)


def test_the_clusters_fit_on_a_map_and_its_train_rows_is_the_fit_on_those_rows(tmp_path):
    vectors = _vectors(n=600, d=16, seed=2)
    rows = np.sort(np.random.default_rng(3).permutation(600)[:400])
    clusters = ReadClusters(16, n_clusters=8, dims=4, levels=2)
    on_map = clusters.fit_arrays(_read_only_map(tmp_path, vectors), seed=0, rows=rows)
    on_copy = clusters.fit_arrays(torch.from_numpy(vectors[rows]), seed=0)
    assert {k: v.shape for k, v in on_map.items()} == {"center": (16,), "projection": (16, 4), "centroids": (10, 4)}
    for name in ("center", "projection", "centroids"):
        np.testing.assert_allclose(on_map[name], on_copy[name], atol=1e-5)


def test_too_few_train_reads_for_the_clusters_is_a_config_error(tmp_path):
    clusters = ReadClusters(16, n_clusters=8, dims=4)
    mapped = _read_only_map(tmp_path, _vectors(n=100, d=16))
    with pytest.raises(ConfigError, match="8 clusters need at least as many train read sets, got 5"):
        clusters.fit_arrays(mapped, seed=0, rows=np.arange(5))  # 100 vectors, 5 of them train reads
    with pytest.raises(ConfigError, match="got 7"):
        clusters.fit(torch.from_numpy(_vectors(n=7, d=16)), seed=0)


def test_directions_without_variance_are_dropped_not_blown_up():
    """Fewer distinct reads than dims: the directions beyond them have no variance; whitening would divide float
    rounding by ~0 and let it dominate the normalised vectors. They get zero columns instead."""
    base = _vectors(n=3, d=16)
    vectors = np.repeat(base, 50, axis=0)  # rank 2 after centring
    center, projection = streamed.whitened_pca(vectors, 4)
    assert np.isfinite(projection).all()
    assert np.count_nonzero(np.abs(projection).sum(axis=0) > 0) == 2
    clusters = ReadClusters(16, n_clusters=3, dims=4)
    clusters.fit(torch.from_numpy(vectors), seed=0)
    labels = clusters.assign(torch.from_numpy(base))[:, 0]
    assert len(set(labels.tolist())) == 3  # the three distinct reads, three clusters

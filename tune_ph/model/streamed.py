"""Rows of a memory-mapped array streamed a chunk at a time (its pages dropped after each), and scikit-learn's
whitened PCA accumulated over them: memory holds one chunk and a (width x width) covariance, never all the rows."""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import numpy as np

CHUNK_ROWS = 65_536  # 32 MiB of float32 vectors of width 128: small beside 10^6 reads, large enough for BLAS
_NO_VARIANCE = 1e-10  # variance below this fraction of the largest is float32 rounding, not a direction of the data


def release_pages(array: np.ndarray) -> None:
    """Drop a memory-mapped array's pages from this process's resident set (they stay in the page cache, written
    back by the kernel): writing or reading 10^6 reads' vectors through a map then never holds them all."""
    mapped = getattr(array, "_mmap", None) or getattr(getattr(array, "base", None), "_mmap", None)
    if mapped is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapped.madvise(mmap.MADV_DONTNEED)


def row_chunks(array: np.ndarray, rows: np.ndarray | None = None, chunk: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
    """array's rows (those of ``rows``, in that order; all, if None) as float32 copies of at most ``chunk`` rows.
    A memory-mapped array's pages are dropped after each chunk: a pass over 10^6 reads never keeps them all."""
    total = len(array) if rows is None else len(rows)
    for start in range(0, total, chunk):
        if rows is None:  # a copy, also of a float32 slice: it outlives the dropped pages
            out = np.array(array[start : start + chunk], dtype=np.float32)
        else:  # indexing by rows copies already
            out = np.asarray(array[np.asarray(rows[start : start + chunk])], dtype=np.float32)
        release_pages(array)
        yield out


def whitened_pca(
    array: np.ndarray, dims: int, rows: np.ndarray | None = None, chunk: int = CHUNK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """The mean (width,) and whitening projection (width, dims) of the rows, both float32: (x - mean) @ projection
    is ``sklearn.decomposition.PCA(dims, whiten=True).fit(rows).transform(x)`` to float error, signs included.

    One pass accumulates the sum and the Gram matrix in float64 (about a first row, so a large mean cancels
    nothing), then the covariance's eigenvectors are the components, as scikit-learn's covariance_eigh solver
    does: with the same ddof=1 variances and the same sign rule (each component's largest entry positive,
    svd_flip(u_based_decision=False)). A component without variance (fewer distinct rows than dims) gets a zero
    column instead of a division by ~0, which would let float rounding dominate the normalised vectors.
    """
    width = array.shape[1]
    count, shift = 0, None
    total = np.zeros(width)
    gram = np.zeros((width, width))
    for part in row_chunks(array, rows, chunk):
        values = part.astype(np.float64)
        if shift is None:
            shift = values[0].copy()
        values -= shift
        count += len(values)
        total += values.sum(axis=0)
        gram += values.T @ values
    if count < 2:
        raise ValueError(f"a PCA needs at least 2 rows, got {count}")
    mean = total / count
    covariance = (gram - count * np.outer(mean, mean)) / (count - 1)
    variances, vectors = np.linalg.eigh(covariance)
    variances, components = np.clip(variances[::-1][:dims], 0.0, None), vectors[:, ::-1][:, :dims].T
    largest = np.argmax(np.abs(components), axis=1)
    components *= np.sign(components[np.arange(len(components)), largest])[:, None]
    kept = variances > _NO_VARIANCE * max(variances[0], np.finfo(np.float64).tiny)
    scale = np.divide(1.0, np.sqrt(variances), out=np.zeros_like(variances), where=kept)
    return (mean + shift).astype(np.float32), (components.T * scale).astype(np.float32)

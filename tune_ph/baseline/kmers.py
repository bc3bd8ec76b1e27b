"""k-mer profiles of reads: counts and relative frequencies per sample, vectorised and memory-bounded."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import sparse
from tqdm.auto import tqdm

from tune_ph.baseline.choices import check_k
from tune_ph.progress import bar_disable

log = logging.getLogger(__name__)


# Byte → base code (A=0, C=1, G=2, T=3); anything else, the read separator included, is invalid (255).
# Case-insensitive and U = T, as the HyenaDNA tokenizer reads reads; IUPAC codes such as N are invalid here.
_INVALID = 255
_SEP = b"\n"
_CODE = np.full(256, _INVALID, dtype=np.uint8)
for _i, _bases in enumerate(("Aa", "Cc", "Gg", "TtUu")):
    for _b in _bases:
        _CODE[ord(_b)] = _i
# Profiling works on chunks of at most this many bases (~20 bytes of temporaries each) and samples x 4^k count
# cells (8 bytes each), so memory stays bounded at any dataset size and k.
_CHUNK_BASES = 4_000_000
_CHUNK_CELLS = 8_000_000
# A progress bar only pays off on slow profiling: ~38 M bases/s was measured at k <= 6 (half that at k = 8) on one
# core, so 40 M bases is about 1-2 s (realistic16s, 50 M bases, shows one).
_PROGRESS_MIN_BASES = 40_000_000


def kmer_names(k: int) -> list[str]:
    """The k-mers in profile column order (lexicographic: column j is j written in base 4 with digits ACGT)."""
    k = check_k(k)
    digits = (np.arange(4**k)[:, None] // 4 ** np.arange(k - 1, -1, -1)) % 4
    return ["".join("ACGT"[d] for d in row) for row in digits]


Weights = Sequence[Sequence[float]] | None  # per sample, the reads each of its sequences stands for (None: 1 each)


def _window_weights(samples: Sequence[Sequence[str]], weights: Sequence[Sequence[float]]) -> np.ndarray:
    """The weight of every byte of the joined samples (each read's, its separator included)."""
    lengths = [len(r.encode("latin-1", "replace")) + 1 for reads in samples for r in reads]
    flat = np.fromiter((w for ws in weights for w in ws), dtype=np.float64, count=len(lengths))
    return np.repeat(flat, lengths)


def _chunk_keys(
    samples: Sequence[Sequence[str]], k: int, weights: Weights = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """sample * 4^k + k-mer index of every valid k-mer of a few samples, in one vectorised pass, and each one's
    weight (its read's; None without weights)."""
    n_kmers = 4**k
    # Every read ends with the separator (an invalid byte), so no window crosses a read or sample boundary.
    pieces = [
        (_SEP.join(r.encode("latin-1", "replace") for r in reads) + _SEP) if len(reads) else b"" for reads in samples
    ]
    lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
    codes = _CODE[np.frombuffer(b"".join(pieces), dtype=np.uint8)]
    n_windows = len(codes) - k + 1
    if n_windows <= 0:
        return np.zeros(0, dtype=np.int64), None if weights is None else np.zeros(0)
    # A window is valid when it holds no invalid byte: a difference of the running count of invalid bytes.
    bad = np.concatenate(([0], np.cumsum(codes == _INVALID, dtype=np.int32)))
    valid = bad[k:] == bad[:-k]
    # Rolling base-4 number of each window (first base most significant); invalid bytes give garbage that is masked.
    index = np.zeros(n_windows, dtype=np.int64)
    for j in range(k):
        index *= 4
        index += codes[j : j + n_windows] & 3
    sample_of = np.repeat(np.arange(len(samples), dtype=np.int64), lengths)[:n_windows]
    keys = sample_of[valid] * n_kmers + index[valid]
    return keys, None if weights is None else _window_weights(samples, weights)[:n_windows][valid]


def _chunk_counts(samples: Sequence[Sequence[str]], k: int, weights: Weights = None) -> np.ndarray:
    """k-mer counts (int64, or float64 weighted, len(samples) x 4^k) of a few samples."""
    n_kmers = 4**k
    keys, w = _chunk_keys(samples, k, weights)
    return np.bincount(keys, weights=w, minlength=len(samples) * n_kmers).reshape(len(samples), n_kmers)


def _chunk_sparse(samples: Sequence[Sequence[str]], k: int, weights: Weights = None) -> sparse.csr_matrix:
    """Relative k-mer frequencies (float32 CSR, len(samples) x 4^k) of a few samples: only k-mers present."""
    n_kmers = 4**k
    all_keys, w = _chunk_keys(samples, k, weights)
    keys, inverse, counts = np.unique(all_keys, return_inverse=True, return_counts=True)
    if w is not None:
        counts = np.bincount(inverse.ravel(), weights=w, minlength=len(keys))
    rows = keys // n_kmers
    totals = np.bincount(rows, weights=counts, minlength=len(samples))
    values = (counts / totals[rows]).astype(np.float32)
    return sparse.csr_matrix((values, (rows, keys % n_kmers)), shape=(len(samples), n_kmers))


def kmer_counts(reads: Sequence[str], k: int) -> np.ndarray:
    """Counts (int64, 4^k) of every k-mer over all reads of one sample; k-mers with a non-ACGT base are skipped."""
    return _chunk_counts([reads], check_k(k))[0]


def _chunks(sizes: np.ndarray, n_kmers: int) -> list[tuple[int, int]]:
    """[start, end) sample ranges within _CHUNK_BASES bases and _CHUNK_CELLS count cells (at least one sample)."""
    max_samples = max(1, _CHUNK_CELLS // n_kmers)
    ranges, start, bases = [], 0, 0
    for i, size in enumerate(sizes.tolist()):
        if i > start and (bases + size > _CHUNK_BASES or i - start >= max_samples):
            ranges.append((start, i))
            start, bases = i, 0
        bases += size
    if start < len(sizes):
        ranges.append((start, len(sizes)))
    return ranges


def kmer_profiles(
    sequences: Sequence[Sequence[str]],
    k: int,
    *,
    progress: bool | None = None,
    sparse_rows: bool = False,
    weights: Weights = None,
) -> np.ndarray | sparse.csr_matrix:
    """Relative k-mer frequencies (float32, n_samples x 4^k) pooled over all reads of each sample.

    weights: per sample, the reads each of its sequences stands for (a feature table's counts): a sequence counted
    90 times adds its k-mers 90 times, without being repeated. Rows sum to 1; a sample without any valid k-mer (all
    reads shorter than k or ambiguous) gets a zero row and a warning. ``progress=None`` shows a bar only on datasets
    large enough to take a few seconds, and any bar only on a terminal (a log gets the caller's one line).
    sparse_rows: a scipy CSR matrix holding only the k-mers present (k=8: ~8 % of 65,536 on 16S reads, a tenth of
    the memory).
    """
    k = check_k(k)
    sizes = np.fromiter(
        (sum(map(len, reads)) + len(reads) for reads in sequences), dtype=np.int64, count=len(sequences)
    )
    out = None if sparse_rows else np.zeros((len(sequences), 4**k), dtype=np.float32)
    blocks = []
    show = bool(sizes.sum() >= _PROGRESS_MIN_BASES) if progress is None else progress
    with tqdm(total=len(sequences), desc=f"{k}-mer profiles", unit="sample", disable=bar_disable(show)) as bar:
        # Sparse blocks hold no dense count cells, so only the bases bound a chunk.
        for a, b in _chunks(sizes, 1 if sparse_rows else 4**k):
            part = None if weights is None else weights[a:b]
            if out is None:
                blocks.append(_chunk_sparse(sequences[a:b], k, part))
            else:
                counts = _chunk_counts(sequences[a:b], k, part)
                totals = counts.sum(axis=1, keepdims=True)
                out[a:b] = counts / np.maximum(totals, 1)
            bar.update(b - a)
    if out is None:
        out = sparse.vstack(blocks, format="csr") if blocks else sparse.csr_matrix((0, 4**k), dtype=np.float32)
    empty = np.asarray(out.sum(axis=1)).ravel() == 0 if sparse_rows else ~out.any(axis=1)
    if empty.any():
        log.warning(
            "%d sample(s) have no valid %d-mer (reads shorter than k or ambiguous); their profile is all zero",
            int(empty.sum()),
            k,
        )
    return out

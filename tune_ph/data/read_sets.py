"""A sample's reads -> read sets: whole reads packed in order, joined by [SEP], within max_length tokens (a feature
table's distinct sequences: one set each, weighted by its count)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from hyena_dna import tokenizer


def pack_sets(read_lengths: Sequence[int], max_length: int, max_sets: int | None = None) -> list[list[int]]:
    """Group reads (by index, in order) into at most ``max_sets`` (None or 0: any number) non-overlapping sets.

    A set holds consecutive reads joined by one [SEP] and fits ``max_length``; a read longer than
    ``max_length`` forms a set on its own (``encode_set`` keeps its end).
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    max_sets = max_sets or len(read_lengths)
    sets: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, n in enumerate(read_lengths):
        if len(sets) >= max_sets:
            break
        if n <= 0:
            continue
        extra = n + (1 if current else 0)
        if current and used + extra <= max_length:
            current.append(i)
            used += extra
            continue
        if current:
            sets.append(current)
            if len(sets) >= max_sets:
                break
        current, used = [i], n
        if n >= max_length:  # nothing else fits beside it
            sets.append(current)
            current, used = [], 0
    if current and len(sets) < max_sets:
        sets.append(current)
    return sets


def sample_sets(
    reads: Sequence[str], max_length: int, max_sets: int | None = None, counts: Sequence[int] | None = None
) -> tuple[list[list[int]], list[float]]:
    """(read sets, the weight of each) of one sample: without counts, reads packed by ``pack_sets`` (weight 1); with
    counts (a feature table's distinct sequences, most abundant first), each sequence a set of its own weighted by
    its count: embedded once, never repeated as reads."""
    if counts is None:
        sets = pack_sets([len(r) for r in reads], max_length, max_sets)
        return sets, [1.0] * len(sets)
    chosen = [i for i in range(len(reads)) if len(reads[i]) > 0][: max_sets or None]
    return [[i] for i in chosen], [float(counts[i]) for i in chosen]


def encode_set(reads: Sequence[str], max_length: int, name: str | None = None) -> np.ndarray:
    """Token ids (uint8) of reads joined with one [SEP] each, truncated to ``max_length`` keeping the end."""
    # One encode call over the concatenation, then [SEP] inserted at the read boundaries: many times
    # faster than encoding read by read for long sets.
    if not reads:
        return np.zeros(0, dtype=np.uint8)
    ids = tokenizer.encode("".join(reads), name=name)
    boundaries = np.cumsum([len(r) for r in reads[:-1]], dtype=np.int64)
    ids = np.insert(ids, boundaries, np.uint8(tokenizer.SEP_ID))
    return tokenizer.truncate(ids, max_length)


def longest_sample(df: pd.DataFrame) -> int:
    """Tokens of the longest sample with all its reads joined by [SEP] (a context beyond it is only padding); with
    counts, the longest sequence (each is a set of its own)."""
    if "counts" in df.columns:
        return max((len(r) for reads in df["sequences"] for r in reads), default=0)
    return max((sum(map(len, reads)) + max(len(reads) - 1, 0) for reads in df["sequences"]), default=0)

"""Read sets and token arrays: pack each sample's reads into sets, tokenize once, cache, and batch by set or sample."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch

from hyena_dna import tokenizer
from tune_ph import files
from tune_ph.config import MIN_MAX_LENGTH
from tune_ph.data import read_sets, token_cache
from tune_ph.progress import Progress

log = logging.getLogger(__name__)

SPLITS = files.SPLITS
# Bump when the packing rule changes, so stale caches are never reused (it is part of every dataset fingerprint).
CACHE_FORMAT = 2
# The cache file's own layout (its name's -v part): 3 added the content hash checked on every read, 4 the set weights.
ENTRY_FORMAT = 4
HASH_KEY = "content_hash"
# Samples whose tokens are rebuilt and compared on every cache hit (a poisoned entry cannot know which).
_SPOT_CHECKS = 3
# Progress bars only pay off on datasets that take a noticeable time to tokenize.
_PROGRESS_MIN_SAMPLES = 500


@dataclass
class Batch:
    """One batch of read sets, left-padded to the run's fixed max_length."""

    input_ids: torch.Tensor  # int64 (B, max_length)
    mask: torch.Tensor  # bool (B, max_length), True on real tokens
    ph: torch.Tensor  # float32 (B,)
    set_index: torch.Tensor  # int64 (B,), index into the dataset's sets
    sample_index: torch.Tensor  # int64 (B,), index into the dataset's samples

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class SetChoice:
    """Which sets make up one batch of samples (indices only: the same choice serves tokens and cached vectors)."""

    sample_index: np.ndarray  # int64 (B,)
    set_index: np.ndarray  # int64 (S,)
    owner: np.ndarray  # int64 (S,), 0..B-1


@dataclass
class TokenizedDataset:
    """All read sets of a dataset as flat numpy arrays (picklable, cheap to share between processes)."""

    ids: np.ndarray  # uint8 (total_tokens,)
    offsets: np.ndarray  # int64 (n_sets + 1,)
    set_sample: np.ndarray  # int32 (n_sets,), index into the per-sample arrays
    sample_ids: np.ndarray  # str (n_samples,)
    study_name: np.ndarray  # str (n_samples,)
    environment: np.ndarray  # str (n_samples,)
    ph: np.ndarray  # float32 (n_samples,)
    split: np.ndarray  # str (n_samples,): "train" / "val" / "test" ("" = in no split)
    max_length: int
    max_sets: int  # 0: as many sets as a sample's reads fill
    fingerprint: str
    # float32 (n_sets,): the reads a set stands for where a sample's sets are pooled (a feature table's counts);
    # None: 1 for every set (lists of reads).
    set_weight: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.set_weight is None:
            self.set_weight = np.ones(len(self.set_sample), dtype=np.float32)
        self._weighted = bool(np.any(self.set_weight != 1))

    def weights_of(self, set_index: np.ndarray) -> torch.Tensor | None:
        """The weights (float32) of some sets where a sample's sets are pooled; None when every set weighs 1 (lists
        of reads), so that their arithmetic stays exactly unweighted."""
        return torch.from_numpy(self.set_weight[set_index]) if self._weighted else None

    @property
    def num_samples(self) -> int:
        return len(self.sample_ids)

    def __len__(self) -> int:
        """Number of read sets."""
        return len(self.set_sample)

    def __repr__(self) -> str:
        counts = ", ".join(
            f"{name}={int((self.split == name).sum())} samples/{len(self.set_indices(name))} sets" for name in SPLITS
        )
        return (
            f"TokenizedDataset({self.num_samples} samples, {len(self)} sets, {len(self.ids):,} tokens, "
            f"max_length={self.max_length}, max_sets={self.max_sets}; {counts}; fingerprint={self.fingerprint[:12]})"
        )

    def set_tokens(self, set_index: int) -> np.ndarray:
        """Token ids (uint8) of one set, without padding."""
        return self.ids[self.offsets[set_index] : self.offsets[set_index + 1]]

    def set_lengths(self) -> np.ndarray:
        """Number of real tokens of every set."""
        return np.diff(self.offsets)

    def set_ranks(self) -> np.ndarray:
        """0-based position of each set within its sample (set 1..N of a sample in reports)."""
        if len(self.set_sample) == 0:
            return np.zeros(0, dtype=np.int64)
        # Sets of one sample are contiguous, so the rank is the distance to the sample's first set.
        starts = np.flatnonzero(np.r_[True, self.set_sample[1:] != self.set_sample[:-1]])
        run_lengths = np.diff(np.r_[starts, len(self.set_sample)])
        return np.arange(len(self.set_sample)) - np.repeat(starts, run_lengths)

    def set_indices(self, split_name: str) -> np.ndarray:
        """Indices (int64) of the sets whose sample is in ``split_name`` ("train", "val", "test" or "all")."""
        if split_name == "all":
            return np.arange(len(self.set_sample), dtype=np.int64)
        if split_name not in SPLITS:
            raise ValueError(f"unknown split {split_name!r}; use one of {', '.join(SPLITS)} or 'all'")
        in_split = self.split == split_name
        return np.flatnonzero(in_split[self.set_sample]).astype(np.int64)

    def sample_sets(self) -> tuple[np.ndarray, np.ndarray]:
        """(first set, number of sets) of every sample: a sample's sets are contiguous."""
        counts = np.bincount(self.set_sample, minlength=self.num_samples).astype(np.int64)
        starts = np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64)
        return starts, counts

    def sample_indices(self, split_name: str) -> np.ndarray:
        """Indices (int64) of the samples in ``split_name`` ("train", "val", "test" or "all")."""
        if split_name == "all":
            return np.arange(self.num_samples, dtype=np.int64)
        if split_name not in SPLITS:
            raise ValueError(f"unknown split {split_name!r}; use one of {', '.join(SPLITS)} or 'all'")
        return np.flatnonzero(self.split == split_name).astype(np.int64)

    def num_sample_batches(self, split_name: str, batch_size: int) -> int:
        """Number of batches of samples ``choose_sets`` yields for this split."""
        return -(-len(self.sample_indices(split_name)) // batch_size)

    def choose_sets(
        self,
        split_name: str,
        batch_size: int,
        *,
        sets_per_step: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
    ) -> Iterator[SetChoice]:
        """Batches of ``batch_size`` samples with the sets each contributes.

        sets_per_step: draw that many of a sample's sets at random, without replacement (fresh reads every epoch
        when the seed changes); None: all its sets, in order (evaluation). Deterministic given ``seed``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rng = np.random.default_rng(seed)
        order = self.sample_indices(split_name)
        if shuffle:
            order = rng.permutation(order)
        starts, counts = self.sample_sets()
        for first in range(0, len(order), batch_size):
            chosen = order[first : first + batch_size]
            parts = []
            for s in chosen:
                n = int(counts[s])
                if sets_per_step is None or n <= sets_per_step:
                    picked = np.arange(n)
                else:
                    picked = np.sort(rng.choice(n, size=sets_per_step, replace=False))
                parts.append(starts[s] + picked)
            sizes = [len(p) for p in parts]
            yield SetChoice(
                sample_index=chosen.astype(np.int64),
                set_index=np.concatenate(parts).astype(np.int64),
                owner=np.repeat(np.arange(len(chosen), dtype=np.int64), sizes),
            )

    def tokens_of(self, set_index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids int64 (S, max_length), mask bool) of some sets, left-padded with [PAD]."""
        length = self.max_length
        ids = np.full((len(set_index), length), tokenizer.PAD_ID, dtype=np.int64)
        mask = np.zeros((len(set_index), length), dtype=bool)
        for row, s in enumerate(set_index):
            seq = self.set_tokens(int(s))
            ids[row, length - len(seq) :] = seq
            mask[row, length - len(seq) :] = True
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def num_batches(self, split_name: str, batch_size: int) -> int:
        """Number of batches ``batches`` yields for this split (the last one may be smaller)."""
        return -(-len(self.set_indices(split_name)) // batch_size)

    def batches(self, split_name: str, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> Iterator[Batch]:
        """Batches of a split, left-padded with [PAD] to exactly ``max_length``; deterministic given ``seed``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = self.set_indices(split_name)
        if shuffle:
            order = np.random.default_rng(seed).permutation(order)
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            ids, mask = self.tokens_of(chosen)
            samples = self.set_sample[chosen].astype(np.int64)
            yield Batch(
                input_ids=ids,
                mask=mask,
                ph=torch.from_numpy(self.ph[samples].astype(np.float32)),
                set_index=torch.from_numpy(chosen.astype(np.int64)),
                sample_index=torch.from_numpy(samples),
            )

    def split_dict(self) -> dict[str, list[str]]:
        """The sample ids of each split (what a run saves as split.json)."""
        return {name: [str(s) for s in self.sample_ids[self.split == name]] for name in SPLITS}

    def arrays(self) -> dict[str, np.ndarray]:
        """The fields as arrays, strings as fixed-width unicode (loadable without pickle)."""
        arrays = {f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}
        for name in ("sample_ids", "study_name", "environment", "split", "fingerprint"):
            arrays[name] = arrays[name].astype(str)
        return arrays

    def save(self, path: str | os.PathLike) -> None:
        """Write the arrays and their content hash to one .npz file atomically (no pickled objects)."""
        path = Path(path)
        arrays = self.arrays()
        arrays[HASH_KEY] = np.array(files.content_hash(arrays, path.name))
        files.save_npz(path, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, *, max_bytes: int | None = None) -> TokenizedDataset:
        """Read a dataset written by ``save``: member sizes checked before reading (files.load_npz; at most
        ``max_bytes``, default the file's size), then the content hash. ValueError names a damaged entry."""
        path = Path(path)
        limit = path.stat().st_size + (1 << 20) if max_bytes is None else max_bytes
        arrays = files.load_npz(path, max_bytes=limit, what="token cache entry")
        saved = str(arrays.pop(HASH_KEY, ""))
        if saved != files.content_hash(arrays, path.name):
            raise ValueError(f"{path}: its content does not match its hash (changed since it was written)")
        try:
            values = {f.name: arrays[f.name] for f in fields(cls)}
            values["max_length"] = int(values["max_length"])
            values["max_sets"] = int(values["max_sets"])
            values["fingerprint"] = str(values["fingerprint"])
            if values["set_weight"].shape != values["set_sample"].shape:
                raise ValueError(f"{path}: its set weights do not match its sets")
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a token cache entry ({err})") from None
        return cls(**values)


def fingerprint(df: pd.DataFrame) -> str:
    """A content hash of the cleaned samples (sample_id, pH, environment, study_name, sequences)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"tune_ph-samples-v{CACHE_FORMAT}\n".encode())
    ph = df["pH"].to_numpy(dtype=np.float64)
    h.update(np.ascontiguousarray(ph).tobytes())
    for col in ("sample_id", "study_name", "environment"):
        h.update("\x1f".join(map(str, df[col].tolist())).encode("utf-8", "surrogatepass"))
        h.update(b"\x1e")
    for reads in df["sequences"]:
        h.update(str(len(reads)).encode())
        h.update("\x1f".join(reads).encode("latin-1", "replace"))
        h.update(b"\x1e")
    if "counts" in df.columns:  # only then: lists of reads keep the fingerprints their checkpoints recorded
        h.update(b"counts\x1e")
        for counts in df["counts"]:
            h.update(np.asarray(counts, dtype=np.int64).tobytes())
            h.update(b"\x1e")
    return h.hexdigest()


def split_hash(split: Mapping[str, Sequence[str]]) -> str:
    """A short hash of the train/val/test sample ids (order-free): part of every cache key."""
    payload = json.dumps({k: sorted(map(str, split.get(k, []))) for k in SPLITS}, sort_keys=True)
    return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()


def effective_length(df: pd.DataFrame, model_max_length: int) -> int:
    """The max_length a dataset is tokenized with when none is given: the model's maximum, capped by the longest
    sample (a long-context model then sees whole samples without tokens of padding beyond them)."""
    return max(min(model_max_length, read_sets.longest_sample(df)), MIN_MAX_LENGTH)


Settings = TypeVar("Settings", bound=Any)  # a settings dataclass with a max_length field (TrainConfig, PretrainConfig)


def resolved_config(cfg: Settings, dataset: TokenizedDataset) -> Settings:
    """cfg with the max_length its data was prepared with, the effective one (cfg's None: the model's maximum,
    capped by the longest sample): the one place a run's settings get it; nobody writes it back."""
    return replace(cfg, max_length=int(dataset.max_length))


def tokenize(
    df: pd.DataFrame, split: Mapping[str, Sequence[str]], *, max_length: int, max_sets: int | None, fp: str
) -> TokenizedDataset:
    """Pack and tokenize every sample (no cache): the slow step that ``build`` skips on a cache hit."""
    which = {str(sid): name for name in SPLITS for sid in split.get(name, [])}
    chunks: list[np.ndarray] = []
    lengths: list[int] = []
    set_sample: list[int] = []
    weights: list[float] = []
    keep_rows: list[int] = []
    no_reads: list[str] = []
    all_counts = df["counts"].tolist() if "counts" in df.columns else [None] * len(df)
    rows = zip(df["sample_id"].tolist(), df["sequences"].tolist(), all_counts)
    progress = Progress(
        len(df), "tokenizing", mode="auto" if len(df) >= _PROGRESS_MIN_SAMPLES else "off", unit="samples"
    )
    try:
        for row, (sid, reads, counts) in enumerate(progress.counted(rows)):
            sid = str(sid)
            reads, counts = _nonempty(reads, counts)
            sets, set_weights = read_sets.sample_sets(reads, max_length, max_sets, counts)
            weights += set_weights
            if not sets:
                no_reads.append(sid)
                continue
            sample_pos = len(keep_rows)
            keep_rows.append(row)
            for members in sets:
                ids = read_sets.encode_set([reads[i] for i in members], max_length, name=sid)
                chunks.append(ids)
                lengths.append(len(ids))
                set_sample.append(sample_pos)
    finally:
        progress.close()
    if no_reads:
        log.warning("%d sample(s) have no reads and yield no sets, e.g. %s", len(no_reads), ", ".join(no_reads[:5]))
    kept = df.iloc[keep_rows]
    sample_ids = kept["sample_id"].astype(str).to_numpy().astype(str)
    return TokenizedDataset(
        ids=np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint8),
        offsets=np.r_[0, np.cumsum(lengths, dtype=np.int64)].astype(np.int64),
        set_sample=np.asarray(set_sample, dtype=np.int32),
        sample_ids=sample_ids,
        study_name=kept["study_name"].astype(str).to_numpy().astype(str),
        environment=kept["environment"].astype(str).to_numpy().astype(str),
        ph=kept["pH"].to_numpy(dtype=np.float32),
        split=np.array([which.get(s, "") for s in sample_ids], dtype=str)
        if len(sample_ids)
        else np.zeros(0, dtype="<U5"),
        max_length=int(max_length),
        max_sets=int(max_sets or 0),
        fingerprint=fp,
        set_weight=np.asarray(weights, dtype=np.float32),
    )


def _nonempty(reads: Sequence[str], counts: Sequence[int] | None) -> tuple[list[str], list[int] | None]:
    """A sample's non-empty reads (and their counts, when it has counts)."""
    if counts is None:
        return [r for r in reads if r], None
    pairs = [(r, int(c)) for r, c in zip(reads, counts) if r]
    return [r for r, _ in pairs], [c for _, c in pairs]


def build(
    df: pd.DataFrame,
    split: Mapping[str, Sequence[str]],
    *,
    max_length: int,
    max_sets: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> TokenizedDataset:
    """Tokenized read sets of cleaned samples, read from / written to an on-disk cache keyed by content.

    The cache is capped ($TUNE_PH_CACHE_MAX_GB, default 5 GiB): after a write, least recently used entries go.
    """
    if max_length < 1 or (max_sets is not None and max_sets < 0):
        raise ValueError(f"max_length must be >= 1 and max_sets >= 0, got {max_length} and {max_sets}")
    if not use_cache:
        return tokenize(df, split, max_length=max_length, max_sets=max_sets, fp=fingerprint(df))
    limit = token_cache.max_bytes()  # a bad setting fails before minutes of tokenizing
    fp = fingerprint(df)
    folder = token_cache.cache_folder(cache_dir)
    path = folder / f"{fp}-L{max_length}-n{max_sets or 0}-s{split_hash(split)}-v{ENTRY_FORMAT}.npz"
    if path.exists():
        try:
            ds = TokenizedDataset.load(path, max_bytes=_entry_cap(df))
            _check_against(ds, df, split, max_length=max_length, max_sets=max_sets, fp=fp, path=path)
            token_cache.touch(path)
            log.info("token cache hit: %s", path)
            return ds
        except (OSError, ValueError, KeyError) as exc:  # a damaged or tampered entry is rebuilt, not fatal
            reason = str(exc).removeprefix(f"{path}: ")[:300]
            log.warning("ignoring unreadable token cache %s (%s); rebuilding it", path, reason)
    ds = tokenize(df, split, max_length=max_length, max_sets=max_sets, fp=fp)
    try:
        ds.save(path)
        log.info("token cache written: %s", path)
    except OSError as exc:  # a read-only cache folder should not stop training
        log.warning("could not write the token cache %s (%s); set TUNE_PH_CACHE to a writable folder", path, exc)
        return ds
    token_cache.enforce_cap(folder, limit, keep=path)
    return ds


def _entry_cap(df: pd.DataFrame) -> int:
    """The most bytes a cache entry of these samples can hold: a token per base and separator, the per-set and
    per-sample arrays (unicode: 4 bytes a character), with room to spare. A larger entry is not theirs."""
    reads = sum(len(r) for r in df["sequences"])
    bases = sum(len(x) for r in df["sequences"] for x in r) + 4 * reads  # + a float32 weight per set
    text = sum(int(df[c].astype(str).str.len().max() or 0) if len(df) else 0 for c in ("sample_id", "study_name"))
    text += int(df["environment"].astype(str).str.len().max() or 0) if len(df) else 0
    return 2 * (bases + reads + 16 * (reads + 1) + len(df) * (4 * (text + 5) + 8)) + (1 << 20)


def _check_against(
    ds: TokenizedDataset,
    df: pd.DataFrame,
    split: Mapping[str, Sequence[str]],
    *,
    max_length: int,
    max_sets: int | None,
    fp: str,
    path: Path,
) -> None:
    """Raise ValueError when a cache entry disagrees with the samples it claims to hold: their ids, labels,
    studies, environments and split, all compared, and the tokens of a few samples chosen at random, rebuilt."""
    if (ds.fingerprint, ds.max_length, ds.max_sets) != (fp, max_length, max_sets or 0):
        raise ValueError("its fingerprint or settings are not those of its name")
    rows = df.assign(sample_id=df["sample_id"].astype(str)).set_index("sample_id")
    ids = [str(s) for s in ds.sample_ids]
    if len(set(ids)) != len(ids) or not set(ids) <= set(rows.index):
        raise ValueError("its sample ids are not these samples'")
    kept = rows.loc[ids]
    which = {str(sid): name for name in SPLITS for sid in split.get(name, [])}
    checks = {
        "pH": np.array_equal(ds.ph, kept["pH"].to_numpy(dtype=np.float32), equal_nan=True),
        "study_name": np.array_equal(ds.study_name, kept["study_name"].astype(str).to_numpy().astype(str)),
        "environment": np.array_equal(ds.environment, kept["environment"].astype(str).to_numpy().astype(str)),
        "split": [str(x) for x in ds.split] == [which.get(s, "") for s in ids],
        "sets": len(ds.offsets) == len(ds.set_sample) + 1 and int(ds.offsets[-1]) == len(ds.ids),
    }
    wrong = [name for name, ok in checks.items() if not ok]
    if wrong:
        raise ValueError(f"its {', '.join(wrong)} differ from the samples'")
    starts, counts = ds.sample_sets()
    for s in np.random.default_rng().choice(len(ids), size=min(_SPOT_CHECKS, len(ids)), replace=False):
        given = kept["counts"].iloc[int(s)] if "counts" in kept.columns else None
        reads, read_counts = _nonempty(kept["sequences"].iloc[int(s)], given)
        sets, weights = read_sets.sample_sets(reads, max_length, max_sets, read_counts)
        expected = [read_sets.encode_set([reads[i] for i in m], max_length) for m in sets]
        span = range(starts[s], starts[s] + counts[s])
        got = [ds.set_tokens(int(k)) for k in span]
        if len(got) != len(expected) or not all(np.array_equal(a, b) for a, b in zip(got, expected)):
            raise ValueError(f"the tokens of sample {ids[int(s)]!r} differ from its reads")
        if not np.array_equal(ds.set_weight[starts[s] : starts[s] + counts[s]], np.float32(weights)):
            raise ValueError(f"the set weights of sample {ids[int(s)]!r} differ from its counts")

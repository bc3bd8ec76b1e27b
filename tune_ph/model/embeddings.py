"""Frozen-backbone set vectors: every pooling of every read set, computed once per (weights, data, length), cached."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hyena_dna import HyenaDNAModel
from tune_ph import files
from tune_ph.config import POOLINGS
from tune_ph.data import token_cache
from tune_ph.data.tokens import TokenizedDataset
from tune_ph.model.read_encoders import pool_hidden
from tune_ph.model.regressor import autocast

log = logging.getLogger(__name__)

# Bump when what a cached array holds changes (2: an .npz with the vectors' content hash).
CACHE_FORMAT = 2
SUBFOLDER = "embeddings"
HASH_KEY = "content_hash"
# Sets whose vectors are recomputed and compared on every cache hit (a forged entry cannot know which), and how
# closely they must agree: bf16 autocast on a GPU and batch composition move vectors by far less than this.
_SPOT_CHECKS = 2
_SPOT_TOLERANCE = 0.05
# Sets per forward pass on a CPU: the forward is bound by element-wise work, and larger batches were slower
# (tiny-1k, 256-token reads, 2 cores: 179 sets/s at 32, 133 at 128, 85 at 512).
CPU_BATCH = 32


def batch_for(device: torch.device, batch_size: int) -> int:
    """Sets per forward pass: at most CPU_BATCH on a CPU, ``batch_size`` on an accelerator."""
    return min(batch_size, CPU_BATCH) if device.type == "cpu" else batch_size


def weights_hash(backbone: HyenaDNAModel) -> str:
    """A content hash of the backbone's architecture and weights: a changed weight is a different cache entry."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(sorted(backbone.config.to_dict().items())).encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_key(backbone: HyenaDNAModel, dataset: TokenizedDataset) -> str:
    """What the vectors depend on: the backbone's weights, the samples, and how they were packed into sets."""
    return f"{weights_hash(backbone)}-{dataset.fingerprint}-L{dataset.max_length}-n{dataset.max_sets}"


def cache_path(backbone: HyenaDNAModel, dataset: TokenizedDataset, cache_dir: str | os.PathLike | None) -> Path:
    """Where the vectors of this backbone on this tokenized dataset live (beside the token cache)."""
    return token_cache.cache_folder(cache_dir) / SUBFOLDER / f"{cache_key(backbone, dataset)}-v{CACHE_FORMAT}.npz"


def distinct_sets(dataset: TokenizedDataset) -> tuple[np.ndarray, np.ndarray]:
    """(one set index per distinct token sequence, each set's position among them): amplicon data repeat the same
    read many times, and a frozen backbone gives identical sets identical vectors."""
    position: dict[bytes, int] = {}
    representatives: list[int] = []
    inverse = np.empty(len(dataset), dtype=np.int64)
    for i in range(len(dataset)):
        key = dataset.set_tokens(i).tobytes()
        if key not in position:
            position[key] = len(representatives)
            representatives.append(i)
        inverse[i] = position[key]
    return np.asarray(representatives, dtype=np.int64), inverse


def compute(
    backbone: HyenaDNAModel,
    dataset: TokenizedDataset,
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """Run the backbone (eval mode, no gradients) once over every distinct set: float32 (n_sets, len(POOLINGS),
    d_model). Sets are padded to the dataset's max_length as everywhere else, so a vector does not depend on
    which other sets shared its batch."""
    device = torch.device(device)
    batch_size = batch_for(device, batch_size)
    backbone = backbone.to(device).eval()
    representatives, inverse = distinct_sets(dataset)
    out = np.zeros((len(representatives), len(POOLINGS), backbone.config.d_model), dtype=np.float32)
    starts = range(0, len(representatives), batch_size)
    started = time.perf_counter()
    with torch.inference_mode(), autocast(device):
        bar = tqdm(starts, total=len(starts), desc="set vectors", unit="batch", disable=not progress)
        for done, start in enumerate(bar, start=1):
            if not progress and done % max(len(starts) // 10, 1) == 0:  # without a bar, a line every tenth
                elapsed = time.perf_counter() - started
                log.info(
                    "set vectors: %d/%d batches, about %.0f s left",
                    done,
                    len(starts),
                    elapsed * (len(starts) / done - 1),
                )
            ids, mask = dataset.tokens_of(representatives[start : start + batch_size])
            ids, mask = ids.to(device), mask.to(device)
            hidden = backbone(ids)
            pooled = torch.stack([pool_hidden(hidden, mask, p) for p in POOLINGS], dim=1)
            out[start : start + len(ids)] = pooled.float().cpu().numpy()
    seconds = time.perf_counter() - started
    tokens = int(dataset.set_lengths()[representatives].sum())
    log.info(
        "set vectors of %d sets (%d distinct, %s tokens) in %.1f s (%.0f tokens/s)",
        len(dataset),
        len(representatives),
        f"{tokens:,}",
        seconds,
        tokens / max(seconds, 1e-9),
    )
    return out[inverse]


def set_vectors(
    backbone: HyenaDNAModel,
    dataset: TokenizedDataset,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress: bool = True,
    shared: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """The frozen backbone's pooled vectors of every set (see ``compute``): from ``shared`` (vectors computed
    elsewhere, e.g. by the search driver, keyed by ``cache_key``), else read from or written to the disk cache."""
    if shared:
        found = shared.get(cache_key(backbone, dataset))
        if found is not None:
            log.info("set vectors shared by the driver (%d sets)", len(found))
            return found
    if not use_cache:
        return compute(backbone, dataset, batch_size=batch_size, device=device, progress=progress)
    path = cache_path(backbone, dataset, cache_dir)
    vectors = _read(path, backbone, dataset)
    if vectors is not None:
        return vectors
    vectors = compute(backbone, dataset, batch_size=batch_size, device=device, progress=progress)
    try:
        files.save_npz(
            path, {"vectors": vectors, HASH_KEY: np.array(files.content_hash({"vectors": vectors}, path.name))}
        )
        log.info("embedding cache written: %s", path)
    except OSError as exc:  # a read-only cache folder should not stop training
        log.warning("could not write the embedding cache %s (%s); set TUNE_PH_CACHE to a writable folder", path, exc)
    return vectors


def cached(
    backbone: HyenaDNAModel, dataset: TokenizedDataset, cache_dir: str | os.PathLike | None = None
) -> np.ndarray | None:
    """The vectors of this backbone on this dataset if the cache holds them (never computes them all)."""
    return _read(cache_path(backbone, dataset, cache_dir), backbone, dataset)


def _read(path: Path, backbone: HyenaDNAModel, dataset: TokenizedDataset) -> np.ndarray | None:
    """A cache entry's vectors, or None (recomputed) when it is missing, damaged, of another shape, changed since
    it was written (its content hash) or not this backbone's (a few sets recomputed at random disagree)."""
    if not path.exists():
        return None
    expected = (len(dataset), len(POOLINGS), backbone.config.d_model)
    try:
        arrays = files.load_npz(path, max_bytes=4 * math.prod(expected) + (1 << 16), what="embedding cache entry")
        vectors = arrays["vectors"]
        if vectors.shape != expected or vectors.dtype != np.float32:
            raise ValueError(f"its vectors have shape {vectors.shape} {vectors.dtype}, not {expected} float32")
        if str(arrays.get(HASH_KEY, "")) != files.content_hash({"vectors": vectors}, path.name):
            raise ValueError("its content does not match its hash (changed since it was written)")
        _spot_check(vectors, backbone, dataset)
    except (OSError, ValueError, KeyError) as exc:  # a damaged or forged entry is recomputed, not fatal
        reason = str(exc).removeprefix(f"{path}: ")[:300]
        log.warning("ignoring embedding cache %s (%s); recomputing it", path, reason)
        return None
    token_cache.touch(path)
    log.info("embedding cache hit: %s", path)
    return vectors


def _spot_check(vectors: np.ndarray, backbone: HyenaDNAModel, dataset: TokenizedDataset) -> None:
    """Raise ValueError unless a few sets, chosen at random now, have the cached vectors when recomputed."""
    if len(dataset) == 0:
        return
    chosen = np.sort(np.random.default_rng().choice(len(dataset), size=min(_SPOT_CHECKS, len(dataset)), replace=False))
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.inference_mode(), autocast(device):
            ids, mask = dataset.tokens_of(chosen)
            hidden = backbone(ids.to(device))
            fresh = torch.stack([pool_hidden(hidden, mask.to(device), p) for p in POOLINGS], dim=1).float().cpu()
    finally:
        backbone.train(was_training)
    fresh_np = fresh.numpy()
    scale = float(np.abs(fresh_np).max()) or 1.0
    if not np.allclose(vectors[chosen], fresh_np, rtol=_SPOT_TOLERANCE, atol=_SPOT_TOLERANCE * scale):
        raise ValueError(f"the vectors of sets {chosen.tolist()} differ from the backbone's own")


def for_pooling(vectors: np.ndarray, pooling: str) -> torch.Tensor:
    """The (n_sets, d_model) vectors of one pooling, as a tensor sharing the array's memory."""
    with warnings.catch_warnings():
        # Vectors shared through Ray's object store are read-only; they are only ever read, so no copy is made.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(vectors[:, POOLINGS.index(pooling)])

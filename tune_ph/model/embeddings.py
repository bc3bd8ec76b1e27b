"""Frozen-backbone set vectors: every pooling of every read set, computed once per (weights, data, length), cached."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import math
import os
import stat
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hyena_dna import HyenaDNAModel, tokenizer
from hyena_dna.config import HyenaDNAConfig
from tune_ph import files
from tune_ph.config import POOLINGS
from tune_ph.data import token_cache
from tune_ph.data.tokens import TokenizedDataset
from tune_ph.model.read_encoders import pool_hidden
from tune_ph.model.regressor import autocast
from tune_ph.model.streamed import release_pages
from tune_ph.progress import Progress

log = logging.getLogger(__name__)

# Bump when what a cached array holds changes (2: an .npz with the vectors' content hash; 3: an uncompressed .npy,
# memory-mapped when read, with its content hash in <entry>.hash beside it).
CACHE_FORMAT = 3
SUBFOLDER = "embeddings"
# Sets whose vectors are recomputed and compared on every cache hit (a forged entry cannot know which), and how
# closely they must agree: bf16 autocast (a GPU's, or a compiled CPU forward's, see BF16_MIN_COSINE) and batch
# composition move vectors by far less than this.
_SPOT_CHECKS = 2
_SPOT_TOLERANCE = 0.05
# Sets per forward pass on a CPU: the forward is bound by element-wise work over a few tensors of sets x tokens x
# d_model floats; kept near CPU_ACTIVATIONS of them they stay in the caches. Measured on one x86 thread, 264-token
# reads: tiny-1k (d_model 128) 211 sets/s at 8 sets, 203 at 16, 144 at 32, 121 at 64; d_model 256 and 64 peak at the
# same product (8-16 and 16-32 sets). CPU_BATCH caps what a caller asks for.
CPU_ACTIVATIONS = 1 << 19
CPU_BATCH = 64


def cpu_bf16_native(capability: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (AVX512 with avx512_bf16, or AMX tiles), decided by what torch
    detects, never by a fixed rule: on AVX2 or older bf16 is emulated and slower than fp32."""
    capability = capability or torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX512", "AMX"):  # "DEFAULT", "AVX2", "ZVECTOR", "VSX", "SVE256", ...
        return False
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def precision_for(device: torch.device, precision: str = "fp32") -> str:
    """The precision the backbone runs at: "fp32", "bf16" (refused on a CPU without native bf16), or "auto":
    bf16 on CUDA and on a CPU with native bf16, else fp32."""
    if precision not in ("fp32", "bf16", "auto"):
        raise ValueError(f"unknown precision {precision!r}; use fp32, bf16 or auto")
    native = device.type == "cuda" or (device.type == "cpu" and cpu_bf16_native())
    if precision == "bf16" and not native:
        raise ValueError(f"bf16 is not native on this {device.type} ({torch.backends.cpu.get_cpu_capability()})")
    return "bf16" if precision == "bf16" or (precision == "auto" and native) else "fp32"


def precision_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for precision "bf16" (the long convolutions stay fp32, as in hyena_dna.fft_conv); "fp32" is
    what the cached vectors always were: fp32 on a CPU, the model's usual bf16 autocast on CUDA."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return autocast(device)


def batch_for(device: torch.device, batch_size: int, length: int, d_model: int) -> int:
    """Sets per forward pass: ``batch_size`` on an accelerator; on a CPU at most CPU_BATCH and about
    CPU_ACTIVATIONS / (length * d_model), at least one."""
    if device.type != "cpu":
        return batch_size
    return max(1, min(batch_size, CPU_BATCH, CPU_ACTIVATIONS // max(length * d_model, 1)))


# torch.compile (inductor) fuses the element-wise work that bounds the CPU forward: on realistic16s's 140,539 reads
# (tiny-1k, 264 tokens, 2 Ray workers) 192 reads/s per worker instead of 147, for a compile of 15-25 s per process.
# Only a process that embeds at least this many reads compiles; fewer would not pay it back.
COMPILE_MIN_READS = 20_000
# Where the CPU computes bf16 natively (cpu_bf16_native), the compiled forward runs under bf16 autocast: measured on a
# Xeon with AMX (tiny-1k, 264 tokens, random reads), bf16 344 reads/s on one thread vs fp32 260, and 629 vs 498 on two
# (bench_embeddings --stage --compile), with a minimum cosine of 1.00000 to fp32. Eager bf16 does not pay (bf16 277
# vs fp32 271 reads/s: the casts cost what the matmuls save), so an eager forward stays fp32. The bf16 forward is
# used only where every hidden state of the check batch keeps a cosine of at least BF16_MIN_COSINE to the eager fp32
# one, and where its largest difference stays well inside the tolerance of a cache hit's spot check (in fp32).
BF16_MIN_COSINE = 0.999
_BF16_MAX_DIFF = _SPOT_TOLERANCE / 5


@dataclass(frozen=True)
class CompiledForward:
    """This process's compiled forward of one backbone and the precision it runs at ("fp32" or "bf16")."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    precision: str


# Compiled forwards of this process, by (weights hash, whether bf16 may be used): a Ray worker runs many shards of one
# backbone. None: the compile failed or its vectors disagreed, so this process stays eager.
_COMPILED: dict[tuple[str, bool], CompiledForward | None] = {}


def worth_compiling(reads_per_process: float, device: torch.device | str) -> bool:
    """Whether a process that embeds this many reads on this device should compile the backbone (CPU only: on CUDA
    the forward is not bound by element-wise work the same way, and nothing of ours has measured it there)."""
    return torch.device(device).type == "cpu" and reads_per_process >= COMPILE_MIN_READS


def compiled_forward(
    backbone: HyenaDNAModel, key: str, sample: torch.Tensor, *, allow_bf16: bool = True
) -> CompiledForward | None:
    """This process's compiled forward of backbone (key: its weights hash), checked once against the eager fp32
    forward on ``sample`` (a batch of input ids of the shape every call will have). allow_bf16: try bf16 autocast first
    where this CPU computes bf16 natively (see BF16_MIN_COSINE), else, or when it disagrees, fp32 (within 1e-5 of
    eager). None when compiling fails (no C++ compiler, an unsupported op) or fp32 disagrees too: the caller stays
    eager."""
    if (key, allow_bf16) in _COMPILED:
        return _COMPILED[key, allow_bf16]
    device = sample.device
    with torch.inference_mode():
        expected = backbone(sample)
    scale = max(float(expected.abs().max()), 1.0)
    native = allow_bf16 and device.type == "cpu" and cpu_bf16_native()
    found = None
    for precision in ("bf16", "fp32") if native else ("fp32",):
        started = time.perf_counter()
        try:
            compiled = torch.compile(backbone, dynamic=False)
            with torch.inference_mode(), precision_context(device, precision):
                got = compiled(sample).float()
            agreement = _agreement(got, expected, scale, precision)
        except Exception as exc:  # noqa: BLE001 - any failure of the optional compile leaves the eager forward
            if precision == "bf16":  # fp32 may still compile
                log.info("read vectors: bf16 autocast not used (%s: %s); fp32", type(exc).__name__, exc)
                continue
            log.warning("read vectors: torch.compile not used (%s: %s); embedding eagerly", type(exc).__name__, exc)
            break
        if agreement is None:
            continue
        log.info("read vectors: backbone compiled in %.1f s (%s)", time.perf_counter() - started, agreement)
        found = CompiledForward(compiled, precision)
        break
    _COMPILED[key, allow_bf16] = found
    return found


def _agreement(got: torch.Tensor, expected: torch.Tensor, scale: float, precision: str) -> str | None:
    """How the compiled forward's hidden states agree with the eager fp32 ones, in words; None (logged) when they
    do not agree closely enough for ``precision``; raises for fp32, whose disagreement leaves the caller eager."""
    diff = float((got - expected).abs().max())
    if precision == "fp32":
        if not diff <= 1e-5 * scale:
            raise ValueError(f"its hidden states differ from the eager forward's by {diff:.1e}")
        return f"fp32; hidden states within {diff:.1e} of eager"
    cosine = float(torch.nn.functional.cosine_similarity(got.flatten(0, -2), expected.flatten(0, -2), dim=-1).min())
    if cosine >= BF16_MIN_COSINE and diff <= _BF16_MAX_DIFF * scale:
        return f"bf16 autocast, native on this CPU; hidden states' minimum cosine to fp32 {cosine:.5f}"
    log.info(
        "read vectors: bf16 autocast not used (minimum cosine to fp32 %.5f, largest difference %.1e of %.1e); fp32",
        cosine,
        diff,
        scale,
    )
    return None


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
    return token_cache.cache_folder(cache_dir) / SUBFOLDER / f"{cache_key(backbone, dataset)}-v{CACHE_FORMAT}.npy"


def distinct_sets(dataset: TokenizedDataset) -> tuple[np.ndarray, np.ndarray]:
    """(one set index per distinct token sequence, each set's position among them): amplicon data repeat the same
    read many times, and a frozen backbone gives identical sets identical vectors."""
    position: dict[bytes, int] = {}
    representatives: list[int] = []
    inverse = np.empty(len(dataset), dtype=np.int64)
    for i in range(len(dataset)):
        # A 128-bit digest, not the tokens themselves: 10^6 distinct reads cost ~100 MB of keys, not ~400 MB.
        key = hashlib.blake2b(dataset.set_tokens(i), digest_size=16).digest()
        if key not in position:
            position[key] = len(representatives)
            representatives.append(i)
        inverse[i] = position[key]
    return np.asarray(representatives, dtype=np.int64), inverse


@dataclass(frozen=True)
class TokenShard:
    """Some distinct token sequences as flat arrays (cheap to pickle and to send to a worker): sequence i is
    ids[offsets[i]:offsets[i + 1]], left-padded with [PAD] to max_length when it is embedded."""

    ids: np.ndarray  # uint8 (total_tokens,)
    offsets: np.ndarray  # int64 (n + 1,)
    max_length: int

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def tokens(self) -> int:
        return int(self.offsets[-1] - self.offsets[0])

    def part(self, start: int, stop: int) -> TokenShard:
        """Sequences start..stop-1 as their own shard (views where possible)."""
        offsets = self.offsets[start : stop + 1]
        return TokenShard(self.ids[offsets[0] : offsets[-1]], offsets - offsets[0], self.max_length)

    def padded(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids int64 (n, max_length), mask bool) of sequences start..stop-1, as TokenizedDataset.tokens_of."""
        length = self.max_length
        ids = np.full((stop - start, length), tokenizer.PAD_ID, dtype=np.int64)
        mask = np.zeros((stop - start, length), dtype=bool)
        for row, i in enumerate(range(start, stop)):
            seq = self.ids[self.offsets[i] : self.offsets[i + 1]]
            ids[row, length - len(seq) :] = seq
            mask[row, length - len(seq) :] = True
        return torch.from_numpy(ids), torch.from_numpy(mask)


def shard_of(dataset: TokenizedDataset, set_index: np.ndarray) -> TokenShard:
    """The token sequences of some sets of a dataset, as one TokenShard."""
    lengths = dataset.set_lengths()[set_index]
    offsets = np.zeros(len(set_index) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if len(set_index) == len(dataset) and np.array_equal(set_index, np.arange(len(dataset))):
        return TokenShard(dataset.ids, dataset.offsets - dataset.offsets[0], dataset.max_length)  # all: no copy
    ids = np.empty(int(offsets[-1]), dtype=np.uint8)
    for row, i in enumerate(set_index.tolist()):
        ids[offsets[row] : offsets[row + 1]] = dataset.set_tokens(i)
    return TokenShard(ids, offsets, dataset.max_length)


class BackboneEncoder:
    """A frozen HyenaDNA backbone as a picklable recipe (its config and state_dict, sent once through Ray's object
    store): token sequences -> float32 (n, len(POOLINGS), d_model) pooled vectors. Every worker rebuilds the very
    same weights from the state_dict, so its vectors are the driver's (never a fresh random init)."""

    def __init__(self, backbone: HyenaDNAModel, compile: bool = False):
        self.config = backbone.config.to_dict()
        self.state = {k: v.detach().to("cpu").clone() for k, v in backbone.state_dict().items()}
        self.shape = (len(POOLINGS), backbone.config.d_model)
        self.key = weights_hash(backbone)
        # Set by a runner that knows how many reads each process embeds (plan).
        self.compile = compile
        self._built: HyenaDNAModel | None = backbone

    def __getstate__(self) -> dict:
        return {
            "config": self.config,
            "state": self.state,
            "shape": self.shape,
            "key": self.key,
            "compile": self.compile,
        }

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _built=None)

    def plan(self, reads_per_process: float, device: torch.device | str) -> None:
        """Tell the encoder how many reads each process will embed: it compiles where that pays (worth_compiling);
        a compile asked for at construction stays."""
        self.compile = self.compile or worth_compiling(reads_per_process, device)

    def backbone(self, device: torch.device) -> HyenaDNAModel:
        if self._built is None:
            built = HyenaDNAModel(HyenaDNAConfig.from_dict(dict(self.config)))
            built.load_state_dict(self.state)
            self._built = built
        return self._built.to(device).eval()

    def __call__(
        self,
        shard: TokenShard,
        *,
        device: torch.device | str = "cpu",
        batch_size: int = CPU_BATCH,
        on_batch: Callable[[int], None] | None = None,
        precision: str = "auto",
    ) -> np.ndarray:
        backbone = self.backbone(torch.device(device))
        return encode(
            backbone,
            shard,
            batch_size=batch_size,
            on_batch=on_batch,
            precision=precision,
            compile_key=self.key if self.compile else None,
        )

    def precision_used(self, device: torch.device | str = "cpu", precision: str = "auto") -> str:
        """What this process's calls with ``precision`` ran at, in words (a worker reports it: the nodes of one
        cluster may differ): "bf16 compiled", "fp32 compiled", or eager at precision_for's choice."""
        found = _COMPILED.get((self.key, precision != "fp32")) if self.compile else None
        device = torch.device(device)
        ran = run_precision(device, precision, found)
        if found is not None:
            return f"{ran} compiled"
        return f"{ran} eager" if device.type == "cpu" else f"{device.type} autocast"


def run_precision(device: torch.device, precision: str, compiled: CompiledForward | None) -> str:
    """The precision encode runs at, "fp32" or "bf16": a compiled forward's own, else the eager one ("auto" is fp32
    eager: eager bf16 does not pay, see BF16_MIN_COSINE)."""
    if compiled is not None:
        return compiled.precision
    return precision_for(device, "fp32" if precision == "auto" else precision)


def encode(
    backbone: HyenaDNAModel,
    shard: TokenShard,
    *,
    batch_size: int = CPU_BATCH,
    on_batch: Callable[[int], None] | None = None,
    precision: str = "auto",
    compile_key: str | None = None,
) -> np.ndarray:
    """Run the backbone (eval mode, no gradients) over every sequence of a shard: float32 (n, len(POOLINGS),
    d_model). Sequences are padded to the shard's max_length as everywhere else, so a vector does not depend on
    which other sequences shared its batch. precision: "auto" runs bf16 autocast only inside a compiled forward on
    a CPU with native bf16 (compiled_forward), else fp32; "fp32" never bf16; "bf16" eager bf16 autocast too
    (precision_for), compiled where it agrees with fp32. compile_key: the backbone's weights hash to run this
    process's compiled forward on a CPU (compiled_forward; ignored on an accelerator); every batch then has the
    same shape (the last one filled up with padding rows), so it compiles once."""
    device = next(backbone.parameters()).device
    precision_for(device, precision)  # an unknown name, or bf16 asked for where it is not native, fails first
    batch_size = batch_for(device, batch_size, shard.max_length, backbone.config.d_model)
    backbone.eval()
    out = np.zeros((len(shard), len(POOLINGS), backbone.config.d_model), dtype=np.float32)
    compiled = None
    if compile_key is not None and device.type == "cpu" and len(shard):
        first, _ = shard.padded(0, min(batch_size, len(shard)))
        sample = _filled(first.to(device), batch_size)
        compiled = compiled_forward(backbone, compile_key, sample, allow_bf16=precision != "fp32")
    forward, fill = (backbone, 0) if compiled is None else (compiled.forward, batch_size)  # one compiled shape
    with torch.inference_mode(), precision_context(device, run_precision(device, precision, compiled)):
        for start in range(0, len(shard), batch_size):
            stop = min(start + batch_size, len(shard))
            ids, mask = shard.padded(start, stop)
            ids, mask = ids.to(device), mask.to(device)
            hidden = forward(_filled(ids, fill))[: stop - start]
            pooled = torch.stack([pool_hidden(hidden, mask, p) for p in POOLINGS], dim=1)
            out[start:stop] = pooled.float().cpu().numpy()
            if on_batch is not None:
                on_batch(stop - start)
    return out


def _filled(ids: torch.Tensor, rows: int) -> torch.Tensor:
    """ids (n, L) with padding rows appended up to ``rows``: a compiled forward sees one shape only."""
    if len(ids) >= rows:
        return ids
    return torch.cat([ids, ids.new_full((rows - len(ids), ids.shape[1]), tokenizer.PAD_ID)])


# What embeds the distinct reads: (encoder, shard, progress, out) fills out (n, *encoder.shape) float32, which may be
# a memory map. The default runs in this process; tune_ph.search.embed_stage.ray_runner spreads the shard over the
# Ray cluster.
Runner = Callable[[BackboneEncoder, TokenShard, Progress, np.ndarray], None]
# Reads per piece when the distinct reads' vectors are copied out to every set (bounded memory, see compute).
_COPY_ROWS = 1 << 14


def local_runner(device: torch.device | str = "cpu", batch_size: int = CPU_BATCH) -> Runner:
    def run(encoder: BackboneEncoder, shard: TokenShard, progress: Progress, out: np.ndarray) -> None:
        encoder.plan(len(shard), device)
        for start in range(0, len(shard), _COPY_ROWS):  # pieces: a memory-mapped out is written as it goes
            stop = min(start + _COPY_ROWS, len(shard))
            out[start:stop] = encoder(
                shard.part(start, stop), device=device, batch_size=batch_size, on_batch=progress.update
            )
            release_pages(out)

    return run


def compute(
    backbone: HyenaDNAModel,
    dataset: TokenizedDataset,
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress: bool | str = True,
    runner: Runner | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The backbone's float32 (n_sets, len(POOLINGS), d_model) vectors of every set, each distinct read embedded
    once (by ``runner``: this process by default). progress: True/"auto" a bar or tenth-lines, False logged
    tenth-lines, or a Progress mode. out: where to write them (e.g. a memory map of the cache entry); then the
    distinct reads' vectors go to a memory-mapped scratch file beside it, so memory stays bounded."""
    device = torch.device(device)
    backbone = backbone.to(device).eval()
    representatives, inverse = distinct_sets(dataset)
    shard = shard_of(dataset, representatives)
    mode = "auto" if progress is True else "log" if progress is False else progress
    bar = Progress(len(shard), mode=mode)
    shape = (len(POOLINGS), backbone.config.d_model)
    scratch = Path(out.filename).with_suffix(".distinct.tmp") if isinstance(out, np.memmap) else None
    started = time.perf_counter()
    distinct = None
    try:
        if scratch is not None:
            distinct = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float32, shape=(len(shard), *shape))
        else:
            distinct = np.zeros((len(shard), *shape), dtype=np.float32)
        run = runner or local_runner(device, batch_size)
        run(BackboneEncoder(backbone), shard, bar, distinct)
        bar.close()
        if out is None:
            out = distinct[inverse]
        else:
            for start in range(0, len(inverse), _COPY_ROWS):
                out[start : start + _COPY_ROWS] = distinct[inverse[start : start + _COPY_ROWS]]
                release_pages(out)
                release_pages(distinct)
    finally:
        bar.close()
        if scratch is not None:
            distinct = None  # the map closed before its file goes
            scratch.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    tokens = shard.tokens()
    log.info(
        "set vectors of %d sets (%d distinct, %s tokens) in %.1f s (%.0f reads/s, %.0f tokens/s)",
        len(dataset),
        len(representatives),
        f"{tokens:,}",
        seconds,
        len(representatives) / max(seconds, 1e-9),
        tokens / max(seconds, 1e-9),
    )
    return out


def set_vectors(
    backbone: HyenaDNAModel,
    dataset: TokenizedDataset,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress: bool | str = True,
    shared: Mapping[str, np.ndarray] | None = None,
    runner: Runner | None = None,
) -> np.ndarray:
    """The frozen backbone's pooled vectors of every set (see ``compute``): from ``shared`` (vectors computed
    elsewhere, e.g. by the search driver, keyed by ``cache_key``), else memory-mapped from the disk cache (read-only,
    paged in as used, never all in RAM) or computed into it. runner: what embeds the distinct reads."""
    if shared:
        found = shared.get(cache_key(backbone, dataset))
        if found is not None:
            log.info("set vectors shared by the driver (%d sets)", len(found))
            return found
    kwargs = {"batch_size": batch_size, "device": device, "progress": progress, "runner": runner}
    if not use_cache:
        return compute(backbone, dataset, **kwargs)
    path = cache_path(backbone, dataset, cache_dir)
    vectors = _read(path, backbone, dataset)
    if vectors is not None:
        return vectors
    shape = (len(dataset), len(POOLINGS), backbone.config.d_model)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{time.monotonic_ns()}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
    except OSError as exc:  # a read-only cache folder should not stop training
        log.warning("could not write the embedding cache %s (%s); set TUNE_PH_CACHE to a writable folder", path, exc)
        return compute(backbone, dataset, **kwargs)
    try:
        compute(backbone, dataset, out=out, **kwargs)
        out.flush()
        del out
        files.write_text(hash_path(path), stream_hash(tmp, path.name))
        os.replace(tmp, path)
        log.info("embedding cache written: %s", path)
    finally:
        tmp.unlink(missing_ok=True)
    return open_npy(path)


def open_npy(path: Path) -> np.memmap:
    """An .npy file's array, memory-mapped read-only, after checking its header: a plain little-endian array whose
    declared size is the file's (never an .npz, a pickle or a header that would allocate more than is there)."""
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
        except Exception as exc:  # noqa: BLE001 - any header numpy cannot parse (SyntaxError, TokenError, ...)
            raise ValueError(f"not an .npy array ({str(exc)[:100]})") from None
        offset = fh.tell()
    if fortran or dtype.hasobject or dtype.byteorder == ">":
        raise ValueError(f"an array this cache never writes ({dtype}, fortran order {fortran})")
    if os.path.getsize(path) != offset + math.prod(shape) * dtype.itemsize:
        raise ValueError("its size does not match its header")
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset)


def hash_path(path: Path) -> Path:
    """The content hash of a cache entry lives beside it (an .npy holds one array, and is memory-mapped as is)."""
    return path.with_name(path.name + ".hash")


def stream_hash(path: Path, key: str) -> str:
    """files.content_hash({"vectors": the .npy's array}, key), read in pieces (never the whole array in RAM)."""
    vectors = open_npy(path)
    h = files.mac_hasher(key)
    h.update(f"\x1evectors\x1f{vectors.dtype.str}\x1f{vectors.shape}\x1f".encode())
    with open(path, "rb") as fh:
        fh.seek(vectors.offset)
        for piece in iter(lambda: fh.read(1 << 24), b""):
            h.update(piece)
    return h.hexdigest()


def cached(
    backbone: HyenaDNAModel, dataset: TokenizedDataset, cache_dir: str | os.PathLike | None = None
) -> np.ndarray | None:
    """The vectors of this backbone on this dataset if the cache holds them (never computes them all)."""
    return _read(cache_path(backbone, dataset, cache_dir), backbone, dataset)


def _read(path: Path, backbone: HyenaDNAModel, dataset: TokenizedDataset) -> np.ndarray | None:
    """A cache entry's vectors, memory-mapped, or None (recomputed) when it is missing, damaged, of another shape,
    changed since it was written (its content hash) or not this backbone's (a few sets recomputed at random
    disagree)."""
    if not path.exists():
        return None
    expected = (len(dataset), len(POOLINGS), backbone.config.d_model)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ValueError("not a regular file")
        vectors = open_npy(path)
        if vectors.shape != expected or vectors.dtype != np.float32:
            raise ValueError(f"it holds {vectors.shape} {vectors.dtype}, not {expected} float32")
        recorded = hash_path(path).read_text().strip() if hash_path(path).is_file() else ""
        if recorded != stream_hash(path, path.name):
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


def pooled(vectors: np.ndarray, pooling: str) -> np.ndarray:
    """The (n_sets, d_model) vectors of one pooling: a view, of the cache's memory map where vectors are one."""
    return vectors[:, POOLINGS.index(pooling)]


def as_tensor(vectors: np.ndarray) -> torch.Tensor:
    """Vectors as a tensor sharing the array's memory."""
    with warnings.catch_warnings():
        # Vectors shared through Ray's object store are read-only; they are only ever read, so no copy is made.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(vectors)


def for_pooling(vectors: np.ndarray, pooling: str) -> torch.Tensor:
    """The (n_sets, d_model) vectors of one pooling, as a tensor sharing the array's memory."""
    return as_tensor(pooled(vectors, pooling))


# ------------------------------------------------------------------------------------------------ fit once per search
# A fit on the vectors (PCA + clusters of the train reads, ...) depends only on the vectors, the reads it was fitted
# on and its own settings; trials of one search that ask for the same fit share it instead of refitting it.
FIT_SUBFOLDER = "fits"
_FITS: dict[str, dict[str, np.ndarray]] = {}  # this process's fits (a worker reused by Tune keeps them)


def fit_key(vectors_key: str, what: str, *, rows: np.ndarray | None = None, **settings: object) -> str:
    """The identity of a fit: the vectors (cache_key, plus the pooling or anything else that picks them), which
    rows it was fitted on (e.g. the train split's set indices), what it is (name and version) and its settings
    (cluster count, dimensions, seed, ...)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{vectors_key}\x1f{what}\x1f{sorted(settings.items())!r}".encode())
    if rows is not None:
        h.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    return f"{what}-{h.hexdigest()}"


def fit_once(
    key: str, fit: Callable[[], Mapping[str, np.ndarray]], cache_dir: str | os.PathLike | None = None
) -> dict[str, np.ndarray]:
    """The arrays of the fit named key (fit_key): this process's copy, else the cache's (content-hashed .npz),
    else fit() called once and stored. Processes that ask for the same fit at once (a search's trials on one
    node) wait on a file lock for the first one's result instead of fitting it again.

    Meant for the pieces of ReadClusters.fit_arrays (training.fit._fit_clusters): key = fit_key(vectors key,
    "kmeans-v3", rows=train_sets, dims=dims, clusters=K, seed=seed); fit returns {"centroids"}.
    """
    if key in _FITS:
        return _FITS[key]
    folder = token_cache.cache_folder(cache_dir) / FIT_SUBFOLDER
    path = folder / f"{key}.npz"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / f"{key}.lock", "a+b")  # noqa: SIM115 - held across the fit
    except OSError as exc:  # a read-only cache: fit here, share within this process only
        log.warning("fits are not shared (%s); set TUNE_PH_CACHE to a writable folder", exc)
        _FITS[key] = {k: np.asarray(v) for k, v in fit().items()}
        return _FITS[key]
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        arrays = _read_fit(path)
        if arrays is None:
            started = time.perf_counter()
            arrays = {k: np.asarray(v) for k, v in fit().items()}
            stored = {**arrays, "content_hash": np.array(files.content_hash(arrays, path.name))}
            try:
                files.save_npz(path, stored)
            except OSError as exc:
                log.warning("could not store the fit %s (%s)", path, exc)
            log.info("fit %s in %.1f s, stored for the other trials", key, time.perf_counter() - started)
        else:
            log.info("fit %s shared from %s", key, path)
    _FITS[key] = arrays
    return arrays


def _read_fit(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        arrays = files.load_npz(path, max_bytes=1 << 31, what="fit cache entry")
        recorded = str(arrays.pop("content_hash", ""))
        if recorded != files.content_hash(arrays, path.name):
            raise ValueError("its content does not match its hash")
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring fit cache %s (%s); fitting again", path, str(exc)[:300])
        return None
    return arrays

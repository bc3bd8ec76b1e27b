"""Checkpoint I/O: find a HyenaDNA checkpoint (folder, hub id, size name), read it without running code, map keys.

Two layouts are read and written:

- LongSafari (original): `config.json` (nested "layer") + `weights.ckpt`, a Lightning checkpoint. Besides the
  tensors it pickles OmegaConf hyperparameters and optimizer state, so `torch.load(weights_only=True)` refuses
  it, and `weights_only=False` would execute whatever a downloaded file asks. `read_checkpoint_tensors`
  instead unpickles with an allow-list: tensors and plain containers are rebuilt, every other object becomes
  an inert placeholder, nothing named in the file is ever called, and every storage's declared size is
  checked against the archive before any memory is allocated for it.
- -hf (the transformers ports, `LongSafari/<size>-hf`): `config.json` of their HyenaConfig + `model.safetensors`,
  read with the safetensors library only (no pickle, no remote code). `from_hf_layout` / `to_hf_layout`
  convert the keys: the `hyena.backbone.` (or `backbone.`) prefix, the filter's shared Sin `freq` that the
  -hf file stores once, and the untied `lm_head.weight`.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from hyena_dna.config import (
    CONFIG_NAME,
    HF_SUFFIX,
    HUB_ORG,
    MAX_CONFIG_BYTES,
    PRETRAINED_SIZES,
    HyenaDNAConfig,
    _parse_size,
    config_layout,
    read_small_file,
)
from hyena_dna.memory import model_bytes

WEIGHTS_NAME = "weights.ckpt"
HF_WEIGHTS_NAME = "model.safetensors"
LAYOUTS = ("original", "hf")
# Checkpoint key = "model.backbone." + our key (with ".layer" after mixer/mlp for gradient-checkpointed runs).
CHECKPOINT_PREFIX = "model.backbone."
_CKPT_WRAPPER = re.compile(r"\.(mixer|mlp)\.layer\.")
# -hf key = prefix + our key: "hyena.backbone." under HyenaDNAForCausalLM / ...ForSequenceClassification (what
# the hub files hold), "backbone." when a bare HyenaDNAModel was saved. Other keys (lm_head, score) are heads.
HF_PREFIX = "hyena.backbone."
HF_PREFIXES = (HF_PREFIX, "backbone.")
HF_LM_HEAD = "lm_head.weight"
_SIN_FREQ = re.compile(r"^layers\.(\d+)\.mixer\.filter_fn\.implicit_filter\.(\d+)\.freq$")
# A compressed entry may not expand more than this (torch.save never compresses; a zip bomb does).
MAX_COMPRESSION_RATIO = 16
_READ_CHUNK = 1 << 20
# The pickle of a checkpoint holds its structure and settings, never tensor data: a few MB at most.
MAX_PICKLE_BYTES = 256 << 20
# What a LongSafari weights.ckpt may hold per byte of the model it declares (weights, optimizer state, the LM head,
# metric counters), plus a constant: anything beyond is refused before it is read.
CHECKPOINT_BYTES_PER_MODEL_BYTE = 8
CHECKPOINT_EXTRA_BYTES = 256 << 20


class PretrainedNotFoundError(OSError):
    """The requested checkpoint could not be found locally or downloaded."""


class CheckpointKeyError(RuntimeError):
    """A checkpoint's backbone keys do not match the model's (missing, unexpected or mis-shaped)."""


class UnsafeCheckpointError(ValueError):
    """A weights.ckpt whose storages are inconsistent with its archive (declared sizes, dtypes), refused unread."""


# ---------------------------------------------------------------------------------------------------------
# Safe reading of torch zip checkpoints
# ---------------------------------------------------------------------------------------------------------


class _Inert:
    """Stands in for any object the allow-list does not know: accepts construction and state, does nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert()


class _StorageType:
    """Marks a legacy typed storage class (torch.FloatStorage, ...) with its dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: Any, stride: Any, *args: Any) -> torch.Tensor:
    size, stride = tuple(size), tuple(stride)
    numbers = (offset, *size, *stride)
    if len(size) != len(stride) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        raise pickle.UnpicklingError(f"a tensor has an invalid view (offset {offset}, size {size}, stride {stride})")
    # The last element the view reaches must lie in its storage (meta storages would not check it themselves).
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else -1
    if last >= storage.numel():
        raise pickle.UnpicklingError(f"a tensor of size {size} reaches past its storage of {storage.numel()} elements")
    return storage.as_strided(size, stride, offset)


def _rebuild_parameter(data: torch.Tensor, *args: Any) -> torch.Tensor:
    return data


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch", "Size"): tuple,
}


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(
        self, file: Any, archive: zipfile.ZipFile, root: str, path: Path, max_bytes: int | None, meta: bool = False
    ) -> None:
        super().__init__(file)
        self._archive = archive
        self._root = root
        self._path = path
        self._max_bytes = max_bytes
        self._meta = meta  # storages become meta tensors: checked, never read or allocated
        self.total = 0
        self._storages: dict[str, tuple[torch.dtype, int, torch.Tensor]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _Inert

    def _refuse(self, key: Any, why: str) -> UnsafeCheckpointError:
        return UnsafeCheckpointError(
            f"{self._path}: storage {key!r} {why}; refusing to read this checkpoint (corrupt or crafted)"
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"{self._path}: unsupported persistent id {str(pid)[:80]}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(key, str):
            raise self._refuse(key, "has a key that is not a string")
        if not isinstance(storage_type, _StorageType):
            raise self._refuse(key, "has an unsupported storage type")
        if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise self._refuse(key, f"declares an invalid size {numel!r}")
        dtype = storage_type.dtype
        if key in self._storages:
            # torch.save writes one storage under one dtype and size; anything else re-reads (and re-allocates)
            # the same bytes under another type.
            seen_dtype, seen_numel, tensor = self._storages[key]
            if (seen_dtype, seen_numel) != (dtype, numel):
                raise self._refuse(
                    key,
                    f"is referenced as {numel} x {dtype} after {seen_numel} x {seen_dtype} "
                    "(one storage, two types or sizes)",
                )
            return tensor
        tensor = self._read_storage(key, dtype, numel)
        self._storages[key] = (dtype, numel, tensor)
        return tensor

    def _read_storage(self, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        name = f"{self._root}/data/{key}"
        try:
            info = self._archive.getinfo(name)
        except KeyError:
            raise self._refuse(key, f"has no data entry {name} in the archive") from None
        nbytes = numel * dtype.itemsize
        # All checks use the zip's directory only: nothing is allocated or decompressed before they pass.
        if info.file_size != nbytes:
            raise self._refuse(
                key, f"declares {numel} x {dtype} = {nbytes} bytes but its entry {name} holds {info.file_size} bytes"
            )
        if _expands_too_much(info):
            raise self._refuse(
                key,
                f"expands from {info.compress_size} compressed bytes to {nbytes} (more than {MAX_COMPRESSION_RATIO}x)",
            )
        self.total += nbytes
        if self._max_bytes is not None and self.total > self._max_bytes:
            raise self._refuse(key, f"brings the storages to {self.total} bytes, over the cap of {self._max_bytes}")
        if self._meta:
            return torch.empty(numel, dtype=dtype, device="meta")
        if nbytes == 0:
            return torch.empty(0, dtype=dtype)
        # Read in bounded chunks into one buffer: memory is the declared size even if the stream lies.
        raw = bytearray(nbytes)
        view = memoryview(raw)
        with self._archive.open(info) as fh:
            pos = 0
            while pos < nbytes:
                chunk = fh.read(min(_READ_CHUNK, nbytes - pos))
                if not chunk:
                    raise self._refuse(key, f"has a truncated entry {name}")
                view[pos : pos + len(chunk)] = chunk
                pos += len(chunk)
        return torch.frombuffer(raw, dtype=dtype)


def _expands_too_much(info: zipfile.ZipInfo) -> bool:
    compressed = info.compress_type != zipfile.ZIP_STORED
    return compressed and info.file_size > max(MAX_COMPRESSION_RATIO * info.compress_size, _READ_CHUNK)


def _unpickle(path: Path, max_bytes: int | None, meta: bool) -> tuple[Any, int]:
    """(the checkpoint's unpickled object, the uncompressed bytes of all its zip entries), checked as
    read_checkpoint_tensors says."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO would block a plain open
    except OSError as err:
        raise ValueError(f"{path}: cannot open it ({err.strerror})") from None
    with os.fdopen(fd, "rb") as raw:
        if not stat.S_ISREG(os.fstat(raw.fileno()).st_mode):
            raise ValueError(f"{path} is not a regular file (a FIFO, device or socket); replace it with the checkpoint")
        if not zipfile.is_zipfile(raw):
            raise ValueError(
                f"{path} is not a torch zip checkpoint (legacy torch<1.6 format or not a checkpoint); "
                "re-save it with a current torch (torch.save) and try again"
            )
        try:
            archive = zipfile.ZipFile(raw)
        except (zipfile.BadZipFile, ValueError, OSError) as err:
            raise UnsafeCheckpointError(f"{path}: its zip directory is damaged ({err})") from None
        with archive:
            for info in archive.infolist():
                if _expands_too_much(info):
                    raise UnsafeCheckpointError(
                        f"{path}: entry {info.filename} expands from {info.compress_size} compressed bytes to "
                        f"{info.file_size} (more than {MAX_COMPRESSION_RATIO}x); refusing to read it (a zip bomb)"
                    )
            pickles = [i for i in archive.infolist() if i.filename.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise ValueError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
            if pickles[0].file_size > MAX_PICKLE_BYTES:
                raise UnsafeCheckpointError(
                    f"{path}: its pickle declares {pickles[0].file_size} bytes, over the {MAX_PICKLE_BYTES} a "
                    "checkpoint's structure needs; refusing to read it"
                )
            root = pickles[0].filename[: -len("/data.pkl")]
            byteorder = f"{root}/byteorder"
            if byteorder in archive.namelist():
                with archive.open(byteorder) as fh:
                    if fh.read(64).strip() != b"little":
                        raise ValueError(f"{path} was saved on a big-endian machine; re-save it on a little-endian one")
            with archive.open(pickles[0]) as fh:
                try:
                    unpickler = _AllowListUnpickler(fh, archive, root, path, max_bytes, meta)
                    obj = unpickler.load()
                except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, RecursionError) as err:
                    raise UnsafeCheckpointError(  # damaged, truncated, crafted
                        f"{path}: cannot read the checkpoint's pickle ({type(err).__name__}: "
                        f"{str(err)[:200]}); the file is damaged or not a torch checkpoint"
                    ) from None
        declared = sum(info.file_size for info in archive.infolist())
    return obj, declared


def read_checkpoint_tensors(path: str | Path, *, max_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's `state_dict` (or of a bare state dict), read without executing code.

    Every storage the pickle references is checked before it is read: its declared size (elements x dtype size)
    must equal its zip entry's uncompressed size, one storage may not be referenced under two dtypes or sizes,
    a compressed entry may not expand more than MAX_COMPRESSION_RATIO times, the pickle itself may not exceed
    MAX_PICKLE_BYTES, and (when `max_bytes` is given) all storages together may not exceed `max_bytes`. A
    violation is an UnsafeCheckpointError naming the file and the storage, raised before that storage's memory
    is allocated. A FIFO or device is refused unopened for reading.
    """
    path = Path(path)
    obj, _ = _unpickle(path, max_bytes, meta=False)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state_dict (found {type(obj).__name__})")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def read_checkpoint_skeleton(path: str | Path) -> tuple[Any, int]:
    """(the checkpoint's pickled object with every tensor on the meta device, the uncompressed bytes of its zip
    entries: the most that torch.load could allocate for it).

    Nothing is allocated for tensor data and nothing named in the file is called: every storage is checked as in
    read_checkpoint_tensors, and unknown objects become inert placeholders. A reader calls it to learn what a file
    declares (its settings, its sizes) before deciding to load it for real, e.g. with torch.load(weights_only=True).
    """
    return _unpickle(Path(path), None, meta=True)


def checkpoint_cap(config: HyenaDNAConfig) -> int:
    """The most bytes of storages a checkpoint of this architecture may hold (see CHECKPOINT_BYTES_PER_MODEL_BYTE)."""
    return CHECKPOINT_BYTES_PER_MODEL_BYTE * model_bytes(config) + CHECKPOINT_EXTRA_BYTES


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file, on CPU (the safetensors library only: no pickle, no code)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path} is not a readable safetensors file: {type(err).__name__}: {err}") from err


# ---------------------------------------------------------------------------------------------------------
# Key mapping
# ---------------------------------------------------------------------------------------------------------


def backbone_state_dict(checkpoint_tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint keys -> our module keys: keep `model.backbone.*`, drop the prefix and any `.layer` wrapper.

    Everything else in the file (the LM head tied to the embeddings, metric counters) is not the backbone's.
    """
    out = {}
    for key, value in checkpoint_tensors.items():
        if key.startswith(CHECKPOINT_PREFIX):
            out[_CKPT_WRAPPER.sub(r".\1.", key[len(CHECKPOINT_PREFIX) :])] = value
    return out


def checkpoint_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our module keys -> checkpoint keys, in the form the model's config says (inverse of backbone_state_dict)."""
    config: HyenaDNAConfig = model.config
    out = {}
    for key, value in model.state_dict().items():
        if config.checkpoint_mixer:
            key = key.replace(".mixer.", ".mixer.layer.", 1)
        if config.checkpoint_mlp:
            key = key.replace(".mlp.", ".mlp.layer.", 1)
        out[CHECKPOINT_PREFIX + key] = value.detach().cpu().contiguous()
    return out


def check_backbone_weights(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str) -> None:
    """Every missing, unexpected or mis-shaped key, and every non-finite weight, is an error that lists them."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mis_shaped:
        parts = [f"checkpoint {source} does not match the model built from its config:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)):
            if keys:
                parts.append(f"  {len(keys)} {title}: " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
        declared, carried = (sum(t.numel() for t in d.values()) for d in (expected, state))
        parts[0] += f" its config declares {declared:,} numbers, the file carries {carried:,}"
        raise CheckpointKeyError("\n".join(parts))
    bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise UnsafeCheckpointError(f"{source}: its weight {bad} holds NaN or infinite values; the file is damaged")


def load_backbone_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load: every missing, unexpected or mis-shaped key is an error that lists them."""
    check_backbone_weights(model.state_dict(), state, source)
    model.load_state_dict(state, strict=True)


def _sin_positions(config: HyenaDNAConfig) -> list[int]:
    """Indices of the shared Sin activation inside implicit_filter: after each Linear but the last."""
    return [2 * i + 1 for i in range(config.num_inner_mlps + 1)]


def _freq_key(layer: int | str, position: int) -> str:
    return f"layers.{layer}.mixer.filter_fn.implicit_filter.{position}.freq"


def from_hf_layout(
    hf_state: dict[str, torch.Tensor], config: HyenaDNAConfig, *, source: str = "-hf state dict"
) -> dict[str, torch.Tensor]:
    """-hf keys -> our module keys: strip `hyena.backbone.` (or `backbone.`), restore the shared Sin `freq`.

    The -hf files store each filter's Sin `freq` once (safetensors drops aliases; the -hf code declares it
    ignorable when missing); our module, like the original checkpoints, lists it at every position it is used.
    Keys outside the backbone (lm_head, a classification score) are left out. What remains is checked strictly by
    load_backbone_weights.
    """
    prefixes = [p for p in HF_PREFIXES if any(k.startswith(p) for k in hf_state)]
    if len(prefixes) != 1:
        found = "both" if prefixes else "neither"
        sample = ", ".join(sorted(hf_state)[:5])
        raise CheckpointKeyError(
            f"{source}: expected backbone keys under exactly one of {' / '.join(p + '*' for p in HF_PREFIXES)}, "
            f"found {found} (first keys: {sample or 'none'})"
        )
    prefix = prefixes[0]
    state = {k[len(prefix) :]: v for k, v in hf_state.items() if k.startswith(prefix)}
    positions = _sin_positions(config)
    train_freq = config.extra.get("hf", {}).get("train_freq", True)
    for layer in range(config.n_layer):
        keys = [_freq_key(layer, p) for p in positions]
        present = [k for k in keys if k in state]
        if present:
            shared = state[present[0]]
            differing = [k for k in present[1:] if state[k].shape != shared.shape or not torch.equal(state[k], shared)]
            if differing:
                raise CheckpointKeyError(
                    f"{source}: the filter's Sin freq is one shared parameter, but {prefix}{present[0]} differs from "
                    + ", ".join(prefix + k for k in differing)
                )
            for key in keys:
                state[key] = shared
        elif not train_freq and any(k.startswith(f"layers.{layer}.") for k in state):
            # train_freq false: the -hf Sin keeps a constant activation_freq tensor that is never saved.
            constant = torch.full((1, config.filter_order), float(config.w))
            for key in keys:
                state[key] = constant
    return state


def to_hf_layout(
    state_dict: dict[str, torch.Tensor], config: HyenaDNAConfig
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Our weights -> (the -hf model.safetensors tensors, the -hf config.json dict), as LongSafari/*-hf hold them.

    `state_dict` is a model's state_dict() or a LongSafari checkpoint's tensors (`model.backbone.*`, with or
    without the `.layer` wrapper; other keys are dropped). Keys become `hyena.backbone.<key>`, the shared Sin
    `freq` is stored once (at its first position, where transformers' save_pretrained keeps it; the others must
    be equal), and `lm_head.weight` is an untied copy of the embeddings (the original head was tied to them).
    Raises ValueError when the config has no -hf equivalent (see HyenaDNAConfig.to_hf_dict).
    """
    hf_config = config.to_hf_dict()
    if any(k.startswith(CHECKPOINT_PREFIX) for k in state_dict):
        state_dict = backbone_state_dict(state_dict)
    first = _sin_positions(config)[0]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = _SIN_FREQ.match(key)
        if match and int(match.group(2)) != first:
            kept = state_dict.get(_freq_key(match.group(1), first))
            if kept is None or kept.shape != value.shape or not torch.equal(kept, value):
                raise ValueError(
                    f"{key} differs from {_freq_key(match.group(1), first)}; the -hf layout stores the shared "
                    "Sin freq once, so they must be equal"
                )
            continue
        # Copies: safetensors refuses tensors that share memory, and the result must not alias the model.
        out[HF_PREFIX + key] = value.detach().to("cpu", copy=True).contiguous()
    embeddings = state_dict.get("embeddings.word_embeddings.weight")
    if embeddings is not None:
        out[HF_LM_HEAD] = embeddings.detach().to("cpu", copy=True).contiguous()
    return out, hf_config


# ---------------------------------------------------------------------------------------------------------
# Locating checkpoints
# ---------------------------------------------------------------------------------------------------------


def _hub_repo_id(name: str) -> str | None:
    if "/" not in name and _parse_size(name) is not None:
        return f"{HUB_ORG}/{name}"
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not name.startswith((".", "/")):
        return name
    return None


def _weights_name(layout: str) -> str:
    return HF_WEIGHTS_NAME if layout == "hf" else WEIGHTS_NAME


def _layout_of(config_json: Path) -> str:
    """The layout a config.json is in ("original" when unreadable: HyenaDNAConfig.from_json then says why)."""
    try:
        data = json.loads(read_small_file(config_json, MAX_CONFIG_BYTES))
    except (OSError, ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return "original"
    return config_layout(data) if isinstance(data, dict) else "original"


_FOLDER_LAYOUTS = (
    f"a HyenaDNA checkpoint folder holds {CONFIG_NAME} + {WEIGHTS_NAME} (the LongSafari layout, as written by "
    f"save_pretrained) or {CONFIG_NAME} + {HF_WEIGHTS_NAME} (the -hf layout, save_pretrained(layout='hf'))"
)


def _check_folder(path: Path) -> Path:
    if not (path / CONFIG_NAME).is_file():
        raise PretrainedNotFoundError(f"{path} is a folder but lacks {CONFIG_NAME}; {_FOLDER_LAYOUTS}")
    layout = _layout_of(path / CONFIG_NAME)
    weights = _weights_name(layout)
    if not (path / weights).is_file():
        extra = ""
        if layout == "hf" and any((path / n).exists() for n in ("pytorch_model.bin", "model.safetensors.index.json")):
            extra = (
                "; it holds pytorch_model.bin or sharded safetensors, which are not read (pickle / shards): "
                f"re-save the model as one {HF_WEIGHTS_NAME}"
            )
        raise PretrainedNotFoundError(
            f"{path} is a folder but lacks {weights} (its {CONFIG_NAME} is in the {layout} layout); "
            f"{_FOLDER_LAYOUTS}{extra}"
        )
    return path


def _snapshot(repo_id: str, revision: str | None, weights: str, local_only: bool = False) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                repo_id, revision=revision, allow_patterns=[CONFIG_NAME, weights], local_files_only=local_only
            )
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        raise PretrainedNotFoundError(
            f"could not get the HyenaDNA checkpoint {repo_id!r} ({CONFIG_NAME} + {weights}) from the "
            f"Hugging Face hub or its local cache"
            + (" (HF_HUB_OFFLINE is set, so only the cache was searched)" if offline else "")
            + (" (only the cache was searched, as asked)" if local_only and not offline else "")
            + f": {type(err).__name__}: {err}\n"
            "Fixes: connect to the internet (and unset HF_HUB_OFFLINE) so it can be downloaded once into the "
            "cache; or download it elsewhere (e.g. `hf download "
            f"{repo_id} {CONFIG_NAME} {weights} --local-dir DIR`) and pass that folder's path instead."
        ) from err


def resolve_checkpoint_dir(name_or_path: str | Path, *, revision: str | None = None, local_only: bool = False) -> Path:
    """A local folder holding config.json + its weights (weights.ckpt, or model.safetensors for the -hf layout),
    downloading from the hub when needed; local_only: from a folder or the hub's local cache only (no network)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _check_folder(path)
    repo_id = _hub_repo_id(str(name_or_path))
    if repo_id is None:
        raise PretrainedNotFoundError(
            f"{name_or_path!r} is neither a local folder nor a hub repo id; use a folder with {CONFIG_NAME} + "
            f"{WEIGHTS_NAME} (or + {HF_WEIGHTS_NAME}), a repo id like {HUB_ORG}/hyenadna-tiny-1k-seqlen (or its "
            f"'{HF_SUFFIX}' variant), or a size name: " + ", ".join(PRETRAINED_SIZES)
        )
    # The repo name says which weights file to fetch; the config.json decides (a fine-tuned -hf repo may be
    # named anything), so a mismatch costs a second, small request.
    asked = HF_WEIGHTS_NAME if repo_id.endswith(HF_SUFFIX) else WEIGHTS_NAME
    folder = _snapshot(repo_id, revision, asked, local_only)
    weights = _weights_name(_layout_of(folder / CONFIG_NAME)) if (folder / CONFIG_NAME).is_file() else asked
    if weights != asked:
        folder = _snapshot(repo_id, revision, weights, local_only)
    if not (folder / weights).is_file() or not (folder / CONFIG_NAME).is_file():
        raise PretrainedNotFoundError(
            f"hub repo {repo_id!r} has no {CONFIG_NAME} + {weights}; HyenaDNA checkpoints are read from "
            f"{CONFIG_NAME} + {WEIGHTS_NAME} (e.g. {HUB_ORG}/hyenadna-tiny-1k-seqlen) or {CONFIG_NAME} + "
            f"{HF_WEIGHTS_NAME} (e.g. {HUB_ORG}/hyenadna-tiny-1k-seqlen{HF_SUFFIX}); pickled pytorch_model.bin "
            "files are never read"
        )
    return folder


def load_pretrained(cls: type, name_or_path: str | Path, *, shift: float | None = None, revision: str | None = None):
    """Build the model from a checkpoint's config.json (either layout) and load its backbone weights strictly."""
    folder = resolve_checkpoint_dir(name_or_path, revision=revision)
    layout = _layout_of(folder / CONFIG_NAME)
    config = HyenaDNAConfig.from_json(folder / CONFIG_NAME)
    if shift is not None:
        config.shift = shift
    weights = folder / _weights_name(layout)
    if layout == "hf":
        # safetensors checks its header against the file's size; the size itself is checked against the config.
        size, cap = weights.stat().st_size, checkpoint_cap(config)
        if size > cap:
            raise UnsafeCheckpointError(
                f"{weights} holds {size} bytes, more than a model of its {CONFIG_NAME} can ({cap}); refusing to read it"
            )
        state = from_hf_layout(read_safetensors(weights), config, source=str(weights))
    else:
        state = backbone_state_dict(read_checkpoint_tensors(weights, max_bytes=checkpoint_cap(config)))
    # The file must carry the tensors its config declares before the model is built: a 1 MB folder whose
    # config.json declares a 5 GB model is refused from a build on the meta device (shapes only, no memory).
    with torch.device("meta"):
        declared = cls(config)
    check_backbone_weights(declared.state_dict(), state, str(weights))
    model = cls(config)
    load_backbone_weights(model, state, str(weights))
    return model


def save_pretrained(model: torch.nn.Module, directory: str | Path, *, layout: str = "original") -> Path:
    """Write config.json + weights that load_pretrained reads back.

    layout="original": a weights.ckpt ({"state_dict": ...}, also readable by torch.load(weights_only=True)) in
    the LongSafari layout. layout="hf": config.json + model.safetensors as the LongSafari/*-hf repos hold them
    (see to_hf_layout).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown checkpoint layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if layout == "hf":
        from safetensors.torch import save_file

        tensors, hf_config = to_hf_layout(model.state_dict(), model.config)
        (directory / CONFIG_NAME).write_text(json.dumps(hf_config, indent=2) + "\n")
        tmp = directory / (HF_WEIGHTS_NAME + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(directory / HF_WEIGHTS_NAME)
        return directory
    model.config.to_json(directory / CONFIG_NAME)
    tmp = directory / (WEIGHTS_NAME + ".tmp")
    torch.save({"state_dict": checkpoint_state_dict(model)}, tmp)
    tmp.replace(directory / WEIGHTS_NAME)
    return directory

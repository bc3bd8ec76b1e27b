"""The files a run writes: their names, atomic writes (a crash mid-write never leaves a truncated file), and
size-checked reads of the binary ones (nothing is allocated before the sizes a file declares are checked)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from hyena_dna.memory import available_memory
from tune_ph.errors import InputError
from tune_ph.metrics import DEFAULT_TARGET, target_names

# torch (and hyena_dna.pretrained, which needs it) are imported where a checkpoint is written or read: the file
# names here are read by every command's --help, which should not wait seconds for torch.

# The files of a run folder (runs/<run>/, and an experiment's best/).
MODEL_FILE = "best_model.pt"  # weights + the configs to rebuild them (torch.load(weights_only=True))
RUN_CONFIG_FILE = "config.json"
SPLIT_FILE = "split.json"
SPLITS = ("train", "val", "test")  # the keys of split.json, in order
LOG_FILE = "training_log.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "test_predictions.csv"
RESIDUALS_FILE = "residuals.png"
# A clusters model's learned OTUs that move its predictions most (report.drivers), as a table and a plot.
DRIVERS_FILE = "drivers.csv"
DRIVERS_PLOT = "drivers.png"
# The columns of the predictions CSVs (a run's and a baseline's test_predictions.csv, `predict --output`): one name
# per quantity, so that each file reads like the others.
SAMPLE_ID, STUDY_NAME, ENVIRONMENT = "sample_id", "study_name", "environment"
# The target's columns as tables are built (pH's names, those of the published recipe's tables); a file of another
# target renames them to its own (metrics.target_names: true_temperature, predicted_temperature_mean, ...).
_PH = target_names(DEFAULT_TARGET)
TRUE_PH = _PH.true
PREDICTED_PH = _PH.predicted  # the sample's one prediction
PREDICTED_PH_SD = _PH.predicted_sd  # standard deviation (n - 1) of what each read set alone predicts
N_SETS = "n_sets"  # read sets the prediction is made from
RESIDUAL = _PH.residual  # observed minus predicted: positive where the model under-predicted
N_READS_USED, N_READS = "n_reads_used", "n_reads"  # reads in the sets; reads of the sample
PREDICTION_COLUMNS = (SAMPLE_ID, STUDY_NAME, TRUE_PH, PREDICTED_PH, PREDICTED_PH_SD, N_SETS, RESIDUAL, ENVIRONMENT)
# A baseline predicts from a whole sample's k-mer profile: there are no sets to count or to spread.
BASELINE_PREDICTION_COLUMNS = tuple(c for c in PREDICTION_COLUMNS if c not in (PREDICTED_PH_SD, N_SETS))
# `predict --output`: for unlabelled samples; TRUE_PH and RESIDUAL follow where any sample has a pH.
PREDICT_COLUMNS = (SAMPLE_ID, STUDY_NAME, PREDICTED_PH, PREDICTED_PH_SD, N_SETS, N_READS_USED, N_READS)
# The baselines of an experiment and the one chosen on val (baseline.reference.reference_baseline), saved once by a
# search.
BASELINE_FILE = "baseline.json"
# In each Ray checkpoint folder of a trial: its model.checkpoint.Checkpoint, as MODEL_FILE holds it.
TRIAL_STATE_FILE = "state.pt"
# An experiment's exported best trial: a run folder inside the experiment folder.
BEST_DIR = "best"
# A pretraining folder (training.pretrain): its resumable state, and the marker written once it finished, holding
# the hashes of the backbone files it vouches for (a weights.ckpt without it is refused by train --model).
PRETRAIN_STATE_FILE = "pretrain_state.pt"
PRETRAIN_CONFIG_FILE = "pretrain_config.json"
PRETRAIN_DONE_FILE = "pretrain_done.json"
PRETRAIN_VOUCHED = ("config.json", "weights.ckpt")  # hyena_dna's CONFIG_NAME and WEIGHTS_NAME
# Headroom left to the rest of the process when a file's declared size is compared with the available memory.
_MEMORY_SHARE = 0.8


def _atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write to a temp file in the same folder, then rename it over `path` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created with 0o666 so the kernel applies the umask (mkstemp would make it 0600: results are shared with
    # colleagues); O_EXCL on a random name, as mkstemp does.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())  # the data is on disk before the rename makes it the file
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        Path(tmp).unlink(missing_ok=True)
        # torch.save reports a full disk as "[enforce fail at inline_container.cc:...]", naming no file.
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0][:200]
        raise OSError(f"could not write {path}: {reason} ({_free_space(path.parent)})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:,.0f} MiB free on its disk"
    except OSError:
        return "free space unknown"


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic(path, lambda fh: fh.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return _atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """JSON with 2-space indent; NaN and infinities are written as null (JSON has no NaN)."""
    return write_text(path, json.dumps(json_safe(payload), indent=2, default=str) + "\n")


def save_torch(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    import torch

    return _atomic(path, lambda fh: torch.save(state, fh))


def write_csv(path: str | os.PathLike, frame: Any) -> Path:
    """A pandas DataFrame as CSV, without the index."""
    return _atomic(path, lambda fh: fh.write(frame.to_csv(index=False).encode("utf-8")))


def write_predictions(path: str | os.PathLike, table: Any, target: str = DEFAULT_TARGET) -> Path:
    """A predictions table built with pH's column names (TRUE_PH, ...), written with its target's names."""
    return write_csv(path, table.rename(columns=_PH.renamed(target_names(target))))


def json_safe(value: Any) -> Any:
    """The value as write_json writes it: non-finite floats as None (JSON has no NaN), tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------ size-checked reads


def _memory_cap(path: Path, declared: int, what: str) -> None:
    available = available_memory()
    if available is not None and declared > _MEMORY_SHARE * available:
        raise InputError(
            f"{path}: the {what} declares {declared / 2**20:,.0f} MiB of data, more than the "
            f"{available / 2**20:,.0f} MiB of memory available; refusing to load it"
        )


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether path is no link and stays inside folder once every link on its way is followed."""
    path = Path(path)
    return not path.is_symlink() and path.resolve().is_relative_to(Path(folder).resolve())


def read_inside(path: str | os.PathLike, folder: str | os.PathLike, *, max_bytes: int, what: str = "file") -> str:
    """The text of a file of a (possibly received) folder: never through a link, never a FIFO or device, never more
    than max_bytes. Raises ValueError naming the file (a reader maps it to its own error)."""
    path = Path(path)
    if not inside(path, folder):
        raise ValueError(f"the {what} is a link or leads outside {folder}; links in a received folder are never read")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as err:
        raise ValueError(f"cannot read the {what} ({err.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"the {what} is not a regular file (a FIFO, device or socket)")
        if info.st_size > max_bytes:
            raise ValueError(f"the {what} holds {info.st_size:,} bytes, more than the {max_bytes:,} it can")
        return fh.read(max_bytes + 1).decode("utf-8", errors="replace")


def regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """path, if it names a regular file (symlinks followed); else an InputError: a FIFO blocks its reader forever,
    a device (/dev/zero) feeds it forever."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise InputError(f"{path}: cannot read the {what} ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        raise InputError(f"{path}: the {what} is not a regular file (a FIFO, device or socket); replace it")
    return path


def load_torch(
    path: str | os.PathLike,
    *,
    max_bytes: int | None = None,
    budget: Callable[[Any], int] | None = None,
    what: str = "checkpoint",
) -> Any:
    """torch.load(weights_only=True) of a torch.save file, after checking what it declares, before allocating.

    Its pickle is first read with every tensor on the meta device (hyena_dna's read_checkpoint_skeleton: each
    storage against its zip entry, no compression bomb, nothing called), giving the bytes its entries declare.
    Those must fit `max_bytes`, `budget(skeleton)` (a cap from what the file says of itself, e.g. its model
    config; it may raise ValueError for a file that is not the expected kind) and the memory available. Every
    refusal, and every file torch cannot read, is an InputError naming the file.
    """
    import torch

    from hyena_dna.pretrained import read_checkpoint_skeleton

    path = regular_file(path, what)
    try:
        skeleton, declared = read_checkpoint_skeleton(path)
        cap = budget(skeleton) if budget is not None else None
    except (ValueError, TypeError, KeyError, AttributeError) as err:  # UnsafeCheckpointError, a bad config, ...
        text = (str(err).splitlines()[0] if str(err) else type(err).__name__).removeprefix(f"{path}: ")
        raise InputError(f"{path} cannot be read as a {what}: {text.removeprefix(f'{path} ')}") from None
    for limit in (max_bytes, cap):
        if limit is not None and declared > limit:
            raise InputError(
                f"{path}: the {what} declares {declared:,} bytes of data, more than the {limit:,} it can hold; "
                "refusing to load it (damaged or crafted)"
            )
    _memory_cap(path, declared, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        text = str(err).splitlines()[0][:300] if str(err) else ""
        raise InputError(
            f"{path} cannot be read as a {what} ({type(err).__name__}: {text}); it is damaged or not one "
            "(only plain tensors and settings are ever loaded from it)"
        ) from None


def load_npz(path: str | os.PathLike, *, max_bytes: int, what: str = "cache entry") -> dict[str, np.ndarray]:
    """The arrays of an .npz file (no pickles), after checking every member's header against its size.

    An .npy header declares a shape that numpy allocates before reading: each one must match its member's size,
    no member may be a compression bomb, and all together may not exceed `max_bytes`. Raises ValueError naming
    the file (a cache treats it as damaged and recomputes it).
    """
    from hyena_dna.pretrained import MAX_COMPRESSION_RATIO

    path = Path(path)
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{path}: not a regular file")
    try:
        with zipfile.ZipFile(path) as archive:
            total = 0
            for info in archive.infolist():
                compressed = info.compress_type != zipfile.ZIP_STORED
                if compressed and info.file_size > max(MAX_COMPRESSION_RATIO * info.compress_size, 1 << 20):
                    raise ValueError(f"{path}: member {info.filename} expands {info.compress_size} -> {info.file_size}")
                with archive.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    shape, _, dtype = (
                        np.lib.format.read_array_header_1_0(fh)
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0(fh)
                    )
                    if dtype.hasobject:
                        raise ValueError(f"{path}: member {info.filename} holds Python objects")
                    nbytes = math.prod(shape) * dtype.itemsize
                    if nbytes + fh.tell() != info.file_size:
                        raise ValueError(f"{path}: member {info.filename} declares {shape} {dtype}, not its size")
                total += info.file_size
                if total > max_bytes:
                    raise ValueError(f"{path}: its arrays exceed the {max_bytes:,} bytes this {what} can hold")
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npz file ({err})") from None


def mac_hasher(key: str = "") -> hashlib.blake2b:
    """A blake2b MAC under this user's secret key, started with a key (the entry's name): what content_hash
    updates, and what a cache that streams its arrays updates itself."""
    from tune_ph import secret

    return hashlib.blake2b(key.encode(), key=secret.key(), digest_size=16)


def content_hash(arrays: dict[str, np.ndarray], key: str = "") -> str:
    """A MAC of named arrays (names, dtypes, shapes and bytes) and a key (the entry's name) under this user's secret
    key: a cache entry's own check, which no one without that key can forge for a planted entry."""
    h = mac_hasher(key)
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        h.update(f"\x1e{name}\x1f{value.dtype.str}\x1f{value.shape}\x1f".encode())
        h.update(value.reshape(-1).view(np.uint8) if value.size else b"")
    return h.hexdigest()


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Arrays as one .npz (no pickles), written atomically."""
    return _atomic(path, lambda fh: np.savez(fh, **arrays))


# ------------------------------------------------------------------------------------------ pretraining marker


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(regular_file(path), "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def mark_pretrain_done(folder: str | os.PathLike, step: int) -> Path:
    """Vouch for a finished pretraining's backbone files (their hashes), for check_pretrain_done."""
    folder = Path(folder)
    hashes = {name: _sha256(folder / name) for name in PRETRAIN_VOUCHED}
    return write_json(folder / PRETRAIN_DONE_FILE, {"step": int(step), "sha256": hashes})


def unmark_pretrain_done(folder: str | os.PathLike) -> None:
    """The backbone files are about to change: the marker no longer vouches for them."""
    (Path(folder) / PRETRAIN_DONE_FILE).unlink(missing_ok=True)


def check_pretrain_done(folder: str | os.PathLike) -> None:
    """Refuse the backbone of a pretraining folder that did not finish, or whose files changed since it did.

    A folder that is not a pretraining run (a LongSafari checkpoint, no pretrain_state.pt) is not checked.
    """
    folder = Path(folder)
    if not ((folder / PRETRAIN_STATE_FILE).exists() or (folder / PRETRAIN_CONFIG_FILE).exists()):
        return
    resume = f"`python -m tune_ph pretrain --resume --output-dir {folder}` finishes it (or marks a finished one)"
    marker = folder / PRETRAIN_DONE_FILE
    if not marker.is_file():
        raise InputError(
            f"{folder}: its pretraining did not finish (no {PRETRAIN_DONE_FILE}; runs before tune_ph wrote one have "
            f"none either), so its weights may be partial or damaged; {resume}"
        )
    try:
        vouched = json.loads(marker.read_text())["sha256"]
        if not isinstance(vouched, dict):
            raise TypeError("sha256 is not an object")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{marker}: not a pretraining marker ({err}); {resume}") from None
    for name in PRETRAIN_VOUCHED:
        if vouched.get(name) != _sha256(folder / name):
            raise InputError(
                f"{folder / name} changed since its pretraining finished (its hash differs from {marker}); "
                f"restore it, or pretrain again"
            )

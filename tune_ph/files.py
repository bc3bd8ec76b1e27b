"""The files a run writes: their names, and atomic writes (a crash mid-write never leaves a truncated file)."""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

# The files of a run folder (runs/<run>/, and an experiment's best/).
MODEL_FILE = "best_model.pt"  # weights + the configs to rebuild them (torch.load(weights_only=True))
RUN_CONFIG_FILE = "config.json"
SPLIT_FILE = "split.json"
LOG_FILE = "training_log.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "test_predictions.csv"
RESIDUALS_FILE = "residuals.png"
# The baselines of an experiment and the one chosen on val (baseline.reference.reference_baseline), saved once by a
# search.
BASELINE_FILE = "baseline.json"
# An experiment's exported best trial: a run folder inside the experiment folder.
BEST_DIR = "best"


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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return _atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """JSON with 2-space indent; NaN and infinities are written as null (JSON has no NaN)."""
    return write_text(path, json.dumps(_json_safe(payload), indent=2, default=str) + "\n")


def save_torch(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    return _atomic(path, lambda fh: torch.save(state, fh))


def save_numpy(path: str | os.PathLike, array: Any) -> Path:
    """One array as .npy (loadable with allow_pickle=False)."""
    return _atomic(path, lambda fh: np.save(fh, array, allow_pickle=False))


def write_csv(path: str | os.PathLike, frame: Any) -> Path:
    """A pandas DataFrame as CSV, without the index."""
    return _atomic(path, lambda fh: fh.write(frame.to_csv(index=False).encode("utf-8")))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value

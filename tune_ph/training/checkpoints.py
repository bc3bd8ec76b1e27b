"""Find a checkpoint from a run, best/ or experiment folder, and the train/val/test split its run used."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from tune_ph import files
from tune_ph.data import sources, tokens
from tune_ph.data.split import SplitRecord, split_for
from tune_ph.errors import InputError
from tune_ph.model.checkpoint import Checkpoint

log = logging.getLogger(__name__)

CHECKPOINT_NAME = files.MODEL_FILE  # what train and export write (kept: callers use this name)

__all__ = ["checkpoint_split", "find_checkpoint"]


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint a path stands for: a best_model.pt, a run folder, an experiment's best/ or the experiment."""
    given = Path(path).expanduser()
    hint = (
        "pass a best_model.pt, a run folder (runs/<run>/), an experiment's best/ folder or an experiment folder "
        "(after `python -m tune_ph export EXPERIMENT`)"
    )
    if given.is_file():
        return given
    if not given.exists():
        raise InputError(f"--checkpoint {path}: no such file or folder; {hint}")
    candidates = [given / CHECKPOINT_NAME, given / files.BEST_DIR / CHECKPOINT_NAME]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise InputError(
        f"--checkpoint {path}: no checkpoint in it (looked for {' and '.join(map(str, candidates))}); {hint}"
    )


def checkpoint_split(path: Path, checkpoint: Checkpoint, samples: pd.DataFrame) -> dict[str, list[str]]:
    """The train/val/test sample ids of a checkpoint file: its run's split.json, else recomputed from its config."""
    split_file = path.parent / files.SPLIT_FILE
    if split_file.is_file():
        try:
            return SplitRecord.from_dict(json.loads(split_file.read_text())).ids()
        except (ValueError, TypeError) as exc:
            raise InputError(f"{split_file}: not a split file ({exc}); remove it to recompute the split") from None
    cfg = checkpoint.train_config
    # The split is drawn over the labelled samples training saw; unlabelled rows never were in it.
    labelled = sources.clean_samples(samples, skip_bad_rows=True, where="the samples (labelled rows)")
    fingerprint = checkpoint.dataset_fingerprint
    if fingerprint and tokens.fingerprint(labelled) != fingerprint:
        log.warning(
            "these samples differ from the dataset %s was trained on; the recomputed split may not be its split", path
        )
    if labelled.empty:
        raise InputError("no sample has a pH, so the checkpoint's split cannot be recomputed; drop --split")
    return split_for(labelled, cfg)

"""Find a checkpoint from a run, best/ or experiment folder, and the train/val/test split its run used."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd

from tune_ph import files
from tune_ph.data import sources, tokens
from tune_ph.data.split import PARTS, SplitRecord, split_for, split_samples
from tune_ph.errors import DatasetError, InputError
from tune_ph.model.checkpoint import Checkpoint

log = logging.getLogger(__name__)

CHECKPOINT_NAME = files.MODEL_FILE  # what train and export write (kept: callers use this name)

__all__ = ["checkpoint_split", "find_checkpoint", "read_split"]
_MAX_SPLIT_BYTES = 256 << 20  # 64-character ids of millions of samples; a split.json is never near it


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


def read_split(split_file: Path) -> SplitRecord:
    """A run's split.json, its parts disjoint; an InputError naming it (and the fix) for anything else."""
    fix = "remove it to recompute the split"
    try:
        text = files.read_inside(split_file, split_file.parent, max_bytes=_MAX_SPLIT_BYTES, what="split file")
        record = SplitRecord.from_dict(json.loads(text))
    except (ValueError, TypeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0][:200]
        raise InputError(f"{split_file}: not a split file ({reason}); {fix}") from None
    seen: dict[str, str] = {}
    for part, ids in record.ids().items():
        for sample in ids:
            if sample in seen:
                where = "twice in " + part if seen[sample] == part else f"in both {seen[sample]} and {part}"
                raise InputError(f"{split_file}: sample {sample!r} is {where}; the parts must be disjoint; {fix}")
            seen[sample] = part
    if not record.train or not record.test:
        raise InputError(f"{split_file}: its {'train' if not record.train else 'test'} part is empty; {fix}")
    return record


def _check_drawn(split_file: Path, record: SplitRecord, labelled: pd.DataFrame) -> None:
    """split.json holds what its recorded seed and fractions draw from these samples (train and test not swapped,
    nothing moved between parts), when it records them and the samples are those it covers."""
    if record.split_seed is None or record.test_fraction is None or record.val_fraction is None:
        return  # written before the split's settings were saved: nothing to redraw it from
    try:
        drawn = split_samples(
            labelled,
            seed=record.split_seed,
            test_fraction=record.test_fraction,
            val_fraction=record.val_fraction,
            by=record.split_by,
        )
    except (ValueError, DatasetError) as exc:
        raise InputError(f"{split_file}: its split settings cannot be redrawn ({exc}); remove it") from None
    for part in PARTS:
        if set(drawn[part]) != set(getattr(record, part)):
            raise InputError(
                f"{split_file}: its {part} part is not what its split_seed {record.split_seed}, test_fraction "
                f"{record.test_fraction} and val_fraction {record.val_fraction} draw from these samples (parts "
                "swapped or edited); remove it to recompute the split"
            )


def checkpoint_split(path: Path, checkpoint: Checkpoint, samples: pd.DataFrame) -> dict[str, list[str]]:
    """The train/val/test sample ids of a checkpoint file: its run's split.json (checked: disjoint, covering the
    samples it was drawn from, and what its recorded seed and fractions draw), else recomputed from its config."""
    split_file = path.parent / files.SPLIT_FILE
    cfg = checkpoint.train_config
    # The split is drawn over the labelled samples training saw; unlabelled rows never were in it.
    labelled = sources.clean_samples(
        samples, skip_bad_rows=True, where="the samples (labelled rows)", target=sources.Target.of(cfg)
    )
    fingerprint = checkpoint.dataset_fingerprint
    same_data = not fingerprint or tokens.fingerprint(labelled) == fingerprint
    if os.path.lexists(split_file):
        record = read_split(split_file)
        held = set().union(*map(set, record.ids().values()))
        if held == set(labelled["sample_id"].astype(str)):
            _check_drawn(split_file, record, labelled)
        elif same_data and fingerprint:
            raise InputError(
                f"{split_file}: its parts do not cover the {len(labelled)} samples {path} was trained on "
                f"({len(held)} ids); remove it to recompute the split"
            )
        return record.ids()
    if not same_data:
        log.warning(
            "these samples differ from the dataset %s was trained on; the recomputed split may not be its split", path
        )
    if labelled.empty:
        raise InputError("no sample has a pH, so the checkpoint's split cannot be recomputed; drop --split")
    return split_for(labelled, cfg)

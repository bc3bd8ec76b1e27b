"""The baseline beside the DNA model: the family on a TrainConfig's data and split, the member chosen on val
(baseline.json), and how the model compares with it (a paired bootstrap over the same test samples)."""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tune_ph import files
from tune_ph.baseline import choices
from tune_ph.config import TrainConfig
from tune_ph.metrics import TEST_R2, TEST_R2_CI95, TEST_RMSE, VAL_R2, paired_delta_r2, verdict

log = logging.getLogger(__name__)

# TrainConfig fields the baseline takes as flags: what decides the samples and the split.
# The report fits the family itself only on a dataset of at most this many bases (realistic16s, 50 M bases:
# about 2.5 minutes on 2 cores the first time, cached after).
BASELINE_MAX_BASES = 100_000_000


def _num(value: Any, signed: bool = False) -> str:
    if not (isinstance(value, (int, float)) and math.isfinite(value)):
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def interval_text(interval: Any, signed: bool = False) -> str:
    """`[0.431, 0.562]`, or "" when there is none."""
    if not (isinstance(interval, (list, tuple)) and len(interval) == 2):
        return ""
    return f"[{_num(interval[0], signed)}, {_num(interval[1], signed)}]"


def with_interval(value: Any, interval: Any, signed: bool = False) -> str:
    """`0.500 [0.431, 0.562]`; the value alone when there is no interval."""
    return " ".join(filter(None, (_num(value, signed), interval_text(interval, signed))))


@dataclass
class Reference:
    """The baseline family on a config's data and split, and the member chosen on val: baseline.json.

    results: every member's metrics by name; test_predictions: the chosen member's, by sample id (what the
    paired comparison needs); reason: why none is shown (nothing was fitted, or there was no val split to choose
    on).
    """

    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    chosen: str | None = None
    chosen_by: str = VAL_R2
    command: str = ""
    cached: bool = False
    reason: str | None = None
    test_predictions: dict[str, float] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, Any]:
        """The chosen member's metrics ({} when none was chosen)."""
        return dict(self.results.get(self.chosen or "", {}))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """baseline.json without the per-sample predictions (for a run's metrics.json)."""
        out = self.to_dict()
        del out["test_predictions"]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reference:
        """baseline.json of any version: before the family, {"results": {"ridge": metrics}, "k": 6, ...}."""
        results = {str(name): dict(m) for name, m in (data.get("results") or {}).items() if isinstance(m, Mapping)}
        if "chosen" not in data:  # one k-mer Ridge, named by its model only: name it as the family does
            results = {
                str(m.get("name") or f"kmer{m.get('k', data.get('k', 6))}-{name}"): m for name, m in results.items()
            }
        chosen = data.get("chosen", next(iter(results), None))
        predictions = data.get("test_predictions") or {}
        return cls(
            results=results,
            chosen=str(chosen) if chosen is not None else None,
            chosen_by=str(data.get("chosen_by", VAL_R2)),
            command=str(data.get("command") or ""),
            cached=bool(data.get("cached", False)),
            reason=data.get("reason"),
            test_predictions={str(k): float(v) for k, v in predictions.items() if v is not None},
        )


@dataclass
class Comparison:
    """The DNA model's test R² minus the chosen baseline's on the same test samples, with its 95 % paired
    bootstrap interval: metrics.json's "vs_baseline"."""

    baseline: str
    delta_r2: float
    delta_r2_ci95: list[float] | None
    verdict: str  # "ahead", "behind" or "not distinguishable": whether the interval excludes 0
    n_samples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Comparison | None:
        """metrics.json's vs_baseline, or None when it is missing or not one."""
        try:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})  # type: ignore[index]
        except (KeyError, TypeError):
            return None

    def line(self) -> str:
        """`test R² vs the baseline chosen on val (kmer8-ridge): +0.012 [-0.031, +0.055] over 309 test samples:
        not distinguishable`."""
        return (
            f"test R² vs the baseline chosen on val ({self.baseline}): "
            f"{with_interval(self.delta_r2, self.delta_r2_ci95, signed=True)} over {self.n_samples} test samples "
            f"(paired bootstrap, 95 %): {self.verdict}"
        )


def compare(table: pd.DataFrame, reference: Reference | None) -> Comparison | None:
    """The DNA model's test predictions (sample_id, true_ph, predicted_ph_mean) against the chosen baseline's.

    On the test samples both predicted (a sample without reads has no DNA-model prediction); None without a
    chosen baseline, its predictions (a baseline.json from before they were saved) or 2 shared samples.
    """
    if reference is None or not reference.chosen or not reference.test_predictions:
        return None
    theirs = table["sample_id"].astype(str).map(reference.test_predictions).to_numpy(dtype=np.float64)
    both = np.isfinite(theirs)
    if both.sum() < 2:
        return None
    true = table["true_ph"].to_numpy(dtype=np.float64)[both]
    ours = table["predicted_ph_mean"].to_numpy(dtype=np.float64)[both]
    delta, interval = paired_delta_r2(true, ours, theirs[both])
    return Comparison(reference.chosen, delta, interval, verdict(interval), int(both.sum()))


def baseline_command(cfg: TrainConfig) -> str:
    """The `python -m tune_ph baseline` command for the same data and split as a training config."""
    default = TrainConfig()
    args = ["python", "-m", "tune_ph", "baseline", "--dataset", cfg.dataset]
    data = ("split_by", "split_seed", "test_fraction", "val_fraction", "sequences", "metadata", "min_count", "rarefy")
    for name in data:
        if getattr(cfg, name) != getattr(default, name):
            args += [f"--{name.replace('_', '-')}", str(getattr(cfg, name))]
    if cfg.skip_bad_rows:
        args.append("--skip-bad-rows")
    if cfg.target != default.target:
        args += ["--target", cfg.target]
    if cfg.target_range is not None:
        args += ["--target-range", *map(str, cfg.target_range)]
    return shlex.join(args)


def reference_baseline(
    train_config: TrainConfig | Mapping[str, Any] | None,
    *,
    local_only: bool = False,
    max_bases: int | None = None,
) -> Reference:
    """The baseline family on a TrainConfig's dataset and split (cached), and its member chosen on val.

    Never raises (a failure is a warning and the Reference's reason). local_only: no hub dataset; max_bases:
    fit on no more bases than this.
    """
    from tune_ph.baseline.family import CHOSEN_BY, choose_on_val, run_family  # scikit-learn's models, when needed
    from tune_ph.data.sources import load_for
    from tune_ph.data.split import split_for

    command = "python -m tune_ph baseline --dataset DATASET"
    if not train_config:
        return Reference(reason="no training config", command=command)
    try:
        cfg = train_config if isinstance(train_config, TrainConfig) else TrainConfig.from_dict(dict(train_config))
        command = baseline_command(cfg)
        if local_only and cfg.dataset != "demo" and not Path(cfg.dataset).expanduser().exists():
            return Reference(reason=f"dataset {cfg.dataset} is not a local path", command=command)
        df = load_for(cfg)
        bases = int(df["sequences"].map(lambda reads: sum(map(len, reads))).sum())
        if max_bases is not None and bases > max_bases:
            return Reference(reason=f"{bases / 1e6:.0f} M bases is too slow to fit here", command=command)
        family = run_family(df, split_for(df, cfg), cache_dir=cfg.cache_dir)
    except Exception as err:  # the comparison is optional; the caller shows why it is missing
        log.warning("baseline not computed: %s", err)
        return Reference(reason=f"it failed: {err}", command=command)
    return reference_of(family, choose_on_val(family), command, chosen_by=CHOSEN_BY)


def reference_of(family: Mapping[str, Any], chosen: str | None, command: str, chosen_by: str = VAL_R2) -> Reference:
    """The Reference record of a fitted family (name -> members.Baseline) and its member chosen on val."""
    predictions = {}
    if chosen is not None:
        table = family[chosen].predictions
        predictions = dict(zip(table["sample_id"].astype(str), table["predicted_ph_mean"].astype(float)))
    return Reference(
        results={name: dict(b.metrics) for name, b in family.items()},
        chosen=chosen,
        chosen_by=chosen_by,
        command=command,
        cached=all(b.cached for b in family.values() if choices.from_reads(b.metrics)),
        reason=None if chosen else "no val samples to choose a baseline on",
        test_predictions=predictions,
    )


def baseline_line(reference: Reference | None) -> str:
    """`baseline chosen on val: kmer8-ridge (val R² 0.472, best of 9 from the reads): test R² 0.500 [0.431, 0.562],
    RMSE 1.207; references: study mean 0.689, environment mean 0.639`, or why there is none; with the leak
    sentence when it applies."""
    reference = reference or Reference(reason="not computed")
    m = reference.metrics
    if not m:
        return f"baseline: not computed ({reference.reason or '?'}); compute it with: {reference.command}"
    from_reads = sum(choices.from_reads(r) for r in reference.results.values())
    line = (
        f"baseline chosen on val: {reference.chosen} (val R² {_num(m.get(VAL_R2))}, best of {from_reads} from "
        f"the reads): test R² {with_interval(m.get(TEST_R2), m.get(TEST_R2_CI95))}, RMSE {_num(m.get(TEST_RMSE))}"
    )
    shown = references_text(reference)
    if shown:
        line += f"; references (not from the reads alone): {shown}"
    leak = leak_note(reference)
    return f"{line}. {leak}" if leak else line


def references_text(reference: Reference) -> str:
    """`study mean 0.689, environment mean 0.639` (test R²): the references that read labels, not reads."""
    parts = []
    for name in reversed(choices.REFERENCE_NAMES[1:]):  # the train mean is 0 by construction
        r2 = reference.results.get(name, {}).get(TEST_R2)
        if isinstance(r2, (int, float)) and math.isfinite(r2):
            parts.append(f"{name.replace('-', ' ')} {r2:.3f}")
    return ", ".join(parts)


def leak_note(reference: Reference, model_val_r2: float | None = None) -> str | None:
    """One sentence when the study mean beats the chosen baseline (and the model, when given) on val: the random
    split leaks study identity; None otherwise."""
    study = reference.results.get("study-mean", {}).get(VAL_R2)
    best = [reference.metrics.get(VAL_R2), model_val_r2]
    best = [v for v in best if isinstance(v, (int, float)) and math.isfinite(v)]
    if not (isinstance(study, (int, float)) and math.isfinite(study)) or not best or study <= max(best):
        return None
    return (
        f"The study mean (val R² {study:.3f}) beats every model of the reads here: this split leaks study identity "
        "(test samples come from studies seen in training), so `--split-by study` is what answers how a model does "
        "on new studies."
    )


def versus(r2: float | None, reference: Reference | None, split: str = "val") -> str | None:
    """`val R²: DNA model 0.521 vs baseline kmer8-ridge 0.470 (+0.051)`, or None without both numbers.

    No interval: the running comparison of a search has no per-sample predictions of the DNA model (the final
    one, Comparison, does).
    """
    other = (reference.metrics if reference else {}).get(f"{split}_r2")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (r2, other)):
        return None
    return (
        f"{split} R²: DNA model {r2:.3f} vs baseline {reference.chosen} {other:.3f} ({float(r2) - float(other):+.3f})"
    )


def load_saved(folder: str | os.PathLike) -> Reference | None:
    """FOLDER/baseline.json (what a search saved), or None if it is missing or unreadable."""
    try:
        saved = json.loads((Path(folder) / files.BASELINE_FILE).read_text(encoding="utf-8"))
        return Reference.from_dict(saved) if isinstance(saved, dict) else None
    except (OSError, ValueError, TypeError, AttributeError):  # missing, or damaged: then recomputed (it is cached)
        return None

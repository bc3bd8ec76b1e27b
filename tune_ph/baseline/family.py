"""The baseline family (k-mer profiles and read clusters × HGB / Ridge, trivial references), the member chosen
on val, and the folder it is written to."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tune_ph import files
from tune_ph.baseline import choices, members, otus, trivial
from tune_ph.baseline.choices import check_k
from tune_ph.baseline.kmer_models import check_models, run_baseline
from tune_ph.baseline.members import Baseline, BaselineError
from tune_ph.data.split import SplitRecord
from tune_ph.files import write_csv, write_json
from tune_ph.metrics import DEFAULT_TARGET, TEST_MAE, TEST_R2, TEST_R2_CI95, TEST_RMSE, VAL_R2

log = logging.getLogger(__name__)

# What the member beside the DNA model is chosen by: val R² (the same order as val MSE on one val split).
CHOSEN_BY = VAL_R2
SUMMARY_FILE = "summary.csv"


@dataclass(frozen=True)
class FamilySpec:
    """Which baselines to fit: k-mer lengths × models, read clustering (otu_k 0: none), trivial references."""

    ks: tuple[int, ...] = choices.DEFAULT_KS
    models: tuple[str, ...] = tuple(choices.MODELS)
    otu_k: int = choices.OTU_K
    clusters: tuple[int, ...] = choices.CLUSTER_CHOICES
    references: bool = True

    def __post_init__(self) -> None:
        for k in self.ks:
            check_k(k)
        check_models(self.models)
        if self.otu_k:
            check_k(self.otu_k)
        if self.otu_k and (not self.clusters or min(self.clusters) < 2):
            raise BaselineError(f"--clusters must be integers >= 2, got {list(self.clusters)}")
        if not (self.ks or self.otu_k or self.references):
            raise BaselineError("nothing to fit: give --k, or --otu-k above 0")


# The family fitted when none is named: `python -m tune_ph baseline`'s defaults, and the one beside the DNA model.
DEFAULT_FAMILY = FamilySpec()


def run_family(
    samples_df: pd.DataFrame,
    split: Mapping[str, Sequence[str]],
    spec: FamilySpec | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> dict[str, Baseline]:
    """Every baseline of the spec on the split, by name (references first, then k-mers by k, then read clusters).

    Each is fitted on train only and scored on val and test; the fitted ones are cached (see run_baseline).
    spec: DEFAULT_FAMILY when None.
    """
    spec = spec or DEFAULT_FAMILY
    out: dict[str, Baseline] = {}
    if spec.references:
        out.update(trivial.run_references(members.split_frames(samples_df, split)))
    for k in spec.ks:
        found = run_baseline(samples_df, split, k=k, models=spec.models, cache_dir=cache_dir, use_cache=use_cache)
        out.update({b.name: b for b in found.values()})
    if spec.otu_k:
        found = otus.run_otu_baseline(
            samples_df,
            split,
            k=spec.otu_k,
            clusters=spec.clusters,
            models=spec.models,
            cache_dir=cache_dir,
            use_cache=use_cache,
        )
        out.update({b.name: b for b in found.values()})
    return out


def choose_on_val(family: Mapping[str, Baseline]) -> str | None:
    """The name of the DNA-only member (k-mer profiles, read clusters) with the highest val R², or None when none
    has one (no val samples); a family of references only chooses among them.

    DNA-only, because the question is what the DNA model adds over what anyone could fit from the same reads: the
    study and environment means use labels a new sample may lack, and are shown beside it as references. Never
    test: the test split stays untouched until the chosen baseline is compared with the DNA model. (A member's val
    R² is slightly optimistic where val also tuned it, Ridge's alpha or the number of clusters.)
    """
    scored = [name for name, b in family.items() if math.isfinite(b.val_r2)]
    from_dna = [name for name in scored if choices.from_reads(family[name].metrics)]
    candidates = from_dna or scored
    return max(candidates, key=lambda name: family[name].val_r2) if candidates else None


def summary_table(family: Mapping[str, Baseline], chosen: str | None) -> pd.DataFrame:
    """One row per member: name, model, k, val R², test R² with its interval, RMSE, MAE, chosen on val."""
    rows = []
    for name, b in family.items():
        m = b.metrics
        lo, hi = m.get(TEST_R2_CI95) or (math.nan, math.nan)
        rows.append(
            {
                "name": name,
                "model": m.get("model"),
                "k": m.get("k"),
                VAL_R2: m.get(VAL_R2),
                TEST_R2: m.get(TEST_R2),
                "test_r2_ci95_lo": lo,
                "test_r2_ci95_hi": hi,
                TEST_RMSE: m.get(TEST_RMSE),
                TEST_MAE: m.get(TEST_MAE),
                "chosen_on_val": name == chosen,
            }
        )
    return pd.DataFrame(rows).astype({"k": "Int64"})  # a reference has no k: empty, not k=NaN as a float


def write_family(
    family: Mapping[str, Baseline],
    output_dir: str | os.PathLike,
    record: SplitRecord,
    chosen: str | None,
    target: str = DEFAULT_TARGET,
) -> dict[str, Path]:
    """OUTPUT_DIR/<name>/{metrics.json, test_predictions.csv, split.json} per member, OUTPUT_DIR/split.json and
    OUTPUT_DIR/summary.csv; returns the member folders. target: the predicted column, naming the CSVs' columns."""
    out = Path(output_dir)
    split = record.to_dict()
    folders = {}
    for name, b in family.items():
        folders[name] = b.write(out / name, target, split_by=record.split_by, chosen_on_val=name == chosen)
        write_json(folders[name] / files.SPLIT_FILE, split)
    write_json(out / files.SPLIT_FILE, split)
    write_csv(out / SUMMARY_FILE, summary_table(family, chosen))
    return folders

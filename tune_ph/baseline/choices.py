"""The baseline family's names and defaults (models, k-mer lengths, read clusters, data flags): no heavy imports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral
from typing import Any

from tune_ph.errors import InputError
from tune_ph.registry import Catalog


@dataclass(frozen=True)
class Model:
    """A baseline model by its name alone (its class is in baseline.regressors, registered there)."""

    name: str


# The models fit on every family's features (HistGradientBoosting and Ridge), known here without scikit-learn for
# the flags; registering a model class in baseline.regressors adds its name.
MODELS: Catalog[Model] = Catalog("baseline model", Model, Model("hgb"), Model("ridge"))
K_RANGE = (1, 8)  # 4^8 = 65,536 features is already far more than the samples of any pH dataset
# The family fitted when none is named: `python -m tune_ph baseline`'s defaults, and the one beside the DNA model.
DEFAULT_KS = (4, 6, 8)
OTU_K = 5  # k of the per-read profiles that are clustered into k-mer OTUs
CLUSTER_CHOICES = (256, 1024)  # numbers of read clusters, one chosen on val
# A trivial reference's metrics say features "none": it reads labels (study, environment), not the reads.
REFERENCE_FEATURES = "none"
# The references' names, in the order they are shown.
REFERENCE_NAMES = ("train-mean", "environment-mean", "study-mean")
# TrainConfig fields a baseline takes as flags: what decides the samples and the split.
DATA_FLAGS = (
    "dataset",
    "target",
    "target_range",
    "split_seed",
    "split_by",
    "test_fraction",
    "val_fraction",
    "skip_bad_rows",
    "cache_dir",
    "sequences",
    "metadata",
    "min_count",
    "rarefy",
)


class KmerError(InputError):
    """A k-mer length out of range."""


def check_k(k: int) -> int:
    """k itself if it is an integer in 1..8, else a KmerError naming --k."""
    if isinstance(k, bool) or not isinstance(k, Integral) or not K_RANGE[0] <= int(k) <= K_RANGE[1]:
        raise KmerError(f"--k must be an integer from {K_RANGE[0]} to {K_RANGE[1]}, got {k!r}")
    return int(k)


def from_reads(metrics: Mapping[str, Any]) -> bool:
    """Whether a baseline's metrics are those of a model of the reads alone (k-mer profiles, read clusters), not a
    reference that reads labels a new sample may lack."""
    return metrics.get("features") != REFERENCE_FEATURES

"""One fitted baseline: its record (metrics + test predictions), how it is scored, and its on-disk cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tune_ph import files, secret
from tune_ph.data import token_cache
from tune_ph.data.token_cache import default_cache_dir
from tune_ph.errors import InputError
from tune_ph.files import write_json
from tune_ph.metrics import DEFAULT_TARGET, TRAIN_N_SAMPLES, VAL_R2, bootstrap_ci, regression_metrics

log = logging.getLogger(__name__)

# The model's test_predictions.csv columns (report/evaluate.py) less those a single prediction per sample has no
# use for (predicted_ph_sd, n_sets): reports and the paired comparison read both files alike.
PREDICTION_COLUMNS = files.BASELINE_PREDICTION_COLUMNS
# Bump when a feature definition, a model's settings or the cached layout change: stale results are never reused.
CACHE_FORMAT = 2
_METRIC_SUFFIXES = ("_mse", "_rmse", "_mae", "_r2")


class BaselineError(InputError):
    """Bad input to the baseline (an unknown model, a split naming unknown samples, too few samples)."""


@dataclass
class Baseline:
    """One baseline fitted on train: its metrics.json content and its test predictions (PREDICTION_COLUMNS)."""

    name: str  # "kmer6-ridge", "otu5-hgb", "environment-mean": its folder in the baseline's output
    metrics: dict[str, Any]
    predictions: pd.DataFrame
    cached: bool = False
    cache_path: str | None = None

    def write(self, folder: str | os.PathLike, target: str = DEFAULT_TARGET, **extra: Any) -> Path:
        """FOLDER/metrics.json (with `extra` entries and the target's name) and FOLDER/test_predictions.csv (its
        columns named after the target); returns the folder."""
        folder = Path(folder)
        write_json(folder / files.METRICS_FILE, {**self.metrics, "target": target, **extra})
        files.write_predictions(folder / files.PREDICTIONS_FILE, self.predictions, target)
        return folder

    @property
    def seconds(self) -> float | None:
        """Its own time: its features (shared by the models fitted on them, counted for each), fit and predict;
        None for a reference (no fit)."""
        fit = self.metrics.get("fit_seconds")
        if fit is None:
            return None
        return float(fit) + float(self.metrics.get("profile_seconds", self.metrics.get("features_seconds", 0.0)))

    @property
    def val_r2(self) -> float:
        value = self.metrics.get(VAL_R2)
        return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else float("nan")


def split_frames(samples_df: pd.DataFrame, split: Mapping[str, Sequence[str]]) -> dict[str, pd.DataFrame]:
    """The samples of each part, in data order (sorted sample_id after load_samples, like the model's CSV)."""
    ids = samples_df["sample_id"].astype(str)
    known = set(ids)
    parts = {}
    for name in ("train", "val", "test"):
        wanted = [str(s) for s in split.get(name, [])]
        unknown = [s for s in wanted if s not in known]
        if unknown:
            raise BaselineError(f"the {name} split names {len(unknown)} sample(s) not in the data, e.g. {unknown[:3]}")
        parts[name] = samples_df.loc[ids.isin(set(wanted)).to_numpy()].reset_index(drop=True)
    if len(parts["train"]) < 2 or len(parts["test"]) < 1:
        raise BaselineError(
            f"the split has {len(parts['train'])} train and {len(parts['test'])} test sample(s); need at least 2 and 1"
        )
    return parts


def predictions_table(df: pd.DataFrame, predicted: np.ndarray) -> pd.DataFrame:
    """One row per sample of df: sample_id, study_name, true_ph, predicted_ph_mean, residual_mean, environment.

    The column names are those of the DNA model's test_predictions.csv, so reports read both (a baseline makes
    one prediction per sample, which is its own mean).
    """
    true = df["pH"].to_numpy(dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    return pd.DataFrame(
        {
            "sample_id": df["sample_id"].astype(str).to_numpy(),
            "study_name": df["study_name"].astype(str).to_numpy(),
            "true_ph": true,
            "predicted_ph_mean": predicted,
            "residual_mean": true - predicted,  # observed minus predicted, as evaluate.py
            "environment": df["environment"].astype(str).to_numpy(),
        },
        columns=list(PREDICTION_COLUMNS),
    )


def scored(name: str, parts: Mapping[str, pd.DataFrame], predicted: Mapping[str, np.ndarray], **info: Any) -> Baseline:
    """A Baseline from its val and test predictions: metrics (with test intervals) and the test table.

    info: what the metrics say about the baseline itself (model, k, its settings, timings), first in the file.
    """
    metrics: dict[str, Any] = {"name": name, **info}
    for part in ("val", "test"):
        true = parts[part]["pH"].to_numpy(dtype=np.float64)
        metrics.update(regression_metrics(true, predicted[part], part))
        metrics[f"{part}_n_samples"] = int(len(true))
    test_true = parts["test"]["pH"].to_numpy(dtype=np.float64)
    metrics.update(bootstrap_ci(test_true, predicted["test"], "test"))
    metrics[TRAIN_N_SAMPLES] = int(len(parts["train"]))
    return Baseline(name, metrics, predictions_table(parts["test"], predicted["test"]))


# ---------------------------------------------------------------- cache


HASH_KEY = "content_hash"  # in each cache entry: checked on every read, a mismatch is recomputed


def default_baseline_cache_dir() -> Path:
    """Inside the cache: $TUNE_PH_CACHE/baseline, else ~/.cache/tune_ph/baseline (beside the token cache)."""
    given = os.environ.get(token_cache.CACHE_ENV)
    return Path(given).expanduser() / "baseline" if given else default_cache_dir().parent / "baseline"


def cache_folder(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_baseline_cache_dir()


def cache_path(folder: Path, fingerprint: str, name: str, settings: Mapping[str, Any], split_id: str) -> Path:
    """Keyed by the dataset's content, the baseline (its name and settings) and the split's sample ids."""
    digest = hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=4).hexdigest()
    return folder / f"{fingerprint}-{name}-{digest}-s{split_id}-v{CACHE_FORMAT}.json"


def _entry_hash(entry: Mapping[str, Any], path: Path) -> str:
    """The MAC of a cache entry (its metrics and predictions, as JSON, and its file name) under this user's key."""
    content = files.json_safe({k: entry.get(k) for k in ("metrics", "test_predictions")})  # as written to disk
    payload = json.dumps(content, sort_keys=True, default=str)
    return secret.mac("tune_ph baseline cache v1", path.name.encode() + b"\x00" + payload.encode())


def _check_test_metrics(metrics: Mapping[str, Any], table: pd.DataFrame) -> None:
    """The cached test metrics are those of the cached test predictions (ValueError naming the first that is not)."""
    true = table[files.TRUE_PH].to_numpy(dtype=np.float64)
    predicted = table[files.PREDICTED_PH].to_numpy(dtype=np.float64)
    if not (np.isfinite(true).all() and np.isfinite(predicted).all()):
        raise ValueError("its test predictions are not all finite")
    for key, value in regression_metrics(true, predicted, split="test").items():
        cached = metrics.get(key)
        if not (isinstance(cached, (int, float)) and np.isclose(cached, value, rtol=1e-6, atol=1e-9, equal_nan=True)):
            raise ValueError(f"its {key} ({cached}) is not that of its test predictions ({value:.6g})")


def load_cached(path: Path, name: str) -> Baseline | None:
    """The cached baseline at path, or None when it is missing or unreadable (then it is recomputed)."""
    if not path.exists():
        return None
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if entry.get(HASH_KEY) != _entry_hash(entry, path):
            raise ValueError("its content does not match its hash (changed since it was written)")
        table = pd.DataFrame(entry["test_predictions"], columns=list(PREDICTION_COLUMNS))
        # JSON has no NaN: write_json stores an undefined metric as null.
        metrics = {
            k: (float("nan") if v is None and k.endswith(_METRIC_SUFFIXES) else v) for k, v in entry["metrics"].items()
        }
        _check_test_metrics(metrics, table)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:  # recomputed
        log.warning("ignoring unreadable baseline cache %s (%s); recomputing it", path, exc)
        return None
    log.info("baseline cache hit: %s (%s)", name, path)
    return Baseline(name, metrics, table, cached=True, cache_path=str(path))


def look_up(
    members_of: Mapping[str, tuple[str, Mapping[str, Any]]],
    *,
    fp: str,
    split_id: str,
    cache_dir: str | os.PathLike | None,
    use_cache: bool,
) -> tuple[dict[str, Baseline], list[tuple[str, Path]]]:
    """The cached baselines (by model) and the models still to fit, each with the path its result goes to.

    members_of: model -> (the baseline's name, its settings); fp, split_id: the data's fingerprint and the split's
    hash, the rest of the cache key.
    """
    folder = cache_folder(cache_dir)
    found: dict[str, Baseline] = {}
    todo: list[tuple[str, Path]] = []
    for model, (name, settings) in members_of.items():
        path = cache_path(folder, fp, name, settings, split_id)
        hit = load_cached(path, name) if use_cache else None
        if hit is not None:
            found[model] = hit
        else:
            todo.append((model, path))
    return found, todo


def store(result: Baseline, path: Path) -> None:
    """Cache a baseline as plain JSON (no pickle); a read-only cache folder is a warning, not a failure."""
    entry = {"metrics": result.metrics, "test_predictions": result.predictions.to_dict(orient="records")}
    entry[HASH_KEY] = _entry_hash(entry, path)
    try:
        write_json(path, entry)
        log.info("baseline cache written: %s", path)
    except OSError as exc:
        log.warning("could not write the baseline cache %s (%s); pass a writable cache_dir", path, exc)
    result.cache_path = str(path)

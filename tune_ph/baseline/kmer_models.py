"""k-mer baseline for pH: each sample's pooled k-mer profile → HGB / Ridge, on the DNA model's own split."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tune_ph import files
from tune_ph.baseline.kmers import MODELS, check_k, kmer_profiles
from tune_ph.config import TrainConfig
from tune_ph.data import token_cache
from tune_ph.data.sources import load_samples, split_samples
from tune_ph.data.tokens import default_cache_dir, fingerprint, split_hash
from tune_ph.errors import InputError
from tune_ph.files import write_csv, write_json
from tune_ph.metrics import regression_metrics

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = files.BASELINE_PREDICTION_COLUMNS
# Bump when the profile definition, a model's settings or the cached layout change: stale results are never reused.
CACHE_FORMAT = 1
HASH_KEY = "content_hash"  # in each cache entry: checked on every read, a mismatch is recomputed
SEED = 0
# Ridge is fitted on standardised profiles, so one grid suits every k (raw frequencies shrink as 4^-k).
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 13))
# scikit-learn's defaults (100 rounds, learning rate 0.1), with early stopping pinned off and a fixed seed.
HGB_PARAMS: dict[str, Any] = {"max_iter": 100, "learning_rate": 0.1, "early_stopping": False, "random_state": SEED}


class BaselineError(InputError):
    """Bad input to the baseline (an unknown model, a split naming unknown samples)."""


# ---------------------------------------------------------------- models


def _fit_hgb(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray):
    """HistGradientBoostingRegressor with fixed settings, fitted on train only.

    No early stopping: it would carve its own validation set out of the small train split (or need the val split,
    which then could not report an honest score). The val split is only scored.
    """
    model = HistGradientBoostingRegressor(**HGB_PARAMS).fit(x_train, y_train)
    return model, {"hgb_max_iter": HGB_PARAMS["max_iter"], "hgb_learning_rate": HGB_PARAMS["learning_rate"]}


def _fit_ridge(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray):
    """StandardScaler + Ridge; alpha is the one of RIDGE_ALPHAS with the lowest val MSE, the model fitted on train.

    So val metrics of Ridge are slightly optimistic (val chose alpha); test is untouched. Without a val split
    (val_fraction 0), RidgeCV picks alpha by leave-one-out on train instead.
    """
    if len(y_val) == 0:
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS)).fit(x_train, y_train)
        alpha = float(model[-1].alpha_)
        return model, {"ridge_alpha": alpha, "ridge_alpha_chosen_by": "RidgeCV leave-one-out on train"}
    # Standardise once; each alpha then costs one solve (dual form when features outnumber samples).
    scaler = StandardScaler().fit(x_train)
    xt, xv = scaler.transform(x_train), scaler.transform(x_val)
    val_mse = [float(np.mean((Ridge(alpha=a).fit(xt, y_train).predict(xv) - y_val) ** 2)) for a in RIDGE_ALPHAS]
    alpha = RIDGE_ALPHAS[int(np.argmin(val_mse))]
    if alpha in (RIDGE_ALPHAS[0], RIDGE_ALPHAS[-1]):
        log.warning(
            "ridge: the best alpha %.3g is at the edge of the grid %.3g..%.3g", alpha, RIDGE_ALPHAS[0], RIDGE_ALPHAS[-1]
        )
    model = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x_train, y_train)
    return model, {"ridge_alpha": alpha, "ridge_alpha_chosen_by": "val MSE"}


_FITTERS = {"hgb": _fit_hgb, "ridge": _fit_ridge}


# ---------------------------------------------------------------- cache


def default_baseline_cache_dir() -> Path:
    """Inside the cache: $TUNE_PH_CACHE/baseline, else ~/.cache/tune_ph/baseline (beside the token cache)."""
    given = os.environ.get(token_cache.CACHE_ENV)
    return Path(given).expanduser() / "baseline" if given else default_cache_dir().parent / "baseline"


def _model_settings(model: str) -> dict[str, Any]:
    # Part of the cache key, so changing a model's settings never returns results of the old ones.
    return dict(HGB_PARAMS) if model == "hgb" else {"alphas": list(RIDGE_ALPHAS)}


def _cache_path(folder: Path, fp: str, k: int, model: str, split_id: str) -> Path:
    settings = hashlib.blake2b(json.dumps(_model_settings(model), sort_keys=True).encode(), digest_size=4).hexdigest()
    return folder / f"{fp}-k{k}-{model}-{settings}-s{split_id}-v{CACHE_FORMAT}.json"


def _entry_hash(entry: Mapping[str, Any], path: Path) -> str:
    """The content hash of a cache entry (its metrics and predictions, as JSON), keyed by its file name."""
    content = files.json_safe({k: entry.get(k) for k in ("metrics", "test_predictions")})  # as written to disk
    payload = json.dumps(content, sort_keys=True, default=str)
    return hashlib.blake2b(payload.encode(), key=path.name.encode()[:64], digest_size=16).hexdigest()


def _load_cached(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if entry.get(HASH_KEY) != _entry_hash(entry, path):
            raise ValueError("its content does not match its hash (changed since it was written)")
        table = pd.DataFrame(entry["test_predictions"], columns=list(PREDICTION_COLUMNS))
        metrics = {
            k: (float("nan") if v is None and k.endswith(("_mse", "_rmse", "_mae", "_r2")) else v)
            for k, v in entry["metrics"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:  # recomputed
        log.warning("ignoring unreadable baseline cache %s (%s); recomputing it", path, exc)
        return None
    return {"metrics": metrics, "predictions": table, "cached": True, "cache_path": str(path)}


# ---------------------------------------------------------------- run


def predictions_table(df: pd.DataFrame, predicted: np.ndarray) -> pd.DataFrame:
    """One row per sample of df: sample_id, study_name, true_ph, predicted_ph_mean, residual_mean, environment.

    The DNA model's test_predictions.csv columns (files.PREDICTION_COLUMNS) less predicted_ph_sd and n_sets: a
    baseline makes one prediction from the whole sample, without read sets to count or to spread.
    """
    true = df["pH"].to_numpy(dtype=np.float64)
    return pd.DataFrame(
        {
            files.SAMPLE_ID: df["sample_id"].astype(str).to_numpy(),
            files.STUDY_NAME: df["study_name"].astype(str).to_numpy(),
            files.TRUE_PH: true,
            files.PREDICTED_PH: predicted.astype(np.float64),
            files.RESIDUAL: true - predicted,
            files.ENVIRONMENT: df["environment"].astype(str).to_numpy(),
        },
        columns=list(PREDICTION_COLUMNS),
    )


def _split_frames(samples_df: pd.DataFrame, split: Mapping[str, Sequence[str]]) -> dict[str, pd.DataFrame]:
    ids = samples_df["sample_id"].astype(str)
    known = set(ids)
    parts = {}
    for name in ("train", "val", "test"):
        wanted = [str(s) for s in split.get(name, [])]
        unknown = [s for s in wanted if s not in known]
        if unknown:
            raise BaselineError(f"the {name} split names {len(unknown)} sample(s) not in the data, e.g. {unknown[:3]}")
        # Rows in data order (sorted sample_id after load_samples), like the DNA model's predictions CSV.
        parts[name] = samples_df.loc[ids.isin(set(wanted)).to_numpy()].reset_index(drop=True)
    if len(parts["train"]) < 2 or len(parts["test"]) < 1:
        raise BaselineError(
            f"the split has {len(parts['train'])} train and {len(parts['test'])} test sample(s); need at least 2 and 1"
        )
    return parts


def run_baseline(
    samples_df: pd.DataFrame,
    split: Mapping[str, Sequence[str]],
    *,
    k: int = 6,
    models: Sequence[str] = ("hgb",),
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> dict[str, dict[str, Any]]:
    """Fit k-mer baselines on the train split, score val and test; results cached on disk.

    samples_df: cleaned samples (``tune_ph.data.sources.load_samples``); split: {"train"|"val"|"test": sample ids}, e.g.
    ``tune_ph.data.sources.split_samples(samples_df, ...)``. Each sample is one row of relative k-mer frequencies over
    all its reads. Models: "hgb" (HistGradientBoostingRegressor, fixed seed, no early stopping, val only scored)
    and "ridge" (standardised features, alpha chosen on val MSE from RIDGE_ALPHAS; RidgeCV on train without val).

    Returns {model: {"metrics": {val_*/test_* mse, rmse, mae, r2, n_samples, model, k, ...},
    "predictions": test DataFrame (PREDICTION_COLUMNS), "cached": bool, "cache_path": str}}.
    Results are cached as JSON under ``cache_dir`` (default: ``default_cache_dir().parent / "baseline"``), keyed
    by the dataset fingerprint, k, model (and its settings) and the split; a second call is a logged cache hit.
    """
    k = check_k(k)
    models = list(dict.fromkeys(models))  # dedupe, keep order
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise BaselineError(f"unknown model(s) {unknown or models}; use {', '.join(MODELS)}")
    parts = _split_frames(samples_df, split)
    fp = fingerprint(samples_df)
    split_id = split_hash(split)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_baseline_cache_dir()

    results: dict[str, dict[str, Any]] = {}
    todo = []
    for model in models:
        path = _cache_path(folder, fp, k, model, split_id)
        hit = _load_cached(path) if use_cache else None
        if hit is not None:
            log.info("baseline cache hit: %s k=%d (%s)", model, k, path)
            results[model] = hit
        else:
            todo.append((model, path))
    if not todo:
        return {m: results[m] for m in models}

    # Profile only the samples in the split, once for all models still to fit.
    t0 = time.perf_counter()
    names = ("train", "val", "test")
    every = kmer_profiles([reads for name in names for reads in parts[name]["sequences"]], k)
    bounds = np.cumsum([0] + [len(parts[name]) for name in names])
    x = {name: every[bounds[i] : bounds[i + 1]] for i, name in enumerate(names)}
    y = {name: parts[name]["pH"].to_numpy(dtype=np.float64) for name in names}
    profile_s = time.perf_counter() - t0
    log.info("%d-mer profiles of %d samples in %.1f s", k, len(every), profile_s)

    for model, path in todo:
        t0 = time.perf_counter()
        fitted, params = _FITTERS[model](x["train"], y["train"], x["val"], y["val"])
        metrics: dict[str, Any] = {"model": model, "k": k}
        pred = {name: fitted.predict(x[name]) if len(y[name]) else np.zeros(0) for name in ("val", "test")}
        for name in ("val", "test"):
            metrics.update(regression_metrics(y[name], pred[name], f"{name}_"))
            metrics[f"{name}_n_samples"] = int(len(y[name]))
        table = predictions_table(parts["test"], pred["test"])
        fit_s = time.perf_counter() - t0
        metrics.update(params)
        metrics.update(
            train_n_samples=int(len(y["train"])),
            n_features=4**k,
            fit_seconds=round(fit_s, 3),
            profile_seconds=round(profile_s, 3),
            dataset_fingerprint=fp,
            split_hash=split_id,
        )
        log.info("%s k=%d fitted in %.1f s", model, k, fit_s)
        entry = {"metrics": metrics, "test_predictions": table.to_dict(orient="records")}
        entry[HASH_KEY] = _entry_hash(entry, path)
        if use_cache:
            try:
                write_json(path, entry)
                log.info("baseline cache written: %s", path)
            except OSError as exc:  # a read-only cache folder should not stop the run
                log.warning("could not write the baseline cache %s (%s); pass a writable cache_dir", path, exc)
        results[model] = {"metrics": metrics, "predictions": table, "cached": False, "cache_path": str(path)}
    return {m: results[m] for m in models}


def write_outputs(results: Mapping[str, Mapping[str, Any]], output_dir: str | os.PathLike) -> dict[str, Path]:
    """Write OUTPUT_DIR/<model>/metrics.json and test_predictions.csv for each model; returns the model folders."""
    out = Path(output_dir)
    folders = {}
    for model, res in results.items():
        folder = out / model
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / files.METRICS_FILE, dict(res["metrics"]))
        write_csv(folder / files.PREDICTIONS_FILE, res["predictions"])
        folders[model] = folder
    return folders


# ---------------------------------------------------------------- the reference baseline of a TrainConfig

# The k-mer baseline shown beside the DNA model (train's log and metrics.json, search's console and baseline.json,
# the report): Ridge on 6-mers, the stronger of the two on real reads (realistic16s) and seconds to fit.
REFERENCE_MODEL = "ridge"
BASELINE_K = 6
# The report profiles a dataset of at most this many bases itself (realistic16s, 50 M bases: ~7 s on 2 cores).
BASELINE_MAX_BASES = 100_000_000


def baseline_command(cfg: TrainConfig) -> str:
    """The `python -m tune_ph baseline` command for the same data and split as a training config."""
    default = TrainConfig()
    args = ["python", "-m", "tune_ph", "baseline", "--dataset", cfg.dataset, "--k", str(BASELINE_K)]
    for name in ("split_seed", "test_fraction", "val_fraction"):
        if getattr(cfg, name) != getattr(default, name):
            args += [f"--{name.replace('_', '-')}", str(getattr(cfg, name))]
    if cfg.skip_bad_rows:
        args.append("--skip-bad-rows")
    return shlex.join(args)


def reference_baseline(
    train_config: TrainConfig | Mapping[str, Any] | None,
    *,
    local_only: bool = False,
    max_bases: int | None = None,
) -> dict[str, Any]:
    """The reference baseline for a TrainConfig: k-mer Ridge (k=BASELINE_K) on its dataset and split, cached.

    {"results": {"ridge": metrics}, "k", "command", "cached"}, or {"reason", "command"}: why there is none. Never
    raises (a failure is a warning). local_only: no hub dataset; max_bases: profile no more bases than this.
    """
    command = f"python -m tune_ph baseline --dataset DATASET --k {BASELINE_K}"
    if not train_config:
        return {"reason": "no training config", "command": command}
    try:
        cfg = train_config if isinstance(train_config, TrainConfig) else TrainConfig.from_dict(dict(train_config))
        command = baseline_command(cfg)
        if local_only and cfg.dataset != "demo" and not Path(cfg.dataset).expanduser().exists():
            return {"reason": f"dataset {cfg.dataset} is not a local path", "command": command}
        df = load_samples(cfg.dataset, skip_bad_rows=cfg.skip_bad_rows)
        bases = int(df["sequences"].map(lambda reads: sum(map(len, reads))).sum())
        if max_bases is not None and bases > max_bases:
            return {"reason": f"{bases / 1e6:.0f} M bases is too slow to profile here", "command": command}
        split = split_samples(df, seed=cfg.split_seed, test_fraction=cfg.test_fraction, val_fraction=cfg.val_fraction)
        found = run_baseline(df, split, k=BASELINE_K, models=(REFERENCE_MODEL,), cache_dir=cfg.cache_dir)
    except Exception as err:  # the comparison is optional; the caller shows why it is missing
        log.warning("k-mer baseline not computed: %s", err)
        return {"reason": f"it failed: {err}", "command": command}
    results = {m: r["metrics"] for m, r in found.items()}
    return {"results": results, "k": BASELINE_K, "command": command, "cached": found[REFERENCE_MODEL]["cached"]}


def _reference_metrics(b: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(((b or {}).get("results") or {}).get(REFERENCE_MODEL) or {})


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def baseline_line(b: Mapping[str, Any] | None) -> str:
    """One line: `k-mer baseline (ridge, k=6) on the same split: test R² 0.440, RMSE 0.712`, or why there is none."""
    m, b = _reference_metrics(b), b or {}
    if not m:
        return f"k-mer baseline: not computed ({b.get('reason') or '?'}); compute it with: {b.get('command')}"
    name = f"{REFERENCE_MODEL}, k={m.get('k', BASELINE_K)}"
    return (
        f"k-mer baseline ({name}) on the same split: test R² {_num(m.get('test_r2'))}, RMSE {_num(m.get('test_rmse'))}"
    )


def versus(r2: float | None, b: Mapping[str, Any] | None, split: str = "test") -> str | None:
    """`test R²: DNA model 0.512 vs k-mer baseline 0.440 (+0.072, ahead)`, or None without both numbers."""
    other = _reference_metrics(b).get(f"{split}_r2")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (r2, other)):
        return None
    diff = float(r2) - float(other)
    return (
        f"{split} R²: DNA model {r2:.3f} vs k-mer baseline {other:.3f} ({diff:+.3f}, {'' if diff > 0 else 'not '}ahead)"
    )


def load_saved(folder: str | os.PathLike) -> dict[str, Any] | None:
    """FOLDER/baseline.json (what a search saved), or None if it is missing or unreadable."""
    try:
        saved = json.loads((Path(folder) / files.BASELINE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, or damaged: then recomputed (it is cached)
        return None
    return saved if isinstance(saved, dict) else None


def reference_metric(b: Mapping[str, Any] | None, key: str) -> float | None:
    """One metric of the reference baseline (e.g. "val_r2"): a finite number, or None without one."""
    value = _reference_metrics(b).get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

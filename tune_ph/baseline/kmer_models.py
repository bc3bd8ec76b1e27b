"""k-mer baselines for pH: each sample's pooled k-mer profile → HGB / Ridge, on the DNA model's own split."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from tune_ph.baseline import choices, members, regressors
from tune_ph.baseline.choices import check_k
from tune_ph.baseline.kmers import kmer_profiles
from tune_ph.baseline.members import Baseline, BaselineError
from tune_ph.data.tokens import fingerprint, split_hash
from tune_ph.metrics import TEST_R2

log = logging.getLogger(__name__)

# From this k on, profiles are sparse rows (4^7 = 16,384 columns, most of them absent from a sample).
SPARSE_FROM_K = 7


def member_name(k: int, model: str) -> str:
    """`kmer6-ridge`: the baseline's name and its folder in the output."""
    return f"kmer{k}-{model}"


def check_models(models: Sequence[str]) -> list[str]:
    """The models deduplicated in order, or a BaselineError naming the unknown ones."""
    models = list(dict.fromkeys(models))
    unknown = [m for m in models if m not in choices.MODELS]
    if unknown or not models:
        raise BaselineError(f"unknown model(s) {unknown or models}; use {', '.join(choices.MODELS)}")
    return models


def run_baseline(
    samples_df: pd.DataFrame,
    split: Mapping[str, Sequence[str]],
    *,
    k: int = 6,
    models: Sequence[str] = ("hgb",),
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> dict[str, Baseline]:
    """Fit k-mer baselines on the train split, score val and test; results cached on disk.

    samples_df: cleaned samples (``tune_ph.data.sources.load_samples``); split: {"train"|"val"|"test": sample ids}, e.g.
    ``tune_ph.data.split.split_samples(samples_df, ...)``. Each sample is one row of relative k-mer frequencies over
    all its reads (sparse from k=SPARSE_FROM_K). Models: those registered in ``tune_ph.baseline.regressors``.

    Returns {model: Baseline} whose metrics hold val_*/test_* mse, rmse, mae, r2, n_samples, test_*_ci95, model,
    k and the model's settings. Results are cached as JSON under ``cache_dir`` (default:
    ``default_cache_dir().parent / "baseline"``), keyed by the dataset fingerprint, k, model (and its settings)
    and the split; a second call is a logged cache hit.
    """
    k = check_k(k)
    models = check_models(models)
    parts = members.split_frames(samples_df, split)
    wanted = {model: (member_name(k, model), regressors.MODELS[model].settings()) for model in models}
    fp, split_id = fingerprint(samples_df), split_hash(split)
    results, todo = members.look_up(wanted, fp=fp, split_id=split_id, cache_dir=cache_dir, use_cache=use_cache)
    if not todo:
        return {m: results[m] for m in models}

    # Profile only the samples in the split, once for all models still to fit.
    t0 = time.perf_counter()
    names = ("train", "val", "test")
    weights = [c for name in names for c in parts[name]["counts"]] if "counts" in samples_df.columns else None
    every = kmer_profiles(
        [reads for name in names for reads in parts[name]["sequences"]],
        k,
        sparse_rows=k >= SPARSE_FROM_K,
        weights=weights,
    )
    bounds = np.cumsum([0] + [len(parts[name]) for name in names])
    x = {name: every[bounds[i] : bounds[i + 1]] for i, name in enumerate(names)}
    y = {name: parts[name]["pH"].to_numpy(dtype=np.float64) for name in names}
    profile_s = time.perf_counter() - t0
    log.info("%d-mer profiles of %d samples in %.1f s", k, every.shape[0], profile_s)

    for model, path in todo:
        t0 = time.perf_counter()
        fitted, params = regressors.MODELS[model].fit(x["train"], y["train"], x["val"], y["val"])
        predicted = {name: fitted.predict(x[name]) if len(y[name]) else np.zeros(0) for name in ("val", "test")}
        fit_s = time.perf_counter() - t0
        result = members.scored(
            member_name(k, model),
            parts,
            predicted,
            features="kmer",
            model=model,
            k=k,
            **params,
            n_features=4**k,
            fit_seconds=round(fit_s, 3),
            profile_seconds=round(profile_s, 3),
            dataset_fingerprint=fp,
            split_hash=split_id,
        )
        log.info(
            "%s fitted in %.1f s: val R² %.3f, test R² %.3f",
            result.name,
            fit_s,
            result.val_r2,
            result.metrics[TEST_R2],
        )
        if use_cache:
            members.store(result, path)
        results[model] = result
    return {m: results[m] for m in models}

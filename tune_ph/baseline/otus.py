"""Read-clustering baselines ("k-mer OTUs"): each read's k-mer profile → MiniBatchKMeans cluster fitted on train
reads; a sample is its reads' cluster abundances → HGB / Ridge, the number of clusters chosen on val."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import MiniBatchKMeans

from tune_ph.baseline import choices, members, regressors
from tune_ph.baseline.choices import check_k
from tune_ph.baseline.kmer_models import check_models
from tune_ph.baseline.kmers import kmer_profiles
from tune_ph.baseline.members import Baseline, BaselineError
from tune_ph.data.tokens import fingerprint, split_hash
from tune_ph.metrics import regression_metrics

log = logging.getLogger(__name__)

SEED = regressors.SEED
# The clusters are fitted on at most this many train reads (a seeded draw): 16S reads of one genus are near
# copies, so more reads add time, not clusters.
MAX_FIT_READS = 60_000
# Random initial centres: k-means++ seeding of 1,024 centres took longer than all the rest (minutes on 2 cores) and
# scored no better on realistic16s (test R² 0.575 vs 0.584, val 0.627 vs 0.602).
KMEANS_PARAMS: dict[str, Any] = {"init": "random", "batch_size": 4096, "n_init": 1, "random_state": SEED}
# Reads are assigned to clusters this many at a time: memory stays bounded (reads x 4^k floats) at any size.
_ASSIGN_READS = 20_000


def member_name(k: int, model: str) -> str:
    """`otu5-hgb`: the baseline's name and its folder in the output."""
    return f"otu{k}-{model}"


def _settings(model: str, k: int, clusters: Sequence[int]) -> dict[str, Any]:
    return {
        "model": regressors.MODELS[model].settings(),
        "k": k,
        "clusters": list(clusters),
        "kmeans": KMEANS_PARAMS,
        "max_fit_reads": MAX_FIT_READS,
    }


def _fit_reads(train: pd.DataFrame) -> list[str]:
    reads = [r for sample in train["sequences"] for r in sample if r]
    if len(reads) <= MAX_FIT_READS:
        return reads
    keep = np.sort(np.random.default_rng(SEED).choice(len(reads), MAX_FIT_READS, replace=False))
    return [reads[i] for i in keep]


def _abundances(df: pd.DataFrame, k: int, fitted: Sequence[MiniBatchKMeans]) -> list[np.ndarray]:
    """Each sample's share of reads in each cluster (n_samples x n_clusters per clustering); a feature table's
    sequence counts as many reads as its count."""
    out = [np.zeros((len(df), km.n_clusters)) for km in fitted]
    owner = np.repeat(np.arange(len(df)), [len(s) for s in df["sequences"]])
    reads = [r for sample in df["sequences"] for r in sample]
    if "counts" in df.columns:
        read_weight = np.fromiter((c for sample in df["counts"] for c in sample), dtype=np.float64, count=len(reads))
    else:
        read_weight = np.ones(len(reads))
    for start in range(0, len(reads), _ASSIGN_READS):
        chunk = reads[start : start + _ASSIGN_READS]
        profiles = kmer_profiles([[r] for r in chunk], k, progress=False)
        valid = profiles.any(axis=1)  # a read without a valid k-mer belongs to no cluster
        rows = owner[start : start + len(chunk)][valid]
        weight = read_weight[start : start + len(chunk)][valid]
        for counts, km in zip(out, fitted):
            np.add.at(counts, (rows, km.predict(profiles[valid])), weight)
    return [counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) for counts in out]


def cluster_features(
    parts: Mapping[str, pd.DataFrame], k: int, clusters: Sequence[int]
) -> dict[int, dict[str, np.ndarray]]:
    """{n_clusters: {part: cluster abundances}}: clusters fitted on train reads only, every part assigned."""
    reads = _fit_reads(parts["train"])
    profiles = kmer_profiles([[r] for r in reads], k, progress=False)
    profiles = profiles[profiles.any(axis=1)]
    usable = [n for n in clusters if n <= len(profiles)]
    if len(usable) < len(clusters):
        log.warning(
            "%d train reads cannot make %s clusters; left out", len(profiles), sorted(set(clusters) - set(usable))
        )
    if not usable:
        raise BaselineError(
            f"read clustering needs at least {min(clusters)} train reads with a {k}-mer, got {len(profiles)}; "
            "use fewer clusters or skip it (--otu-k 0)"
        )
    fitted = []
    for n in usable:
        t0 = time.perf_counter()
        fitted.append(MiniBatchKMeans(n_clusters=n, **KMEANS_PARAMS).fit(profiles))
        log.info(
            "%d clusters of %d train reads' %d-mer profiles in %.1f s", n, len(profiles), k, time.perf_counter() - t0
        )
    del profiles
    features = {part: _abundances(df, k, fitted) for part, df in parts.items()}
    return {n: {part: features[part][i] for part in parts} for i, n in enumerate(usable)}


def run_otu_baseline(
    samples_df: pd.DataFrame,
    split: Mapping[str, Sequence[str]],
    *,
    k: int = choices.OTU_K,
    clusters: Sequence[int] = choices.CLUSTER_CHOICES,
    models: Sequence[str] = tuple(choices.MODELS),
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> dict[str, Baseline]:
    """Fit read-clustering baselines on the train split, score val and test; cached like the k-mer baselines.

    For each model the number of clusters with the best val R² among `clusters` is kept (without val samples,
    the largest); its metrics say which, and every candidate's val R².
    """
    k = check_k(k)
    models = check_models(models)
    clusters = sorted({int(n) for n in clusters})
    if not clusters or clusters[0] < 2:
        raise BaselineError(f"--clusters must be integers >= 2, got {clusters}")
    parts = members.split_frames(samples_df, split)
    wanted = {model: (member_name(k, model), _settings(model, k, clusters)) for model in models}
    fp, split_id = fingerprint(samples_df), split_hash(split)
    results, todo = members.look_up(wanted, fp=fp, split_id=split_id, cache_dir=cache_dir, use_cache=use_cache)
    if not todo:
        return {m: results[m] for m in models}

    t0 = time.perf_counter()
    features = cluster_features(parts, k, clusters)
    features_s = time.perf_counter() - t0
    y = {part: df["pH"].to_numpy(dtype=np.float64) for part, df in parts.items()}
    for model, path in todo:
        t0 = time.perf_counter()
        fits = {}
        for n, x in features.items():
            fitted, params = regressors.MODELS[model].fit(x["train"], y["train"], x["val"], y["val"])
            val = fitted.predict(x["val"]) if len(y["val"]) else np.zeros(0)
            fits[n] = (fitted, params, val, regression_metrics(y["val"], val)["r2"])
        by_val = {n: r2 for n, (_, _, _, r2) in fits.items()}
        scored_on_val = [n for n, r2 in by_val.items() if np.isfinite(r2)]
        chosen = max(scored_on_val, key=by_val.__getitem__) if scored_on_val else max(fits)
        fitted, params, val, _ = fits[chosen]
        predicted = {"val": val, "test": fitted.predict(features[chosen]["test"])}
        fit_s = time.perf_counter() - t0
        result = members.scored(
            member_name(k, model),
            parts,
            predicted,
            features="otu",
            model=model,
            k=k,
            n_clusters=chosen,
            n_clusters_chosen_by="val R²" if len(y["val"]) >= 2 else "the largest (no val samples)",
            val_r2_by_clusters={str(n): r2 for n, r2 in by_val.items()},
            **params,
            n_features=chosen,
            fit_seconds=round(fit_s, 3),
            features_seconds=round(features_s, 3),
            dataset_fingerprint=fp,
            split_hash=split_id,
        )
        log.info("%s (%d clusters) fitted in %.1f s: val R² %.3f", result.name, chosen, fit_s, result.val_r2)
        if use_cache:
            members.store(result, path)
        results[model] = result
    return {m: results[m] for m in models}

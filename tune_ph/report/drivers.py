"""Which learned OTUs drive a clusters model: permutation importance on val, each cluster's most central train read,
its share of low- and high-target samples' reads, its taxon (drivers.csv and drivers.png beside the test metrics)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hyena_dna import tokenizer
from tune_ph import files
from tune_ph.data.taxonomy import Taxonomy
from tune_ph.data.tokens import TokenizedDataset
from tune_ph.files import write_bytes
from tune_ph.metrics import DEFAULT_TARGET, target_names
from tune_ph.model.checkpoint import Checkpoint
from tune_ph.model.clusters import ReadClusters
from tune_ph.model.regressor import PhRegressor

log = logging.getLogger(__name__)

__all__ = ["cluster_drivers", "driver_columns", "write_drivers"]

TOP = 15  # clusters listed (the CSV and the plot)
REPEATS = 5  # shuffles of each cluster's abundances; the importance is their mean, its spread their sd
SEED = 0
_CHUNK = 8192  # read vectors assigned at once: memory stays at _CHUNK x clusters distances


def driver_columns(target: str = DEFAULT_TARGET) -> list[str]:
    """drivers.csv's columns; the abundance columns name the target (share_low_ph, share_high_temperature)."""
    slug = target_names(target).slug
    return [
        "rank",
        "cluster",
        "resolution",
        "fit",
        "importance",
        "importance_sd",
        f"share_low_{slug}",
        f"share_high_{slug}",
        "more_in",
        "train_reads",
        "central_read",
        "taxon",
        "taxon_reads",
    ]


def _all_vectors(model: PhRegressor, dataset: TokenizedDataset, vectors: torch.Tensor | None) -> torch.Tensor:
    """Every set's vector (S, D): the cached ones, else computed by the model's encoder or backbone."""
    if vectors is not None:
        return vectors.float()
    parts = []
    with torch.inference_mode():
        for start in range(0, len(dataset), 256):
            ids, mask = dataset.tokens_of(np.arange(start, min(start + 256, len(dataset))))
            parts.append(model.set_vectors(ids, mask).float())
    return torch.cat(parts) if parts else torch.zeros(0, 1)


def _split_sets(dataset: TokenizedDataset, split: str) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """A split's samples, their sets, and each set's owner among those samples (0..n-1)."""
    samples = dataset.sample_indices(split)
    sets = dataset.set_indices(split)
    owner = np.searchsorted(samples, dataset.set_sample[sets])
    return samples, sets, torch.from_numpy(owner.astype(np.int64))


def _assign(clusters: ReadClusters, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each vector's cluster at every resolution (N, levels) and its squared distance to it, in chunks."""
    labels, distances = [], []
    with torch.inference_mode():
        for start in range(0, len(vectors), _CHUNK):
            chunk = vectors[start : start + _CHUNK]
            label = clusters.assign(chunk)
            z = clusters.embed(chunk)
            distances.append(((z[:, None, :] - clusters.centroids[label]) ** 2).sum(-1))
            labels.append(label)
    return torch.cat(labels), torch.cat(distances)


def _permutation_importance(
    model: PhRegressor, features: torch.Tensor, true: np.ndarray, scale: float, shown: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each of the first `shown` features' rise in val RMSE (target units) when its values are shuffled among the
    samples: mean, sd (0 for a feature the head does not read, and for every feature from `shown` on)."""
    rng = np.random.default_rng(SEED)
    n, width = features.shape
    true_std = torch.as_tensor(true, dtype=torch.float64)

    def rmse(predicted: torch.Tensor) -> torch.Tensor:
        return ((predicted.double().reshape(-1, n) * scale - true_std) ** 2).mean(dim=1).sqrt()

    with torch.inference_mode():
        predicted = model.head.regress(features)
        base = float(rmse(predicted)[0])
        orders = torch.from_numpy(np.stack([rng.permutation(n) for _ in range(REPEATS)]))
        mean, sd = np.zeros(width), np.zeros(width)
        tiled, unshuffled = features.repeat(REPEATS, 1), predicted.repeat(REPEATS)
        # A head may say which inputs it reads (trees: those split on) and predict one input's change on its own
        # (trees: walking only the trees that split on it); one that does not is read on all and predicts anew.
        used = getattr(model.head, "used_features", None)
        regress_with = getattr(model.head, "regress_with", None)
        for j in used() if used is not None else range(width):
            if j >= shown:
                continue
            shuffled = features[orders, j].reshape(-1)
            moved = None if regress_with is None else regress_with(tiled, unshuffled, int(j), shuffled)
            if moved is None:
                column = tiled[:, j].clone()
                tiled[:, j] = shuffled
                moved = model.head.regress(tiled)
                tiled[:, j] = column
            rise = (rmse(moved) - base).numpy()
            mean[j], sd[j] = rise.mean(), rise.std(ddof=1) if REPEATS > 1 else 0.0
    return mean, sd


def _shares(clusters: ReadClusters, counts: torch.Tensor) -> np.ndarray:
    """Each sample's share of its reads in every cluster, within that cluster's resolution (n, features)."""
    blocks = torch.split(counts, clusters.blocks, dim=1)
    return torch.cat([b / b.sum(dim=1, keepdim=True).clamp_min(1) for b in blocks], dim=1).numpy()


def _read_of(dataset: TokenizedDataset, set_index: int) -> str:
    """A set's first read as text (the clusters recipe packs one read per set)."""
    ids = dataset.set_tokens(set_index)
    cut = np.flatnonzero(ids == tokenizer.SEP_ID)
    return tokenizer.decode(ids[: cut[0]] if len(cut) else ids)


def _taxon(dataset: TokenizedDataset, members: np.ndarray, taxonomy: Taxonomy | None) -> tuple[str, str]:
    """The most common taxon of a cluster's train reads and how many of those with a known taxon carry it (a feature
    table's set counts as the reads it stands for)."""
    if taxonomy is None or not len(taxonomy):
        return "", ""
    found: Counter[str] = Counter()
    for s in members:
        taxon = taxonomy.taxon_of(_read_of(dataset, int(s)))
        if taxon:
            found[taxon] += int(dataset.set_weight[s])
    if not found:
        return "(none of its reads in the taxonomy)", f"0 of {int(dataset.set_weight[members].sum())}"
    taxon, count = found.most_common(1)[0]
    return taxon, f"{count} of {sum(found.values())}"


def cluster_drivers(
    model: PhRegressor,
    checkpoint: Checkpoint,
    dataset: TokenizedDataset,
    vectors: torch.Tensor | None = None,
    *,
    taxonomy: Taxonomy | None = None,
    top: int = TOP,
) -> pd.DataFrame | None:
    """The `top` clusters whose shuffling on val raises the val RMSE most (driver_columns), or None for a model
    without clusters or a split without val samples."""
    clusters = model.aggregation.read_clusters
    if clusters is None or len(dataset.sample_indices("val")) < 2:
        return None
    model.eval()
    target = checkpoint.train_config.target
    every = _all_vectors(model, dataset, vectors)
    samples, sets, owner = _split_sets(dataset, "val")
    weights = dataset.weights_of(sets)  # a feature table's counts: the abundances the model itself reads
    with torch.inference_mode():
        chosen = every[torch.from_numpy(sets)]
        features = clusters.abundances(chosen, owner, len(samples), weights).float()
        shares = _shares(clusters, clusters.counts(chosen, owner, len(samples), weights))
    true = dataset.ph[samples].astype(np.float64)
    starts = np.cumsum([0, *clusters.sizes])
    # Clusters only: a topic has no reads of its own to show (its reads are those of the clusters it gathers), and
    # the topics' features come after the clusters'.
    # Standardised targets in, target units out: the head predicts (y - mean) / std.
    importance, spread = _permutation_importance(
        model, features, (true - checkpoint.target_mean), checkpoint.target_std, shown=int(starts[-1])
    )
    low = true <= np.median(true)
    train_sets = dataset.set_indices("train")
    labels, distance = _assign(clusters, every[torch.from_numpy(train_sets)])
    rows = []
    ranked = np.argsort(-importance[: starts[-1]], kind="stable")
    for rank, feature in enumerate(ranked[:top], start=1):
        level = int(np.searchsorted(starts, feature, side="right") - 1)
        in_cluster = (labels[:, level] == int(feature)).numpy()
        members = train_sets[in_cluster]
        central = int(members[np.argmin(distance[in_cluster, level].numpy())]) if len(members) else None
        low_share, high_share = shares[low, feature].mean(), shares[~low, feature].mean()
        taxon, taxon_reads = _taxon(dataset, members, taxonomy)
        rows.append(
            [
                rank,
                int(feature - starts[level]),
                clusters.sizes[level],
                level // len(clusters.levels) + 1,  # cluster_fits > 1: which clustering it is of
                importance[feature],
                spread[feature],
                low_share,
                high_share,
                ("high" if high_share > low_share else "low") + f" {target}",
                int(dataset.set_weight[members].sum()),  # a feature table's sets stand for their counts' reads
                _read_of(dataset, central) if central is not None else "",
                taxon,
                taxon_reads,
            ]
        )
    return pd.DataFrame(rows, columns=driver_columns(target))


def plot_drivers(table: pd.DataFrame, target: str = DEFAULT_TARGET) -> bytes:
    """A bar per cluster: its importance with its spread over shuffles, coloured by where it is more abundant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = table.iloc[::-1]
    several = "fit" in order and order["fit"].max() > 1  # cluster 17 of 1024 exists once per fit
    labels = [
        f"cluster {r.cluster} of {r.resolution}"
        + (f", fit {r.fit}" if several else "")
        + (f" · {str(r.taxon)[-40:]}" if isinstance(r.taxon, str) and r.taxon else "")
        for r in order.itertuples()
    ]
    colours = ["#d95f02" if str(m).startswith("high") else "#1b9e77" for m in order["more_in"]]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(order) + 1.4), dpi=100)
    try:
        ax.barh(labels, order["importance"], xerr=order["importance_sd"], color=colours)
        ax.set_xlabel(f"rise in val RMSE ({target}) when the cluster's abundances are shuffled")
        ax.set_title(f"Clusters that move the predictions most (orange: more in high-{target} samples, green: low)")
        ax.title.set_fontsize(9)
        fig.tight_layout()
        from io import BytesIO

        buf = BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()


def write_drivers(
    model: PhRegressor,
    checkpoint: Checkpoint,
    dataset: TokenizedDataset,
    out: str | Path,
    vectors: torch.Tensor | None = None,
    taxonomy: Taxonomy | None = None,
) -> pd.DataFrame | None:
    """out/drivers.csv and out/drivers.png for a clusters model (None, and nothing written, for another model)."""
    table = cluster_drivers(model, checkpoint, dataset, vectors, taxonomy=taxonomy)
    if table is None:
        return None
    out = Path(out)
    files.write_csv(out / files.DRIVERS_FILE, table)
    write_bytes(out / files.DRIVERS_PLOT, plot_drivers(table, checkpoint.train_config.target))
    log.info("the %d clusters that move the predictions most -> %s", len(table), out / files.DRIVERS_FILE)
    return table

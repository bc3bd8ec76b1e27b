"""Learned OTUs: read-set vectors clustered (PCA-whitened, MiniBatchKMeans on the train reads) at one or several
resolutions -> a sample's abundances per cluster; the state the clusters aggregation keeps in a checkpoint."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from tune_ph.errors import ConfigError
from tune_ph.model import abundance, streamed

# Read-to-centroid distances held at once while assigning (32 MB of float32): bounded whatever the number of reads.
ASSIGN_DISTANCES = 1 << 23


def level_sizes(clusters: int, levels: int) -> list[int]:
    """Cluster counts of each resolution, finest first: clusters, clusters/4, clusters/16, ... (at least 2 each)."""
    return [clusters // 4**i for i in range(levels) if clusters // 4**i >= 2]


# A keeper of a fit's pieces: once(what, settings, fit) -> fit()'s arrays, computed here or kept from an earlier fit.
FitPieces = Callable[[str, dict[str, int], Callable[[], dict[str, np.ndarray]]], Mapping[str, np.ndarray]]


def _compute(what: str, settings: dict[str, int], fit: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return fit()


def _embedded_rows(
    data: np.ndarray, rows: np.ndarray | None, count: int, center: np.ndarray, projection: np.ndarray
) -> np.ndarray:
    """The train rows in the clusters' space (count, dims), whitened and L2-normalised a chunk at a time."""
    embedded = np.empty((count, projection.shape[1]), dtype=np.float32)
    start = 0
    for part in streamed.row_chunks(data, rows):
        # float32 like embed(): the rows are placed as they will be assigned
        z = torch.from_numpy((part - center) @ projection)
        embedded[start : start + len(part)] = nn.functional.normalize(z, dim=-1).numpy()
        start += len(part)
    return embedded


def kmeans_centroids(embedded: np.ndarray, k: int, random_state: int) -> np.ndarray:
    """k MiniBatchKMeans centroids of the embedded rows: one resolution of one fit."""
    from sklearn.cluster import MiniBatchKMeans

    return (
        MiniBatchKMeans(k, batch_size=4096, n_init=1, max_iter=20, random_state=random_state)
        .fit(embedded)
        .cluster_centers_
    )


class ReadClusters(nn.Module):
    """Learned OTUs: read-set vectors -> PCA-whitened, L2-normalised -> the nearest of K centroids (MiniBatchKMeans fit
    on the train split's reads), at one or several resolutions -> a sample's abundances per cluster (CLR, relative
    or presence, each resolution a composition of its own).

    Which organism a read comes from is what says most about pH; a frozen encoder's vectors put reads of one
    organism near each other, so clusters of them stand for organisms (as OTUs do) and a sample is described by
    how many of its reads fall in each. Coarse resolutions gather related organisms (lineages), where the signal of
    real samples often lives; fine ones keep single organisms apart. The fit is kept as buffers: a checkpoint holds
    it like any weight.

    Topics (``topics`` > 0) gather the finest clusters by co-abundance instead of by sequence: an LDA topic model of
    the train samples' counts. Reads of one lineage rise and fall together across samples however diverse their
    sequences are, so a topic stands for a lineage (or a niche) that k-means on a random read hash cannot see. Each
    finest cluster's reads are shared among the topics by P(topic | cluster), so a sample's topic counts are its
    cluster counts times a fixed matrix: one more composition beside the resolutions, transformed the same way.

    Fits (``fits`` > 1) cluster the same whitened vectors several times over, each fit with its own k-means and
    topic seed, side by side. One partition of a random read hash cuts lineages at random places, and with a few
    hundred train samples which cut a head learns from is luck (test R² of single fits ranged 0.61-0.73 on
    realph16s); several cuts at once let the head see past each one's accidents, as bagging does.
    """

    def __init__(
        self,
        width: int,
        n_clusters: int,
        dims: int,
        levels: int = 1,
        transform: str = "clr",
        topics: int = 0,
        fits: int = 1,
    ):
        super().__init__()
        if dims > width:
            raise ConfigError("cluster_dims", f"cluster_dims {dims} exceeds the read vectors' width {width}")
        if transform not in abundance.TRANSFORMS:
            raise ConfigError("abundance", f"unknown abundance transform {transform!r}")
        if fits < 1:
            raise ConfigError("cluster_fits", f"cluster_fits must be at least 1, got {fits}")
        self.fits = fits
        self.levels = level_sizes(n_clusters, levels)
        # One block per clustering: every resolution of the first fit, then of the next (the layout of older
        # checkpoints when there is one fit).
        self.sizes = self.levels * fits
        self.transform = transform
        self.register_buffer("center", torch.zeros(width))
        self.register_buffer("projection", torch.zeros(width, dims))
        # Every resolution's centroids in one buffer, finest first (one resolution: the layout of older checkpoints).
        self.register_buffer("centroids", torch.zeros(sum(self.sizes), dims))
        self.topics = topics
        if topics:  # only then: a model without topics keeps the layout of older checkpoints
            # P(topic | cluster) of every fit's finest clusters: (fits x topics, finest clusters), the rows of one
            # fit after another, each fit's columns summing to 1.
            self.register_buffer("topic_weights", torch.zeros(fits * topics, self.levels[0]))

    @property
    def blocks(self) -> list[int]:
        """Widths of the compositions a sample's counts hold: every fit's resolutions, then every fit's topics."""
        return self.sizes + [self.topics] * (self.fits if self.topics else 0)

    @property
    def n_features(self) -> int:
        """Abundances per sample: one per cluster of every resolution, and one per topic."""
        return sum(self.blocks)

    def embed(self, vectors: torch.Tensor) -> torch.Tensor:
        """Set vectors (N, D) -> the space the clusters live in (N, dims)."""
        return nn.functional.normalize((vectors.float() - self.center) @ self.projection, dim=-1)

    def fit(self, vectors: torch.Tensor | np.ndarray, seed: int, rows: np.ndarray | None = None) -> None:
        """Fit the projection and every resolution's centroids on train read vectors (N, D), or on their rows
        ``rows``."""
        self.load_fit(self.fit_arrays(vectors, seed, rows))

    def fit_arrays(
        self,
        vectors: torch.Tensor | np.ndarray,
        seed: int,
        rows: np.ndarray | None = None,
        once: FitPieces | None = None,
    ) -> dict[str, np.ndarray]:
        """What ``fit`` keeps, as arrays (center, projection, centroids), without keeping it: scikit-learn's
        whitened PCA (streamed.whitened_pca, to float error) and MiniBatchKMeans on train read vectors (N, D), or
        on the rows ``rows`` of them.

        once(what, settings, fit): where a caller keeps each piece for other fits (embeddings.fit_once in a search):
        the PCA ("pca", no settings) and each k-means ("kmeans", {"clusters": k, "seed": s}) depend on the vectors,
        the rows and the dimensions only, so a fit of one resolution takes the finest k-means of a fit of four, and
        one fit takes the first of five. Pieces it is handed are not computed again (the rows are not even embedded
        when every k-means is handed).

        The vectors are read a chunk at a time and may be the embedding cache's memory map: memory holds one
        chunk and the embedded rows (N, dims), never the train rows' vectors (N, D)."""
        data = vectors.detach().cpu().numpy() if isinstance(vectors, torch.Tensor) else vectors
        count = len(data) if rows is None else len(rows)
        dims = self.centroids.shape[1]
        if count < self.levels[0]:
            raise ConfigError(
                "clusters", f"{self.levels[0]} clusters need at least as many train read sets, got {count}"
            )
        once = once or _compute
        pca = once("pca", {}, lambda: dict(zip(("center", "projection"), streamed.whitened_pca(data, dims, rows))))
        center, projection = pca["center"], pca["projection"]

        @functools.cache
        def embedded() -> np.ndarray:  # the rows in the clusters' space, once, when a k-means needs them
            return _embedded_rows(data, rows, count, center, projection)

        def kmeans(k: int, random_state: int) -> dict[str, np.ndarray]:
            return {"centroids": kmeans_centroids(embedded(), k, random_state)}

        fitted = [
            once("kmeans", {"clusters": k, "seed": seed + fit}, lambda k=k, s=seed + fit: kmeans(k, s))["centroids"]
            for fit in range(self.fits)
            for k in self.levels
        ]
        return {"center": center, "projection": projection, "centroids": np.concatenate(fitted).astype(np.float32)}

    def load_fit(self, arrays: dict[str, np.ndarray]) -> None:
        """Keep a fit (fit_arrays' arrays) in the buffers; arrays of other shapes are refused."""
        for name in ("center", "projection", "centroids"):
            buffer = getattr(self, name)
            value = torch.as_tensor(np.asarray(arrays[name]), dtype=buffer.dtype)
            if value.shape != buffer.shape:
                raise ValueError(f"a clusters fit's {name} is {tuple(value.shape)}, not {tuple(buffer.shape)}")
            buffer.copy_(value)

    def assign(self, vectors: torch.Tensor) -> torch.Tensor:
        """The nearest centroid of each set vector at every resolution of every fit (N, len(sizes)), as rows of
        ``centroids``."""
        squared = (self.centroids**2).sum(-1)
        # A chunk of rows at a time: the distances to every centroid of five fits (6,800) for a split's 155,000
        # reads were 4 GB at once, and 27 GB at a million reads.
        step = max(1, ASSIGN_DISTANCES // len(self.centroids))
        labels = []
        for first in range(0, len(vectors), step):
            distance = squared - 2 * self.embed(vectors[first : first + step]) @ self.centroids.T
            out, start = [], 0
            for size in self.sizes:
                out.append(distance[:, start : start + size].argmin(dim=-1) + start)
                start += size
            labels.append(torch.stack(out, dim=1))
        return torch.cat(labels) if labels else vectors.new_zeros((0, len(self.sizes)), dtype=torch.long)

    def counts(
        self, vectors: torch.Tensor, owner: torch.Tensor, num_samples: int, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Each sample's read count in every cluster of every resolution, then in every topic (num_samples,
        n_features); weights (N,): the reads each set stands for (a feature table's counts), else 1 each."""
        counts = vectors.new_zeros((num_samples, sum(self.sizes)), dtype=torch.float32)
        # fp32 whatever the caller's autocast (bf16 on CUDA in predict): a read lands in the same cluster in training,
        # validation and the test evaluation.
        with torch.autocast(counts.device.type, enabled=False):
            labels = self.assign(vectors)
            rows = owner.unsqueeze(1).expand_as(labels)
            ones = counts.new_ones(labels.shape)
            added = ones if weights is None else ones * weights.to(counts).unsqueeze(1)
            counts.index_put_((rows.reshape(-1), labels.reshape(-1)), added.reshape(-1), accumulate=True)
            if self.topics:
                topics = [fine @ weights.T for fine, weights in zip(self._finest(counts), self._per_fit_topics())]
                counts = torch.cat([counts, *topics], dim=1)
        return counts

    def counts_of_rows(
        self,
        vectors: torch.Tensor | np.ndarray,
        rows: np.ndarray,
        owner: torch.Tensor,
        num_samples: int,
        weights: torch.Tensor | None = None,
        chunk: int = streamed.CHUNK_ROWS,
    ) -> torch.Tensor:
        """counts() of the rows ``rows`` of vectors (all set vectors: the embedding cache's memory map, say), with
        owner and weights given per row of ``rows``. Read a chunk of rows at a time, so memory holds one chunk and
        never the rows' vectors (0.5 GB at 10^6 reads): counts, topics included, add up over reads."""
        data = vectors.detach().cpu().numpy() if isinstance(vectors, torch.Tensor) else vectors
        device = self.centroids.device
        total = torch.zeros(num_samples, self.n_features, device=device)
        start = 0
        with torch.no_grad():
            for part in streamed.row_chunks(data, rows, chunk):
                stop = start + len(part)
                part_weights = None if weights is None else weights[start:stop].to(device)
                total += self.counts(
                    torch.from_numpy(part).to(device), owner[start:stop].to(device), num_samples, part_weights
                )
                start = stop
        return total

    def _finest(self, counts: torch.Tensor) -> list[torch.Tensor]:
        """Every fit's finest-resolution block of counts (samples, finest clusters)."""
        width = sum(self.levels)
        return [counts[:, fit * width : fit * width + self.levels[0]] for fit in range(self.fits)]

    def _per_fit_topics(self) -> list[torch.Tensor]:
        return list(torch.split(self.topic_weights, self.topics))

    def fit_topics(self, counts: torch.Tensor, seed: int, fits: list[int] | None = None) -> np.ndarray:
        """P(topic | cluster) (fits x topics, finest clusters) from the train samples' counts (samples,
        n_features): scikit-learn's LDA (batch variational Bayes) on each fit's finest resolution's counts. fits:
        only these fits' rows (a fit's topics depend on its finest clusters and its seed alone, so a search shares
        them like the k-means)."""
        from sklearn.decomposition import LatentDirichletAllocation

        if len(counts) < 2:
            raise ConfigError("topics", f"topics need at least 2 train samples, got {len(counts)}")
        fitted = []
        for fit, fine in enumerate(self._finest(counts)):
            if fits is not None and fit not in fits:
                continue
            lda = LatentDirichletAllocation(self.topics, learning_method="batch", max_iter=50, random_state=seed + fit)
            components = lda.fit(fine.detach().double().cpu().numpy()).components_
            fitted.append(components / components.sum(axis=0, keepdims=True))
        return np.concatenate(fitted).astype(np.float32)

    def load_topics(self, weights: np.ndarray) -> None:
        """Keep fit_topics' matrix; one of another shape is refused."""
        value = torch.as_tensor(np.asarray(weights), dtype=torch.float32)
        if value.shape != self.topic_weights.shape:
            raise ValueError(f"a topics fit is {tuple(value.shape)}, not {tuple(self.topic_weights.shape)}")
        self.topic_weights.copy_(value)

    def abundances(
        self,
        vectors: torch.Tensor | np.ndarray,
        owner: torch.Tensor,
        num_samples: int,
        weights: torch.Tensor | None = None,
        rows: np.ndarray | None = None,
    ) -> torch.Tensor:
        """Each sample's transformed abundances (num_samples, n_features), each resolution transformed on its own.
        rows: the sets to count among all of ``vectors`` (read a chunk at a time, see counts_of_rows: pass the
        memory-mapped array, not a tensor of it, so that its pages are dropped chunk by chunk); None: all."""
        if rows is None:
            counts = self.counts(vectors, owner, num_samples, weights)
        else:
            counts = self.counts_of_rows(vectors, rows, owner, num_samples, weights)
        blocks = torch.split(counts, self.blocks, dim=1)
        return torch.cat([abundance.transform(self.transform, block) for block in blocks], dim=1)

    def extra_repr(self) -> str:
        return f"sizes={self.levels}, fits={self.fits}, topics={self.topics}, transform={self.transform!r}"

"""Aggregations: a sample's set vectors -> one prediction through the head, each a registered class (AGGREGATIONS).

An aggregation is one class here (or anywhere, registered with ``@AGGREGATIONS.register``): its name, the
TrainConfig fields it reads (``fields``), what the config must know of it (``frozen_only``, ``gives_features``:
tune_ph.config.Part), and its state, its submodules and buffers, saved under ``aggregation.`` in a checkpoint.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from tune_ph.config import AGGREGATIONS as NAMES
from tune_ph.config import TrainConfig
from tune_ph.model.clusters import ReadClusters, level_sizes
from tune_ph.registry import Registry

# Attention's hidden width is half the set vector's, never below this (as the heads' layers).
MIN_WIDTH = 16


def segment_mean(
    values: torch.Tensor, owner: torch.Tensor, num_groups: int, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of the rows of values (N, ...) that share an owner (N,) in 0..num_groups-1 -> (num_groups, ...);
    weights (N,): a weighted mean (a feature table's counts: a sequence read 90 times counts 90 times)."""
    shape = (-1, *([1] * (values.dim() - 1)))
    if weights is None:
        total = values.new_zeros((num_groups, *values.shape[1:])).index_add_(0, owner, values)
        count = torch.bincount(owner, minlength=num_groups).clamp(min=1).to(values.dtype)
        return total / count.view(shape)
    w = weights.to(values)
    total = values.new_zeros((num_groups, *values.shape[1:])).index_add_(0, owner, values * w.view(shape))
    count = values.new_zeros(num_groups).index_add_(0, owner, w).clamp(min=torch.finfo(values.dtype).tiny)
    return total / count.view(shape)


class Aggregation(nn.Module):
    """A sample's set vectors (N, D), owner (N,) -> predictions (num_samples,), invariant to the order of its sets.

    Set vectors of a frozen backbone differ between samples by a sliver of their size; a head on raw vectors sees a
    near-constant input and learns nothing. Standardising each feature over the sets (running statistics at
    evaluation) is what lets it learn. Only for a frozen backbone: while the backbone trains, the running statistics
    lag its moving vectors and evaluation swings wildly (val R² -60 on the demo).
    """

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]] = ()  # the TrainConfig fields it reads besides `aggregation`
    frozen_only: ClassVar[str | None] = None
    gives_features: ClassVar[bool] = False

    def __init__(self, width: int, standardise: bool = False):
        super().__init__()
        self.norm: nn.Module = nn.BatchNorm1d(width, affine=False) if standardise else nn.Identity()

    @classmethod
    def from_config(cls, cfg: TrainConfig, width: int) -> Aggregation:
        """The aggregation cfg declares on set vectors `width` wide."""
        return cls(width, standardise=cfg.freeze_backbone)

    @classmethod
    def head_inputs(cls, cfg: TrainConfig, width: int) -> int:
        """How many features the head reads per sample: a set vector's by default."""
        return width

    @classmethod
    def numel(cls, cfg: TrainConfig, width: int) -> int:
        """Its own weights and buffers (a memory estimate made before it is built)."""
        return 0

    @classmethod
    def sized_by(cls, cfg: TrainConfig) -> tuple[str, int] | None:
        """The config field that sizes the head's inputs, and its value, when not the set vectors' width."""
        return None

    @classmethod
    def state_bound(cls, cfg: TrainConfig, d_model: int) -> tuple[int, int]:
        """(widest input, fitted dimensions) a checkpoint of it may hold, to bound a file's size before reading it."""
        return d_model, 0

    @property
    def read_clusters(self) -> ReadClusters | None:
        """Clusters to fit on the train reads' vectors before training (None: nothing to fit)."""
        return None

    def features(
        self,
        vectors: torch.Tensor | np.ndarray,
        owner: torch.Tensor,
        num_samples: int,
        weights: torch.Tensor | None = None,
        rows: np.ndarray | None = None,
    ) -> torch.Tensor:
        """The fixed features (num_samples, F) a head grown once reads (only where gives_features); weights (N,):
        the reads each set stands for; rows: the sets to read among all of ``vectors`` (owner and weights given
        per row), None: every one."""
        raise TypeError(f"aggregation {self.name!r} gives no fixed features per sample")

    def standardised(self, vectors: torch.Tensor) -> torch.Tensor:
        if self.training and vectors.shape[0] < 2:  # batch statistics need two sets
            self.norm.eval()
            vectors = self.norm(vectors)
            self.norm.train()
            return vectors
        return self.norm(vectors)

    def combine(
        self,
        vectors: torch.Tensor,
        owner: torch.Tensor,
        num_samples: int,
        head: nn.Module,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Standardised set vectors -> predictions (num_samples,); weights (N,) as forward's."""
        raise NotImplementedError

    def forward(
        self,
        vectors: torch.Tensor,
        owner: torch.Tensor,
        num_samples: int,
        head: nn.Module,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """vectors (N, D) of sets, owner (N,) their sample in 0..num_samples-1 -> predictions (num_samples,).

        weights (N,): the reads each set stands for (a feature table's counts): cluster abundances count them, means
        are weighted by them, attention scales each set's weight by them; None: 1 each."""
        return self.combine(self.standardised(vectors), owner, num_samples, head, weights)

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


AGGREGATIONS: Registry[type[Aggregation]] = Registry(NAMES)


@AGGREGATIONS.register
class MeanPrediction(Aggregation):
    """The mean of per-set predictions (the published recipe; learns fastest from scratch)."""

    name = "mean_prediction"

    def combine(
        self,
        vectors: torch.Tensor,
        owner: torch.Tensor,
        num_samples: int,
        head: nn.Module,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return segment_mean(head.regress(vectors).float(), owner, num_samples, weights)


@AGGREGATIONS.register
class MeanVector(Aggregation):
    """The head on a sample's mean set vector."""

    name = "mean"

    def combine(
        self,
        vectors: torch.Tensor,
        owner: torch.Tensor,
        num_samples: int,
        head: nn.Module,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return head.regress(segment_mean(vectors, owner, num_samples, weights))


@AGGREGATIONS.register
class Attention(Aggregation):
    """The head on a gated-attention weighted mean of the set vectors (Ilse, Tomczak & Welling 2018,
    "Attention-based deep multiple instance learning")."""

    name = "attention"

    def __init__(self, width: int, standardise: bool = False):
        super().__init__(width, standardise)
        hidden = max(width // 2, MIN_WIDTH)
        self.attention_V = nn.Linear(width, hidden)  # the paper's V (tanh branch)
        self.attention_U = nn.Linear(width, hidden)  # the paper's U (sigmoid gate)
        self.attention_w = nn.Linear(hidden, 1)

    @classmethod
    def numel(cls, cfg: TrainConfig, width: int) -> int:
        return 2 * width * width + 2 * width + 1  # the two projections, roughly

    def weights(self, vectors: torch.Tensor, owner: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Attention weight of each set within its sample (N,), summing to 1 per sample."""
        score = self.attention_w(torch.tanh(self.attention_V(vectors)) * torch.sigmoid(self.attention_U(vectors)))
        score = score.squeeze(-1).float()
        # Softmax within each sample: subtract the sample's max for stability, then normalise by its sum.
        top = score.new_full((num_samples,), -torch.inf).scatter_reduce(0, owner, score, reduce="amax")
        exp = torch.exp(score - top[owner])
        return exp / exp.new_zeros(num_samples).index_add_(0, owner, exp)[owner]

    def combine(
        self,
        vectors: torch.Tensor,
        owner: torch.Tensor,
        num_samples: int,
        head: nn.Module,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attention = self.weights(vectors, owner, num_samples).to(vectors.dtype)
        if weights is not None:  # a set standing for n reads weighs as n copies of it would
            scaled = attention * weights.to(attention)
            total = scaled.new_zeros(num_samples).index_add_(0, owner, scaled)
            attention = scaled / total[owner].clamp(min=torch.finfo(scaled.dtype).tiny)
        pooled = vectors.new_zeros((num_samples, vectors.shape[1])).index_add_(0, owner, vectors * attention[:, None])
        return head.regress(pooled)


@AGGREGATIONS.register
class Clusters(Aggregation):
    """Learned OTUs (clusters.ReadClusters): the head reads a sample's abundances per cluster, not a set vector.
    The clusters standardise in their own (whitened) space, so the set vectors are not standardised."""

    name = "clusters"
    fields = ("clusters", "cluster_dims", "cluster_levels", "cluster_fits", "topics", "abundance")
    frozen_only = (
        "clusters are fit once on a frozen backbone's read vectors; set freeze_backbone=True "
        "(--freeze-backbone) or choose another aggregation"
    )
    gives_features = True

    def __init__(self, width: int, clusters: ReadClusters):
        super().__init__(width, standardise=False)
        self.clusters = clusters

    @classmethod
    def from_config(cls, cfg: TrainConfig, width: int) -> Clusters:
        clusters = ReadClusters(
            width, cfg.clusters, cfg.cluster_dims, cfg.cluster_levels, cfg.abundance, cfg.topics, cfg.cluster_fits
        )
        return cls(width, clusters)

    @classmethod
    def head_inputs(cls, cfg: TrainConfig, width: int) -> int:
        return cfg.cluster_fits * (sum(level_sizes(cfg.clusters, cfg.cluster_levels)) + cfg.topics)

    @classmethod
    def numel(cls, cfg: TrainConfig, width: int) -> int:
        sizes = level_sizes(cfg.clusters, cfg.cluster_levels)
        per_fit = sum(sizes) * cfg.cluster_dims + cfg.topics * sizes[0]
        return width + width * cfg.cluster_dims + cfg.cluster_fits * per_fit

    @classmethod
    def sized_by(cls, cfg: TrainConfig) -> tuple[str, int] | None:
        return "clusters", cfg.clusters

    @classmethod
    def state_bound(cls, cfg: TrainConfig, d_model: int) -> tuple[int, int]:
        # The head reads every fit's clusters and topics: its inputs, not the clusters alone, size it.
        return max(d_model, cls.head_inputs(cfg, d_model)), cfg.cluster_dims

    @property
    def read_clusters(self) -> ReadClusters:
        return self.clusters

    def features(
        self,
        vectors: torch.Tensor | np.ndarray,
        owner: torch.Tensor,
        num_samples: int,
        weights: torch.Tensor | None = None,
        rows: np.ndarray | None = None,
    ) -> torch.Tensor:
        return self.clusters.abundances(vectors, owner, num_samples, weights, rows)

    def forward(
        self,
        vectors: torch.Tensor,
        owner: torch.Tensor,
        num_samples: int,
        head: nn.Module,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return head.regress(self.features(vectors, owner, num_samples, weights))

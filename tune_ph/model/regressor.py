"""The task model: HyenaDNA per read set -> pooled set vectors -> aggregation per sample -> RegressionHead."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hyena_dna import CheckpointKeyError, HyenaDNAConfig, HyenaDNAModel, PretrainedNotFoundError
from hyena_dna.model import HyenaFilter
from tune_ph import files
from tune_ph.config import AGGREGATIONS, MLP_HEADS, POOLINGS, TrainConfig
from tune_ph.errors import ConfigError, InputError
from tune_ph.model import abundance
from tune_ph.model.checkpoint import Checkpoint, check_carried, check_consistent, check_values
from tune_ph.model.read_encoders import make_encoder, pool_hidden
from tune_ph.model.tree_head import TreeHead

log = logging.getLogger(__name__)

# Number of hidden layers of each MLP architecture; every layer halves the width (floored, see _widths).
_HIDDEN_LAYERS = {"linear": 0, "mlp2": 1, "mlp2_ln": 1, "mlp3": 2, "mlp4": 3, "mlp5": 4}
_MIN_WIDTH = 16


def _widths(d_model: int, n_hidden: int) -> list[int]:
    # Deep heads on a small d_model would otherwise shrink to a handful of units; never go below 16
    # (or below d_model itself when the model is smaller than that).
    floor = min(_MIN_WIDTH, d_model)
    return [max(d_model // 2**k, floor) for k in range(1, n_hidden + 1)]


class RegressionHead(nn.Module):
    """Masked pooling followed by a linear layer or a small MLP; returns one value per sequence."""

    def __init__(self, d_model: int, architecture: str = "mlp2", pooling: str = "pool", dropout: float = 0.1):
        super().__init__()
        if architecture not in MLP_HEADS:
            raise ValueError(f"unknown head architecture {architecture!r}; choose one of: {', '.join(MLP_HEADS)}")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
        self.architecture = architecture
        self.pooling = pooling
        layers: list[nn.Module] = []
        if architecture == "mlp2_ln":
            layers.append(nn.LayerNorm(d_model))
        width = d_model
        for hidden in _widths(d_model, _HIDDEN_LAYERS[architecture]):
            # nn.Dropout refuses a probability outside [0, 1] itself; TrainConfig narrows it to [0, 1).
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden (B, L, D), mask (B, L) bool with True at real tokens -> set vectors (B, D)."""
        return pool_hidden(hidden, mask, self.pooling)

    def regress(self, vectors: torch.Tensor) -> torch.Tensor:
        """Vectors (N, D) -> one value each (N,)."""
        return self.net(vectors).squeeze(-1)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden (B, L, D), mask (B, L) bool with True at real tokens -> (B,)."""
        return self.regress(self.pool(hidden, mask))

    def extra_repr(self) -> str:
        return f"architecture={self.architecture!r}, pooling={self.pooling!r}"


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


def level_sizes(clusters: int, levels: int) -> list[int]:
    """Cluster counts of each resolution, finest first: clusters, clusters/4, clusters/16, ... (at least 2 each)."""
    return [clusters // 4**i for i in range(levels) if clusters // 4**i >= 2]


class ReadClusters(nn.Module):
    """Learned OTUs: read-set vectors -> PCA-whitened, L2-normalised -> the nearest of K centroids (MiniBatchKMeans fit
    on the train split's reads), at one or several resolutions -> a sample's abundances per cluster (CLR, relative
    or presence, each resolution a composition of its own).

    Which organism a read comes from is what says most about pH; a frozen encoder's vectors put reads of one
    organism near each other, so clusters of them stand for organisms (as OTUs do) and a sample is described by
    how many of its reads fall in each. Coarse resolutions gather related organisms (lineages), where the signal of
    real samples often lives; fine ones keep single organisms apart. The fit is kept as buffers: a checkpoint holds
    it like any weight.
    """

    def __init__(self, width: int, n_clusters: int, dims: int, levels: int = 1, transform: str = "clr"):
        super().__init__()
        if dims > width:
            raise ConfigError("cluster_dims", f"cluster_dims {dims} exceeds the read vectors' width {width}")
        if transform not in abundance.TRANSFORMS:
            raise ConfigError("abundance", f"unknown abundance transform {transform!r}")
        self.sizes = level_sizes(n_clusters, levels)
        self.transform = transform
        self.register_buffer("center", torch.zeros(width))
        self.register_buffer("projection", torch.zeros(width, dims))
        # Every resolution's centroids in one buffer, finest first (one resolution: the layout of older checkpoints).
        self.register_buffer("centroids", torch.zeros(sum(self.sizes), dims))

    @property
    def n_features(self) -> int:
        """Abundances per sample: one per cluster of every resolution."""
        return sum(self.sizes)

    def embed(self, vectors: torch.Tensor) -> torch.Tensor:
        """Set vectors (N, D) -> the space the clusters live in (N, dims)."""
        return nn.functional.normalize((vectors.float() - self.center) @ self.projection, dim=-1)

    def fit(self, vectors: torch.Tensor, seed: int) -> None:
        """Fit the projection and every resolution's centroids on train read vectors (N, D)."""
        self.load_fit(self.fit_arrays(vectors, seed))

    def fit_arrays(self, vectors: torch.Tensor, seed: int) -> dict[str, np.ndarray]:
        """What ``fit`` keeps, as arrays (center, projection, centroids), without keeping it: scikit-learn's PCA and
        MiniBatchKMeans on train read vectors (N, D). A search shares one such fit among the trials that ask for it
        (embeddings.fit_once)."""
        from sklearn.cluster import MiniBatchKMeans
        from sklearn.decomposition import PCA

        data = vectors.detach().float().cpu().numpy()
        dims = self.centroids.shape[1]
        if len(data) < self.sizes[0]:
            raise ConfigError(
                "clusters", f"{self.sizes[0]} clusters need at least as many train read sets, got {len(data)}"
            )
        pca = PCA(n_components=dims, whiten=True, random_state=seed).fit(data)
        # whiten=True: scaled components, so (x - mean) @ projection equals pca.transform(x).
        center = pca.mean_.astype(np.float32)
        projection = (pca.components_ / np.sqrt(pca.explained_variance_)[:, None]).T.astype(np.float32)
        embedded = nn.functional.normalize(torch.from_numpy((data - center) @ projection), dim=-1).numpy()
        fitted = [
            MiniBatchKMeans(k, batch_size=4096, n_init=1, max_iter=20, random_state=seed).fit(embedded).cluster_centers_
            for k in self.sizes
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
        """The nearest centroid of each set vector at every resolution (N, levels), as rows of ``centroids``."""
        z = self.embed(vectors)
        distance = (self.centroids**2).sum(-1) - 2 * z @ self.centroids.T
        out, start = [], 0
        for size in self.sizes:
            out.append(distance[:, start : start + size].argmin(dim=-1) + start)
            start += size
        return torch.stack(out, dim=1)

    def counts(
        self, vectors: torch.Tensor, owner: torch.Tensor, num_samples: int, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Each sample's read count in every cluster of every resolution (num_samples, n_features); weights (N,):
        the reads each set stands for (a feature table's counts), else 1 each."""
        counts = vectors.new_zeros((num_samples, self.n_features), dtype=torch.float32)
        labels = self.assign(vectors)
        rows = owner.unsqueeze(1).expand_as(labels)
        ones = counts.new_ones(labels.shape)
        added = ones if weights is None else ones * weights.to(counts).unsqueeze(1)
        counts.index_put_((rows.reshape(-1), labels.reshape(-1)), added.reshape(-1), accumulate=True)
        return counts

    def abundances(
        self, vectors: torch.Tensor, owner: torch.Tensor, num_samples: int, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Each sample's transformed abundances (num_samples, n_features), each resolution transformed on its own."""
        counts = self.counts(vectors, owner, num_samples, weights)
        blocks = torch.split(counts, self.sizes, dim=1)
        return torch.cat([abundance.transform(self.transform, block) for block in blocks], dim=1)

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, transform={self.transform!r}"


class SetAggregation(nn.Module):
    """A sample's set vectors -> one prediction: the mean of per-set predictions, the head on the mean set vector,
    or the head on a gated-attention weighted mean (Ilse, Tomczak & Welling 2018, "Attention-based deep multiple
    instance learning"). All three are invariant to the order of a sample's sets."""

    def __init__(
        self,
        d_model: int,
        kind: str = "mean_prediction",
        standardise: bool = False,
        clusters: ReadClusters | None = None,
    ):
        super().__init__()
        if kind not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {kind!r}; choose one of: {', '.join(AGGREGATIONS)}")
        if (kind == "clusters") != (clusters is not None):
            raise ValueError("aggregation 'clusters' and only it takes a ReadClusters")
        self.kind = kind
        self.clusters = clusters
        # Set vectors of a frozen backbone differ between samples by a sliver of their size; a head on raw vectors
        # sees a near-constant input and learns nothing. Standardising each feature over the sets (running
        # statistics at evaluation) is what lets it learn. Only for a frozen backbone: while the backbone trains,
        # the running statistics lag its moving vectors and evaluation swings wildly (val R² -60 on the demo).
        self.norm: nn.Module = nn.BatchNorm1d(d_model, affine=False) if standardise else nn.Identity()
        if kind == "attention":
            width = max(d_model // 2, _MIN_WIDTH)
            self.attention_V = nn.Linear(d_model, width)  # the paper's V (tanh branch)
            self.attention_U = nn.Linear(d_model, width)  # the paper's U (sigmoid gate)
            self.attention_w = nn.Linear(width, 1)

    def weights(self, vectors: torch.Tensor, owner: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Attention weight of each set within its sample (N,), summing to 1 per sample."""
        score = self.attention_w(torch.tanh(self.attention_V(vectors)) * torch.sigmoid(self.attention_U(vectors)))
        score = score.squeeze(-1).float()
        # Softmax within each sample: subtract the sample's max for stability, then normalise by its sum.
        top = score.new_full((num_samples,), -torch.inf).scatter_reduce(0, owner, score, reduce="amax")
        exp = torch.exp(score - top[owner])
        return exp / exp.new_zeros(num_samples).index_add_(0, owner, exp)[owner]

    def forward(
        self,
        vectors: torch.Tensor,
        owner: torch.Tensor,
        num_samples: int,
        head: RegressionHead | TreeHead,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """vectors (N, D) of sets, owner (N,) their sample in 0..num_samples-1 -> predictions (num_samples,).

        weights (N,): the reads each set stands for (a feature table's counts): cluster abundances count them, means
        are weighted by them, attention scales each set's weight by them; None: 1 each."""
        if self.clusters is not None:  # the clusters standardise in their own (whitened) space
            return head.regress(self.clusters.abundances(vectors, owner, num_samples, weights))
        if self.training and vectors.shape[0] < 2:  # batch statistics need two sets
            self.norm.eval()
            vectors = self.norm(vectors)
            self.norm.train()
        else:
            vectors = self.norm(vectors)
        if self.kind == "mean_prediction":
            return segment_mean(head.regress(vectors).float(), owner, num_samples, weights)
        if self.kind == "mean":
            return head.regress(segment_mean(vectors, owner, num_samples, weights))
        attention = self.weights(vectors, owner, num_samples).to(vectors.dtype)
        if weights is not None:  # a set standing for n reads weighs as n copies of it would
            scaled = attention * weights.to(attention)
            total = scaled.new_zeros(num_samples).index_add_(0, owner, scaled)
            attention = scaled / total[owner].clamp(min=torch.finfo(scaled.dtype).tiny)
        pooled = vectors.new_zeros((num_samples, vectors.shape[1])).index_add_(0, owner, vectors * attention[:, None])
        return head.regress(pooled)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


class PhRegressor(nn.Module):
    """Backbone per read set -> pooled set vector -> SetAggregation over a sample's sets -> RegressionHead.

    forward(input_ids (S, L), mask (S, L), owner (S,), num_samples) -> standardised pH (num_samples,); without
    owner every set is a sample of its own. With a read encoder (e.g. k-mer profiles, the control) set vectors
    come from it instead of the backbone.
    """

    def __init__(
        self,
        backbone: HyenaDNAModel,
        head: RegressionHead | TreeHead,
        freeze_backbone: bool = False,
        aggregation: SetAggregation | None = None,
        read_encoder: nn.Module | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.read_encoder = read_encoder
        if aggregation is None:
            aggregation = SetAggregation(backbone.config.d_model, standardise=freeze_backbone)
        self.aggregation = aggregation
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> PhRegressor:
        super().train(mode)
        if self.freeze_backbone:
            # A frozen backbone is a fixed feature extractor: its dropout stays off.
            self.backbone.eval()
        return self

    def set_vectors(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One pooled vector per set (S, D)."""
        if self.read_encoder is not None:
            return self.read_encoder(input_ids, mask)
        if self.freeze_backbone:
            with torch.no_grad():
                hidden = self.backbone(input_ids)
        else:
            hidden = self.backbone(input_ids)
        return pool_hidden(hidden, mask, self.head.pooling)

    def from_set_vectors(
        self, vectors: torch.Tensor, owner: torch.Tensor, num_samples: int, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Set vectors (S, D) of some samples -> standardised pH per sample (num_samples,); weights (S,): the reads
        each set stands for (TokenizedDataset.set_weight)."""
        return self.aggregation(vectors, owner, num_samples, self.head, weights).float()

    def forward(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        owner: torch.Tensor | None = None,
        num_samples: int | None = None,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        vectors = self.set_vectors(input_ids, mask)
        if owner is None:
            owner = torch.arange(vectors.shape[0], device=vectors.device)
            num_samples = vectors.shape[0]
        elif num_samples is None:
            num_samples = int(owner.max()) + 1 if owner.numel() else 0
        return self.from_set_vectors(vectors, owner, num_samples, weights)


def backbone_config(cfg: TrainConfig) -> HyenaDNAConfig:
    """The backbone architecture: cfg.model_config if given, a local folder's config.json, or a size name."""
    if cfg.model_config is not None:
        return HyenaDNAConfig.from_dict(cfg.model_config)
    folder = Path(cfg.model)
    if (folder / "config.json").is_file():
        return HyenaDNAConfig.from_json(folder / "config.json")
    try:
        return HyenaDNAConfig.from_name(cfg.model)
    except ValueError as err:  # an unknown size name: the message lists the known ones
        raise ConfigError("model", str(err)) from None


def _mlp_head(cfg: TrainConfig, width: int) -> RegressionHead:
    return RegressionHead(width, cfg.head, cfg.pooling, cfg.head_dropout)


def _tree_head(cfg: TrainConfig, width: int) -> TreeHead:
    return TreeHead(
        width,
        pooling=cfg.pooling,
        leaves=cfg.tree_leaves,
        learning_rate=cfg.tree_learning_rate,
        min_samples=cfg.tree_min_samples,
        seed=cfg.seed,
    )


# Head name -> how a config builds it on `width` inputs. A new head is its class and one line here (and its name in
# tune_ph.config.ARCHITECTURES, which the YAML and the CLI read without importing torch).
HEADS: dict[str, Callable[[TrainConfig, int], RegressionHead | TreeHead]] = {
    **dict.fromkeys(MLP_HEADS, _mlp_head),
    "trees": _tree_head,
}


def head_bytes(cfg: TrainConfig, d_model: int) -> int:
    """Bytes of the aggregation and head a config declares (float32): the clusters fit and every head layer (a tree
    head's size is its fitted model's, bounded by tree_head.MAX_MODEL_BYTES)."""
    numel = 0
    width = 4**cfg.encoder_k if cfg.read_encoder == "kmer" else d_model
    n_clusters = sum(level_sizes(cfg.clusters, cfg.cluster_levels))
    if cfg.aggregation == "clusters":
        numel += width + width * cfg.cluster_dims + n_clusters * cfg.cluster_dims
    elif cfg.aggregation == "attention":
        numel += 2 * width * width + 2 * width + 1  # gated attention's two projections, roughly
    widths = [n_clusters if cfg.aggregation == "clusters" else width]
    widths += _widths(widths[0], _HIDDEN_LAYERS.get(cfg.head, 0)) + [1]
    numel += sum(a * b + b for a, b in zip(widths, widths[1:])) + 2 * d_model  # + a BatchNorm's statistics
    return 4 * numel


def _check_head_memory(cfg: TrainConfig, d_model: int) -> None:
    """Refuse a head that would not fit with its gradients and AdamW's moments (4 copies) before it is built."""
    from hyena_dna.memory import available_memory

    need, available = 4 * head_bytes(cfg, d_model), available_memory()
    if available is not None and need > 0.8 * available:
        raise ConfigError(
            "clusters" if cfg.aggregation == "clusters" else "head",
            f"the {cfg.head} head on {cfg.clusters if cfg.aggregation == 'clusters' else d_model} inputs needs about "
            f"{need / 2**20:,.0f} MiB to train, more than the {available / 2**20:,.0f} MiB available; choose fewer "
            "clusters or a smaller head",
        )


def _assemble(cfg: TrainConfig, backbone: HyenaDNAModel) -> PhRegressor:
    d_model = backbone.config.d_model
    if next(backbone.parameters()).device.type != "meta":  # a meta build (shapes only) allocates nothing
        _check_head_memory(cfg, d_model)
    encoder = make_encoder(cfg.read_encoder, cfg.encoder_k)
    width = encoder.width if encoder is not None else d_model
    clusters = None
    if cfg.aggregation == "clusters":
        clusters = ReadClusters(width, cfg.clusters, cfg.cluster_dims, cfg.cluster_levels, cfg.abundance)
    # With clusters the head reads a sample's abundances, one per cluster, instead of a set vector.
    head = HEADS[cfg.head](cfg, clusters.n_features if clusters else width)
    standardise = cfg.freeze_backbone and clusters is None
    aggregation = SetAggregation(width, cfg.aggregation, standardise=standardise, clusters=clusters)
    return PhRegressor(
        backbone, head, freeze_backbone=cfg.freeze_backbone, aggregation=aggregation, read_encoder=encoder
    )


def build_model(cfg: TrainConfig) -> PhRegressor:
    """Backbone (pretrained unless cfg.from_scratch) + a fresh head."""
    if cfg.from_scratch:
        backbone = HyenaDNAModel(backbone_config(cfg))
    else:
        if Path(cfg.model).expanduser().is_dir():
            files.check_pretrain_done(Path(cfg.model).expanduser())  # a pretraining that died leaves partial weights
        try:
            backbone = HyenaDNAModel.from_pretrained(cfg.model)
        except PretrainedNotFoundError as err:
            # Never fall back to random weights silently: the results would be mistaken for fine-tuning.
            raise PretrainedNotFoundError(
                f"{err}\nTo train the same architecture from random initialisation on purpose, "
                "pass --from-scratch (TrainConfig.from_scratch=True)."
            ) from err
        except (ValueError, CheckpointKeyError) as err:  # hyena_dna names the config.json or weights file
            raise InputError(str(err).splitlines()[0]) from None
    backbone.gradient_checkpointing = cfg.gradient_checkpointing
    return _assemble(cfg, backbone)


def match_norm(model: PhRegressor, weights: dict[str, torch.Tensor]) -> None:
    """Standardise set vectors exactly when the weights did: whether they were is in the weights, not the config
    (checkpoints of training backbones saved for a while had the norm; frozen ones from before it lack it)."""
    saved = "aggregation.norm.running_mean" in weights
    if saved == isinstance(model.aggregation.norm, nn.BatchNorm1d):
        return
    device = next(model.parameters()).device
    d_model = model.backbone.config.d_model
    model.aggregation.norm = nn.BatchNorm1d(d_model, affine=False).to(device) if saved else nn.Identity()


def load_checkpoint(path: str | Path) -> tuple[PhRegressor, Checkpoint]:
    """Rebuild the model of a checkpoint file (weights_only load) -> (model in eval mode, the checkpoint)."""
    checkpoint = Checkpoint.load(path)
    return model_of(checkpoint, where=path), checkpoint


def model_of(checkpoint: Checkpoint, where: str | Path = "the checkpoint") -> PhRegressor:
    """The regressor a checkpoint's configs describe, with its weights, in eval mode; its fields, its values and
    the tensors it carries are checked first, then the model is built (never for tensors the file does not hold)."""
    check_consistent(checkpoint, where)
    check_values(checkpoint.weights, where)
    with torch.device("meta"):  # shapes only, no memory: what the configs declare
        declared = _assemble(checkpoint.train_config, HyenaDNAModel(checkpoint.model_config))
        match_norm(declared, checkpoint.weights)
    expected = declared.state_dict()
    if isinstance(declared.head, TreeHead):  # the fitted trees' size is the file's (bounded by checked_text)
        key = "head.model_text"
        expected[key] = TreeHead.checked_text(checkpoint.weights.get(key), str(where))
    check_carried(expected, checkpoint.weights, where)
    model = _assemble(checkpoint.train_config, HyenaDNAModel(checkpoint.model_config))
    match_norm(model, checkpoint.weights)
    try:
        model.load_state_dict(checkpoint.weights)
    except RuntimeError as err:  # weights of another architecture than its own saved config describes
        raise InputError(f"{where}: its weights do not fit the model its config describes ({err})") from None
    return model.eval()


def parameter_groups(model: PhRegressor, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups, as HyenaDNA's own training code sets them up.

    - decay: weight matrices of linear layers (backbone and head) at cfg.learning_rate / cfg.weight_decay;
    - no_decay: biases, norms and embeddings (decaying them only pulls them towards 0);
    - filter: the implicit long-convolution filter (its MLP and Sin frequencies) at the backbone's own
      ``filter_lr`` / ``filter_wd`` (config.json's layer.lr / layer.wd), which the filter was trained with.
    Frozen parameters are left out. Groups that come out empty are dropped.
    """
    config = model.backbone.config
    filter_ids = {id(p) for m in model.modules() if isinstance(m, HyenaFilter) for p in m.implicit_filter.parameters()}
    groups: dict[str, dict[str, Any]] = {
        "decay": {"name": "decay", "params": [], "lr": cfg.learning_rate, "weight_decay": cfg.weight_decay},
        "no_decay": {"name": "no_decay", "params": [], "lr": cfg.learning_rate, "weight_decay": 0.0},
        "filter": {"name": "filter", "params": [], "lr": config.filter_lr, "weight_decay": config.filter_wd},
    }
    no_decay_modules = (nn.LayerNorm, nn.Embedding)
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if id(param) in filter_ids:
                key = "filter"
            elif isinstance(module, no_decay_modules) or name == "bias" or param.dim() < 2:
                key = "no_decay"
            else:
                key = "decay"
            groups[key]["params"].append(param)
    return [g for g in groups.values() if g["params"]]


def configure_optimizer(model: PhRegressor, cfg: TrainConfig, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over parameter_groups(); logs each group's size and settings."""
    groups = parameter_groups(model, cfg)
    for g in groups:
        log.info(
            "optimizer group %-8s %9d parameters  lr %.2g  weight_decay %.2g",
            g["name"],
            sum(p.numel() for p in g["params"]),
            g["lr"],
            g["weight_decay"],
        )
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused)


def resolve_device(device: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device", f"device={device!r} was asked for but CUDA is not available; use --device cpu or auto"
        )
    return resolved


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA only: on CPU it is slow, and its rounding would make CPU runs differ from GPU runs."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

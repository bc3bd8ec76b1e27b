"""The task model: HyenaDNA per read set -> pooled set vectors -> aggregation per sample -> RegressionHead."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hyena_dna import HyenaDNAConfig, HyenaDNAModel, PretrainedNotFoundError
from hyena_dna.memory import check_memory, model_bytes
from hyena_dna.model import HyenaFilter
from tune_ph import files
from tune_ph.config import AGGREGATIONS, ARCHITECTURES, POOLINGS, TrainConfig

log = logging.getLogger(__name__)

# Number of hidden layers of each MLP architecture; every layer halves the width (floored, see _widths).
_HIDDEN_LAYERS = {"linear": 0, "mlp2": 1, "mlp2_ln": 1, "mlp3": 2, "mlp4": 3, "mlp5": 4}
_MIN_WIDTH = 16
# What a checkpoint written by tune_ph holds besides the weights; without them it cannot be rebuilt.
CHECKPOINT_KEYS = ("model", "train_config", "model_config", "target_mean", "target_std")
# A saved state holds the weights once and AdamW's two moments of each: 4x the model is generous; more is refused.
_STATE_COPIES = 4
_STATE_EXTRA_BYTES = 64 << 20  # the pickled settings and history, the RNG states


def _widths(d_model: int, n_hidden: int) -> list[int]:
    # Deep heads on a small d_model would otherwise shrink to a handful of units; never go below 16
    # (or below d_model itself when the model is smaller than that).
    floor = min(_MIN_WIDTH, d_model)
    return [max(d_model // 2**k, floor) for k in range(1, n_hidden + 1)]


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Reduce (B, L, D) hidden states to (B, D) using only positions where mask is True."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
    if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"expected hidden (B, L, D) and mask (B, L); got {tuple(hidden.shape)} and {tuple(mask.shape)}"
        )
    mask = mask.bool()
    if pooling in ("pool", "sum"):
        # where() rather than multiplication so non-finite values at padded positions cannot leak in.
        total = torch.where(mask.unsqueeze(-1), hidden, hidden.new_zeros(())).sum(dim=1)
        if pooling == "sum":
            return total
        count = mask.sum(dim=1, keepdim=True).clamp(min=1).to(total.dtype)
        return total / count
    length = mask.shape[1]
    positions = torch.arange(length, device=mask.device).expand_as(mask)
    if pooling == "last":
        # Largest real position; computed from the mask so left and right padding both work.
        index = torch.where(mask, positions, -1).amax(dim=1).clamp(min=0)
    else:
        index = torch.where(mask, positions, length).amin(dim=1).clamp(max=length - 1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


class RegressionHead(nn.Module):
    """Masked pooling followed by a linear layer or a small MLP; returns one value per sequence."""

    def __init__(self, d_model: int, architecture: str = "mlp2", pooling: str = "pool", dropout: float = 0.1):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown head architecture {architecture!r}; choose one of: {', '.join(ARCHITECTURES)}")
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


def segment_mean(values: torch.Tensor, owner: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Mean of the rows of values (N, ...) that share an owner (N,) in 0..num_groups-1 -> (num_groups, ...)."""
    total = values.new_zeros((num_groups, *values.shape[1:])).index_add_(0, owner, values)
    count = torch.bincount(owner, minlength=num_groups).clamp(min=1).to(values.dtype)
    return total / count.view(-1, *([1] * (values.dim() - 1)))


class SetAggregation(nn.Module):
    """A sample's set vectors -> one prediction: the mean of per-set predictions, the head on the mean set vector,
    or the head on a gated-attention weighted mean (Ilse, Tomczak & Welling 2018, "Attention-based deep multiple
    instance learning"). All three are invariant to the order of a sample's sets."""

    def __init__(self, d_model: int, kind: str = "mean_prediction", standardise: bool = False):
        super().__init__()
        if kind not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {kind!r}; choose one of: {', '.join(AGGREGATIONS)}")
        self.kind = kind
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
        self, vectors: torch.Tensor, owner: torch.Tensor, num_samples: int, head: RegressionHead
    ) -> torch.Tensor:
        """vectors (N, D) of sets, owner (N,) their sample in 0..num_samples-1 -> predictions (num_samples,)."""
        if self.training and vectors.shape[0] < 2:  # batch statistics need two sets
            self.norm.eval()
            vectors = self.norm(vectors)
            self.norm.train()
        else:
            vectors = self.norm(vectors)
        if self.kind == "mean_prediction":
            return segment_mean(head.regress(vectors).float(), owner, num_samples)
        if self.kind == "mean":
            return head.regress(segment_mean(vectors, owner, num_samples))
        weights = self.weights(vectors, owner, num_samples).to(vectors.dtype)
        pooled = vectors.new_zeros((num_samples, vectors.shape[1])).index_add_(0, owner, vectors * weights[:, None])
        return head.regress(pooled)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


class PhRegressor(nn.Module):
    """Backbone per read set -> pooled set vector -> SetAggregation over a sample's sets -> RegressionHead.

    forward(input_ids (S, L), mask (S, L), owner (S,), num_samples) -> standardised pH (num_samples,); without
    owner every set is a sample of its own.
    """

    def __init__(
        self,
        backbone: HyenaDNAModel,
        head: RegressionHead,
        freeze_backbone: bool = False,
        aggregation: SetAggregation | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
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
        if self.freeze_backbone:
            with torch.no_grad():
                hidden = self.backbone(input_ids)
        else:
            hidden = self.backbone(input_ids)
        return self.head.pool(hidden, mask)

    def from_set_vectors(self, vectors: torch.Tensor, owner: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Set vectors (S, D) of some samples -> standardised pH per sample (num_samples,)."""
        return self.aggregation(vectors, owner, num_samples, self.head).float()

    def forward(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        owner: torch.Tensor | None = None,
        num_samples: int | None = None,
    ) -> torch.Tensor:
        vectors = self.set_vectors(input_ids, mask)
        if owner is None:
            owner = torch.arange(vectors.shape[0], device=vectors.device)
            num_samples = vectors.shape[0]
        elif num_samples is None:
            num_samples = int(owner.max()) + 1 if owner.numel() else 0
        return self.from_set_vectors(vectors, owner, num_samples)


def backbone_config(cfg: TrainConfig) -> HyenaDNAConfig:
    """The backbone architecture: cfg.model_config if given, a local folder's config.json, or a size name."""
    if cfg.model_config is not None:
        return HyenaDNAConfig.from_dict(cfg.model_config)
    folder = Path(cfg.model)
    if (folder / "config.json").is_file():
        return HyenaDNAConfig.from_json(folder / "config.json")
    return HyenaDNAConfig.from_name(cfg.model)


def _assemble(cfg: TrainConfig, backbone: HyenaDNAModel) -> PhRegressor:
    d_model = backbone.config.d_model
    head = RegressionHead(d_model, cfg.head, cfg.pooling, cfg.head_dropout)
    aggregation = SetAggregation(d_model, cfg.aggregation, standardise=cfg.freeze_backbone)
    return PhRegressor(backbone, head, freeze_backbone=cfg.freeze_backbone, aggregation=aggregation)


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


def state_budget(state: Any) -> int:
    """The most bytes a saved state (best_model.pt, a trial's state.pt, pretrain_state.pt) of the model it declares
    may hold: the model with its head, and AdamW's moments. A state without a model_config may hold only small
    settings (its reader then says what it lacks). Raises ValueError for a model_config outside hyena_dna's bounds,
    and ModelTooLargeError for a model this machine cannot build."""
    if not isinstance(state, dict) or not isinstance(state.get("model_config"), dict):
        return _STATE_EXTRA_BYTES
    config = HyenaDNAConfig.from_dict(state["model_config"])
    check_memory(config)
    head = 2 * config.d_model**2 * 4  # every head and aggregation is below 2 d_model^2 float32 weights
    return _STATE_COPIES * (model_bytes(config) + head) + _STATE_EXTRA_BYTES


def load_state_file(path: str | Path, what: str = "tune_ph checkpoint") -> dict[str, Any]:
    """A state saved by train.fit or pretraining, loaded after its sizes were checked against the model it
    declares (files.load_torch with state_budget): a memory bomb is refused before it is read."""
    state = files.load_torch(path, budget=state_budget, what=what)
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a {what}: it holds a {type(state).__name__}")
    return state


def load_checkpoint(path: str | Path) -> tuple[PhRegressor, dict[str, Any]]:
    """Rebuild the model of a checkpoint saved by train.fit (weights_only load) -> (model in eval mode, state)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass RUN/best_model.pt of a finished run")
    state = load_state_file(path)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path} is not a tune_ph checkpoint: it lacks {', '.join(missing)}")
    try:
        cfg = TrainConfig.from_saved(state["train_config"])
        model = _assemble(cfg, HyenaDNAModel(HyenaDNAConfig.from_dict(state["model_config"])))
        match_norm(model, state["model"])
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError, KeyError) as err:  # weights or settings of another shape
        text = str(err).splitlines()[0][:300]
        raise ValueError(f"{path}: its weights or settings do not fit the model its config says ({text})") from None
    return model.eval(), state


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
        raise ValueError(f"device={device!r} was asked for but CUDA is not available; use --device cpu or auto")
    return resolved


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA only: on CPU it is slow, and its rounding would make CPU runs differ from GPU runs."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

"""The task model: a read encoder (HyenaDNA, pooled) per read set -> set vectors -> an aggregation per sample -> a
head; built from a TrainConfig through the part registries, and loaded from a checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hyena_dna import CheckpointKeyError, HyenaDNAConfig, HyenaDNAModel, PretrainedNotFoundError
from hyena_dna.model import HyenaFilter
from tune_ph import files
from tune_ph.config import TrainConfig
from tune_ph.errors import ConfigError, InputError
from tune_ph.model.aggregation import AGGREGATIONS, Aggregation, MeanPrediction
from tune_ph.model.checkpoint import Checkpoint, check_carried, check_consistent, check_values
from tune_ph.model.heads import HEADS
from tune_ph.model.read_encoders import ENCODERS, make_encoder, pool_hidden

log = logging.getLogger(__name__)


class PhRegressor(nn.Module):
    """Backbone per read set -> pooled set vector -> an Aggregation over a sample's sets -> a head.

    forward(input_ids (S, L), mask (S, L), owner (S,), num_samples) -> standardised pH (num_samples,); without
    owner every set is a sample of its own. With a read encoder (e.g. k-mer profiles, the control) set vectors
    come from it instead of the backbone.
    """

    def __init__(
        self,
        backbone: HyenaDNAModel,
        head: nn.Module,
        freeze_backbone: bool = False,
        aggregation: Aggregation | None = None,
        read_encoder: nn.Module | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.read_encoder = read_encoder
        if aggregation is None:
            aggregation = MeanPrediction(backbone.config.d_model, standardise=freeze_backbone)
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

    def from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Samples' fixed head inputs (num_samples, F; aggregation.features) -> standardised pH per sample."""
        return self.head.regress(features).float()

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


def head_bytes(cfg: TrainConfig, d_model: int) -> int:
    """Bytes of the aggregation and head a config declares (float32): the aggregation's own state (a clusters fit,
    attention's projections) and every head layer (a tree head's size is its fitted model's, bounded by
    tree_head.MAX_MODEL_BYTES)."""
    width = ENCODERS[cfg.read_encoder].width_of(cfg, d_model)
    kind = AGGREGATIONS[cfg.aggregation]
    numel = kind.numel(cfg, width) + HEADS[cfg.head].numel(cfg, kind.head_inputs(cfg, width))
    return 4 * (numel + 2 * d_model)  # + a BatchNorm's statistics


def _check_head_memory(cfg: TrainConfig, d_model: int) -> None:
    """Refuse a head that would not fit with its gradients and AdamW's moments (4 copies) before it is built."""
    from hyena_dna.memory import available_memory

    need, available = 4 * head_bytes(cfg, d_model), available_memory()
    if available is not None and need > 0.8 * available:
        field, inputs = AGGREGATIONS[cfg.aggregation].sized_by(cfg) or ("head", d_model)
        raise ConfigError(
            field,
            f"the {cfg.head} head on {inputs} inputs needs about {need / 2**20:,.0f} MiB to train, more than the "
            f"{available / 2**20:,.0f} MiB available; choose fewer clusters or a smaller head",
        )


def _assemble(cfg: TrainConfig, backbone: HyenaDNAModel) -> PhRegressor:
    d_model = backbone.config.d_model
    if next(backbone.parameters()).device.type != "meta":  # a meta build (shapes only) allocates nothing
        _check_head_memory(cfg, d_model)
    encoder = make_encoder(cfg)
    width = ENCODERS[cfg.read_encoder].width_of(cfg, d_model)
    kind = AGGREGATIONS[cfg.aggregation]
    # The head first, then the aggregation: the order their weights are drawn in (a seed gives the same model).
    head = HEADS[cfg.head].from_config(cfg, kind.head_inputs(cfg, width))
    aggregation = kind.from_config(cfg, width)
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
    saved_head = {k.removeprefix("head."): v for k, v in checkpoint.weights.items() if k.startswith("head.")}
    expected.update({f"head.{k}": v for k, v in declared.head.sized_state(saved_head, str(where)).items()})
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

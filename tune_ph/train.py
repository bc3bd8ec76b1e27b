"""Train one configuration (HyenaDNA backbone + RegressionHead) on a TokenizedDataset with plain PyTorch."""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __name__ == "__main__":
    # Before torch loads its OpenMP runtime: busy-waiting threads crawl (5-10x slower steps measured on a
    # 2-core machine) whenever anything else runs; passive waiting costs little when the machine is idle.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from hyena_dna import HyenaDNAConfig, HyenaDNAModel, PretrainedNotFoundError
from tune_ph.head import ARCHITECTURES, POOLINGS, RegressionHead

if TYPE_CHECKING:
    from tune_ph.tokens import TokenizedDataset

log = logging.getLogger("tune_ph.train")

DEFAULT_DATASET = "jedick/microbial-DNA-pH"
LOSSES: tuple[str, ...] = ("smoothl1", "mse", "mae", "huber")
LR_SCHEDULERS: tuple[str, ...] = ("none", "plateau")
# On CUDA a finiteness check per step would force a device sync; losses are checked in chunks instead.
_CUDA_CHECK_EVERY = 32


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """Everything one training run needs, as JSON-able primitives (saved with every checkpoint)."""

    dataset: str = "demo"
    model: str = "hyenadna-tiny-1k-seqlen"
    from_scratch: bool = False
    head: str = "mlp2"
    pooling: str = "pool"
    head_dropout: float = 0.1
    freeze_backbone: bool = False
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    batch_size: int = 4
    epochs: int = 10
    loss: str = "smoothl1"
    loss_beta: float = 1.0
    lr_scheduler: str = "none"
    grad_clip: float | None = 1.0
    seed: int = 42
    device: str = "auto"
    num_sets: int = 5
    max_length: int | None = None
    early_stopping_patience: int | None = None
    gradient_checkpointing: bool = False
    output_dir: str | None = None
    # Data options beyond the contract's list: needed so evaluate can rebuild the exact split from the config.
    split_seed: int = 42
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    cache_dir: str | None = None
    skip_bad_rows: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field and the allowed values."""
        if self.head not in ARCHITECTURES:
            raise ValueError(f"head={self.head!r} is not known; choose one of: {', '.join(ARCHITECTURES)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} is not known; choose one of: {', '.join(POOLINGS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r} is not known; choose one of: {', '.join(LOSSES)}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(
                f"lr_scheduler={self.lr_scheduler!r} is not known; choose one of: {', '.join(LR_SCHEDULERS)}"
            )
        for name in ("batch_size", "epochs", "num_sets"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be a positive integer or None, got {self.max_length!r}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate!r}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError(f"early_stopping_patience must be >= 1 or None, got {self.early_stopping_patience!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys are an error (they are usually typos)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known fields: {', '.join(sorted(known))}")
        return cls(**data)


@dataclass
class FitResult:
    """What fit() returns: the best epoch's full state, all per-epoch metrics, the best epoch number."""

    best_state: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0


@dataclass
class Predictions:
    """Per-set predictions of one split, in pH units, with the sample each set belongs to."""

    set_index: np.ndarray  # int64 (n_sets,)
    sample_index: np.ndarray  # int64 (n_sets,)
    predicted: np.ndarray  # float64 (n_sets,)
    true: np.ndarray  # float64 (n_sets,)

    def sample_means(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sample indices sorted, mean predicted pH per sample, true pH per sample)."""
        samples, inverse = np.unique(self.sample_index, return_inverse=True)
        counts = np.bincount(inverse)
        predicted = np.bincount(inverse, weights=self.predicted) / counts
        true = np.bincount(inverse, weights=self.true) / counts
        return samples, predicted, true


class PhRegressor(nn.Module):
    """Backbone + RegressionHead: (input_ids, mask) -> standardised pH predictions (B,)."""

    def __init__(self, backbone: HyenaDNAModel, head: RegressionHead, freeze_backbone: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = head
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

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.freeze_backbone:
            with torch.no_grad():
                hidden = self.backbone(input_ids)
        else:
            hidden = self.backbone(input_ids)
        return self.head(hidden, mask).float()


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available; use --device cpu or auto")
    return resolved


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def backbone_config(cfg: TrainConfig, model_config: HyenaDNAConfig | None = None) -> HyenaDNAConfig:
    """The backbone architecture: model_config if given, a local folder's config.json, or a size name."""
    if model_config is not None:
        return model_config
    folder = Path(cfg.model)
    if (folder / "config.json").is_file():
        return HyenaDNAConfig.from_json(folder / "config.json")
    return HyenaDNAConfig.from_name(cfg.model)


def build_model(cfg: TrainConfig, model_config: HyenaDNAConfig | None = None) -> PhRegressor:
    """Backbone (pretrained unless cfg.from_scratch or model_config is given) + a fresh head."""
    if cfg.from_scratch or model_config is not None:
        backbone = HyenaDNAModel(backbone_config(cfg, model_config))
    else:
        try:
            backbone = HyenaDNAModel.from_pretrained(cfg.model)
        except PretrainedNotFoundError as err:
            # Never fall back to random weights silently: the results would be mistaken for fine-tuning.
            raise PretrainedNotFoundError(
                f"{err}\nTo train the same architecture from random initialisation on purpose, "
                "pass --from-scratch (TrainConfig.from_scratch=True)."
            ) from err
    backbone.gradient_checkpointing = cfg.gradient_checkpointing
    head = RegressionHead(backbone.config.d_model, cfg.head, cfg.pooling, cfg.head_dropout)
    return PhRegressor(backbone, head, freeze_backbone=cfg.freeze_backbone)


def make_loss(cfg: TrainConfig) -> nn.Module:
    if cfg.loss == "smoothl1":
        return nn.SmoothL1Loss(beta=cfg.loss_beta)
    if cfg.loss == "huber":
        return nn.HuberLoss(delta=cfg.loss_beta)
    if cfg.loss == "mae":
        return nn.L1Loss()
    return nn.MSELoss()


def regression_metrics(true: np.ndarray, predicted: np.ndarray, prefix: str = "") -> dict[str, float]:
    """MSE, RMSE, MAE, R² (scikit-learn) of per-sample values."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    mse = float(mean_squared_error(true, predicted))
    r2 = float(r2_score(true, predicted)) if len(true) >= 2 else float("nan")
    return {
        f"{prefix}mse": mse,
        f"{prefix}rmse": math.sqrt(mse),
        f"{prefix}mae": float(mean_absolute_error(true, predicted)),
        f"{prefix}r2": r2,
    }


def _autocast(device: torch.device):
    # bf16 autocast only on CUDA: on CPU it is slow and its rounding would make CPU runs differ from GPU runs.
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def predict(
    model: PhRegressor,
    dataset: TokenizedDataset,
    split: str,
    *,
    target_mean: float,
    target_std: float,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Predictions:
    """Predict every set of one split; returns per-set predictions in pH units."""
    device = resolve_device(device) if isinstance(device, str) else device
    model.eval()
    outputs: list[torch.Tensor] = []
    set_index: list[torch.Tensor] = []
    sample_index: list[torch.Tensor] = []
    batches = dataset.batches(split, batch_size, shuffle=False)
    total = dataset.num_batches(split, batch_size)
    with torch.inference_mode(), _autocast(device):
        for batch in tqdm(batches, total=total, desc=f"predict {split}", disable=not progress, leave=False):
            ids = batch.input_ids.to(device, non_blocking=True)
            mask = batch.mask.to(device, non_blocking=True)
            outputs.append(model(ids, mask))
            set_index.append(batch.set_index)
            sample_index.append(batch.sample_index)
    if not outputs:
        raise ValueError(f"the {split!r} split has no sequence sets; check the split fractions and the dataset size")
    predicted = torch.cat(outputs).float().cpu().double().numpy() * target_std + target_mean
    sets = torch.cat(set_index).numpy().astype(np.int64)
    samples = torch.cat(sample_index).numpy().astype(np.int64)
    return Predictions(sets, samples, predicted, dataset.ph[samples].astype(np.float64))


def _check_finite(losses: torch.Tensor, count: int, first_batch: int, epoch: int) -> None:
    """Raise NonFiniteLossError naming the first bad batch among the last `count` recorded losses."""
    window = losses[:count]
    bad = (~torch.isfinite(window)).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise NonFiniteLossError(
            f"non-finite training loss ({float(window[i])}) at epoch {epoch}, batch {first_batch + i} "
            f"(1-based); the run was stopped. Lower --learning-rate, keep --grad-clip on, or check the inputs."
        )


def _train_epoch(
    model: PhRegressor,
    dataset: TokenizedDataset,
    cfg: TrainConfig,
    *,
    epoch: int,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    target_mean: float,
    target_std: float,
    device: torch.device,
    progress: bool,
) -> float:
    model.train()
    check_every = _CUDA_CHECK_EVERY if device.type == "cuda" else 1
    # Losses stay on the device and are read in chunks: one host sync per chunk, not per step.
    losses = torch.zeros(check_every, device=device)
    total = torch.zeros((), device=device, dtype=torch.float64)
    n_batches = dataset.num_batches("train", cfg.batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    batches = dataset.batches("train", cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch)
    bar = tqdm(batches, total=n_batches, desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress, leave=False)
    pending = 0
    step = 0
    for step, batch in enumerate(bar, start=1):
        ids = batch.input_ids.to(device, non_blocking=True)
        mask = batch.mask.to(device, non_blocking=True)
        target = (batch.ph.to(device, non_blocking=True).float() - target_mean) / target_std
        with _autocast(device):
            pred = model(ids, mask)
        loss = loss_fn(pred, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        detached = loss.detach()
        losses[pending] = detached
        total += detached
        pending += 1
        if pending == check_every:
            _check_finite(losses, pending, step - pending + 1, epoch)
            pending = 0
            if progress:
                bar.set_postfix(loss=f"{float(total) / step:.4f}", refresh=False)
    if pending:
        _check_finite(losses, pending, step - pending + 1, epoch)
    if step == 0:
        raise ValueError("the 'train' split has no sequence sets; check the split fractions and the dataset size")
    return float(total) / step


def _cpu_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def fit(
    cfg: TrainConfig,
    dataset: TokenizedDataset,
    *,
    on_epoch_end: Callable[[dict[str, Any], Callable[[], dict[str, Any]]], bool | None] | None = None,
    resume_from: dict[str, Any] | None = None,
    model_config: HyenaDNAConfig | None = None,
    progress: bool = True,
    model: PhRegressor | None = None,
) -> FitResult:
    """Train cfg on dataset's train split, validate each epoch, keep the best epoch by val loss.

    on_epoch_end(metrics, state_fn) is called after every epoch; returning True stops training.
    resume_from: a state from state_fn()/a checkpoint; training continues at its epoch + 1.
    model: an already built PhRegressor (e.g. to load pretrained weights before preparing data).
    """
    cfg.validate()
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    if model is None:
        model = build_model(cfg, model_config)
    config = model.backbone.config
    if dataset.max_length > config.max_length:
        raise ValueError(
            f"the dataset was tokenized with max_length={dataset.max_length} but the model "
            f"{cfg.model!r} takes at most {config.max_length} tokens; rebuild it with --max-length "
            f"{config.max_length} or smaller"
        )
    model.to(device)

    train_ph = dataset.ph[np.asarray(dataset.split) == "train"].astype(np.float64)
    if train_ph.size == 0:
        raise ValueError("the dataset has no samples in the 'train' split")
    target_mean = float(train_ph.mean())
    # A constant-pH training set would divide by zero; fall back to unit scale.
    target_std = float(train_ph.std()) or 1.0

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", patience=3)
        if cfg.lr_scheduler == "plateau"
        else None
    )
    loss_fn = make_loss(cfg)

    history: list[dict[str, Any]] = []
    best_val_loss = math.inf
    best_epoch = 0
    start_epoch = 1
    best_state: dict[str, Any] | None = None
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        if scheduler is not None and resume_from.get("scheduler") is not None:
            scheduler.load_state_dict(resume_from["scheduler"])
        history = list(resume_from.get("history", []))
        best_val_loss = float(resume_from.get("best_val_loss", math.inf))
        best_epoch = int(resume_from.get("best_epoch", 0))
        start_epoch = int(resume_from["epoch"]) + 1
        # Keep the standardisation the weights were trained with.
        target_mean = float(resume_from.get("target_mean", target_mean))
        target_std = float(resume_from.get("target_std", target_std))
        if best_epoch == int(resume_from["epoch"]):
            best_state = resume_from
    epoch = start_epoch - 1
    cached: dict[int, dict[str, Any]] = {}

    def state_fn() -> dict[str, Any]:
        # The loop and the callback may both ask in one epoch; copy the weights once.
        if epoch not in cached:
            cached.clear()
            cached[epoch] = _snapshot()
        return dict(cached[epoch])

    def _snapshot() -> dict[str, Any]:
        return {
            "model": _cpu_state_dict(model),
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": epoch,
            "best_val_loss": best_val_loss,
            "best_epoch": best_epoch,
            "target_mean": target_mean,
            "target_std": target_std,
            "max_length": int(dataset.max_length),
            "dataset_fingerprint": str(dataset.fingerprint),
            "train_config": cfg.to_dict(),
            "model_config": config.to_dict(),
            "history": copy.deepcopy(history),
        }

    for epoch in range(start_epoch, cfg.epochs + 1):
        started = time.perf_counter()
        train_loss = _train_epoch(
            model, dataset, cfg, epoch=epoch, optimizer=optimizer, loss_fn=loss_fn,
            target_mean=target_mean, target_std=target_std, device=device, progress=progress,
        )  # fmt: skip
        val = predict(
            model, dataset, "val", target_mean=target_mean, target_std=target_std,
            batch_size=cfg.batch_size, device=device,
        )  # fmt: skip
        # Val loss on sets, in standardised units, so it is comparable with the train loss.
        val_loss = float(
            loss_fn(
                torch.from_numpy((val.predicted - target_mean) / target_std),
                torch.from_numpy((val.true - target_mean) / target_std),
            )
        )
        _, sample_pred, sample_true = val.sample_means()
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            **regression_metrics(sample_true, sample_pred, prefix="val_"),
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": time.perf_counter() - started,
        }
        if scheduler is not None:
            scheduler.step(val_loss)
        history.append(metrics)
        improved = val_loss < best_val_loss
        if improved:
            best_val_loss, best_epoch = val_loss, epoch
        log.info(
            "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_rmse %.3f  val_mae %.3f  val_r2 %.3f  (%.1fs)%s",
            epoch, cfg.epochs, train_loss, val_loss, metrics["val_rmse"], metrics["val_mae"],
            metrics["val_r2"], metrics["epoch_seconds"], "  *best" if improved else "",
        )  # fmt: skip
        if improved:
            best_state = state_fn()
        stop = bool(on_epoch_end(dict(metrics), state_fn)) if on_epoch_end is not None else False
        if stop:
            log.info("stopped after epoch %d by the epoch callback", epoch)
            break
        patience = cfg.early_stopping_patience
        if patience is not None and epoch - best_epoch >= patience:
            log.info("early stopping: val loss has not improved for %d epochs (best epoch %d)", patience, best_epoch)
            break

    if best_state is None:
        # Only reachable when resuming past the best epoch without improving: its weights are not in the state.
        log.warning("the best epoch (%d) predates the resumed state; returning the latest state instead", best_epoch)
        best_state = state_fn()
    return FitResult(best_state=best_state, history=history, best_epoch=best_epoch)


# ----------------------------------------------------------------------------------------------- CLI


def load_dataset(cfg: TrainConfig, max_length: int) -> TokenizedDataset:
    """Load, split and tokenize cfg.dataset the way cfg says (also used by evaluate to rebuild it)."""
    from tune_ph import data

    return data.prepare(
        cfg.dataset, max_length=max_length, num_sets=cfg.num_sets, seed=cfg.split_seed,
        test_fraction=cfg.test_fraction, val_fraction=cfg.val_fraction, cache_dir=cfg.cache_dir,
        skip_bad_rows=cfg.skip_bad_rows,
    )  # fmt: skip


def _write_json(path: Path, payload: Any) -> None:
    # Write-then-rename so a crash mid-write never leaves a truncated file behind.
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def _save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m tune_ph.train",
        description="Fine-tune HyenaDNA + a regression head to predict pH; writes a run folder and tests it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", default=DEFAULT_DATASET,
                   help="hub dataset id, local folder/.parquet/.jsonl, or 'demo' (synthetic, offline)")
    p.add_argument("--model", default=d.model, help="HyenaDNA size name, hub id or local checkpoint folder")
    p.add_argument("--from-scratch", action="store_true", help="random init instead of pretrained weights")
    p.add_argument("--head", default=d.head, choices=ARCHITECTURES, help="regression head architecture")
    p.add_argument("--pooling", default=d.pooling, choices=POOLINGS, help="how tokens are pooled (real tokens only)")
    p.add_argument("--head-dropout", type=float, default=d.head_dropout, help="dropout between head layers")
    p.add_argument("--freeze-backbone", action="store_true", help="train the head only")
    p.add_argument("--learning-rate", "--lr", type=float, default=d.learning_rate, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="sequence sets per step")
    # 4, not TrainConfig's 10: the offline demo reaches test R² ~0.75 in 4 epochs (~1 min each on 2 CPU cores).
    p.add_argument("--epochs", type=int, default=4, help="maximum number of epochs")
    p.add_argument("--loss", default=d.loss, choices=LOSSES, help="training loss on standardised pH")
    p.add_argument("--loss-beta", type=float, default=d.loss_beta, help="SmoothL1 beta / Huber delta")
    p.add_argument("--lr-scheduler", default=d.lr_scheduler, choices=LR_SCHEDULERS,
                   help="plateau: ReduceLROnPlateau on val loss, patience 3")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm; 0 disables")
    p.add_argument("--early-stopping-patience", type=int, default=None, help="epochs without val improvement")
    p.add_argument("--num-sets", type=int, default=d.num_sets, help="sequence sets per sample")
    p.add_argument("--max-length", type=int, default=None, help="tokens per set; None = the model's maximum")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute blocks in backward (less memory)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed for init, shuffling and dropout")
    p.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the train/val/test split")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction, help="share of samples held out for test")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="share of all samples used for validation")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--output-dir", default=None, help="run folder; None = runs/<timestamp>")
    p.add_argument("--cache-dir", default=None, help="where tokenized datasets are cached")
    p.add_argument("--skip-bad-rows", action="store_true", help="skip invalid rows (counted) instead of failing")
    p.add_argument("--num-threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is often faster on a busy machine)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if not values.get("grad_clip"):
        values["grad_clip"] = None
    return TrainConfig(**values)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = config_from_args(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    progress = not args.no_progress
    if args.num_threads:
        torch.set_num_threads(args.num_threads)

    try:
        # The backbone first: a missing pretrained checkpoint should fail before minutes of data preparation.
        seed_everything(cfg.seed)
        model = build_model(cfg)
    except PretrainedNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = Path(cfg.output_dir or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    cfg.output_dir = str(out)
    max_length = cfg.max_length or model.backbone.config.max_length
    try:
        dataset = load_dataset(cfg, max_length)
    except (ValueError, OSError) as err:  # bad source/rows/split: the message names the file, row and fix
        print(f"error: {err}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "split.json", dataset.split_dict())
    _write_json(out / "config.json", {"train_config": cfg.to_dict(), "model_config": model.backbone.config.to_dict()})
    sizes = (len(dataset.set_indices(name)) for name in ("train", "val", "test"))
    log.info("run folder %s; %d train / %d val / %d test sets", out, *sizes)

    history: list[dict[str, Any]] = []
    best = math.inf

    def on_epoch_end(metrics: dict[str, Any], state_fn: Callable[[], dict[str, Any]]) -> None:
        nonlocal best
        history.append(metrics)
        _write_json(out / "training_log.json", history)
        if metrics["val_loss"] < best:
            best = metrics["val_loss"]
            _save_state(out / "best_model.pt", state_fn())

    result = fit(cfg, dataset, on_epoch_end=on_epoch_end, progress=progress, model=model)
    log.info("best epoch %d (val_loss %.4f); evaluating on the test split", result.best_epoch, best)

    from tune_ph.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(out / "best_model.pt", dataset=dataset, output_dir=out, device=cfg.device)
    log.info(
        "test: R² %.3f  RMSE %.3f  MAE %.3f  (%d samples) -> %s",
        metrics["test_r2"], metrics["test_rmse"], metrics["test_mae"], metrics["test_n_samples"], out,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

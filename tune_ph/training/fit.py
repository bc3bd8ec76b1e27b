"""Train one configuration (HyenaDNA backbone + RegressionHead) with plain PyTorch: fit(), the epoch loop, the CLI."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from tune_ph.config import TrainConfig, is_better, worst_value
from tune_ph.data.tokens import TokenizedDataset
from tune_ph.model import embeddings
from tune_ph.model.regressor import PhRegressor, build_model, configure_optimizer, match_norm, resolve_device
from tune_ph.training.epoch import make_loss, seed_everything, train_epoch
from tune_ph.training.predict import predict, regression_metrics

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What fit() returns: the best epoch's full state, all per-epoch metrics, the best epoch number."""

    best_state: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0


def _cpu_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def fit(
    cfg: TrainConfig,
    dataset: TokenizedDataset,
    *,
    metric: str = "val_loss",
    on_epoch_end: Callable[[dict[str, Any], Callable[[], dict[str, Any]]], bool | None] | None = None,
    resume_from: dict[str, Any] | None = None,
    progress: bool = True,
    model: PhRegressor | None = None,
    shared_vectors: Mapping[str, np.ndarray] | None = None,
) -> FitResult:
    """Train cfg on dataset's train split, validate each epoch, keep the best epoch by `metric`.

    metric: one of config.METRIC_MODES; it picks the best epoch and drives early stopping.
    on_epoch_end(metrics, state_fn) is called after every epoch; returning True stops training.
    resume_from: a state from state_fn()/a checkpoint; training continues at its epoch + 1.
    model: an already built PhRegressor (e.g. to load pretrained weights before preparing data).
    shared_vectors: with cfg.freeze_backbone, set vectors computed elsewhere, keyed by embeddings.cache_key (a
    search computes them once on the driver); otherwise they come from the embedding cache on disk. Either way a
    frozen run trains the aggregation and head on cached vectors and never runs the backbone per step.
    """
    cfg.validate()
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    if model is None:
        model = build_model(cfg)
    backbone_config = model.backbone.config
    if dataset.max_length > backbone_config.max_length:
        raise ValueError(
            f"the dataset was tokenized with max_length={dataset.max_length} but the model "
            f"{cfg.model!r} takes at most {backbone_config.max_length} tokens; rebuild it with --max-length "
            f"{backbone_config.max_length} or smaller"
        )
    model.to(device)

    train_ph = dataset.ph[np.asarray(dataset.split) == "train"].astype(np.float64)
    if train_ph.size == 0:
        raise ValueError("the dataset has no samples in the 'train' split")
    target_mean = float(train_ph.mean())
    # A constant-pH training set would divide by zero; fall back to unit scale.
    target_std = float(train_ph.std()) or 1.0

    optimizer = configure_optimizer(model, cfg)
    scheduler = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", patience=3)
        if cfg.lr_scheduler == "plateau"
        else None
    )
    loss_fn = make_loss(cfg)

    history: list[dict[str, Any]] = []
    best_value = worst_value(metric)
    best_epoch = 0
    start_epoch = 1
    best_state: dict[str, Any] | None = None
    if resume_from is not None:
        match_norm(model, resume_from["model"])
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        if scheduler is not None and resume_from.get("scheduler") is not None:
            scheduler.load_state_dict(resume_from["scheduler"])
        history = list(resume_from.get("history", []))
        if resume_from.get("metric") == metric:
            best_value = float(resume_from["best_value"])
            best_epoch = int(resume_from.get("best_epoch", 0))
        start_epoch = int(resume_from["epoch"]) + 1
        # Keep the standardisation the weights were trained with.
        target_mean = float(resume_from.get("target_mean", target_mean))
        target_std = float(resume_from.get("target_std", target_std))
        if best_epoch == int(resume_from["epoch"]):
            best_state = resume_from
    vectors = None
    if cfg.freeze_backbone:  # after a resume has loaded its weights: the vectors must be of those
        set_vectors = embeddings.set_vectors(
            model.backbone,
            dataset,
            cache_dir=cfg.cache_dir,
            device=device,
            progress=progress,
            batch_size=cfg.sets_per_forward(),
            shared=shared_vectors,
        )
        vectors = embeddings.for_pooling(set_vectors, cfg.pooling)
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
            "metric": metric,
            "best_value": best_value,
            "best_epoch": best_epoch,
            "target_mean": target_mean,
            "target_std": target_std,
            "max_length": int(dataset.max_length),
            "dataset_fingerprint": str(dataset.fingerprint),
            "train_config": cfg.to_dict(),
            "model_config": backbone_config.to_dict(),
            "history": copy.deepcopy(history),
        }

    for epoch in range(start_epoch, cfg.epochs + 1):
        started = time.perf_counter()
        train_loss = train_epoch(
            model,
            dataset,
            cfg,
            epoch=epoch,
            optimizer=optimizer,
            loss_fn=loss_fn,
            target_mean=target_mean,
            target_std=target_std,
            device=device,
            progress=progress,
            vectors=vectors,
        )
        val = predict(
            model,
            dataset,
            "val",
            target_mean=target_mean,
            target_std=target_std,
            batch_size=cfg.batch_size,
            sets_per_forward=cfg.sets_per_forward(),
            device=device,
            vectors=vectors,
        )
        # Val loss in standardised units, so it is comparable with the train loss.
        val_loss = float(
            loss_fn(
                torch.from_numpy((val.predicted - target_mean) / target_std),
                torch.from_numpy((val.true - target_mean) / target_std),
            )
        )
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            **regression_metrics(val.true, val.predicted, prefix="val_"),
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": time.perf_counter() - started,
        }
        if scheduler is not None:
            scheduler.step(val_loss)
        history.append(metrics)
        improved = is_better(metric, metrics[metric], best_value)
        if improved:
            best_value, best_epoch = metrics[metric], epoch
        log.info(
            "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_rmse %.3f  val_mae %.3f  val_r2 %.3f  (%.1fs)%s",
            epoch,
            cfg.epochs,
            train_loss,
            val_loss,
            metrics["val_rmse"],
            metrics["val_mae"],
            metrics["val_r2"],
            metrics["epoch_seconds"],
            "  *best" if improved else "",
        )
        if improved:
            best_state = state_fn()
        stop = bool(on_epoch_end(dict(metrics), state_fn)) if on_epoch_end is not None else False
        if stop:
            log.info("stopped after epoch %d by the epoch callback", epoch)
            break
        patience = cfg.early_stopping_patience
        if patience is not None and epoch - best_epoch >= patience:
            log.info("early stopping: %s has not improved for %d epochs (best epoch %d)", metric, patience, best_epoch)
            break

    if best_state is None:
        # Only reachable when resuming past the best epoch without improving: its weights are not in the state.
        log.warning("the best epoch (%d) predates the resumed state; returning the latest state instead", best_epoch)
        best_state = state_fn()
    return FitResult(best_state=best_state, history=history, best_epoch=best_epoch)

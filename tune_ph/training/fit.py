"""Train one configuration (HyenaDNA backbone + RegressionHead) with plain PyTorch: fit(), the epoch loop."""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from tune_ph.config import TrainConfig
from tune_ph.data.tokens import TokenizedDataset
from tune_ph.errors import InputError
from tune_ph.metrics import (
    DEFAULT_METRIC,
    TRAIN_LOSS,
    VAL_LOSS,
    VAL_MAE,
    VAL_R2,
    VAL_RMSE,
    is_better,
    regression_metrics,
    worst_value,
)
from tune_ph.model import embeddings
from tune_ph.model.checkpoint import Checkpoint
from tune_ph.model.clusters import FitPieces, ReadClusters
from tune_ph.model.read_encoders import kmer_vectors
from tune_ph.model.regressor import (
    PhRegressor,
    autocast,
    build_model,
    configure_optimizer,
    match_norm,
    resolve_device,
)
from tune_ph.training.epoch import make_loss, seed_everything, train_epoch
from tune_ph.training.predict import predict

log = logging.getLogger(__name__)

# on_epoch_end(metrics, checkpoint_fn): called after every epoch; returning True stops training.
EpochCallback = Callable[[dict[str, Any], Callable[[], Checkpoint]], bool | None]


@dataclass
class FitResult:
    """What fit() returns: the best epoch's checkpoint, all per-epoch metrics, the best epoch number."""

    best_state: Checkpoint
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0


def _cpu_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _check_length(cfg: TrainConfig, dataset: TokenizedDataset, model: PhRegressor) -> None:
    limit = model.backbone.config.max_length
    if dataset.max_length > limit:
        raise ValueError(
            f"the dataset was tokenized with max_length={dataset.max_length} but the model "
            f"{cfg.model!r} takes at most {limit} tokens; rebuild it with --max-length {limit} or smaller"
        )


def _target_scale(dataset: TokenizedDataset) -> tuple[float, float]:
    """Mean and standard deviation of the train split's pH: the model predicts standardised pH."""
    train_ph = dataset.ph[np.asarray(dataset.split) == "train"].astype(np.float64)
    if train_ph.size == 0:
        raise ValueError("the dataset has no samples in the 'train' split")
    # A constant-pH training set would divide by zero; fall back to unit scale.
    return float(train_ph.mean()), float(train_ph.std()) or 1.0


class _Run:
    """The moving parts of one fit(): model, optimizer, scheduler, where training stands, its checkpoints."""

    def __init__(
        self, cfg: TrainConfig, dataset: TokenizedDataset, model: PhRegressor, metric: str, device: torch.device
    ):
        self.cfg, self.dataset, self.model, self.metric, self.device = cfg, dataset, model, metric, device
        self.target_mean, self.target_std = _target_scale(dataset)
        # Trees on a frozen encoder's clusters have no parameter a gradient step could move: they are grown once.
        self.trees = not model.head.trainable_by_gradient
        self.optimizer = None if self.trees else configure_optimizer(model, cfg)
        self.scheduler = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="min", patience=3)
            if cfg.lr_scheduler == "plateau" and self.optimizer is not None
            else None
        )
        self.loss_fn = make_loss(cfg)
        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # the last epoch done
        self.best_value = worst_value(metric)
        self.best_epoch = 0
        self.best_state: Checkpoint | None = None
        # A frozen backbone's set vectors as they came (the cache's memory map): read through it, pages are dropped
        # chunk by chunk; through a tensor of it they are not.
        self.vector_array: np.ndarray | None = None
        self._cached: Checkpoint | None = None
        self._features: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # split_features, once per split

    @property
    def vectors(self) -> torch.Tensor | None:
        """The set vectors as a tensor sharing vector_array's memory (no copy)."""
        return None if self.vector_array is None else embeddings.as_tensor(self.vector_array)

    @property
    def fixed_features(self) -> bool:
        """Whether each sample's head inputs are the same at every step: a frozen encoder's vectors, an aggregation
        that gives features (cluster abundances) and every set of a sample in every step. Then they are taken once
        per split, as the trees' are, instead of assigning every read to its clusters at every step and epoch."""
        return (
            self.vector_array is not None and self.model.aggregation.gives_features and self.cfg.sets_per_step is None
        )

    def resume(self, state: Checkpoint) -> None:
        """Continue from a checkpoint: its weights, optimizer and history; training goes on at its epoch + 1."""
        if state.optimizer is None:
            raise InputError("the checkpoint to resume from has no optimizer state; resume from a trial's state.pt")
        match_norm(self.model, state.weights)
        self.model.load_state_dict(state.weights)
        if self.optimizer is not None:
            # A copy: the optimizer would otherwise step the checkpoint's own moment tensors, and a second resume
            # from the same in-memory checkpoint would start from moved ones.
            self.optimizer.load_state_dict(copy.deepcopy(state.optimizer))
        if self.scheduler is not None and state.scheduler is not None:
            self.scheduler.load_state_dict(state.scheduler)
        self.history = list(state.history)
        if state.metric == self.metric and state.best_value is not None:
            self.best_value, self.best_epoch = float(state.best_value), state.best_epoch
        self.epoch = state.epoch
        # Keep the standardisation the weights were trained with.
        self.target_mean, self.target_std = state.target_mean, state.target_std
        if self.best_epoch == state.epoch:
            self.best_state = state

    def checkpoint(self) -> Checkpoint:
        """The checkpoint of the last epoch done (the loop and the callback may both ask: the weights are copied
        once per epoch); a shallow copy, so a caller that edits it leaves the others' alone."""
        if self._cached is None or self._cached.epoch != self.epoch:
            self._cached = Checkpoint(
                weights=_cpu_state_dict(self.model),
                optimizer=copy.deepcopy(self.optimizer.state_dict()) if self.optimizer is not None else None,
                scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
                epoch=self.epoch,
                metric=self.metric,
                best_value=self.best_value,
                best_epoch=self.best_epoch,
                target_mean=self.target_mean,
                target_std=self.target_std,
                max_length=int(self.dataset.max_length),
                dataset_fingerprint=str(self.dataset.fingerprint),
                train_config=copy.deepcopy(self.cfg),
                model_config=copy.deepcopy(self.model.backbone.config),
                history=copy.deepcopy(self.history),
            )
        return replace(self._cached)

    def train_and_validate(self, epoch: int, progress: bool) -> dict[str, Any]:
        """One epoch of training, then validation: the epoch's metrics (metrics.EPOCH_METRICS), kept in history."""
        self.epoch = epoch
        started = time.perf_counter()
        train_loss = self.grow_trees() if self.trees else self.train_epoch(epoch, progress)
        true, predicted = self.validate()
        # Val loss in standardised units, so it is comparable with the train loss.
        val_loss = float(
            self.loss_fn(
                torch.from_numpy((predicted - self.target_mean) / self.target_std),
                torch.from_numpy((true - self.target_mean) / self.target_std),
            )
        )
        metrics: dict[str, Any] = {
            "epoch": epoch,
            TRAIN_LOSS: train_loss,
            VAL_LOSS: val_loss,
            **regression_metrics(true, predicted, split="val"),
            "lr": self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else self.cfg.tree_learning_rate,
            "epoch_seconds": time.perf_counter() - started,
        }
        if self.scheduler is not None:
            self.scheduler.step(val_loss)
        self.history.append(metrics)
        return metrics

    def validate(self) -> tuple[np.ndarray, np.ndarray]:
        """The val samples' true and predicted targets (target units)."""
        if self.fixed_features:
            features, _ = self.split_features("val")
            self.model.eval()
            with torch.inference_mode(), autocast(self.device):
                predicted = self.model.from_features(features.to(self.device)).double().cpu().numpy()
            true = self.dataset.ph[self.dataset.sample_indices("val")].astype(np.float64)
            return true, predicted * self.target_std + self.target_mean
        val = predict(
            self.model,
            self.dataset,
            "val",
            target_mean=self.target_mean,
            target_std=self.target_std,
            batch_size=self.cfg.batch_size,
            sets_per_forward=self.cfg.sets_per_forward(),
            device=self.device,
            vectors=self.vectors,
        )
        return val.true, val.predicted

    def train_epoch(self, epoch: int, progress: bool) -> float:
        """One epoch of gradient steps over the train samples: its mean loss."""
        return train_epoch(
            self.model,
            self.dataset,
            self.cfg,
            epoch=epoch,
            optimizer=self.optimizer,
            loss_fn=self.loss_fn,
            target_mean=self.target_mean,
            target_std=self.target_std,
            device=self.device,
            progress=progress,
            vectors=self.vectors,
            features=self.split_features("train")[0] if self.fixed_features else None,
        )

    def split_features(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The abundances (samples, features) of a split's samples and their standardised pH, from the vectors
        (taken once: the clusters are fit before training and do not move)."""
        if split not in self._features:
            self._features[split] = self._split_features(split)
        return self._features[split]

    def _split_features(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        samples = self.dataset.sample_indices(split)
        if not len(samples):  # as predict says it: a table of no rows would give NaN metrics, or a LightGBM error
            raise ValueError(f"the {split!r} split has no samples; check the split fractions and the dataset size")
        sets = self.dataset.set_indices(split)
        owner = torch.from_numpy(np.searchsorted(samples, self.dataset.set_sample[sets]))
        weights = self.dataset.weights_of(sets)
        # The split's rows are read from the vectors (the cache's memory map) a chunk at a time, never copied out whole.
        features = self.model.aggregation.features(self.vector_array, owner, len(samples), weights, rows=sets)
        target = (torch.from_numpy(self.dataset.ph[samples]).float() - self.target_mean) / self.target_std
        return features.cpu(), target  # on the CPU, beside the target: trees read numpy, wherever the clusters are

    def grow_trees(self) -> float:
        """Grow the tree head on the train samples' abundances (early stopping on val): the train loss."""
        train, target = self.split_features("train")
        val, val_target = self.split_features("val")
        rounds = self.model.head.fit(train, target, val, val_target)
        log.info("trees: %d boosting rounds kept (early stopping on val)", rounds)
        return float(self.loss_fn(self.model.head.regress(train), target))

    def improved(self, metrics: dict[str, Any]) -> bool:
        """Whether this epoch is the best so far by the metric (it then becomes the best)."""
        if not is_better(self.metric, metrics[self.metric], self.best_value):
            return False
        self.best_value, self.best_epoch = metrics[self.metric], metrics["epoch"]
        return True

    def stalled(self) -> bool:
        """Early stopping: the metric has not improved for cfg.early_stopping_patience epochs."""
        patience = self.cfg.early_stopping_patience
        return patience is not None and self.epoch - self.best_epoch >= patience


def _log_epoch(metrics: dict[str, Any], epochs: int, improved: bool) -> None:
    log.info(
        "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_rmse %.3f  val_mae %.3f  val_r2 %.3f  (%.1fs)%s",
        metrics["epoch"],
        epochs,
        metrics[TRAIN_LOSS],
        metrics[VAL_LOSS],
        metrics[VAL_RMSE],
        metrics[VAL_MAE],
        metrics[VAL_R2],
        metrics["epoch_seconds"],
        "  *best" if improved else "",
    )


def _frozen_vectors(
    cfg: TrainConfig,
    dataset: TokenizedDataset,
    model: PhRegressor,
    device: torch.device,
    progress: bool,
    shared: Mapping[str, np.ndarray] | None,
) -> np.ndarray:
    """Every set's vector from the frozen read encoder: k-mer profiles are counted (seconds, nothing to cache), the
    backbone's pooled states come from the driver or the embedding cache (a view of its memory map, not a copy)."""
    if model.read_encoder is not None:
        started = time.perf_counter()
        vectors = kmer_vectors(model.read_encoder, dataset.tokens_of, len(dataset))
        log.info("%s profiles of %d read sets in %.1f s", cfg.read_encoder, len(dataset), time.perf_counter() - started)
        return vectors.numpy()
    set_vectors = embeddings.set_vectors(
        model.backbone,
        dataset,
        cache_dir=cfg.cache_dir,
        device=device,
        progress=progress,
        batch_size=cfg.sets_per_forward(),
        shared=shared,
    )
    return embeddings.pooled(set_vectors, cfg.pooling)


def seeded_model(cfg: TrainConfig) -> PhRegressor:
    """The model a run of cfg starts from: seeded with cfg.seed, then built. What fit() builds when it is given no
    model, and what a search builds to compute a frozen backbone's vectors once (training.run.shared_vectors_key)."""
    seed_everything(cfg.seed)
    return build_model(cfg)


def _vectors_key(cfg: TrainConfig, dataset: TokenizedDataset, model: PhRegressor) -> str:
    """What a frozen run's set vectors are: the encoder (the backbone's weights and pooling, or the k-mer length)
    and the tokenized data."""
    if model.read_encoder is not None:
        data = f"{dataset.fingerprint}-L{dataset.max_length}-n{dataset.max_sets}"
        return f"{cfg.read_encoder}{cfg.encoder_k}-{data}"
    return f"{embeddings.cache_key(model.backbone, dataset)}-{cfg.pooling}"


def _fit_clusters(cfg: TrainConfig, dataset: TokenizedDataset, model: PhRegressor, vectors: np.ndarray) -> None:
    """Fit the read clusters on the train reads' vectors, taking every piece another trial of the search already fit
    (its abundances and head may differ): the PCA depends on the vectors, the reads and the dimensions; each k-means
    also on its cluster count and seed, so a fit of one resolution takes the finest of four, and mlp2's one fit the
    first of trees' five. The fit reads the train rows a chunk at a time from vectors (the cache's memory map): they
    are never copied out all at once."""
    clusters = model.aggregation.read_clusters
    train_sets = dataset.set_indices("train")
    vectors_key = _vectors_key(cfg, dataset, model)

    def once(what: str, settings: dict[str, int], fit: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        # v3: one cache entry per piece (v2 kept a whole fit, so fits that differed in one level shared nothing)
        key = embeddings.fit_key(vectors_key, f"{what}-v3", rows=train_sets, dims=cfg.cluster_dims, **settings)
        return embeddings.fit_once(key, fit, cfg.cache_dir)

    started = time.perf_counter()
    clusters.load_fit(clusters.fit_arrays(vectors, cfg.seed, rows=train_sets, once=once))
    log.info(
        "%s%s clusters of %d train read sets in %.1f s",
        f"{clusters.fits} fits x " if clusters.fits > 1 else "",
        " + ".join(map(str, clusters.levels)),
        len(train_sets),
        time.perf_counter() - started,
    )
    if clusters.topics:
        _fit_topics(cfg, dataset, clusters, vectors, once)


def _fit_topics(
    cfg: TrainConfig, dataset: TokenizedDataset, clusters: ReadClusters, vectors: np.ndarray, once: FitPieces
) -> None:
    """Fit the topics on the train samples' counts in the clusters just fit, each fit's topics shared like its
    k-means (they depend on its finest clusters, the train reads and their counts, the number of topics and the
    seed). The counts are taken only when a fit's topics are not shared."""
    samples, train_sets = dataset.sample_indices("train"), dataset.set_indices("train")
    owner = torch.from_numpy(np.searchsorted(samples, dataset.set_sample[train_sets]))
    started = time.perf_counter()

    @functools.cache
    def counts() -> torch.Tensor:
        # Read a chunk of train rows at a time, like the clusters' fit.
        return clusters.counts_of_rows(vectors, train_sets, owner, len(samples), dataset.weights_of(train_sets))

    weights = [
        once(
            "lda",
            {"clusters": clusters.levels[0], "seed": cfg.seed + fit, "topics": clusters.topics},
            lambda fit=fit: {"topic_weights": clusters.fit_topics(counts(), cfg.seed, fits=[fit])},
        )["topic_weights"]
        for fit in range(clusters.fits)
    ]
    clusters.load_topics(np.concatenate(weights))
    log.info(
        "%s%d topics of %d train samples in %.1f s",
        f"{clusters.fits} fits x " if clusters.fits > 1 else "",
        clusters.topics,
        len(samples),
        time.perf_counter() - started,
    )


def fit(
    cfg: TrainConfig,
    dataset: TokenizedDataset,
    *,
    metric: str = DEFAULT_METRIC,
    on_epoch_end: EpochCallback | None = None,
    resume_from: Checkpoint | None = None,
    progress: bool = True,
    model: PhRegressor | None = None,
    shared_vectors: Mapping[str, np.ndarray] | None = None,
) -> FitResult:
    """Train cfg on dataset's train split, validate each epoch, keep the best epoch by `metric`.

    metric: one of metrics.METRIC_MODES; it picks the best epoch and drives early stopping.
    on_epoch_end(metrics, checkpoint_fn) is called after every epoch; returning True stops training.
    resume_from: a checkpoint from checkpoint_fn() or a file; training continues at its epoch + 1.
    model: an already built PhRegressor (e.g. to load pretrained weights before preparing data).
    shared_vectors: with cfg.freeze_backbone, set vectors computed elsewhere, keyed by embeddings.cache_key (a
    search computes them once on the driver); otherwise they come from the embedding cache on disk. Either way a
    frozen run trains the aggregation and head on cached vectors and never runs the backbone per step.
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    if model is None:
        model = seeded_model(cfg)
    else:
        seed_everything(cfg.seed)
    _check_length(cfg, dataset, model)
    model.to(device)
    run = _Run(cfg, dataset, model, metric, device)
    if resume_from is not None:
        run.resume(resume_from)
    if cfg.freeze_backbone:  # after a resume has loaded its weights: the vectors must be of those
        vectors = _frozen_vectors(cfg, dataset, model, device, progress, shared_vectors)
        run.vector_array = vectors
        if model.aggregation.read_clusters is not None and resume_from is None:  # resumed: the fit is in the weights
            _fit_clusters(cfg, dataset, model, vectors)

    for epoch in range(run.epoch + 1, cfg.epochs + 1):
        metrics = run.train_and_validate(epoch, progress)
        improved = run.improved(metrics)
        _log_epoch(metrics, cfg.epochs, improved)
        if improved:
            run.best_state = run.checkpoint()
        if on_epoch_end is not None and on_epoch_end(dict(metrics), run.checkpoint):
            log.info("stopped after epoch %d by the epoch callback", epoch)
            break
        if run.trees:  # grown once, to their best round on val: another epoch would grow the same trees
            break
        if run.stalled():
            log.info(
                "early stopping: %s has not improved for %d epochs (best epoch %d)",
                metric,
                cfg.early_stopping_patience,
                run.best_epoch,
            )
            break

    if run.best_state is None:
        # Only reachable when resuming past the best epoch without improving: its weights are not in the state.
        log.warning(
            "the best epoch (%d) predates the resumed state; returning the latest state instead", run.best_epoch
        )
        run.best_state = run.checkpoint()
    return FitResult(best_state=run.best_state, history=run.history, best_epoch=run.best_epoch)

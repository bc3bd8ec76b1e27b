"""A training run's checkpoint (best_model.pt, a trial's state.pt) as one typed record: its one writer and reader."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from hyena_dna import HyenaDNAConfig
from hyena_dna.memory import check_memory, model_bytes
from tune_ph.config import MIN_MAX_LENGTH, TrainConfig
from tune_ph.errors import InputError
from tune_ph.files import load_torch, save_torch
from tune_ph.metrics import VAL_LOSS, best_column
from tune_ph.model.aggregation import AGGREGATIONS

_REQUIRED = object()
# What a checkpoint holds besides the weights without which it cannot be rebuilt: every version wrote them.
REQUIRED_KEYS = ("model", "train_config", "model_config", "target_mean", "target_std")

# The clusters fit's buffers in a regressor's state_dict (model.clusters.ReadClusters).
_CENTROIDS, _PROJECTION = "aggregation.clusters.centroids", "aggregation.clusters.projection"

_TYPE_NAMES = {dict: "a mapping", list: "a list", str: "a string", int: "an integer", float: "a number"}


class StateReader:
    """Typed access to a dict loaded from a state file; a value of the wrong type is an InputError naming the file."""

    def __init__(self, state: Any, where: str, what: str):
        if not isinstance(state, dict):
            raise InputError(f"{where} is not {what}: it holds {type(state).__name__}, not a mapping of settings")
        self.state, self.where, self.what = state, where, what

    def require(self, keys: tuple[str, ...]) -> None:
        """Every key must be there: one error listing all that are missing."""
        missing = [k for k in keys if k not in self.state]
        if missing:
            raise InputError(f"{self.where} is not {self.what}: it lacks {', '.join(missing)}")

    def get(self, key: str, kinds: tuple[type, ...], default: Any = _REQUIRED) -> Any:
        """state[key], which must be one of kinds (an int stands for a float, a bool for nothing else)."""
        if key not in self.state or (self.state[key] is None and default is not _REQUIRED):
            if default is _REQUIRED:
                raise InputError(f"{self.where} is not {self.what}: it lacks {key}")
            return default
        value = self.state[key]
        accepted = (*kinds, int) if float in kinds else kinds
        if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in kinds):
            expected = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            raise InputError(
                f"{self.where}: its {key} is {type(value).__name__}, expected {expected}; the file is damaged or "
                f"not {self.what}"
            )
        return value

    def weights(self, key: str) -> dict[str, torch.Tensor]:
        """A state_dict: a mapping of names to tensors."""
        value = self.get(key, (dict,))
        bad = next((k for k, v in value.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
        if bad is not None:
            raise InputError(f"{self.where}: its {key} holds {bad!r}, which is not a named tensor; the file is damaged")
        return value


# A saved state holds the weights once and AdamW's two moments of each: 4x the model is generous; more is refused.
_STATE_COPIES = 4
_STATE_EXTRA_BYTES = 64 << 20  # the pickled settings and history, the RNG states, a head and its clusters


def state_budget(state: Any) -> int:
    """The most bytes a saved state (best_model.pt, a trial's state.pt, pretrain_state.pt) of the model it declares
    may hold: the model with its head, and AdamW's moments. A state without a model_config may hold only small
    settings (its reader then says what it lacks), and so may one whose model_config is not valid. Raises
    ModelTooLargeError for a model this machine cannot build."""
    if not isinstance(state, dict) or not isinstance(state.get("model_config"), dict):
        return _STATE_EXTRA_BYTES
    try:
        config = HyenaDNAConfig.from_dict(state["model_config"])
    except (TypeError, ValueError):  # the reader says what is wrong with it, once the small file is read
        return _STATE_EXTRA_BYTES
    check_memory(config)
    # A head and aggregation of up to 2 width^2 float32 weights, the width being d_model or the clusters (bounded
    # by config.MAX_SIZES), and the clusters fit.
    width, dims = config.d_model, 0
    saved = state.get("train_config")
    if isinstance(saved, dict):
        try:
            train = TrainConfig.from_saved(saved)
            width, dims = AGGREGATIONS[train.aggregation].state_bound(train, width)
        except InputError:  # the reader says what is wrong with it
            pass
    head = 2 * width**2 * 4 + 4 * (width + config.d_model) * dims
    return _STATE_COPIES * (model_bytes(config) + head) + _STATE_EXTRA_BYTES


def load_state(path: str | os.PathLike, what: str) -> Any:
    """A state file, loaded (weights_only) after its declared sizes were checked against the model it declares
    (files.load_torch with state_budget): a memory bomb is refused before it is read."""
    if not Path(path).is_file():
        raise FileNotFoundError(path)
    return load_torch(path, budget=state_budget, what=what.removeprefix("a ").removeprefix("an "))


@dataclass
class Checkpoint:
    """One epoch of a training run: the regressor's weights, what it needs to predict, and what resuming needs.

    On disk a plain dict of tensors and primitives (torch.save; loaded with weights_only=True) whose keys are the
    field names, except `weights`, saved as "model". Files of earlier versions load: only REQUIRED_KEYS must be
    there (a missing max_length is the run's effective one, see from_state; best_val_loss was the best val_loss).
    """

    weights: dict[str, torch.Tensor]  # PhRegressor.state_dict()
    train_config: TrainConfig
    model_config: HyenaDNAConfig  # the backbone's architecture
    target_mean: float  # the standardisation of pH the weights predict in
    target_std: float
    max_length: int  # tokens per read set the run was trained on: new samples are packed the same way
    epoch: int = 0
    dataset_fingerprint: str | None = None
    metric: str | None = None  # the metric that picks the best epoch, and its best value at this epoch
    best_value: float | None = None
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # fit's metrics of every epoch up to this one
    optimizer: dict[str, Any] | None = None  # to resume; None in files written without it
    scheduler: dict[str, Any] | None = None

    WHAT: ClassVar[str] = "a tune_ph checkpoint"  # in error messages

    def to_state(self) -> dict[str, Any]:
        """The on-disk layout (the one writer)."""
        return {
            "model": self.weights,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "epoch": self.epoch,
            "metric": self.metric,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "target_mean": self.target_mean,
            "target_std": self.target_std,
            "max_length": self.max_length,
            "dataset_fingerprint": self.dataset_fingerprint,
            "train_config": self.train_config.to_dict(),
            "model_config": self.model_config.to_dict(),
            "history": self.history,
        }

    @classmethod
    def from_state(cls, state: Any, where: str | os.PathLike = "the checkpoint") -> Checkpoint:
        """Read the on-disk layout, old or new (the one reader); where names the file in errors."""
        read = StateReader(state, str(where), cls.WHAT)
        read.require(REQUIRED_KEYS)
        try:
            train_config = TrainConfig.from_saved(read.get("train_config", (dict,)))
        except InputError as err:
            raise InputError(f"{where}: its train_config cannot be used ({err})") from None
        try:
            model_config = HyenaDNAConfig.from_dict(read.get("model_config", (dict,)))
        except (TypeError, ValueError) as err:
            raise InputError(f"{where}: its model_config cannot be used ({err})") from None
        metric, best_value = read.get("metric", (str,), None), read.get("best_value", (float,), None)
        if metric is None and best_column(VAL_LOSS) in read.state:  # the first layout tracked val_loss only
            metric, best_value = VAL_LOSS, read.get(best_column(VAL_LOSS), (float,))
        return cls(
            weights=read.weights("model"),
            train_config=train_config,
            model_config=model_config,
            target_mean=float(read.get("target_mean", (float,))),
            target_std=float(read.get("target_std", (float,))),
            max_length=_effective_max_length(read.get("max_length", (int,), None), train_config, model_config),
            epoch=read.get("epoch", (int,), 0),
            dataset_fingerprint=read.get("dataset_fingerprint", (str,), None),
            metric=metric,
            best_value=None if best_value is None else float(best_value),
            best_epoch=read.get("best_epoch", (int,), 0),
            history=list(read.get("history", (list,), [])),
            optimizer=read.get("optimizer", (dict,), None),
            scheduler=read.get("scheduler", (dict,), None),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the checkpoint atomically (a crash mid-write never leaves a truncated file)."""
        return save_torch(path, self.to_state())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Checkpoint:
        """Read a checkpoint file; a damaged or foreign file is an InputError naming it."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"checkpoint {path} does not exist; pass RUN/best_model.pt of a finished run")
        return cls.from_state(load_state(path, cls.WHAT), path)

    def num_parameters(self) -> int:
        """Numbers in the weights (the regressor's parameters and buffers)."""
        return sum(t.numel() for t in self.weights.values())


def check_consistent(checkpoint: Checkpoint, where: str | os.PathLike) -> None:
    """A checkpoint's fields agree with each other: a contradiction would predict silently wrong values, or fail deep
    inside torch. Raises InputError naming the file and the field."""
    if not (math.isfinite(checkpoint.target_std) and checkpoint.target_std > 0):
        std = checkpoint.target_std
        raise InputError(f"{where}: its target_std is {std}, not a positive number; the file is damaged")
    if not math.isfinite(checkpoint.target_mean):
        raise InputError(f"{where}: its target_mean is {checkpoint.target_mean}, not a number; the file is damaged")
    limit = checkpoint.model_config.max_length
    if not MIN_MAX_LENGTH <= checkpoint.max_length <= limit:
        raise InputError(
            f"{where}: its max_length {checkpoint.max_length} is outside {MIN_MAX_LENGTH}..{limit}, what its "
            f"model_config (l_max {checkpoint.model_config.l_max}) allows; the file is damaged"
        )
    configured = checkpoint.train_config.max_length
    if configured is not None and configured != checkpoint.max_length:
        raise InputError(
            f"{where}: its max_length {checkpoint.max_length} contradicts its train_config's max_length {configured}; "
            "the file is damaged"
        )


def check_values(weights: dict[str, torch.Tensor], where: str | os.PathLike) -> None:
    """Every weight finite, and a clusters fit that can tell reads apart (not all-equal centroids, not a zero
    projection: every read would land in cluster 0). Raises InputError naming the file and the tensor."""
    for name, value in weights.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InputError(f"{where}: its weight {name} holds NaN or infinite values; the file is damaged")
    centroids, projection = weights.get(_CENTROIDS), weights.get(_PROJECTION)
    # All equal, not any two: fits (cluster_fits) and resolutions of one vectors may well share a centroid, e.g. a
    # cluster of one outlier read that every k-means keeps.
    if centroids is not None and centroids.ndim == 2 and len(centroids) > 1 and bool((centroids == centroids[0]).all()):
        raise InputError(f"{where}: its clusters ({_CENTROIDS}) are all one point; the file is damaged")
    if projection is not None and not bool(projection.any()):
        raise InputError(f"{where}: its clusters' projection ({_PROJECTION}) is all zeros; the file is damaged")


def check_carried(
    expected: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], where: str | os.PathLike
) -> None:
    """The tensors a checkpoint carries are those its configs declare (names and shapes), checked against a model
    built on the meta device before the real one is: a 1 MB file declaring a 5 GB model is refused unbuilt."""
    declared = sum(t.numel() for t in expected.values())
    carried = sum(t.numel() for t in weights.values())
    missing = sorted(set(expected) - set(weights))
    shaped = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if missing or shaped or set(weights) - set(expected):
        first = (missing or shaped or sorted(set(weights) - set(expected)))[0]
        raise InputError(
            f"{where}: its configs declare a model of {declared:,} numbers but it carries {carried:,} that do not fit "
            f"it (first: {first}); the file is damaged or crafted"
        )


def _effective_max_length(saved: int | None, cfg: TrainConfig, model_config: HyenaDNAConfig) -> int:
    """Tokens per read set of a run: as saved with it, else its config's, else the model's maximum (files written
    before max_length was saved trained on the config's, which then defaulted to the model's)."""
    return int(saved or cfg.max_length or model_config.max_length)

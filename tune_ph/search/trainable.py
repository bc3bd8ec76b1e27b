"""Ray Tune function trainable: one trial config -> training.run, reporting metrics and a checkpoint every epoch."""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune

from tune_ph.config import TrainConfig
from tune_ph.data.tokens import TokenizedDataset
from tune_ph.files import TRIAL_STATE_FILE
from tune_ph.metrics import DEFAULT_METRIC, EPOCH_METRICS, best_column, is_better, worst_value
from tune_ph.model.checkpoint import Checkpoint
from tune_ph.search.worker_exit import quiet_shutdown
from tune_ph.training.run import run


def _cap_cuda_memory(gpus: float) -> None:
    """Keep a fractional-GPU trial inside its share so one big trial cannot starve its neighbours."""
    if 0 < gpus < 1 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(float(gpus), device=0)


def trial_threads(cpus: float | None) -> int:
    """Torch threads of a trial with `cpus` CPUs from Ray: the whole CPUs, at least 1 (as Ray's OMP_NUM_THREADS)."""
    return max(math.floor(cpus or 1), 1)


class TrialSink:
    """A run's sink in a Ray trial: every epoch's metrics, with its best so far by the search metric, and the
    epoch's checkpoint, to Ray Tune (which keeps the best ones)."""

    def __init__(self, metric: str, best: float, setup_seconds: float) -> None:
        self.metric, self.best, self.setup_seconds = metric, best, setup_seconds
        self.node_id = ray.get_runtime_context().get_node_id()

    def start(self, cfg: TrainConfig, dataset: TokenizedDataset, model: Any) -> None:
        pass

    def report(self, metrics: dict[str, Any], checkpoint_fn: Callable[[], Checkpoint]) -> None:
        if is_better(self.metric, metrics[self.metric], self.best):
            self.best = float(metrics[self.metric])
        report = {k: metrics[k] for k in EPOCH_METRICS if k in metrics}
        # TPE learns from each trial's best epoch, the epoch that export would pick.
        report[best_column(self.metric)] = self.best
        report["node_id"] = self.node_id
        report["torch_threads"] = torch.get_num_threads()  # decides float reduction order (environment.json)
        report["setup_seconds"] = self.setup_seconds
        with tempfile.TemporaryDirectory(prefix="tune_ph_ckpt_") as folder:
            checkpoint_fn().save(Path(folder) / TRIAL_STATE_FILE)
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))


def train_trial(
    config: dict[str, Any],
    datasets: dict[str, TokenizedDataset],
    metric: str = DEFAULT_METRIC,
    vectors: dict[str, np.ndarray] | None = None,
) -> None:
    """Tune function trainable; `datasets` (keyed by model) and the frozen backbones' set `vectors` (keyed by
    embeddings.cache_key) arrive once through tune.with_parameters."""
    started = time.perf_counter()
    quiet_shutdown()  # Ray stops a trial's worker with SIGTERM: that is no error to print
    # One "checkpoint created" line per epoch per trial would drown Tune's status table.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    # Each trial gets its own CPU budget from Ray; torch would otherwise use every core of the node. From the CPUs
    # Ray assigned, not OMP_NUM_THREADS (Ray keeps a value exported in the shell): the thread count changes float
    # reduction order, and so the numbers, and must follow the search's settings, not the machine's environment.
    torch.set_num_threads(trial_threads(ray.get_runtime_context().get_assigned_resources().get("CPU")))
    cfg = TrainConfig.from_trial(config)
    # The share Ray gave this trial (resources.gpus_per_trial, per model): one source, the scheduler's own.
    _cap_cuda_memory(float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0)))

    resume_from = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume_from = Checkpoint.load(Path(folder) / TRIAL_STATE_FILE)
    best = worst_value(metric)
    if resume_from is not None and resume_from.metric == metric and resume_from.best_value is not None:
        best = resume_from.best_value
    sink = TrialSink(metric, best, time.perf_counter() - started)
    run(
        cfg,
        sink,
        dataset=datasets[cfg.model],
        metric=metric,
        resume_from=resume_from,
        progress=False,
        shared_vectors=vectors,
    )

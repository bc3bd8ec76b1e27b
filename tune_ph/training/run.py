"""One training run: the function the train command and a Ray trial both call, with a sink for what it reports.

run() takes one TrainConfig as given (max_length None: the model's maximum, capped by the longest sample), prepares
the data unless it is handed over (a search prepares it once per model on the driver), and trains with fit(). The
effective max_length is the prepared dataset's: run() builds the resolved config from it once, and every record of
the run (the sink's start, the checkpoints) carries that config; no caller writes it back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from tune_ph.config import TrainConfig
from tune_ph.data import tokens
from tune_ph.data.tokens import TokenizedDataset
from tune_ph.metrics import DEFAULT_METRIC
from tune_ph.model.checkpoint import Checkpoint
from tune_ph.model.regressor import PhRegressor
from tune_ph.training.fit import FitResult, fit, seeded_model


class Sink(Protocol):
    """Where a run's results go: the train command's run folder, or Ray Tune's trial."""

    def start(self, cfg: TrainConfig, dataset: TokenizedDataset, model: PhRegressor | None) -> None:
        """Before the first epoch: the resolved config (its effective max_length) and the data; model: the built
        model when run() built it first (a run that prepares its own data), else None (fit builds it)."""

    def report(self, metrics: dict[str, Any], checkpoint: Callable[[], Checkpoint]) -> bool | None:
        """After every epoch: its metrics (metrics.EPOCH_METRICS); checkpoint() makes the epoch's checkpoint for a
        sink that saves it. True stops the run."""


@dataclass
class RunResult:
    """What run() returns: the resolved config, the data it trained on and fit()'s result."""

    cfg: TrainConfig
    dataset: TokenizedDataset
    fit: FitResult


def run(
    cfg: TrainConfig,
    sink: Sink,
    *,
    dataset: TokenizedDataset | None = None,
    metric: str = DEFAULT_METRIC,
    resume_from: Checkpoint | None = None,
    progress: bool = True,
    shared_vectors: Mapping[str, np.ndarray] | None = None,
) -> RunResult:
    """Train one configuration and report each epoch to the sink.

    dataset: the prepared data (a search's, one per model); None: prepared here for cfg, after the model is built (a
    missing pretrained checkpoint then fails before minutes of data preparation, and the data is tokenized for the
    model's actual maximum length, which for a hub id is known once its config is downloaded).
    metric, resume_from, progress, shared_vectors: as fit() takes them.
    """
    model = None
    if dataset is None:
        from tune_ph.data import sources  # the driver's: a Ray trial gets its data (and never loads pandas, sklearn)

        model = seeded_model(cfg)
        dataset = sources.prepare_for(cfg, model_max_length=model.backbone.config.max_length)
    cfg = tokens.resolved_config(cfg, dataset)
    sink.start(cfg, dataset, model)
    result = fit(
        cfg,
        dataset,
        metric=metric,
        on_epoch_end=sink.report,
        resume_from=resume_from,
        progress=progress,
        model=model,
        shared_vectors=shared_vectors,
    )
    return RunResult(cfg=cfg, dataset=dataset, fit=result)

"""The Ray Tune Tuner of a search: the trainable with the data in the object store, OptunaSearch and ASHA."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from tune_ph.data.tokens import TokenizedDataset
from tune_ph.metrics import best_column, metric_mode
from tune_ph.model import embeddings
from tune_ph.model.read_encoders import ENCODERS
from tune_ph.model.regressor import resolve_device
from tune_ph.report import results
from tune_ph.search import console, embed_stage
from tune_ph.search.spec import OptunaSpace, SearchSpec
from tune_ph.search.trainable import train_trial
from tune_ph.training.fit import seeded_model

log = logging.getLogger(__name__)

# Per trial, Tune keeps the best checkpoints by the search metric (and always the latest, for resuming).
KEEP_CHECKPOINTS = 2


def may_freeze(spec: SearchSpec) -> bool:
    """Whether some trial of the search trains on a frozen backbone."""
    return "freeze_backbone" in spec.params or spec.fixed.get("freeze_backbone") is True


def shared_vectors(
    spec: SearchSpec, datasets: dict[str, TokenizedDataset], progress: bool | str = True
) -> dict[str, np.ndarray]:
    """The frozen backbones' set vectors, computed once per search (or read from the embedding cache) for every
    model a frozen trial may use, keyed by embeddings.cache_key: the distinct reads are embedded by Ray tasks on
    every node of the cluster when Ray runs (embed_stage), else on the driver, with a progress bar (or a line every
    tenth when the console is not a terminal) showing reads/s and the time left.

    The backbone is fit's own (fit.seeded_model of the model's config), so a trial's key matches; a trial whose
    backbone differs (a searched seed of a from-scratch model) misses and computes its own through the disk cache.
    """
    if not may_freeze(spec):
        return {}
    out: dict[str, np.ndarray] = {}
    for model in spec.model_choices():
        cfg = spec.train_config(model)
        if not ENCODERS[cfg.read_encoder].reads_backbone:  # e.g. k-mer profiles: counted by each trial in seconds
            continue
        backbone = seeded_model(cfg).backbone
        dataset = datasets[model]
        key = embeddings.cache_key(backbone, dataset)
        if key not in out:
            log.info("set vectors of %s for frozen trials", model)
            device = resolve_device(cfg.device)
            out[key] = embeddings.set_vectors(
                backbone,
                dataset,
                cache_dir=cfg.cache_dir,
                device=device,
                batch_size=64,
                progress=progress,
                runner=embed_stage.ray_runner(device.type) if ray.is_initialized() else None,
            )
    return out


def _study_storage(study_file: str | Path) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(f"sqlite:///{Path(study_file).resolve()}")


class FolderStudySearch(OptunaSearch):
    """OptunaSearch on the Optuna study of its own experiment folder, also when that folder was moved or copied.

    Ray pickles the searcher, with its study's absolute path, into the experiment; a --resume of a copy would
    otherwise go on writing the original's study. bind_study points it at the folder being resumed, and restore()
    (Ray loading the searcher's saved state) keeps that binding whatever the saved state says.
    """

    def __init__(self, *args: Any, study_file: str | Path, **kwargs: Any) -> None:
        self.study_file = str(Path(study_file).resolve())
        super().__init__(*args, storage=_study_storage(self.study_file), **kwargs)

    def restore(self, checkpoint_path: str) -> None:
        study_file = self.study_file
        super().restore(checkpoint_path)
        self.rebind(study_file)

    def rebind(self, study_file: str | Path) -> None:
        """Use the study in study_file from now on: the storage, the study and the trials asked but not told."""
        self.study_file = str(Path(study_file).resolve())
        self._storage = _study_storage(self.study_file)
        old = self._ot_study
        if old is None:
            return
        self._ot_study = optuna.load_study(
            study_name=old.study_name, storage=self._storage, sampler=old.sampler, pruner=old.pruner
        )
        # Optuna's Trial has no public id; the copied database holds the same trial ids as the original.
        self._ot_trials = {key: optuna.trial.Trial(self._ot_study, t._trial_id) for key, t in self._ot_trials.items()}


def bind_study(runner: tune.Tuner, folder: Path) -> None:
    """After tune.Tuner.restore: the restored searcher reads and writes the study in `folder`, nowhere else."""
    # Ray offers no public handle on the searcher a restored Tuner unpickled from tuner.pkl.
    searcher = runner._local_tuner._tune_config.search_alg
    while hasattr(searcher, "searcher"):  # wrappers (ConcurrencyLimiter) hold the searcher
        searcher = searcher.searcher
    if not isinstance(searcher, OptunaSearch):
        raise RuntimeError(f"{folder}: the restored search has no Optuna searcher ({type(searcher).__name__})")
    if not isinstance(searcher, FolderStudySearch):
        searcher.__class__ = FolderStudySearch  # an experiment started before FolderStudySearch existed
    searcher.rebind(folder / results.STUDY_FILE)


def make_trainable(
    spec: SearchSpec, datasets: dict[str, TokenizedDataset], vectors: dict[str, np.ndarray] | None = None
) -> Any:
    """train_trial with the datasets and the frozen backbones' set vectors in the object store (once each) and
    per-trial resources."""
    trainable = tune.with_parameters(train_trial, datasets=datasets, vectors=vectors or {}, metric=spec.search.metric)
    cpus = spec.resources.cpus_per_trial
    if isinstance(spec.resources.gpus_per_trial, dict):
        return tune.with_resources(trainable, lambda cfg: {"cpu": cpus, "gpu": spec.gpus_for(cfg["model"])})
    return tune.with_resources(trainable, {"cpu": cpus, "gpu": spec.gpus_for(spec.model_choices()[0])})


def make_tuner(
    spec: SearchSpec,
    trainable: Any,
    folder: Path,
    storage: str | None,
    verbose: int,
    callbacks: list[tune.Callback] | None = None,
) -> tune.Tuner:
    """A fresh Tuner: OptunaSearch (seeded TPE, study in SQLite) + ASHA, both on the search metric.

    The console reporter and callbacks are saved with the Tuner, so a --resume shows the same console.
    """
    metric = spec.search.metric
    mode = metric_mode(metric)
    n_startup = max(2, min(10, spec.search.num_samples // 3))
    searcher = FolderStudySearch(
        space=OptunaSpace(spec.trial_params()),
        # TPE learns from each trial's best epoch, the value selection uses too.
        metric=best_column(metric),
        mode=mode,
        sampler=optuna.samplers.TPESampler(seed=spec.search.seed, n_startup_trials=n_startup),
        study_file=folder / results.STUDY_FILE,
        study_name=spec.name,
    )
    scheduler = ASHAScheduler(
        metric=metric,
        mode=mode,
        time_attr="training_iteration",
        max_t=spec.scheduler.max_epochs,
        grace_period=spec.scheduler.grace_period,
        reduction_factor=spec.scheduler.reduction_factor,
    )
    return tune.Tuner(
        trainable,
        param_space=spec.param_space(),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=spec.search.num_samples,
            max_concurrent_trials=spec.search.max_concurrent,
            # Trials of one search share imports and CUDA context; each still builds its own model from config.
            reuse_actors=True,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=storage or str(folder.parent.resolve()),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=KEEP_CHECKPOINTS, checkpoint_score_attribute=metric, checkpoint_score_order=mode
            ),
            # A failing trial (OOM, NaN loss, exception) is recorded with its error; the others go on.
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            verbose=verbose,
            progress_reporter=console.StatusTable(list(spec.params), metric, console.logdir_of(folder, storage)),
            callbacks=[
                console.SearchProgress(list(spec.params), metric, verbose, spec.scheduler.max_epochs),
                *(callbacks or []),
            ],
        ),
    )


def trial_name(trial: Any) -> str:
    """Short trial folder names (Tune's default packs the whole config into the path)."""
    return f"trial_{trial.trial_id}"

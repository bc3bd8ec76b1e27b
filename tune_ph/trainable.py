"""Ray Tune function trainable: one trial config -> train.fit, reporting metrics and a checkpoint every epoch."""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ray import tune

STATE_FILE = "state.pt"
# Extra keys the search puts in a trial config beside TrainConfig fields.
MODEL_CONFIG_KEY = "model_config"
MAX_LENGTH_PER_MODEL_KEY = "max_length_per_model"
REPORTED = ("epoch", "train_loss", "val_loss", "val_rmse", "val_mae", "val_r2", "val_mse", "lr", "epoch_seconds")


def train_config_dict(config: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields of a trial config (Optuna's per-model helper names like batch_size__tiny are dropped)."""
    from tune_ph.train import TrainConfig

    names = set(TrainConfig.__dataclass_fields__)
    out = {k: v for k, v in config.items() if k in names}
    per_model = config.get(MAX_LENGTH_PER_MODEL_KEY)
    if per_model and out.get("model") in per_model:
        out["max_length"] = per_model[out["model"]]
    return out


def dataset_key(config: dict[str, Any]) -> int:
    """Which of the driver's tokenized datasets (keyed by max length) a trial config uses."""
    from tune_ph.space import model_max_length

    cfg = train_config_dict(config)
    if cfg.get("max_length"):
        return int(cfg["max_length"])
    return model_max_length(cfg.get("model", "hyenadna-tiny-1k-seqlen"), config.get(MODEL_CONFIG_KEY))


def _cap_cuda_memory(gpus: float) -> None:
    """Keep a fractional-GPU trial inside its share so one big trial cannot starve its neighbours."""
    import torch

    if gpus and 0 < gpus < 1 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(float(gpus), device=0)


def train_trial(config: dict[str, Any], datasets: dict[int, Any], gpus_per_trial: Any = 0) -> None:
    """Tune function trainable; `datasets` arrives once through tune.with_parameters (the object store)."""
    started = time.perf_counter()
    import logging

    import torch

    # One "checkpoint created" line per epoch per trial would drown Tune's status table.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)

    from hyena_dna import HyenaDNAConfig
    from tune_ph.train import TrainConfig, fit

    cfg_dict = train_config_dict(config)
    # Each trial gets its own CPU budget from Ray; torch would otherwise use every core of the node.
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    ds = datasets[dataset_key(config)]
    cfg_dict["max_length"] = int(ds.max_length)
    cfg = TrainConfig.from_dict(cfg_dict)
    gpus = gpus_per_trial.get(cfg.model, 0) if isinstance(gpus_per_trial, dict) else gpus_per_trial
    _cap_cuda_memory(float(gpus or 0))
    model_config = HyenaDNAConfig.from_dict(config[MODEL_CONFIG_KEY]) if config.get(MODEL_CONFIG_KEY) else None

    resume_from = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume_from = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    best = float(resume_from.get("best_val_loss", math.inf)) if resume_from else math.inf
    node_id = _node_id()
    setup_seconds = time.perf_counter() - started

    def on_epoch_end(metrics: dict[str, Any], state_fn: Any) -> None:
        nonlocal best
        best = min(best, float(metrics["val_loss"]))
        report = {k: metrics[k] for k in REPORTED if k in metrics}
        report["best_val_loss"] = best
        report["node_id"] = node_id
        report["setup_seconds"] = setup_seconds
        with tempfile.TemporaryDirectory(prefix="tune_ph_ckpt_") as folder:
            torch.save(state_fn(), Path(folder) / STATE_FILE)
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))

    fit(cfg, ds, on_epoch_end=on_epoch_end, resume_from=resume_from, model_config=model_config, progress=False)


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - only informative
        return ""

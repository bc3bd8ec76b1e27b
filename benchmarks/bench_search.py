"""Benchmark: share of each trial's wall time spent outside training, and dataset setup time per trial."""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from ray import tune

from tune_ph.search import cluster, run, tuner
from tune_ph.search.space import parse_space


class TrialClock(tune.Callback):
    """Driver-side wall time of each trial, from Tune starting it to Tune seeing it finish."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.wall: dict[str, float] = {}
        self.training: dict[str, float] = {}
        self.trial_setup: dict[str, float] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started[trial.trial_id] = time.perf_counter()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.training[trial.trial_id] = self.training.get(trial.trial_id, 0.0) + float(result["epoch_seconds"])
        self.trial_setup[trial.trial_id] = float(result["setup_seconds"])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.wall[trial.trial_id] = time.perf_counter() - self.started[trial.trial_id]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--epochs", type=int, default=16, help="epochs per trial (default: about 1 minute per trial on CPU)")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--max-length", type=int, default=256)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    raw = {
        "name": "bench",
        "fixed": {
            "dataset": "demo",
            "from_scratch": True,
            "max_length": args.max_length,
            "max_sets": 2,
            "epochs": args.epochs,
            "batch_size": 8,
            "device": "auto",
            "head": "linear",
            "model_config": {
                "d_model": args.d_model,
                "n_layer": 2,
                "d_inner": 2 * args.d_model,
                "filter_order": 32,
                "l_max": args.max_length + 2,
            },
        },
        "space": {"learning_rate": {"loguniform": [3e-4, 1e-3]}},
        "search": {"num_samples": args.trials, "seed": 0, "max_concurrent": 1},
        # grace = max: ASHA stops nothing, so every trial has the same length.
        "scheduler": {"grace_period": args.epochs, "max_epochs": args.epochs},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
    }
    spec = parse_space(raw, "bench")
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        folder = Path(tmp) / spec.name
        folder.mkdir()
        started = time.perf_counter()
        datasets = run.prepare_datasets(spec)
        setup = time.perf_counter() - started
        shutdown = cluster.init_ray()
        try:
            clock = TrialClock()
            runner = tuner.make_tuner(spec, tuner.make_trainable(spec, datasets), folder, None, 0, [clock])
            runner.fit()
        finally:
            if shutdown:
                import ray

                ray.shutdown()
    ids = sorted(clock.wall)
    wall = sum(clock.wall[i] for i in ids)
    training = sum(clock.training.get(i, 0.0) for i in ids)
    outside = 1 - training / wall if wall else float("nan")
    n = max(len(ids), 1)
    in_trial = sum(clock.trial_setup.get(i, 0.0) for i in ids) / n
    print(
        f"bench_search: {len(ids)} trials, mean trial wall {wall / n:.1f}s, "
        f"outside training {100 * outside:.1f}% (target <= 5% for 1-minute trials), "
        f"dataset setup {setup:.2f}s once on the driver = {setup / n:.2f}s per trial "
        f"(+ {in_trial:.2f}s inside each trial before its first epoch)"
    )


if __name__ == "__main__":
    main()

"""Helpers shared by the test modules: a tiny search space, writing it as YAML, Ray worker hooks (tokenization
counter, kill switch)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml

from hyena_dna.tokenizer import VOCAB
from tune_ph.data.tokens import TokenizedDataset

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = {"d_model": 16, "n_layer": 1, "d_inner": 32, "filter_order": 16, "l_max": 130}
BUILD_LOG_VAR = "TUNE_PH_BUILD_LOG"
# A folder the Ray workers watch: a file KILL_ONCE there makes the first trial that starts training kill its own
# worker process (SIGKILL, as the OOM killer would); see kill_switch.
KILL_DIR_VAR = "TUNE_PH_KILL_DIR"
KILL_ONCE = "kill-once"


def tiny_space(**changes: object) -> dict:
    """A search that trains in seconds: 16-wide one-layer backbone, 128 tokens, one set per sample.

    changes: `section__key=value` sets one key of a section, `section=value` replaces a section.
    """
    space = {
        "name": "tiny",
        "fixed": {
            "dataset": "demo",
            "from_scratch": True,
            "model_config": dict(TINY_MODEL),
            "max_length": 128,
            "max_sets": 1,
            "epochs": 2,
            "batch_size": 32,
            "device": "cpu",
        },
        "space": {
            "head": {"choice": ["linear", "mlp2"]},
            "learning_rate": {"loguniform": [1e-4, 3e-3]},
            "head_dropout": {"uniform": [0.0, 0.3], "when": {"head": ["mlp2"]}},
        },
        "search": {"num_samples": 3, "seed": 0, "max_concurrent": 2},
        "scheduler": {"grace_period": 1, "reduction_factor": 2, "max_epochs": 2},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
    }
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            space[section][name] = value
        else:
            space[section] = value
    return space


def write_space(folder: Path, space: dict, name: str = "space.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def count_tokenizing() -> None:
    """Ray worker setup hook: append `<pid> build|tokenize` to $TUNE_PH_BUILD_LOG for every call in this worker.

    It lets a test prove that trial processes never tokenize, without mocking anything they run.
    """
    log = os.environ[BUILD_LOG_VAR]
    from tune_ph.data import tokens

    for name in ("build", "tokenize"):
        original = getattr(tokens, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            with open(log, "a") as fh:
                fh.write(f"{os.getpid()} {_name}\n")
            return _original(*args, **kwargs)

        setattr(tokens, name, counted)


def kill_switch() -> None:
    """Ray worker setup hook: while $TUNE_PH_KILL_DIR/kill-once exists, the first trial to reach the kill point
    (across all workers: an O_EXCL marker file decides) SIGKILLs its own process, as the kernel's OOM killer would.

    The file holds the kill point: empty or 0 = before training, N = right after epoch N was reported; "raise"
    makes that trial raise an exception before training instead (a failure with a Python error). It wraps
    tune_ph.training.run's reference to fit in the worker only; the product code has no test hook.
    """
    folder = os.environ.get(KILL_DIR_VAR)
    if not folder:
        return
    import signal

    from tune_ph.training import run

    original = run.fit

    def maybe_die(epoch: int) -> None:
        try:
            with open(os.path.join(folder, KILL_ONCE)) as fh:
                when = fh.read().strip() or "0"
        except FileNotFoundError:
            return
        if ("0" if when == "raise" else when) != str(epoch):
            return
        try:
            os.close(os.open(os.path.join(folder, "killed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        if when == "raise":
            raise RuntimeError("injected failure (helpers.kill_switch)")
        os.kill(os.getpid(), signal.SIGKILL)

    def fit(*args, **kwargs):
        maybe_die(0)
        callback = kwargs.get("on_epoch_end")
        if callback is not None:

            def on_epoch_end(metrics, checkpoint_fn):
                stop = callback(metrics, checkpoint_fn)
                maybe_die(int(metrics["epoch"]))
                return stop

            kwargs["on_epoch_end"] = on_epoch_end
        return original(*args, **kwargs)

    run.fit = fit


def worker_setup() -> None:
    """The test session's Ray worker_process_setup_hook: every hook above."""
    count_tokenizing()
    kill_switch()


# A custom backbone, as TrainConfig.model_config (trained from scratch).
TINY = dict(d_model=32, n_layer=1, d_inner=64, l_max=66)


def tiny_state(**train: object) -> dict:
    """A best_model.pt's content as train writes it (untrained TINY model, clusters fit on random vectors)."""
    # Imported here: Ray workers import this module through their setup hook, and need no model to do so.
    import torch

    from tune_ph.config import TrainConfig
    from tune_ph.model.regressor import build_model

    cfg = TrainConfig(dataset="demo", from_scratch=True, model_config=dict(TINY), max_length=64, device="cpu", **train)
    model = build_model(cfg)
    if cfg.aggregation == "clusters":
        model.aggregation.clusters.fit(torch.randn(64, TINY["d_model"]), seed=0)
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "train_config": cfg.to_dict(),
        "model_config": model.backbone.config.to_dict(),
        "target_mean": 6.0,
        "target_std": 1.0,
        "max_length": 64,
        "epoch": 1,
    }


def motif_dataset(n_samples: int = 48, max_length: int = 64, max_sets: int = 2, seed: int = 0) -> TokenizedDataset:
    """Sets made of two bases, pH linear in the fraction of G: learnable by a tiny model in a few epochs."""
    rng = np.random.default_rng(seed)
    ph = rng.uniform(3.0, 9.0, n_samples).astype(np.float32)
    chunks, set_sample = [], []
    for i, value in enumerate(ph):
        frac_g = (value - 3.0) / 6.0
        for _ in range(max_sets):
            n = int(rng.integers(max_length // 2, max_length + 1))  # ragged: exercises the padding
            chunks.append(np.where(rng.random(n) < frac_g, VOCAB["G"], VOCAB["A"]).astype(np.uint8))
            set_sample.append(i)
    return sets_dataset(
        chunks, set_sample, ph, n_val=6, n_test=6, max_length=max_length, max_sets=max_sets, fingerprint="motif"
    )


def sets_dataset(
    chunks: list[np.ndarray],
    set_sample: list[int],
    ph: np.ndarray,
    *,
    n_val: int,
    n_test: int,
    max_length: int,
    max_sets: int,
    fingerprint: str,
) -> TokenizedDataset:
    """A TokenizedDataset of given token sets (set_sample: each set's sample); the last samples are val, then test."""
    n_samples = len(ph)
    split = np.array(["train"] * n_samples, dtype="<U5")
    split[n_samples - n_val - n_test : n_samples - n_test] = "val"
    split[n_samples - n_test :] = "test"
    return TokenizedDataset(
        ids=np.concatenate(chunks),
        offsets=np.r_[0, np.cumsum([len(c) for c in chunks])].astype(np.int64),
        set_sample=np.asarray(set_sample, dtype=np.int32),
        sample_ids=np.array([f"S{i:03d}" for i in range(n_samples)]),
        study_name=np.array(["study"] * n_samples),
        environment=np.array(["soil", "lake"] * (n_samples // 2) + ["soil"] * (n_samples % 2)),
        ph=np.asarray(ph, dtype=np.float32),
        split=split,
        max_length=max_length,
        max_sets=max_sets,
        fingerprint=fingerprint,
    )

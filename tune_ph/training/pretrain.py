"""Self-supervised next-token pretraining of the HyenaDNA backbone on the reads of a dataset's train split."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hyena_dna import HyenaDNAConfig, HyenaDNAModel
from tune_ph import files
from tune_ph.data import sources, tokens
from tune_ph.data.split import SplitRecord
from tune_ph.data.tokens import TokenizedDataset
from tune_ph.errors import ConfigError, InputError
from tune_ph.files import save_torch, write_json
from tune_ph.model.causal_lm import CausalLM, eval_loss, eval_slice, right_padded
from tune_ph.model.regressor import autocast, build_model, configure_optimizer, resolve_device
from tune_ph.training import environment
from tune_ph.training.epoch import NonFiniteLossError, seed_everything
from tune_ph.training.pretrain_config import RUNTIME_FIELDS, PretrainConfig

log = logging.getLogger(__name__)

# The files of a pretraining folder, beside the backbone's config.json + weights.ckpt (save_pretrained).
STATE_FILE = "pretrain_state.pt"  # everything --resume needs (torch.load(weights_only=True))
HISTORY_FILE = "pretrain_history.json"
CONFIG_FILE = "pretrain_config.json"
# What the resumable state must hold.
STATE_KEYS = (
    "backbone",
    "model_config",
    "optimizer",
    "scheduler",
    "step",
    "epoch",
    "torch_rng",
    "config",
    "history",
    "dataset_fingerprint",
    "split_hash",
)
# The cosine decay ends at this share of the peak learning rate, so the last steps still learn a little.
MIN_LR_FACTOR = 0.1


@dataclass
class PretrainResult:
    """What pretrain() returns: the history (as pretrain_history.json), the run folder, the trained backbone."""

    history: dict[str, list[dict[str, Any]]]
    output_dir: Path
    backbone: HyenaDNAModel
    steps: int = 0
    tokens_per_second: float = math.nan


# ------------------------------------------------------------------------------------------------ the model


def warmup_cosine(step: int, *, warmup: int, total: int) -> float:
    """The learning-rate factor of optimizer step step+1: linear warm-up to 1, then cosine down to MIN_LR_FACTOR."""
    if step < warmup:
        return (step + 1) / warmup
    done = min((step - warmup) / max(total - warmup, 1), 1.0)
    return MIN_LR_FACTOR + (1 - MIN_LR_FACTOR) * 0.5 * (1 + math.cos(math.pi * done))


# --------------------------------------------------------------------------------------------- the run folder


def _check_fresh(out: Path) -> None:
    """A new run never mixes its files with another's."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"--output-dir {out} is a file; choose a folder")
    if (out / STATE_FILE).exists():
        raise InputError(
            f"{out} already holds a pretraining run ({STATE_FILE}); pass --resume to continue it, "
            "or choose another --output-dir"
        )
    if any(out.iterdir()):
        raise InputError(f"{out} is not empty; choose a new or empty --output-dir (or --resume a run in it)")


def load_state(out: Path) -> dict[str, Any]:
    """The resumable state of a run folder (weights_only: only tensors and plain settings are ever loaded)."""
    path = out / STATE_FILE
    if not path.is_file():
        raise InputError(f"--resume: {out} has no {STATE_FILE} to continue from; run without --resume to start")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise InputError(f"{path} cannot be read as a pretraining state ({type(err).__name__}: {err})") from None
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise InputError(f"{path} is not a pretraining state: it lacks {', '.join(missing)}")
    return state


def saved_config(out: Path) -> dict[str, Any]:
    """The settings a run folder was started with (pretrain_config.json), for --resume on the command line."""
    path = out / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"--resume: {out} has no {CONFIG_FILE}; it is not a pretraining run folder")
    try:
        return dict(json.loads(path.read_text())["pretrain_config"])
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path} cannot be read ({type(err).__name__}: {err})") from None


def _resumed_config(cfg: PretrainConfig, saved: dict[str, Any]) -> PretrainConfig:
    """cfg, checked against the state's settings: only where and how the run goes may change."""
    old = PretrainConfig.from_dict(saved)
    changed = [
        f"{f.name}: {getattr(old, f.name)!r} -> {getattr(cfg, f.name)!r}"
        for f in fields(cfg)
        if f.name not in RUNTIME_FIELDS
        and getattr(cfg, f.name) != getattr(old, f.name)
        and not (f.name == "max_length" and cfg.max_length is None)  # None: "as before", resolved when it started
    ]
    if changed:
        raise ConfigError(
            changed[0].split(":")[0],
            f"--resume continues a run with its own settings, but these differ: {'; '.join(changed)}. "
            "Drop those flags, or start a new run in another --output-dir",
        )
    return replace(cfg, max_length=old.max_length)


def _write_checkpoint(out: Path, lm: CausalLM, state: dict[str, Any], history: dict[str, list[dict[str, Any]]]) -> None:
    # The state last: it is what --resume trusts; the backbone and history written before it are at least as new.
    write_json(out / HISTORY_FILE, history)
    lm.backbone.save_pretrained(out)
    save_torch(out / STATE_FILE, state)


# ------------------------------------------------------------------------------------------------ training


def pretrain(
    cfg: PretrainConfig, dataset: TokenizedDataset | None = None, progress: bool = True, *, resume: bool = False
) -> PretrainResult:
    """Next-token pretraining of cfg.model on the train split's read sets; writes cfg.output_dir.

    dataset: already tokenized data (default: sources.prepare_for(cfg.train_config()), the published split).
    resume: continue the run in cfg.output_dir from its pretrain_state.pt (its settings must match cfg's).
    """
    cfg.validate()
    out = Path(cfg.output_dir)
    state = load_state(out) if resume else None
    if state is None:
        _check_fresh(out)
    else:
        cfg = _resumed_config(cfg, state["config"])
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    if state is not None:
        # Its own architecture and weights: a size name would be downloaded (or drawn at random) again.
        backbone = HyenaDNAModel(HyenaDNAConfig.from_dict(state["model_config"]))
        backbone.load_state_dict(state["backbone"])
    else:
        backbone = build_model(cfg.train_config()).backbone  # a missing checkpoint fails before data preparation
    if dataset is None:
        dataset = sources.prepare_for(cfg.train_config(), model_max_length=backbone.config.max_length)
    if dataset.max_length > backbone.config.max_length:
        raise ValueError(
            f"the dataset was tokenized with max_length={dataset.max_length} but the model {cfg.model!r} takes at "
            f"most {backbone.config.max_length} tokens; rebuild it with --max-length {backbone.config.max_length}"
        )
    cfg = replace(cfg, max_length=int(dataset.max_length))
    split_hash = tokens.split_hash(dataset.split_dict())
    if state is not None and (state["dataset_fingerprint"], state["split_hash"]) != (dataset.fingerprint, split_hash):
        raise InputError(
            f"--resume: the dataset or its split differs from the one {out} was pretrained on; "
            "resume with the same --dataset and split settings"
        )
    train_sets = dataset.set_indices("train")
    if len(train_sets) == 0:
        raise ValueError("the 'train' split has no read sets; check the split fractions and the dataset size")
    steps_per_epoch = -(-len(train_sets) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * steps_per_epoch)

    lm = CausalLM(backbone).to(device)
    lm.train()
    optimizer = configure_optimizer(lm, cfg.train_config())  # duck-typed: it reads .backbone.config and modules()
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(warmup_cosine, warmup=cfg.warmup_steps, total=total)
    )
    history: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
    step = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = {k: list(v) for k, v in state["history"].items()}
        step = int(state["step"])
        # After every module was built: the dropout masks then continue as if the run had never stopped.
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng"):
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        log.info("resuming %s at step %d of %d", out, step + 1, total)

    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / CONFIG_FILE,
        {
            "pretrain_config": cfg.to_dict(),
            "model_config": backbone.config.to_dict(),
            "dataset_fingerprint": str(dataset.fingerprint),
            "split_hash": split_hash,
        },
    )
    write_json(out / files.SPLIT_FILE, SplitRecord.of_dataset(dataset, cfg.train_config()).to_dict())
    environment.record(out, seed=cfg.seed, split_seed=cfg.split_seed)
    val_sets = eval_slice(dataset, cfg.eval_sets)
    log.info(
        "pretraining %s (%d parameters) on %d train read sets of up to %d tokens: %d steps of %d sets "
        "(%d per epoch); eval on %d val sets -> %s",
        cfg.model,
        backbone.num_parameters(),
        len(train_sets),
        dataset.max_length,
        total,
        cfg.batch_size,
        steps_per_epoch,
        len(val_sets),
        out,
    )

    def snapshot(epoch: int) -> dict[str, Any]:
        return {
            "backbone": {k: v.detach().to("cpu", copy=True) for k, v in backbone.state_dict().items()},
            "model_config": backbone.config.to_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "epoch": epoch,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            "config": cfg.to_dict(),
            "history": history,
            "dataset_fingerprint": str(dataset.fingerprint),
            "split_hash": split_hash,
            "max_length": int(dataset.max_length),
        }

    show = progress and cfg.progress
    bar = tqdm(total=total, initial=step, desc="pretrain", unit="step", disable=not show)
    # Losses stay on the device between log points: one host sync per log line, not per step.
    window = torch.zeros((), device=device, dtype=torch.float64)
    window_steps = window_tokens = run_tokens = 0
    train_seconds = 0.0  # training only: evaluation and checkpoints are not throughput
    window_start = time.perf_counter()
    try:
        while step < total:
            epoch = step // steps_per_epoch + 1
            # A fixed order per epoch (seed, epoch): a resumed run skips exactly the batches it has done.
            order = np.random.default_rng((cfg.seed, epoch)).permutation(train_sets)
            for batch in range(step % steps_per_epoch, steps_per_epoch):
                ids, mask = right_padded(dataset, order[batch * cfg.batch_size : (batch + 1) * cfg.batch_size])
                with autocast(device):
                    loss = lm(ids.to(device, non_blocking=True), mask.to(device, non_blocking=True))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(lm.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                step += 1
                window += loss.detach()
                window_steps += 1
                window_tokens += int(mask.sum())
                bar.update(1)
                last = step == total
                if step % cfg.log_every == 0 or last:
                    mean = float(window) / window_steps
                    if not math.isfinite(mean):
                        raise NonFiniteLossError(
                            f"non-finite pretraining loss ({mean}) in steps {step - window_steps + 1}..{step}; "
                            "the run was stopped. Lower --learning-rate or keep --grad-clip on."
                        )
                    now = time.perf_counter()
                    entry = {
                        "step": step,
                        "epoch": epoch,
                        "loss": mean,
                        "lr": optimizer.param_groups[0]["lr"],
                        "tokens_per_s": window_tokens / max(now - window_start, 1e-9),
                    }
                    history["train"].append(entry)
                    # Without a progress bar these lines are the only sign of progress: log them at INFO then.
                    log.log(
                        logging.DEBUG if cfg.progress else logging.INFO,
                        "step %d/%d  loss %.4f  lr %.2e  %.0f tokens/s",
                        step,
                        total,
                        mean,
                        entry["lr"],
                        entry["tokens_per_s"],
                    )
                    bar.set_postfix(loss=f"{mean:.4f}", tok_s=f"{entry['tokens_per_s']:.0f}", refresh=False)
                    run_tokens += window_tokens
                    train_seconds += now - window_start
                    window.zero_()
                    window_steps = window_tokens = 0
                    window_start = now
                epoch_end = step % steps_per_epoch == 0
                if epoch_end or last:  # a run cut short by max_steps is evaluated too
                    value = eval_loss(lm, dataset, val_sets, cfg.batch_size, device)
                    history["eval"].append({"step": step, "epoch": epoch, "epoch_end": epoch_end, "eval_loss": value})
                    log.info(
                        "epoch %d  step %d/%d  loss %.4f  eval_loss %s",
                        epoch,
                        step,
                        total,
                        history["train"][-1]["loss"] if history["train"] else math.nan,
                        "n/a (no val sets)" if value is None else f"{value:.4f}",
                    )
                if step % cfg.checkpoint_every == 0 or last:
                    _write_checkpoint(out, lm, snapshot(epoch), history)
                if epoch_end or step % cfg.checkpoint_every == 0:
                    window_start = time.perf_counter()
                if last:
                    break
    finally:
        bar.close()
    speed = run_tokens / train_seconds if run_tokens and train_seconds > 0 else math.nan
    if state is not None and int(state["step"]) >= total:
        log.info("%s had already finished (%d steps)", out, total)
        _write_checkpoint(out, lm, state, history)
    if math.isfinite(speed):
        log.info("pretrained %d steps (%.0f tokens/s) -> %s", step, speed, out)
    return PretrainResult(history=history, output_dir=out, backbone=backbone, steps=step, tokens_per_second=speed)

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

from hyena_dna import HyenaDNAModel
from tune_ph import files
from tune_ph.data import sources, tokens
from tune_ph.data.split import SplitRecord
from tune_ph.data.tokens import TokenizedDataset
from tune_ph.errors import ConfigError, InputError
from tune_ph.files import write_json
from tune_ph.model.causal_lm import CausalLM, eval_loss, eval_slice, right_padded
from tune_ph.model.regressor import autocast, build_model, configure_optimizer, resolve_device
from tune_ph.progress import bar_disable
from tune_ph.training import environment
from tune_ph.training.epoch import NonFiniteLossError, seed_everything
from tune_ph.training.pretrain_config import RUNTIME_FIELDS, PretrainConfig
from tune_ph.training.pretrain_state import STATE_FILE, PretrainState

log = logging.getLogger(__name__)

# The files of a pretraining folder, beside pretrain_state.STATE_FILE and the backbone's config.json + weights.ckpt
# (save_pretrained).
HISTORY_FILE = "pretrain_history.json"
CONFIG_FILE = files.PRETRAIN_CONFIG_FILE
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


def saved_config(out: Path) -> dict[str, Any]:
    """The settings a run folder was started with (pretrain_config.json), for --resume on the command line."""
    path = out / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"--resume: {out} has no {CONFIG_FILE}; it is not a pretraining run folder")
    try:
        return dict(json.loads(path.read_text())["pretrain_config"])
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path} cannot be read ({type(err).__name__}: {err})") from None


def _resumed_config(cfg: PretrainConfig, old: PretrainConfig) -> PretrainConfig:
    """cfg, checked against the state's settings: only where and how the run goes may change."""
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


def _write_checkpoint(out: Path, lm: CausalLM, state: PretrainState, history: dict[str, list[dict[str, Any]]]) -> None:
    # The state last: it is what --resume trusts; the backbone and history written before it are at least as new.
    # The backbone files change: the finished-run marker no longer vouches for them (a crash now leaves none).
    files.unmark_pretrain_done(out)
    write_json(out / HISTORY_FILE, history)
    lm.backbone.save_pretrained(out)
    state.save(out)


def _write_run_files(
    out: Path, cfg: PretrainConfig, backbone: HyenaDNAModel, dataset: TokenizedDataset, split_hash: str
) -> None:
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


# ------------------------------------------------------------------------------------------------ training


class _Window:
    """The losses and tokens since the last log line. Losses stay on the device: one host sync per log line."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.steps = self.tokens = 0
        self.started = time.perf_counter()
        self.run_tokens = 0
        self.train_seconds = 0.0  # training only: evaluation and checkpoints are not throughput

    def add(self, loss: torch.Tensor, tokens: int) -> None:
        self.loss += loss.detach()
        self.steps += 1
        self.tokens += tokens

    def close(self, step: int) -> tuple[float, float]:
        """(mean loss, tokens per second) of the window that ends at `step`; the next one starts now."""
        mean = float(self.loss) / self.steps
        if not math.isfinite(mean):
            raise NonFiniteLossError(
                f"non-finite pretraining loss ({mean}) in steps {step - self.steps + 1}..{step}; "
                "the run was stopped. Lower --learning-rate or keep --grad-clip on."
            )
        now = time.perf_counter()
        speed = self.tokens / max(now - self.started, 1e-9)
        self.run_tokens += self.tokens
        self.train_seconds += now - self.started
        self.loss.zero_()
        self.steps = self.tokens = 0
        self.started = now
        return mean, speed

    def restart(self) -> None:
        """Start the clock again after work that is not training (evaluation, a checkpoint)."""
        self.started = time.perf_counter()

    def tokens_per_second(self) -> float:
        """Of the whole run's training; NaN before the first log line."""
        return self.run_tokens / self.train_seconds if self.run_tokens and self.train_seconds > 0 else math.nan


class _Pretraining:
    """The moving parts of one pretrain(): the language model, its optimizer and schedule, the step, the history."""

    def __init__(
        self,
        cfg: PretrainConfig,
        dataset: TokenizedDataset,
        backbone: HyenaDNAModel,
        device: torch.device,
        split_hash: str,
    ):
        self.cfg, self.dataset, self.device, self.split_hash = cfg, dataset, device, split_hash
        self.out = Path(cfg.output_dir)
        self.train_sets = dataset.set_indices("train")
        if len(self.train_sets) == 0:
            raise ValueError("the 'train' split has no read sets; check the split fractions and the dataset size")
        self.steps_per_epoch = -(-len(self.train_sets) // cfg.batch_size)
        planned = cfg.epochs * self.steps_per_epoch
        self.total = planned if cfg.max_steps is None else min(cfg.max_steps, planned)
        self.lm = CausalLM(backbone).to(device)
        self.lm.train()
        self.optimizer = configure_optimizer(self.lm, cfg.train_config())  # duck-typed: .backbone.config, modules()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, partial(warmup_cosine, warmup=cfg.warmup_steps, total=self.total)
        )
        self.history: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
        self.step = 0
        self.val_sets = eval_slice(dataset, cfg.eval_sets)

    def restore(self, state: PretrainState) -> None:
        """Continue at the state's step (after every module was built: the dropout masks then continue as if the
        run had never stopped)."""
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.history = {k: list(v) for k, v in state.history.items()}
        self.step = state.step
        torch.set_rng_state(state.torch_rng)
        if self.device.type == "cuda" and state.cuda_rng:
            torch.cuda.set_rng_state_all(state.cuda_rng)
        log.info("resuming %s at step %d of %d", self.out, self.step + 1, self.total)

    def snapshot(self, epoch: int) -> PretrainState:
        backbone = self.lm.backbone
        return PretrainState(
            backbone={k: v.detach().to("cpu", copy=True) for k, v in backbone.state_dict().items()},
            model_config=backbone.config,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            step=self.step,
            epoch=epoch,
            torch_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            config=self.cfg,
            history=self.history,
            dataset_fingerprint=str(self.dataset.fingerprint),
            split_hash=self.split_hash,
            max_length=int(self.dataset.max_length),
        )

    def run(self, show: bool) -> float:
        """Train up to self.total steps; returns the training's tokens per second (NaN if it logged none)."""
        bar = tqdm(total=self.total, initial=self.step, desc="pretrain", unit="step", disable=bar_disable(show))
        window = _Window(self.device)
        size = self.cfg.batch_size
        try:
            while self.step < self.total:
                epoch = self.step // self.steps_per_epoch + 1
                # A fixed order per epoch (seed, epoch): a resumed run skips exactly the batches it has done.
                order = np.random.default_rng((self.cfg.seed, epoch)).permutation(self.train_sets)
                for batch in range(self.step % self.steps_per_epoch, self.steps_per_epoch):
                    self._optimize(order[batch * size : (batch + 1) * size], window)
                    bar.update(1)
                    self._after_step(epoch, window, bar)
                    if self.step == self.total:
                        break
        finally:
            bar.close()
        return window.tokens_per_second()

    def _optimize(self, sets: np.ndarray, window: _Window) -> None:
        """One optimizer step on a batch of read sets."""
        ids, mask = right_padded(self.dataset, sets)
        with autocast(self.device):
            loss = self.lm(ids.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.lm.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        window.add(loss, int(mask.sum()))

    def _after_step(self, epoch: int, window: _Window, bar: tqdm) -> None:
        """What follows a step: a log line every log_every steps, evaluation at an epoch's end, checkpoints."""
        step, cfg = self.step, self.cfg
        last = step == self.total
        if step % cfg.log_every == 0 or last:
            self._log_train(epoch, window, bar)
        epoch_end = step % self.steps_per_epoch == 0
        if epoch_end or last:  # a run cut short by max_steps is evaluated too
            self._evaluate(epoch, epoch_end)
        if step % cfg.checkpoint_every == 0 or last:
            _write_checkpoint(self.out, self.lm, self.snapshot(epoch), self.history)
        if epoch_end or step % cfg.checkpoint_every == 0:
            window.restart()

    def _log_train(self, epoch: int, window: _Window, bar: tqdm) -> None:
        mean, speed = window.close(self.step)
        lr = self.optimizer.param_groups[0]["lr"]
        self.history["train"].append({"step": self.step, "epoch": epoch, "loss": mean, "lr": lr, "tokens_per_s": speed})
        # Without a progress bar these lines are the only sign of progress: log them at INFO then.
        log.log(
            logging.INFO if bar.disable else logging.DEBUG,
            "step %d/%d  loss %.4f  lr %.2e  %.0f tokens/s",
            self.step,
            self.total,
            mean,
            lr,
            speed,
        )
        bar.set_postfix(loss=f"{mean:.4f}", tok_s=f"{speed:.0f}", refresh=False)

    def _evaluate(self, epoch: int, epoch_end: bool) -> None:
        value = eval_loss(self.lm, self.dataset, self.val_sets, self.cfg.batch_size, self.device)
        self.history["eval"].append({"step": self.step, "epoch": epoch, "epoch_end": epoch_end, "eval_loss": value})
        log.info(
            "epoch %d  step %d/%d  loss %.4f  eval_loss %s",
            epoch,
            self.step,
            self.total,
            self.history["train"][-1]["loss"] if self.history["train"] else math.nan,
            "n/a (no val sets)" if value is None else f"{value:.4f}",
        )


def _backbone(cfg: PretrainConfig, state: PretrainState | None) -> HyenaDNAModel:
    """The backbone to pretrain: the state's when resuming, else cfg.model's."""
    if state is None:
        return build_model(cfg.train_config()).backbone  # a missing checkpoint fails before data preparation
    # Its own architecture and weights: a size name would be downloaded (or drawn at random) again.
    backbone = HyenaDNAModel(state.model_config)
    backbone.load_state_dict(state.backbone)
    return backbone


def _tokenized(cfg: PretrainConfig, dataset: TokenizedDataset | None, backbone: HyenaDNAModel) -> TokenizedDataset:
    if dataset is None:
        dataset = sources.prepare_for(cfg.train_config(), model_max_length=backbone.config.max_length)
    if dataset.max_length > backbone.config.max_length:
        raise ValueError(
            f"the dataset was tokenized with max_length={dataset.max_length} but the model {cfg.model!r} takes at "
            f"most {backbone.config.max_length} tokens; rebuild it with --max-length {backbone.config.max_length}"
        )
    return dataset


def _check_same_data(state: PretrainState, dataset: TokenizedDataset, split_hash: str, out: Path) -> None:
    if (state.dataset_fingerprint, state.split_hash) != (dataset.fingerprint, split_hash):
        raise InputError(
            f"--resume: the dataset or its split differs from the one {out} was pretrained on; "
            "resume with the same --dataset and split settings"
        )


def pretrain(
    cfg: PretrainConfig, dataset: TokenizedDataset | None = None, progress: bool = True, *, resume: bool = False
) -> PretrainResult:
    """Next-token pretraining of cfg.model on the train split's read sets; writes cfg.output_dir.

    dataset: already tokenized data (default: sources.prepare_for(cfg.train_config()), the published split).
    resume: continue the run in cfg.output_dir from its pretrain_state.pt (its settings must match cfg's).
    """
    cfg.validate()
    out = Path(cfg.output_dir)
    state = PretrainState.load(out) if resume else None
    if state is None:
        _check_fresh(out)
    else:
        cfg = _resumed_config(cfg, state.config)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    backbone = _backbone(cfg, state)
    dataset = _tokenized(cfg, dataset, backbone)
    cfg = tokens.resolved_config(cfg, dataset)
    split_hash = tokens.split_hash(dataset.split_dict())
    if state is not None:
        _check_same_data(state, dataset, split_hash, out)
    run = _Pretraining(cfg, dataset, backbone, device, split_hash)
    if state is not None:
        run.restore(state)
    _write_run_files(out, cfg, backbone, dataset, split_hash)
    log.info(
        "pretraining %s (%d parameters) on %d train read sets of up to %d tokens: %d steps of %d sets "
        "(%d per epoch); eval on %d val sets -> %s",
        cfg.model,
        backbone.num_parameters(),
        len(run.train_sets),
        dataset.max_length,
        run.total,
        cfg.batch_size,
        run.steps_per_epoch,
        len(run.val_sets),
        out,
    )
    speed = run.run(progress and cfg.progress)
    if state is not None and state.step >= run.total:
        log.info("%s had already finished (%d steps)", out, run.total)
        _write_checkpoint(out, run.lm, state, run.history)
    if run.step >= run.total:  # finished: `train --model` may now use the backbone (files.check_pretrain_done)
        files.mark_pretrain_done(out, run.step)
    if math.isfinite(speed):
        log.info("pretrained %d steps (%.0f tokens/s) -> %s", run.step, speed, out)
    return PretrainResult(
        history=run.history, output_dir=out, backbone=backbone, steps=run.step, tokens_per_second=speed
    )

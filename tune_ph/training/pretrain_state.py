"""The resumable state of a pretraining run (pretrain_state.pt) as one typed record: its one writer and reader."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from hyena_dna import HyenaDNAConfig
from tune_ph import files
from tune_ph.errors import InputError
from tune_ph.files import save_torch
from tune_ph.model.checkpoint import StateReader, load_state
from tune_ph.training.pretrain_config import PretrainConfig

STATE_FILE = files.PRETRAIN_STATE_FILE  # in a pretraining folder: everything --resume needs
# What the file must hold (cuda_rng and max_length came later or only on a GPU).
REQUIRED_KEYS = (
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


@dataclass
class PretrainState:
    """A pretraining run after `step` optimizer steps: weights, optimizer, schedule, random state, history.

    On disk a plain dict of tensors and primitives (torch.save; loaded with weights_only=True), keyed by field.
    """

    backbone: dict[str, torch.Tensor]  # HyenaDNAModel.state_dict()
    model_config: HyenaDNAConfig
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    step: int
    epoch: int
    torch_rng: torch.Tensor  # the dropout masks continue as if the run had never stopped
    config: PretrainConfig  # the settings the run was started with
    history: dict[str, list[dict[str, Any]]]  # as pretrain_history.json
    dataset_fingerprint: str  # a resumed run must read the same samples, split the same way
    split_hash: str
    cuda_rng: list[torch.Tensor] = field(default_factory=list)
    max_length: int | None = None

    WHAT: ClassVar[str] = "a pretraining state"  # in error messages

    def to_state(self) -> dict[str, Any]:
        """The on-disk layout (the one writer)."""
        return {
            "backbone": self.backbone,
            "model_config": self.model_config.to_dict(),
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "step": self.step,
            "epoch": self.epoch,
            "torch_rng": self.torch_rng,
            "cuda_rng": self.cuda_rng,
            "config": self.config.to_dict(),
            "history": self.history,
            "dataset_fingerprint": self.dataset_fingerprint,
            "split_hash": self.split_hash,
            "max_length": self.max_length,
        }

    @classmethod
    def from_state(cls, state: Any, where: str | os.PathLike = "the pretraining state") -> PretrainState:
        """Read the on-disk layout (the one reader); where names the file in errors."""
        read = StateReader(state, str(where), cls.WHAT)
        read.require(REQUIRED_KEYS)
        try:
            config = PretrainConfig.from_dict(read.get("config", (dict,)))
            model_config = HyenaDNAConfig.from_dict(read.get("model_config", (dict,)))
        except (TypeError, ValueError) as err:
            raise InputError(f"{where}: its settings cannot be used ({err})") from None
        return cls(
            backbone=read.weights("backbone"),
            model_config=model_config,
            optimizer=read.get("optimizer", (dict,)),
            scheduler=read.get("scheduler", (dict,)),
            step=read.get("step", (int,)),
            epoch=read.get("epoch", (int,)),
            torch_rng=read.get("torch_rng", (torch.Tensor,)),
            config=config,
            history=read.get("history", (dict,)),
            dataset_fingerprint=read.get("dataset_fingerprint", (str,)),
            split_hash=read.get("split_hash", (str,)),
            cuda_rng=list(read.get("cuda_rng", (list,), [])),
            max_length=read.get("max_length", (int,), None),
        )

    def save(self, out: Path) -> Path:
        """Write out/pretrain_state.pt atomically."""
        return save_torch(out / STATE_FILE, self.to_state())

    @classmethod
    def load(cls, out: Path) -> PretrainState:
        """The state of a run folder, for --resume."""
        path = out / STATE_FILE
        if not path.is_file():
            raise InputError(f"--resume: {out} has no {STATE_FILE} to continue from; run without --resume to start")
        return cls.from_state(load_state(path, cls.WHAT), path)

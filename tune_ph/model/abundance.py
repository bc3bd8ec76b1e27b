"""Abundance transforms: a sample's read counts per cluster -> the features a head reads (CLR, relative, presence)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from tune_ph.config import ABUNDANCES
from tune_ph.registry import Registry

# A pseudocount of one half keeps log(0) away: a cluster no read of the sample fell in is "less than one read".
_PSEUDOCOUNT = 0.5


def clr(counts: torch.Tensor) -> torch.Tensor:
    """Centred log-ratio of each row: log counts minus their row mean (scale-free, the compositional standard)."""
    logs = torch.log(counts + _PSEUDOCOUNT)
    return logs - logs.mean(dim=1, keepdim=True)


def relative(counts: torch.Tensor) -> torch.Tensor:
    """Each row's share of its reads: what trees split best on (a threshold on a share is a threshold on counts)."""
    return counts / counts.sum(dim=1, keepdim=True).clamp(min=1)


def presence(counts: torch.Tensor) -> torch.Tensor:
    """1 where the sample has a read in the cluster, else 0: robust to uneven read depth."""
    return (counts > 0).to(counts.dtype)


# Name -> transform of (samples, clusters) counts: a function with no state and no setting of its own (the config's
# `abundance` names it). A new transform is a function here (or anywhere) and one registration line.
TRANSFORMS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry(ABUNDANCES)
TRANSFORMS.register(clr, "clr")
TRANSFORMS.register(relative, "relative")
TRANSFORMS.register(presence, "presence")


def transform(name: str, counts: torch.Tensor) -> torch.Tensor:
    """Apply the named transform to (samples, clusters) counts."""
    return TRANSFORMS[name](counts)

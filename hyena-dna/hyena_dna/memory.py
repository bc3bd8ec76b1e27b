"""How much memory a HyenaDNA config declares, and whether this machine has it (checked before anything is built)."""

from __future__ import annotations

import os
from pathlib import Path

from hyena_dna.config import HyenaDNAConfig

_FLOAT32 = 4
# What building a model allocates besides its tensors (the positional embedding's complex intermediates, Python).
_BUILD_SLACK = 64 << 20
_MEMINFO = Path("/proc/meminfo")
# cgroup v2, then v1: a container's limit, usually far below the host's MemAvailable.
_CGROUP_LIMITS = (
    (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),
    (Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"), Path("/sys/fs/cgroup/memory/memory.usage_in_bytes")),
)


class ModelTooLargeError(ValueError):
    """A config whose model would not fit in this machine's available memory; refused before it is built."""


def model_bytes(config: HyenaDNAConfig) -> int:
    """Bytes of the parameters and buffers of HyenaDNAModel(config) (float32), from the config alone.

    Exact: the test suite compares it with built models. Each layer's filter keeps its own positional embedding
    (l_max x (emb_dim + 1) floats), which dominates for long contexts.
    """
    d, order, filt = config.d_model, config.hyena_order, config.filter_order
    width, channels = d * (order + 1), d * (order - 1)
    in_out_proj = d * width + width + d * d + d
    short_filter = width * config.local_order + width
    implicit = (config.emb_dim * filt + filt) + config.num_inner_mlps * (filt * filt + filt) + filt + filt * channels
    filter_fn = channels + config.l_max * (config.emb_dim + 1) + implicit + channels  # bias, pos_emb, MLP, deltas
    mlp = 2 * d * config.d_inner + config.d_inner + d
    block = 4 * d + in_out_proj + short_filter + filter_fn + mlp
    numel = config.padded_vocab_size * d + config.n_layer * block + 2 * d
    return numel * _FLOAT32


def build_bytes(config: HyenaDNAConfig) -> int:
    """Peak bytes of building the model: its tensors plus one layer's positional-embedding intermediates."""
    return model_bytes(config) + 16 * config.l_max * (config.emb_dim + 1) + _BUILD_SLACK


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) and garbage alike: no number


def available_memory() -> int | None:
    """Bytes this process could still allocate: MemAvailable, capped by the container's cgroup limit; None when
    the system does not say (not Linux)."""
    found: list[int] = []
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
                break
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in _CGROUP_LIMITS:
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:  # v1 writes a huge number for "no limit"
            found.append(max(limit - usage, 0))
            break
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return min(found)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def check_memory(config: HyenaDNAConfig, available: int | None = None) -> None:
    """Raise ModelTooLargeError when building the model would need more memory than is available."""
    available = available_memory() if available is None else available
    need = build_bytes(config)
    if available is not None and need > available:
        raise ModelTooLargeError(
            f"the HyenaDNA config declares a model of {_mib(model_bytes(config))} (d_model {config.d_model}, "
            f"n_layer {config.n_layer}, d_inner {config.d_inner}, l_max {config.l_max}); building it needs about "
            f"{_mib(need)} but only {_mib(available)} of memory is available; use a smaller config"
        )

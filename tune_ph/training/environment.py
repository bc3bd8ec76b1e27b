"""What decides a run's numbers besides its settings (versions, threads, CPU kernels, GPU): environment.json."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from tune_ph.files import write_json

log = logging.getLogger(__name__)
ENV_FILE = "environment.json"
PACKAGES = ("torch", "numpy", "ray", "optuna", "scikit-learn", "pandas", "pyarrow", "hyena-dna", "tune_ph")
# Thread counts and kernel choices: each can change float reduction order, and so a result's last digits (or more).
ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "OMP_PROC_BIND",
    "KMP_AFFINITY",
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "MKL_CBWR",
    "CUBLAS_WORKSPACE_CONFIG",
    "CUDA_VISIBLE_DEVICES",
    "PYTHONHASHSEED",
)
# CPU features that select different oneDNN/MKL/ATen kernels (vector width, fused multiply-add, bf16/AMX units).
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:  # not Linux: the model from platform is what there is
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    features = [f for f in CPU_FLAGS if f in flags]
    return {"model": model, "cores": os.cpu_count(), "usable_cores": usable, "flags": features}


def _torch() -> dict[str, Any]:
    cudnn = torch.backends.cudnn
    return {
        "version": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        # The widest CPU kernels ATen dispatches to here (e.g. AVX2 or AVX512): different widths sum differently.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "mkl": torch.backends.mkl.is_available(),
        "openmp": torch.backends.openmp.is_available(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda": torch.version.cuda,
        "cudnn": {
            "version": cudnn.version() if cudnn.is_available() else None,
            "enabled": cudnn.enabled,
            "benchmark": cudnn.benchmark,
            "deterministic": cudnn.deterministic,
            "allow_tf32": cudnn.allow_tf32,
        },
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }


def _gpus() -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append(
            {"name": props.name, "capability": f"{props.major}.{props.minor}", "memory_gib": props.total_memory / 2**30}
        )
    return out


def describe(**extra: Any) -> dict[str, Any]:
    """This process's environment as JSON-able values; `extra` (seeds, trial threads) is added as is."""
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "torch": _torch(),
        "cpu": _cpu(),
        "gpus": _gpus(),
        "env": {name: os.environ[name] for name in ENV_VARS if name in os.environ},
        **extra,
    }


def write(folder: str | os.PathLike, name: str = ENV_FILE, **extra: Any) -> Path:
    """Write describe(**extra) to folder/name (atomically)."""
    return write_json(Path(folder) / name, describe(**extra))


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed between two environment records in what decides numbers (not times or hosts): 'key: a -> b'."""
    out = []
    for key in ("python", "packages", "torch", "cpu", "gpus", "env"):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


def record(folder: str | os.PathLike, **extra: Any) -> Path:
    """environment.json in an experiment folder; a resumed run writes environment-resumed-<time>.json beside it
    and warns about what changed (trials run now may then not match the earlier ones)."""
    folder = Path(folder)
    first = folder / ENV_FILE
    if not first.exists():
        return write(folder, **extra)
    now = describe(**extra)
    path = write_json(folder / f"environment-resumed-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json", now)
    try:
        changed = differences(json.loads(first.read_text()), now)
    except (OSError, ValueError):
        changed = []
    if changed:
        log.warning("resumed in another environment than %s: %s", first, "; ".join(changed[:6]))
    return path

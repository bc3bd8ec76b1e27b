"""Resource preflight: a trial that asks for more CPUs or GPUs than any node has is an error, not PENDING forever."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ray
import torch

from tune_ph.errors import ResourceError, SetupError

# Ray keeps resources in fixed point (4 decimals): compare with slack so rounding never makes a fit fail.
_EPS = 1e-6
# The smallest share Ray can represent; a positive request below it is refused by Ray with an internal error.
RAY_RESOLUTION = 1e-4


def trial_requests(
    cpus_per_trial: float, gpus_per_trial: float | Mapping[str, float], models: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """The per-trial requests check_trial_resources takes: {"": {...}}, or one entry per model for per-model GPUs.

    `models` limits a per-model mapping to the sizes the search can actually pick.
    """
    if isinstance(gpus_per_trial, Mapping):
        names = list(gpus_per_trial) if models is None else list(models)
        return {m: {"CPU": cpus_per_trial, "GPU": gpus_per_trial.get(m, 0)} for m in names}
    return {"": {"CPU": cpus_per_trial, "GPU": gpus_per_trial}}


def _fmt(x: float) -> str:
    return f"{x:g}"


def _node_text(node: Mapping[str, float]) -> str:
    return f"{_fmt(node.get('CPU', 0))} CPU, {_fmt(node.get('GPU', 0))} GPU"


def _usable(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def check_trial_resources(requests: Mapping[str, Mapping[str, float]], nodes: Sequence[Mapping[str, float]]) -> None:
    """Raise ResourceError unless every request fits one node; Ray would otherwise leave trials PENDING forever.

    `requests` maps a model name ("" when resources are not per model) to {"CPU": c, "GPU": g}; `nodes` are the
    alive nodes' resource totals. A request fits when one node has at least its CPUs and its GPUs. The message
    names the YAML key, what was asked, the largest node and the command-line flag that overrides it.
    """
    problems: list[str] = []  # ordered, without repeats: cpus_per_trial is shared by every model
    nodes = [dict(n) for n in nodes]
    for model, ask in requests.items():
        cpu, gpu = ask.get("CPU", 0), ask.get("GPU", 0)
        cpu_key = "resources.cpus_per_trial"
        gpu_key = "resources.gpus_per_trial" + (f".values.{model}" if model else "")
        every = " (--gpus-per-trial sets every model's share)" if model else ""
        gpu_flag = "--gpus-per-trial N" + every
        bad = False
        for key, value, flag, what in ((cpu_key, cpu, "--cpus-per-trial N", "CPUs"), (gpu_key, gpu, gpu_flag, "GPUs")):
            if not _usable(value):
                problems.append(
                    f"{key}: {value!r} is not a number of {what} per trial; give a finite number "
                    f">= 0 (override: {flag})"
                )
                bad = True
            elif 0 < value < RAY_RESOLUTION:
                problems.append(
                    f"{key}: {value!r} {what} per trial is below the smallest share Ray can give "
                    f"({RAY_RESOLUTION:g}); use 0 or at least {RAY_RESOLUTION:g} (override: {flag})"
                )
                bad = True
        if bad:
            continue
        if not nodes:
            problems.append("the Ray cluster has no alive node to run trials on")
            break
        if any(n.get("CPU", 0) + _EPS >= cpu and n.get("GPU", 0) + _EPS >= gpu for n in nodes):
            continue
        by_gpu = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)))
        by_cpu = max(nodes, key=lambda n: (n.get("CPU", 0), n.get("GPU", 0)))
        max_gpu, max_cpu = by_gpu.get("GPU", 0), by_cpu.get("CPU", 0)
        many = f" (of {len(nodes)} alive nodes)" if len(nodes) > 1 else ""
        if gpu > max_gpu + _EPS:
            if max_gpu <= 0:
                problems.append(
                    f"{gpu_key}: asks for {_fmt(gpu)} GPU per trial, but this Ray cluster has no GPU (largest "
                    f"node{many}: {_node_text(by_gpu)}). Train on CPU with --gpus-per-trial 0{every}, or run "
                    "where there is a GPU"
                )
            else:
                problems.append(
                    f"{gpu_key}: asks for {_fmt(gpu)} GPUs per trial, but the largest node{many} has "
                    f"{_node_text(by_gpu)}. Use --gpus-per-trial {_fmt(max_gpu)} or less (0 trains on CPU){every}"
                )
        if cpu > max_cpu + _EPS:
            problems.append(
                f"{cpu_key}: asks for {_fmt(cpu)} CPUs per trial, but the largest node{many} has "
                f"{_node_text(by_cpu)}. Use --cpus-per-trial {_fmt(math.floor(max_cpu + _EPS))} or less"
            )
        if gpu <= max_gpu + _EPS and cpu <= max_cpu + _EPS:
            # Each fits somewhere, but no single node has both.
            gpu_nodes = [n for n in nodes if n.get("GPU", 0) + _EPS >= gpu]
            best = max(gpu_nodes, key=lambda n: n.get("CPU", 0))
            problems.append(
                f"{cpu_key} = {_fmt(cpu)} with {gpu_key} = {_fmt(gpu)}: no single node has both; the nodes "
                f"with {_fmt(gpu)} GPU have at most {_node_text(best)} (largest node{many}: {_node_text(by_cpu)}). "
                f"Use --cpus-per-trial {_fmt(math.floor(best.get('CPU', 0) + _EPS))} or less, or "
                "--gpus-per-trial 0"
            )
    problems = list(dict.fromkeys(problems))
    if problems:
        # One problem is one line (the usual case); several are listed one per line under the heading.
        head = "trials cannot be scheduled on this Ray cluster (they would stay PENDING forever):"
        raise ResourceError(f"{head} {problems[0]}" if len(problems) == 1 else "\n  ".join([head, *problems]))


def alive_node_resources() -> list[dict[str, float]]:
    """Resource totals of the running cluster's alive nodes (ray.nodes())."""
    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def preflight(requests: Mapping[str, Mapping[str, float]]) -> None:
    """check_trial_resources against the running Ray cluster (call after init_ray, before the Tuner starts).

    Counts only nodes alive now: on an autoscaling cluster, nodes it could still add are not seen.
    """
    if not ray.is_initialized():
        raise SetupError("Ray is not running: call init_ray() before preflight()")
    check_trial_resources(requests, alive_node_resources())


def local_node_resources() -> dict[str, float]:
    """What a Ray started on this machine would offer: its CPUs and CUDA GPUs (no Ray needed to ask)."""
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def preflight_local(requests: Mapping[str, Mapping[str, float]]) -> None:
    """check_trial_resources against this machine, before weights are fetched or Ray starts (fails in seconds)."""
    check_trial_resources(requests, [local_node_resources()])

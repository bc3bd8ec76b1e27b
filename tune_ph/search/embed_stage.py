"""The read-vector stage as Ray work: the distinct reads in shards, one Ray task (named ``embed_shard``) per shard on
the CPUs (or GPUs) of every node of the cluster the search runs on, gathered on the driver with a progress bar.

The stage is generic in what embeds a read: an encoder is any picklable callable
``encoder(shard, device=..., batch_size=...) -> float32 (len(shard), *encoder.shape)`` (embeddings.BackboneEncoder
for HyenaDNA; a k-mer encoder can be another). It is put into the object store once; every task reads it from
there, so every worker embeds with the very same weights as the driver.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections import defaultdict
from typing import Any

import numpy as np
import ray

from tune_ph.model import embeddings
from tune_ph.model.embeddings import CPU_BATCH, TokenShard
from tune_ph.model.streamed import release_pages
from tune_ph.progress import Progress
from tune_ph.search.worker_exit import quiet_shutdown

log = logging.getLogger(__name__)

# Reads per task: large enough that a task's start (a worker's torch import, the weights) is a sliver of its work,
# small enough for load balancing and a progress line every tenth. Four shards per worker at least.
MAX_SHARD = 4096
MIN_SHARD = 64
SHARDS_PER_WORKER = 4
TASK_NAME = "embed_shard"
# Tasks submitted ahead per worker: enough to keep every worker busy, few enough to bound what waits on the driver.
WINDOW = 2


def shard_sizes(n: int, workers: int) -> list[int]:
    """Contiguous shard sizes covering n reads: about SHARDS_PER_WORKER per worker, each MIN..MAX_SHARD reads."""
    if n == 0:
        return []
    size = min(MAX_SHARD, max(MIN_SHARD, -(-n // (SHARDS_PER_WORKER * max(workers, 1)))))
    count = -(-n // size)
    base, extra = divmod(n, count)
    return [base + (i < extra) for i in range(count)]


def _embed_shard(encoder: Any, shard: TokenShard, device: str, batch_size: int, threads: int) -> dict[str, Any]:
    import torch

    quiet_shutdown()  # the search's end stops this worker with SIGTERM: that is no error to print
    torch.set_num_threads(max(threads, 1))
    started = time.perf_counter()
    vectors = encoder(shard, device=device, batch_size=batch_size)
    context = ray.get_runtime_context()
    used = getattr(encoder, "precision_used", None)
    return {
        "vectors": vectors,
        "precision": used(device) if used is not None else "n/a",  # an encoder without a precision
        "node": context.get_node_id(),
        "host": ray.util.get_node_ip_address(),
        "pid": os.getpid(),
        "task": context.get_task_name(),
        "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "seconds": time.perf_counter() - started,
    }


_remote_embed = ray.remote(max_retries=2)(_embed_shard)


def cluster_workers(gpu: bool) -> int:
    """How many embed tasks the cluster runs at once: its GPUs (gpu) or CPUs."""
    resources = ray.cluster_resources()
    return max(int(resources.get("GPU" if gpu else "CPU", 1)), 1)


def ray_runner(
    device: str = "auto", batch_size: int = CPU_BATCH, report: list[dict[str, Any]] | None = None
) -> embeddings.Runner:
    """An embeddings.Runner that spreads the shard over the Ray cluster (Ray must be initialised).

    device "auto": GPU tasks when the cluster has GPUs, else one single-threaded CPU task per CPU; "cpu": CPU
    tasks only. report: a list that gets one row per task (node, host, task name, reads, seconds).
    """

    def run(encoder: Any, shard: TokenShard, progress: Progress, out: np.ndarray) -> None:
        gpu = device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1
        embed_on_cluster(encoder, shard, progress, gpu=gpu, batch_size=batch_size, report=report, out=out)

    return run


def embed_on_cluster(
    encoder: Any,
    shard: TokenShard,
    progress: Progress,
    *,
    gpu: bool = False,
    batch_size: int = CPU_BATCH,
    report: list[dict[str, Any]] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Every read of ``shard`` embedded by Ray tasks named ``embed_shard`` (one per part), written to ``out`` (or a
    new array) in shard order as the tasks finish. At most WINDOW tasks per worker are submitted ahead, so the
    driver holds a bounded number of finished parts whatever the number of reads."""
    workers = cluster_workers(gpu)
    sizes = shard_sizes(len(shard), workers)
    if isinstance(encoder, embeddings.BackboneEncoder):  # each worker compiles once if its share pays for it
        encoder.plan(len(shard) / workers, "cuda" if gpu else "cpu")
    if out is None:
        out = np.zeros((len(shard), *encoder.shape), dtype=np.float32)
    if not sizes:
        return out
    encoder_ref = ray.put(encoder)  # once: every task reads the same weights from the object store
    options: dict[str, Any] = {"name": TASK_NAME, "num_cpus": 1, "num_gpus": 1 if gpu else 0}
    pending: dict[ray.ObjectRef, tuple[int, int]] = {}
    bounds = np.r_[0, np.cumsum(sizes)]
    queue = list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))

    def submit() -> None:
        while queue and len(pending) < WINDOW * workers:
            first, stop = queue.pop(0)
            ref = _remote_embed.options(**options).remote(
                encoder_ref, shard.part(first, stop), "cuda" if gpu else "cpu", batch_size if gpu else CPU_BATCH, 1
            )
            pending[ref] = (first, stop)

    by_node: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    hosts: dict[str, str] = {}
    precisions: dict[str, set[str]] = defaultdict(set)
    started = time.perf_counter()
    try:
        submit()
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                first, stop = pending.pop(ref)
                result = ray.get(ref)
                out[first:stop] = result["vectors"]
                del result["vectors"]
                release_pages(out)  # a memory-mapped out: written pages leave the driver's RSS
                by_node[result["node"]][0] += stop - first
                by_node[result["node"]][1] += result["seconds"]
                hosts[result["node"]] = result["host"]
                precisions[result["node"]].add(result["precision"])
                if report is not None:
                    report.append({k: v for k, v in result.items() if k != "vectors"} | {"reads": stop - first})
                progress.update(stop - first)
            submit()
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise
    seconds = time.perf_counter() - started
    for node, (reads, busy) in sorted(by_node.items(), key=lambda kv: -kv[1][0]):
        log.info(
            "read vectors: node %s (%s) embedded %d of %d reads (%.0f%%), %.0f reads/s per worker, %s",
            node[:12],
            hosts[node],
            reads,
            len(shard),
            100 * reads / len(shard),
            reads / max(busy, 1e-9),
            " / ".join(sorted(precisions[node])),
        )
    log.info(
        "read vectors: %d reads in %d Ray tasks on %d node(s) (%d %s workers) in %.1f s",
        len(shard),
        len(sizes),
        len(by_node),
        workers,
        "GPU" if gpu else "CPU",
        seconds,
    )
    return out


def node_shares(tasks: list[Any]) -> dict[str, int]:
    """{node id: finished embed tasks} from ray.util.state.list_tasks' rows (for checks of where they ran)."""
    shares: dict[str, int] = defaultdict(int)
    for task in tasks:
        if TASK_NAME in (getattr(task, "name", "") or "") and getattr(task, "state", "") == "FINISHED":
            shares[task.node_id] += 1
    return dict(shares)

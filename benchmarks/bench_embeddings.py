"""Benchmark the frozen-backbone embedding cache: one frozen-trial epoch with and without cached set vectors; with
--stage first, the read-vector stage's speed beside the machine's measured matmul peak.

Without the cache a frozen trial runs the backbone (no gradients) over every set it draws, every epoch; with it the
backbone runs once per (weights, dataset, max_length) and each epoch trains only the aggregation and head.

    python benchmarks/bench_embeddings.py                          # synthetic realistic16s-shaped samples
    python benchmarks/bench_embeddings.py --dataset ../shared/data/realistic16s --max-sets 8
    python benchmarks/bench_embeddings.py --stage --reads 8000     # reads/s and GFLOP/s vs the matmul peak
    python benchmarks/bench_embeddings.py --stage --reads 1000000 --encoder bytes   # the stage's memory at 10^6 reads
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import torch

from tune_ph.config import TrainConfig
from tune_ph.data import sources
from tune_ph.data.split import split_samples
from tune_ph.data.tokens import build
from tune_ph.model import embeddings
from tune_ph.model.regressor import build_model, configure_optimizer
from tune_ph.progress import Progress
from tune_ph.training.epoch import make_loss, seed_everything, train_epoch


def synthetic(num_samples: int, reads: int, length: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    seqs = [["".join(rng.choice(list("ACGT"), length)) for _ in range(reads)] for _ in range(num_samples)]
    return pd.DataFrame(
        {
            "sample_id": [f"S{i}" for i in range(num_samples)],
            "study_name": [f"st{i % 4}" for i in range(num_samples)],
            "pH": rng.uniform(4, 9, num_samples),
            "sequences": seqs,
            "environment": ["soil", "lake"] * (num_samples // 2),
        }
    )


def main() -> None:
    if sys.argv[1:2] == ["--stage"]:
        stage_main(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=None, help="a dataset source (default: synthetic samples)")
    p.add_argument("--samples", type=int, default=200, help="synthetic samples")
    p.add_argument("--reads", type=int, default=128, help="reads per synthetic sample")
    p.add_argument("--read-length", type=int, default=250, help="bases per synthetic read")
    p.add_argument("--model", default="hyenadna-tiny-1k-seqlen", help="size name (random weights) or folder")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--max-sets", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16, help="samples per step")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as cache:
        if args.dataset:
            ds = sources.prepare(args.dataset, max_length=args.max_length, max_sets=args.max_sets, cache_dir=cache)
        else:
            df = synthetic(args.samples, args.reads, args.read_length)
            ds = build(df, split_samples(df), max_length=args.max_length, max_sets=args.max_sets, cache_dir=cache)
        cfg = TrainConfig(
            model=args.model,
            from_scratch=not args.model.startswith(("/", ".")),
            freeze_backbone=True,
            max_length=args.max_length,
            max_sets=args.max_sets,
            batch_size=args.batch_size,
            sets_per_step=args.max_sets,
            aggregation="attention",
            device="cpu",
            cache_dir=cache,
        )
        seed_everything(cfg.seed)
        model = build_model(cfg)
        started = time.perf_counter()
        vectors = embeddings.set_vectors(model.backbone, ds, cache_dir=cache, progress=False)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        embeddings.set_vectors(model.backbone, ds, cache_dir=cache, progress=False)
        hit_s = time.perf_counter() - started

        def epoch(cached: bool) -> float:
            seed_everything(cfg.seed)
            opt = configure_optimizer(model, cfg)
            started = time.perf_counter()
            train_epoch(
                model,
                ds,
                cfg,
                epoch=1,
                optimizer=opt,
                loss_fn=make_loss(cfg),
                target_mean=6.5,
                target_std=1.5,
                device=torch.device("cpu"),
                progress=False,
                vectors=embeddings.for_pooling(vectors, cfg.pooling) if cached else None,
            )
            return time.perf_counter() - started

        without, with_cache = epoch(False), epoch(True)
    train_sets = len(ds.set_indices("train"))
    print(
        f"frozen epoch ({len(ds.sample_indices('train'))} train samples, {train_sets} sets of {ds.max_length} tokens, "
        f"{args.threads} threads): {without:.3f} s without the cache, {with_cache:.2f} s with it "
        f"(x{without / max(with_cache, 1e-9):.0f}); cache built once in {build_s:.1f} s, read back in {hit_s:.2f} s"
    )


# ------------------------------------------------------------------------------------------------ --stage


def matmul_peak(dtype: torch.dtype, threads: int, seconds: float = 1.5) -> float:
    """The best GFLOP/s of square matmuls (512..2048) in dtype on `threads` threads: the machine's measured peak."""
    torch.set_num_threads(threads)
    best = 0.0
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b
        reps, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 3:
            a @ b
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - started) / 1e9)
    return best


def _matmul_rate(barrier, results, seconds: float) -> None:
    """One process: 1-thread fp32 matmuls (1024) for `seconds` once every process is ready -> GFLOP/s."""
    torch.set_num_threads(1)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    barrier.wait(timeout=120)
    reps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        reps += 1
    results.put(2 * 1024**3 * reps / (time.perf_counter() - started) / 1e9)


def concurrent_matmul(processes: int, seconds: float = 3.0) -> float:
    """GFLOP/s summed over `processes` separate 1-thread processes doing fp32 matmuls at the same time: how far the
    machine itself scales independent workers (its cores may share a physical core, caches or a host's time)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(target=_matmul_rate, args=(barrier, results, seconds), daemon=True) for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        return sum(results.get(timeout=240 + seconds) for _ in workers)
    finally:
        for worker in workers:  # one that failed must not keep the others, or the benchmark, waiting
            worker.terminate()
            worker.join()


def encoder_flops(config: dict, length: int) -> dict[str, float]:
    """FLOPs of one read of `length` tokens through the backbone: the projections (in_proj, out_proj), the FFT long
    convolutions (forward and inverse real FFTs, 2.5 N log2 N each, and the spectral product) and the MLP."""
    import math

    from hyena_dna.model import _fast_fft_size

    d, layers, inner = config["d_model"], config["n_layer"], config["d_inner"]
    order = config.get("hyena_order", 2)
    n = _fast_fft_size(2 * length)
    proj = 2 * d * d * (order + 1) + 2 * d * d
    mlp = 4 * d * inner
    fft = (order - 1) * d * (2 * 2.5 * n * math.log2(n) + 6 * (n // 2 + 1)) / length
    return {k: v * length * layers for k, v in {"projections": proj, "long conv": fft, "MLP": mlp}.items()}


def random_reads(n: int, length: int, seed: int = 0):
    """n distinct random reads of length-16..length bases, one per set (a TokenizedDataset without tokenizing)."""
    from hyena_dna.tokenizer import VOCAB
    from tune_ph.data.tokens import TokenizedDataset

    rng = np.random.default_rng(seed)
    lengths = rng.integers(length - 16, length + 1, n)
    bases = np.array([VOCAB[b] for b in "ACGT"], dtype=np.uint8)
    ids = bases[rng.integers(0, 4, int(lengths.sum()), dtype=np.uint8)]
    samples = max(n // 100, 2)
    return TokenizedDataset(
        ids=ids,
        offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
        set_sample=np.sort(rng.integers(0, samples, n)).astype(np.int32),
        sample_ids=np.array([f"S{i}" for i in range(samples)]),
        study_name=np.array(["st"] * samples),
        environment=np.array(["soil"] * samples),
        ph=np.full(samples, 6.5, dtype=np.float32),
        split=np.array(["train"] * samples),
        max_length=length,
        max_sets=0,
        fingerprint=f"bench-{n}-{length}-{seed}",
    )


class ByteEncoder:
    """A near-free encoder (each read's first bytes as floats): the stage's data path alone, for its memory."""

    shape = (4, 128)

    def __call__(self, shard, *, device="cpu", batch_size=32, on_batch=None, precision="fp32"):
        out = np.zeros((len(shard), *self.shape), dtype=np.float32)
        for i in range(len(shard)):
            seq = shard.ids[shard.offsets[i] : shard.offsets[i + 1]][:128]
            out[i, :, : len(seq)] = seq
        return out


def steady_rate(report: list[dict]) -> float | None:
    """Reads/s per worker over every task but each worker's first: a worker compiles (and warms up) once, in its first
    task, so this is the rate of the rest of a long stage. None when no worker ran a second task."""
    first: dict[int, int] = {}
    reads = seconds = 0.0
    for i, row in enumerate(report):  # rows in finishing order: a worker's first row is its first task
        if first.setdefault(row["pid"], i) != i:
            reads, seconds = reads + row["reads"], seconds + row["seconds"]
    return reads / seconds if seconds else None


def _rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def stage_main(argv: list[str]) -> None:
    import ray

    from hyena_dna import HyenaDNAConfig, HyenaDNAModel
    from hyena_dna.config import PRETRAINED_SIZES
    from tune_ph.search import embed_stage

    p = argparse.ArgumentParser(description="the read-vector stage: reads/s, GFLOP/s vs the matmul peak, scaling")
    p.add_argument("--reads", type=int, default=8000, help="distinct synthetic reads")
    p.add_argument("--length", type=int, default=264, help="tokens per read after padding (realistic16s: 264)")
    p.add_argument("--model", default="hyenadna-tiny-1k-seqlen", help="a size name (random weights)")
    p.add_argument("--model-config", default=None, help="a JSON backbone config instead of --model")
    p.add_argument("--workers", default="1,2", help="Ray worker counts to time (comma-separated; '' for none)")
    p.add_argument("--threads", type=int, default=2, help="driver threads for the single-process run")
    p.add_argument("--encoder", choices=("hyena", "bytes"), default="hyena", help="bytes: the data path alone")
    p.add_argument(
        "--compile",
        action="store_true",
        help="every process compiles the backbone (torch.compile), as the stage does for 20,000 reads per worker",
    )
    args = p.parse_args(argv)
    import json

    if args.model_config:
        config = {**json.loads(args.model_config), "vocab_size": 16}
        name = "custom " + args.model_config
    else:
        size = PRETRAINED_SIZES[args.model]
        config = {"d_model": size.d_model, "n_layer": size.n_layer, "d_inner": 4 * size.d_model}
        config |= {"l_max": size.max_length + 2, "vocab_size": 16}
        name = args.model
    dataset = random_reads(args.reads, args.length)
    representatives, _ = embeddings.distinct_sets(dataset)
    shard = embeddings.shard_of(dataset, representatives)
    torch.manual_seed(0)
    backbone = HyenaDNAModel(HyenaDNAConfig.from_dict(config)).eval()
    encoder = embeddings.BackboneEncoder(backbone, compile=args.compile) if args.encoder == "hyena" else ByteEncoder()
    full = HyenaDNAConfig.from_dict(config).to_dict()
    flops = encoder_flops(full, args.length)
    per_read = sum(flops.values())
    fp32_peak = matmul_peak(torch.float32, args.threads)
    bf16_peak = matmul_peak(torch.bfloat16, args.threads)
    native = embeddings.cpu_bf16_native()
    print(
        f"matmul peak, {args.threads} threads: fp32 {fp32_peak:.1f} GFLOP/s, bf16 {bf16_peak:.1f} GFLOP/s "
        f"(CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {'yes' if native else 'no'})"
    )
    parts = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in flops.items())
    print(
        f"encoder {name} (d_model {full['d_model']}, {full['n_layer']} layers, L {args.length}): "
        f"{per_read / 1e6:.1f} MFLOP/read ({parts})"
    )

    def figures(label: str, reads_s: float, threads: int) -> None:
        gflops = reads_s * per_read / 1e9
        share = fp32_peak * threads / args.threads
        print(
            f"{label}: {reads_s:.0f} reads/s, {gflops:.1f} GFLOP/s ({100 * gflops / share:.0f}% of the fp32 peak "
            f"of {threads} thread(s), {share:.1f} GFLOP/s)"
        )

    single = reference = None
    if args.encoder == "hyena":
        torch.set_num_threads(args.threads)
        warm = shard.part(0, min(64, len(shard)))
        encoder(warm, precision="fp32")  # a compile's time is not counted
        started = time.perf_counter()
        single = reference = encoder(shard, precision="fp32")
        mode = "fp32 compiled" if args.compile else "fp32"
        figures(f"driver, {args.threads} threads, {mode}", len(shard) / (time.perf_counter() - started), args.threads)
        if native:
            # What the stage runs where bf16 is native: bf16 autocast inside the compiled forward (precision
            # "auto"); without --compile, eager bf16 autocast, which the stage does not use.
            asked = "auto" if args.compile else "bf16"
            encoder(warm, precision=asked)
            started = time.perf_counter()
            bf16 = encoder(shard, precision=asked)
            seconds = time.perf_counter() - started
            a, b = single.reshape(len(single), -1), bf16.reshape(len(bf16), -1)
            cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
            role = "what the stage runs" if args.compile else "not used: an eager forward stays fp32"
            used = encoder.precision_used(precision=asked) if args.compile else "bf16 eager"
            figures(
                f"driver, {args.threads} threads, {used} ({role}; min cosine to fp32 {cos.min():.5f})",
                len(shard) / seconds,
                args.threads,
            )
            if args.compile:
                reference, mode = bf16, used
    rates = {}
    for workers in [int(w) for w in args.workers.split(",") if w]:
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        try:
            ray.get(ray.remote(lambda: None).remote())  # the workers are up before the clock starts
            progress = Progress(len(shard), mode="off")
            report: list[dict] = []
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as scratch:  # memory-mapped, as the stage writes the cache entry
                out = np.lib.format.open_memmap(
                    f"{scratch}/vectors.npy", mode="w+", dtype=np.float32, shape=(len(shard), *encoder.shape)
                )
                embed_stage.embed_on_cluster(encoder, shard, progress, report=report, out=out)
                seconds = time.perf_counter() - started
                diff = float(np.abs(out - reference).max()) if reference is not None else None
                del out
        finally:
            ray.shutdown()
        rates[workers] = len(shard) / seconds
        per_worker = np.mean([r["reads"] / r["seconds"] for r in report])
        worker_rss = max(r.get("rss_gb", 0.0) for r in report)
        if diff is None:
            print(
                f"Ray, {workers} worker(s), {args.encoder} encoder (the stage's data path alone): "
                f"{rates[workers]:.0f} reads/s"
            )
        else:
            ran = " / ".join(sorted({r["precision"] for r in report}))  # what the workers ran (plan may compile)
            figures(
                f"Ray, {workers} worker(s), {ran} (max |diff| to the driver's {mode} vectors {diff:.1e})",
                rates[workers],
                workers,
            )
        print(
            f"  {per_worker:.0f} reads/s per worker inside its tasks; {len(report)} tasks; "
            f"peak RSS: driver {_rss_gb():.2f} GB, a worker {worker_rss:.2f} GB"
        )
        steady = steady_rate(report)
        if steady is not None and diff is not None:
            label = "  per worker after its first task (its compile and warm-up, once per process, left out)"
            figures(label, steady, 1)
    if 1 in rates and 2 in rates:
        # The same question put to the machine alone: two 1-thread matmul processes at once against one.
        alone, both = concurrent_matmul(1), concurrent_matmul(2)
        print(
            f"scaling 1 -> 2 workers: x{rates[2] / rates[1]:.2f} ({100 * rates[2] / rates[1] / 2:.0f}% of linear); "
            f"the machine's own, 2 one-thread fp32 matmul processes at once against 1: x{both / alone:.2f} "
            f"({alone:.1f} -> {both:.1f} GFLOP/s)"
        )


if __name__ == "__main__":
    main()

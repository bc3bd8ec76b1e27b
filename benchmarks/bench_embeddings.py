"""Benchmark the frozen-backbone embedding cache: one frozen-trial epoch with and without cached set vectors.

Without the cache a frozen trial runs the backbone (no gradients) over every set it draws, every epoch; with it the
backbone runs once per (weights, dataset, max_length) and each epoch trains only the aggregation and head.

    python benchmarks/bench_embeddings.py                          # synthetic realistic16s-shaped samples
    python benchmarks/bench_embeddings.py --dataset ../shared/data/realistic16s --max-sets 8
"""

from __future__ import annotations

import argparse
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


if __name__ == "__main__":
    main()

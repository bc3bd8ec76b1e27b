"""Benchmark the baselines: profiling throughput on realistic16s-shaped reads, optionally the family on a dataset.

python benchmarks/bench_baseline.py                                           # profiling, k = 4, 6, 8
python benchmarks/bench_baseline.py --dataset ../shared/data/realistic16s     # + the whole family, no cache
python benchmarks/bench_baseline.py --dataset ../shared/data/realistic16s --split-by study
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from tune_ph.baseline.family import FamilySpec, choose_on_val, run_family
from tune_ph.baseline.kmers import kmer_profiles


def synthetic_samples(num_samples: int, reads: int, length: int, seed: int = 0) -> list[list[str]]:
    """Random ACGT reads (0.1 % N) of one fixed length: the shape of realistic16s (1,600 x 128 x 250 bp)."""
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(b"ACGTN", dtype=np.uint8)
    codes = rng.choice(5, size=(num_samples, reads, length), p=[0.24975] * 4 + [0.001])
    raw = alphabet[codes]
    return [[row.tobytes().decode("ascii") for row in sample] for sample in raw]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=1600)
    p.add_argument("--reads", type=int, default=128)
    p.add_argument("--length", type=int, default=250)
    p.add_argument("--k", type=int, nargs="+", default=[4, 6, 8])
    p.add_argument("--dataset", default=None, help="also time load + the baseline family (no cache)")
    p.add_argument("--split-by", default="none", choices=("none", "study"))
    args = p.parse_args()

    seqs = synthetic_samples(args.samples, args.reads, args.length)
    bases = args.samples * args.reads * args.length
    for k in args.k:
        t0 = time.perf_counter()
        prof = kmer_profiles(seqs, k, progress=False)
        took = time.perf_counter() - t0
        print(
            f"profiles k={k}: {args.samples} samples, {bases / 1e6:.1f} M bases in {took:.2f} s "
            f"({bases / took / 1e6:.1f} M bases/s), matrix {prof.nbytes / 2**20:.0f} MiB"
        )
    del seqs

    if args.dataset:
        from tune_ph.data.sources import load_samples
        from tune_ph.data.split import split_samples

        t0 = time.perf_counter()
        df = load_samples(args.dataset)
        split = split_samples(df, by=args.split_by)
        print(f"load + split {args.dataset}: {time.perf_counter() - t0:.1f} s ({len(df)} samples)")
        t0 = time.perf_counter()
        family = run_family(df, split, FamilySpec(ks=tuple(args.k)), use_cache=False)
        for name, b in family.items():
            m = b.metrics
            took = "-" if b.seconds is None else f"{b.seconds:.1f} s (features shared by its models)"
            print(f"{name}: val R² {m['val_r2']:.3f}, test R² {m['test_r2']:.3f}, {took}")
        print(f"family of {len(family)}: {time.perf_counter() - t0:.1f} s; chosen on val: {choose_on_val(family)}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()

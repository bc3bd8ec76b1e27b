"""`python -m tune_ph baseline`: the k-mer baselines on the model's split."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# Libraries that take seconds to import (torch, pandas, scikit-learn, Ray) are imported in _main once the flags
# are known to be usable: --help and every error the flags alone show answer in a moment.
from tune_ph import cli, config, files
from tune_ph.baseline.kmers import MODELS, check_k
from tune_ph.config import TrainConfig
from tune_ph.files import write_json

log = logging.getLogger(__name__)

# TrainConfig fields the baseline takes as flags: what decides the samples and the split.
DATA_FLAGS = ("dataset", "split_seed", "test_fraction", "val_fraction", "skip_bad_rows", "cache_dir")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tune_ph baseline`: exit code 0, 1 (runtime failure), 2 (bad input) or 130 (interrupted)."""
    return cli.run(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tune_ph baseline",
        description="k-mer profile baselines (HistGradientBoosting, Ridge) for pH on the DNA model's split.",
    )
    # The data flags are TrainConfig's own (same names, defaults and rules): the split is the DNA model's.
    config.add_arguments(p, only=DATA_FLAGS)
    p.add_argument("--k", type=int, default=6, help="k-mer length, 1..8 (default 6)")
    p.add_argument("--model", choices=(*MODELS, "both"), default="both", help="which baseline(s) (default both)")
    p.add_argument("--output-dir", default=None, help="where <model>/metrics.json goes (default runs/baseline-<time>)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the result cache")
    args = p.parse_args(argv)
    k = check_k(args.k)
    cfg = TrainConfig(**config.given_fields(args, DATA_FLAGS))

    from tune_ph.baseline.kmer_models import run_baseline, write_outputs
    from tune_ph.data.sources import load_samples, split_samples

    start = time.perf_counter()
    df = load_samples(cfg.dataset, skip_bad_rows=cfg.skip_bad_rows)
    split = split_samples(df, seed=cfg.split_seed, test_fraction=cfg.test_fraction, val_fraction=cfg.val_fraction)
    load_s = time.perf_counter() - start
    models = list(MODELS) if args.model == "both" else [args.model]
    results = run_baseline(df, split, k=k, models=models, cache_dir=cfg.cache_dir, use_cache=not args.no_cache)
    out = Path(args.output_dir or Path("runs") / time.strftime("baseline-%Y%m%d-%H%M%S"))
    write_outputs(results, out)
    write_json(out / files.SPLIT_FILE, split)
    log.info("loaded %s in %.1f s; outputs in %s", cfg.dataset, load_s, out)
    for model, res in results.items():
        m = res["metrics"]
        # This model's own time: the shared profiling plus its fit and predictions (profiling is counted per model).
        took = "cached" if res["cached"] else f"{m['profile_seconds'] + m['fit_seconds']:.1f}s"
        print(
            f"{model} k={k}: test R² {m['test_r2']:.3f}  RMSE {m['test_rmse']:.3f}  MAE {m['test_mae']:.3f}  "
            f"({m['test_n_samples']} test samples, {took})"
        )
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

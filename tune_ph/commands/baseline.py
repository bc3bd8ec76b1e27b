"""`python -m tune_ph baseline`: the baseline family on the model's split, and the member chosen on val."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# Libraries that take seconds to import (pandas, scikit-learn) are imported in _main once the flags are known to be
# usable: --help and every error the flags alone show answer in a moment.
from tune_ph import cli, config, files
from tune_ph.baseline.choices import CLUSTER_CHOICES, DATA_FLAGS, DEFAULT_KS, MODELS, OTU_K, check_k
from tune_ph.config import TrainConfig
from tune_ph.files import write_json
from tune_ph.metrics import TEST_MAE, TEST_R2, TEST_R2_CI95, TEST_RMSE, VAL_R2

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tune_ph baseline`: exit code 0, 1 (runtime failure), 2 (bad input) or 130 (interrupted)."""
    return cli.run(_main, argv)


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "  n/a"


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tune_ph baseline",
        description="Baselines for pH on the DNA model's split: k-mer profiles and read clusters (k-mer OTUs) with "
        "HistGradientBoosting and Ridge, and trivial references; the one with the best val R² is the one shown "
        "beside the model.",
    )
    # The data flags are TrainConfig's own (same names, defaults and rules): the split is the DNA model's.
    config.add_arguments(p, only=DATA_FLAGS)
    p.add_argument("--k", type=int, nargs="+", default=list(DEFAULT_KS), help="k-mer lengths, 1..8 (default: 4 6 8)")
    p.add_argument(
        "--models",
        "--model",
        nargs="+",
        choices=(*MODELS, "both"),
        default=["both"],
        help="hgb, ridge or both (default both)",
    )
    p.add_argument(
        "--otu-k",
        type=int,
        default=OTU_K,
        help="k of the per-read profiles clustered into k-mer OTUs; 0: no read clustering (default %(default)s)",
    )
    p.add_argument(
        "--clusters",
        type=int,
        nargs="+",
        default=list(CLUSTER_CHOICES),
        help="numbers of read clusters to choose from on val (default: 256 1024)",
    )
    p.add_argument(
        "--output-dir", default=None, help="where <baseline>/metrics.json goes (default runs/baseline-<time>)"
    )
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the result cache")
    args = p.parse_args(argv)
    for k in args.k:
        check_k(k)
    from tune_ph.baseline.family import CHOSEN_BY, FamilySpec, choose_on_val, run_family, write_family
    from tune_ph.baseline.reference import baseline_command, interval_text, reference_of
    from tune_ph.data.sources import load_for
    from tune_ph.data.split import SplitRecord, split_for

    models = tuple(MODELS) if "both" in args.models else tuple(args.models)
    spec = FamilySpec(ks=tuple(args.k), models=models, otu_k=args.otu_k, clusters=tuple(args.clusters))
    cfg = TrainConfig(**config.given_fields(args, DATA_FLAGS))

    start = time.perf_counter()
    df = load_for(cfg)
    split = split_for(df, cfg)
    record = SplitRecord.of(split, cfg, dict(zip(df["sample_id"].astype(str), df["study_name"].astype(str))))
    family = run_family(df, split, spec, cache_dir=cfg.cache_dir, use_cache=not args.no_cache)
    chosen = choose_on_val(family)
    out = Path(args.output_dir or Path("runs") / time.strftime("baseline-%Y%m%d-%H%M%S"))
    write_family(family, out, record, chosen, cfg.target)
    write_json(out / files.BASELINE_FILE, reference_of(family, chosen, baseline_command(cfg), CHOSEN_BY).to_dict())
    log.info("outputs in %s", out)
    n_test = len(split["test"])
    print(f"split by {cfg.split_by}: {len(split['train'])} train, {len(split['val'])} val, {n_test} test samples")
    if cfg.split_by == "study":
        print(
            f"test studies ({len(record.studies['test'])}), never in train or val: {', '.join(record.studies['test'])}"
        )
    width = max(map(len, family))
    for name, b in family.items():
        m = b.metrics
        took = "cached" if b.cached else "instant" if b.seconds is None else f"{b.seconds:.1f}s"
        mark = "  <- chosen on val" if name == chosen else ""
        print(
            f"{name:<{width}}  val R² {_fmt(m[VAL_R2])}  test R² {_fmt(m[TEST_R2])} "
            f"{interval_text(m.get(TEST_R2_CI95)):<16}  RMSE {_fmt(m[TEST_RMSE])}  MAE {_fmt(m[TEST_MAE])}  "
            f"({took}){mark}"
        )
    if chosen is None:
        print("no val samples: no baseline is chosen (use --val-fraction above 0)")
    print(f"{len(family)} baselines on {n_test} test samples in {time.perf_counter() - start:.0f} s -> {out}")
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

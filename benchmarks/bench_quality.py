"""Prediction quality: the README's search command end to end on a dataset, beside k-mer baselines on the same split.

    python benchmarks/bench_quality.py --dataset ../shared/data/realistic16s --output-dir runs/quality

Runs `python -m tune_ph.search --space search_spaces/realistic.yaml --dataset DATASET` (learned OTUs from a frozen
HyenaDNA read embedding, searched) from a fresh cache, so its wall time includes embedding every read, then the
k-mer baselines on the same split. One line per model: test R², RMSE, MAE and wall time. It leaves
DIR/model/test_predictions.csv (the exported winner's) and DIR/baseline/test_predictions.csv (the baseline family's
member chosen on val: k-mer profiles with k in 4, 6, 8 x HGB / Ridge, and k-mer read clusters); both have the
columns sample_id, predicted_ph_mean, ..., one row per test sample. The family's wall time is one figure for all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

from tune_ph import files
from tune_ph.baseline.family import DEFAULT_FAMILY, choose_on_val, run_family
from tune_ph.commands import search as search_cli
from tune_ph.data.sources import load_samples
from tune_ph.data.split import split_samples

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "realistic.yaml"  # the README's recipe; tests/test_readme.py checks it is quoted
MARKER = ".bench_quality"  # only a folder holding it is emptied before a run


def _line(name: str, metrics: dict, seconds: float, what: str) -> str:
    return (
        f"quality {name:<14} test R² {metrics['test_r2']:.3f}  RMSE {metrics['test_rmse']:.3f}  "
        f"MAE {metrics['test_mae']:.3f}  wall {seconds / 60:5.1f} min  ({what})"
    )


def _fresh(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--output-dir {out} is a file; give a folder")
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise SystemExit(
                f"{out} exists and was not made by this benchmark, which empties its folder before each run; "
                "give a new --output-dir (or delete this one)"
            )
        shutil.rmtree(out)  # a fresh cache too: the wall time is the recipe's, not a cache hit's
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by benchmarks/bench_quality.py; emptied by its next run\n")


def _model(args: argparse.Namespace, out: Path) -> str:
    """The search, exported; its winner's test predictions copied to DIR/model/."""
    os.environ["TUNE_PH_CACHE"] = str(out / "cache")  # the embedding and token caches start empty
    argv = ["--space", str(args.space), "--dataset", args.dataset, "--output-dir", str(out / "experiments")]
    argv += ["--name", "quality", "--no-baseline", "--verbose", "0"]
    if args.num_samples is not None:
        argv += ["--num-samples", str(args.num_samples)]
    if args.epochs is not None:
        argv += ["--epochs", str(args.epochs)]
    started = time.perf_counter()
    if search_cli.main(argv) != 0:
        raise SystemExit("the search failed; see the log above")
    seconds = time.perf_counter() - started
    best = out / "experiments" / "quality" / files.BEST_DIR
    (out / "model").mkdir(exist_ok=True)
    shutil.copy(best / files.PREDICTIONS_FILE, out / "model" / files.PREDICTIONS_FILE)
    metrics = json.loads((best / files.METRICS_FILE).read_text())
    config = json.loads((best / files.RUN_CONFIG_FILE).read_text())["train_config"]
    what = f"{Path(args.space).name}: {config['aggregation']}, {config.get('clusters')} clusters, {config['head']}"
    return _line("dna-model", metrics, seconds, what)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="dataset source, e.g. ../shared/data/realistic16s")
    p.add_argument("--output-dir", default="runs/quality", help="where model/, baseline/ and the rest go")
    p.add_argument("--space", default=str(SPACE), help="search space (default: search_spaces/realistic.yaml)")
    p.add_argument("--skip-model", action="store_true", help="only the k-mer baselines")
    # A shorter search than the recipe's (a smoke test): its figures then say nothing about the recipe.
    p.add_argument("--num-samples", type=int, default=None, help="trials (default: the space's)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the space's)")
    p.add_argument("--clusters", type=int, nargs="+", default=None, help="read clusters of the k-mer OTU baseline")
    args = p.parse_args()
    out = Path(args.output_dir)
    _fresh(out)
    lines = [] if args.skip_model else [_model(args, out)]

    started = time.perf_counter()
    df = load_samples(args.dataset)
    spec = DEFAULT_FAMILY if args.clusters is None else replace(DEFAULT_FAMILY, clusters=tuple(args.clusters))
    family = run_family(df, split_samples(df), spec, use_cache=False)  # k in 4, 6, 8 x HGB, Ridge; read clusters
    seconds = time.perf_counter() - started
    chosen = choose_on_val(family)
    for name, member in family.items():
        if name == chosen:
            member.write(out / "baseline")
        lines.append(_line(name, member.metrics, seconds, "chosen on val" if name == chosen else "baseline family"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

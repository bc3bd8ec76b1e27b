"""Prediction quality: the README's search command end to end on a dataset, beside the same search on k-mer profiles
(the control) and every k-mer baseline on the same split.

    python benchmarks/bench_quality.py --dataset ../shared/data/realph16s --output-dir runs/quality

Runs `python -m tune_ph.search --space search_spaces/realistic.yaml --dataset DATASET` (learned OTUs from a frozen
HyenaDNA read embedding, searched) from a fresh cache, so its wall time includes embedding every read; then the same
search with each read's vector swapped for its k-mer profile (`read_encoder: kmer`, everything else the same: the
control, `kmer-codebook`, which shows what the DNA model adds); then the baseline family. One line per model: test
R², RMSE, MAE and wall time. It leaves, each with the columns sample_id, predicted_ph_mean, ..., one row per test
sample:
- DIR/model/test_predictions.csv: the DNA model (the search's exported winner);
- DIR/control/test_predictions.csv: the kmer-codebook search's winner;
- DIR/baselines/<member>/test_predictions.csv: every member of the family, named as the family prints them;
- DIR/baseline/test_predictions.csv: the member of the reads chosen on val (the bar the DNA model must clear).
The family's wall time is one figure for all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import yaml

from tune_ph import files
from tune_ph.baseline.choices import REFERENCE_NAMES
from tune_ph.baseline.family import DEFAULT_FAMILY, choose_on_val, run_family
from tune_ph.commands import search as search_cli
from tune_ph.data.sources import load_samples
from tune_ph.data.split import split_samples
from tune_ph.metrics import TEST_MAE, TEST_R2, TEST_RMSE

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "realistic.yaml"  # the README's recipe; tests/test_readme.py checks it is quoted
MARKER = ".bench_quality"  # only a folder holding it is emptied before a run


def _line(name: str, metrics: dict, seconds: float, what: str) -> str:
    return (
        f"quality {name:<16} test R² {metrics[TEST_R2]:.3f}  RMSE {metrics[TEST_RMSE]:.3f}  "
        f"MAE {metrics[TEST_MAE]:.3f}  wall {seconds / 60:5.1f} min  ({what})"
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


def _control_space(space: Path, out: Path) -> Path:
    """The same search space with k-mer profiles as the read encoder: everything else (whitening, clusters, heads,
    budget) is the recipe's."""
    data = yaml.safe_load(space.read_text(encoding="utf-8"))
    data["name"] = f"{data.get('name', 'search')}-kmer-codebook"
    data.setdefault("fixed", {})["read_encoder"] = "kmer"
    data.get("space", {}).pop("read_encoder", None)
    path = out / "control_space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _search(args: argparse.Namespace, out: Path, space: Path, name: str, label: str) -> str:
    """One search, exported; its winner's test predictions copied to DIR/<name>/."""
    argv = ["--space", str(space), "--dataset", args.dataset, "--output-dir", str(out / "experiments")]
    argv += ["--name", name, "--no-baseline", "--verbose", "0"]
    if args.num_samples is not None:
        argv += ["--num-samples", str(args.num_samples)]
    if args.epochs is not None:
        argv += ["--epochs", str(args.epochs)]
    started = time.perf_counter()
    if search_cli.main(argv) != 0:
        raise SystemExit(f"the {name} search failed; see the log above")
    seconds = time.perf_counter() - started
    best = out / "experiments" / name / files.BEST_DIR
    (out / name).mkdir(exist_ok=True)
    shutil.copy(best / files.PREDICTIONS_FILE, out / name / files.PREDICTIONS_FILE)
    metrics = json.loads((best / files.METRICS_FILE).read_text())
    config = json.loads((best / files.RUN_CONFIG_FILE).read_text())["train_config"]
    levels, fits, topics = config.get("cluster_levels", 1), config.get("cluster_fits", 1), config.get("topics", 0)
    what = (
        f"{Path(space).name}: {config['read_encoder']} reads, {config['aggregation']} {config.get('clusters')}"
        f"{f' x{levels} levels' if levels > 1 else ''}{f', {topics} topics' if topics else ''}"
        f"{f', {fits} fits' if fits > 1 else ''}, {config.get('abundance', 'clr')}, {config['head']}"
    )
    return _line(label, metrics, seconds, what)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="dataset source, e.g. ../shared/data/realistic16s")
    p.add_argument("--output-dir", default="runs/quality", help="where model/, baseline/ and the rest go")
    p.add_argument("--space", default=str(SPACE), help="search space (default: search_spaces/realistic.yaml)")
    p.add_argument("--skip-model", action="store_true", help="only the k-mer baselines")
    p.add_argument("--skip-control", action="store_true", help="no kmer-codebook search")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="reuse this token and embedding cache instead of a fresh one (the wall times then exclude embedding)",
    )
    # A shorter search than the recipe's (a smoke test): its figures then say nothing about the recipe.
    p.add_argument("--num-samples", type=int, default=None, help="trials (default: the space's)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the space's)")
    p.add_argument("--clusters", type=int, nargs="+", default=None, help="read clusters of the k-mer OTU baseline")
    args = p.parse_args()
    out = Path(args.output_dir)
    _fresh(out)
    # A fresh cache by default: the embedding and token caches start empty, so the wall time is the recipe's.
    os.environ["TUNE_PH_CACHE"] = str(Path(args.cache_dir).resolve() if args.cache_dir else out / "cache")
    lines = [] if args.skip_model else [_search(args, out, Path(args.space), "model", "dna-model")]
    if not args.skip_control:
        lines.append(_search(args, out, _control_space(Path(args.space), out), "control", "kmer-codebook"))

    started = time.perf_counter()
    df = load_samples(args.dataset)
    spec = DEFAULT_FAMILY if args.clusters is None else replace(DEFAULT_FAMILY, clusters=tuple(args.clusters))
    family = run_family(df, split_samples(df), spec, use_cache=False)  # k in 4, 6, 8 x HGB, Ridge; read clusters
    seconds = time.perf_counter() - started
    chosen = choose_on_val(family)
    for name, member in family.items():
        member.write(out / "baselines" / name)
        if name == chosen:
            member.write(out / "baseline")
        what = "chosen on val" if name == chosen else "reference" if name in REFERENCE_NAMES else "baseline family"
        lines.append(_line(name, member.metrics, seconds, what))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

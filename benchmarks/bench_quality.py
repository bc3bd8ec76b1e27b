"""Prediction quality: the README's CPU recipe end to end on a dataset, beside k-mer baselines on the same split.

    python benchmarks/bench_quality.py --dataset ../shared/data/realistic16s --output-dir runs/quality

The recipe (the same commands the README gives): pretrain a tiny HyenaDNA from scratch on the train split's reads
(next-token prediction), then train gated-attention aggregation + head on its frozen, cached read vectors. Each
step's wall time counts, from a fresh cache. One line per model: test R², RMSE, MAE and wall time; it leaves
DIR/model/test_predictions.csv and DIR/baseline/test_predictions.csv (k-mer HistGradientBoosting; columns
sample_id, true_ph, predicted_ph_mean, ...; one row per test sample).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from tune_ph import files
from tune_ph.baseline.kmer_models import run_baseline
from tune_ph.commands import pretrain as pretrain_cli
from tune_ph.commands import train as train_cli
from tune_ph.data.sources import load_samples
from tune_ph.data.split import split_samples

# The README's CPU recipe ("A recipe that learns on real reads"); tests/test_readme.py checks the README quotes it.
PRETRAIN_ARGS = (
    "--from-scratch --model hyenadna-tiny-1k-seqlen --max-length 256 --batch-size 64 "
    "--learning-rate 1e-3 --warmup-steps 100 --epochs 1"
)
TRAIN_ARGS = (
    "--freeze-backbone --max-length 256 --aggregation attention --head mlp2 --sets-per-step 0 "
    "--batch-size 32 --learning-rate 1e-3 --epochs 40"
)
BASELINE_K = 6
MARKER = ".bench_quality"  # only a folder holding it is emptied before a run


def _line(name: str, metrics: dict, seconds: float, what: str) -> str:
    return (
        f"quality {name:<14} test R² {metrics['test_r2']:.3f}  RMSE {metrics['test_rmse']:.3f}  "
        f"MAE {metrics['test_mae']:.3f}  wall {seconds / 60:5.1f} min  ({what})"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="dataset source, e.g. ../shared/data/realistic16s")
    p.add_argument("--output-dir", default="runs/quality", help="where model/, baseline/ and the rest go")
    p.add_argument("--skip-model", action="store_true", help="only the k-mer baselines")
    args = p.parse_args()
    out = Path(args.output_dir)
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
    cache = out / "cache"
    common = ["--dataset", args.dataset, "--cache-dir", str(cache)]
    lines = []

    if not args.skip_model:
        started = time.perf_counter()
        argv = [*common, "--output-dir", str(out / "pretrained"), "--no-progress", *PRETRAIN_ARGS.split()]
        if pretrain_cli.main(argv) != 0:
            raise SystemExit("pretraining failed; see the log above")
        pretrained_s = time.perf_counter() - started
        argv = [*common, "--model", str(out / "pretrained"), "--output-dir", str(out / "model")]
        argv += ["--no-baseline", "--no-progress"]
        if train_cli.main(argv + TRAIN_ARGS.split()) != 0:
            raise SystemExit("training failed; see the log above")
        seconds = time.perf_counter() - started
        metrics = json.loads((out / "model" / files.METRICS_FILE).read_text())
        what = f"pretrain {pretrained_s / 60:.1f} min + frozen vectors + attention head"
        lines.append(_line("dna-model", metrics, seconds, what))

    started = time.perf_counter()
    df = load_samples(args.dataset)
    found = run_baseline(df, split_samples(df), k=BASELINE_K, models=("hgb", "ridge"), use_cache=False)
    seconds = time.perf_counter() - started  # profiles once for both models
    found["hgb"].write(out / "baseline")
    found["ridge"].write(out / "baseline-ridge")
    for name, model in (("kmer6-hgb", "hgb"), ("kmer6-ridge", "ridge")):
        lines.append(_line(name, found[model].metrics, seconds, f"k={BASELINE_K} profiles of all reads"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

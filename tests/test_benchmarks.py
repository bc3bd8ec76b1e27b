"""Every benchmark runs: each as a subprocess at a tiny size, its result lines in their format with sane values.

Smoke tests only (their figures say nothing about speed); the README's figures come from the full-size runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import ROOT, tiny_space, write_space

from tune_ph.data.demo import make_demo

pytestmark = pytest.mark.slow

NUMBER = r"(-?\d+(?:\.\d+)?)"


def _run(script: str, *args: str, env: dict[str, str] | None = None, timeout: int = 600) -> list[str]:
    """The benchmark's stdout lines (it must exit 0)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()


def _match(pattern: str, lines: list[str]) -> re.Match:
    """The one line that matches `pattern` in full."""
    found = [m for m in (re.fullmatch(pattern, line) for line in lines) if m]
    assert len(found) == 1, (pattern, lines)
    return found[0]


def test_bench_model():
    lines = _run("bench_model.py", "--steps", "1", "--bases", "100000", "--batch", "1", "--length", "64")
    assert float(_match(rf"tokenizer: {NUMBER} M bases/s \(one core, target >= 50\)", lines).group(1)) > 0
    step = rf"hyenadna-tiny-1k-seqlen B{{b}} L64 {{mode}} fp32 cpu: {NUMBER} M tok/s, {NUMBER} ms/step, "
    step += rf"peak {NUMBER} GiB"
    ours = _match(step.format(b=1, mode="train"), lines)
    baseline = _match(r"  baseline \(straightforward fp32\): " + step.format(b=1, mode="train"), lines)
    infer = _match(step.format(b=4, mode="infer"), lines)
    for m in (ours, baseline, infer):
        assert float(m.group(2)) > 0 and float(m.group(3)) > 0
    ratio = float(_match(rf"tiny-1k CPU train speed vs straightforward fp32: {NUMBER}x", lines).group(1))
    expected = float(baseline.group(2)) / float(ours.group(2))  # the same ratio, from the two step times
    assert ratio > 0 and abs(ratio - expected) <= 0.05 * expected + 0.01


def test_bench_embeddings():
    argv = ["--samples", "16", "--reads", "3", "--read-length", "40", "--max-length", "64", "--max-sets", "2"]
    lines = _run("bench_embeddings.py", *argv, "--batch-size", "4", "--threads", "1")
    m = _match(
        rf"frozen epoch \((\d+) train samples, (\d+) sets of 64 tokens, 1 threads\): {NUMBER} s without the cache, "
        rf"{NUMBER} s with it \(x\d+\); cache built once in {NUMBER} s, read back in {NUMBER} s",
        lines,
    )
    samples, sets = int(m.group(1)), int(m.group(2))
    assert 0 < samples < 16 and samples <= sets <= 2 * samples  # the train split, at most 2 sets each
    assert float(m.group(3)) > 0 and all(float(m.group(i)) >= 0 for i in (4, 5, 6))


@pytest.mark.parametrize("fit", ["new", "old"])
def test_bench_cluster_fit(tmp_path, fit):
    argv = ["--reads", "3000", "--width", "16", "--clusters", "8", "--dims", "4", "--folder", str(tmp_path / "v")]
    lines = _run("bench_cluster_fit.py", *argv, "--fit", fit)
    m = _match(
        rf"{fit} fit: 3,000 reads x 16 -> 8 clusters x 4 dims, {NUMBER} s, peak RSS {NUMBER} GiB "
        rf"\(imports {NUMBER} GiB; vectors {NUMBER} GiB on disk\)",
        lines,
    )
    assert float(m.group(1)) >= 0 and float(m.group(2)) >= float(m.group(3)) > 0  # the whole child holds its imports
    assert float(m.group(4)) == pytest.approx(3000 * 16 * 4 / 2**30, abs=0.005)  # the float32 .npy it wrote


def test_bench_search():
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": str(ray_tmp)}
    try:
        argv = ["--trials", "2", "--epochs", "1", "--d-model", "16", "--max-length", "64"]
        lines = _run("bench_search.py", *argv, env=env, timeout=900)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    m = _match(
        rf"bench_search: 2 trials, mean trial wall {NUMBER}s, outside training {NUMBER}% \(target <= 5% for "
        rf"1-minute trials\), dataset setup {NUMBER}s once on the driver = {NUMBER}s per trial "
        rf"\(\+ {NUMBER}s inside each trial before its first epoch\)",
        lines,
    )
    wall, outside, setup, per_trial, in_trial = (float(m.group(i)) for i in range(1, 6))
    assert wall > 0 and 0 <= outside <= 100 and setup > 0 and in_trial >= 0
    assert abs(per_trial - setup / 2) <= 0.01


def _tiny_dataset(folder: Path) -> Path:
    """40 demo samples of 6 reads of 120 bases each, as JSON lines: the whole recipe gets through it in seconds."""
    df = make_demo(num_samples=40, seed=1)
    df["sequences"] = [[read[:120] for read in reads[:6]] for reads in df["sequences"]]
    path = folder / "tiny.jsonl"
    df.to_json(path, orient="records", lines=True)
    return path


def test_bench_quality(tmp_path):
    out = tmp_path / "quality"
    argv = ["--dataset", str(_tiny_dataset(tmp_path)), "--output-dir", str(out)]
    clusters = {"freeze_backbone": True, "aggregation": "clusters", "clusters": 8, "cluster_dims": 4, "max_sets": None}
    space = tiny_space(name="tiny", fixed__dataset="demo", fixed__max_length=120, space={"head": {"choice": ["trees"]}})
    space["fixed"].update(clusters, tree_min_samples=2)
    lines = _run(
        "bench_quality.py",
        *argv,
        "--space",
        str(write_space(tmp_path, space)),
        "--num-samples",
        "1",
        "--epochs",
        "1",
        "--clusters",
        "8",
        timeout=900,
    )
    quality = rf"quality {{name}} +test R² {NUMBER}  RMSE {NUMBER}  MAE {NUMBER}  wall +{NUMBER} min  \(.+\)"
    members = ("kmer4-hgb", "kmer6-ridge", "kmer8-ridge", "otu5-hgb", "environment-mean")
    for name in ("dna-model", "kmer-codebook", *members):
        r2, rmse, mae, minutes = (float(x) for x in _match(quality.format(name=name), lines).groups())
        assert r2 <= 1 and 0 < mae <= rmse and minutes >= 0
    assert "kmer reads" in _match(quality.format(name="kmer-codebook"), lines).group(0)
    assert "hyena reads" in _match(quality.format(name="dna-model"), lines).group(0)
    chosen = [line for line in lines if "(chosen on val)" in line]
    assert len(chosen) == 1 and "-mean" not in chosen[0]  # the bar is a model of the reads, not a reference
    for folder in ("model", "control", "baseline", *(f"baselines/{name}" for name in members)):
        table = (out / folder / "test_predictions.csv").read_text().splitlines()
        assert table[0].startswith("sample_id,") and "predicted_ph_mean" in table[0] and len(table) == 1 + 8


def test_bench_baseline(tmp_path):
    env = {**os.environ, "TUNE_PH_CACHE": str(tmp_path / "cache")}
    argv = ["--samples", "12", "--reads", "4", "--length", "60", "--k", "3", "4", "--dataset", "demo"]
    lines = _run("bench_baseline.py", *argv, env=env)
    for k in (3, 4):
        m = _match(
            rf"profiles k={k}: 12 samples, {NUMBER} M bases in {NUMBER} s \({NUMBER} M bases/s\), matrix \d+ MiB",
            lines,
        )
        assert float(m.group(1)) == round(12 * 4 * 60 / 1e6, 1) and float(m.group(2)) >= 0
        for model in ("hgb", "ridge"):
            m = _match(
                rf"kmer{k}-{model}: val R² {NUMBER}, test R² {NUMBER}, {NUMBER} s \(features shared by its models\)",
                lines,
            )
            assert float(m.group(1)) <= 1 and float(m.group(2)) <= 1 and float(m.group(3)) >= 0
    chosen = _match(rf"family of \d+: {NUMBER} s; chosen on val: (\S+)", lines).group(2)
    assert any(line.startswith(f"{chosen}: val R² ") for line in lines)
    assert float(_match(rf"load \+ split demo: {NUMBER} s \(300 samples\)", lines).group(1)) >= 0
    assert float(_match(rf"peak RSS {NUMBER} GiB", lines).group(1)) > 0


def test_bench_read_ph(tmp_path):
    lines = _run(
        "bench_read_ph.py", "--max-steps", "2", "--samples", "4", "--eval-reads", "2", "--save", str(tmp_path / "tuned")
    )
    ridge = _match(rf"read-ph kmer5-ridge: read val R² {NUMBER}, sample val R² \(mean of its reads\) {NUMBER}", lines)
    # The demo's pH is learnable from its reads' k-mers: the ridge must see some of it.
    assert float(ridge.group(2)) > 0
    tuned = _match(
        rf"read-ph hyenadna-tiny-1k-seqlen: 16 reads in {NUMBER} min \({NUMBER} reads/s\), train loss {NUMBER} -> "
        rf"{NUMBER}, read val R² {NUMBER}, sample val R² \(mean of 2 reads\) {NUMBER}",
        lines,
    )
    assert float(tuned.group(2)) > 0
    # What --save wrote is a checkpoint folder the project loads.
    from hyena_dna import HyenaDNAModel

    assert HyenaDNAModel.from_pretrained(tmp_path / "tuned").config.d_model == 128

"""k-mer baseline: counting, profiles, the shared split, outputs, the result cache and the CLI's errors."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tune_ph.baseline import kmer_models, kmers
from tune_ph.baseline.kmer_models import PREDICTION_COLUMNS, BaselineError, run_baseline
from tune_ph.baseline.kmers import KmerError, kmer_counts, kmer_names, kmer_profiles
from tune_ph.commands import baseline as baseline_cli
from tune_ph.data.demo import make_demo
from tune_ph.data.sources import clean_samples, load_samples, split_samples

ROOT = Path(__file__).resolve().parents[1]


def named_counts(reads: list[str], k: int) -> dict[str, int]:
    counts = kmer_counts(reads, k)
    return {name: int(c) for name, c in zip(kmer_names(k), counts) if c}


@pytest.fixture(scope="module")
def demo_df() -> pd.DataFrame:
    return clean_samples(make_demo(num_samples=120, seed=3))


@pytest.fixture(scope="module")
def demo_parquet(tmp_path_factory) -> Path:
    """A small dataset file in the hub schema (with one unlabelled sample, which loading drops)."""
    df = make_demo(num_samples=80, seed=5)
    df.loc[7, "pH"] = None
    path = tmp_path_factory.mktemp("data") / "tiny.parquet"
    df.to_parquet(path)
    return path


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNE_PH_CACHE": str(cache / "tokens")}  # never the user's ~/.cache
    return subprocess.run(
        [sys.executable, "-m", "tune_ph", "baseline", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# ---------------------------------------------------------------- counting


def test_kmer_names_are_lexicographic_base4():
    assert kmer_names(1) == ["A", "C", "G", "T"]
    assert kmer_names(2)[:5] == ["AA", "AC", "AG", "AT", "CA"]
    assert kmer_names(3)[-1] == "TTT" and len(kmer_names(3)) == 64


def test_kmer_counts_hand_checked_skip_ambiguous_bases_and_read_boundaries():
    reads = ["ACGTA", "CGNAC", "GT"]
    # ACGTA: AC CG GT TA | CGNAC: CG, (GN NA skipped), AC | GT: GT. Joining the reads would add A|C and C|G.
    assert named_counts(reads, 2) == {"AC": 2, "CG": 2, "GT": 2, "TA": 1}
    # Only the first read holds a 3-mer free of N; the last read is shorter than k.
    assert named_counts(reads, 3) == {"ACG": 1, "CGT": 1, "GTA": 1}
    assert named_counts(reads, 1) == {"A": 3, "C": 3, "G": 3, "T": 2}
    assert kmer_counts(reads, 6).sum() == 0 and kmer_counts([], 2).sum() == 0
    # Lowercase and U read as the tokenizer reads them; IUPAC codes other than N are skipped too.
    assert named_counts(["acgu", "ARG"], 2) == {"AC": 1, "CG": 1, "GT": 1}


def test_profiles_are_pooled_relative_frequencies(demo_df):
    seqs = demo_df["sequences"].tolist()[:20] + [["ACG"], ["ACGTTGCA"]]
    prof = kmer_profiles(seqs, 4, progress=False)
    assert prof.shape == (22, 256) and prof.dtype == np.float32
    assert np.allclose(np.delete(prof, -2, axis=0).sum(axis=1), 1.0, atol=1e-5)
    assert not prof[-2].any()  # one 3-base read has no 4-mer: a zero row, not NaN
    # Pooled over all reads of the sample: the counts of every read summed, then normalised once.
    reads = seqs[0]
    pooled = sum(kmer_counts([r], 4) for r in reads)
    assert np.allclose(prof[0], pooled / pooled.sum(), atol=1e-7)
    expected_last = np.zeros(256)
    for name in ("ACGT", "CGTT", "GTTG", "TTGC", "TGCA"):
        expected_last[kmer_names(4).index(name)] = 0.2
    assert np.allclose(prof[-1], expected_last)


def test_chunked_profiles_equal_one_pass(demo_df, monkeypatch):
    seqs = demo_df["sequences"].tolist()[:30]
    whole = kmer_profiles(seqs, 5, progress=False)
    monkeypatch.setattr(kmers, "_CHUNK_BASES", 5000)  # forces many chunks; the chunk edges must not matter
    assert np.array_equal(kmer_profiles(seqs, 5, progress=False), whole)


@pytest.mark.parametrize("k", [0, 9, -1, 2.5, True])
def test_bad_k_is_refused_naming_the_option(k):
    with pytest.raises(KmerError, match="--k"):
        kmer_counts(["ACGT"], k)


# ---------------------------------------------------------------- models, split, cache


def test_demo_is_learnt_on_the_dna_models_split(demo_df, tmp_path):
    split = split_samples(demo_df, seed=42)
    res = run_baseline(demo_df, split, k=4, models=("hgb", "ridge"), cache_dir=tmp_path)
    for model, r in res.items():
        m, table = r["metrics"], r["predictions"]
        assert m["test_r2"] > 0.8, (model, m)  # pH follows the taxa present, which k-mers see
        assert m["test_n_samples"] == len(split["test"]) and m["val_n_samples"] == len(split["val"])
        assert m["train_n_samples"] == len(split["train"])
        assert list(table.columns) == list(PREDICTION_COLUMNS)
        assert table["sample_id"].tolist() == sorted(split["test"])
        assert np.allclose(table["residual_mean"], table["true_ph"] - table["predicted_ph_mean"])
        assert {"test_mse", "test_rmse", "test_mae", "test_r2", "val_mse", "val_rmse", "val_mae", "val_r2"} <= set(m)
    assert res["ridge"]["metrics"]["ridge_alpha"] in kmer_models.RIDGE_ALPHAS


def test_second_call_is_a_cache_hit_and_a_new_k_is_not(demo_df, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TUNE_PH_CACHE", str(tmp_path / "cache"))  # the baseline cache is inside it, in "baseline"
    split = split_samples(demo_df, seed=1)
    first = run_baseline(demo_df, split, k=3, models=("hgb",))
    assert not first["hgb"]["cached"]
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]  # nothing beside $TUNE_PH_CACHE
    files = list((tmp_path / "cache" / "baseline").iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"
    json.loads(files[0].read_text())  # plain JSON, no pickle
    with caplog.at_level(logging.INFO, logger="tune_ph.baseline.kmer_models"):
        second = run_baseline(demo_df, split, k=3, models=("hgb", "ridge"))
    assert second["hgb"]["cached"] and not second["ridge"]["cached"]
    assert "cache hit" in caplog.text
    assert second["hgb"]["metrics"] == first["hgb"]["metrics"]
    pd.testing.assert_frame_equal(second["hgb"]["predictions"], first["hgb"]["predictions"])
    assert not run_baseline(demo_df, split, k=4, models=("hgb",))["hgb"]["cached"]
    assert not run_baseline(demo_df, split_samples(demo_df, seed=2), k=3, models=("hgb",))["hgb"]["cached"]
    assert run_baseline(demo_df, split, k=3, models=("ridge",))["ridge"]["cached"]
    # A poisoned entry (its R² changed by hand) no longer matches its content hash: recomputed, with a warning.
    entry = json.loads(files[0].read_text())
    entry["metrics"]["test_r2"] = 0.99
    files[0].write_text(json.dumps(entry))
    with caplog.at_level(logging.WARNING, logger="tune_ph.baseline.kmer_models"):
        again = run_baseline(demo_df, split, k=3, models=("hgb",))["hgb"]
    assert not again["cached"] and again["metrics"]["test_r2"] == first["hgb"]["metrics"]["test_r2"]
    assert "does not match its hash" in caplog.text


def test_bad_models_and_splits_are_refused(demo_df):
    split = split_samples(demo_df)
    with pytest.raises(BaselineError, match="unknown model"):
        run_baseline(demo_df, split, models=("xgb",), use_cache=False)
    with pytest.raises(BaselineError, match="not in the data"):
        run_baseline(demo_df, {**split, "test": split["test"] + ["NOPE"]}, use_cache=False)


# ---------------------------------------------------------------- CLI


def test_cli_writes_metrics_and_one_csv_row_per_test_sample(demo_parquet, tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        "--dataset",
        str(demo_parquet),
        "--k",
        "3",
        "--model",
        "both",
        "--output-dir",
        str(out),
        "--split-seed",
        "7",
        "--test-fraction",
        "0.25",
        "--val-fraction",
        "0.15",
        "--cache-dir",
        str(tmp_path / "c"),
    ]
    assert baseline_cli.main(args) == 0
    split = split_samples(load_samples(str(demo_parquet)), seed=7, test_fraction=0.25, val_fraction=0.15)
    assert json.loads((out / "split.json").read_text()) == split
    printed = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in printed] == ["hgb k=3", "ridge k=3"]
    assert f"({len(split['test'])} test samples," in printed[0]
    for model in ("hgb", "ridge"):
        table = pd.read_csv(out / model / "test_predictions.csv")
        assert list(table.columns) == list(PREDICTION_COLUMNS)
        assert sorted(table["sample_id"]) == sorted(split["test"]) and len(table) == len(split["test"])
        metrics = json.loads((out / model / "metrics.json").read_text())
        assert metrics["test_n_samples"] == len(table) and metrics["k"] == 3 and metrics["model"] == model


@pytest.mark.parametrize("k", ["9", "0"])
def test_cli_bad_k_is_a_usage_error(tmp_path, k):
    proc = run_cli("--dataset", "demo", "--k", k, cache=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: --k must be an integer from 1 to 8, got {k}"]
    assert not (tmp_path / "baseline").exists()


def test_cli_missing_dataset_path_is_a_usage_error(tmp_path):
    missing = tmp_path / "no_such_dataset"
    proc = run_cli("--dataset", str(missing), "--output-dir", str(tmp_path / "out"), cache=tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"no such file or folder: {missing}" in lines[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the reference baseline of a TrainConfig


def test_reference_baseline_is_fitted_once_then_read_from_the_cache(tmp_path, monkeypatch):
    calls = []
    fit_ridge = kmer_models._FITTERS["ridge"]
    monkeypatch.setitem(kmer_models._FITTERS, "ridge", lambda *a: calls.append(1) or fit_ridge(*a))
    cfg = {"dataset": "demo", "cache_dir": str(tmp_path)}
    first, second = kmer_models.reference_baseline(cfg), kmer_models.reference_baseline(cfg)
    assert len(calls) == 1 and not first["cached"] and second["cached"]
    assert second["results"] == first["results"] and second["k"] == 6
    line = kmer_models.baseline_line(second)
    assert line.startswith("k-mer baseline (ridge, k=6) on the same split: test R² 0.") and "RMSE" in line
    r2 = first["results"]["ridge"]["test_r2"]
    expected = f"test R²: DNA model {r2 + 0.1:.3f} vs k-mer baseline {r2:.3f} (+0.100, ahead)"
    assert kmer_models.versus(r2 + 0.1, first) == expected


def test_a_failing_baseline_is_a_warning_and_a_reason(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no room")

    monkeypatch.setattr(kmer_models, "run_baseline", broken)
    with caplog.at_level(logging.WARNING, logger="tune_ph.baseline.kmer_models"):
        out = kmer_models.reference_baseline({"dataset": "demo"})
    assert out["reason"] == "it failed: no room" and "--dataset demo --k 6" in out["command"]
    assert "k-mer baseline not computed: no room" in caplog.text
    assert kmer_models.baseline_line(out).startswith(
        "k-mer baseline: not computed (it failed: no room); compute it with"
    )
    assert kmer_models.versus(0.5, out) is None

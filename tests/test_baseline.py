"""Baselines: k-mer counting and profiles, the family (k-mers, read clusters, references) on the shared split,
the member chosen on val, outputs, the result cache, the CLI and the comparison with the DNA model."""

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
from sklearn.cluster import MiniBatchKMeans

from tune_ph.baseline import family, kmers, members, reference, regressors
from tune_ph.baseline.choices import KmerError
from tune_ph.baseline.family import FamilySpec, choose_on_val, run_family
from tune_ph.baseline.kmer_models import run_baseline
from tune_ph.baseline.kmers import kmer_counts, kmer_names, kmer_profiles
from tune_ph.baseline.members import PREDICTION_COLUMNS, Baseline, BaselineError
from tune_ph.baseline.otus import run_otu_baseline
from tune_ph.baseline.reference import Comparison, Reference, compare, reference_of
from tune_ph.commands import baseline as baseline_cli
from tune_ph.data.demo import make_demo
from tune_ph.data.sources import clean_samples, load_samples
from tune_ph.data.split import split_samples
from tune_ph.report.evaluate import predictions_table as model_predictions_table

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


def test_sparse_profiles_equal_dense_ones(demo_df):
    seqs = demo_df["sequences"].tolist()[:12] + [["ACG"]]
    dense = kmer_profiles(seqs, 7, progress=False)
    rows = kmer_profiles(seqs, 7, progress=False, sparse_rows=True)
    assert rows.format == "csr" and rows.dtype == np.float32 and rows.shape == dense.shape
    assert rows.nnz == np.count_nonzero(dense) and np.allclose(rows.toarray(), dense, atol=1e-7)


@pytest.mark.parametrize("k", [0, 9, -1, 2.5, True])
def test_bad_k_is_refused_naming_the_option(k):
    with pytest.raises(KmerError, match="--k"):
        kmer_counts(["ACGT"], k)


# ---------------------------------------------------------------- k-mer models, split, cache


def test_kmer_members_on_the_dna_models_split(demo_df, tmp_path):
    split = split_samples(demo_df, seed=42)
    res = run_baseline(demo_df, split, k=4, models=("hgb", "ridge"), cache_dir=tmp_path)
    for model, r in res.items():
        m, table = r.metrics, r.predictions
        assert r.name == f"kmer4-{model}" and m["model"] == model and m["k"] == 4
        # The demo's pH follows which combination of variants each read carries, which a whole sample's k-mer
        # counts miss (test_demo): the k-mer members fit, and fall short.
        assert -1.0 < m["test_r2"] < 0.6, (model, m)
        assert m["test_r2_ci95"][0] < m["test_r2"] < m["test_r2_ci95"][1]
        assert m["test_rmse_ci95"][0] < m["test_rmse"] < m["test_rmse_ci95"][1]
        assert m["test_n_samples"] == len(split["test"]) and m["val_n_samples"] == len(split["val"])
        assert m["train_n_samples"] == len(split["train"])
        assert list(table.columns) == list(PREDICTION_COLUMNS)
        assert table["sample_id"].tolist() == sorted(split["test"])
        assert np.allclose(table["residual_mean"], table["true_ph"] - table["predicted_ph_mean"])
        assert {"test_mse", "test_rmse", "test_mae", "test_r2", "val_mse", "val_rmse", "val_mae", "val_r2"} <= set(m)
    assert res["ridge"].metrics["ridge_alpha"] in regressors.RIDGE_ALPHAS


def test_long_kmers_are_sparse_and_hgb_keeps_the_features_most_related_to_ph(demo_df, tmp_path, monkeypatch):
    monkeypatch.setattr(regressors, "HGB_MAX_FEATURES", 256)  # the selection's path at a test's size
    fitted = []
    fit = regressors.Hgb.fit
    monkeypatch.setattr(regressors.Hgb, "fit", staticmethod(lambda xt, *a: fitted.append(xt) or fit(xt, *a)))
    res = run_baseline(demo_df, split_samples(demo_df), k=7, models=("hgb", "ridge"), cache_dir=tmp_path)
    assert fitted[0].format == "csr" and fitted[0].shape[1] == 4**7
    hgb = res["hgb"].metrics
    assert hgb["hgb_features_kept"] == 256 and hgb["n_features"] == 4**7 and -1.0 < hgb["test_r2"] < 0.6
    assert -1.0 < res["ridge"].metrics["test_r2"] < 0.6  # no k of whole-sample counts solves the demo


def test_second_call_is_a_cache_hit_and_a_new_k_is_not(demo_df, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TUNE_PH_CACHE", str(tmp_path / "cache"))  # the baseline cache is inside it, in "baseline"
    split = split_samples(demo_df, seed=1)
    first = run_baseline(demo_df, split, k=3, models=("hgb",))
    assert not first["hgb"].cached
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]  # nothing beside $TUNE_PH_CACHE
    cached = list((tmp_path / "cache" / "baseline").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".json" and "-kmer3-hgb-" in cached[0].name
    json.loads(cached[0].read_text())  # plain JSON, no pickle
    with caplog.at_level(logging.INFO, logger="tune_ph.baseline.members"):
        second = run_baseline(demo_df, split, k=3, models=("hgb", "ridge"))
    assert second["hgb"].cached and not second["ridge"].cached
    assert "cache hit" in caplog.text
    assert second["hgb"].metrics == first["hgb"].metrics
    pd.testing.assert_frame_equal(second["hgb"].predictions, first["hgb"].predictions)
    assert not run_baseline(demo_df, split, k=4, models=("hgb",))["hgb"].cached
    assert not run_baseline(demo_df, split_samples(demo_df, seed=2), k=3, models=("hgb",))["hgb"].cached
    assert not run_baseline(demo_df, split_samples(demo_df, by="study"), k=3, models=("hgb",))["hgb"].cached
    assert run_baseline(demo_df, split, k=3, models=("ridge",))["ridge"].cached


def test_bad_models_and_splits_are_refused(demo_df):
    split = split_samples(demo_df)
    with pytest.raises(BaselineError, match="unknown model"):
        run_baseline(demo_df, split, models=("xgb",), use_cache=False)
    with pytest.raises(BaselineError, match="not in the data"):
        run_baseline(demo_df, {**split, "test": split["test"] + ["NOPE"]}, use_cache=False)
    with pytest.raises(BaselineError, match="--clusters"):
        run_otu_baseline(demo_df, split, clusters=(1,), use_cache=False)


def test_baseline_predictions_use_the_models_column_names():
    """One vocabulary: the baseline's CSV is the DNA model's, less the columns of several read sets."""
    from types import SimpleNamespace

    from tune_ph.training.predict import Predictions

    dataset = SimpleNamespace(
        sample_ids=np.array(["a", "b"]), study_name=np.array(["s", "s"]), environment=np.array(["soil", "lake"])
    )
    two = np.array([6.0, 7.0])
    preds = Predictions(np.arange(2), two, two, np.full(2, np.nan), np.ones(2, dtype=np.int64))
    model_columns = list(model_predictions_table(dataset, preds).columns)
    assert list(PREDICTION_COLUMNS) == [c for c in model_columns if c not in ("predicted_ph_sd", "n_sets")]


# ---------------------------------------------------------------- read clusters and references


def test_read_clusters_are_fitted_on_train_reads_and_their_number_chosen_on_val(demo_df, tmp_path, monkeypatch):
    from tune_ph.baseline import otus

    fitted_rows = []

    class Recording(MiniBatchKMeans):
        def fit(self, X, *args, **kwargs):
            fitted_rows.append(X.shape[0])
            return super().fit(X, *args, **kwargs)

    monkeypatch.setattr(otus, "MiniBatchKMeans", Recording)
    split = split_samples(demo_df)
    res = run_otu_baseline(demo_df, split, k=5, clusters=(32, 128), cache_dir=tmp_path)
    train_reads = sum(len(r) for r in demo_df.set_index("sample_id").loc[split["train"], "sequences"])
    assert fitted_rows == [train_reads, train_reads]  # both clusterings, on train reads only
    for model, r in res.items():
        m = r.metrics
        assert r.name == f"otu5-{model}" and m["features"] == "otu" and m["k"] == 5
        by_val = {int(n): v for n, v in m["val_r2_by_clusters"].items()}
        assert set(by_val) == {32, 128} and m["n_clusters"] == max(by_val, key=by_val.get)
        assert m["test_n_samples"] == len(split["test"])
    # Reads clustered one by one tell the demo's clades apart, which whole-sample k-mer counts cannot.
    assert res["ridge"].metrics["test_r2"] > 0.85
    again = run_otu_baseline(demo_df, split, k=5, clusters=(32, 128), cache_dir=tmp_path)
    assert all(r.cached for r in again.values()) and len(fitted_rows) == 2


def test_trivial_references_predict_train_means(demo_df):
    from tune_ph.baseline import trivial

    parts = members.split_frames(demo_df, split_samples(demo_df))
    refs = trivial.run_references(parts)
    assert list(refs) == ["train-mean", "environment-mean", "study-mean"]  # test studies are seen in training
    train = parts["train"]
    assert np.allclose(refs["train-mean"].predictions["predicted_ph_mean"], train["pH"].mean())
    by_env = train.groupby("environment")["pH"].mean()
    expected = parts["test"]["environment"].map(by_env).to_numpy()
    assert np.allclose(refs["environment-mean"].predictions["predicted_ph_mean"], expected)
    assert refs["study-mean"].metrics["model"] == "study-mean" and refs["study-mean"].metrics["k"] is None
    by_study = trivial.run_references(members.split_frames(demo_df, split_samples(demo_df, by="study")))
    assert "study-mean" not in by_study  # no test study was seen: it would be the environment mean


# ---------------------------------------------------------------- the family and the member chosen on val


def _fake(name: str, val_r2: float, test_r2: float) -> Baseline:
    table = pd.DataFrame({"sample_id": ["a", "b"], "predicted_ph_mean": [6.0, 7.0]})
    return Baseline(name, {"name": name, "val_r2": val_r2, "test_r2": test_r2}, table)


def test_the_baseline_beside_the_model_is_chosen_on_val_never_on_test():
    fam = {
        "kmer8-ridge": _fake("kmer8-ridge", 0.47, 0.50),
        "otu5-hgb": _fake("otu5-hgb", 0.45, 0.60),  # best on test, but test never chooses
        "kmer6-hgb": _fake("kmer6-hgb", float("nan"), 0.55),
    }
    assert choose_on_val(fam) == "kmer8-ridge"
    ref = reference_of(fam, choose_on_val(fam), "python -m tune_ph baseline --dataset d")
    assert ref.chosen == "kmer8-ridge" and ref.metrics["test_r2"] == 0.50 and set(ref.results) == set(fam)
    assert ref.test_predictions == {"a": 6.0, "b": 7.0}
    assert reference.baseline_line(ref).startswith(
        "baseline chosen on val: kmer8-ridge (val R² 0.470, best of 3 from the reads)"
    )
    assert reference.versus(0.6, ref, "test") == "test R²: DNA model 0.600 vs baseline kmer8-ridge 0.500 (+0.100)"
    assert choose_on_val({"x": _fake("x", float("nan"), 0.5)}) is None
    # baseline.json round trip, and one written before the family (one k-mer Ridge) still reads.
    saved = json.dumps(ref.to_dict())
    assert json.dumps(Reference.from_dict(json.loads(saved)).to_dict()) == saved
    old = Reference.from_dict({"results": {"ridge": {"k": 6, "test_r2": 0.44}}, "k": 6, "command": "c"})
    assert old.chosen == "kmer6-ridge" and old.metrics["test_r2"] == 0.44 and not old.test_predictions


def test_the_family_on_a_study_split(demo_df, tmp_path, monkeypatch):
    monkeypatch.setattr(regressors, "HGB_MAX_FEATURES", 256)
    split = split_samples(demo_df, by="study")
    spec = FamilySpec(ks=(3, 7), otu_k=5, clusters=(32, 128))
    fam = run_family(demo_df, split, spec, cache_dir=tmp_path)
    assert list(fam) == [
        "train-mean",
        "environment-mean",
        "kmer3-hgb",
        "kmer3-ridge",
        "kmer7-hgb",
        "kmer7-ridge",
        "otu5-hgb",
        "otu5-ridge",
    ]
    for name, b in fam.items():
        m = b.metrics
        assert {"k", "model", "test_r2", "test_r2_ci95", "val_r2"} <= set(m), name
        assert m["test_n_samples"] == len(split["test"])
    # On studies it never saw, too, read clusters learn the demo and whole-sample k-mer counts do not.
    assert fam["otu5-ridge"].metrics["test_r2"] > fam["train-mean"].metrics["test_r2"] + 0.5
    assert fam["otu5-ridge"].metrics["test_r2"] > fam["kmer7-ridge"].metrics["test_r2"] + 0.5
    chosen = choose_on_val(fam)
    assert fam[chosen].val_r2 == max(b.val_r2 for b in fam.values())
    with pytest.raises(BaselineError, match="nothing to fit"):
        FamilySpec(ks=(), otu_k=0, references=False)


# ---------------------------------------------------------------- CLI


def _cli_args(demo_parquet: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["--dataset", str(demo_parquet), "--output-dir", str(out), "--cache-dir", str(cache), *extra]


def test_cli_study_split_writes_each_baseline_beside_its_split(demo_parquet, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(regressors, "HGB_MAX_FEATURES", 256)
    out = tmp_path / "out"
    extra = ("--split-by", "study", "--k", "3", "8", "--otu-k", "3", "--clusters", "4", "8", "--split-seed", "7")
    assert baseline_cli.main(_cli_args(demo_parquet, out, tmp_path / "c", *extra)) == 0
    df = load_samples(str(demo_parquet))
    split = split_samples(df, seed=7, by="study")
    study = dict(zip(df["sample_id"], df["study_name"]))
    names = sorted(p.parent.name for p in out.glob("*/metrics.json"))
    assert names == sorted(
        ["train-mean", "environment-mean", "kmer3-hgb", "kmer3-ridge", "kmer8-hgb", "kmer8-ridge", "otu3-hgb"]
        + ["otu3-ridge"]
    )
    for path in [out / "split.json", *out.glob("*/split.json")]:
        saved = json.loads(path.read_text())
        assert saved["split_by"] == "study" and saved["test"] == split["test"]
        test_studies = {study[s] for s in saved["test"]}
        assert test_studies.isdisjoint(study[s] for s in saved["train"] + saved["val"])
        assert saved["studies"]["test"] == sorted(test_studies)
    chosen = json.loads((out / "baseline.json").read_text())["chosen"]
    for name in names:
        metrics = json.loads((out / name / "metrics.json").read_text())
        lo, hi = metrics["test_r2_ci95"]
        assert lo <= metrics["test_r2"] <= hi and "k" in metrics and "model" in metrics
        assert metrics["chosen_on_val"] == (name == chosen) and metrics["split_by"] == "study"
        table = pd.read_csv(out / name / "test_predictions.csv")
        assert list(table.columns) == list(PREDICTION_COLUMNS) and sorted(table["sample_id"]) == sorted(split["test"])
    assert json.loads((out / "kmer8-ridge" / "metrics.json").read_text())["k"] == 8
    summary = pd.read_csv(out / "summary.csv")
    assert summary.loc[summary["chosen_on_val"], "name"].tolist() == [chosen]
    assert summary.loc[summary["val_r2"].idxmax(), "name"] == chosen
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"split by study: {len(split['train'])} train, {len(split['val'])} val")
    assert any(line.startswith(chosen) and line.endswith("<- chosen on val") for line in printed)


def test_cli_one_k_and_one_model_as_before(demo_parquet, tmp_path, capsys):
    out = tmp_path / "out"
    args = _cli_args(demo_parquet, out, tmp_path / "c", "--k", "3", "--model", "ridge", "--otu-k", "0")
    assert baseline_cli.main([*args, "--test-fraction", "0.25", "--val-fraction", "0.15"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "environment-mean",
        "kmer3-ridge",
        "study-mean",
        "train-mean",
    ]
    split = split_samples(load_samples(str(demo_parquet)), test_fraction=0.25, val_fraction=0.15)
    assert SplitRecordIds(out / "split.json") == split
    metrics = json.loads((out / "kmer3-ridge" / "metrics.json").read_text())
    assert metrics["k"] == 3 and metrics["model"] == "ridge" and metrics["test_n_samples"] == len(split["test"])
    assert "kmer3-ridge" in capsys.readouterr().out


def SplitRecordIds(path: Path) -> dict[str, list[str]]:  # noqa: N802 - reads like the record it builds
    from tune_ph.data.split import SplitRecord

    return SplitRecord.from_dict(json.loads(path.read_text())).ids()


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


# ---------------------------------------------------------------- the baseline of a TrainConfig, the comparison


def test_reference_baseline_is_fitted_once_then_read_from_the_cache(tmp_path, monkeypatch):
    calls = []
    fit_ridge = regressors.RidgeOnVal.fit
    monkeypatch.setattr(regressors.RidgeOnVal, "fit", staticmethod(lambda *a: calls.append(1) or fit_ridge(*a)))
    cfg = {"dataset": "demo", "cache_dir": str(tmp_path), "split_by": "study"}
    first, second = reference.reference_baseline(cfg), reference.reference_baseline(cfg)
    assert len(calls) == 1 and not first.cached and second.cached  # the tests' family: k=4 (conftest)
    assert second.results == first.results and second.chosen == first.chosen == choose_on_val_of(first)
    assert first.command == "python -m tune_ph baseline --dataset demo --split-by study"
    assert len(first.test_predictions) == first.metrics["test_n_samples"]
    line = reference.baseline_line(second)
    assert line.startswith(f"baseline chosen on val: {first.chosen} (val R² ") and "RMSE" in line


def choose_on_val_of(ref: Reference) -> str:
    return max(ref.results, key=lambda name: ref.results[name]["val_r2"])


def test_a_failing_baseline_is_a_warning_and_a_reason(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no room")

    monkeypatch.setattr(family, "run_family", broken)
    with caplog.at_level(logging.WARNING, logger="tune_ph.baseline.reference"):
        out = reference.reference_baseline({"dataset": "demo"})
    assert out.reason == "it failed: no room" and out.command == "python -m tune_ph baseline --dataset demo"
    assert "baseline not computed: no room" in caplog.text
    assert reference.baseline_line(out).startswith("baseline: not computed (it failed: no room); compute it with")
    assert reference.versus(0.5, out) is None and compare(pd.DataFrame(), out) is None


def test_the_model_is_compared_with_the_chosen_baseline_on_the_same_test_samples():
    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(200)]
    true = rng.normal(7, 1, 200)
    theirs = true + rng.normal(0, 0.9, 200)
    ref = Reference(results={"kmer8-ridge": {"test_r2": 0.2}}, chosen="kmer8-ridge")
    ref.test_predictions = dict(zip(ids[1:], theirs[1:]))  # s0: no baseline prediction
    table = pd.DataFrame({"sample_id": ids, "true_ph": true, "predicted_ph_mean": true + rng.normal(0, 0.4, 200)})
    found = compare(table, ref)
    assert found.baseline == "kmer8-ridge" and found.n_samples == 199 and found.verdict == "ahead"
    assert found.delta_r2_ci95[0] > 0 and found.delta_r2 > 0.3
    assert Comparison.from_dict(json.loads(json.dumps(found.to_dict()))) == found
    assert found.line().startswith("test R² vs the baseline chosen on val (kmer8-ridge): +0.")
    assert found.line().endswith("over 199 test samples (paired bootstrap, 95 %): ahead")
    assert compare(table, Reference(results=ref.results, chosen="kmer8-ridge")) is None  # no predictions saved
    assert Comparison.from_dict({"baseline": "x"}) is None


def test_kmer_profiles_print_no_progress_into_a_log(capsys):
    # Not a terminal (a log file): no tqdm smear and no lines either; the caller logs one line with the time taken.
    seqs = [["ACGTACGTAC" * 3] * 4 for _ in range(30)]
    kmer_profiles(seqs, 4, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""

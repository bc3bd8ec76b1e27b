"""Predicting new samples: predict_samples, `python -m tune_ph predict`, FASTA folders, pH-optional loading."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY_MODEL

from tune_ph.commands import predict as predict_cli
from tune_ph.config import TrainConfig
from tune_ph.data import sources, tokens
from tune_ph.data.fasta_samples import read_fasta_dir
from tune_ph.errors import DatasetError, InputError
from tune_ph.files import save_torch
from tune_ph.model.regressor import build_model, load_checkpoint
from tune_ph.report.evaluate import evaluate_checkpoint
from tune_ph.training import inference
from tune_ph.training.checkpoints import find_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_LENGTH = 128
NUM_SETS = 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny random model saved as a plain dict without optimizer state (no training: the test is about plumbing)."""
    cfg = TrainConfig(
        dataset="demo",
        from_scratch=True,
        model_config=dict(TINY_MODEL),
        max_length=MAX_LENGTH,
        max_sets=NUM_SETS,
        batch_size=16,
        device="cpu",
        aggregation="mean",  # the head on the mean set vector: differs from the mean of per-set predictions
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # a random head barely varies; widen its output so equal means are no coincidence
        model.head.net[-1].weight.mul_(300.0)
    state = {
        "model": model.state_dict(),
        "train_config": cfg.to_dict(),
        "model_config": model.backbone.config.to_dict(),
        "target_mean": 6.5,
        "target_std": 1.5,
        "max_length": MAX_LENGTH,
        "dataset_fingerprint": tokens.fingerprint(sources.load_samples("demo")),
        "epoch": 1,
    }
    path = tmp_path_factory.mktemp("run") / "best_model.pt"
    save_torch(path, state)
    return path


@pytest.fixture(scope="module")
def demo() -> pd.DataFrame:
    return sources.load_samples("demo", labelled=False)


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = predict_cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _per_set(checkpoint: Path, df: pd.DataFrame) -> pd.DataFrame:
    """What each read set alone predicts (every set its own sample, all of a sample's reads), with the model."""
    model, state = load_checkpoint(checkpoint)
    ds = tokens.build(df, {}, max_length=MAX_LENGTH, max_sets=None, use_cache=False)
    rows = []
    with torch.no_grad():
        for batch in ds.batches("all", 16):
            values = model(batch.input_ids, batch.mask).double().numpy() * state.target_std + state.target_mean
            rows += zip(ds.sample_ids[batch.sample_index.numpy()], values)
    return pd.DataFrame(rows, columns=["sample_id", "predicted"])


def _whole_sample(checkpoint: Path, df: pd.DataFrame) -> pd.Series:
    """What the model predicts from all of each sample's sets (all its reads) in one forward pass."""
    model, state = load_checkpoint(checkpoint)
    ds = tokens.build(df, {}, max_length=MAX_LENGTH, max_sets=None, use_cache=False)
    ids, mask = ds.tokens_of(np.arange(len(ds)))
    owner = torch.from_numpy(ds.set_sample.astype(np.int64))
    with torch.no_grad():
        values = model(ids, mask, owner, ds.num_samples).double().numpy()
    return pd.Series(values * state.target_std + state.target_mean, index=ds.sample_ids)


# ---------------------------------------------------------------- the library


def test_test_split_means_equal_evaluate(checkpoint: Path, demo: pd.DataFrame, tmp_path: Path, caplog) -> None:
    evaluate_checkpoint(checkpoint, output_dir=tmp_path, device="cpu")
    evaluated = pd.read_csv(tmp_path / "test_predictions.csv")
    # Evaluation packs the sets as training did (max_sets=NUM_SETS); predict does the same when asked to.
    table = inference.predict_samples(checkpoint, demo, split="test", device="cpu", max_sets=NUM_SETS)
    assert sorted(table["sample_id"]) == sorted(evaluated["sample_id"])
    # One name per quantity: every column the two files share means the same in both.
    shared = sorted(set(evaluated.columns) & set(table.columns) - {"sample_id", "study_name"})
    assert shared == ["n_sets", "predicted_ph_mean", "predicted_ph_sd", "residual_mean", "true_ph"]
    both = evaluated.merge(table, on="sample_id", suffixes=("_evaluated", "_predicted"))
    assert both["predicted_ph_mean_predicted"].std() > 0.05  # the samples really get different predictions
    for column in shared:
        np.testing.assert_allclose(both[f"{column}_predicted"], both[f"{column}_evaluated"], rtol=0, atol=1e-6)
    assert "may not be its split" not in caplog.text  # no split.json: recomputed from the same samples
    inference.predict_samples(checkpoint, demo.iloc[::2], split="test", device="cpu")
    assert "may not be its split" in caplog.text  # other samples: the recomputed split is only a guess


def test_split_json_beside_the_checkpoint_wins(checkpoint: Path, demo: pd.DataFrame, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(checkpoint, run / "best_model.pt")
    ids = sorted(demo["sample_id"])
    chosen = ids[:7]  # not what the config draws; an ids-only split.json (older runs) records no seed to redraw it
    (run / "split.json").write_text(json.dumps({"train": ids[37:], "val": ids[7:37], "test": chosen}))
    table = inference.predict_samples(run, demo, split="test", device="cpu")
    assert sorted(table["sample_id"]) == chosen


def test_all_samples_without_split(checkpoint: Path, demo: pd.DataFrame) -> None:
    table = inference.predict_samples(checkpoint, demo, device="cpu")
    assert len(table) == len(demo) == 300
    assert list(table.columns) == [
        "sample_id",
        "study_name",
        "predicted_ph_mean",
        "predicted_ph_sd",
        "n_sets",
        "n_reads_used",
        "n_reads",
        "true_ph",  # these two where some sample has a pH, named as in evaluate's test_predictions.csv
        "residual_mean",
    ]
    np.testing.assert_allclose(
        table["residual_mean"], table["true_ph"].astype(float) - table["predicted_ph_mean"], atol=1e-5
    )
    metrics = inference.sample_metrics(table)
    assert metrics is not None and metrics["n"] == 300 and np.isfinite(metrics["r2"])


def test_sd_is_the_std_of_the_per_set_predictions(checkpoint: Path, demo: pd.DataFrame) -> None:
    rng = np.random.default_rng(1)
    short = ["".join(rng.choice(list("ACGT"), 30)) for _ in range(20)]
    extra = pd.DataFrame(
        {
            "sample_id": ["SHORT_READS", "ONE_READ"],
            "sequences": [short, [short[0]]],
        }
    )
    df = pd.concat([demo.head(12), extra], ignore_index=True)
    table = inference.predict_samples(checkpoint, df, device="cpu").set_index("sample_id")
    per_set = _per_set(checkpoint, sources.clean_samples(df, labelled=False)).groupby("sample_id")["predicted"]
    np.testing.assert_allclose(table["predicted_ph_sd"], per_set.std(ddof=1).loc[table.index], atol=1e-6)
    # The fixture aggregates set vectors (mean), so the prediction is the head on their mean, not a mean of
    # per-set predictions; it must not depend on how predict chunks the sets.
    np.testing.assert_allclose(table["predicted_ph_mean"], _whole_sample(checkpoint, df).loc[table.index], atol=1e-4)
    assert not np.allclose(table["predicted_ph_mean"], per_set.mean().loc[table.index], atol=1e-3)
    assert (table["n_sets"] == per_set.size().loc[table.index]).all()
    assert table.loc[table.index[:12], "predicted_ph_sd"].gt(0).all()
    # 30-base reads + [SEP]: 4 fit a 128-token set, so all 20 reads fill 5 sets (training saw at most 3).
    assert table.loc["SHORT_READS", ["n_sets", "n_reads_used", "n_reads"]].tolist() == [5, 20, 20]
    assert table.loc["ONE_READ", "n_sets"] == 1 and np.isnan(table.loc["ONE_READ", "predicted_ph_sd"])
    # Demo reads (250 bases) are longer than a set: one read per set, every read of the sample.
    demo_rows = table.loc[table.index[:12]]
    assert (demo_rows["n_reads_used"] == demo_rows["n_reads"]).all() and (demo_rows["n_sets"] > NUM_SETS).all()
    capped = inference.predict_samples(checkpoint, df, device="cpu", max_sets=NUM_SETS).set_index("sample_id")
    assert capped.loc["SHORT_READS", ["n_sets", "n_reads_used", "n_reads"]].tolist() == [3, 12, 20]


def test_missing_ph_rows_are_predicted_not_dropped(checkpoint: Path, demo: pd.DataFrame) -> None:
    df = demo.head(10).copy()
    df.loc[:3, "pH"] = np.nan
    table = inference.predict_samples(checkpoint, df, device="cpu")
    assert len(table) == 10 and table["true_ph"].isna().sum() == 4
    assert inference.sample_metrics(table)["n"] == 6
    no_ph = inference.predict_samples(checkpoint, df.drop(columns=["pH", "environment", "study_name"]), device="cpu")
    assert "true_ph" not in no_ph.columns and "residual_mean" not in no_ph.columns
    assert inference.sample_metrics(no_ph) is None
    np.testing.assert_allclose(no_ph["predicted_ph_mean"], table["predicted_ph_mean"])


def test_labelled_loading_still_drops_rows_without_ph(demo: pd.DataFrame) -> None:
    raw = demo.head(10).copy()
    raw.loc[:3, "pH"] = None
    raw.loc[4, "environment"] = None
    assert len(sources.clean_samples(raw.drop(index=4))) == 5  # training: rows without pH are dropped
    with pytest.raises(DatasetError, match="environment"):
        sources.clean_samples(raw)
    unlabelled = sources.clean_samples(raw, labelled=False)
    assert len(unlabelled) == 10 and unlabelled.loc[4, "environment"] == ""
    bad = raw.assign(pH=[20.0] + [np.nan] * 9)
    with pytest.raises(DatasetError, match="outside 0-14"):  # a pH that is given must still make sense
        sources.clean_samples(bad, labelled=False)


def test_parquet_without_ph_through_the_cli(checkpoint: Path, demo: pd.DataFrame, tmp_path: Path, capsys) -> None:
    source = tmp_path / "new.parquet"
    demo.head(8)[["sample_id", "sequences"]].to_parquet(source)
    code, out, _ = _run(
        ["--checkpoint", str(checkpoint), "--dataset", str(source), "--output", str(tmp_path / "p.csv")], capsys
    )
    assert code == 0
    table = pd.read_csv(tmp_path / "p.csv")
    assert len(table) == 8 and "true_ph" not in table.columns and "R²" not in out


def test_dataset_with_ph_prints_metrics(checkpoint: Path, tmp_path: Path, capsys) -> None:
    argv = [
        "--checkpoint",
        str(checkpoint),
        "--dataset",
        "demo",
        "--split",
        "test",
        "--output",
        str(tmp_path / "p.csv"),
    ]
    code, out, _ = _run(argv + ["--batch-size", "64", "--device", "cpu", "--no-progress"], capsys)
    assert code == 0
    table = pd.read_csv(tmp_path / "p.csv")
    assert len(table) == 60 and {"true_ph", "residual_mean"} <= set(table.columns)
    assert "pH known for 60 of 60: R²" in out and "RMSE" in out and "MAE" in out
    assert not list(tmp_path.glob("*.tmp"))


# ---------------------------------------------------------------- FASTA folders


def _write_fasta(path: Path, reads: list[str]) -> None:
    text = "".join(f">read{k}\n{r[:60]}\n{r[60:]}\n" for k, r in enumerate(reads))  # wrapped lines
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)


def test_fasta_dir_layouts_and_metadata(checkpoint: Path, demo: pd.DataFrame, tmp_path: Path, capsys) -> None:
    rows = demo.head(4).reset_index(drop=True)
    reads = {row.sample_id: list(row.sequences) for row in rows.itertuples()}
    ids = list(reads)
    folder = tmp_path / "reads"
    _write_fasta(folder / f"{ids[0]}.fasta", reads[ids[0]])  # flat, plain
    _write_fasta(folder / f"{ids[1]}.fasta.gz", reads[ids[1]])  # flat, gzip
    _write_fasta(folder / "studyA" / f"{ids[2]}.fa", reads[ids[2]])  # study folder, plain
    _write_fasta(folder / "studyB" / f"{ids[3]}.fna.gz", reads[ids[3]])  # study folder, gzip
    (folder / "notes.txt").write_text("not a FASTA name: ignored")

    loaded = read_fasta_dir(folder).set_index("sample_id")
    assert loaded.loc[ids[2], "study_name"] == "studyA" and loaded.loc[ids[0], "study_name"] == ""
    assert all(loaded.loc[sid, "sequences"] == reads[sid] for sid in ids)
    capped = read_fasta_dir(folder, max_dna=sum(map(len, reads[ids[0]][:2]))).set_index("sample_id")
    assert capped.loc[ids[0], "sequences"] == reads[ids[0]][:2]  # whole reads up to --max-dna

    code, out, _ = _run(
        ["--checkpoint", str(checkpoint), "--fasta-dir", str(folder), "--output", str(tmp_path / "f.csv")], capsys
    )
    assert code == 0
    table = pd.read_csv(tmp_path / "f.csv", keep_default_na=False).set_index("sample_id")
    assert sorted(table.index) == sorted(ids) and "true_ph" not in table.columns and "R²" not in out
    expected = inference.predict_samples(checkpoint, rows[["sample_id", "sequences"]], device="cpu").set_index(
        "sample_id"
    )
    np.testing.assert_allclose(table.loc[ids, "predicted_ph_mean"], expected.loc[ids, "predicted_ph_mean"], atol=1e-6)

    meta = tmp_path / "meta.csv"
    pd.DataFrame({"sample_id": ids[:3], "study_name": ["flatStudy", "", "studyA"], "pH": [7.0, None, 5.5]}).to_csv(
        meta, index=False
    )
    argv = ["--checkpoint", str(checkpoint), "--fasta-dir", str(folder), "--metadata", str(meta)]
    code, out, _ = _run(argv + ["--output", str(tmp_path / "m.csv")], capsys)
    assert code == 0
    table = pd.read_csv(tmp_path / "m.csv").set_index("sample_id")
    assert table.loc[ids[0], "study_name"] == "flatStudy" and table.loc[ids[0], "true_ph"] == 7.0
    assert table["true_ph"].notna().sum() == 2 and "pH known for 2 of 4: R²" in out


def test_find_checkpoint_accepts_run_best_and_experiment_folders(checkpoint: Path, tmp_path: Path) -> None:
    best = tmp_path / "exp" / "best"
    best.mkdir(parents=True)
    shutil.copy(checkpoint, best / "best_model.pt")
    for given in (best / "best_model.pt", best, tmp_path / "exp"):
        assert find_checkpoint(given) == best / "best_model.pt"
    assert find_checkpoint(checkpoint.parent) == checkpoint
    with pytest.raises(InputError, match="looked for .*best_model.pt and .*best/best_model.pt"):
        find_checkpoint(tmp_path)


# ---------------------------------------------------------------- bad input


def _bad_gzip(path: Path) -> None:
    path.write_bytes(gzip.compress(b">r\nACGT\n" * 50)[:30])  # truncated


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda d: (d / "s1.fasta").write_text("ACGT\n>r1\nACGT\n"), "s1.fasta: not FASTA"),
        (lambda d: (d / "s1.fasta").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00"), "s1.fasta: not FASTA"),
        (lambda d: _bad_gzip(d / "s1.fasta.gz"), "s1.fasta.gz: cannot read it as FASTA (gzip)"),
        (lambda d: (d / "s1.fasta.gz").write_text(">r\nACGT\n"), "s1.fasta.gz: cannot read it as FASTA (gzip)"),
        (lambda d: (d / "st" / "s1.fa").write_text(">r1\nACGT\n>r2\nACXT\n"), "s1.fa (sample 's1'): sequence 'read 2'"),
    ],
)
def test_bad_fasta_exits_2_naming_the_file(checkpoint: Path, tmp_path: Path, capsys, make, named) -> None:
    folder = tmp_path / "reads"
    (folder / "st").mkdir(parents=True)
    make(folder)
    _write_fasta(folder / "ok.fasta", ["ACGT" * 20])
    argv = ["--checkpoint", str(checkpoint), "--fasta-dir", str(folder), "--output", str(tmp_path / "p.csv")]
    code, _, err = _run(argv, capsys)
    assert code == 2 and named in err and err.startswith("error: ")
    assert not (tmp_path / "p.csv").exists()
    code, _, _ = _run(argv + ["--skip-bad-rows"], capsys)  # the bad file is skipped, the good one predicted
    assert code == 0 and pd.read_csv(tmp_path / "p.csv")["sample_id"].tolist() == ["ok"]


def test_bad_usage_exits_2_naming_the_flag(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = ["--output", str(tmp_path / "p.csv")]
    missing = tmp_path / "nope.pt"
    code, _, err = _run(["--checkpoint", str(missing), "--dataset", "demo", *out], capsys)
    assert code == 2 and f"--checkpoint {missing}: no such file or folder" in err
    code, _, err = _run(["--checkpoint", str(tmp_path), "--dataset", "demo", *out], capsys)
    assert code == 2 and "no checkpoint in it (looked for" in err
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    code, _, err = _run(["--checkpoint", str(tmp_path / "junk.pt"), "--dataset", "demo", *out], capsys)
    assert code == 2 and "cannot be read as a tune_ph checkpoint" in err
    code, _, err = _run(["--checkpoint", str(checkpoint), *out], capsys)
    assert code == 2 and "exactly one of --dataset SOURCE or --fasta-dir DIR" in err
    code, _, err = _run(["--checkpoint", str(checkpoint), "--dataset", "demo", "--batch-size", "0", *out], capsys)
    assert code == 2 and "batch_size must be a positive integer" in err
    code, _, err = _run(["--checkpoint", str(checkpoint), "--dataset", "demo", "--output", str(tmp_path)], capsys)
    assert code == 2 and "is a folder" in err
    meta = tmp_path / "meta.csv"
    meta.write_text("sample_id,pH\ns1,acidic\n")
    _write_fasta(tmp_path / "reads" / "s1.fasta", ["ACGT" * 10])
    argv = ["--checkpoint", str(checkpoint), "--fasta-dir", str(tmp_path / "reads"), "--metadata", str(meta), *out]
    code, _, err = _run(argv, capsys)
    assert code == 2 and "meta.csv: data row 1 (sample_id 's1'): field 'pH' is not a number" in err
    code, _, err = _run(["--checkpoint", str(checkpoint), "--fasta-dir", str(tmp_path / "none"), *out], capsys)
    assert code == 2 and "no such folder" in err
    _write_fasta(tmp_path / "reads" / "studyB" / "s1.fasta.gz", ["ACGT" * 10])
    code, _, err = _run(["--checkpoint", str(checkpoint), "--fasta-dir", str(tmp_path / "reads"), *out], capsys)
    assert code == 2 and "s1.fasta.gz: sample_id 's1' also has the file" in err


def test_empty_fasta_is_reported_and_skipped(checkpoint: Path, tmp_path: Path, capsys, caplog) -> None:
    folder = tmp_path / "reads"
    folder.mkdir()
    (folder / "empty.fasta").write_text("")
    _write_fasta(folder / "full.fasta", ["ACGT" * 20])
    code, _, _ = _run(
        ["--checkpoint", str(checkpoint), "--fasta-dir", str(folder), "--output", str(tmp_path / "p.csv")], capsys
    )
    assert code == 0 and pd.read_csv(tmp_path / "p.csv")["sample_id"].tolist() == ["full"]
    assert "no reads" in caplog.text and "empty" in caplog.text
    (folder / "full.fasta").unlink()
    code, _, err = _run(
        ["--checkpoint", str(checkpoint), "--fasta-dir", str(folder), "--output", str(tmp_path / "q.csv")], capsys
    )
    assert code == 2 and "no sample to predict" in err


# ---------------------------------------------------------------- a searched model


@pytest.mark.slow  # a Ray search (the shared finished_experiment)
def test_experiment_folder_predicts_as_its_export(finished_experiment: dict, tmp_path: Path, capsys, caplog) -> None:
    folder = finished_experiment["folder"]
    argv = ["--checkpoint", str(folder), "--dataset", "demo", "--split", "test", "--output", str(tmp_path / "p.csv")]
    code, out, err = _run(argv + ["--device", "cpu"], capsys)
    assert code == 0, err
    every = pd.read_csv(tmp_path / "p.csv")  # by default every read of every sample, and the console says so
    assert (every["n_reads_used"] == every["n_reads"]).all() and (every["n_sets"] > 1).all()
    reads = f"{every['n_reads'].sum():,}"
    assert f"from {reads} of their {reads} reads ({every['n_sets'].sum():,} read sets)" in out, out
    # The search trained and exported with one set per sample: the same packing gives the export's predictions.
    code, _, err = _run(argv + ["--device", "cpu", "--max-sets", "1"], capsys)
    assert code == 0, err
    exported = pd.read_csv(folder / "best" / "test_predictions.csv").set_index("sample_id")
    table = pd.read_csv(tmp_path / "p.csv").set_index("sample_id")
    assert sorted(table.index) == sorted(exported.index)
    np.testing.assert_allclose(table["predicted_ph_mean"], exported.loc[table.index, "predicted_ph_mean"], atol=1e-5)
    assert "may not be its split" not in caplog.text  # the split was recomputed from the very same samples

"""Dataset sources, validation, the published split, prepare() and the FASTA builder."""

from __future__ import annotations

import gzip
import logging
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from tune_ph.commands import data as data_cli
from tune_ph.data import fasta, sources
from tune_ph.data.split import split_samples
from tune_ph.errors import BadRowError, DatasetError


def _samples(n: int = 6, envs: tuple[str, ...] = ("soil", "lake", "marine")) -> pd.DataFrame:
    rng = np.random.default_rng(n)
    rows = []
    for i in range(n):
        reads = ["".join(rng.choice(list("ACGT"), size=int(rng.integers(8, 20)))) for _ in range(3)]
        rows.append(
            {
                "sample_id": f"SRR{1000 + i}",
                "study_name": f"study{i % 2}",
                "pH": round(float(rng.uniform(3, 9)), 2),
                "sequences": reads,
                "num_sequences": 3,
                "total_DNA_length": sum(map(len, reads)),
                "sample": f"s{i}",
                "environment": envs[i % len(envs)],
                "Bacteria": 3,
                "Archaea": 0,
            }
        )
    return pd.DataFrame(rows)


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    a = a.sort_values("sample_id").reset_index(drop=True)
    b = b.sort_values("sample_id").reset_index(drop=True)
    assert a["sample_id"].tolist() == b["sample_id"].tolist()
    assert a["pH"].tolist() == b["pH"].tolist()
    assert a["environment"].tolist() == b["environment"].tolist()
    assert [list(x) for x in a["sequences"]] == [list(x) for x in b["sequences"]]


# ---------------------------------------------------------------- sources


def test_hub_layout_folder_with_parquet_shards(tmp_path) -> None:
    df = _samples(6)
    (tmp_path / "data").mkdir()
    df.iloc[:4].to_parquet(tmp_path / "data" / "train-00000-of-00002.parquet")
    df.iloc[4:].to_parquet(tmp_path / "data" / "train-00001-of-00002.parquet")
    (tmp_path / "README.md").write_text("---\nlicense: cc0\n---\n")
    loaded = sources.load_samples(str(tmp_path))
    _same(loaded, df)
    assert all(isinstance(r, list) and isinstance(r[0], str) for r in loaded["sequences"])
    assert {"num_sequences", "Bacteria"} <= set(loaded.columns)  # extra schema columns are kept


def test_folder_reached_through_dotdot_and_hidden_files_skipped(tmp_path, monkeypatch) -> None:
    """`--dataset ../shared/data/x` (as the README writes it) finds the shards; a hidden .cache/ copy is skipped."""
    df = _samples(5)
    (tmp_path / "ds" / "data").mkdir(parents=True)
    (tmp_path / "ds" / ".cache").mkdir()
    df.to_parquet(tmp_path / "ds" / "data" / "train-00000-of-00001.parquet")
    df.to_parquet(tmp_path / "ds" / ".cache" / "stale.parquet")  # would double every sample if read
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    _same(sources.load_samples("../ds"), df)


def test_save_to_disk_folder(tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    df = _samples(5)
    datasets.Dataset.from_pandas(df).save_to_disk(str(tmp_path / "single"))
    _same(sources.load_samples(str(tmp_path / "single")), df)
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_pandas(df.iloc[:3]), "test": datasets.Dataset.from_pandas(df.iloc[3:])}
    )
    dd.save_to_disk(str(tmp_path / "dict"))
    _same(sources.load_samples(str(tmp_path / "dict")), df)  # all splits: we make our own


def test_parquet_and_jsonl_files(tmp_path) -> None:
    df = _samples(4)
    df.to_parquet(tmp_path / "s.parquet")
    df.to_json(tmp_path / "s.jsonl", orient="records", lines=True)
    _same(sources.load_samples(str(tmp_path / "s.parquet")), df)
    _same(sources.load_samples(str(tmp_path / "s.jsonl")), df)


def test_missing_column_names_file_and_column(tmp_path) -> None:
    _samples(3).drop(columns=["environment"]).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DatasetError, match=r"bad\.parquet.*environment"):
        sources.load_samples(str(tmp_path / "bad.parquet"))


def test_missing_local_path_is_not_taken_for_a_hub_id(tmp_path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        sources.load_samples(str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="no such file"):
        sources.load_samples("./nope.parquet")
    with pytest.raises(DatasetError, match="no dataset found"):
        sources.load_samples(str(tmp_path))  # an existing but empty folder


def test_offline_hub_error_names_the_setting_and_alternatives(monkeypatch) -> None:
    datasets = pytest.importorskip("datasets")
    import huggingface_hub

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The libraries read these variables at import time; mirror them for this already-running process.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetError) as err:
        sources.load_samples("nobody-here/no-such-dataset-3141")
    text = str(err.value)
    assert "HF_DATASETS_OFFLINE" in text and "nobody-here/no-such-dataset-3141" in text
    assert "save_to_disk" in text and "python -m tune_ph data build" in text and "demo" in text
    # The suggested command is one the builder accepts.
    assert "--output-dir DIR" in text and "--out DIR" not in text


def test_summary_prints_counts_as_sentences(capsys) -> None:
    assert data_cli.main(["summary", "demo"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "300 samples, 14 studies, 7 environments", out
    assert out[1].startswith("environments: soil 83, ") and "{" not in out[1]
    assert out[2] == "split: train 210, val 30, test 60"


# ---------------------------------------------------------------- validation


def test_null_ph_rows_dropped_and_counted(tmp_path, caplog) -> None:
    df = _samples(5)
    df.loc[[1, 3], "pH"] = None
    df.to_parquet(tmp_path / "s.parquet")
    with caplog.at_level(logging.INFO, logger="tune_ph.data.sources"):
        loaded = sources.load_samples(str(tmp_path / "s.parquet"))
    assert loaded["sample_id"].tolist() == ["SRR1000", "SRR1002", "SRR1004"]
    assert "dropped 2 sample(s) with no pH" in caplog.text


def test_empty_reads_dropped() -> None:
    df = _samples(2)
    df.at[0, "sequences"] = ["", "ACGT", "  ", "ggnn"]
    out = sources.clean_samples(df)
    assert out.loc[0, "sequences"] == ["ACGT", "ggnn"]


@pytest.mark.parametrize(
    ("column", "value", "field"),
    [
        ("sequences", ["ACGT", "ACXT"], "sequences"),
        ("pH", 14.5, "pH"),
        ("pH", "acidic", "pH"),
        ("environment", None, "environment"),
        ("sequences", None, "sequences"),
    ],
)
def test_bad_rows_error_names_sample_and_field(column, value, field) -> None:
    df = _samples(4).astype({"pH": object})
    df.at[2, column] = value
    with pytest.raises(BadRowError) as err:
        sources.clean_samples(df, where="mydata.parquet")
    text = str(err.value)
    assert "mydata.parquet" in text and "SRR1002" in text and repr(field) in text and "skip_bad_rows" in text


def test_duplicate_sample_id_and_skip_mode(caplog) -> None:
    df = _samples(5)
    df.at[3, "sample_id"] = "SRR1001"
    df.at[4, "sequences"] = ["AC-GT"]
    with pytest.raises(BadRowError, match="SRR1001.*duplicate.*1 more bad row"):
        sources.clean_samples(df)
    with caplog.at_level(logging.WARNING, logger="tune_ph.data.sources"):
        out = sources.clean_samples(df, skip_bad_rows=True)
    assert out["sample_id"].tolist() == ["SRR1000", "SRR1001", "SRR1002"]
    assert "skipped 2 bad row(s)" in caplog.text


# ---------------------------------------------------------------- split


def _many(n: int, weights: dict[str, int]) -> pd.DataFrame:
    envs = [e for e, w in weights.items() for _ in range(w)]
    rng = np.random.default_rng(0)
    order = rng.permutation(n)  # rows deliberately not sorted by sample_id
    return pd.DataFrame(
        {
            "sample_id": [f"ERR{k:04d}" for k in order],
            "study_name": "x",
            "pH": 7.0,
            "sequences": [["ACGT"]] * n,
            "environment": [envs[k % len(envs)] for k in order],
        }
    )


def test_split_sizes_stratification_and_published_recipe() -> None:
    df = _many(200, {"soil": 5, "lake": 3, "marine": 2})
    split = split_samples(df)
    assert {k: len(v) for k, v in split.items()} == {"train": 140, "val": 20, "test": 40}
    ids = split["train"] + split["val"] + split["test"]
    assert sorted(ids) == sorted(df["sample_id"]) and len(set(ids)) == 200
    env = dict(zip(df["sample_id"], df["environment"]))
    for name, n in (("test", 40), ("val", 20), ("train", 140)):
        counts = Counter(env[s] for s in split[name])
        for e, share in {"soil": 0.5, "lake": 0.3, "marine": 0.2}.items():
            assert abs(counts[e] - share * n) <= 1, (name, e, counts)
    # The same as the published code: sorted ids, sklearn stratified 80:20, then val = round(10 % of all).
    d = df.sort_values("sample_id")
    tv, test = train_test_split(
        d["sample_id"].tolist(), test_size=0.2, random_state=42, stratify=d["environment"].tolist()
    )
    tv_env = [env[s] for s in tv]
    train, val = train_test_split(tv, test_size=20 / len(tv), random_state=42, stratify=tv_env)
    assert split == {"train": train, "val": val, "test": test}


def test_split_deterministic_order_independent_and_seeded() -> None:
    df = _many(100, {"soil": 1, "lake": 1})
    a = split_samples(df)
    assert split_samples(df.sample(frac=1, random_state=3)) == a
    b = split_samples(df, seed=7)
    assert set(b["test"]) != set(a["test"])
    c = split_samples(df, test_fraction=0.3, val_fraction=0.2)
    assert (len(c["train"]), len(c["val"]), len(c["test"])) == (50, 20, 30)
    assert split_samples(df, val_fraction=0.0)["val"] == []


def test_split_rare_environment_fallback_and_error() -> None:
    df = _many(60, {"soil": 1, "lake": 1})
    df.loc[0, "environment"] = "glacier"  # one sample: cannot be stratified on its own
    df.loc[1, "environment"] = "cave"
    split = split_samples(df)
    assert sum(map(len, split.values())) == 60 and {k: len(v) for k, v in split.items()} == {
        "train": 42,
        "val": 6,
        "test": 12,
    }


def test_split_too_small_to_stratify_falls_back(caplog) -> None:
    tiny = _many(10, {"a": 1, "b": 1, "c": 1})  # 2 test samples cannot cover 3 environments
    with caplog.at_level(logging.WARNING, logger="tune_ph.data.sources"):
        split = split_samples(tiny)
    assert "not stratified" in caplog.text
    assert {k: len(v) for k, v in split.items()} == {"train": 7, "val": 1, "test": 2}
    assert split == split_samples(tiny)
    with pytest.raises(DatasetError, match="cannot make"):
        split_samples(_many(1, {"a": 1}))


# ---------------------------------------------------------------- prepare


def test_prepare_end_to_end_with_cache(tmp_path) -> None:
    df = _samples(20)
    df.to_parquet(tmp_path / "s.parquet")
    ds = sources.prepare(str(tmp_path / "s.parquet"), max_length=40, max_sets=2, cache_dir=tmp_path / "cache")
    split = ds.split_dict()
    assert {k: len(v) for k, v in split.items()} == {"train": 14, "val": 2, "test": 4}
    expected = split_samples(sources.load_samples(str(tmp_path / "s.parquet")))
    assert {k: sorted(v) for k, v in split.items()} == {k: sorted(v) for k, v in expected.items()}
    assert ds.max_length == 40 and ds.max_sets == 2
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    batch = next(ds.batches("test", 3))
    assert batch.input_ids.shape == (3, 40)


# ---------------------------------------------------------------- builder


def _write_fasta(path, records, gz=False) -> None:
    text = "".join(
        f">{name} length={len(seq)}\n" + "\n".join(seq[i : i + 60] for i in range(0, len(seq), 60)) + "\n"
        for name, seq in records
    )
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)


def test_read_fasta_cap_keeps_whole_reads(tmp_path) -> None:
    _write_fasta(tmp_path / "a.fasta", [("r1", "A" * 100), ("r2", "C" * 130), ("r3", "G" * 50)])
    assert [len(r) for r in fasta.read_fasta(tmp_path / "a.fasta")] == [100, 130, 50]
    assert [len(r) for r in fasta.read_fasta(tmp_path / "a.fasta", max_dna=250)] == [100, 130]
    assert [len(r) for r in fasta.read_fasta(tmp_path / "a.fasta", max_dna=229)] == [100]
    (tmp_path / "bad.fasta").write_text("ACGT\n>r\nAC\n")
    with pytest.raises(DatasetError, match="bad.fasta"):
        fasta.read_fasta(tmp_path / "bad.fasta")


def test_builder_cli_writes_hub_layout(tmp_path, capsys) -> None:
    fasta = tmp_path / "fasta"
    (fasta / "studyA").mkdir(parents=True)
    (fasta / "studyB").mkdir()
    _write_fasta(fasta / "studyA" / "SRR1.fasta", [("x1", "ACGT" * 30), ("x2", "GGCC" * 30), ("x3", "TTAA" * 30)])
    _write_fasta(fasta / "studyA" / "SRR2.fasta.gz", [("y1", "acgtn" * 20), ("y2", "CA" * 40)], gz=True)
    _write_fasta(fasta / "studyB" / "SRR3.fasta.gz", [("z1", "TTGCA" * 20)], gz=True)
    _write_fasta(fasta / "studyB" / "ORPHAN.fasta", [("o1", "ACGT")])
    meta = tmp_path / "meta.csv"
    pd.DataFrame(
        {
            "sample_id": ["SRR1", "SRR2", "SRR3", "SRR4"],
            "study_name": ["studyA", "studyA", "studyB", "studyB"],
            "environment": ["soil", "soil", "lake", "lake"],
            "pH": [5.5, 6.0, None, 7.2],
            "sample": ["a", "b", "c", "d"],
            "extra": [1, 2, 3, 4],
        }
    ).to_csv(meta, index=False)
    out = tmp_path / "out"
    rc = data_cli.main(
        ["build", "--fasta-dir", str(fasta), "--metadata", str(meta), "--output-dir", str(out), "--max-dna", "250"]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "wrote 3 samples" in printed
    assert "1 sample(s) in the metadata without reads: studyB/SRR4" in printed
    assert "1 FASTA file(s) without metadata: studyB/ORPHAN" in printed
    shards = sorted((out / "data").glob("*.parquet"))
    assert [p.name for p in shards] == ["train-00000-of-00001.parquet"]
    raw = pd.read_parquet(shards[0])
    assert list(raw.columns) == list(sources.SCHEMA)
    srr1 = raw.set_index("sample_id").loc["SRR1"]
    assert list(srr1["sequences"]) == ["ACGT" * 30, "GGCC" * 30]  # whole reads until the 250-base cap
    assert srr1["total_DNA_length"] == 240 and srr1["num_sequences"] == 2
    # Reading it back: SRR3 has no pH and is dropped; lower-case/N reads pass validation.
    loaded = sources.load_samples(str(out))
    assert sorted(loaded["sample_id"]) == ["SRR1", "SRR2"]
    assert loaded.set_index("sample_id").loc["SRR2", "sequences"] == ["acgtn" * 20, "CA" * 40]


def test_builder_errors_and_help(tmp_path, capsys) -> None:
    meta = tmp_path / "m.csv"
    pd.DataFrame({"sample_id": ["a"], "study_name": ["s"]}).to_csv(meta, index=False)
    (tmp_path / "f").mkdir()
    assert (
        data_cli.main(
            ["build", "--fasta-dir", str(tmp_path / "f"), "--metadata", str(meta), "--output-dir", str(tmp_path / "o")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "m.csv" in err and "environment" in err and "pH" in err
    pd.DataFrame(
        {"sample_id": ["a", "b"], "study_name": ["s", "s"], "environment": ["soil"] * 2, "pH": ["5.5", "high"]}
    ).to_csv(meta, index=False)
    with pytest.raises(DatasetError, match=r"m\.csv: sample_id 'b': field 'pH' is not a number"):
        fasta.build_dataset(tmp_path / "f", meta, tmp_path / "o")
    with pytest.raises(SystemExit) as exit_:
        data_cli.main(["--help"])
    assert exit_.value.code == 0
    assert "build" in capsys.readouterr().out

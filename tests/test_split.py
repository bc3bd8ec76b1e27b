"""The split by study: whole studies held out, stratified by environment, seeded; its split.json; every user."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tune_ph.commands import data as data_cli
from tune_ph.config import TrainConfig
from tune_ph.data import sources
from tune_ph.data.split import SplitRecord, min_studies, split_for, split_samples
from tune_ph.errors import ConfigError, DatasetError
from tune_ph.training.checkpoints import checkpoint_split


def _studies(n_studies: int, per_study: int = 10, envs: tuple[str, ...] = ("soil", "lake", "marine")) -> pd.DataFrame:
    """n_studies studies of per_study samples; study i is mostly environment envs[i % len(envs)] (one sample of
    the next environment each, as in realistic16s), with a study-level pH offset."""
    rng = np.random.default_rng(n_studies)
    rows = []
    for s in range(n_studies):
        for j in range(per_study):
            env = envs[(s + (j == 0)) % len(envs)]
            rows.append(
                {
                    "sample_id": f"S{s:02d}_{j:02d}",
                    "study_name": f"STUDY{s:02d}",
                    "pH": round(float(rng.normal(6 + s % 3, 0.5)), 2),
                    "sequences": ["ACGTACGTAC"],
                    "environment": env,
                }
            )
    return pd.DataFrame(rows)


def _study_of(df: pd.DataFrame) -> dict[str, str]:
    return dict(zip(df["sample_id"], df["study_name"]))


def test_study_split_holds_out_whole_studies_in_proportion() -> None:
    df = _studies(42)
    split = split_samples(df, by="study")
    study = _study_of(df)
    parts = {name: {study[s] for s in ids} for name, ids in split.items()}
    assert not parts["test"] & parts["train"] and not parts["test"] & parts["val"] and not parts["val"] & parts["train"]
    assert sorted(sum(split.values(), [])) == sorted(df["sample_id"])  # every sample in exactly one part
    # One fold of 5 for test (about 20 %), then one of 8 of the rest for val (about 10 % of all).
    sizes = {name: len(ids) / len(df) for name, ids in split.items()}
    assert 0.15 <= sizes["test"] <= 0.25 and 0.05 <= sizes["val"] <= 0.15, sizes
    # Stratified by environment as far as whole studies allow: each environment's share of test is within
    # a study's worth of its share overall.
    env = dict(zip(df["sample_id"], df["environment"]))
    overall, test = Counter(df["environment"]), Counter(env[s] for s in split["test"])
    for e, n in overall.items():
        assert abs(test[e] / len(split["test"]) - n / len(df)) <= 0.1, (e, test, overall)


def test_study_split_is_seeded_and_order_free() -> None:
    df = _studies(20)
    a = split_samples(df, by="study", seed=3)
    assert split_samples(df.sample(frac=1, random_state=1), by="study", seed=3) == a
    assert split_samples(df, by="study", seed=4)["test"] != a["test"]
    assert split_samples(df, by="study", val_fraction=0.0, seed=3)["val"] == []
    # The split by sample is the published one, unchanged by the new option's existence.
    assert split_samples(df, by="none") == split_samples(df)


def test_too_few_studies_is_a_clear_error() -> None:
    assert min_studies(0.2, 0.1) == 10 and min_studies(0.2, 0.0) == 5
    with pytest.raises(DatasetError, match=r"split_by study .* needs at least 10 studies .* the data has 6; use "):
        split_samples(_studies(6), by="study")
    with pytest.raises(ValueError, match="unknown split_by 'genus'"):
        split_samples(_studies(12), by="genus")
    with pytest.raises(ConfigError, match="unknown split_by 'genus'; allowed: none, study"):
        TrainConfig(split_by="genus")


def test_split_record_says_how_it_was_drawn_and_reads_old_files() -> None:
    df = _studies(12)
    cfg = TrainConfig(split_by="study", split_seed=5)
    split = split_for(df, cfg)
    record = SplitRecord.of(split, cfg, _study_of(df))
    saved = json.loads(json.dumps(record.to_dict()))
    assert saved["split_by"] == "study" and saved["split_seed"] == 5 and saved["test_fraction"] == 0.2
    assert set(saved["studies"]["test"]).isdisjoint(saved["studies"]["train"] + saved["studies"]["val"])
    assert SplitRecord.from_dict(saved) == record and record.ids() == split
    old = SplitRecord.from_dict({"train": ["a"], "val": [], "test": ["b"]})  # before split_by existed
    assert old.split_by == "none" and old.ids() == {"train": ["a"], "val": [], "test": ["b"]}
    with pytest.raises(TypeError):
        SplitRecord.from_dict(["a"])


def test_checkpoint_without_split_json_recomputes_its_split_by_study(tmp_path) -> None:
    df = _studies(12)
    state = SimpleNamespace(train_config=TrainConfig(dataset="x", split_by="study"), dataset_fingerprint=None)
    recomputed = checkpoint_split(tmp_path / "best_model.pt", state, df)
    assert recomputed == split_samples(df, by="study") != split_samples(df)
    # A run's own split.json wins (old ids-only files too).
    (tmp_path / "split.json").write_text(json.dumps({"train": ["S00_01"], "val": [], "test": ["S00_02"]}))
    assert checkpoint_split(tmp_path / "best_model.pt", state, df)["test"] == ["S00_02"]


def test_prepare_splits_by_study_and_caches_it_apart(tmp_path) -> None:
    df = _studies(12)
    df.to_parquet(tmp_path / "s.parquet")
    common = {"max_length": 16, "max_sets": 1, "cache_dir": tmp_path / "cache"}
    by_sample = sources.prepare(str(tmp_path / "s.parquet"), **common)
    by_study = sources.prepare(str(tmp_path / "s.parquet"), split_by="study", **common)
    study = _study_of(df)
    held = {study[s] for s in by_study.split_dict()["test"]}
    assert held.isdisjoint(study[s] for s in by_study.split_dict()["train"])
    assert by_study.split_dict() != by_sample.split_dict()
    # The token cache is keyed by the split's sample ids: two entries, neither read for the other.
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_data_summary_prints_the_study_split(tmp_path, capsys) -> None:
    df = _studies(12)
    df.to_parquet(tmp_path / "s.parquet")
    assert data_cli.main(["summary", str(tmp_path / "s.parquet"), "--split-by", "study"]) == 0
    sizes = ", ".join(f"{name} {len(ids)}" for name, ids in split_samples(df, by="study").items())
    assert f"split: {sizes}\n" in capsys.readouterr().out

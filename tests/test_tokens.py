"""Read-set packing, token arrays, batches and the on-disk token cache."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pandas as pd
import pytest

from hyena_dna import tokenizer
from tune_ph.data import read_sets, token_cache, tokens
from tune_ph.data.read_sets import pack_sets
from tune_ph.data.tokens import TokenizedDataset, build


def _df(reads_per_sample: dict[str, list[str]], ph: dict[str, float] | None = None) -> pd.DataFrame:
    ids = list(reads_per_sample)
    return pd.DataFrame(
        {
            "sample_id": ids,
            "study_name": ["S"] * len(ids),
            "pH": [(ph or {}).get(s, 5.0 + k) for k, s in enumerate(ids)],
            "sequences": [reads_per_sample[s] for s in ids],
            "environment": ["soil"] * len(ids),
        }
    )


def _random_reads(rng: np.random.Generator, n: int, low: int, high: int) -> list[str]:
    return ["".join(rng.choice(list("ACGT"), size=int(rng.integers(low, high)))) for _ in range(n)]


def test_pack_sets_greedy_whole_reads_with_one_sep() -> None:
    # 3 + SEP + 3 = 7 fits; the third read starts a new set.
    assert pack_sets([3, 3, 3], max_length=7, max_sets=5) == [[0, 1], [2]]
    assert pack_sets([3, 3, 3], max_length=6, max_sets=5) == [[0], [1], [2]]
    assert pack_sets([2, 2, 2, 2, 2, 2], max_length=5, max_sets=2) == [[0, 1], [2, 3]]
    # A long read forms a set of its own; neighbours are not merged across it.
    assert pack_sets([2, 10, 2, 2], max_length=5, max_sets=5) == [[0], [1], [2, 3]]
    assert pack_sets([], max_length=5, max_sets=5) == []
    assert pack_sets([0, 4], max_length=5, max_sets=5) == [[1]]


def test_encode_set_truncates_a_long_read_keeping_its_end() -> None:
    ids = read_sets.encode_set(["AAAACCGT"], max_length=4)
    assert tokenizer.decode(ids) == "CCGT"
    ids = read_sets.encode_set(["AC", "GT"], max_length=10)
    assert tokenizer.decode(ids) == "AC[SEP]GT"


def test_sets_are_whole_nonoverlapping_reads_in_order(tmp_path) -> None:
    rng = np.random.default_rng(1)
    reads = {f"s{i}": _random_reads(rng, 25, 20, 60) for i in range(4)}
    reads["s_long"] = ["A" * 10 + "C" * 150, "GGTT"]
    df = _df(reads)
    ds = build(df, {"train": list(reads)}, max_length=128, max_sets=3, use_cache=False)
    assert ds.ids.dtype == np.uint8 and ds.offsets.dtype == np.int64 and ds.set_sample.dtype == np.int32
    assert ds.offsets[0] == 0 and ds.offsets[-1] == len(ds.ids)
    for k, sid in enumerate(ds.sample_ids):
        sets = np.flatnonzero(ds.set_sample == k)
        assert 1 <= len(sets) <= 3
        pieces = []
        for s in sets:
            ids = ds.set_tokens(int(s))
            assert 0 < len(ids) <= 128
            assert ids[0] != tokenizer.SEP_ID and ids[-1] != tokenizer.SEP_ID
            pieces += tokenizer.decode(ids).split("[SEP]")
        original = reads[str(sid)]
        if sid == "s_long":
            # The 160-base read is cut to its last 128 bases and sits alone; the next read follows.
            assert pieces == [original[0][-128:], "GGTT"]
        else:
            # Whole reads, each used once, in read order: a prefix of the sample's reads.
            assert pieces == original[: len(pieces)]
            assert len(pieces) < len(original)  # 3 sets of 128 cannot hold 25 reads of 20-60 bases
    assert list(ds.set_ranks()[:4]) == [0, 1, 2, 0]


def test_sample_without_reads_yields_no_sets(caplog) -> None:
    df = _df({"a": ["ACGT"], "b": [], "c": ["", "GG"]})
    with caplog.at_level(logging.WARNING):
        ds = build(df, {"train": ["a", "b", "c"]}, max_length=16, use_cache=False)
    assert list(ds.sample_ids) == ["a", "c"]
    assert "no reads" in caplog.text and "b" in caplog.text


def test_batches_left_pad_to_fixed_max_length() -> None:
    df = _df({"a": ["ACG"], "b": ["TT", "GA"], "c": ["C"]}, ph={"a": 4.5, "b": 7.25, "c": 9.0})
    ds = build(df, {"train": ["a", "b"], "test": ["c"]}, max_length=12, use_cache=False)
    batches = list(ds.batches("train", batch_size=4))
    assert len(batches) == 1 == ds.num_batches("train", 4)
    b = batches[0]
    assert b.input_ids.shape == (2, 12) and b.mask.shape == (2, 12)  # the run's max_length, not the batch max
    assert str(b.input_ids.dtype) == "torch.int64" and str(b.mask.dtype) == "torch.bool"
    assert tokenizer.decode(b.input_ids[0][b.mask[0]].numpy()) == "ACG"
    assert tokenizer.decode(b.input_ids[1][b.mask[1]].numpy()) == "TT[SEP]GA"
    assert (b.input_ids[0, :9] == tokenizer.PAD_ID).all() and not b.mask[0, :9].any() and b.mask[0, 9:].all()
    assert b.ph.tolist() == [4.5, 7.25]
    assert b.sample_index.tolist() == [0, 1] and b.set_index.tolist() == [0, 1]
    assert [x.sample_index.tolist() for x in ds.batches("test", 1)] == [[2]]


def test_batches_shuffle_is_deterministic_and_complete() -> None:
    rng = np.random.default_rng(0)
    df = _df({f"s{i}": _random_reads(rng, 12, 5, 15) for i in range(10)})
    ds = build(df, {"train": list(df.sample_id)}, max_length=32, max_sets=3, use_cache=False)

    def order(seed: int) -> list[int]:
        return [i for b in ds.batches("train", 4, shuffle=True, seed=seed) for i in b.set_index.tolist()]

    assert order(3) == order(3)
    assert order(3) != order(4)
    assert sorted(order(3)) == ds.set_indices("train").tolist() == list(range(len(ds)))
    assert ds.num_batches("train", 4) == len(list(ds.batches("train", 4))) == -(-len(ds) // 4)
    with pytest.raises(ValueError, match="unknown split"):
        ds.set_indices("validation")


def test_split_dict_and_pickle_round_trip() -> None:
    df = _df({"a": ["AC"], "b": ["GT"], "c": ["TT"], "d": ["CC"]})
    split = {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    ds = build(df, split, max_length=8, use_cache=False)
    assert ds.split_dict() == split
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(clone.ids, ds.ids) and clone.split_dict() == split
    assert "4 samples" in repr(ds)


def test_cache_hit_skips_tokenization(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(2)
    df = _df({f"s{i}": _random_reads(rng, 8, 10, 30) for i in range(6)})
    split = {"train": ["s0", "s1", "s2", "s3"], "val": ["s4"], "test": ["s5"]}
    first = build(df, split, max_length=64, max_sets=2, cache_dir=tmp_path)
    assert [p.suffix for p in tmp_path.iterdir()] == [".npz"]  # no temp files left behind

    def boom(*args, **kwargs):
        raise AssertionError("tokenize called despite a cache hit")

    monkeypatch.setattr(tokens, "tokenize", boom)
    second = build(df, split, max_length=64, max_sets=2, cache_dir=tmp_path)
    for name in ("ids", "offsets", "set_sample", "sample_ids", "environment", "ph", "split"):
        assert np.array_equal(getattr(first, name), getattr(second, name)), name
    assert second.fingerprint == first.fingerprint and second.max_length == 64 and second.max_sets == 2
    assert second.split_dict() == split
    # Any change of content, max_length, max_sets or split is a different cache entry.
    for kwargs in ({"max_length": 65, "max_sets": 2}, {"max_length": 64, "max_sets": 3}):
        with pytest.raises(AssertionError, match="tokenize called"):
            build(df, split, cache_dir=tmp_path, **kwargs)
    with pytest.raises(AssertionError, match="tokenize called"):
        build(
            df,
            {"train": ["s0", "s1", "s2", "s4"], "val": ["s3"], "test": ["s5"]},
            max_length=64,
            max_sets=2,
            cache_dir=tmp_path,
        )
    changed = df.copy()
    changed.loc[0, "pH"] = 3.0
    with pytest.raises(AssertionError, match="tokenize called"):
        build(changed, split, max_length=64, max_sets=2, cache_dir=tmp_path)


def test_damaged_cache_is_rebuilt(tmp_path, caplog) -> None:
    df = _df({"a": ["ACGT"], "b": ["GGCC"]})
    split = {"train": ["a"], "test": ["b"]}
    build(df, split, max_length=8, cache_dir=tmp_path)
    (path,) = tmp_path.iterdir()
    path.write_bytes(b"not a zip file")
    with caplog.at_level(logging.WARNING):
        ds = build(df, split, max_length=8, cache_dir=tmp_path)
    assert "unreadable token cache" in caplog.text
    assert ds.split_dict()["test"] == ["b"]
    assert TokenizedDataset.load(path).split_dict() == ds.split_dict()  # rewritten whole


def test_cache_dir_from_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TUNE_PH_CACHE", str(tmp_path / "c"))
    assert token_cache.default_cache_dir() == tmp_path / "c"
    build(_df({"a": ["ACGT"]}), {"train": ["a"]}, max_length=8)
    assert len(list((tmp_path / "c").glob("*.npz"))) == 1


def test_tokenizing_shows_ten_progress_lines_not_a_bar_when_the_console_is_not_a_terminal(capsys) -> None:
    # Under pytest stderr is not a terminal, as when a user sends the console to a log file: a tqdm bar there is one
    # carriage-return smear, so a big dataset gets a line every tenth instead.
    n = tokens._PROGRESS_MIN_SAMPLES
    reads = {f"s{i}": ["ACGT" * 5] for i in range(n)}
    build(_df(reads), {"train": list(reads)}, max_length=32, use_cache=False)
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 10 and "\r" not in captured.err, (lines, captured.err[-200:])
    assert lines[0].startswith(f"tokenizing: 10% ({n // 10} of {n} samples), ")
    assert lines[-1].startswith(f"tokenizing: 100% ({n} of {n} samples)") and " samples/s, " in lines[-1]
    small = {f"s{i}": ["ACGT"] for i in range(5)}
    build(_df(small), {"train": list(small)}, max_length=32, use_cache=False)
    assert capsys.readouterr().out == ""  # small datasets tokenize in a blink: no lines

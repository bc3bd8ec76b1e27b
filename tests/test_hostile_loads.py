"""Hostile files, round two: memory bombs, resume of folders not made here, hangs, poisoned caches, paths out of
an experiment, unfinished pretraining, raw tracebacks, and the dashboard's Host header.

Every bomb is built small and fast (a zip whose directory declares a size the file never holds, or gzip members
repeated) and is refused before anything is allocated: a subprocess loads them all and its peak RSS stays far
below what they declare.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from helpers import ROOT, TINY, TINY_MODEL, motif_dataset, tiny_space, tiny_state, write_space

from hyena_dna import HyenaDNAConfig, HyenaDNAModel, memory
from tune_ph import cli, files, secret
from tune_ph.commands import evaluate as evaluate_cli
from tune_ph.commands import export as export_cli
from tune_ph.commands import monitor as monitor_cli
from tune_ph.commands import predict as predict_cli
from tune_ph.commands import pretrain as pretrain_cli
from tune_ph.commands import search as search_cli
from tune_ph.commands import train as train_cli
from tune_ph.config import TrainConfig
from tune_ph.data import fasta, fasta_samples, sources, tokens
from tune_ph.data.split import split_samples
from tune_ph.errors import InputError
from tune_ph.model.regressor import build_model, load_checkpoint
from tune_ph.report import monitor, results
from tune_ph.search import origin
from tune_ph.training import pretrain, pretrain_state
from tune_ph.training.pretrain_config import PretrainConfig

DECLARED = 2**31  # what every bomb here declares: 2 GiB
PEAK_LIMIT = 1 << 30  # the interpreter, torch and tune_ph take a few hundred MiB; a bomb read would take 2 GiB

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ building bombs


def declare_size(path: Path, entry: str, size: int) -> None:
    """Patch a zip's directory (central and local header) so that `entry` declares `size` uncompressed bytes."""
    blob = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(entry)
        start = zf.start_dir
    struct.pack_into("<I", blob, info.header_offset + 22, size)
    pos = start
    while blob[pos : pos + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", blob, pos + 28)
        if blob[pos + 46 : pos + 46 + name_len].decode() == entry:
            struct.pack_into("<I", blob, pos + 24, size)
        pos += 46 + name_len + extra_len + comment_len
    path.write_bytes(bytes(blob))


def deflate_bomb(path: Path, member: str) -> Path:
    """Rewrite a zip (torch.save, np.savez) with `member` deflated and declaring DECLARED bytes."""
    with zipfile.ZipFile(path) as src:
        entries = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w") as dst:
        for info, data in entries:
            info.compress_type = zipfile.ZIP_DEFLATED if info.filename.endswith(member) else zipfile.ZIP_STORED
            dst.writestr(info, data)
    name = next(info.filename for info, _ in entries if info.filename.endswith(member))
    declare_size(path, name, DECLARED)
    return path


class _StorageRef:
    """Pickled as the persistent id torch.save writes for a float32 storage of `numel` elements."""

    def __init__(self, numel: int) -> None:
        self.numel = numel


class _TensorOf:
    def __init__(self, ref: _StorageRef) -> None:
        self.ref = ref

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (self.ref, 0, (1,), (1,), False, OrderedDict())


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", obj.numel) if isinstance(obj, _StorageRef) else None


def declared_bomb(path: Path, settings: dict) -> Path:
    """A state whose one storage consistently declares DECLARED bytes (pickle and zip agree), over 16 real bytes:
    only a cap from the model the state declares can refuse it."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump({**settings, "model": {"w": _TensorOf(_StorageRef(DECLARED // 4))}})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/data/0", bytes(16))
    declare_size(path, "archive/data/0", DECLARED)
    return path


def tiny_checkpoint(path: Path, **overrides) -> Path:
    """A best_model.pt as train writes it (untrained tiny model): load_checkpoint and predict accept it."""
    files.save_torch(path, {**tiny_state(), **overrides})
    return path


def settings_of(path: Path) -> dict:
    """The settings (everything but the weights) of a saved state."""
    return {k: v for k, v in torch.load(path, weights_only=True).items() if k != "model"}


def fake_experiment(folder: Path, checkpoints: dict[str, tuple[str, float]]) -> Path:
    """An experiment folder as Ray leaves it: trial_<id>/result.json naming checkpoint folders (no state.pt yet)."""
    folder.mkdir(parents=True, exist_ok=True)
    results.save_settings(folder, tiny_space())
    for trial_id, (name, val_loss) in checkpoints.items():
        trial = folder / f"trial_{trial_id}"
        trial.mkdir()
        (trial / "params.json").write_text(json.dumps({"head": "linear"}))
        row = {"epoch": 1, "training_iteration": 1, "val_loss": val_loss, "checkpoint_dir_name": name}
        (trial / "result.json").write_text(json.dumps(row) + "\n")
    return folder


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------------------ memory bombs


@pytest.mark.parametrize("kind", ["deflated", "declared"])
def test_checkpoint_bombs_are_refused_by_predict_and_evaluate(kind, tmp_path, capsys):
    good = tiny_checkpoint(tmp_path / "good.pt")
    bomb = tmp_path / "best_model.pt"
    if kind == "deflated":  # refused from the zip directory: the entry would expand 2 GiB from a few KiB
        shutil.copy(good, bomb)
        deflate_bomb(bomb, "data/0")
    else:  # consistent sizes: refused because a model of its config cannot hold 2 GiB
        declared_bomb(bomb, settings_of(good))
    assert bomb.stat().st_size < 1 << 20
    argv = ["--checkpoint", str(bomb), "--dataset", "demo", "--output", str(tmp_path / "p.csv")]
    assert predict_cli.main(argv) == cli.EXIT_BAD_INPUT
    err = one_line_error(capsys)
    assert str(bomb) in err and ("expands from" in err if kind == "deflated" else "more than the" in err), err
    assert evaluate_cli.main(["--checkpoint", str(bomb), "--output-dir", str(tmp_path / "ev")]) == cli.EXIT_BAD_INPUT
    assert str(bomb) in one_line_error(capsys)
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "ev").exists()


def test_export_refuses_a_bomb_and_leaves_no_partial_folder(tmp_path, capsys):
    folder = fake_experiment(tmp_path / "exp", {"a1": ("checkpoint_000000", 0.5)})
    state = folder / "trial_a1" / "checkpoint_000000" / files.TRIAL_STATE_FILE
    state.parent.mkdir()
    declared_bomb(state, settings_of(tiny_checkpoint(tmp_path / "good.pt")))
    assert export_cli.main([str(folder), "--no-report", "--device", "cpu"]) == cli.EXIT_BAD_INPUT
    err = one_line_error(capsys)
    assert files.MODEL_FILE in err and "more than the" in err, err
    assert not (folder / files.BEST_DIR).exists() and not (folder / f".{files.BEST_DIR}.new").exists()


def test_pretrain_resume_refuses_a_bomb(tmp_path, capsys):
    out = tmp_path / "pre"
    out.mkdir()
    cfg = PretrainConfig(output_dir=str(out), from_scratch=True, model_config=dict(TINY_MODEL), device="cpu")
    files.write_json(out / pretrain.CONFIG_FILE, {"pretrain_config": cfg.to_dict()})
    good = tiny_checkpoint(tmp_path / "good.pt")
    declared_bomb(out / pretrain_state.STATE_FILE, {"model_config": settings_of(good)["model_config"]})
    assert pretrain_cli.main(["--output-dir", str(out), "--resume", "--no-progress"]) == cli.EXIT_BAD_INPUT
    err = one_line_error(capsys)
    assert str(out / pretrain_state.STATE_FILE) in err and "more than the" in err, err


@pytest.mark.parametrize(
    ("change", "field"),
    [({"d_model": 8192, "d_inner": 32768}, "d_model"), ({"layer": {"l_max": 2_000_000_000}}, "l_max")],
)
def test_a_checkpoint_declaring_a_huge_model_is_refused_before_it_is_built(change, field, tmp_path, capsys):
    good = tiny_checkpoint(tmp_path / "good.pt")
    config = settings_of(good)["model_config"]
    for key, value in change.items():
        if isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    bad = tiny_checkpoint(tmp_path / "best_model.pt", model_config=config)
    with pytest.raises(InputError, match=rf"best_model.pt.*'{field}' must be an integer from"):
        load_checkpoint(bad)


def test_a_model_beyond_available_memory_is_refused_naming_the_file(tmp_path, monkeypatch):
    bad = tiny_checkpoint(tmp_path / "best_model.pt")
    monkeypatch.setattr(memory, "available_memory", lambda: 1 << 20)
    with pytest.raises(InputError, match=r"best_model.pt.*declares a model of .* only 1 MiB of memory"):
        load_checkpoint(bad)


def test_model_config_flag_with_a_huge_model_is_refused_at_once(tmp_path, capsys):
    huge = json.dumps({**TINY_MODEL, "d_model": 8192, "d_inner": 32768})
    out = tmp_path / "pre"
    argv = ["--output-dir", str(out), "--from-scratch", "--model-config", huge, "--no-progress", "--dataset", "demo"]
    assert pretrain_cli.main(argv) == cli.EXIT_BAD_INPUT
    assert "'d_model'" in one_line_error(capsys)
    assert not out.exists()


def _token_cache_entry(tmp_path: Path) -> tuple[pd.DataFrame, dict, Path]:
    df = sources.load_samples("demo")
    df = sources.clean_samples(df).head(24).reset_index(drop=True)
    split = split_samples(df)
    cache = tmp_path / "cache"
    tokens.build(df, split, max_length=64, max_sets=2, cache_dir=cache)
    (entry,) = cache.glob("*.npz")
    return df, split, entry


def test_a_token_cache_bomb_is_rebuilt(tmp_path, caplog):
    df, split, entry = _token_cache_entry(tmp_path)
    fresh = tokens.build(df, split, max_length=64, max_sets=2, use_cache=False)
    deflate_bomb(entry, "ids.npy")
    with caplog.at_level(logging.WARNING, logger="tune_ph.data.tokens"):
        again = tokens.build(df, split, max_length=64, max_sets=2, cache_dir=entry.parent)
    assert "ignoring unreadable token cache" in caplog.text and "expands" in caplog.text
    for name in ("ids", "offsets", "ph", "split", "sample_ids"):
        np.testing.assert_array_equal(getattr(again, name), getattr(fresh, name))


def _poison_labels(ds: tokens.TokenizedDataset) -> str:
    ds.ph = (ds.ph + 1.5).astype(np.float32)
    return "pH"


def _poison_split(ds: tokens.TokenizedDataset) -> str:
    ds.split = np.where(ds.split == "test", "train", ds.split)
    return "split"


def _poison_tokens(ds: tokens.TokenizedDataset) -> str:
    ds.ids = np.full_like(ds.ids, 7)  # every token [A]: a random spot check of any sample sees it
    return "tokens"


@pytest.mark.parametrize("poison", [_poison_labels, _poison_split, _poison_tokens], ids=["labels", "split", "tokens"])
def test_a_poisoned_token_cache_with_a_valid_hash_is_rebuilt(poison, tmp_path, caplog):
    df, split, entry = _token_cache_entry(tmp_path)
    poisoned = tokens.TokenizedDataset.load(entry)
    what = poison(poisoned)
    poisoned.save(entry)  # the attacker recomputes the content hash: it matches
    assert tokens.TokenizedDataset.load(entry).ph.tolist() == poisoned.ph.tolist()
    with caplog.at_level(logging.WARNING, logger="tune_ph.data.tokens"):
        again = tokens.build(df, split, max_length=64, max_sets=2, cache_dir=entry.parent)
    assert "ignoring unreadable token cache" in caplog.text and what in caplog.text, caplog.text
    fresh = tokens.build(df, split, max_length=64, max_sets=2, use_cache=False)
    for name in ("ids", "ph", "split"):
        np.testing.assert_array_equal(getattr(again, name), getattr(fresh, name))


def test_evaluate_after_a_poisoned_cache_gives_the_true_r2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TUNE_PH_CACHE", str(tmp_path / "cache"))
    checkpoint = tiny_checkpoint(tmp_path / "best_model.pt")
    assert evaluate_cli.main(["--checkpoint", str(checkpoint), "--output-dir", str(tmp_path / "clean")]) == 0
    (entry,) = (tmp_path / "cache").glob("*.npz")
    poisoned = tokens.TokenizedDataset.load(entry)
    poisoned.ph = np.full_like(poisoned.ph, 7.0)  # every label changed, the hash recomputed
    poisoned.save(entry)
    assert evaluate_cli.main(["--checkpoint", str(checkpoint), "--output-dir", str(tmp_path / "again")]) == 0
    clean, again = (json.loads((tmp_path / d / files.METRICS_FILE).read_text()) for d in ("clean", "again"))
    assert again["test_r2"] == clean["test_r2"] and again["test_rmse"] == clean["test_rmse"]
    assert tokens.TokenizedDataset.load(entry).ph.tolist() != poisoned.ph.tolist()  # rewritten with the truth


def test_a_changed_token_cache_entry_fails_its_hash(tmp_path, caplog):
    df, split, entry = _token_cache_entry(tmp_path)
    arrays = dict(np.load(entry))
    arrays["ph"] = arrays["ph"] + 1  # changed by hand, the stored hash left as it was
    np.savez(entry, **arrays)
    with pytest.raises(ValueError, match="does not match its hash"):
        tokens.TokenizedDataset.load(entry)


def test_a_cache_entry_hashed_without_this_users_key_is_recomputed(tmp_path, monkeypatch, caplog):
    """Anyone who can write the cache can compute a plain hash; only this user's key makes a MAC that passes."""
    df, split, entry = _token_cache_entry(tmp_path)
    poisoned = tokens.TokenizedDataset.load(entry)
    poisoned.ph = (poisoned.ph + 1.5).astype(np.float32)
    monkeypatch.setattr(secret, "key", lambda: b"k" * secret.KEY_BYTES)  # the writer's key is not ours
    poisoned.save(entry)
    monkeypatch.undo()
    monkeypatch.setenv("TUNE_PH_CACHE", os.environ["TUNE_PH_CACHE"])
    with pytest.raises(ValueError, match="does not match its hash"):
        tokens.TokenizedDataset.load(entry)
    with caplog.at_level(logging.WARNING, logger="tune_ph.data.tokens"):
        again = tokens.build(df, split, max_length=64, max_sets=2, cache_dir=entry.parent)
    assert "ignoring unreadable token cache" in caplog.text
    np.testing.assert_array_equal(again.ph, tokens.build(df, split, max_length=64, max_sets=2, use_cache=False).ph)


def _baseline_entry(tmp_path: Path) -> tuple[Path, dict]:
    from tune_ph.baseline import members

    table = pd.DataFrame(
        {"sample_id": ["a", "b", "c"], "study_name": "s", "true_ph": [5.0, 6.0, 7.0], "environment": "soil"}
    )
    table["predicted_ph_mean"] = [5.5, 6.0, 6.5]
    table["residual_mean"] = table["true_ph"] - table["predicted_ph_mean"]
    from tune_ph.metrics import regression_metrics

    metrics = {
        "name": "ridge",
        **regression_metrics(table["true_ph"].to_numpy(), table["predicted_ph_mean"], split="test"),
    }
    path = tmp_path / "entry.json"
    members.store(members.Baseline("ridge", metrics, table[list(members.PREDICTION_COLUMNS)]), path)
    return path, json.loads(path.read_text())


@pytest.mark.parametrize("forgery", ["plain hash", "metrics not of its predictions"])
def test_a_forged_baseline_cache_entry_is_recomputed_with_a_warning(forgery, tmp_path, monkeypatch, caplog):
    from tune_ph.baseline import members

    path, entry = _baseline_entry(tmp_path)
    assert members.load_cached(path, "ridge").metrics["test_r2"] == entry["metrics"]["test_r2"]
    entry["metrics"]["test_r2"] = 0.99  # a better score than its predictions earn
    if forgery == "plain hash":  # the unkeyed hash of earlier versions, which anyone can recompute
        payload = json.dumps({k: entry[k] for k in ("metrics", "test_predictions")}, sort_keys=True).encode()
        entry[members.HASH_KEY] = hashlib.blake2b(payload, key=path.name.encode(), digest_size=16).hexdigest()
    else:  # even a MAC of this user's key (a bug, a stale format) cannot make metrics disagree with predictions
        entry[members.HASH_KEY] = members._entry_hash(entry, path)
    path.write_text(json.dumps(entry))
    with caplog.at_level(logging.WARNING):
        assert members.load_cached(path, "ridge") is None
    expected = "does not match its hash" if forgery == "plain hash" else "its test_r2 (0.99) is not that of"
    assert "recomputing it" in caplog.text and expected in caplog.text, caplog.text


def _gzip_members(*parts: tuple[bytes, int]) -> bytes:
    """A multi-member gzip: each (data, repeat) compressed once and repeated; fast to build whatever it expands to."""
    return b"".join(gzip.compress(data, compresslevel=9) * repeat for data, repeat in parts)


LINE_BOMB = ((b">huge\n", 1), (b"A" * (16 << 20), 64))  # one 1 GiB line
HEADER_BOMB = ((b">", 1), (b"x" * (16 << 20), 16), (b"\nACGT\n>r2\nGG\n", 1))  # a 256 MiB header


def test_fasta_bombs_are_streamed_with_the_cap_applied_while_reading(tmp_path):
    (tmp_path / "line.fasta.gz").write_bytes(_gzip_members(*LINE_BOMB))
    (tmp_path / "header.fasta.gz").write_bytes(_gzip_members(*HEADER_BOMB))
    assert fasta.read_fasta(tmp_path / "line.fasta.gz", max_dna=1000) == ["A" * 1000]
    assert fasta.read_fasta(tmp_path / "header.fasta.gz", max_dna=1000) == ["ACGT", "GG"]


# Every bomb above, loaded in one fresh interpreter: its peak memory shows that none was read.
PEAK_SCRIPT = """
import json, sys
from pathlib import Path
root = Path(sys.argv[1])
out = {}
from tune_ph.model.checkpoint import load_state
from tune_ph.model.regressor import load_checkpoint
from tune_ph.data.tokens import TokenizedDataset
from tune_ph.data.fasta import read_fasta
def attempt(name, call):
    try:
        value = call()
        out[name] = "read " + str(len(value[0]) if isinstance(value, list) else type(value).__name__)
    except Exception as err:
        out[name] = "refused " + type(err).__name__ + ": " + str(err)[:200]
attempt("deflated", lambda: load_checkpoint(root / "deflated.pt"))
attempt("declared", lambda: load_checkpoint(root / "declared.pt"))
attempt("state", lambda: load_state(root / "state.pt", what="trial checkpoint"))
attempt("npz", lambda: TokenizedDataset.load(root / "tokens.npz"))
attempt("fasta_line", lambda: read_fasta(root / "line.fasta.gz", 250_000))
attempt("fasta_header", lambda: read_fasta(root / "header.fasta.gz", 250_000))
# The child's own peak (VmHWM, reset by exec); ru_maxrss would carry pytest's peak over fork + exec.
with open("/proc/self/status") as fh:
    out["vmhwm"] = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
print(json.dumps(out))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_every_bomb_is_refused_before_allocation(tmp_path):
    good = tiny_checkpoint(tmp_path / "good.pt")
    shutil.copy(good, tmp_path / "deflated.pt")
    deflate_bomb(tmp_path / "deflated.pt", "data/0")
    declared_bomb(tmp_path / "declared.pt", settings_of(good))
    declared_bomb(tmp_path / "state.pt", settings_of(good))
    _, _, entry = _token_cache_entry(tmp_path)
    shutil.copy(entry, tmp_path / "tokens.npz")
    deflate_bomb(tmp_path / "tokens.npz", "ids.npy")
    (tmp_path / "line.fasta.gz").write_bytes(_gzip_members(*LINE_BOMB))
    (tmp_path / "header.fasta.gz").write_bytes(_gzip_members(*HEADER_BOMB))
    assert sum(p.stat().st_size for p in tmp_path.glob("*.*") if p.is_file()) < 8 << 20
    done = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    for name in ("deflated", "declared", "state", "npz"):
        assert out[name].startswith("refused"), (name, out[name])
    assert out["fasta_line"] == "read 250000" and out["fasta_header"] == "read 4", out
    assert out["vmhwm"] < PEAK_LIMIT, out  # far below the 2 GiB each bomb declares


# ------------------------------------------------------------------------------------------------ FASTA hangs


@pytest.fixture
def alarm():
    """Fail a test that blocks (a FIFO opened for reading) instead of hanging the suite."""

    def expire(*_):
        raise TimeoutError("blocked: a FIFO or device was opened")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_predict_skips_a_fifo_and_a_device_link_in_a_flat_fasta_dir(tmp_path, capsys, caplog, alarm):
    reads = tmp_path / "reads"
    reads.mkdir()
    os.mkfifo(reads / "S0.fasta")  # blocks any reader until a writer comes: predict hung forever
    os.symlink("/dev/zero", reads / "S2.fasta")  # never ends
    (reads / "S1.fasta").write_text(">r\n" + "ACGT" * 20 + "\n")
    checkpoint = tiny_checkpoint(tmp_path / "best_model.pt")
    out = tmp_path / "pred.csv"
    with caplog.at_level(logging.WARNING):
        rc = predict_cli.main(["--checkpoint", str(checkpoint), "--fasta-dir", str(reads), "--output", str(out)])
    assert rc == cli.EXIT_OK, capsys.readouterr().err
    assert pd.read_csv(out)["sample_id"].tolist() == ["S1"]
    assert "S0.fasta: skipped, not a regular file" in caplog.text and "S2.fasta" in caplog.text


def test_data_build_skips_a_fifo_in_a_study_folder(tmp_path, caplog, alarm):
    study = tmp_path / "reads" / "st"
    study.mkdir(parents=True)
    os.mkfifo(study / "bad.fasta")
    (study / "ok.fasta").write_text(">r\nACGTACGT\n")
    meta = tmp_path / "meta.csv"
    pd.DataFrame({"sample_id": ["ok", "bad"], "study_name": "st", "environment": "soil", "pH": [5.0, 6.0]}).to_csv(
        meta, index=False
    )
    with caplog.at_level(logging.WARNING):
        summary = fasta.build_dataset(tmp_path / "reads", meta, tmp_path / "out")
    assert summary["samples"] == 1 and summary["without_reads"] == ["st/bad"]
    assert "bad.fasta: skipped, not a regular file" in caplog.text


def test_read_fasta_refuses_a_fifo_opened_directly(tmp_path, alarm):
    os.mkfifo(tmp_path / "x.fasta")
    with pytest.raises(fasta.NotRegularFileError, match="not a regular file"):
        fasta.read_fasta(tmp_path / "x.fasta")
    with pytest.raises(fasta.NotRegularFileError):
        fasta.read_fasta(Path("/dev/zero"))
    (tmp_path / "S1.fasta").write_text(">r\nACGT\n")
    assert fasta_samples.read_fasta_dir(tmp_path)["sample_id"].tolist() == ["S1"]


# ------------------------------------------------------------------------------------------------ resume trust


class _RunsCode:
    """A pickle that creates a file when it is unpickled: a planted tuner.pkl."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _received_experiment(parent: Path, marker: Path, recorded: dict | None) -> Path:
    folder = parent / "tiny"
    folder.mkdir(parents=True)
    (folder / results.SETTINGS_FILE).write_text(json.dumps(tiny_space()))
    (folder / "tuner.pkl").write_bytes(pickle.dumps(_RunsCode(marker)))
    if recorded is not None:
        (folder / origin.ORIGIN_FILE).write_text(json.dumps(recorded))
    return folder


def _forge_origin(folder: Path) -> None:
    """origin.json as a sender predicts it: this folder's path, host, user and uid, with a made-up MAC."""
    here = origin.Origin.here(folder)
    data = {**here.__dict__, "pickles": {}, "mac": "0" * 64}
    (folder / origin.ORIGIN_FILE).write_text(json.dumps(data))


def _planted_after_seal(folder: Path) -> None:
    """A genuine origin.json of this user, sealed; then a tuner.pkl planted (a folder sent and sent back)."""
    planted = (folder / "tuner.pkl").read_bytes()
    (folder / "tuner.pkl").unlink()
    origin.record(folder)
    (folder / "tuner.pkl").write_bytes(planted)


@pytest.mark.parametrize("recorded", ["elsewhere", "none", "damaged", "forged", "planted"])
def test_resume_refuses_a_folder_not_created_here(recorded, tmp_path, capsys):
    import ray

    marker = tmp_path / "pwned"
    elsewhere = {"path": "/home/someone/experiments/tiny", "host": "lab-7", "user": "eve", "uid": 4242}
    folder = _received_experiment(
        tmp_path / "experiments",
        marker,
        {**elsewhere, "created": "2026-01-01T00:00:00"} if recorded == "elsewhere" else None,
    )
    if recorded == "damaged":
        (folder / origin.ORIGIN_FILE).write_text("{not json")
    if recorded == "forged":
        _forge_origin(folder)
    if recorded == "planted":
        _planted_after_seal(folder)
    before = sorted(p.name for p in folder.iterdir())
    ray_before = ray.is_initialized()
    rc = search_cli.main(
        ["--name", "tiny", "--output-dir", str(tmp_path / "experiments"), "--resume", "--verbose", "0"]
    )
    err = one_line_error(capsys)
    assert rc == cli.EXIT_BAD_INPUT and str(folder) in err and "--trust-resume" in err and "can run code" in err, err
    if recorded in ("elsewhere", "forged"):
        assert f"does not carry your key's MAC ({secret.key_path()})" in err
    if recorded == "planted":
        assert "Ray's state tuner.pkl changed since your last search here sealed it" in err
    assert not marker.exists()  # the planted tuner.pkl was never unpickled
    assert sorted(p.name for p in folder.iterdir()) == before and ray.is_initialized() == ray_before


def test_origin_is_recorded_checked_and_adopted_when_trusted(tmp_path, caplog):
    folder = tmp_path / "exp"
    folder.mkdir()
    recorded = origin.record(folder)
    assert recorded.path == str(folder.resolve()) and recorded.uid == os.getuid()
    origin.check_resume(folder, trusted=False)  # created here: resumed without a flag
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    with pytest.raises(InputError, match=rf"created at {folder.resolve()} on "):
        origin.check_resume(copy, trusted=False)
    with caplog.at_level(logging.WARNING):
        origin.check_resume(copy, trusted=True)
    assert "trusted by --trust-resume" in caplog.text
    origin.check_resume(copy, trusted=False)  # adopted: it now records this place
    assert origin.read(folder) == recorded  # the original's record is untouched


def test_the_seal_vouches_for_pickles_written_here_and_only_for_them(tmp_path):
    folder = tmp_path / "exp"
    folder.mkdir()
    origin.record(folder)
    (folder / "tuner.pkl").write_bytes(b"written by this user's search")
    (folder / "experiment_state-2026.json").write_text("{}")
    with pytest.raises(InputError, match="experiment_state-2026.json, tuner.pkl changed since"):
        origin.check_resume(folder, trusted=False)
    origin.seal(folder)  # what locked_search does once Ray has written its last pickle
    origin.check_resume(folder, trusted=False)
    (folder / "experiment_state-2026.json").write_text('{"trial_data": "cloudpickled code"}')
    with pytest.raises(InputError, match="experiment_state-2026.json changed since"):
        origin.check_resume(folder, trusted=False)
    forged = tmp_path / "forged"  # a seal is never written over a folder the key does not vouch for
    forged.mkdir()
    _forge_origin(forged)
    (forged / "tuner.pkl").write_bytes(b"planted")
    origin.seal(forged)
    assert not origin.authentic(forged)


def test_the_seal_covers_ray_state_under_a_local_storage(tmp_path):
    folder, storage = tmp_path / "exp", tmp_path / "store"
    folder.mkdir()
    (storage / "exp").mkdir(parents=True)
    (storage / "exp" / "tuner.pkl").write_bytes(b"written by this user's search")
    origin.record(folder, str(storage))
    origin.check_resume(folder, trusted=False, storage=str(storage))
    (storage / "exp" / "tuner.pkl").write_bytes(b"planted")
    with pytest.raises(InputError, match="Ray's state storage:tuner.pkl changed since"):
        origin.check_resume(folder, trusted=False, storage=str(storage))


def test_the_secret_key_is_private_and_refused_when_others_can_read_it(tmp_path, monkeypatch):
    monkeypatch.setenv(secret.CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setattr(secret, "_cached", {})
    first = secret.key()
    path = secret.key_path()
    assert len(first) == secret.KEY_BYTES and path.stat().st_mode & 0o777 == 0o600
    monkeypatch.setattr(secret, "_cached", {})
    assert secret.key() == first  # created once, then read
    path.chmod(0o644)
    monkeypatch.setattr(secret, "_cached", {})
    with pytest.raises(InputError, match=r"secret.key: the secret key must be a regular file of yours.*chmod 600"):
        secret.key()


def _searcher(cls, study_file: Path):
    from tune_ph.search.tuner import FolderStudySearch

    space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    kwargs = {"space": space, "metric": "loss", "mode": "min", "study_name": "s"}
    kwargs["sampler"] = optuna.samplers.TPESampler(seed=0)
    if cls is FolderStudySearch:
        return cls(study_file=study_file, **kwargs)
    return cls(storage=optuna.storages.RDBStorage(f"sqlite:///{study_file}"), **kwargs)


def _runner(searcher) -> SimpleNamespace:
    """What bind_study reads of a restored tune.Tuner."""
    return SimpleNamespace(_local_tuner=SimpleNamespace(_tune_config=SimpleNamespace(search_alg=searcher)))


@pytest.mark.parametrize("legacy", [False, True], ids=["FolderStudySearch", "OptunaSearch of an older experiment"])
def test_a_resumed_copy_writes_only_its_own_study(legacy, tmp_path):
    from ray.tune.search.optuna import OptunaSearch

    from tune_ph.search.tuner import FolderStudySearch, bind_study

    original = tmp_path / "exp6" / "quick"
    original.mkdir(parents=True)
    searcher = _searcher(OptunaSearch if legacy else FolderStudySearch, original / results.STUDY_FILE)
    pickled = pickle.dumps(searcher)  # what tuner.pkl holds
    searcher.suggest("t1")  # a trial asked, not yet told: the search is interrupted here
    searcher.save(str(original / "searcher-state-x.pkl"))
    for name in ("cp6", "control"):
        shutil.copytree(original.parent, tmp_path / name)
    study_bytes = (original / results.STUDY_FILE).read_bytes()

    # Control: Ray's own restore, unbound, completes the trial in the ORIGINAL study (the reported bug).
    control = pickle.loads(pickled)
    control.restore(str(tmp_path / "control" / "quick" / "searcher-state-x.pkl"))
    control.on_trial_complete("t1", {"loss": 0.3})
    assert (original / results.STUDY_FILE).read_bytes() != study_bytes
    (original / results.STUDY_FILE).write_bytes(study_bytes)

    copy = tmp_path / "cp6" / "quick"
    restored = pickle.loads(pickled)
    bind_study(_runner(restored), copy)
    restored.restore(str(copy / "searcher-state-x.pkl"))
    restored.on_trial_complete("t1", {"loss": 0.3})
    assert (original / results.STUDY_FILE).read_bytes() == study_bytes  # the original is untouched
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{copy / results.STUDY_FILE}").trials
    assert [(t.state.name, t.value) for t in trials] == [("COMPLETE", 0.3)]
    assert isinstance(restored, FolderStudySearch) and restored.study_file == str(copy / results.STUDY_FILE)


# ------------------------------------------------------------------------------------------------ inside the experiment


def test_checkpoint_names_and_links_outside_the_experiment_are_never_followed(tmp_path, caplog):
    outside = tmp_path / "outside"
    outside.mkdir()
    tiny_checkpoint(outside / files.TRIAL_STATE_FILE)
    folder = fake_experiment(
        tmp_path / "exp",
        {"a1": ("../../outside", 0.1), "b2": ("checkpoint_000000", 0.2), "c3": ("checkpoint_000001", 0.9)},
    )
    os.symlink(outside, folder / "trial_b2" / "checkpoint_000000")  # a link out, under a valid name
    (folder / "trial_c3" / "checkpoint_000001").mkdir()
    tiny_checkpoint(folder / "trial_c3" / "checkpoint_000001" / files.TRIAL_STATE_FILE)
    experiment = results.Experiment(str(folder))
    with caplog.at_level(logging.WARNING):
        trial, name, _ = results.best_checkpoint(experiment)
    assert (trial.trial_id, name) == ("c3", "checkpoint_000001")  # the only checkpoint inside the experiment
    assert "'../../outside' is not a checkpoint folder name" in caplog.text
    assert "links outside the experiment" in caplog.text
    a1 = next(t for t in experiment.trials() if t.trial_id == "a1")
    with pytest.raises(InputError, match="not a checkpoint folder name"):
        experiment.copy_checkpoint(a1, "../../outside", tmp_path / "copied.pt")
    assert not (tmp_path / "copied.pt").exists()


# ------------------------------------------------------------------------------------------------ pretraining marker


def test_train_refuses_the_weights_of_a_pretraining_that_did_not_finish(tmp_path, capsys):
    out = tmp_path / "pre"
    cfg = PretrainConfig(
        output_dir=str(out), from_scratch=True, model_config=dict(TINY), device="cpu", batch_size=8, epochs=1
    )
    dataset = motif_dataset(n_samples=16, max_sets=1)
    pretrain.pretrain(cfg, dataset, progress=False)
    assert (out / files.PRETRAIN_DONE_FILE).is_file()
    train = TrainConfig(dataset="demo", model=str(out), max_length=64, device="cpu")
    assert build_model(train).backbone.config.d_model == TINY["d_model"]  # finished: used

    (out / files.PRETRAIN_DONE_FILE).rename(tmp_path / "marker")  # as if the run died (e.g. disk full) mid-way
    argv = ["--dataset", "demo", "--model", str(out), "--output-dir", str(tmp_path / "run"), "--epochs", "1"]
    assert train_cli.main(argv) == cli.EXIT_BAD_INPUT
    err = one_line_error(capsys)
    assert str(out) in err and "did not finish" in err and "--resume" in err, err
    assert not (tmp_path / "run").exists()

    pretrain.pretrain(cfg, dataset, progress=False, resume=True)  # a finished run, resumed: only marked
    assert json.loads((out / files.PRETRAIN_DONE_FILE).read_text()) == json.loads((tmp_path / "marker").read_text())
    state = torch.load(out / "weights.ckpt", weights_only=True)
    next(iter(state["state_dict"].values())).add_(1.0)
    torch.save(state, out / "weights.ckpt")  # changed after the run vouched for it
    with pytest.raises(InputError, match="weights.ckpt changed since its pretraining finished"):
        build_model(train)


# ------------------------------------------------------------------------------------------------ raw tracebacks


def test_result_json_with_non_numeric_metrics_is_read_with_a_warning(tmp_path, caplog):
    folder = fake_experiment(tmp_path / "exp", {"a1": ("checkpoint_000000", 0.5)})
    rows = [
        {"epoch": 1, "training_iteration": 1, "val_loss": "0.3", "val_r2": [1, 2]},
        {"epoch": 2, "training_iteration": 2, "val_loss": 0.4, "checkpoint_dir_name": ["x"]},
    ]
    (folder / "trial_a1" / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING):
        table = results.trials_table(results.Experiment(str(folder)).trials())
    assert table.loc[0, "best_val_loss"] == 0.4 and table.loc[0, "best_epoch"] == 2
    assert "result.json: line 1: ignored val_loss, val_r2, not a number" in caplog.text
    assert "line 2: ignored checkpoint_dir_name" in caplog.text


def test_deeply_nested_params_json_is_one_error_naming_it(tmp_path):
    folder = fake_experiment(tmp_path / "exp", {"a1": ("checkpoint_000000", 0.5)})
    (folder / "trial_a1" / "params.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(InputError, match=r"trial_a1/params.json: not valid JSON"):
        results.Experiment(str(folder)).trials()


def test_model_folder_with_a_bad_layer_field_is_one_line(tmp_path, capsys):
    folder = tmp_path / "ckpt"
    HyenaDNAModel(HyenaDNAConfig(**TINY)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["layer"] = 5
    (folder / "config.json").write_text(json.dumps(config))
    argv = ["--dataset", "demo", "--model", str(folder), "--output-dir", str(tmp_path / "run"), "--epochs", "1"]
    assert train_cli.main(argv) == cli.EXIT_BAD_INPUT
    err = one_line_error(capsys)
    assert "config.json" in err and "'layer'" in err, err


def test_monitor_on_a_garbage_study_database_is_one_line(tmp_path, capsys):
    pytest.importorskip("optuna_dashboard")
    (tmp_path / results.STUDY_FILE).write_bytes(os.urandom(4096))
    assert monitor_cli.main([str(tmp_path), "--port", "0"]) == cli.EXIT_BAD_INPUT
    err = one_line_error(capsys)
    assert results.STUDY_FILE in err and "not a readable Optuna study database" in err, err


DISK_FULL = """
import resource, signal, sys, torch
from tune_ph import files
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
try:
    files.save_torch(sys.argv[1], {"w": torch.zeros(1 << 16)})
except OSError as err:
    print("OSError:", err)
"""


def test_a_full_disk_names_the_file_being_written(tmp_path):
    target = tmp_path / "best_model.pt"
    done = subprocess.run([sys.executable, "-c", DISK_FULL, str(target)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith(f"OSError: could not write {target}") and "free on its disk" in line, line
    assert "\n" not in line and not target.exists() and not list(tmp_path.glob(".*.tmp"))


def test_a_gpu_share_below_ray_resolution_is_refused_naming_the_flag(tmp_path, capsys):
    space = write_space(tmp_path, tiny_space())
    rc = search_cli.main(["--space", str(space), "--output-dir", str(tmp_path / "x"), "--gpus-per-trial", "1e-9"])
    err = one_line_error(capsys)
    assert rc == cli.EXIT_BAD_INPUT and "resources.gpus_per_trial" in err and "0.0001" in err, err
    assert "--gpus-per-trial" in err and not (tmp_path / "x").exists()


def test_a_truncated_experiment_state_falls_back_with_a_warning(tmp_path, caplog):
    folder = fake_experiment(tmp_path / "exp", {"a1": ("checkpoint_000000", 0.5)})
    state = {"trial_data": [[json.dumps({"trial_id": "a1", "status": "TERMINATED"}), "opaque"]]}
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    newest = folder / "experiment_state-2026-01-02_00-00-00.json"
    newest.write_text(json.dumps(state)[:40])
    with caplog.at_level(logging.WARNING):
        (trial,) = results.Experiment(str(folder)).trials()
    assert trial.status == "TERMINATED"
    assert f"{newest.name}: not a readable Ray experiment state" in caplog.text


# ------------------------------------------------------------------------------------------------ dashboard Host


def _request(port: int, host: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/studies", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_dashboard_answers_only_its_own_host_names(tmp_path):
    pytest.importorskip("optuna_dashboard")
    db = tmp_path / results.STUDY_FILE
    optuna.create_study(study_name="s", storage=f"sqlite:///{db}")
    with monitor.StudyDashboard(db, 0) as dashboard:
        dashboard.start()
        port = dashboard.port
        assert _request(port, f"127.0.0.1:{port}") == 200
        assert _request(port, f"localhost:{port}") == 200
        for foreign in ("evil.example", f"evil.example:{port}", "127.0.0.1", f"127.0.0.1:{port + 1}"):
            assert _request(port, foreign) == 403, foreign


def test_the_files_the_bombs_are_made_from_load(tmp_path):
    """Guards the cases above: what each bomb is made from loads, so every refusal is the bomb's."""
    model, state = load_checkpoint(tiny_checkpoint(tmp_path / "best_model.pt"))
    assert state.target_mean == 6.0 and model.backbone.config.d_model == TINY["d_model"]
    _, _, entry = _token_cache_entry(tmp_path)
    assert tokens.TokenizedDataset.load(entry).num_samples > 0
    assert files.PRETRAIN_STATE_FILE == pretrain_state.STATE_FILE and files.PRETRAIN_CONFIG_FILE == pretrain.CONFIG_FILE


@pytest.mark.slow
def test_resuming_a_copy_leaves_the_original_untouched(ray_session, kill_dir, tmp_path, capsys):
    from helpers import KILL_ONCE

    space = tiny_space(name="quick", search__num_samples=3, scheduler__grace_period=2)
    first = tmp_path / "exp6"
    argv = ["--space", str(write_space(tmp_path, space)), "--output-dir", str(first), "--verbose", "0", "--no-export"]
    (kill_dir / KILL_ONCE).write_text("1")  # one trial dies after its first epoch: the copy has work to resume
    (kill_dir / "killed").unlink(missing_ok=True)
    try:
        assert search_cli.main([*argv, "--no-baseline"]) == cli.EXIT_OK
    finally:
        (kill_dir / KILL_ONCE).unlink()
    shutil.copytree(first, tmp_path / "cp6")  # cp -r exp6 cp6
    before = {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()}
    resume = ["--name", "quick", "--output-dir", str(tmp_path / "cp6"), "--resume", "--retry-errored", "--verbose", "0"]
    assert search_cli.main([*resume, "--no-export", "--no-baseline"]) == cli.EXIT_BAD_INPUT  # not created here
    assert "--trust-resume" in capsys.readouterr().err
    assert search_cli.main([*resume, "--no-export", "--no-baseline", "--trust-resume"]) == cli.EXIT_OK
    after = {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()}
    assert after == before  # not one file of the original changed: its study, its trials, its Ray state
    copy_study = optuna.load_study(
        study_name="quick", storage=f"sqlite:///{tmp_path / 'cp6' / 'quick' / results.STUDY_FILE}"
    )
    assert [t.state.name for t in copy_study.trials].count("COMPLETE") == 3
    assert pd.read_csv(tmp_path / "cp6" / "quick" / results.TRIALS_FILE)["status"].eq("TERMINATED").all()

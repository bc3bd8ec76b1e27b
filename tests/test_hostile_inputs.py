"""Hostile and broken inputs: each is refused with its exit code and one line naming the file, row, field or flag,
and leaves nothing behind (no experiment folder, no trial folders, no partial output) and runs nothing."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import KILL_ONCE, ROOT, TINY_MODEL, tiny_space, write_space

from tune_ph.commands import data as data_cli
from tune_ph.commands import evaluate as evaluate_cli
from tune_ph.commands import search as search_cli
from tune_ph.commands import train as train_cli
from tune_ph.data import sources, tokens
from tune_ph.data.split import split_samples
from tune_ph.errors import BadRowError

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a CUDA GPU")


def _rows(n: int = 8) -> list[dict]:
    rng = np.random.default_rng(n)
    return [
        {
            "sample_id": f"S{i:03d}",
            "study_name": "st",
            "pH": round(float(rng.uniform(4, 8)), 2),
            "sequences": ["".join(rng.choice(list("ACGT"), size=40)) for _ in range(3)],
            "environment": ("soil", "lake")[i % 2],
        }
        for i in range(n)
    ]


def _jsonl(folder: Path, rows: list[dict], name: str = "samples.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _ray_started() -> bool:
    import ray

    return ray.is_initialized()


# ------------------------------------------------------------------------------------------------ datasets (item 7)


def _dup_by_whitespace(rows: list[dict]) -> str:
    rows[5]["sample_id"] = rows[2]["sample_id"] + " "
    return "duplicate"


def _ph_true(rows: list[dict]) -> str:
    rows[3]["pH"] = True
    return "true/false"


def _ph_false(rows: list[dict]) -> str:
    rows[3]["pH"] = False
    return "true/false"


DATASET_CASES = {
    "sample_id differing by trailing whitespace": (_dup_by_whitespace, "sample_id"),
    "pH true": (_ph_true, "pH"),
    "pH false": (_ph_false, "pH"),
}


@pytest.mark.parametrize("case", list(DATASET_CASES))
def test_bad_dataset_rows_are_refused_by_every_command(case, tmp_path, capsys, monkeypatch):
    change, field = DATASET_CASES[case]
    rows = _rows()
    problem = change(rows)
    bad_row = next(i for i, r in enumerate(rows) if r != _rows()[i])
    source = _jsonl(tmp_path, rows)
    cache = tmp_path / "cache"
    monkeypatch.setenv("TUNE_PH_CACHE", str(cache))

    assert data_cli.main(["summary", str(source)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert str(source) in err and repr(field) in err and f"row {bad_row}" in err and problem in err, err

    out = tmp_path / "run"
    argv = ["--dataset", str(source), "--from-scratch", "--output-dir", str(out), "--epochs", "1", "--no-progress"]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert str(source) in err and repr(field) in err, err
    assert not out.exists() and not cache.exists()


def test_json_values_keep_their_types(tmp_path):
    rows = _rows()
    for i, row in enumerate(rows):  # ids that look like numbers: pandas' type guessing read "0012" as 12
        row["sample_id"] = f"{i:04d}"
    rows[1]["sample_id"] = "12"
    df = sources.load_samples(str(_jsonl(tmp_path, rows)))
    assert sorted(df["sample_id"]) == sorted(r["sample_id"] for r in rows)


def test_trailing_whitespace_ids_never_reach_two_splits():
    rows = _rows(20)
    rows[7]["sample_id"] = rows[3]["sample_id"] + "\t"
    with pytest.raises(BadRowError):
        sources.clean_samples(pd.DataFrame(rows))
    cleaned = sources.clean_samples(pd.DataFrame(rows), skip_bad_rows=True)
    split = split_samples(cleaned)
    ids = [s for part in split.values() for s in part]
    assert len(ids) == len(set(ids)) == 19


# ------------------------------------------------------------------------------------ search YAML and flags (7, 8)


def _space(tmp_path: Path, **changes) -> Path:
    return write_space(tmp_path, tiny_space(**changes))


def _fixed(**values) -> dict:
    space = tiny_space()
    return {**space["fixed"], **values}


def _nan_bound(tmp_path: Path) -> Path:
    space = tiny_space()
    space["space"]["learning_rate"] = {"loguniform": [float("nan"), 1e-3]}
    return write_space(tmp_path, space)


def _device_choice(tmp_path: Path) -> Path:
    space = tiny_space(fixed=_fixed())
    space["fixed"].pop("device")
    space["space"]["device"] = {"choice": ["cpu", "cuda"]}
    return write_space(tmp_path, space)


def _bad_utf8(tmp_path: Path) -> Path:
    path = _space(tmp_path)
    path.write_bytes(path.read_bytes().replace(b"name: tiny", b"name: tiny # caf\xe9 \xff"))
    return path


def _missing_dataset(tmp_path: Path) -> Path:
    return _space(tmp_path, fixed=_fixed(dataset=str(tmp_path / "no_such_data.parquet")))


def _bad_row_dataset(tmp_path: Path) -> Path:
    rows = _rows(30)
    rows[4]["pH"] = True
    return _space(tmp_path, fixed=_fixed(dataset=str(_jsonl(tmp_path, rows))))


# Each case: (build the --space file, extra flags, what the one-line error must contain).
SEARCH_CASES = {
    "NaN learning_rate": (lambda p: _space(p, fixed=_fixed(learning_rate=float("nan"))), [], ["fixed.learning_rate"]),
    "NaN weight_decay": (lambda p: _space(p, fixed=_fixed(weight_decay=float("nan"))), [], ["fixed.weight_decay"]),
    "NaN grad_clip": (lambda p: _space(p, fixed=_fixed(grad_clip=float("nan"))), [], ["fixed.grad_clip"]),
    "NaN loss_beta": (lambda p: _space(p, fixed=_fixed(loss_beta=float("nan"))), [], ["fixed.loss_beta"]),
    "NaN loguniform bound": (_nan_bound, [], ["space.learning_rate.loguniform[0]"]),
    "negative training seed": (lambda p: _space(p, fixed=_fixed(seed=-1)), [], ["fixed.seed", ">= 0"]),
    "negative TPE seed": (lambda p: _space(p, search__seed=-3), [], ["search.seed", ">= 0"]),
    "negative --seed": (_space, ["--seed", "-3"], ["--seed", ">= 0"]),
    "negative split_seed": (lambda p: _space(p, fixed=_fixed(split_seed=-1)), [], ["fixed.split_seed"]),
    "fractions sum to 1": (
        lambda p: _space(p, fixed=_fixed(test_fraction=0.6, val_fraction=0.4)),
        [],
        ["fixed.val_fraction", "below 1"],
    ),
    "name ../..": (lambda p: _space(p, name="../.."), [], ["name", "../.."]),
    "absolute name": (lambda p: _space(p, name="/tmp/elsewhere"), [], ["name", "/tmp/elsewhere"]),
    "--name ../x": (_space, ["--name", "../x"], ["--name", "../x"]),
    "--name absolute": (_space, ["--name", "/tmp/x"], ["--name", "/tmp/x"]),
    "YAML with invalid UTF-8": (_bad_utf8, [], ["space.yaml", "UTF-8", "byte"]),
    "dataset path missing": (_missing_dataset, [], ["no_such_data.parquet"]),
    "dataset with a bad row": (_bad_row_dataset, [], ["samples.jsonl", "'pH'", "S004"]),
}
NO_GPU_CASES = {
    "device cuda without a GPU": (
        lambda p: _space(p, fixed=_fixed(device="cuda")),
        [],
        ["fixed.device", "--device cpu"],
    ),
    "device cuda in a choice": (_device_choice, [], ["space.device", "--device cpu"]),
    "--device cuda": (_space, ["--device", "cuda:0"], ["--device", "--device cpu"]),
}


def _run_refused_search(tmp_path, capsys, make, flags, expected) -> None:
    cases = tmp_path / "in"
    cases.mkdir()
    space = make(cases)
    out = tmp_path / "experiments"
    ray_before = _ray_started()
    rc = search_cli.main(["--space", str(space), "--output-dir", str(out), "--verbose", "0", *flags])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for text in expected:
        assert text in err, (text, err)
    assert not out.exists(), _listing(out)  # no experiment folder, settings, lock or trial folder
    assert not (tmp_path / "elsewhere").exists() and not (cases / "x").exists()
    assert _ray_started() == ray_before  # refused before Ray started


@pytest.mark.parametrize("case", list(SEARCH_CASES))
def test_search_refuses_bad_input_before_anything_runs(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TUNE_PH_CACHE", str(tmp_path / "cache"))
    _run_refused_search(tmp_path, capsys, *SEARCH_CASES[case])
    assert not (tmp_path / "cache").exists()  # nothing tokenized


@no_gpu
@pytest.mark.parametrize("case", list(NO_GPU_CASES))
def test_search_refuses_cuda_without_a_gpu(case, tmp_path, capsys):
    _run_refused_search(tmp_path, capsys, *NO_GPU_CASES[case])


TRAIN_CASES = {
    "--learning-rate nan": (["--learning-rate", "nan"], ["learning_rate", "finite"]),
    "--weight-decay nan": (["--weight-decay", "nan"], ["weight_decay"]),
    "--seed -1": (["--seed", "-1"], ["seed", ">= 0"]),
    "fractions sum above 1": (["--test-fraction", "0.5", "--val-fraction", "0.5"], ["val_fraction"]),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_refuses_bad_flags_without_writing(case, tmp_path, capsys):
    flags, expected = TRAIN_CASES[case]
    out = tmp_path / "run"
    assert train_cli.main(["--dataset", "demo", "--from-scratch", "--output-dir", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert all(text in err for text in expected), err
    assert not out.exists()


@no_gpu
def test_train_refuses_cuda_without_a_gpu_before_writing(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--dataset", "demo", "--from-scratch", "--device", "cuda", "--output-dir", str(out)]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "cuda" in err and "--device cpu" in err, err
    assert not out.exists()


@pytest.mark.parametrize("name", ["../outside", "/tmp/outside", ".."])
def test_resume_refuses_a_name_outside_the_output_dir(name, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "search_settings.json").write_text(json.dumps(tiny_space(name="outside")))
    before = _listing(tmp_path)
    rc = search_cli.main(["--name", name, "--output-dir", str(tmp_path / "experiments"), "--resume", "--verbose", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "--name" in err and repr(name) in err, err
    assert _listing(tmp_path) == before


def test_truncated_settings_on_resume_names_the_file(tmp_path, capsys):
    folder = tmp_path / "tiny"
    folder.mkdir()
    text = json.dumps(tiny_space())
    (folder / "search_settings.json").write_text(text[: len(text) // 2])
    before = _listing(tmp_path)
    rc = search_cli.main(["--name", "tiny", "--output-dir", str(tmp_path), "--resume", "--verbose", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "search_settings.json" in err and "not valid JSON" in err, err
    assert _listing(tmp_path) == before


# ------------------------------------------------------------------------------------------- files (item 8)


def _not_gzip(path: Path) -> None:
    path.write_bytes(b">r1\nACGT\n")


def _truncated_gzip(path: Path) -> None:
    blob = gzip.compress(b"".join(b">r%d\n%s\n" % (i, b"ACGT" * 50) for i in range(200)))
    path.write_bytes(blob[: len(blob) // 2])


@pytest.mark.parametrize("damage", [_not_gzip, _truncated_gzip], ids=["not gzip", "truncated gzip"])
def test_fasta_builder_names_a_broken_gz_file(damage, tmp_path, capsys):
    (tmp_path / "reads" / "st").mkdir(parents=True)
    (tmp_path / "reads" / "st" / "ok.fasta").write_text(">r\nACGT\n")
    broken = tmp_path / "reads" / "st" / "bad.fasta.gz"
    damage(broken)
    meta = tmp_path / "meta.csv"
    pd.DataFrame({"sample_id": ["ok", "bad"], "study_name": "st", "environment": "soil", "pH": [5.0, 6.0]}).to_csv(
        meta, index=False
    )
    out = tmp_path / "out"
    argv = ["build", "--fasta-dir", str(tmp_path / "reads"), "--metadata", str(meta), "--output-dir", str(out)]
    assert data_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "gzip" in err and "Traceback" not in err, err
    assert not out.exists()


class _RunsCode:
    """A pickle that would create a file if it were ever unpickled with code execution."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_evaluate_refuses_a_pickle_that_runs_code(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "best_model.pt"
    torch.save({"train_config": _RunsCode(marker)}, evil)
    torch.load(evil, weights_only=False)  # guard: the payload does run code when unpickled the unsafe way
    assert marker.exists()
    marker.unlink()
    assert evaluate_cli.main(["--checkpoint", str(evil), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(evil) in err and "Traceback" not in err, err
    assert not marker.exists() and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ token cache (item 9)


def _build(df: pd.DataFrame, max_length: int, cache: Path) -> Path:
    """Build (and cache) one tokenized dataset; its cache file."""
    tokens.build(df, split_samples(df), max_length=max_length, max_sets=1, cache_dir=cache)
    return next(cache.glob(f"*-L{max_length}-n1-*.npz"))


def test_token_cache_is_capped_least_recently_used_first(tmp_path, monkeypatch):
    from tune_ph.data import token_cache

    df = sources.clean_samples(pd.DataFrame(_rows(40)))
    cache = tmp_path / "cache"
    first = _build(df, 32, cache)
    second = _build(df, 48, cache)  # 40-base reads: sets of 48 and 64 tokens hold the same tokens, same size
    os.utime(first, (time.time() + 5, time.time() + 5))  # first used after second
    room = first.stat().st_size + second.stat().st_size + 1
    monkeypatch.setenv(token_cache.MAX_GB_ENV, str(room / 2**30))  # room for two entries, not three
    third = _build(df, 64, cache)
    assert sorted(cache.glob("*.npz")) == sorted([first, third])  # the least recently used one went
    assert not second.exists()


@pytest.mark.parametrize("value", ["abc", "-1", "nan"])
def test_bad_cache_cap_is_refused_naming_the_variable(value, tmp_path, monkeypatch, capsys):
    from tune_ph.data import token_cache

    monkeypatch.setenv(token_cache.MAX_GB_ENV, value)
    monkeypatch.setenv("TUNE_PH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert train_cli.main(["--dataset", "demo", "--from-scratch", "--output-dir", str(out), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert token_cache.MAX_GB_ENV in err and value in err, err
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_cache_list_and_clear(tmp_path, capsys):
    df = sources.clean_samples(pd.DataFrame(_rows(40)))
    cache = tmp_path / "cache"
    old, new = _build(df, 32, cache), _build(df, 48, cache)
    os.utime(old, (time.time() - 3 * 86400, time.time() - 3 * 86400))
    assert data_cli.main(["cache", "list", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert old.name in out and new.name in out and tokens.fingerprint(df)[:12] in out and "3.0 d" in out, out
    assert data_cli.main(["cache", "clear", "--older-than", "2", "--cache-dir", str(cache)]) == 0
    assert not old.exists() and new.exists()
    assert data_cli.main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert not list(cache.glob("*.npz"))


@pytest.mark.parametrize("age", ["-1", "x", "nan"])
def test_cache_clear_refuses_bad_ages(age, tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    kept = cache / f"{'0' * 32}-L8-n1-s{'0' * 16}-v1.npz"
    kept.write_bytes(b"x")
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error
        data_cli.main(["cache", "clear", "--older-than", age, "--cache-dir", str(cache)])
    assert exit_.value.code == 2
    assert "--older-than" in capsys.readouterr().err
    assert kept.exists()


# ------------------------------------------------------------------------------------------------ lock (item 5)

HOLD = """
import sys, time
from pathlib import Path
from tune_ph.search.runlock import ExperimentLock
with ExperimentLock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def test_second_search_of_the_same_name_fails_at_once(tmp_path, capsys):
    from tune_ph.search.runlock import LOCK_FILE, ExperimentLock

    folder = tmp_path / "experiments" / "tiny"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _listing(tmp_path / "experiments")
        started = time.perf_counter()
        rc = search_cli.main(["--space", str(_space(tmp_path)), "--output-dir", str(tmp_path / "experiments")])
        took = time.perf_counter() - started
        err = capsys.readouterr().err
        assert rc == 2, err
        assert str(folder) in err and f"pid {holder.pid}" in err and socket.gethostname() in err, err
        assert took < 20 and _listing(tmp_path / "experiments") == before  # nothing written by the second one
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed without cleaning up: its lock file stays, but a dead process never blocks.
    assert (folder / LOCK_FILE).exists()
    with ExperimentLock(folder) as lock:
        assert lock.held and json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (folder / LOCK_FILE).exists() and folder.is_dir()  # released; the folder was the holder's: kept


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    from tune_ph.search.runlock import LOCK_FILE, ExperimentLock

    folder = tmp_path / "exp"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    info = {"pid": int(dead.stdout), "host": socket.gethostname(), "started": "2020-01-01T00:00:00"}
    (folder / LOCK_FILE).write_text(json.dumps(info))
    with ExperimentLock(folder):
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert folder.exists() and not (folder / LOCK_FILE).exists()  # a folder it did not create stays


def test_lock_is_released_when_the_search_fails(tmp_path, capsys):
    # A dataset error after the lock was taken: exit 2, and no lock (nor an empty folder) is left behind.
    rows = _rows(30)
    rows[1]["pH"] = True
    space = _space(tmp_path, fixed=_fixed(dataset=str(_jsonl(tmp_path, rows))))
    assert search_cli.main(["--space", str(space), "--output-dir", str(tmp_path / "experiments")]) == 2
    assert not (tmp_path / "experiments").exists()


# ------------------------------------------------------------------------------------ killed worker (item 4)


RAY_DIED = """Failure # 1 (occurred at 2026-11-25_09-38-58)
The actor died unexpectedly before finishing this task.
\tclass_name: ImplicitFunc
\tpid: 6183
The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: Worker \
unexpectedly exits with a connection error code 2. End of file. Some common causes include: (1) the process was \
killed by the OOM killer due to high memory usage, (2) ray stop --force was called"""


class _Result:
    def __init__(self, path: str, error: Exception | None):
        self.path, self.error = path, error


def test_a_died_worker_is_error_whatever_the_saved_state_says():
    from tune_ph.search import outcome

    # Ray's saved state can lag behind (it is written before Ray cleans up): the in-process ResultGrid decides.
    table = pd.DataFrame(
        {"trial_id": ["a1", "b2", "c3"], "status": ["TERMINATED", "PENDING", "TERMINATED"], "error": ["", "", ""]}
    )
    grid = [_Result("/x/trial_a1", None), _Result("/x/trial_b2", RuntimeError(RAY_DIED)), _Result("/x/trial_c3", None)]
    settled = outcome.settle(table, grid)
    assert settled["status"].tolist() == ["TERMINATED", "ERROR", "TERMINATED"]
    assert settled.loc[1, "error"].startswith("worker died (pid 6183, exit type SYSTEM_ERROR, Worker unexpectedly")
    assert "OOM killer" in settled.loc[1, "error"] and table.loc[1, "status"] == "PENDING"  # the input is not changed
    # Exit code by outcome: every trial finished (one failed) is success, not "stopped early".
    assert outcome.exit_code(settled, 3, any_results=True) == 0
    assert outcome.exit_code(table, 3, any_results=True) == 130  # a trial really left PENDING: interrupted
    assert outcome.exit_code(settled, 4, any_results=True) == 130  # a trial never started
    assert outcome.exit_code(settled.iloc[:0], 4, any_results=False) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (RAY_DIED, "worker died (pid 6183"),
        ("ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.", "memory monitor"),
        ("Traceback (most recent call last):\n  File x\nValueError: bad", "ValueError: bad"),
        ("", "error (no message recorded)"),
    ],
)
def test_trial_errors_are_summarized_in_one_line(text, expected):
    from tune_ph.report.results import summarize_error

    line = summarize_error(text)
    assert expected in line and "\n" not in line and len(line) <= 300


def test_trial_threads_follow_cpus_per_trial():
    from tune_ph.search.trainable import trial_threads

    assert [trial_threads(c) for c in (None, 0.25, 1, 1.5, 2, 4.0)] == [1, 1, 1, 1, 2, 4]


def _trials(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "trials.csv").set_index("trial_id")


@pytest.mark.slow
def test_killed_worker_is_an_honest_error(ray_session, kill_dir, tmp_path, capsys):
    import optuna

    space = tiny_space(name="killed", search__num_samples=3, scheduler__grace_period=2)
    argv = ["--space", str(write_space(tmp_path, space)), "--output-dir", str(tmp_path), "--verbose", "0"]
    (kill_dir / KILL_ONCE).write_text("1")  # right after the first trial reports epoch 1
    (kill_dir / "killed").unlink(missing_ok=True)
    try:
        rc = search_cli.main([*argv, "--no-export"])
    finally:
        (kill_dir / KILL_ONCE).unlink()
    out = capsys.readouterr().out
    folder = tmp_path / "killed"
    table = _trials(folder)
    assert rc == 0, out  # the search completed; one trial failed
    assert "stopped early" not in out
    died = table[table["status"] == "ERROR"]
    assert len(died) == 1 and set(table["status"]) == {"ERROR", "TERMINATED"}, table[["status", "error"]]
    assert died["error"].iloc[0].startswith("worker died"), died["error"].iloc[0]
    trial_id = died.index[0]
    result_before = Path(died["path"].iloc[0], "result.json").read_text()
    env = json.loads((folder / "environment.json").read_text())
    assert env["torch"]["version"] == torch.__version__ and "threads" in env["torch"] and env["trial_threads"] == 1
    # Each trial ran with the threads of its cpus_per_trial (1), not the OMP_NUM_THREADS=3 its process inherited.
    for path in table["path"]:
        assert {json.loads(line)["torch_threads"] for line in Path(path, "result.json").read_text().splitlines()} == {1}

    # --resume without --retry-errored: nothing to rerun; the trial stays ERROR with the same results.
    assert search_cli.main(["--name", "killed", "--output-dir", str(tmp_path), "--resume", "--verbose", "0"]) == 0
    again = _trials(folder)
    assert again.loc[trial_id, "status"] == "ERROR"
    assert Path(again.loc[trial_id, "path"], "result.json").read_text() == result_before
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{folder / 'optuna_study.db'}")
    states = [t.state.name for t in study.trials]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") == 2, states

    # --retry-errored reruns it from its checkpoint; trials.csv and Optuna then agree that it completed.
    argv = ["--name", "killed", "--output-dir", str(tmp_path), "--resume", "--retry-errored", "--verbose", "0"]
    assert search_cli.main([*argv, "--no-export"]) == 0
    final = _trials(folder)
    assert final.loc[trial_id, "status"] == "TERMINATED" and final.loc[trial_id, "epochs_run"] == 2
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{folder / 'optuna_study.db'}")
    values = sorted(t.value for t in study.trials if t.state.name == "COMPLETE")
    assert values == sorted(final["best_val_loss"].tolist()), (values, final["best_val_loss"])


@pytest.mark.slow
def test_two_searches_of_one_name_do_not_mix(tmp_path):
    from tune_ph.search.runlock import LOCK_FILE

    space = write_space(tmp_path, tiny_space(name="twice", fixed__epochs=6, scheduler__max_epochs=6))
    cmd = [sys.executable, "-m", "tune_ph.search", "--space", str(space), "--output-dir", str(tmp_path)]
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": str(ray_tmp)}
    first = subprocess.Popen([*cmd, "--verbose", "0"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (tmp_path / "twice" / LOCK_FILE).exists():
            time.sleep(0.1)
        second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stderr
        assert str(tmp_path / "twice") in second.stderr and f"pid {first.pid}" in second.stderr, second.stderr
        assert first.wait(timeout=400) == 0
        # The search removed the Ray session folder it created (Ray itself leaves it behind forever).
        assert not list(ray_tmp.rglob("session_*")), list(ray_tmp.rglob("*"))[:20]
    finally:
        if first.poll() is None:
            first.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not (tmp_path / "twice" / LOCK_FILE).exists()
    assert len(pd.read_csv(tmp_path / "twice" / "trials.csv")) == 3


def test_yaml_spaces_in_the_cases_are_valid_apart_from_the_one_change(tmp_path):
    """Guards the cases above: the unchanged tiny space passes validation, so each refusal is the change's."""
    from tune_ph.search.space import load_space

    assert load_space(_space(tmp_path)).name == "tiny"
    assert yaml.safe_load(_space(tmp_path).read_text())["fixed"]["model_config"] == TINY_MODEL

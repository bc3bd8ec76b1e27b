"""The Ray Tune search end to end on a tiny model: results, tokenize-once, failures, resume, two nodes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import KILL_ONCE, ROOT, tiny_space, write_space

from tune_ph.commands import search as search_cli
from tune_ph.data.sources import load_samples
from tune_ph.data.split import split_samples

# Every test here runs Ray Tune searches: the slow lane (`pytest -m "not slow"` skips them).
pytestmark = pytest.mark.slow


def _env() -> dict:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    return env


def test_search_end_to_end(finished_experiment):
    assert finished_experiment["rc"] == 0
    folder = finished_experiment["folder"]
    table = pd.read_csv(folder / "trials.csv")
    assert len(table) == 3 and set(table["status"]) == {"TERMINATED"}
    assert {
        "config/head",
        "config/learning_rate",
        "epochs_run",
        "best_val_loss",
        "best_val_rmse",
        "best_val_mae",
        "best_val_r2",
        "error",
    } <= set(table.columns)
    assert table["best_val_loss"].is_monotonic_increasing  # sorted, best first
    # Conditional parameter: dropout only recorded for MLP heads.
    linear = table[table["config/head"] == "linear"]
    assert linear.get("config/head_dropout", pd.Series(dtype=float)).isna().all()
    metrics = json.loads((folder / "best" / "metrics.json").read_text())
    assert "test_r2" in metrics and "test_rmse" in metrics
    # Whole studies held out (the search's split_by: study): no test study is in train or val.
    studies = pd.read_csv(folder / "best" / "test_predictions.csv")["study_name"]
    demo = load_samples("demo")
    split = split_samples(demo, by="study")
    assert sorted(studies) == sorted(demo.set_index("sample_id").loc[split["test"], "study_name"])
    assert set(studies).isdisjoint(demo.set_index("sample_id").loc[split["train"] + split["val"], "study_name"])
    # The winner with its interval, and its paired difference to the baseline chosen on val.
    lo, hi = metrics["test_r2_ci95"]
    assert lo <= metrics["test_r2"] <= hi
    baseline = json.loads((folder / "baseline.json").read_text())
    assert metrics["vs_baseline"]["baseline"] == baseline["chosen"]
    assert metrics["vs_baseline"]["n_samples"] == len(studies)
    assert metrics["vs_baseline"]["verdict"] in ("ahead", "behind", "not distinguishable")
    for name in ("best_model.pt", "config.json", "test_predictions.csv", "residuals.png"):
        assert (folder / "best" / name).is_file(), name
    assert (folder / "report.html").is_file()
    assert (folder / "optuna_study.db").is_file()
    # Each trial reported every epoch with a checkpoint; at most KEEP_CHECKPOINTS kept.
    for trial_path in table["path"]:
        rows = [json.loads(line) for line in Path(trial_path, "result.json").read_text().splitlines()]
        assert {"val_loss", "val_rmse", "val_mae", "val_r2", "train_loss", "epoch"} <= set(rows[0])
        assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
        assert len(list(Path(trial_path).glob("checkpoint_*"))) <= 2


def test_dataset_tokenized_once_per_search(finished_experiment):
    # The driver built one tokenized dataset (one max_length) ...
    assert finished_experiment["driver_builds"] == [128]
    # ... and no trial process tokenized anything (the hook logs any call made in a Ray worker).
    assert finished_experiment["hook_lines"] == []


def test_build_hook_sees_calls_in_ray_workers(ray_session, build_log):
    """Guards the previous test: the counting hook does record tokenization inside a Ray worker."""

    @ray_session.remote(num_cpus=1)
    def tokenize_in_worker():
        from tune_ph.data import sources, tokens

        df = sources.load_samples("demo").head(12)
        split = {"train": list(df.sample_id[:8]), "val": list(df.sample_id[8:10]), "test": list(df.sample_id[10:])}
        tokens.build(df, split, max_length=64, max_sets=1, use_cache=False)
        return os.getpid()

    before = build_log.read_text().splitlines()
    pid = ray_session.get(tokenize_in_worker.remote())
    new = build_log.read_text().splitlines()[len(before) :]
    assert f"{pid} build" in new and pid != os.getpid()


def test_failing_trial_is_recorded_while_others_finish(ray_session, kill_dir, tmp_path):

    # The first trial raises before training (helpers.kill_switch, in the Ray workers); the others must finish.
    space = tiny_space(name="failing", search__num_samples=4, scheduler__grace_period=2)
    (kill_dir / "killed").unlink(missing_ok=True)
    (kill_dir / KILL_ONCE).write_text("raise")
    try:
        argv = ["--space", str(write_space(tmp_path, space)), "--output-dir", str(tmp_path), "--verbose", "0"]
        rc = search_cli.main(argv)
    finally:
        (kill_dir / KILL_ONCE).unlink()
    table = pd.read_csv(tmp_path / "failing" / "trials.csv")
    failed = table[table["status"] == "ERROR"]
    done = table[table["status"] == "TERMINATED"]
    assert len(table) == 4 and len(failed) == 1 and len(done) == 3, table[["status", "error"]]
    assert failed["error"].iloc[0] == "RuntimeError: injected failure (helpers.kill_switch)"
    assert rc == 0 and (tmp_path / "failing" / "best" / "metrics.json").is_file()


def test_resume_after_interruption_keeps_finished_trials(ray_session, tmp_path):

    # One trial at a time, 4 trials; Ctrl-C (SIGINT) once two have finished and the third has a checkpoint,
    # then --resume.
    space = tiny_space(
        name="resumable",
        fixed__epochs=6,
        search__num_samples=4,
        search__max_concurrent=1,
        scheduler__max_epochs=6,
        scheduler__grace_period=6,
    )
    path = write_space(tmp_path, space)
    cmd = [
        sys.executable,
        "-m",
        "tune_ph.search",
        "--space",
        str(path),
        "--output-dir",
        str(tmp_path),
        "--verbose",
        "0",
        "--no-export",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    folder = tmp_path / "resumable"
    deadline = time.time() + 240
    try:
        # With one trial at a time, a third trial folder means the first two have finished.
        def third_has_checkpoint() -> bool:
            trials = sorted(folder.glob("trial_*"), key=lambda p: p.stat().st_ctime)
            return len(trials) >= 3 and any(trials[2].glob("checkpoint_*"))

        while time.time() < deadline and not third_has_checkpoint():
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
        assert third_has_checkpoint(), "the search did not reach its third trial in time"
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = pd.read_csv(folder / "trials.csv")
    finished = before[before["status"] == "TERMINATED"]
    assert len(finished) >= 2, output
    results_before = {t: Path(p, "result.json").read_text() for t, p in zip(finished["trial_id"], finished["path"])}
    unfinished = before[before["status"] != "TERMINATED"]
    assert len(unfinished) >= 1, before[["trial_id", "status", "epochs_run"]]

    rc = search_cli.main(
        ["--name", "resumable", "--output-dir", str(tmp_path), "--resume", "--verbose", "0", "--no-export"]
    )
    assert rc == 0
    after = pd.read_csv(folder / "trials.csv")
    assert len(after) == 4 and set(after["status"]) == {"TERMINATED"}
    kept = after.set_index("trial_id").loc[list(finished["trial_id"])]
    assert (kept["best_val_loss"].values == finished.set_index("trial_id")["best_val_loss"].values).all()
    for trial_id, text in results_before.items():  # finished trials were not trained again
        path = after.set_index("trial_id").loc[trial_id, "path"]
        assert Path(path, "result.json").read_text() == text
    for path in unfinished["path"]:  # the interrupted trial continued from its checkpoint, not from epoch 1
        epochs = [json.loads(line)["epoch"] for line in Path(path, "result.json").read_text().splitlines()]
        assert epochs.count(1) == 1 and epochs[-1] == 6, epochs


TWO_NODES = """
import json, sys
from ray.cluster_utils import Cluster
from tune_ph.commands import search as search_cli

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
try:
    rc = search_cli.main(sys.argv[1:] + ["--address", cluster.address])
finally:
    import ray
    ray.shutdown()
    cluster.shutdown()
sys.exit(rc)
"""


def test_two_node_search(tmp_path):
    # Its own Ray cluster (head + one worker node, one CPU each) in a separate process: the session's Ray would
    # otherwise be the one this process talks to.
    space = tiny_space(name="twonodes", search__num_samples=2, search__max_concurrent=2, scheduler__grace_period=2)
    path = write_space(tmp_path, space)
    cmd = [sys.executable, "-c", TWO_NODES, "--space", str(path), "--output-dir", str(tmp_path), "--verbose", "0"]
    # As the README's "Several machines" says: token auth on (joining a cluster without it is refused). The
    # cluster's session folder goes to a temp dir of its own, removed below (Ray never removes it).
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = {**_env(), "RAY_AUTH_MODE": "token", "RAY_TMPDIR": ray_tmp}
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = pd.read_csv(tmp_path / "twonodes" / "trials.csv")
    assert len(table) == 2 and set(table["status"]) == {"TERMINATED"}
    nodes = set()
    for trial_path in table["path"]:
        nodes |= {json.loads(line)["node_id"] for line in Path(trial_path, "result.json").read_text().splitlines()}
    assert len(nodes) == 2  # one CPU per node, two trials at once: one ran on each node
    assert (tmp_path / "twonodes" / "best" / "metrics.json").is_file()


def test_per_model_sizes_lengths_and_resources(ray_session, tmp_path, monkeypatch):
    """Model size searched with a batch size, a max length and a GPU share per size: one dataset per length."""
    from tune_ph.data import tokens

    tiny, d256 = "hyenadna-tiny-1k-seqlen", "hyenadna-tiny-1k-seqlen-d256"
    space = {
        "name": "sizes",
        "fixed": {
            "dataset": "demo",
            "from_scratch": True,
            "max_sets": 1,
            "epochs": 1,
            "device": "cpu",
            "max_length": {"per": "model", "values": {tiny: 48, d256: 32}},
        },
        "space": {
            "model": {"choice": [tiny, d256]},
            "batch_size": {"per": "model", "values": {tiny: {"choice": [16, 32]}, d256: 64}},
        },
        "search": {"num_samples": 3, "seed": 4, "max_concurrent": 2},
        "scheduler": {"grace_period": 1, "max_epochs": 1},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": {"per": "model", "values": {tiny: 0, d256: 0}}},
    }
    lengths = []
    original = tokens.build
    monkeypatch.setattr(tokens, "build", lambda *a, **k: lengths.append(k["max_length"]) or original(*a, **k))
    rc = search_cli.main(
        ["--space", str(write_space(tmp_path, space)), "--output-dir", str(tmp_path), "--verbose", "0", "--no-export"]
    )
    assert rc == 0 and sorted(lengths) == [32, 48]
    table = pd.read_csv(tmp_path / "sizes" / "trials.csv")
    assert set(table["status"]) == {"TERMINATED"} and set(table["config/model"]) == {tiny, d256}
    for _, row in table.iterrows():
        assert row["config/batch_size"] in ({16, 32} if row["config/model"] == tiny else {64})
        # The trial config carries the length of its own model, a plain TrainConfig field.
        params = json.loads(Path(row["path"], "params.json").read_text())
        assert params["max_length"] == {tiny: 48, d256: 32}[row["config/model"]]


def test_search_metric_drives_selection_and_export(ray_session, tmp_path):
    """metric: val_rmse ranks trials, keeps checkpoints and picks the exported epoch: the best-RMSE one."""

    space = tiny_space(
        name="by_rmse",
        fixed__epochs=4,
        search__num_samples=2,
        search__metric="val_rmse",
        scheduler__max_epochs=4,
        scheduler__grace_period=4,
    )
    rc = search_cli.main(
        ["--space", str(write_space(tmp_path, space)), "--output-dir", str(tmp_path), "--verbose", "0"]
    )
    assert rc == 0
    folder = tmp_path / "by_rmse"
    table = pd.read_csv(folder / "trials.csv")
    assert table["best_val_rmse"].is_monotonic_increasing  # ranked by the search metric
    best = json.loads((folder / "best" / "config.json").read_text())
    assert best["selected_by"] == "val_rmse"
    by_trial = {}
    for trial_id, path in zip(table["trial_id"], table["path"]):
        rows = [json.loads(line) for line in Path(path, "result.json").read_text().splitlines()]
        by_trial[trial_id] = min(rows, key=lambda r: r["val_rmse"])
        assert rows[-1]["best_val_rmse"] == pytest.approx(by_trial[trial_id]["val_rmse"])  # what TPE learns from
    winner = min(by_trial, key=lambda t: by_trial[t]["val_rmse"])
    assert best["trial_id"] == winner
    assert best["epoch"] == by_trial[winner]["epoch"]
    assert best["val_metrics"]["val_rmse"] == pytest.approx(by_trial[winner]["val_rmse"])


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def test_a_rerun_starts_a_new_experiment_and_leaves_the_first_alone(ray_session, tmp_path, capsys):
    space = write_space(
        tmp_path, tiny_space(name="again", fixed__epochs=1, search__num_samples=1, scheduler__max_epochs=1)
    )
    argv = ["--space", str(space), "--output-dir", str(tmp_path), "--verbose", "0", "--no-export", "--no-baseline"]
    assert search_cli.main(argv) == 0
    first = _snapshot(tmp_path / "again")
    capsys.readouterr()
    assert search_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'again'} holds a finished search" in out and str(tmp_path / "again-2") in out, out
    (line,) = [ln for ln in out.splitlines() if "holds a" in ln]
    assert "--resume" not in line  # a finished search has nothing to continue
    assert _snapshot(tmp_path / "again") == first  # not one byte of the first experiment changed
    second = json.loads((tmp_path / "again-2" / "search_settings.json").read_text())
    assert second["name"] == "again-2" and len(pd.read_csv(tmp_path / "again-2" / "trials.csv")) == 1

"""The search's console: hyperparameter columns, best-so-far lines, every output named, Ray's wrong hints gone."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from helpers import KILL_ONCE, ROOT, tiny_space, write_space

from tune_ph import files
from tune_ph.baseline import choices
from tune_ph.commands import search as search_cli
from tune_ph.report import monitor, results
from tune_ph.search import console


def test_ray_hints_that_contradict_ours_are_dropped_and_others_kept():
    console.quiet_ray_hints()
    console.quiet_ray_hints()  # twice: still one filter
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    tune_log = logging.getLogger("ray.tune.tune")
    auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    assert sum(isinstance(f, console._DropHints) for f in tune_log.filters) == 1
    handler = Collect()
    for logger in (tune_log, auth_log):
        logger.addHandler(handler)
    try:
        # The messages as Ray 2.60 words them (tune/tune.py, authentication_token_setup.py).
        tune_log.warning(
            "Experiment has been interrupted, but the most recent state was saved.\n"
            'Resume experiment with: Tuner.restore(path="/x", trainable=...)'
        )
        tune_log.error("Trials did not complete: %s", ["trial_1"])
        auth_log.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
        tune_log.warning("Tune detects GPUs, but no trials are using GPUs.")
    finally:
        for logger in (tune_log, auth_log):
            logger.removeHandler(handler)
    assert seen == ["Tune detects GPUs, but no trials are using GPUs."]


def test_ray_console_settings_hold_only_while_fit_runs(monkeypatch):
    monkeypatch.setenv(console.NEW_OUTPUT_ENV, "1")
    monkeypatch.delenv(console.TRACEBACKS_ENV, raising=False)
    with console.ray_console(verbose=1):
        assert os.environ[console.NEW_OUTPUT_ENV] == "0" and os.environ[console.TRACEBACKS_ENV] == "0"
    assert os.environ[console.NEW_OUTPUT_ENV] == "1" and console.TRACEBACKS_ENV not in os.environ
    with console.ray_console(verbose=2):  # --verbose 2 keeps Ray's tracebacks
        assert console.TRACEBACKS_ENV not in os.environ


def test_metric_columns_put_the_search_metric_first():
    assert list(console.metric_columns("val_r2"))[:2] == ["val_r2", "best_val_r2"]
    assert list(console.metric_columns("val_loss"))[:2] == ["val_loss", "best_val_loss"]


class _Trial:
    def __init__(self, trial_id: str, **config):
        self.trial_id, self.config, self.last_result = trial_id, config, {}

    def __str__(self) -> str:
        return f"trial_{self.trial_id}"


def test_best_so_far_is_shown_beside_the_baseline_chosen_on_val(capsys):
    from tune_ph.baseline.reference import Reference

    chosen = {"k": 8, "val_r2": 0.47, "test_r2": 0.44, "test_rmse": 0.71}
    reference = Reference(results={"kmer8-ridge": chosen, "kmer6-hgb": {"val_r2": 0.4}}, chosen="kmer8-ridge")
    progress, trial = console.SearchProgress(["head"], "val_loss"), _Trial("a1", head="mlp2")
    result = {"val_loss": 0.3, "best_val_loss": 0.3, "val_r2": 0.521, "epoch": 3}
    with console.beside_best(reference):
        progress.on_trial_result(0, [trial], trial, result)
    progress.on_trial_result(0, [trial], trial, {**result, "val_loss": 0.2, "best_val_loss": 0.2, "epoch": 4})
    # One line per new best: the numbers beside it, no verdict (that is printed once at the start and the end).
    assert capsys.readouterr().out.splitlines() == [
        "best so far: trial_a1  val_loss 0.3 (epoch 3)  head=mlp2; val R² 0.521 (baseline kmer8-ridge 0.470)",
        "best so far: trial_a1  val_loss 0.2 (epoch 4)  head=mlp2",  # outside beside_best: no baseline
    ]
    console.print_start(Path("experiments/x"), "experiments/x", 2, baseline_line="baseline chosen on val: ...")
    lines = capsys.readouterr().out.splitlines()
    assert "  the bar to clear: baseline chosen on val: ..." in lines
    assert f"    ({console.BASELINE_WHY})" in lines  # why it is shown, in words, where it is shown


def _fake_experiment(folder: Path, exported: bool) -> None:
    folder.mkdir(parents=True)
    (folder / results.TRIALS_FILE).write_text("trial_id\n")
    (folder / results.STUDY_FILE).write_bytes(b"")
    if exported:
        (folder / results.REPORT_FILE).write_text("<html></html>")
        (folder / files.BEST_DIR).mkdir()
        for name in ("best_model.pt", "config.json", "metrics.json", "test_predictions.csv", "residuals.png"):
            (folder / files.BEST_DIR / name).write_text("")


def test_final_summary_names_every_output_and_the_commands(tmp_path, capsys):
    folder = tmp_path / "runs" / "quick"
    _fake_experiment(folder, exported=True)
    console.print_outputs(folder, str(folder), "val_loss", finished=True, exported=True)
    out = capsys.readouterr().out
    for name in ("trials.csv", "report.html", "best/", "best_model.pt", "metrics.json", "test_predictions.csv"):
        assert name in out, name
    for name in ("residuals.png", "optuna_study.db", "trial_<id>/"):
        assert name in out, name
    assert f"tensorboard --logdir {folder}" in out
    assert f"python -m tune_ph monitor {folder}" in out
    assert f"python -m tune_ph export {folder}" in out
    assert "tune_ph.search.run" not in out  # finished: nothing to continue
    predict = f"python -m tune_ph predict --checkpoint {folder} --dataset NEW_SAMPLES --output predictions.csv"
    assert predict in out


def test_the_predict_step_shown_is_a_command_predict_accepts(tmp_path, capsys):
    """With NEW_SAMPLES replaced by a source, the printed command parses as predict's flags and finds the winner."""
    import shlex

    from tune_ph.commands import predict as predict_cli
    from tune_ph.training.checkpoints import find_checkpoint

    folder = tmp_path / "quick"
    _fake_experiment(folder, exported=True)
    words = shlex.split(console.predict_command(folder).replace(console.NEW_SAMPLES, "demo"))
    assert words[:4] == ["python", "-m", "tune_ph", "predict"]
    args = predict_cli.build_parser().parse_args(words[4:])
    assert args.dataset == "demo" and args.output == "predictions.csv"
    assert find_checkpoint(args.checkpoint) == folder / files.BEST_DIR / files.MODEL_FILE
    console.print_outputs(folder, str(folder), "val_loss", finished=False, exported=False)
    assert "tune_ph predict" in capsys.readouterr().out  # an interrupted search's export so far can predict too
    (folder / files.BEST_DIR / files.MODEL_FILE).unlink()
    console.print_outputs(folder, str(folder), "val_loss", finished=True, exported=False)
    assert "tune_ph predict" not in capsys.readouterr().out  # nothing exported: nothing to predict with


def test_summary_of_a_stopped_search_gives_the_resume_command(tmp_path, capsys):
    folder = tmp_path / "runs" / "quick"
    _fake_experiment(folder, exported=False)
    console.print_outputs(folder, str(folder), "val_loss", finished=False, exported=False)
    out = capsys.readouterr().out
    assert f"python -m tune_ph.search --name quick --output-dir {folder.parent} --resume" in out
    assert "not written: report.html, best/" in out
    # The default --output-dir needs no flag.
    assert console.resume_command(Path("experiments/quick")) == "python -m tune_ph.search --name quick --resume"


@pytest.mark.slow
def test_search_console_shows_hyperparameters_best_so_far_and_outputs(
    ray_session, kill_dir, tmp_path, capfd, monkeypatch
):
    served = []
    original_start = monitor.StudyDashboard.start

    def start_and_fetch(self):
        original_start(self)
        # While the search runs: the dashboard answers on loopback with the search's study.
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/studies", timeout=30) as response:
            served.append((self._server.server_address[0], response.read().decode()))
        return self

    monkeypatch.setattr(monitor.StudyDashboard, "start", start_and_fetch)
    # As in test_failing_trial_is_recorded_while_others_finish: the first trial raises (helpers.kill_switch in
    # the Ray workers), the others finish.
    space = tiny_space(name="console", search__num_samples=4, scheduler__grace_period=2)
    args = ["--space", str(write_space(tmp_path, space)), "--output-dir", str(tmp_path), "--optuna-dashboard", "0"]
    (kill_dir / "killed").unlink(missing_ok=True)
    (kill_dir / KILL_ONCE).write_text("raise")
    try:
        rc = search_main(args + ["--verbose", "1"])
    finally:
        (kill_dir / KILL_ONCE).unlink()
    captured = capfd.readouterr()  # file descriptors: Ray's own log handlers write there too
    out = captured.out + captured.err
    assert rc == 0, out
    folder = tmp_path / "console"

    assert served and served[0][0] == "127.0.0.1" and '"study_name": "console"' in served[0][1]
    assert "optuna-dashboard: http://127.0.0.1:" in out
    # The status table has a column per searched hyperparameter, then the search metric and its best.
    # The last table: Ray leaves out metric columns while no trial has reported yet.
    header = [line for line in out.splitlines() if line.startswith("| Trial name")][-1]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[3:6] == ["head", "learning_rate", "head_dropout"], columns
    assert columns[6:8] == ["val_loss", "best val_loss"], columns
    # Best-so-far lines; the last one is the best trial of trials.csv, with its hyperparameters.
    best_lines = [line for line in out.splitlines() if line.startswith("best so far: ")]
    assert best_lines, out
    table = pd.read_csv(folder / "trials.csv", dtype={"trial_id": str})
    best = table.iloc[0]
    assert best_lines[-1].startswith(f"best so far: trial_{best['trial_id']}  val_loss {best['best_val_loss']:.4g}")
    assert f"head={best['config/head']}" in best_lines[-1] and "learning_rate=" in best_lines[-1]
    # The baseline chosen on val: computed once before the trials, saved, beside the best so far, in the summary
    # and, with the paired interval, beside the exported winner's test R².
    saved = json.loads((folder / "baseline.json").read_text())
    chosen = saved["chosen"]
    from_reads = [m for m in saved["results"].values() if choices.from_reads(m)]  # references are not chosen
    assert from_reads and saved["results"][chosen]["val_r2"] == max(m["val_r2"] for m in from_reads)
    assert re.search(rf"; val R² -?[0-9.]+ \(baseline {chosen} -?[0-9.]+\)$", out, flags=re.M), out
    assert f"the bar to clear: baseline chosen on val: {chosen} (val R²" in out
    # The end: the winner (the exported trial), its searched values, its test metrics beside the baseline.
    exported = json.loads((folder / "best" / "config.json").read_text())["trial_id"]
    assert re.search(rf"^winner: trial_{exported}, val_loss ", out, flags=re.M), out
    assert re.search(r"^  searched hyperparameters: head=", out, flags=re.M), out
    assert re.search(r"^  test split \(\d+ samples, held out, evaluated once\): R² -?\d\.\d+ \[-?\d", out, flags=re.M)
    vs = json.loads((folder / "best" / "metrics.json").read_text())["vs_baseline"]
    expected = rf"^  test R² vs the baseline chosen on val \({chosen}\): .* over {vs['n_samples']} test samples"
    assert re.search(expected + rf" \(paired bootstrap, 95 %\): {vs['verdict']}$", out, flags=re.M), out
    assert len(re.findall(r"^trial_\w+ started: head=", out, flags=re.M)) == 4
    # A failed trial: one line with its error and where the traceback is, not Ray's 40-line traceback.
    failed = re.findall(
        r"^trial_(\w+) FAILED after 0 epoch\(s\): RuntimeError: injected failure \(helpers.kill_switch\)",
        out,
        flags=re.M,
    )
    assert failed and set(failed) == set(table[table["status"] == "ERROR"]["trial_id"]), out
    assert f"traceback: {folder}/trial_{failed[0]}/error.txt" in out
    assert "Traceback (most recent call last)" not in out
    # The final summary names every output, and the commands to watch and continue.
    for name in ("trials.csv", "report.html", "best/", "residuals.png", "optuna_study.db"):
        assert re.search(rf"^  {re.escape(name)}\s", out, flags=re.M) or name in out, name
    assert f"tensorboard --logdir {folder}" in out and f"python -m tune_ph monitor {folder}" in out
    # Ray's hints that point elsewhere are gone: its staging folder (under the Ray temp dir), Tuner.restore.
    assert "driver_artifacts" not in out and "Tuner.restore" not in out and "View detailed results" not in out
    assert f"Result logdir: {folder}" in out


def search_main(argv: list[str]) -> int:

    return search_cli.main(argv)


@pytest.mark.slow
def test_interrupted_search_prints_our_resume_command_not_rays(tmp_path):
    space = tiny_space(
        name="stopme",
        fixed__epochs=30,
        search__num_samples=2,
        search__max_concurrent=1,
        scheduler__max_epochs=30,
        scheduler__grace_period=30,
    )
    cmd = [sys.executable, "-m", "tune_ph.search", "--space", str(write_space(tmp_path, space))]
    cmd += ["--output-dir", str(tmp_path), "--no-export"]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("best so far: "):
                proc.send_signal(signal.SIGINT)
                break
        lines.append(proc.communicate(timeout=120)[0])
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert proc.returncode == 130, out[-3000:]
    assert f"python -m tune_ph.search --name stopme --output-dir {tmp_path} --resume" in out, out[-3000:]
    assert "Tuner.restore" not in out and "Trials did not complete" not in out
    assert "RAY_AUTH_MODE=disabled" not in out and "driver_artifacts" not in out, out


@pytest.mark.parametrize("done", [2, 1])
def test_a_rerun_says_resume_only_for_an_unfinished_search(tmp_path, capsys, done):
    """A finished search (every planned trial done, per trials.csv) is left as it is: no --resume advice."""
    from types import SimpleNamespace

    from tune_ph.search import outcome
    from tune_ph.search.run import unused_experiment

    folder = tmp_path / "quick"
    folder.mkdir()
    results.save_settings(folder, {"name": "quick", "search": {"num_samples": 2}})
    statuses = ["TERMINATED"] * done + ["PAUSED"] * (2 - done)
    pd.DataFrame({"trial_id": ["a", "b"], "status": statuses}).to_csv(folder / results.TRIALS_FILE, index=False)
    assert outcome.finished(folder) is (done == 2)
    _, fresh = unused_experiment(SimpleNamespace(name="quick"), folder, None)
    out = capsys.readouterr().out
    assert fresh == tmp_path / "quick-2" and str(fresh) in out
    if done == 2:
        assert "holds a finished search, left as it is; this one is a new experiment" in out
        assert "--resume" not in out
    else:
        assert "holds an unfinished search (continue that one with --resume)" in out


def test_a_search_without_trials_csv_or_with_a_damaged_one_is_not_finished(tmp_path):
    from tune_ph.search import outcome

    results.save_settings(tmp_path, {"name": "quick", "search": {"num_samples": 1}})
    assert not outcome.finished(tmp_path)  # killed before trials.csv was written
    (tmp_path / results.TRIALS_FILE).write_text('"unclosed\n')
    assert not outcome.finished(tmp_path)

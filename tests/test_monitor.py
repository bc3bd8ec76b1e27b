"""optuna-dashboard on a study (loopback only, stops cleanly), the missing-extra error, TensorBoard on a search."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import tiny_space, write_space

from tune_ph.commands import monitor as monitor_cli
from tune_ph.commands import search as search_cli
from tune_ph.errors import InputError
from tune_ph.report import monitor, results

needs_dashboard = pytest.mark.skipif(
    not monitor.dashboard_installed(), reason=f"optuna-dashboard is not installed ({monitor.MONITOR_HINT})"
)


def _study(tmp_path, name="demo"):
    import optuna

    db = tmp_path / results.STUDY_FILE
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{db}")
    study.optimize(lambda t: t.suggest_float("learning_rate", 1e-4, 1e-2, log=True), n_trials=3)
    return db


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=20) as response:
        return response.status, response.read().decode()


def _other_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses, from its interfaces (none on an isolated machine)."""
    import psutil  # a Ray dependency

    addresses = (a.address for nic in psutil.net_if_addrs().values() for a in nic if a.family == socket.AF_INET)
    return sorted({a for a in addresses if not a.startswith("127.")})


@needs_dashboard
def test_dashboard_serves_the_study_on_loopback_only_and_stops(tmp_path):
    db = _study(tmp_path)
    with monitor.StudyDashboard(db, 0) as dashboard:
        dashboard.start()
        assert dashboard.url == f"http://127.0.0.1:{dashboard.port}/dashboard"
        status, body = _get(f"http://127.0.0.1:{dashboard.port}/api/studies")
        assert status == 200
        assert [s["study_name"] for s in json.loads(body)["study_summaries"]] == ["demo"]
        assert _get(dashboard.url)[0] == 200
        assert dashboard._server.socket.getsockname()[0] == "127.0.0.1"
        for address in _other_addresses():
            with pytest.raises(OSError):
                socket.create_connection((address, dashboard.port), timeout=2).close()
        port = dashboard.port
    with pytest.raises(OSError):  # stopped: nothing listens any more
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


@needs_dashboard
def test_port_in_use_is_an_input_error_naming_the_flag(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InputError, match=rf"--optuna-dashboard {port}: .*in use"):
            monitor.StudyDashboard(tmp_path / results.STUDY_FILE, port, "--optuna-dashboard")


def test_missing_dashboard_package_stops_the_search_before_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # import optuna_dashboard -> ImportError
    space = write_space(tmp_path, tiny_space())
    rc = search_cli.main(["--space", str(space), "--output-dir", str(tmp_path), "--optuna-dashboard"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "--optuna-dashboard needs the optuna-dashboard package" in err and 'pip install -e ".[monitor]"' in err
    assert not (tmp_path / "tiny").exists()  # nothing written, nothing started
    assert monitor_cli.main([str(tmp_path)]) == 2


@needs_dashboard
def test_bad_port_and_missing_study_are_input_errors(tmp_path, capsys):
    space = write_space(tmp_path, tiny_space())
    assert search_cli.main(["--space", str(space), "--output-dir", str(tmp_path), "--optuna-dashboard", "70000"]) == 2
    assert "--optuna-dashboard 70000: not a TCP port" in capsys.readouterr().err
    assert monitor_cli.main([str(tmp_path / "nope")]) == 2
    assert "nope: no such folder" in capsys.readouterr().err
    assert monitor_cli.main([str(tmp_path)]) == 2  # a folder, but no study in it
    assert f"no {results.STUDY_FILE} here" in capsys.readouterr().err


@needs_dashboard
def test_monitor_command_serves_until_interrupted(tmp_path):
    import signal
    import time

    _study(tmp_path, "later")
    with socket.socket() as probe:  # a free port for the child
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tune_ph", "monitor", str(tmp_path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        body = None
        deadline = time.time() + 60
        while body is None and time.time() < deadline and proc.poll() is None:
            try:
                body = _get(f"http://127.0.0.1:{port}/api/studies")[1]
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        assert body is not None and '"study_name": "later"' in body
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{port}/dashboard" in out and f"tensorboard --logdir {tmp_path}" in out


@pytest.mark.slow
@pytest.mark.skipif(not monitor.tensorboard_installed(), reason=f"tensorboard not installed ({monitor.MONITOR_HINT})")
def test_tensorboard_reads_the_trials_of_a_search(finished_experiment):
    folder = finished_experiment["folder"]
    assert list(folder.glob("trial_*/events.out.tfevents.*"))  # Ray's TensorBoard logger wrote every trial
    # The command the README gives, from this environment's scripts (what `pip install -e ".[monitor]"` installs).
    tensorboard = Path(sys.executable).parent / "tensorboard"
    inspect = subprocess.run(
        [str(tensorboard), "--inspect", "--logdir", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = inspect.stdout + inspect.stderr
    assert inspect.returncode == 0, out
    assert out.count("trial_") >= 3 and "ray/tune/val_loss" in out and "ray/tune/best_val_loss" in out, out

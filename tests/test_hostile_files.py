"""Hostile inputs, round three: model memory bounded by what a file holds, nothing silently wrong, no links followed,
one error line for each case that used to be a traceback."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY, tiny_state

from hyena_dna import HyenaDNAModel
from tune_ph import files
from tune_ph.config import MAX_SIZES, TrainConfig
from tune_ph.errors import ConfigError, InputError, SetupError
from tune_ph.model.regressor import build_model, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

PEAK_LIMIT = 1 << 30  # the interpreter, torch and tune_ph take a few hundred MiB; the models declared take 2.7-5 GB
# Below hyena_dna's upper bounds and (on most machines) the memory available: 0.8 G numbers, 3.2 GB of float32.
BIG_BACKBONE = {"d_model": 2048, "n_layer": 16, "d_inner": 8192}


def save(path: Path, state: dict) -> Path:
    files.save_torch(path, state)
    return path


CLUSTERS = {"aggregation": "clusters", "freeze_backbone": True, "clusters": 4, "cluster_dims": 8}


# The child's own peak RSS (VmHWM, reset by exec): what loading the file cost, not pytest's peak.
PEAK_SCRIPT = """
import sys
from hyena_dna import memory
memory.available_memory = lambda: 64 << 30  # as on a big machine: the file alone must stop the build
{body}
with open("/proc/self/status") as fh:
    print("vmhwm", next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:")))
"""


def peak_of(body: str, *args: str) -> tuple[int, str]:
    script = PEAK_SCRIPT.format(body=body)
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split("vmhwm")[-1]), done.stdout


# ------------------------------------------------------------------------------------------------ memory


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_a_checkpoint_declaring_a_big_backbone_it_does_not_carry_is_refused_unbuilt(tmp_path):
    state = tiny_state()
    state["model_config"] = {**state["model_config"], **BIG_BACKBONE}
    path = save(tmp_path / "best_model.pt", state)
    assert path.stat().st_size < 1 << 20
    body = (
        "from tune_ph.model.regressor import load_checkpoint\n"
        "try:\n    load_checkpoint(sys.argv[1])\nexcept Exception as err:\n    print('refused', err)\n"
    )
    peak, out = peak_of(body, str(path))
    assert "refused" in out and "declare a model of 8" in out and "but it carries 2" in out, out
    assert peak < PEAK_LIMIT, peak


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_a_weights_folder_declaring_a_big_backbone_it_does_not_carry_is_refused_unbuilt(tmp_path):
    from hyena_dna import HyenaDNAConfig

    folder = tmp_path / "ckpt"
    HyenaDNAModel(HyenaDNAConfig(**TINY)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **BIG_BACKBONE}))
    body = (
        "from tune_ph.config import TrainConfig\nfrom tune_ph.model.regressor import build_model\n"
        "try:\n    build_model(TrainConfig(model=sys.argv[1], max_length=64))\n"
        "except Exception as err:\n    print('refused', type(err).__name__, err)\n"
    )
    peak, out = peak_of(body, str(folder))
    assert "refused InputError" in out and "its config declares 8" in out and "weights.ckpt" in out, out
    assert peak < PEAK_LIMIT, peak


@pytest.mark.parametrize("name", sorted(MAX_SIZES))
def test_every_size_like_field_has_an_upper_bound(name):
    with pytest.raises(ConfigError, match=rf"{name} must be at most"):
        TrainConfig(**{**CLUSTERS, name: MAX_SIZES[name] + 1})


@pytest.mark.parametrize("clusters", [40_000, 80_000_000, 10_000_000])
def test_a_checkpoint_declaring_huge_clusters_is_one_line(clusters, tmp_path):
    state = tiny_state(**CLUSTERS)
    state["train_config"]["clusters"] = clusters
    with pytest.raises(InputError, match=rf"best_model.pt.*clusters must be at most 16,384, got {clusters}"):
        load_checkpoint(save(tmp_path / "best_model.pt", state))


def test_a_head_that_does_not_fit_is_refused_before_it_is_built(monkeypatch):
    from hyena_dna import memory

    monkeypatch.setattr(memory, "available_memory", lambda: 256 << 20)
    cfg = TrainConfig(**{**CLUSTERS, "clusters": 16_384, "head": "mlp2"}, from_scratch=True, model_config=dict(TINY))
    with pytest.raises(ConfigError, match=r"mlp2 head on 16384 inputs needs about 2,0\d\d MiB to train"):
        build_model(cfg)


# ------------------------------------------------------------------------------------------------ silently wrong


def _nan_weight(state: dict) -> str:
    name = next(k for k, v in state["model"].items() if v.is_floating_point() and k.startswith("head"))
    state["model"][name] = torch.full_like(state["model"][name], math.nan)
    return "NaN or infinite"


def _inf_centroids(state: dict) -> str:
    state["model"]["aggregation.clusters.centroids"][0, 0] = math.inf
    return "NaN or infinite"


def _zero_centroids(state: dict) -> str:
    state["model"]["aggregation.clusters.centroids"].zero_()
    return "are all one point"


def _zero_projection(state: dict) -> str:
    state["model"]["aggregation.clusters.projection"].zero_()
    return "projection .* is all zeros"


def _zero_std(state: dict) -> str:
    state["target_std"] = 0.0
    return "target_std is 0.0, not a positive number"


def _nan_std(state: dict) -> str:
    state["target_std"] = math.nan
    return "target_std is nan, not a positive number"


def _long_max_length(state: dict) -> str:
    state["max_length"] = 4096
    state["train_config"]["max_length"] = None
    return "max_length 4096 is outside 8..64"


def _contradicting_max_length(state: dict) -> str:
    state["max_length"] = 32
    return "max_length 32 contradicts its train_config's max_length 64"


@pytest.mark.parametrize(
    "damage",
    [
        _nan_weight,
        _inf_centroids,
        _zero_centroids,
        _zero_projection,
        _zero_std,
        _nan_std,
        _long_max_length,
        _contradicting_max_length,
    ],
)
def test_a_checkpoint_that_would_predict_silently_wrong_is_refused(damage, tmp_path):
    state = tiny_state(**CLUSTERS)
    load_checkpoint(save(tmp_path / "good.pt", state))  # what it is made from loads
    expected = damage(state)
    with pytest.raises(InputError, match=rf"best_model.pt: its .*{expected}"):
        load_checkpoint(save(tmp_path / "best_model.pt", state))


# ------------------------------------------------------------------------------------------------ split.json


def _run_with_split(tmp_path: Path, change=None) -> tuple[Path, dict]:
    """A run folder: a tiny demo checkpoint trained on the demo's config split, and its split.json (changed)."""
    from tune_ph.data import sources, tokens
    from tune_ph.data.split import SplitRecord, split_for

    run = tmp_path / "run"
    run.mkdir()
    state = tiny_state()
    df = sources.load_samples("demo")
    state["dataset_fingerprint"] = tokens.fingerprint(df)
    save(run / files.MODEL_FILE, state)
    cfg = TrainConfig.from_saved(state["train_config"])
    record = SplitRecord.of(split_for(df, cfg), cfg).to_dict()
    if change is not None:
        change(record)
    (run / files.SPLIT_FILE).write_text(json.dumps(record))
    return run, record


def _swap(record: dict) -> None:
    record["train"], record["test"] = record["test"], record["train"]


def _overlap(record: dict) -> None:
    record["test"] = record["test"] + record["train"][:3]


def _uncovered(record: dict) -> None:
    record["train"] = record["train"][5:]


def _moved(record: dict) -> None:
    record["train"], record["test"] = record["train"][1:] + record["test"][:1], record["test"][1:] + record["train"][:1]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_swap, "its train part is not what its split_seed 42"),
        (_overlap, "is in both train and test; the parts must be disjoint"),
        (_uncovered, "its parts do not cover the 300 samples"),
        (_moved, "its train part is not what its split_seed 42"),
    ],
)
def test_a_split_json_that_is_not_its_runs_split_is_one_line(change, expected, tmp_path, capsys):
    from tune_ph import cli
    from tune_ph.commands import evaluate as evaluate_cli
    from tune_ph.commands import predict as predict_cli

    run, _ = _run_with_split(tmp_path, change)
    argv = ["--checkpoint", str(run), "--dataset", "demo", "--split", "test", "--output", str(tmp_path / "p.csv")]
    assert predict_cli.main([*argv, "--device", "cpu"]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "split.json" in err and expected in err, err
    assert evaluate_cli.main(["--checkpoint", str(run / files.MODEL_FILE), "--device", "cpu"]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "p.csv").exists() and not (run / files.METRICS_FILE).exists()


def test_a_deeply_nested_split_json_is_one_line(tmp_path):
    from tune_ph.training.checkpoints import read_split

    path = tmp_path / files.SPLIT_FILE
    path.write_text('{"train": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(InputError, match=r"split.json: not a split file \(nested too deeply\)"):
        read_split(path)


def test_evaluate_follows_split_json(tmp_path):
    from tune_ph.report.evaluate import evaluate_checkpoint

    def custom(record: dict) -> None:  # an older run's ids-only file: not what the config draws, nothing to redraw
        ids = sorted(record["train"] + record["val"] + record["test"])
        record.clear()
        record.update(train=ids[37:], val=ids[7:37], test=ids[:7])

    run, record = _run_with_split(tmp_path, custom)
    metrics = evaluate_checkpoint(run / files.MODEL_FILE, device="cpu")
    assert metrics["test_n_samples"] == 7
    table = __import__("pandas").read_csv(run / files.PREDICTIONS_FILE)
    assert sorted(table["sample_id"]) == record["test"]


# ------------------------------------------------------------------------------------------------ links


def test_evaluate_never_writes_through_a_link_in_the_run_folder(tmp_path):
    from tune_ph.report.evaluate import evaluate_checkpoint

    run, _ = _run_with_split(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in (files.RESIDUALS_FILE, files.METRICS_FILE, files.PREDICTIONS_FILE):
        (outside / name).write_text("someone else's file")
        (run / name).symlink_to(outside / name)
    evaluate_checkpoint(run / files.MODEL_FILE, device="cpu")
    for name in (files.RESIDUALS_FILE, files.METRICS_FILE, files.PREDICTIONS_FILE):
        assert (outside / name).read_text() == "someone else's file"
        assert not (run / name).is_symlink() and (run / name).stat().st_size > 0


def test_a_linked_split_json_is_never_read(tmp_path):
    from tune_ph.training.checkpoints import read_split

    run, record = _run_with_split(tmp_path)
    (tmp_path / "elsewhere.json").write_text(json.dumps(record))
    (run / files.SPLIT_FILE).unlink()
    (run / files.SPLIT_FILE).symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(InputError, match="split.json: not a split file .*is a link"):
        read_split(run / files.SPLIT_FILE)


def _experiment_with_links(tmp_path: Path) -> tuple[Path, Path]:
    from tune_ph.report import results

    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir()
    folder = tmp_path / "exp"
    trial = folder / "trial_a1"
    trial.mkdir(parents=True)
    results.save_settings(folder, {"name": "exp"})
    row = {"epoch": 1, "training_iteration": 1, "val_loss": 0.5, "checkpoint_dir_name": "checkpoint_000000"}
    (secret_dir / "result.json").write_text(json.dumps({**row, "val_loss": 0.1, "stolen": 1}) + "\n")
    (secret_dir / "params.json").write_text(json.dumps({"stolen": "password"}))
    (secret_dir / "error.txt").write_text("stolen: password")
    for name in ("result.json", "params.json", "error.txt"):
        (trial / name).symlink_to(secret_dir / name)
    state = trial / "checkpoint_000000" / files.TRIAL_STATE_FILE
    state.parent.mkdir()
    save(state, tiny_state())
    return folder, secret_dir


def test_trial_files_linked_outside_are_never_read(tmp_path, caplog):
    import logging

    from tune_ph.report import results

    folder, _ = _experiment_with_links(tmp_path)
    with caplog.at_level(logging.WARNING):
        (trial,) = results.Experiment(str(folder)).trials()
    assert trial.config == {} and trial.history.empty and "stolen" not in trial.error
    assert "is a link" in caplog.text


def test_export_replaces_linked_best_folders_without_touching_their_targets(tmp_path, capsys):
    from tune_ph import cli
    from tune_ph.commands import export as export_cli

    folder, _ = _experiment_with_links(tmp_path)
    trial = folder / "trial_a1"
    for name in ("result.json", "params.json", "error.txt"):
        (trial / name).unlink()
    row = {"epoch": 1, "training_iteration": 1, "val_loss": 0.5, "checkpoint_dir_name": "checkpoint_000000"}
    (trial / "result.json").write_text(json.dumps(row) + "\n")
    (trial / "params.json").write_text("{}")
    targets = tmp_path / "target_best", tmp_path / "target_new"
    for target, link in zip(targets, (files.BEST_DIR, f".{files.BEST_DIR}.new")):
        target.mkdir()
        (target / "keep.txt").write_text("mine")
        (folder / link).symlink_to(target)
    assert export_cli.main([str(folder), "--no-report", "--no-baseline", "--device", "cpu"]) == cli.EXIT_OK
    for target in targets:
        assert (target / "keep.txt").read_text() == "mine" and sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    best = folder / files.BEST_DIR
    assert not best.is_symlink() and (best / files.MODEL_FILE).is_file()


# ------------------------------------------------------------------------------------------------ Ray's start


def test_under_an_address_space_limit_the_object_store_fits_or_the_failure_is_one_line(monkeypatch):
    import ray

    from tune_ph.search import cluster

    calls = []

    def fake_init(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("node timed out during startup\n  (Ray's long advice)")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(cluster, "_address_limit", lambda: 4 << 30)
    with pytest.raises(SetupError) as err:
        cluster.init_ray(num_cpus=1)
    message = str(err.value)
    assert "address-space limit (ulimit -v: 4,096 MiB)" in message and "node timed out" in message, message
    assert "\n" not in message
    assert calls[0]["object_store_memory"] == 1 << 30  # a quarter of the limit: the raylet maps it whole
    monkeypatch.setattr(cluster, "_address_limit", lambda: None)
    with pytest.raises(RuntimeError, match="node timed out"):  # no limit: Ray's own error, whatever it is
        cluster.init_ray(num_cpus=1)
    assert "object_store_memory" not in calls[1]


@pytest.fixture
def taken_port():
    """A port held by someone else (as another Ray's dashboard holds 8265)."""
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    yield holder.getsockname()[1]
    holder.close()


def test_a_taken_dashboard_port_is_one_line_before_anything_is_written(taken_port, tmp_path, capsys):
    from helpers import tiny_space, write_space

    from tune_ph import cli
    from tune_ph.commands import search as search_cli
    from tune_ph.search import cluster

    try:
        cluster.require_dashboard()
    except SetupError:
        pytest.skip("Ray's dashboard packages are not installed")
    out = tmp_path / "experiments"
    argv = ["--space", str(write_space(tmp_path, tiny_space())), "--output-dir", str(out), "--verbose", "0"]
    assert search_cli.main([*argv, "--dashboard", "--dashboard-port", str(taken_port)]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err == f"error: --dashboard-port {taken_port}: the port is in use on 127.0.0.1 (another Ray?); " + (
        "pick another, or 0 for a free one\n"
    ), err
    assert not out.exists()


def test_the_default_dashboard_port_taken_picks_a_free_one(taken_port, monkeypatch, capsys):
    from tune_ph.search import cluster

    monkeypatch.setattr(cluster, "DEFAULT_DASHBOARD_PORT", taken_port)
    chosen = cluster.dashboard_port(None, None)
    assert chosen != taken_port and cluster.port_free("127.0.0.1", chosen)
    assert f"port {taken_port} is in use (another Ray?); the dashboard uses port {chosen}" in capsys.readouterr().out


def test_the_dashboard_agent_port_taken_moves_ours(taken_port, monkeypatch):
    from ray._private import parameter

    from tune_ph.search import cluster

    monkeypatch.setattr(cluster, "_AGENT_PORT", taken_port)
    with cluster._agent_port():
        moved = parameter.RayParams().dashboard_agent_listen_port
    assert moved != taken_port and parameter.RayParams().dashboard_agent_listen_port == 52365

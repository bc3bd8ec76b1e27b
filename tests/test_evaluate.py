"""Tests for the training CLI's run folder and for re-evaluating a checkpoint from its saved config."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from hyena_dna import HyenaDNAConfig
from tune_ph.commands import evaluate as evaluate_cli
from tune_ph.commands import train as train_cli
from tune_ph.model.regressor import load_checkpoint
from tune_ph.report.evaluate import evaluate_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_LENGTH = 128


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One real CLI run on the demo data with a tiny from-scratch model (a local config.json folder)."""
    root = tmp_path_factory.mktemp("cli")
    model_dir = root / "tiny-model"
    model_dir.mkdir()
    HyenaDNAConfig(d_model=32, n_layer=1, d_inner=64, l_max=MAX_LENGTH + 2).to_json(model_dir / "config.json")
    torch.set_num_threads(1)
    code = train_cli.main(
        [
            "--dataset",
            "demo",
            "--model",
            str(model_dir),
            "--from-scratch",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--learning-rate",
            "1e-3",
            "--max-sets",
            "2",
            "--head",
            "mlp2_ln",
            "--pooling",
            "pool",
            "--output-dir",
            str(root / "run"),
            "--cache-dir",
            str(root / "cache"),
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    return root / "run"


@pytest.mark.slow  # uses the CLI training run
def test_run_folder_has_every_output(run_dir: Path) -> None:
    for name in (
        "best_model.pt",
        "config.json",
        "training_log.json",
        "split.json",
        "test_predictions.csv",
        "metrics.json",
        "residuals.png",
    ):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob("*.tmp"))
    log = json.loads((run_dir / "training_log.json").read_text())
    assert [row["epoch"] for row in log] == [1, 2]
    assert {"train_loss", "val_loss", "val_rmse", "val_mae", "val_r2"} <= set(log[0])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train_config"]["head"] == "mlp2_ln" and config["train_config"]["max_sets"] == 2
    assert config["model_config"]["d_model"] == 32
    split = json.loads((run_dir / "split.json").read_text())
    assert {"train", "val", "test", "split_by", "split_seed", "studies"} <= set(split) and split["split_by"] == "none"
    assert not set(split["train"]) & set(split["test"])
    assert (run_dir / "residuals.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # uses the CLI training run
def test_predictions_csv_columns_and_values(run_dir: Path) -> None:
    df = pd.read_csv(run_dir / "test_predictions.csv")
    required = [
        "sample_id",
        "study_name",
        "true_ph",
        "predicted_ph_mean",
        "predicted_ph_sd",
        "n_sets",
        "residual_mean",
        "environment",
    ]
    assert list(df.columns) == required
    split = json.loads((run_dir / "split.json").read_text())
    assert sorted(df["sample_id"]) == sorted(split["test"])
    # One prediction per sample, from all of its sets (the fixture's run packs at most 2 per sample).
    assert df["n_sets"].between(1, 2).all() and df["n_sets"].max() == 2
    assert (df["predicted_ph_sd"].fillna(0) >= 0).all()
    assert ((df["true_ph"] - df["predicted_ph_mean"]) - df["residual_mean"]).abs().max() < 1e-6
    assert df["true_ph"].between(0, 14).all()


@pytest.mark.slow  # uses the CLI training run
def test_checkpoint_loads_weights_only_and_rebuilds(run_dir: Path) -> None:
    state = torch.load(run_dir / "best_model.pt", weights_only=True)
    log = json.loads((run_dir / "training_log.json").read_text())
    best = min(log, key=lambda row: row["val_loss"])
    assert state["epoch"] == best["epoch"]
    assert state["train_config"]["dataset"] == "demo"
    model, loaded = load_checkpoint(run_dir / "best_model.pt")
    assert not model.training
    assert loaded.target_std > 0 and loaded.epoch == best["epoch"]
    assert model.head.pooling == "pool" and model.head.architecture == "mlp2_ln"


@pytest.mark.slow  # uses the CLI training run
def test_evaluate_reproduces_saved_metrics(run_dir: Path, tmp_path: Path) -> None:
    saved = json.loads((run_dir / "metrics.json").read_text())
    # Rebuilt from the checkpoint's config alone: dataset source, max length, sets, split.
    metrics = evaluate_checkpoint(run_dir / "best_model.pt", output_dir=tmp_path, device="cpu")
    for key in ("test_mse", "test_rmse", "test_mae", "test_r2", "test_n_samples"):
        assert metrics[key] == pytest.approx(saved[key], rel=1e-5, abs=1e-6), key
    again = pd.read_csv(tmp_path / "test_predictions.csv")
    first = pd.read_csv(run_dir / "test_predictions.csv")
    assert list(again["sample_id"]) == list(first["sample_id"])
    assert (again["predicted_ph_mean"] - first["predicted_ph_mean"]).abs().max() < 1e-4
    assert (tmp_path / "residuals.png").is_file() and (tmp_path / "metrics.json").is_file()


@pytest.mark.slow  # uses the CLI training run
def test_evaluate_cli(run_dir: Path, tmp_path: Path, capsys) -> None:
    assert (
        evaluate_cli.main(
            ["--checkpoint", str(run_dir / "best_model.pt"), "--output-dir", str(tmp_path), "--device", "cpu"]
        )
        == 0
    )
    assert "test_r2" in json.loads(capsys.readouterr().out)
    assert evaluate_cli.main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a tune_ph checkpoint"):
        load_checkpoint(path)


@pytest.mark.slow  # uses the CLI training run
def test_mismatched_dataset_is_refused(run_dir: Path) -> None:
    from tune_ph.data import sources

    other = sources.prepare("demo", max_length=64, max_sets=2, cache_dir=run_dir.parent / "cache")
    with pytest.raises(ValueError, match="max_length=64"):
        evaluate_checkpoint(run_dir / "best_model.pt", dataset=other, device="cpu")


def test_plot_residuals_without_environment_and_bad_input(tmp_path: Path) -> None:
    from tune_ph.report.plots import plot_residuals

    df = pd.DataFrame({"true_ph": [5.0, 7.0, 8.5], "residual_mean": [0.2, -0.1, 0.4]})
    assert plot_residuals(df, tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="residual_mean"):
        plot_residuals(df.drop(columns="residual_mean"), tmp_path / "bad.png")


def test_evaluate_refuses_an_unknown_device(tmp_path, capsys):
    assert evaluate_cli.main(["--checkpoint", str(tmp_path / "x.pt"), "--device", "gpu"]) == 2
    assert "device must be auto, cpu or cuda" in capsys.readouterr().err


def test_training_refuses_no_validation_split(tmp_path, capsys):
    code = train_cli.main(["--dataset", "demo", "--from-scratch", "--val-fraction", "0", "--output-dir", str(tmp_path)])
    assert code == 2 and "val_fraction 0 leaves no validation samples" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())

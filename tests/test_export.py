"""Export from a finished experiment: the trial with the lowest val loss at any epoch, its best checkpoint, tested."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from tune_ph.commands import export as export_cli

pytest.importorskip("ray")


def _all_epochs(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for trial_id, path in zip(table["trial_id"], table["path"]):
        for line in Path(path, "result.json").read_text().splitlines():
            r = json.loads(line)
            rows.append({"trial_id": trial_id, "epoch": r["epoch"], "val_loss": r["val_loss"]})
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_export_cli_from_finished_experiment(finished_experiment, tmp_path):

    # A copy, so the shared experiment stays as the search left it.
    folder = tmp_path / "tiny"
    shutil.copytree(finished_experiment["folder"], folder)
    shutil.rmtree(folder / "best")
    (folder / "trials.csv").unlink()
    (folder / "report.html").unlink()

    # A moved experiment folder still exports: Ray's state is read relative to the folder.
    assert export_cli.main([str(folder)]) == 0
    table = pd.read_csv(folder / "trials.csv")
    assert table["path"].str.startswith(str(folder)).all()
    epochs = _all_epochs(table)
    best = epochs.loc[epochs["val_loss"].idxmin()]
    info = json.loads((folder / "best" / "config.json").read_text())
    # Selection by each trial's best epoch (not its last) over all trials.
    assert info["trial_id"] == best["trial_id"] and info["epoch"] == best["epoch"]
    assert info["val_metrics"]["val_loss"] == pytest.approx(best["val_loss"])
    state = torch.load(folder / "best" / "best_model.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == best["epoch"] and "model" in state and state["train_config"]["max_length"] == 128
    metrics = json.loads((folder / "best" / "metrics.json").read_text())
    assert {"test_r2", "test_rmse", "test_mae"} <= set(metrics)
    preds = pd.read_csv(folder / "best" / "test_predictions.csv")
    assert {"sample_id", "true_ph", "predicted_ph_mean"} <= set(preds.columns) and len(preds) > 0
    assert (folder / "report.html").is_file()


def test_export_of_a_folder_without_results(tmp_path):

    (tmp_path / "empty").mkdir()
    assert export_cli.main([str(tmp_path / "empty")]) == 2


class _Payload:
    """Unpickling this creates `marker`: a stand-in for a received file that runs code when unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.slow
def test_exporting_a_received_folder_never_unpickles_it(finished_experiment, tmp_path):
    """A copied experiment with a crafted error.pkl, params.pkl and a pickled value in Ray's state exports
    normally, and none of the payloads runs (reading is JSON, CSV and text only)."""
    import pickle

    folder = tmp_path / "received"
    shutil.copytree(finished_experiment["folder"], folder)
    shutil.rmtree(folder / "best")
    markers = {name: tmp_path / f"ran-{name}" for name in ("error", "params", "state")}
    trial_dir = next(folder.glob("trial_*"))
    (trial_dir / "error.pkl").write_bytes(pickle.dumps(_Payload(markers["error"])))
    (trial_dir / "params.pkl").write_bytes(pickle.dumps(_Payload(markers["params"])))
    state_file = sorted(folder.glob("experiment_state-*.json"))[-1]
    state = json.loads(state_file.read_text())
    trial = json.loads(state["trial_data"][0][0])
    trial["storage"] = {"_type": "CLOUDPICKLE_FALLBACK", "value": pickle.dumps(_Payload(markers["state"])).hex()}
    state["trial_data"][0][0] = json.dumps(trial)
    state_file.write_text(json.dumps(state))

    assert export_cli.main([str(folder), "--device", "cpu"]) == 0
    assert not [name for name, marker in markers.items() if marker.exists()]
    assert (folder / "best" / "metrics.json").is_file() and (folder / "report.html").is_file()
    assert set(pd.read_csv(folder / "trials.csv")["status"]) == {"TERMINATED"}

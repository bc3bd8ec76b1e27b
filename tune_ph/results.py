"""Read an experiment folder: its file names, saved settings, trials table and best checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from ray.tune import ExperimentAnalysis, ResultGrid

from tune_ph.config import METRIC_MODES, is_better
from tune_ph.errors import InputError
from tune_ph.files import write_csv, write_json

# The files of an experiment folder (experiments/<name>/).
SETTINGS_FILE = "search_settings.json"  # the effective search settings, re-read by --resume
STORAGE_KEY = "_storage"  # in SETTINGS_FILE: the --storage the experiment was started with
STUDY_FILE = "optuna_study.db"
TRIALS_FILE = "trials.csv"
REPORT_FILE = "report.html"
BEST_DIR = "best"
STATE_FILE = "state.pt"  # in each Ray checkpoint folder: the state train.fit's state_fn returns
# What a trial reports every epoch (train.fit's metrics).
REPORTED = ("epoch", "train_loss", "val_loss", "val_rmse", "val_mae", "val_r2", "val_mse", "lr", "epoch_seconds")
VAL_METRICS = ("val_loss", "val_rmse", "val_mae", "val_r2", "train_loss")


def load_settings(folder: Path) -> dict[str, Any]:
    """The settings saved with an experiment ({} when there are none)."""
    path = Path(folder) / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(
            f"{path}: not valid JSON ({err}); the file is damaged — restore it, or start the "
            "experiment again under another --name"
        ) from None


def save_settings(folder: Path, settings: dict[str, Any]) -> Path:
    return write_json(Path(folder) / SETTINGS_FILE, settings)


def experiment_path(folder: Path, storage: str | None) -> str:
    """Where Ray keeps the experiment (trial folders, experiment state): under --storage, or the folder itself."""
    if storage:
        return storage.rstrip("/") + "/" + Path(folder).name
    return str(Path(folder).resolve())


def load_analysis(path: str) -> ExperimentAnalysis:
    """Ray's view of the experiment (works without a running Ray)."""
    return ExperimentAnalysis(path)


def _error_text(trial: Any) -> str:
    """The last line of a failed trial's error.txt (plain text: the error.pkl beside it is never unpickled)."""
    if trial.status != "ERROR":
        return ""
    text = ""
    error_file = Path(trial.path or "", "error.txt")
    if error_file.is_file():
        text = error_file.read_text(errors="replace")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "error (no message recorded)"


def trials_table(analysis: ExperimentAnalysis, metric: str = "val_loss") -> pd.DataFrame:
    """One row per trial: searched config, status, epochs run, each trial's BEST val metrics, error."""
    rows = []
    frames = analysis.trial_dataframes
    pick = "idxmin" if METRIC_MODES[metric] == "min" else "idxmax"
    for trial in analysis.trials:
        row: dict[str, Any] = {"trial_id": trial.trial_id, "status": trial.status}
        for key, value in sorted(trial.config.items()):
            if "__" not in key:  # Optuna's per-model names (batch_size__<model>) repeat a field's value
                # A mapping (model_config) as one JSON cell: comparable, and readable in trials.csv.
                row[f"config/{key}"] = json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
        df = frames.get(trial.trial_id)
        if df is not None and metric in df and df[metric].notna().any():
            best = df.loc[getattr(df[metric], pick)()]
            row["epochs_run"] = int(df["training_iteration"].max())
            row["best_epoch"] = int(best.get("epoch", best["training_iteration"]))
            for m in VAL_METRICS:
                row[f"best_{m}"] = float(best[m]) if m in best else math.nan
        else:
            row["epochs_run"] = 0
        row["error"] = _error_text(trial)
        row["path"] = trial.path
        rows.append(row)
    table = pd.DataFrame(rows)
    key = f"best_{metric}"
    if key in table:
        ascending = METRIC_MODES[metric] == "min"
        table = table.sort_values(key, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)
    return table


def write_trials_table(path: str, folder: Path, metric: str = "val_loss") -> pd.DataFrame:
    """trials.csv in the local experiment folder."""
    table = trials_table(load_analysis(path), metric)
    write_csv(Path(folder) / TRIALS_FILE, table)
    return table


def best_checkpoint(analysis: ExperimentAnalysis, metric: str = "val_loss") -> tuple[Any, Any, dict]:
    """(trial, checkpoint, metrics) of the best `metric` over every kept checkpoint of every trial.

    The search keeps each trial's checkpoints ranked by the same metric, so its best epoch is among them.
    """
    grid = ResultGrid(analysis)
    best: tuple[float, Any, Any, dict] | None = None
    for trial, result in zip(analysis.trials, grid):
        for checkpoint, metrics in result.best_checkpoints:
            value = metrics.get(metric)
            if value is None or not math.isfinite(value):
                continue
            if best is None or is_better(metric, value, best[0]):
                best = (value, trial, checkpoint, metrics)
    if best is None:
        raise RuntimeError(f"{analysis.experiment_path}: no trial has a checkpoint with a finite {metric} yet")
    return best[1], best[2], best[3]


def print_summary(table: pd.DataFrame, metric: str = "val_loss") -> None:
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    print(f"\n{len(table)} trial(s): " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())))
    key = f"best_{metric}"
    shown = [c for c in table.columns if c.startswith("config/") and table[c].nunique(dropna=False) > 1]
    metric_cols = [c for c in dict.fromkeys((key, "best_val_loss", "best_val_rmse", "best_val_r2")) if c in table]
    cols = ["trial_id", "status", "epochs_run", *metric_cols, *shown]
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table[cols].head(10).rename(columns=lambda c: c.removeprefix("config/")).to_string(index=False))
    failed = table[table["status"] == "ERROR"]
    for _, row in failed.iterrows():
        print(f"  failed {row['trial_id']}: {row['error']}")

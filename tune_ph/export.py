"""Read a finished or interrupted experiment: trials.csv, the best trial's best checkpoint -> best/, test evaluation."""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger("tune_ph.export")

STATE_FILE = "state.pt"  # the trainable's checkpoint file (kept in sync with tune_ph.trainable)
METRICS = ("val_loss", "val_rmse", "val_mae", "val_r2", "train_loss")
HIDDEN_CONFIG = ("model_config", "max_length_per_model")


def load_analysis(path: str) -> Any:
    """Ray's view of the experiment (works without a running Ray)."""
    from ray.tune import ExperimentAnalysis

    return ExperimentAnalysis(path)


def _error_text(trial: Any) -> str:
    if trial.status != "ERROR":
        return ""
    try:
        err = trial.get_pickled_error() or trial.get_error()
    except Exception:  # noqa: BLE001 - an unreadable error file should not hide the table
        err = None
    text = str(err) if err else "error (no message recorded)"
    # The last line of a traceback says what went wrong; the full text stays in the trial's error.txt.
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else text[:300]


def trials_table(analysis: Any, metric: str = "val_loss") -> pd.DataFrame:
    """One row per trial: searched config, status, epochs run, each trial's BEST val metrics, error."""
    rows = []
    frames = analysis.trial_dataframes
    for trial in analysis.trials:
        row: dict[str, Any] = {"trial_id": trial.trial_id, "status": trial.status}
        for key, value in sorted(trial.config.items()):
            if key not in HIDDEN_CONFIG and "__" not in key:
                row[f"config/{key}"] = value
        df = frames.get(trial.trial_id)
        if df is not None and metric in df and df[metric].notna().any():
            best = df.loc[df[metric].idxmin()]
            row["epochs_run"] = int(df["training_iteration"].max())
            row["best_epoch"] = int(best.get("epoch", best["training_iteration"]))
            for m in METRICS:
                row[f"best_{m}"] = float(best[m]) if m in best else math.nan
        else:
            row["epochs_run"] = 0
        row["error"] = _error_text(trial)
        row["path"] = trial.path
        rows.append(row)
    table = pd.DataFrame(rows)
    key = f"best_{metric}"
    if key in table:
        table = table.sort_values(key, na_position="last", kind="stable").reset_index(drop=True)
    return table


def write_trials_table(path: str, folder: Path, metric: str = "val_loss") -> pd.DataFrame:
    """trials.csv in the local experiment folder."""
    table = trials_table(load_analysis(path), metric)
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "trials.csv", index=False)
    return table


def print_summary(table: pd.DataFrame, metric: str = "val_loss") -> None:
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    print(f"\n{len(table)} trial(s): " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())))
    key = f"best_{metric}"
    shown = [c for c in table.columns if c.startswith("config/") and table[c].nunique(dropna=False) > 1]
    cols = ["trial_id", "status", "epochs_run", *[c for c in (key, "best_val_rmse", "best_val_r2") if c in table],
            *shown]
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table[cols].head(10).rename(columns=lambda c: c.removeprefix("config/")).to_string(index=False))
    failed = table[table["status"] == "ERROR"]
    for _, row in failed.iterrows():
        print(f"  failed {row['trial_id']}: {row['error']}")


def best_checkpoint(analysis: Any, metric: str = "val_loss") -> tuple[Any, Any, dict]:
    """(trial, checkpoint, metrics) of the lowest `metric` over every kept checkpoint of every trial."""
    from ray.tune import ResultGrid

    grid = ResultGrid(analysis)
    best: tuple[float, Any, Any, dict] | None = None
    for trial, result in zip(analysis.trials, grid):
        for checkpoint, metrics in result.best_checkpoints:
            value = metrics.get(metric)
            if value is None or not math.isfinite(value):
                continue
            if best is None or value < best[0]:
                best = (value, trial, checkpoint, metrics)
    if best is None:
        raise RuntimeError(f"{analysis.experiment_path}: no trial has a checkpoint with a finite {metric} yet")
    return best[1], best[2], best[3]


def export_best(path: str, folder: Path, metric: str = "val_loss", datasets: dict[int, Any] | None = None,
                device: str = "auto") -> dict[str, Any]:
    """Copy the best checkpoint to folder/best/ (best_model.pt + config.json) and evaluate it on the test split."""
    import torch

    analysis = load_analysis(path)
    trial, checkpoint, metrics = best_checkpoint(analysis, metric)
    out = folder / "best"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with checkpoint.as_directory() as ckpt_dir:
        shutil.copyfile(Path(ckpt_dir) / STATE_FILE, out / "best_model.pt")
    state = torch.load(out / "best_model.pt", map_location="cpu", weights_only=True)
    info = {
        "trial_id": trial.trial_id,
        "trial_path": trial.path,
        "epoch": int(state.get("epoch", metrics.get("epoch", 0))),
        "selected_by": metric,
        "val_metrics": {k: metrics[k] for k in METRICS if k in metrics},
        "train_config": state.get("train_config"),
        "model_config": state.get("model_config"),
    }
    (out / "config.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    log.info("best trial %s epoch %d (%s %.4f) -> %s", trial.trial_id, info["epoch"], metric, metrics[metric], out)

    from tune_ph.evaluate import evaluate_checkpoint

    dataset = None
    if datasets:
        dataset = datasets.get(int(state.get("max_length", 0)))
    test = evaluate_checkpoint(out / "best_model.pt", dataset=dataset, output_dir=out, device=device)
    return test


def write_report(path: str, folder: Path) -> Path | None:
    """report.html with learning curves, val loss by hyperparameter and parameter importances."""
    try:
        from tune_ph.experiment_report import write_report as _write
    except ImportError:
        return None
    try:
        return _write(path, folder)
    except Exception as err:  # noqa: BLE001 - the report is a convenience; the results are already saved
        log.warning("could not write the experiment report: %s", err)
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tune_ph.export",
        description="Write trials.csv, export the best trial's best checkpoint to EXPERIMENT/best/ and test it.",
    )
    p.add_argument("experiment", help="experiment folder (e.g. experiments/quick)")
    p.add_argument("--storage-path", help="where Ray stored the trials if not in the folder (the --storage used)")
    p.add_argument("--metric", default=None, help="selection metric (default: the search's, usually val_loss)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-report", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    folder = Path(args.experiment)
    settings_file = folder / "search_settings.json"
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    metric = args.metric or settings.get("search", {}).get("metric", "val_loss")
    storage = args.storage_path or settings.get("_storage")
    path = storage.rstrip("/") + "/" + folder.name if storage else str(folder.resolve())
    try:
        table = write_trials_table(path, folder, metric)
    except ValueError as err:
        print(f"error: {folder}: not a Ray Tune experiment ({err})", file=sys.stderr)
        return 2
    print_summary(table, metric)
    try:
        test = export_best(path, folder, metric, device=args.device)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"exported to {folder / 'best'}: " + ", ".join(f"{k} {v:.3f}" for k, v in test.items()
                                                        if isinstance(v, float)))
    if not args.no_report:
        report = write_report(path, folder)
        if report:
            print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

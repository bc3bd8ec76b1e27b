"""Plots and report.html: a run's test residuals; an experiment's learning curves, hyperparameters, importances."""

from __future__ import annotations

import base64
import html
import io
import math
import warnings
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import optuna
import pandas as pd

from tune_ph.files import write_text

matplotlib.use("Agg")  # files only: runs happen on headless machines and inside Ray workers


def plot_residuals(df: pd.DataFrame, path: str | Path, *, title: str | None = None) -> Path:
    """Scatter residual_mean against true_ph, one colour per environment; writes and returns path."""
    for column in ("true_ph", "residual_mean"):
        if column not in df.columns:
            raise ValueError(f"plot_residuals needs a {column!r} column; got columns {list(df.columns)}")
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        groups = df.groupby("environment", sort=True) if "environment" in df.columns else [("all", df)]
        for name, group in groups:
            ax.scatter(group["true_ph"], group["residual_mean"], s=18, alpha=0.8, label=f"{name} ({len(group)})")
        ax.axhline(0.0, color="0.4", linewidth=0.8, linestyle="--")
        ax.set_xlabel("true pH")
        ax.set_ylabel("residual (true − predicted pH)")
        ax.set_title(title or f"Test residuals ({len(df)} samples)")
        ax.legend(title="environment", fontsize="small", loc="best", frameon=False)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def _figure_html(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def learning_curves(frames: dict[str, pd.DataFrame]) -> Any:
    """val_loss (and train_loss, dashed) per epoch for every trial."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (trial_id, df) in enumerate(sorted(frames.items())):
        if df is None or "val_loss" not in df or df.empty:
            continue
        color = plt.cm.tab20(i % 20)
        ax.plot(df["training_iteration"], df["val_loss"], color=color, marker="o", ms=3, label=trial_id)
        if "train_loss" in df:
            ax.plot(df["training_iteration"], df["train_loss"], color=color, ls="--", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (standardised pH)")
    ax.set_title("learning curves: val (solid), train (dashed)")
    if len(frames) <= 20:
        ax.legend(fontsize=7, ncol=2)
    return fig


def loss_by_parameter(
    table: pd.DataFrame, metric: str = "best_val_loss", log_scale: frozenset[str] | set[str] = frozenset()
) -> Any | None:
    """One panel per searched hyperparameter: each trial's best val loss against its value."""
    params = [c for c in table.columns if c.startswith("config/") and table[c].nunique(dropna=True) > 1]
    if not params or metric not in table:
        return None
    cols = min(3, len(params))
    rows = math.ceil(len(params) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, col in zip(axes.flat, params):
        data = table[[col, metric]].dropna()
        values = data[col]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            ax.scatter(values, data[metric], s=18)
            if col.removeprefix("config/") in log_scale:
                ax.set_xscale("log")
        else:
            labels = sorted(values.astype(str).unique())
            pos = {v: i for i, v in enumerate(labels)}
            ax.scatter([pos[v] for v in values.astype(str)], data[metric], s=18)
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
        ax.set_title(col.removeprefix("config/"), fontsize=9)
        ax.set_ylabel(metric, fontsize=8)
    for ax in list(axes.flat)[len(params) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def parameter_importances(study_db: Path, study_name: str | None = None) -> tuple[dict[str, float] | None, str]:
    """Optuna parameter importances from the stored study, or None and the reason they cannot be computed."""
    if not study_db.is_file():
        return None, f"no Optuna study at {study_db}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{study_db.resolve()}"
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if not names:
        return None, "the Optuna study is empty"
    study = optuna.load_study(study_name=study_name if study_name in names else names[0], storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return None, f"only {len(complete)} completed trial(s); importances need at least 2"
    try:
        with warnings.catch_warnings():
            # Small searches always trigger "few trials per regime" warnings; the report says how many trials.
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(study), ""
    except (RuntimeError, ValueError, ZeroDivisionError) as err:
        # e.g. every completed trial used the same value of each parameter
        return None, f"Optuna could not compute importances: {err}"


def importance_figure(importances: dict[str, float]) -> Any:
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1))
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (Optuna default evaluator)")
    ax.set_title("Optuna parameter importances")
    return fig


def loguniform_params(settings: dict[str, Any]) -> set[str]:
    """Parameters searched on a log scale (plotted on one too), from an experiment's saved settings."""
    space = settings.get("space") or {}
    return {k for k, v in space.items() if isinstance(v, dict) and "loguniform" in v}


def write_report(
    folder: Path,
    table: pd.DataFrame,
    frames: dict[str, pd.DataFrame],
    *,
    settings: dict[str, Any],
    study_db: Path,
    metric: str = "val_loss",
) -> Path:
    """Write folder/report.html (images inline, so the file is self-contained)."""
    folder = Path(folder)
    parts = [
        f"<h1>Experiment {html.escape(folder.name)}</h1>",
        f"<p>{len(table)} trials; selection by each trial's best {html.escape(metric)}.</p>",
    ]
    best_dir = folder / "best"
    if (best_dir / "metrics.json").is_file():
        test = html.escape((best_dir / "metrics.json").read_text())
        parts.append(f"<h2>Best trial, test split</h2><pre>{test}</pre>")
    parts.append("<h2>Learning curves</h2>" + _figure_html(learning_curves(frames)))
    fig = loss_by_parameter(table, metric=f"best_{metric}", log_scale=loguniform_params(settings))
    if fig is not None:
        parts.append(f"<h2>Best {html.escape(metric)} by hyperparameter</h2>" + _figure_html(fig))
    importances, why = parameter_importances(study_db, folder.name)
    parts.append("<h2>Parameter importances</h2>")
    if importances:
        parts.append(_figure_html(importance_figure(importances)))
    else:
        parts.append(f"<p>Not available: {html.escape(why)}.</p>")
    shown = [c for c in table.columns if c != "path"]
    parts.append("<h2>Trials</h2>" + table[shown].to_html(index=False, float_format=lambda v: f"{v:.4g}"))
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>"
        f"{html.escape(folder.name)}</title></head><body>" + "\n".join(parts) + "</body></html>\n"
    )
    return write_text(folder / "report.html", page)

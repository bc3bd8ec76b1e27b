"""Metric names (what a run records and reports, which way is better) and the regression metrics of pH predictions."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# Validation metrics a run can be selected by, each with the direction that is better.
METRIC_MODES: dict[str, str] = {"val_loss": "min", "val_rmse": "min", "val_mae": "min", "val_r2": "max"}
# What fit() records per epoch (training_log.json, a checkpoint's history) and a trial reports to Ray Tune.
EPOCH_METRICS = ("epoch", "train_loss", "val_loss", "val_rmse", "val_mae", "val_r2", "val_mse", "lr", "epoch_seconds")
# The per-epoch metrics a trial is summed up by: its best epoch's, as best_<metric> columns of trials.csv.
SUMMARY_METRICS = ("val_loss", "val_rmse", "val_mae", "val_r2", "train_loss")
BEST_PREFIX = "best_"


def best_column(metric: str) -> str:
    """The name of a trial's best value of a metric: what it reports to Tune and its column in trials.csv."""
    return f"{BEST_PREFIX}{metric}"


def metric_mode(metric: str) -> str:
    """ "min" or "max": which way the metric is better; an unknown metric is an error naming the known ones."""
    try:
        return METRIC_MODES[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; choose one of: {', '.join(METRIC_MODES)}") from None


def is_better(metric: str, value: float, than: float) -> bool:
    """Whether `value` of a metric beats `than` (NaN never does)."""
    return value < than if metric_mode(metric) == "min" else value > than


def worst_value(metric: str) -> float:
    """The starting point that every finite value of the metric beats."""
    return math.inf if metric_mode(metric) == "min" else -math.inf


def regression_metrics(true: np.ndarray, predicted: np.ndarray, prefix: str = "") -> dict[str, float]:
    """MSE, RMSE, MAE, R² of per-sample values; NaN where undefined (no samples; R² of one sample)."""
    # scikit-learn here, not at the top: the metric names above are read by every command's --help.
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    if len(true) == 0:
        return {f"{prefix}{name}": math.nan for name in ("mse", "rmse", "mae", "r2")}
    mse = float(mean_squared_error(true, predicted))
    return {
        f"{prefix}mse": mse,
        f"{prefix}rmse": math.sqrt(mse),
        f"{prefix}mae": float(mean_absolute_error(true, predicted)),
        f"{prefix}r2": float(r2_score(true, predicted)) if len(true) >= 2 else math.nan,
    }

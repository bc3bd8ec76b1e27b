"""Regression metrics of per-sample pH predictions (scikit-learn), named as every results file names them."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score


def regression_metrics(true: np.ndarray, predicted: np.ndarray, prefix: str = "") -> dict[str, float]:
    """MSE, RMSE, MAE, R² of per-sample values; NaN where undefined (no samples; R² of one sample)."""
    if len(true) == 0:
        return {f"{prefix}{name}": math.nan for name in ("mse", "rmse", "mae", "r2")}
    mse = float(mean_squared_error(true, predicted))
    return {
        f"{prefix}mse": mse,
        f"{prefix}rmse": math.sqrt(mse),
        f"{prefix}mae": float(mean_absolute_error(true, predicted)),
        f"{prefix}r2": float(r2_score(true, predicted)) if len(true) >= 2 else math.nan,
    }

"""Plots of one run's test predictions (residuals vs true pH, coloured by environment)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: runs happen on headless machines and inside Ray workers

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


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

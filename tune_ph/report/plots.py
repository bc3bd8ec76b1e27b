"""Matplotlib figures of a run and an experiment: residuals, learning curves, parallel coordinates, importances."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from tune_ph.files import write_bytes
from tune_ph.metrics import BEST_PREFIX, DEFAULT_TARGET, VAL_LOSS

matplotlib.use("Agg")  # files only: runs happen on headless machines and inside Ray workers

WINNER_COLOR = "#d62728"
STOPPED_COLOR = "0.6"
ERROR_COLOR = "#8c564b"
# Where a conditional parameter a trial did not use sits on its parallel-coordinates axis: well below the lowest
# value, so that "not used" never reads as a small value (a dropout of almost 0).
NA_POSITION = -0.3
NA_LABEL = "n/a (not used)"
# Finished trials each get their own colour; up to this many are named in the legend, one entry each.
NAMED_FINISHED = 8


def plot_residuals(
    df: pd.DataFrame, path: str | Path, *, title: str | None = None, target: str = DEFAULT_TARGET
) -> Path:
    """Scatter residual_mean against true_ph (pH's column names, whatever the target: the axes say which it is), one
    colour per environment; writes and returns path."""
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
        ax.set_xlabel(f"true {target}")
        ax.set_ylabel(f"residual (true − predicted {target})")
        ax.set_title(title or f"Test residuals ({len(df)} samples)")
        ax.legend(title="environment", fontsize="small", loc="best", frameon=False)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    # Atomic, like every output: a link planted at path is replaced, never written through.
    return write_bytes(path, buf.getvalue())


def figure_png(fig: Any, dpi: int = 100) -> bytes:
    """A figure as PNG bytes (the figure is closed)."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


def _kind(reason: str) -> str:
    for prefix, kind in (("stopped by ASHA", "asha"), ("early stopping", "early"), ("error", "error")):
        if reason.startswith(prefix):
            return kind
    return "finished"


def learning_curves(
    frames: dict[str, pd.DataFrame],
    reasons: dict[str, str],
    *,
    metric: str = VAL_LOSS,
    winner: str | None = None,
    winner_epoch: int | None = None,
    rungs: Sequence[int] = (),
) -> Any:
    """The search metric per epoch for every trial: finished trials solid, ASHA-stopped ones grey dashed with an x
    where they stopped, failed ones brown dotted, the winner thick red (its exported epoch starred). The legend
    names the winner and, when there are few, each finished trial by its colour."""
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for rung in rungs:
        ax.axvline(rung, color="0.85", lw=1, zorder=0)
    palette = iter(plt.cm.tab10(np.linspace(0, 1, 10)).tolist() * 100)
    finished: dict[str, Any] = {}  # trial id -> its colour
    for trial_id, df in sorted(frames.items(), key=lambda kv: kv[0] == winner):  # the winner is drawn last
        if df is None or df.empty or metric not in df:
            continue
        x = df["epoch"] if "epoch" in df else df["training_iteration"]
        kind = _kind(reasons.get(trial_id, ""))
        if trial_id == winner:
            ax.plot(x, df[metric], color=WINNER_COLOR, lw=2.6, marker="o", ms=4, zorder=5)
            if winner_epoch is not None and (x == winner_epoch).any():
                y = df.loc[(x == winner_epoch).to_numpy(), metric].iloc[0]
                ax.plot([winner_epoch], [y], marker="*", ms=18, color=WINNER_COLOR, mec="k", zorder=6)
        elif kind in ("asha", "early"):
            ax.plot(x, df[metric], color=STOPPED_COLOR, ls="--", lw=1.2)
            ax.plot(x.iloc[-1:], df[metric].iloc[-1:], color="0.3", marker="x", ms=9, mew=2, ls="none")
        elif kind == "error":
            ax.plot(x, df[metric], color=ERROR_COLOR, ls=":", lw=1.4, marker="X", ms=5, markevery=[len(df) - 1])
        else:
            finished[trial_id] = next(palette)
            ax.plot(x, df[metric], color=finished[trial_id], lw=1.4, marker="o", ms=3)
    drawn = [t for t, df in frames.items() if df is not None and not df.empty and metric in df and t != winner]
    kinds = {_kind(reasons.get(t, "")) for t in drawn}
    star = f"★ epoch {winner_epoch}, exported" if winner_epoch is not None else "★ exported epoch"
    handles = [
        Line2D([], [], color=WINNER_COLOR, lw=2.6, marker="*", ms=12, mec="k", label=f"winner: trial {winner} ({star})")
    ]
    handles = handles if winner in frames else []
    if len(finished) <= NAMED_FINISHED:
        handles += [
            Line2D([], [], color=color, lw=1.4, marker="o", ms=3, label=f"trial {t} (finished)")
            for t, color in finished.items()
        ]
    else:
        handles.append(Line2D([], [], color="C0", lw=1.4, marker="o", ms=3, label="finished (a colour per trial)"))
    if kinds & {"asha", "early"}:
        handles.append(
            Line2D(
                [],
                [],
                color=STOPPED_COLOR,
                ls="--",
                marker="x",
                mec="0.3",
                ms=8,
                label="stopped early (× = last epoch)",
            )
        )
    if "error" in kinds:
        handles.append(Line2D([], [], color=ERROR_COLOR, ls=":", marker="X", ms=6, label="failed"))
    ax.legend(handles=handles, fontsize=8, loc="upper right", framealpha=0.9)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch, every trial")
    ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def _axis_positions(
    values: pd.Series, *, log: bool = False, order: Sequence[Any] | None = None
) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Values mapped to [0, 1] (missing ones to NA_POSITION) and the tick labels of the axis."""
    present = values.notna()
    pos = np.full(len(values), NA_POSITION)
    ticks: list[tuple[float, str]] = []
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if numeric and present.any():
        v = values[present].astype(float).to_numpy()
        t = np.log10(v) if log and (v > 0).all() else v
        lo, hi = float(t.min()), float(t.max())
        span = hi - lo
        pos[present.to_numpy()] = (t - lo) / span if span > 0 else 0.5
        for frac in (0.0, 0.5, 1.0) if span > 0 else (0.5,):
            raw = lo + frac * span
            ticks.append((frac, f"{10**raw if log and (v > 0).all() else raw:.3g}"))
    elif present.any():
        labels = [str(o) for o in order or []]
        labels += sorted(set(values[present].astype(str)) - set(labels))
        labels = [lab for lab in labels if lab in set(values[present].astype(str))]
        where = {lab: (i / (len(labels) - 1) if len(labels) > 1 else 0.5) for i, lab in enumerate(labels)}
        pos[present.to_numpy()] = [where[s] for s in values[present].astype(str)]
        ticks = [(p, lab) for lab, p in where.items()]
    if not present.all():
        ticks.append((NA_POSITION, NA_LABEL))
    return pos, ticks


def parallel_coordinates(
    table: pd.DataFrame,
    params: Sequence[str],
    metric_column: str,
    *,
    mode: str = "min",
    winner: str | None = None,
    log_scale: set[str] | frozenset[str] = frozenset(),
    choices: dict[str, Sequence[Any]] | None = None,
) -> Any | None:
    """One vertical axis per searched hyperparameter and one for the metric; one line per trial, coloured by its
    metric (trials without one grey); categorical values at evenly spaced positions, the winner thick red. A trial
    that did not use a conditional parameter sits at NA_LABEL, set apart below that axis's values."""
    params = [p for p in params if f"config/{p}" in table]
    if not params or metric_column not in table or table[metric_column].notna().sum() == 0:
        return None
    columns = [f"config/{p}" for p in params] + [metric_column]
    positions, ticks = [], []
    for name, column in zip([*params, metric_column], columns):
        pos, tick = _axis_positions(
            table[column],
            log=name in log_scale,
            order=(choices or {}).get(name) if name != metric_column else None,
        )
        positions.append(pos)
        ticks.append(tick)
    ys = np.vstack(positions).T  # trials x axes
    metric = table[metric_column].astype(float).to_numpy()
    finite = np.isfinite(metric)
    norm = plt.Normalize(np.nanmin(metric[finite]), np.nanmax(metric[finite]))
    cmap = plt.cm.viridis_r if mode == "min" else plt.cm.viridis  # better trials always yellow
    fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * len(columns) + 1.5), 4.6))
    xs = np.arange(len(columns))
    is_winner = (table["trial_id"] == winner).to_numpy() if winner is not None else np.zeros(len(table), bool)
    for i in np.argsort(np.where(finite, -np.abs(metric - np.nanmean(metric[finite])), -np.inf)):
        if is_winner[i]:
            continue
        color = cmap(norm(metric[i])) if finite[i] else "0.7"
        ax.plot(xs, ys[i], color=color, lw=1.6, alpha=0.9, ls="-" if finite[i] else ":")
    for i in np.flatnonzero(is_winner):
        ax.plot(xs, ys[i], color=WINNER_COLOR, lw=3.2, zorder=5, label=f"winner: trial {winner}")
    for x, tick in zip(xs, ticks):
        ax.axvline(x, color="0.3", lw=0.8, zorder=1)
        if any(y == NA_POSITION for y, _ in tick):  # the axis's values end above; n/a is set apart below
            ax.plot([x - 0.06, x + 0.06], [NA_POSITION / 2] * 2, color="0.3", lw=0.8, ls=(0, (2, 2)), zorder=2)
        for y, label in tick:
            ax.text(x - 0.04, y, label, ha="right", va="center", fontsize=8, color="0.1", zorder=10,
                    bbox={"fc": "white", "ec": "0.75", "alpha": 0.9, "boxstyle": "round,pad=0.2"})  # fmt: skip
    ax.set_xticks(
        xs, [*params, metric_column.removeprefix(BEST_PREFIX) + f" ({'lower' if mode == 'min' else 'higher'} = better)"]
    )
    ax.xaxis.tick_top()
    ax.set_yticks([])
    ax.set_xlim(-0.6, len(columns) - 0.6)
    ax.set_ylim(NA_POSITION - 0.08, 1.08)
    for side in ("left", "right", "bottom", "top"):
        ax.spines[side].set_visible(False)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, pad=0.02, fraction=0.04).set_label(metric_column)
    if is_winner.any():
        ax.legend(loc="lower right", fontsize=8, bbox_to_anchor=(1.0, -0.12), frameon=False)
    return fig


def metric_by_parameter(
    table: pd.DataFrame,
    params: Sequence[str],
    metric_column: str,
    *,
    winner: str | None = None,
    log_scale: set[str] | frozenset[str] = frozenset(),
) -> Any | None:
    """One panel per searched hyperparameter: each trial's best metric against its value (winner in red)."""
    params = [p for p in params if f"config/{p}" in table and table[f"config/{p}"].nunique(dropna=True) > 1]
    if not params or metric_column not in table:
        return None
    cols = min(4, len(params))
    rows = math.ceil(len(params) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, params):
        data = table[["trial_id", f"config/{name}", metric_column]].dropna()
        # The winner last, so a trial with a close value never hides it.
        data = data.assign(_w=data["trial_id"] == winner).sort_values("_w", kind="stable")
        values = data[f"config/{name}"]
        colors = [WINNER_COLOR if w else "C0" for w in data["_w"]]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            ax.scatter(values, data[metric_column], s=22, c=colors)
            if name in log_scale:
                ax.set_xscale("log")
                ax.tick_params(axis="x", which="both", labelsize=7, labelrotation=30)
        else:
            labels = sorted(values.astype(str).unique())
            pos = {v: i for i, v in enumerate(labels)}
            ax.scatter([pos[v] for v in values.astype(str)], data[metric_column], s=22, c=colors)
            ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel(metric_column, fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(params) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def importance_figure(importances: dict[str, float], evaluator: str = "PED-ANOVA") -> Any:
    """Horizontal bars, most important on top, each labelled with its value."""
    names = list(importances)[::-1]
    values = [importances[n] for n in names]
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(names) + 1.2))
    bars = ax.barh(names, values, color="C0")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3, fontsize=8)
    ax.set_xlim(0, max(1.0, max(values, default=0) * 1.15))
    ax.set_xlabel(f"importance (Optuna's {evaluator} evaluator, normalised to sum 1)")
    ax.set_title("Optuna parameter importances")
    return fig

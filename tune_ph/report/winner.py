"""report.html's first section: which trial won, with which hyperparameters, why, and how it does on the test split."""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tune_ph import files
from tune_ph.metrics import METRIC_MODES, best_column, metric_mode
from tune_ph.report import results
from tune_ph.report.page import fmt, img, table_html

# Under the residual plot: what its usual slope means.
RESIDUALS_NOTE = (
    "A residual is true minus predicted pH, so points rising from left to right mean that low pH is over-predicted "
    "and high pH under-predicted: the predictions are pulled toward the mean pH (regression to the mean), as those "
    "of any model that explains only part of the variation are; the flatter the points lie around 0, the better."
)
TEST_METRICS = (("test_r2", "R²"), ("test_rmse", "RMSE"), ("test_mae", "MAE"), ("test_n_samples", "n samples"))


def searched_names(settings: dict[str, Any]) -> list[str]:
    """The searched hyperparameters, in the order of the search space."""
    return list((settings.get("space") or {}).keys())


def used_when(settings: dict[str, Any], name: str) -> str:
    """The condition under which a searched hyperparameter is used, `head is mlp2 or mlp3` ("" when always)."""
    when = ((settings.get("space") or {}).get(name) or {}).get("when") or {}
    return " and ".join(f"{k} is {' or '.join(map(fmt, v))}" for k, v in when.items())


def _unused(settings: dict[str, Any], name: str) -> str:
    cond = used_when(settings, name)
    return f"not used (only when {cond})" if cond else "not used"


def ranked(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Trials with a finite best value of the metric, best first."""
    key = best_column(metric)
    if key not in table:
        return table.iloc[0:0]
    rows = table[pd.to_numeric(table[key], errors="coerce").notna()]
    return rows.sort_values(key, ascending=metric_mode(metric) == "min", kind="stable").reset_index(drop=True)


@dataclass
class Winner:
    """The exported trial and why it was picked (everything report.html's first section says)."""

    trial_id: str
    metric: str
    epoch: int | None = None
    value: float | None = None  # the exported epoch's value of the metric
    rank: int | None = None  # 1-based, among `ranked` trials with a value of the metric
    ranked: int = 0
    total: int = 0
    runner_up: tuple[str, float] | None = None
    searched: list[tuple[str, str]] = field(default_factory=list)  # (name, value as text), space order
    fixed: list[tuple[str, str]] = field(default_factory=list)
    test: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    stop_reason: str = ""
    planned_epochs: int | None = None


def find_winner(
    table: pd.DataFrame,
    settings: dict[str, Any],
    metric: str,
    info: dict[str, Any] | None = None,
    test: dict[str, Any] | None = None,
) -> Winner | None:
    """The winner from best/config.json (`info`, what export chose) or else the table's best trial."""
    order = ranked(table, metric)
    trial_id = str((info or {}).get("trial_id") or (order["trial_id"].iloc[0] if len(order) else ""))
    if not trial_id:
        return None
    rows = table[table["trial_id"].astype(str) == trial_id]
    row = rows.iloc[0] if len(rows) else pd.Series(dtype=object)
    train_config = (info or {}).get("train_config") or {}
    searched = []
    for name in searched_names(settings):
        value = row.get(f"config/{name}")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            value = None if f"config/{name}" in row or name not in train_config else train_config[name]
        searched.append((name, fmt(value) if value is not None else _unused(settings, name)))
    ids = order["trial_id"].astype(str).tolist()
    others = order[order["trial_id"].astype(str) != trial_id]
    key = best_column(metric)
    value = ((info or {}).get("val_metrics") or {}).get(metric, row.get(key))
    return Winner(
        trial_id=trial_id,
        metric=metric,
        epoch=(info or {}).get("epoch", row.get("best_epoch")),
        value=None if value is None else float(value),
        rank=ids.index(trial_id) + 1 if trial_id in ids else None,
        ranked=len(ids),
        total=len(table),
        runner_up=(str(others["trial_id"].iloc[0]), float(others[key].iloc[0])) if len(others) else None,
        searched=searched,
        fixed=[(k, fmt(v)) for k, v in (settings.get("fixed") or {}).items()],
        test=dict(test or {}),
        model=dict((info or {}).get("model") or {}),
        stop_reason=str(row.get("stop_reason", "")),
        planned_epochs=results.planned_epochs(settings),
    )


def r2_in_words(test: dict[str, Any]) -> str | None:
    """One sentence on what the test R² and RMSE mean for pH, or None without them."""
    r2, rmse, n = test.get("test_r2"), test.get("test_rmse"), test.get("test_n_samples")
    if not isinstance(r2, (int, float)) or not math.isfinite(r2):
        return None
    samples = f"the {n} test samples" if isinstance(n, int) else "the test samples"
    share = f"explain {r2:.0%} of" if r2 >= 0.005 else "explain none of"
    error = f", and are off by {rmse:.2f} pH units in a typical sample (RMSE)" if isinstance(rmse, float) else ""
    return (
        f"R² is the share of the variation in pH between {samples} that the predictions explain (0: no better than "
        f"predicting their mean pH for each, 1: exact); this model's predictions {share} it{error}."
    )


def _why_html(w: Winner) -> str:
    mode = METRIC_MODES.get(w.metric, "min")
    better = "lowest" if mode == "min" else "highest"
    of = f" of {w.planned_epochs}" if w.planned_epochs else ""
    text = f"Trial <b>{html.escape(w.trial_id)}</b> won"
    if w.value is not None:
        text += (
            f": at epoch {fmt(w.epoch)}{of} its {html.escape(w.metric)} on the validation split was "
            f"<b>{fmt(w.value)}</b>, the {better} of any checkpoint ({'lower' if mode == 'min' else 'higher'} is "
            f"better; <code>search.metric</code> = {html.escape(w.metric)})"
        )
    if w.rank is not None:
        text += f" — rank {w.rank} of the {w.ranked} trial(s) with a {html.escape(w.metric)}"
        text += f" ({w.total} in all)." if w.total != w.ranked else "."
    if w.runner_up is not None and w.value is not None:
        rid, rvalue = w.runner_up
        gap = abs(rvalue - w.value) / abs(w.value) * 100 if w.value else float("nan")
        text += f" Runner-up: trial {html.escape(rid)} with {fmt(rvalue)}"
        text += f" ({gap:.1f}% {'higher' if rvalue > w.value else 'lower'})." if math.isfinite(gap) else "."
    if w.stop_reason == "finished" and w.planned_epochs:
        text += f" The trial ran all {w.planned_epochs} epochs."
    elif w.stop_reason:
        text += f" The trial: {html.escape(w.stop_reason)}."
    return f'<p class="lead">{text}</p>'


def _test_html(w: Winner, baseline: dict[str, Any] | None, folder: Path) -> str:
    headers = ["model", *[label for _, label in TEST_METRICS]]
    rows = [["HyenaDNA (this winner)", *[fmt(w.test.get(k)) for k, _ in TEST_METRICS]]] if w.test else []
    found = (baseline or {}).get("results") or {}
    for name, m in found.items():
        rows.append([f"k-mer {name} (k={m.get('k', '?')})", *[fmt(m.get(k)) for k, _ in TEST_METRICS]])
    parts = [table_html(headers, rows)] if rows else ["<p>No test metrics: best/metrics.json is missing.</p>"]
    words = r2_in_words(w.test)
    if words:
        parts.append(f'<p class="muted">{html.escape(words)}</p>')
    if not found:
        why = (baseline or {}).get("reason") or "the export did not compute it"
        command = (baseline or {}).get("command") or "python -m tune_ph baseline --dataset DATASET --k 6"
        parts.append(
            f'<p class="muted">k-mer baseline: not computed ({html.escape(why)}). Compute it with '
            f"<code>{html.escape(command)}</code> (results are cached), then re-export with "
            f"<code>python -m tune_ph export {html.escape(str(folder))}</code>.</p>"
        )
    elif w.test.get("test_r2") is not None:
        best_name, best = max(found.items(), key=lambda kv: kv[1].get("test_r2") or -math.inf)
        diff = float(w.test["test_r2"]) - float(best.get("test_r2") or math.nan)
        if math.isfinite(diff):
            verdict = "beats" if diff > 0 else "does not beat"
            parts.append(
                f"<p>The DNA model {verdict} the best k-mer baseline ({html.escape(best_name)}) on the test split: "
                f"R² {fmt(float(w.test['test_r2']))} vs {fmt(float(best['test_r2']))} ({diff:+.3f}).</p>"
            )
    return "".join(parts)


def winner_html(w: Winner, folder: Path, baseline: dict[str, Any] | None = None) -> str:
    """The report's first section: who won, with what, why, and how it does on the test split."""
    parts = [f'<h2 id="winner">The winner: trial {html.escape(w.trial_id)}</h2>', _why_html(w)]
    if w.model:
        bits = [f"d_model {w.model['d_model']}"] if "d_model" in w.model else []
        layers = w.model.get("n_layer")
        bits += [f"{layers} layer{'' if layers == 1 else 's'}"] if layers is not None else []
        bits += [f"up to {w.model['max_length']} tokens"] if "max_length" in w.model else []
        bits += [f"{w.model['parameters']:,} parameters"] if w.model.get("parameters") else []
        parts.append(
            f"<p>Model: <b>{html.escape(str(w.model.get('name', '')))}</b> — "
            f"{html.escape(str(w.model.get('source', '')))}{': ' + ', '.join(bits) if bits else ''}.</p>"
        )
    searched = table_html(["hyperparameter", "value"], [[n, v] for n, v in w.searched]) if w.searched else ""
    parts.append(
        '<div class="cards">'
        f"<div><h3>Searched hyperparameters</h3>{searched or '<p>none (nothing was searched)</p>'}</div>"
        f'<div class="wide"><h3>Test split (held out, evaluated once)</h3>{_test_html(w, baseline, folder)}</div></div>'
    )
    residuals = folder / files.BEST_DIR / files.RESIDUALS_FILE
    if residuals.is_file():
        parts.append(
            "<h3>Test residuals</h3>"
            + img(residuals.read_bytes(), "test residuals", css="residuals")
            + f'<p class="muted">{RESIDUALS_NOTE}</p>'
        )
    if w.fixed:
        parts.append(
            "<details><summary>Settings every trial shared (fixed)</summary>"
            f'<div class="scroll">{table_html(["setting", "value"], [[n, v] for n, v in w.fixed])}</div></details>'
        )
    return "\n".join(parts)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file of the experiment folder, or None when it is missing or damaged (the report shows less)."""
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None

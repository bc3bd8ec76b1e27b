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
from tune_ph.baseline.choices import REFERENCE_NAMES
from tune_ph.baseline.reference import Comparison, Reference, interval_text, leak_note
from tune_ph.metrics import (
    DEFAULT_TARGET,
    METRIC_MODES,
    TEST_MAE,
    TEST_N_SAMPLES,
    TEST_R2,
    TEST_R2_CI95,
    TEST_RMSE,
    VAL_R2,
    best_column,
    metric_mode,
)
from tune_ph.report import results
from tune_ph.report.page import fmt, img, table_html
from tune_ph.search_settings import SavedSearch


def residuals_note(target: str = DEFAULT_TARGET) -> str:
    """Under the residual plot: what its usual slope means."""
    return (
        f"A residual is true minus predicted {target}, so points rising from left to right mean that low {target} is "
        f"over-predicted and high {target} under-predicted: the predictions are pulled toward the mean {target} "
        "(regression to the mean), as those of any model that explains only part of the variation are; the flatter "
        "the points lie around 0, the better."
    )


RESIDUALS_NOTE = residuals_note()
TEST_METRICS = ((TEST_R2, "R²"), (TEST_RMSE, "RMSE"), (TEST_MAE, "MAE"), (TEST_N_SAMPLES, "n samples"))


def used_when(settings: SavedSearch, name: str) -> str:
    """The condition under which a searched hyperparameter is used, `head is mlp2 or mlp3` ("" when always)."""
    param = settings.space.get(name)
    when = (param.get("when") if isinstance(param, dict) else None) or {}
    return " and ".join(f"{k} is {' or '.join(map(fmt, v))}" for k, v in when.items())


def _unused(settings: SavedSearch, name: str) -> str:
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
    settings: SavedSearch,
    metric: str,
    info: results.BestInfo | None = None,
    test: dict[str, Any] | None = None,
) -> Winner | None:
    """The winner from best/config.json (`info`, what export chose) or else the table's best trial."""
    order = ranked(table, metric)
    trial_id = info.trial_id if info else str(order["trial_id"].iloc[0] if len(order) else "")
    if not trial_id:
        return None
    rows = table[table["trial_id"].astype(str) == trial_id]
    row = rows.iloc[0] if len(rows) else pd.Series(dtype=object)
    train_config = info.train_config if info else {}
    searched = []
    for name in settings.searched_names():
        value = row.get(f"config/{name}")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            value = None if f"config/{name}" in row or name not in train_config else train_config[name]
        searched.append((name, fmt(value) if value is not None else _unused(settings, name)))
    ids = order["trial_id"].astype(str).tolist()
    others = order[order["trial_id"].astype(str) != trial_id]
    key = best_column(metric)
    value = (info.val_metrics if info else {}).get(metric, row.get(key))
    return Winner(
        trial_id=trial_id,
        metric=metric,
        epoch=info.epoch if info else row.get("best_epoch"),
        value=None if value is None else float(value),
        rank=ids.index(trial_id) + 1 if trial_id in ids else None,
        ranked=len(ids),
        total=len(table),
        runner_up=(str(others["trial_id"].iloc[0]), float(others[key].iloc[0])) if len(others) else None,
        searched=searched,
        fixed=[(k, fmt(v)) for k, v in settings.fixed.items()],
        test=dict(test or {}),
        model=dict(info.model) if info else {},
        stop_reason=str(row.get("stop_reason", "")),
        planned_epochs=settings.planned_epochs(),
    )


def r2_in_words(test: dict[str, Any]) -> str | None:
    """One sentence on what the test R² and RMSE mean for the target (metrics.json's, default pH), or None without
    them."""
    r2, rmse, n = test.get(TEST_R2), test.get(TEST_RMSE), test.get(TEST_N_SAMPLES)
    target = str(test.get("target") or DEFAULT_TARGET)
    units = "pH units" if target == DEFAULT_TARGET else f"units of {target}"
    if not isinstance(r2, (int, float)) or not math.isfinite(r2):
        return None
    samples = f"the {n} test samples" if isinstance(n, int) else "the test samples"
    share = f"explain {r2:.0%} of" if r2 >= 0.005 else "explain none of"
    error = f", and are off by {rmse:.2f} {units} in a typical sample (RMSE)" if isinstance(rmse, float) else ""
    return (
        f"R² is the share of the variation in {target} between {samples} that the predictions explain (0: no better "
        f"than predicting their mean {target} for each, 1: exact); this model's predictions {share} it{error}."
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


def _test_row(name: str, m: dict[str, Any]) -> list[str]:
    return [
        name,
        fmt(m.get(TEST_R2)),
        interval_text(m.get(TEST_R2_CI95)),
        *[fmt(m.get(k)) for k, _ in TEST_METRICS[1:]],
    ]


def _comparison_html(w: Winner, baseline: Reference) -> str:
    """Ahead, behind or not distinguishable: the paired interval of the R² difference (best/metrics.json)."""
    comparison = Comparison.from_dict(w.test.get("vs_baseline"))
    name = html.escape(str(baseline.chosen))
    if comparison is not None:
        where = {"ahead": "above", "behind": "below"}.get(comparison.verdict, "on both sides of")
        return (
            f"<p>Against the baseline chosen on val (<b>{html.escape(comparison.baseline)}</b>, the best val R² of "
            f"{len(baseline.results)} baselines; the test split played no part in choosing it) the DNA model is "
            f"<b>{comparison.verdict}</b>: test R² difference {comparison.delta_r2:+.3f}, 95 % interval "
            f"{interval_text(comparison.delta_r2_ci95, signed=True)} (paired bootstrap over the same "
            f"{comparison.n_samples} test samples; it lies {where} 0).</p>"
        )
    ours, theirs = w.test.get(TEST_R2), baseline.metrics.get(TEST_R2)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (ours, theirs)):
        return ""
    return (
        f"<p>Test R² of the DNA model minus the baseline chosen on val ({name}): {ours - theirs:+.3f}, without an "
        "interval (this export predates them, or the baseline's test predictions were not saved; export again to "
        "compute it).</p>"
    )


def _family_html(baseline: Reference) -> str:
    rows = [
        [name, fmt(m.get(VAL_R2)), fmt(m.get(TEST_R2)), interval_text(m.get(TEST_R2_CI95))]
        for name, m in baseline.results.items()
    ]
    classes = ["winner" if name == baseline.chosen else "" for name in baseline.results]
    return (
        f"<details><summary>All {len(rows)} baselines (the highest val R² of the models of the reads was chosen; "
        "the means of study and environment are references)</summary>"
        f"{table_html(['baseline', 'val R²', 'test R²', '95 % interval'], rows, classes)}</details>"
    )


def _test_html(w: Winner, baseline: Reference | None, folder: Path) -> str:
    headers = ["model", "R²", "95 % interval", *[label for _, label in TEST_METRICS[1:]]]
    rows = [_test_row("HyenaDNA (this winner)", w.test)] if w.test else []
    baseline = baseline or Reference(reason="the export did not compute it")
    if baseline.metrics:
        rows.append(_test_row(f"baseline chosen on val: {baseline.chosen}", baseline.metrics))
        for name in REFERENCE_NAMES[1:]:  # labels a new sample may lack: shown, never the bar to clear
            if name in baseline.results:
                rows.append(_test_row(f"reference (labels, not reads): {name}", baseline.results[name]))
    parts = [table_html(headers, rows)] if rows else ["<p>No test metrics: best/metrics.json is missing.</p>"]
    words = r2_in_words(w.test)
    if words:
        parts.append(f'<p class="muted">{html.escape(words)}</p>')
    leak = leak_note(baseline)
    if leak:
        parts.append(f"<p>{html.escape(leak)}</p>")
    if not baseline.metrics:
        command = baseline.command or "python -m tune_ph baseline --dataset DATASET"
        parts.append(
            f'<p class="muted">baseline: not computed ({html.escape(baseline.reason or "?")}). Compute it with '
            f"<code>{html.escape(command)}</code> (results are cached), then re-export with "
            f"<code>python -m tune_ph export {html.escape(str(folder))}</code>.</p>"
        )
    else:
        parts.append(_comparison_html(w, baseline) + _family_html(baseline))
    return "".join(parts)


def winner_html(w: Winner, folder: Path, baseline: Reference | None = None) -> str:
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
            + f'<p class="muted">{residuals_note(str(w.test.get("target") or DEFAULT_TARGET))}</p>'
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

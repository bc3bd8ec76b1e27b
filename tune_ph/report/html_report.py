"""report.html: the winner and why (winner.py), then the search: curves, hyperparameters, trials, importances."""

from __future__ import annotations

import html
import warnings
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from tune_ph import files
from tune_ph.baseline.reference import Reference
from tune_ph.files import write_text
from tune_ph.metrics import DEFAULT_TARGET, SUMMARY_METRICS, VAL_LOSS, best_column, metric_mode
from tune_ph.report import drivers, plots, results
from tune_ph.report.page import CSS, fmt, img, table_html
from tune_ph.report.winner import find_winner, ranked, read_json, used_when, winner_html
from tune_ph.search_settings import SavedSearch

__all__ = ["importance_notes", "too_few_trials", "trials_view", "write_report"]

# Below this many completed trials, importances are not shown: PED-ANOVA (and fANOVA) fit a handful of points, and on
# the quick start's 8 trials they ranked first a parameter the scatter plots show to matter least.
SMALL_SEARCH = 20
DOMINANT_SHARE = 0.9  # one parameter with this share or more: say that it is likely an artefact of few trials


def loguniform_params(settings: SavedSearch) -> set[str]:
    """Parameters searched on a log scale (plotted on one too), from an experiment's saved settings."""
    return {k for k, v in settings.space.items() if isinstance(v, dict) and "loguniform" in v}


def _choices(settings: SavedSearch) -> dict[str, list[Any]]:
    return {k: list(v["choice"]) for k, v in settings.space.items() if isinstance(v, dict) and "choice" in v}


def with_stop_reasons(table: pd.DataFrame, settings: SavedSearch) -> pd.DataFrame:
    """The table with a stop_reason column (trials.csv of an older export lacks it)."""
    if "stop_reason" in table or table.empty:
        return table
    planned = settings.planned_epochs()
    table = table.copy()
    table["stop_reason"] = [
        results.stop_reason(str(r["status"]), int(r.get("epochs_run") or 0), planned, fmt(r.get("error")))
        for _, r in table.iterrows()
    ]
    return table


def trials_view(table: pd.DataFrame, settings: SavedSearch, metric: str) -> pd.DataFrame:
    """The trials table as the report shows it: sorted by the metric, outcome in words, numbers as text."""
    table = with_stop_reasons(table, settings)
    order = ranked(table, metric)
    rest = table[~table["trial_id"].isin(order["trial_id"])]
    table = pd.concat([order, rest], ignore_index=True)
    key = best_column(metric)
    view = pd.DataFrame({"#": [str(i + 1) if i < len(order) else "" for i in range(len(table))]})
    view["trial"] = table["trial_id"].astype(str)
    view["outcome"] = table["stop_reason"].astype(str)
    view[f"best {metric}"] = [fmt(v) for v in table.get(key, pd.Series([None] * len(table)))]
    for col, label in (("best_epoch", "best at epoch"), ("epochs_run", "epochs run")):
        view[label] = [fmt(int(v)) if pd.notna(v) and v != "" else "" for v in table.get(col, [None] * len(table))]
    for name in settings.searched_names():
        values = table.get(f"config/{name}", pd.Series([None] * len(table)))
        view[name] = [fmt(v) if fmt(v) else "—" for v in values]
    for m in SUMMARY_METRICS:
        if m != metric and best_column(m) in table:
            view[m] = [fmt(v) for v in table[best_column(m)]]
    return view


def importance_notes(importances: dict[str, float], n_complete: int, n_stopped: int = 0) -> list[str]:
    """Plain-language caveats to print beside parameter importances."""
    notes = []
    if n_complete < 2 * SMALL_SEARCH:
        notes.append(
            f"Importances from {n_complete} completed trials carry much uncertainty: they depend on which values the "
            "trials happened to get; check them against the plots of each hyperparameter above."
        )
    if importances:
        top, share = max(importances.items(), key=lambda kv: kv[1])
        if share >= DOMINANT_SHARE and len(importances) > 1:
            notes.append(
                f"{top} gets {share:.2f} of the importance and the others almost none. With few trials this is typical "
                "(the evaluator compares the best trials with the rest, and a handful of points separate on one "
                "parameter); it does not show that the other parameters have no effect."
            )
    if n_stopped:
        notes.append(
            f"{n_stopped} trial(s) were stopped early by ASHA; their value is their best before they stopped, so a "
            "parameter that only slows early training (such as a low learning rate) can look important."
        )
    return notes


def too_few_trials(n_complete: int) -> str:
    """Why the importances of a small search are not shown."""
    return (
        f"Not shown: {n_complete} completed trials are too few (they are shown from {SMALL_SEARCH} on). From so few, "
        "an importance mostly says which values the trials happened to get, and it can rank first a hyperparameter "
        "that the plots above show to matter least; read those plots, one point per trial, instead."
    )


def parameter_importances(study_db: Path, study_name: str | None = None) -> tuple[dict[str, float] | None, int, str]:
    """Optuna's parameter importances of the stored study, the number of completed trials, and why not if None."""
    if not study_db.is_file():
        return None, 0, f"no Optuna study at {study_db}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{study_db.resolve()}"
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if not names:
        return None, 0, "the Optuna study is empty"
    study = optuna.load_study(study_name=study_name if study_name in names else names[0], storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return None, len(complete), f"only {len(complete)} completed trial(s); importances need at least 2"
    try:
        with warnings.catch_warnings():
            # Small searches always trigger "few trials" warnings; the report states the caveat itself.
            warnings.simplefilter("ignore")
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            return optuna.importance.get_param_importances(study, evaluator=evaluator), len(complete), ""
    except (RuntimeError, ValueError, ZeroDivisionError) as err:
        # e.g. every completed trial used the same value of each parameter
        return None, len(complete), f"Optuna could not compute importances: {err}"


def _importances_html(study_db: Path, name: str, n_stopped: int) -> str:
    importances, n_complete, why = parameter_importances(study_db, name)
    parts = ['<h2 id="importances">Parameter importances</h2>']
    if importances is None:
        return parts[0] + f"<p>Not available: {html.escape(why)}.</p>"
    if n_complete < SMALL_SEARCH:
        return parts[0] + f"<p>{html.escape(too_few_trials(n_complete))}</p>"
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in importance_notes(importances, n_complete, n_stopped)]
    parts.append(img(plots.figure_png(plots.importance_figure(importances)), "parameter importances"))
    return "\n".join(parts)


def drivers_html(best_dir: Path) -> str:
    """The clusters that drive the winner (best/drivers.csv and .png, written by evaluate for a clusters model), or
    "" when there are none."""
    path = Path(best_dir) / files.DRIVERS_FILE
    if not path.is_file():
        return ""
    try:
        table = pd.read_csv(path, dtype={"central_read": str, "taxon": str, "taxon_reads": str}, keep_default_na=False)
    except (OSError, ValueError) as err:
        return f'<h2 id="drivers">Which clusters drive the predictions</h2><p>Not readable: {html.escape(str(err))}</p>'
    plot = Path(best_dir) / files.DRIVERS_PLOT
    shown = table.copy()
    shown["central_read"] = [r if len(r) <= 40 else f"{r[:37]}..." for r in shown["central_read"].astype(str)]
    rows = [[fmt(v) if isinstance(v, float) else str(v) for v in row] for row in shown.values.tolist()]
    taxa = "" if (table["taxon"].astype(str) != "").any() else " Give a taxonomy table (--taxonomy TSV) to name them."
    return (
        '<h2 id="drivers">Which clusters drive the predictions</h2><p class="muted">The learned OTUs whose abundances, '
        "shuffled among the validation samples, raise the validation RMSE most (permutation importance, mean and sd of "
        f"{drivers.REPEATS} shuffles); each with its most central training read (nearest its centroid), its mean share "
        "of the reads of validation samples below and above their median, where it is more abundant, and its most "
        "common taxon among its training reads with a known one." + html.escape(taxa) + " All columns are in "
        f"<code>{files.BEST_DIR}/{files.DRIVERS_FILE}</code>.</p>"
        + (img(plot.read_bytes(), "drivers") if plot.is_file() else "")
        + f'<div class="scroll">{table_html(list(table.columns), rows)}</div>'
    )


def _summary(table: pd.DataFrame, settings: SavedSearch, metric: str) -> str:
    reasons = table["stop_reason"].astype(str) if "stop_reason" in table else pd.Series([], dtype=str)
    counts = [
        (int((reasons == "finished").sum()), "finished"),
        (int(reasons.str.startswith("stopped by ASHA").sum()), "stopped early by ASHA"),
        (int(reasons.str.startswith("early stopping").sum()), "stopped by early stopping"),
        (int(reasons.str.startswith("error").sum()), "failed"),
    ]
    known = sum(n for n, _ in counts)
    counts.append((len(table) - known, "other (interrupted or unknown)"))
    fixed = settings.fixed
    said = ", ".join(f"{n} {what}" for n, what in counts if n)
    return (
        f"<p>{len(table)} trial(s): {html.escape(said)}. Trials were ranked by their best "
        f"<b>{html.escape(metric)}</b> ({'lower' if metric_mode(metric) == 'min' else 'higher'} is better) on the "
        f"validation split. Dataset: <code>{html.escape(fmt(fixed.get('dataset', '?')))}</code>; predicted: "
        f"<code>{html.escape(fmt(fixed.get('target', DEFAULT_TARGET)))}</code>.</p>"
    )


def write_report(
    folder: Path,
    table: pd.DataFrame,
    frames: dict[str, pd.DataFrame],
    *,
    settings: SavedSearch,
    study_db: Path,
    metric: str = VAL_LOSS,
    baseline: Reference | None = None,
) -> Path:
    """Write folder/report.html, self-contained (images inline), readable top to bottom.

    baseline: the baseline family on the same split and its member chosen on val, or the reason there is none
    (see baseline.reference.reference_baseline).
    """
    folder = Path(folder)
    table = with_stop_reasons(table, settings)
    best_dir = folder / files.BEST_DIR
    winner = find_winner(table, settings, metric, results.best_info(folder), read_json(best_dir / files.METRICS_FILE))
    name = html.escape(str(settings.name or folder.name))
    driving = drivers_html(best_dir)
    parts = [
        f"<h1>Search report: {name}</h1>",
        '<nav><a href="#winner">Winner</a>'
        + ('<a href="#drivers">Drivers</a>' if driving else "")
        + '<a href="#curves">Learning curves</a><a href="#parallel">Hyperparameters'
        '</a><a href="#trials">Trials</a><a href="#importances">Importances</a></nav>',
        _summary(table, settings, metric),
    ]
    parts.append(winner_html(winner, folder, baseline) if winner else "<p>No trial has a value of the metric yet.</p>")
    parts.append(driving)
    winner_id = winner.trial_id if winner else None
    reasons = dict(zip(table["trial_id"].astype(str), table["stop_reason"].astype(str)))
    curves = plots.learning_curves(
        frames,
        reasons,
        metric=metric,
        winner=winner_id,
        winner_epoch=winner.epoch if winner else None,
        rungs=settings.asha_rungs(),
    )
    parts.append('<h2 id="curves">Learning curves</h2>' + img(plots.figure_png(curves), "learning curves"))
    params, key, logs = settings.searched_names(), best_column(metric), loguniform_params(settings)
    # Said in words under the heading: the plot's "n/a (not used)" tick has no room for the condition.
    unused = [
        f"{p} is used only when {used_when(settings, p)}" if used_when(settings, p) else f"{p} was not used"
        for p in params
        if table.get(f"config/{p}", pd.Series(dtype=object)).isna().any()
    ]
    fig = plots.parallel_coordinates(
        table, params, key, mode=metric_mode(metric), winner=winner_id, log_scale=logs, choices=_choices(settings)
    )
    if fig is not None:
        parts.append(
            f'<h2 id="parallel">Hyperparameters vs {html.escape(metric)}</h2><p class="muted">One line per trial, '
            "coloured by its best value of the metric (yellow is better); the winner in red."
            + (
                " <i>n/a (not used)</i>, set apart below an axis: a trial without that hyperparameter "
                f"({html.escape('; '.join(unused))})."
                if unused
                else ""
            )
            + "</p>"
            + img(plots.figure_png(fig), "parallel coordinates")
        )
    fig = plots.metric_by_parameter(table, params, key, winner=winner_id, log_scale=logs)
    if fig is not None:
        parts.append(img(plots.figure_png(fig), f"best {metric} by hyperparameter"))
    view = trials_view(table, settings, metric)
    classes = ["winner" if t == winner_id else _reason_class(r) for t, r in zip(view["trial"], view["outcome"])]
    parts.append(
        f'<h2 id="trials">Trials</h2><p class="muted">Sorted by best {html.escape(metric)}; — marks a hyperparameter '
        f"that trial's configuration did not use. All columns are also in <code>{results.TRIALS_FILE}</code>.</p>"
        f'<div class="scroll">{table_html(list(view.columns), view.values.tolist(), classes)}</div>'
    )
    n_stopped = int(table["stop_reason"].astype(str).str.startswith("stopped by ASHA").sum())
    parts.append(_importances_html(Path(study_db), folder.name, n_stopped))
    page = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{name}: search report</title>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head>"
        "<body>" + "\n".join(parts) + "</body></html>\n"
    )
    return write_text(folder / results.REPORT_FILE, page)


def _reason_class(reason: str) -> str:
    return "error" if reason.startswith("error") else "asha" if reason.startswith(("stopped", "early")) else ""

"""A search's outcome: each trial's honest status and error, the exit code, and the Optuna study told the same."""

from __future__ import annotations

import logging
import math
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from tune_ph import cli
from tune_ph.errors import InputError
from tune_ph.metrics import best_column
from tune_ph.report import results

log = logging.getLogger(__name__)

DONE = ("TERMINATED", "ERROR")


def settle(table: pd.DataFrame, grid: Any) -> pd.DataFrame:
    """trials.csv's rows brought in line with what tuner.fit() returned in this process.

    Ray saves its experiment state before it cleans up, so the saved status of a trial whose worker died at the
    end can lag behind; the ResultGrid's error is the in-process truth. A trial with an error is ERROR, with the
    error summarized ("worker died: ..." for a killed process).
    """
    table = table.copy()
    for i in range(len(grid)):
        result = grid[i]
        if result.error is None or not getattr(result, "path", None):
            continue
        trial_id = PurePosixPath(str(result.path)).name.removeprefix("trial_")
        rows = table.index[table["trial_id"].astype(str) == trial_id]
        for row in rows:
            if table.at[row, "status"] != "ERROR" or not table.at[row, "error"]:
                log.debug("trial %s: status %s -> ERROR (%s)", trial_id, table.at[row, "status"], result.error)
                table.at[row, "status"] = "ERROR"
                table.at[row, "error"] = results.summarize_error(str(result.error))
                if "stop_reason" in table:
                    table.at[row, "stop_reason"] = results.stop_reason(
                        "ERROR", int(table.at[row, "epochs_run"]), None, table.at[row, "error"]
                    )
    return table


def exit_code(table: pd.DataFrame, num_samples: int, any_results: bool) -> int:
    """0 when every trial of the search finished (failed trials included: trials.csv says why); 130 when the
    search was interrupted (trials still running, pending or never started); 1 when nothing ran at all."""
    finished = int(table["status"].isin(DONE).sum()) if len(table) else 0
    if finished >= num_samples:
        return cli.EXIT_OK
    return cli.EXIT_INTERRUPTED if any_results else cli.EXIT_FAILURE


def finished(folder: Path) -> bool:
    """Whether the search in an experiment folder ran every trial it planned (its trials.csv says so); a search
    interrupted, killed before writing trials.csv, or whose files are damaged is not finished."""
    path = Path(folder) / results.TRIALS_FILE
    try:
        table = pd.read_csv(path) if path.is_file() else None
        planned = results.saved_search(folder).search.num_samples
    except (OSError, ValueError, InputError):  # a damaged file: say "not finished", the cautious answer
        return False
    if table is None or "status" not in table or not isinstance(planned, int):
        return False
    return int(table["status"].isin(DONE).sum()) >= planned


def tell_study(folder: Path, study_name: str, path: str, metric: str) -> int:
    """Record in the Optuna study the trials that failed once and then finished (--resume --retry-errored).

    Optuna closed such a trial as FAIL when it failed and ignores its later completion, so TPE would never learn
    its result. Each gets a COMPLETE twin with the same parameters and its best `metric`. Returns how many.
    """
    import optuna  # only here: reading an experiment folder needs no Optuna

    db = Path(folder) / results.STUDY_FILE
    if not db.is_file():
        return 0
    storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}")
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # no study of that name (yet)
        return 0
    done = [t.params for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    trials = [t for t in results.Experiment(path).trials() if t.status == "TERMINATED"]
    added = 0
    for failed in (t for t in study.trials if t.state == optuna.trial.TrialState.FAIL):
        if failed.params in done:
            continue
        match = [t for t in trials if all(t.config.get(k) == v for k, v in failed.params.items())]
        if len(match) != 1:
            continue
        best = results.trials_table(match, metric).iloc[0].get(best_column(metric))
        if best is None or not math.isfinite(best):
            continue
        study.add_trial(
            optuna.trial.create_trial(
                params=failed.params,
                distributions=failed.distributions,
                value=float(best),
                user_attrs={"tune_trial_id": match[0].trial_id, "retried_after": f"optuna trial {failed.number}"},
            )
        )
        done.append(failed.params)
        added += 1
    if added:
        log.info("told the Optuna study the result of %d trial(s) that finished after failing once", added)
    return added

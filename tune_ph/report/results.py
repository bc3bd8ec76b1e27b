"""Read an experiment folder (JSON, CSV and text only, never a pickle): its files, settings, trials, best checkpoint."""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import pyarrow.fs as pafs

from tune_ph import files
from tune_ph.errors import InputError, RunFailure
from tune_ph.files import TRIAL_STATE_FILE, inside, write_csv, write_json
from tune_ph.metrics import (
    DEFAULT_METRIC,
    EPOCH_METRICS,
    SUMMARY_METRICS,
    VAL_LOSS,
    VAL_R2,
    VAL_RMSE,
    best_column,
    is_better,
    metric_mode,
)
from tune_ph.search_settings import SavedSearch

log = logging.getLogger(__name__)

# The files of an experiment folder (experiments/<name>/).
SETTINGS_FILE = "search_settings.json"  # the effective search settings, re-read by --resume
STUDY_FILE = "optuna_study.db"
TRIALS_FILE = "trials.csv"
REPORT_FILE = "report.html"
# Ray's own files in a trial folder that we read (plain JSON / text); error.pkl and params.pkl never are.
_PARAMS, _RESULTS, _ERROR = "params.json", "result.json", "error.txt"
# Ray's checkpoint folders inside a trial folder; any other name read from result.json is refused.
_CHECKPOINT_NAME = re.compile(r"checkpoint_\d{1,12}")


@dataclass
class Trial:
    """One trial of an experiment as its files record it."""

    trial_id: str
    status: str  # Ray's: TERMINATED, ERROR, RUNNING, PAUSED, PENDING; UNKNOWN without an experiment state
    path: str  # the trial folder (a local path or a storage URI)
    config: dict[str, Any] = field(default_factory=dict)
    history: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per reported epoch
    error: str = ""


class Experiment:
    """An experiment folder on local disk or a pyarrow storage URI (s3://, gs://), read without Ray."""

    def __init__(self, path: str):
        self.path = path
        if "://" in path:
            self.fs, self.root = pafs.FileSystem.from_uri(path)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(path).resolve())
        info = self.fs.get_file_info(self.root)
        if info.type != pafs.FileType.Directory:
            raise InputError(f"{path}: no such experiment folder")

    def _join(self, *parts: str) -> str:
        return str(PurePosixPath(self.root, *parts))

    def _read(self, *parts: str) -> str | None:
        target = self._join(*parts)
        if self.fs.get_file_info(target).type != pafs.FileType.File:
            return None
        if isinstance(self.fs, pafs.LocalFileSystem) and not inside(target, self.root):
            log.warning("%s is a link (or leads outside the experiment); not read", target)
            return None
        with self.fs.open_input_stream(target) as stream:
            return stream.read().decode("utf-8", errors="replace")

    def _statuses(self) -> dict[str, str]:
        """Trial statuses from Ray's newest readable experiment state, parsed as plain JSON (its pickled parts stay
        opaque strings: nothing in them is ever decoded). A damaged state is skipped with a warning naming it."""
        names = [i.base_name for i in self.fs.get_file_info(pafs.FileSelector(self.root))]
        states = sorted(n for n in names if n.startswith("experiment_state-") and n.endswith(".json"))
        for name in reversed(states):
            try:
                trial_data = json.loads(self._read(name) or "{}").get("trial_data", [])
                out = {}
                for entry in trial_data:
                    trial = json.loads(entry[0]) if isinstance(entry, list) else {}
                    out[str(trial.get("trial_id"))] = str(trial.get("status", "UNKNOWN"))
                return out
            except (ValueError, TypeError, AttributeError, IndexError, RecursionError) as err:
                older = "an older one" if name != states[0] else "none: trial statuses are then UNKNOWN"
                log.warning("%s/%s: not a readable Ray experiment state (%s); using %s", self.path, name, err, older)
        return {}

    def _inside(self, target: str) -> bool:
        """Whether a local path stays inside the experiment once links are followed (a remote one always does)."""
        if not isinstance(self.fs, pafs.LocalFileSystem):
            return True
        return Path(target).resolve().is_relative_to(Path(self.root).resolve())

    def _read_json_object(self, *parts: str) -> dict[str, Any]:
        """A JSON object file of the experiment ({} when absent); damaged or not an object: InputError naming it."""
        where = f"{self.path}/{'/'.join(parts)}"
        try:
            value = json.loads(self._read(*parts) or "{}")
        except (ValueError, RecursionError) as err:
            raise InputError(f"{where}: not valid JSON ({str(err)[:200]}); the file is damaged") from None
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a JSON object, found {type(value).__name__}; the file is damaged")
        return value

    def trials(self) -> list[Trial]:
        if self.fs.get_file_info(self._join(SETTINGS_FILE)).type == pafs.FileType.NotFound and not any(
            i.base_name.startswith("experiment_state-") for i in self.fs.get_file_info(pafs.FileSelector(self.root))
        ):
            raise InputError(f"{self.path}: not a tune_ph experiment (no {SETTINGS_FILE} and no Ray experiment state)")
        statuses = self._statuses()
        out = []
        for info in sorted(self.fs.get_file_info(pafs.FileSelector(self.root)), key=lambda i: i.base_name):
            if info.type != pafs.FileType.Directory or not info.base_name.startswith("trial_"):
                continue
            if not self._inside(self._join(info.base_name)):
                log.warning("%s/%s links outside the experiment; skipped", self.path, info.base_name)
                continue
            trial_id = info.base_name.removeprefix("trial_")
            rows = _result_rows(self._read(info.base_name, _RESULTS) or "", f"{self.path}/{info.base_name}")
            error_text = self._read(info.base_name, _ERROR)
            status = statuses.get(trial_id) or ("ERROR" if error_text else "UNKNOWN")
            out.append(
                Trial(
                    trial_id=trial_id,
                    status=status,
                    path=self._join(info.base_name) if "://" not in self.path else f"{self.path}/{info.base_name}",
                    config=self._read_json_object(info.base_name, _PARAMS),
                    history=pd.DataFrame(rows),
                    error=summarize_error(error_text) if status == "ERROR" else "",
                )
            )
        return out

    def _state_file(self, trial: Trial, name: str) -> str:
        """A checkpoint's state file; its name (read from result.json) must be Ray's checkpoint_NNNNNN, and the
        file must stay inside the experiment once links are followed: InputError otherwise."""
        if not isinstance(name, str) or not _CHECKPOINT_NAME.fullmatch(name):
            raise InputError(
                f"{trial.path}/{_RESULTS}: checkpoint_dir_name {str(name)[:80]!r} is not a checkpoint folder name "
                "(checkpoint_NNNNNN); the file is damaged or crafted"
            )
        target = self._join(f"trial_{trial.trial_id}", name, TRIAL_STATE_FILE)
        if not self._inside(target):
            raise InputError(f"{target} links outside the experiment {self.path}; refusing to read it")
        return target

    def checkpoint_exists(self, trial: Trial, name: str) -> bool:
        try:
            target = self._state_file(trial, name)
        except InputError as err:
            log.warning("%s", err)
            return False
        return self.fs.get_file_info(target).type == pafs.FileType.File

    def copy_checkpoint(self, trial: Trial, name: str, target: Path) -> None:
        """Copy one checkpoint's state file to a local path."""
        pafs.copy_files(
            self._state_file(trial, name),
            str(Path(target).resolve()),
            source_filesystem=self.fs,
            destination_filesystem=pafs.LocalFileSystem(),
        )


# Ray's words for a trial whose process died (no Python exception: SIGKILL, the OOM killer, a segfault).
_DIED = ("The actor died unexpectedly", "worker process has died", "ActorDiedError")


def _result_rows(text: str, where: str) -> list[dict[str, Any]]:
    """The epochs of a result.json; a last line cut off by a killed driver is skipped, anything else is an error."""
    lines = [line for line in text.splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
            if number == len(lines) and not isinstance(err, RecursionError):
                log.warning("%s/%s: skipped its last line, cut off (%s)", where, _RESULTS, err)
                break
            text = str(err)[:200]
            raise InputError(f"{where}/{_RESULTS}: line {number} is not JSON ({text}); the file is damaged") from None
        if not isinstance(row, dict):
            raise InputError(f"{where}/{_RESULTS}: line {number} is not a JSON object; the file is damaged")
        rows.append(_numeric_metrics(row, f"{where}/{_RESULTS}: line {number}"))
    return rows


# What a result line must hold as numbers (the metrics selection and tables compare) or, for the checkpoint, a name.
_NUMERIC = (*EPOCH_METRICS, "training_iteration")


def _numeric_metrics(row: dict[str, Any], where: str) -> dict[str, Any]:
    """The row with every metric that is not a real number dropped (with a warning): a damaged or crafted value
    must not turn a sort or a comparison into a TypeError."""
    bad = [
        key
        for key, value in row.items()
        if (key in _NUMERIC or key.startswith("best_"))
        and not (isinstance(value, (int, float)) and not isinstance(value, bool))
        and value is not None
    ]
    if not isinstance(row.get("checkpoint_dir_name", ""), (str, type(None))):
        bad.append("checkpoint_dir_name")
    if bad:
        log.warning("%s: ignored %s, not a number as a metric must be", where, ", ".join(sorted(bad)))
        row = {k: v for k, v in row.items() if k not in bad}
    return row


def summarize_error(text: str | None) -> str:
    """One line saying what went wrong with a trial; the full text stays in the trial's error.txt.

    A worker that died is "worker died: ..." with Ray's exit type and detail and what usually causes it; an
    exception is its last traceback line.
    """
    text = (text or "").strip()
    if "OutOfMemoryError" in text or "running low on memory" in text:
        return (
            "worker died: Ray's memory monitor killed it because the node ran low on memory; use fewer trials at "
            "once (--max-concurrent), a smaller batch_size or max_length"
        )
    if any(marker in text for marker in _DIED):
        pid = re.search(r"\bpid: (\d+)", text)
        kind = re.search(r"Worker exit type: (\w+)", text)
        detail = re.search(r"Worker exit detail: (.*?)(?: Some common causes|\n|$)", text)
        facts = ", ".join(
            part
            for part in (
                f"pid {pid[1]}" if pid else "",
                f"exit type {kind[1]}" if kind else "",
                detail[1].strip().rstrip(".") if detail else "",
            )
            if part
        )
        return (
            f"worker died ({facts or 'no detail recorded'}): its process was killed or crashed without a Python "
            "error, most often by the kernel's OOM killer (check `dmesg` and the trial's memory use)"
        )[:300]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "error (no message recorded)"


def load_settings(folder: Path) -> dict[str, Any]:
    """The settings saved with an experiment ({} when there are none)."""
    path = Path(folder) / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InputError(
            f"{path}: not valid JSON ({str(err)[:200]}); the file is damaged — restore it, or start the "
            "experiment again under another --name"
        ) from None
    if not isinstance(settings, dict):
        raise InputError(f"{path}: expected a JSON object of settings, found {type(settings).__name__}")
    return settings


@dataclass
class BestInfo:
    """best/config.json: the trial export chose, its epoch, the metric it was chosen by and its values there, the
    configuration it trained with and the model it is. A file of an earlier version may lack a part (its default)."""

    trial_id: str
    trial_path: str = ""
    checkpoint: str = ""
    epoch: int | None = None
    selected_by: str = DEFAULT_METRIC
    val_metrics: dict[str, float] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)  # as saved (TrainConfig.from_saved reads it)
    model_config: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)  # export.describe_model: what the report shows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> BestInfo | None:
        """The record of a file's JSON object; None when it names no trial (damaged, or not an export's)."""
        if not isinstance(data, dict) or not data.get("trial_id"):
            return None
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for name in ("val_metrics", "train_config", "model_config", "model"):
            if not isinstance(known.get(name, {}), dict):
                known.pop(name)
        known["trial_id"] = str(known["trial_id"])
        epoch = known.get("epoch")
        known["epoch"] = int(epoch) if isinstance(epoch, int | float) and not isinstance(epoch, bool) else None
        return cls(**known)


def best_info(folder: Path) -> BestInfo | None:
    """The exported best trial's record (folder/best/config.json), or None when there is none or it is damaged."""
    path = Path(folder) / files.BEST_DIR / files.RUN_CONFIG_FILE
    try:
        data = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return BestInfo.from_dict(data)


def saved_search(folder: Path) -> SavedSearch:
    """The settings saved with an experiment, parsed (the defaults when there are none)."""
    return SavedSearch.from_dict(load_settings(folder))


def save_settings(folder: Path, settings: dict[str, Any]) -> Path:
    return write_json(Path(folder) / SETTINGS_FILE, settings)


def experiment_path(folder: Path, storage: str | None) -> str:
    """Where Ray keeps the experiment (trial folders, experiment state): under --storage, or the folder itself."""
    if storage:
        return storage.rstrip("/") + "/" + Path(folder).name
    return str(Path(folder).resolve())


def _best_row(history: pd.DataFrame, metric: str) -> pd.Series | None:
    if metric not in history or not history[metric].notna().any():
        return None
    values = history[metric]
    return history.loc[values.idxmin() if metric_mode(metric) == "min" else values.idxmax()]


def stop_reason(status: str, epochs_run: int, planned: int | None, error: str = "", patience: int | None = None) -> str:
    """Why a trial ended, in words: finished, stopped by ASHA at epoch N, early stopping at epoch N, error: ….

    A TERMINATED trial with fewer epochs than planned was stopped by ASHA, unless it ran `patience` epochs
    past its best one (train.fit's own early stopping; the caller knows whether it did).
    """
    if status == "ERROR":
        return f"error: {error or 'no message recorded'}"
    if status != "TERMINATED":
        return (
            f"{status.lower()} (search interrupted)" if status in ("RUNNING", "PAUSED", "PENDING") else status.lower()
        )
    if planned is None or epochs_run >= planned:
        return "finished"
    if patience:
        return f"early stopping at epoch {epochs_run} (no better metric for {patience} epochs)"
    return f"stopped by ASHA at epoch {epochs_run}"


def trials_table(trials: list[Trial], metric: str = VAL_LOSS, max_epochs: int | None = None) -> pd.DataFrame:
    """One row per trial: searched config, status, why it stopped, epochs run, each trial's BEST val metrics."""
    rows = []
    for trial in trials:
        row: dict[str, Any] = {"trial_id": trial.trial_id, "status": trial.status}
        for key, value in sorted(trial.config.items()):
            if "__" not in key:  # Optuna's per-model names (batch_size__<model>) repeat a field's value
                # A mapping (model_config) as one JSON cell: comparable, and readable in trials.csv.
                row[f"config/{key}"] = json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
        best = _best_row(trial.history, metric)
        if best is not None:
            row["epochs_run"] = int(trial.history["training_iteration"].max())
            row["best_epoch"] = int(best.get("epoch", best["training_iteration"]))
            for m in SUMMARY_METRICS:
                row[best_column(m)] = float(best[m]) if m in best else math.nan
        else:
            row["epochs_run"] = 0
        planned = min((e for e in (max_epochs, trial.config.get("epochs")) if isinstance(e, int)), default=None)
        patience = trial.config.get("early_stopping_patience")
        stalled = best is not None and patience and row["epochs_run"] - row["best_epoch"] >= patience
        row["stop_reason"] = stop_reason(
            trial.status, row["epochs_run"], planned, trial.error, patience if stalled else None
        )
        row["error"] = trial.error
        row["path"] = trial.path
        rows.append(row)
    table = pd.DataFrame(rows)
    key = best_column(metric)
    if key in table:
        ascending = metric_mode(metric) == "min"
        table = table.sort_values(key, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)
    return table


def write_trials_table(path: str, folder: Path, metric: str = VAL_LOSS) -> pd.DataFrame:
    """trials.csv in the local experiment folder."""
    table = trials_table(Experiment(path).trials(), metric, saved_search(folder).planned_epochs())
    write_csv(Path(folder) / TRIALS_FILE, table)
    return table


def best_checkpoint(experiment: Experiment, metric: str = VAL_LOSS) -> tuple[Trial, str, dict[str, Any]]:
    """(trial, checkpoint folder name, that epoch's metrics) of the best `metric` over every kept checkpoint.

    The search keeps each trial's checkpoints ranked by the same metric, so its best epoch is among them.
    """
    best: tuple[float, Trial, str, dict[str, Any]] | None = None
    for trial in experiment.trials():
        if "checkpoint_dir_name" not in trial.history:
            continue
        for row in trial.history.to_dict("records"):
            name, value = row.get("checkpoint_dir_name"), row.get(metric)
            if not isinstance(name, str) or value is None or not math.isfinite(value):
                continue
            if (best is None or is_better(metric, value, best[0])) and experiment.checkpoint_exists(trial, name):
                best = (value, trial, name, row)
    if best is None:
        raise RunFailure(f"{experiment.path}: no trial has a checkpoint with a finite {metric} yet")
    return best[1], best[2], best[3]


def print_summary(table: pd.DataFrame, metric: str = VAL_LOSS) -> None:
    if table.empty:
        print("\nno trial has run yet")
        return
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    print(f"\n{len(table)} trial(s): " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())))
    key = best_column(metric)
    shown = [c for c in table.columns if c.startswith("config/") and table[c].nunique(dropna=False) > 1]
    metric_cols = [c for c in dict.fromkeys((key, *map(best_column, (VAL_LOSS, VAL_RMSE, VAL_R2)))) if c in table]
    cols = ["trial_id", "status", "epochs_run", *metric_cols, *shown]
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table[cols].head(10).rename(columns=lambda c: c.removeprefix("config/")).to_string(index=False))
    failed = table[table["status"] == "ERROR"]
    for _, row in failed.iterrows():
        print(f"  failed {row['trial_id']}: {row['error']}")

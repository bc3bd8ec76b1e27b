"""The search's console: Ray Tune's status table with our columns, trial and best-so-far lines, Ray's hints fixed."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shlex
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import tune

from tune_ph import files
from tune_ph.metrics import (
    TEST_MAE,
    TEST_N_SAMPLES,
    TEST_R2,
    TEST_R2_CI95,
    TEST_RMSE,
    VAL_LOSS,
    VAL_R2,
    VAL_RMSE,
    best_column,
    is_better,
)
from tune_ph.report import monitor, results

if TYPE_CHECKING:
    from tune_ph.baseline.reference import Reference

# Ray 2.60's default output engine ("AIR", RAY_AIR_NEW_OUTPUT unset or 1) ignores RunConfig(progress_reporter=...)
# with a warning and shows hyperparameter columns only for Tune search-space objects in param_space, which an
# Optuna define-by-run space has none of; it also prints a TensorBoard path under /tmp/ray. The classic engine
# (RAY_AIR_NEW_OUTPUT=0, read when Tuner.fit starts) honours the reporter and prints neither.
NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"
# Ray logs every failed trial's whole traceback (~40 lines) into the console; SearchProgress prints its last line
# and the path of the trial's error.txt (which has all of it) instead. --verbose 2 or the variable set keeps them.
TRACEBACKS_ENV = "TUNE_PRINT_ALL_TRIAL_ERRORS"
# Ray log lines that give the wrong advice for a tune_ph search (logger -> message fragments); what replaces them:
#  - "Set RAY_AUTH_MODE=disabled to opt out": tune_ph keeps token auth on (README "Security and trust").
#  - "Resume experiment with: Tuner.restore(...)" and "Trials did not complete": run_search prints the
#    `--resume` command and the summary lists every trial with its status and error.
RAY_HINTS = {
    "ray._private.authentication.authentication_token_setup": ("to opt out",),
    "ray.tune.tune": ("Experiment has been interrupted", "Trials did not complete"),
}
# Why the k-mer baseline is on the console, said where it is printed.
BASELINE_WHY = (
    "a plain regression on each sample's k-mer frequencies, no language model, fit in seconds on the same train "
    "split: the DNA model earns its cost only where it predicts better than this"
)
# The status table is printed when trials changed (status or epoch), at most this often, and otherwise as a
# heartbeat; the trial and best-so-far lines in between say what happened.
TABLE_EVERY_S = 30.0
HEARTBEAT_S = 600.0
# The search's baseline (tune_ph.baseline.reference.reference_baseline) while beside_best holds; not part of
# SearchProgress, which Ray pickles with the experiment.
_BESIDE: dict[str, Any] = {}


class _DropHints(logging.Filter):
    def __init__(self, fragments: Sequence[str]):
        super().__init__()
        self.fragments = tuple(fragments)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


def quiet_ray_hints() -> None:
    """Drop Ray's log lines that contradict tune_ph's own commands (calling it again changes nothing)."""
    for name, fragments in RAY_HINTS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropHints) for f in logger.filters):
            logger.addFilter(_DropHints(fragments))


@contextlib.contextmanager
def ray_console(verbose: int = 1) -> Iterator[None]:
    """While Tuner.fit runs (Ray reads both when it starts): the classic output engine, the one that shows our
    reporter, and no traceback per failed trial below --verbose 2. The environment is restored after."""
    quiet_ray_hints()  # Tuner.restore is suggested when fit ends
    values = {NEW_OUTPUT_ENV: "0"}
    if verbose < 2 and TRACEBACKS_ENV not in os.environ:
        values[TRACEBACKS_ENV] = "0"
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def beside_best(reference: Reference | None) -> Iterator[None]:
    """While it holds, each best-so-far line is followed by the best trial's val R² against this baseline."""
    saved = dict(_BESIDE)
    _BESIDE.update(baseline=reference)
    try:
        yield
    finally:
        _BESIDE.clear()
        _BESIDE.update(saved)


def beside_baseline(r2: Any) -> str:
    """`; val R² 0.521 (baseline kmer8-ridge 0.470)` inside beside_best: the numbers only, short enough for every new
    best (the comparison in words is printed once at the start and once at the end); "" without both numbers."""
    reference = _BESIDE.get("baseline")
    other = reference.metrics.get(VAL_R2) if reference else None
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (r2, other)):
        return ""
    return f"; val R² {r2:.3f} (baseline {reference.chosen} {other:.3f})"


def metric_columns(metric: str) -> dict[str, str]:
    """The table's metric columns (result key -> header): the search metric and its best first."""
    others = [m for m in (VAL_RMSE, VAL_R2, VAL_LOSS) if m != metric][:2]
    columns = {metric: metric, best_column(metric): f"best {metric}"}
    columns.update({m: m for m in others})
    columns.update({"training_iteration": "epoch", "time_total_s": "time (s)"})
    return columns


class StatusTable(tune.CLIReporter):
    """Ray's status table with a column per searched hyperparameter and our metrics, printed when it changed.

    Ray's own best-trial line is left out (no metric is given to Ray): it ranks trials by their last epoch, not
    their best, and raises KeyError when the best trial lacks a conditional parameter (head_dropout of a linear
    head). SearchProgress prints the best-so-far line instead.
    """

    def __init__(self, params: Sequence[str], metric: str, logdir: str, every_s: float = TABLE_EVERY_S):
        super().__init__(
            parameter_columns=list(params),
            metric_columns=metric_columns(metric),
            max_report_frequency=int(every_s),
            print_intermediate_tables=True,
        )
        self._every_s = every_s
        self._logdir = logdir
        self._last_time = 0.0
        self._last_state: tuple | None = None

    def setup(self, *args: Any, **kwargs: Any) -> None:
        super().setup(*args, **kwargs)
        # The first table once trials have run a while: at the start every trial is PENDING.
        self._last_time = time.monotonic()

    def should_report(self, trials: list[Any], done: bool = False) -> bool:
        if done:
            return True
        now = time.monotonic()
        state = tuple((t.trial_id, t.status, (t.last_result or {}).get("training_iteration")) for t in trials)
        waited = now - self._last_time
        due = waited >= self._every_s and (state != self._last_state or waited >= HEARTBEAT_S)
        if due:
            self._last_time, self._last_state = now, state
        return due

    def _print(self, msg: str) -> None:
        # Ray's "Result logdir" and its errored-trials table point into its driver staging folder under /tmp/ray,
        # not where the results are; the ASHA "Bracket:" line is rung cut-offs with the sign flipped for a min
        # metric. A blank line before, none after.
        lines: list[str] = []
        in_errors = False
        for line in msg.rstrip("\n").splitlines():
            if line.startswith("Number of errored trials:"):
                in_errors = True
                line += f" (the error of each: {self._logdir}/trial_<id>/error.txt)"
            elif in_errors and line[:1] in "+|":
                continue
            elif line.startswith("Result logdir:"):
                line = f"Result logdir: {self._logdir}"
            if not line.startswith("Bracket:"):
                lines.append(line)
        super()._print("\n" + "\n".join(lines))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def describe(config: dict[str, Any], params: Sequence[str]) -> str:
    """`head=mlp2 learning_rate=0.000684` for the searched hyperparameters a trial has (conditional ones may not)."""
    return " ".join(f"{p}={_fmt(config[p])}" for p in params if p in config)


class SearchProgress(tune.Callback):
    """One line when a trial starts, ends or fails, and a best-so-far line whenever the best trial or value changes.

    The best is by each trial's running best of the search metric (`best_<metric>`, what TPE and the export use),
    over every trial Ray knows, so it is right after --resume too. Plain state only: Ray pickles callbacks with
    the experiment for --resume.
    """

    def __init__(self, params: Sequence[str], metric: str, verbose: int = 1, max_epochs: int | None = None):
        self.params = list(params)
        self.metric = metric
        self.best_key = best_column(metric)
        self.max_epochs = max_epochs
        self.verbose = verbose
        self._shown: tuple[str, float] | None = None
        self._best_epoch: dict[str, int] = {}

    def _say(self, text: str) -> None:
        if self.verbose >= 1:
            print(text, flush=True)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._say(f"{trial} started: {describe(trial.config, self.params)}")

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any) -> None:
        if result.get(self.metric) is not None and result.get(self.metric) == result.get(self.best_key):
            self._best_epoch[trial.trial_id] = int(result.get("epoch", result.get("training_iteration", 0)))
            # Set here, not in __init__: a callback pickled before this existed is restored by --resume.
            self.__dict__.setdefault("_best_r2", {})[trial.trial_id] = result.get(VAL_R2)
        best: tuple[Any, float] | None = None
        for t in trials:
            # Ray calls callbacks before it stores the result as the trial's last_result.
            value = (result if t is trial else (t.last_result or {})).get(self.best_key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                if best is None or is_better(self.metric, float(value), best[1]):
                    best = (t, float(value))
        if best is None or (best[0].trial_id, best[1]) == self._shown:
            return
        self._shown = (best[0].trial_id, best[1])
        epoch = self._best_epoch.get(best[0].trial_id)
        at = f" (epoch {epoch})" if epoch else ""
        beside = beside_baseline(self.__dict__.get("_best_r2", {}).get(best[0].trial_id))
        said = describe(best[0].config, self.params)
        self._say(f"best so far: {best[0]}  {self.metric} {best[1]:.4g}{at}  {said}{beside}")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        # ASHA's max_epochs, not the config's epochs: a trial that reaches max_epochs has finished.
        epochs, planned = last.get("training_iteration", 0), self.max_epochs or trial.config.get("epochs")
        value = last.get(self.best_key)
        best = f": best {self.metric} {value:.4g}" if isinstance(value, (int, float)) else ""
        if planned and epochs < planned:
            self._say(f"{trial} stopped early after epoch {epochs} of {planned}{best}")
        else:
            self._say(f"{trial} finished {epochs} epoch(s){best}")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        epochs = (trial.last_result or {}).get("training_iteration", 0)
        # Ray has written the error (the whole traceback) to the trial's error.txt before it calls us.
        error = _last_line(getattr(trial, "error_file", None))
        where = f"{trial.path}/error.txt" if getattr(trial, "path", None) else "the trial's error.txt"
        self._say(f"{trial} FAILED after {epochs} epoch(s): {error}\n  traceback: {where}; the other trials go on")


def _last_line(path: str | None) -> str:
    try:
        lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()] if path else []
    except OSError:
        lines = []
    return lines[-1][:300] if lines else "(no error message recorded)"


def logdir_of(folder: Path, storage: str | None) -> str:
    """The folder holding the trial folders (TensorBoard's --logdir): as the user gave it, or under --storage."""
    return str(folder) if storage is None else results.experiment_path(folder, storage)


def command(*words: str | Path) -> str:
    return " ".join(shlex.quote(str(w)) for w in words)


def resume_command(folder: Path) -> str:
    """The command that continues this experiment (the folder is --output-dir/--name)."""
    folder = Path(folder)
    words: list[str | Path] = ["python", "-m", "tune_ph.search", "--name", folder.name]
    if folder.parent != Path("experiments"):
        words += ["--output-dir", folder.parent]
    return command(*words, "--resume")


# Stands for the user's own samples in the predict command shown (any --dataset source; README "Predict new samples").
NEW_SAMPLES = "NEW_SAMPLES"


def predict_command(folder: Path) -> str:
    """The predict command for new samples with an experiment's exported winner (its best/ folder)."""
    return command(
        "python",
        "-m",
        "tune_ph",
        "predict",
        "--checkpoint",
        Path(folder),
        "--dataset",
        NEW_SAMPLES,
        "--output",
        "predictions.csv",
    )


def watch_commands(folder: Path, logdir: str) -> list[tuple[str, str]]:
    """(command, what it shows) for TensorBoard and optuna-dashboard on this experiment."""
    missing = "" if monitor.tensorboard_installed() else f" (needs {monitor.MONITOR_HINT})"
    out = [(command("tensorboard", "--logdir", logdir), f"every trial's learning curves{missing}")]
    missing = "" if monitor.dashboard_installed() else f" (needs {monitor.MONITOR_HINT})"
    out.append(
        (command("python", "-m", "tune_ph", "monitor", folder), f"the Optuna study in optuna-dashboard{missing}")
    )
    return out


def print_start(
    folder: Path, logdir: str, num_samples: int, dashboard_url: str | None = None, baseline_line: str | None = None
) -> None:
    """Where the results go, how to watch them live, and the k-mer baseline to beat (and why it is shown)."""
    print(f"search {Path(folder).name}: {num_samples} trial(s); results in {folder}")
    if baseline_line:
        print(f"  the bar to clear: {baseline_line}")
        print(f"    ({BASELINE_WHY})")
    tensorboard, what = watch_commands(folder, logdir)[0]
    print(f"  watch it live: {tensorboard}  ({what})")
    if dashboard_url:
        print(f"  optuna-dashboard: {dashboard_url} (stops when the search ends)")


def print_winner(folder: Path, table: Any, metric: str, test: dict[str, Any], reference: Reference | None) -> None:
    """The search's end: the winning trial, its searched hyperparameters, its test metrics beside the baseline chosen
    on val, and what they mean (report.html's first section, in a few lines)."""
    from tune_ph.baseline.reference import Comparison, baseline_line, with_interval
    from tune_ph.report import winner as winners

    folder = Path(folder)
    won = winners.find_winner(table, results.saved_search(folder), metric, results.best_info(folder), test)
    if won is None:
        return
    name = won.trial_id if won.trial_id.startswith("trial_") else f"trial_{won.trial_id}"
    why = f", {metric} {won.value:.4g} at epoch {won.epoch}" if won.value is not None else ""
    rank = f" (rank {won.rank} of {won.ranked} trials)" if won.rank is not None else ""
    print(f"\nwinner: {name}{why}{rank}")
    searched = ", ".join(f"{n}={v}" if not v.startswith("not used") else f"{n} {v}" for n, v in won.searched)
    print(f"  searched hyperparameters: {searched or 'none'}")
    n = test.get(TEST_N_SAMPLES)
    shown = f"R² {with_interval(test.get(TEST_R2), test.get(TEST_R2_CI95))}" + "".join(
        f", {label} {value:.3f}"
        for key, label in ((TEST_RMSE, "RMSE"), (TEST_MAE, "MAE"))
        if isinstance(value := test.get(key), (int, float))
    )
    print(f"  test split ({f'{n} samples, ' if n else ''}held out, evaluated once): {shown}")
    print(f"  {baseline_line(reference)}" if reference else "  baseline: skipped (--no-baseline)")
    comparison = Comparison.from_dict(test.get("vs_baseline"))
    if comparison is not None:
        print(f"  {comparison.line()}")
    words = winners.r2_in_words(test)
    if words:
        print(f"  in words: {words}")


def print_outputs(folder: Path, logdir: str, metric: str, *, finished: bool, exported: bool) -> None:
    """Every output of the search, and the commands that continue from them."""
    folder = Path(folder)
    best = folder / files.BEST_DIR
    rows: list[tuple[str, str]] = [
        (results.TRIALS_FILE, "one row per trial: hyperparameters, status, epochs, best validation metrics, error"),
    ]
    if (folder / results.REPORT_FILE).is_file():
        what = (
            "open it in a browser: it opens with the winner (its hyperparameters, why it won) and its test metrics\n"
            f"beside the k-mer baseline; then learning curves, {metric} by hyperparameter, every trial, importances"
        )
        rows.append((results.REPORT_FILE, what))
    if (best / files.METRICS_FILE).is_file():
        names = (
            files.MODEL_FILE,
            files.RUN_CONFIG_FILE,
            files.METRICS_FILE,
            files.PREDICTIONS_FILE,
            files.RESIDUALS_FILE,
        )
        present = ", ".join(n for n in names if (best / n).is_file())
        rows.append((f"{files.BEST_DIR}/", f"the best trial's best epoch, tested once on the test split:\n{present}"))
    rows.append((results.STUDY_FILE, "the Optuna study: what TPE learned (--resume continues it)"))
    rows.append(("trial_<id>/", "Ray's per-trial results, TensorBoard events and checkpoints"))
    print(f"\noutputs in {folder}/:")
    width = max(len(name) for name, _ in rows)
    for name, what in rows:
        first, *more = what.splitlines()
        print(f"  {name:<{width}}  {first}")
        for line in more:
            print(f"  {'':<{width}}    {line}")
    missing = [n for n in (results.REPORT_FILE, f"{files.BEST_DIR}/") if n not in {r[0] for r in rows}]
    if missing:
        why = "see the warning above" if exported else "--no-export" if finished else "the search did not finish"
        print(f"  not written: {', '.join(missing)} ({why}; the export command below writes them)")
    nexts = watch_commands(folder, logdir)
    what = "export and test the best trial" + (" again" if exported else "" if finished else " so far")
    nexts.append((command("python", "-m", "tune_ph", "export", folder), what))
    if (best / files.MODEL_FILE).is_file():
        nexts.append((predict_command(folder), "predict new samples with the winner (or --fasta-dir READS_DIR)"))
    if not finished:
        nexts.insert(0, (resume_command(folder), "continue the search where it stopped"))
    print("next:")
    width = max(len(c) for c, _ in nexts)
    for cmd, what in nexts:
        print(f"  {cmd:<{width}}  {what}")

"""Metric names (what a run records and reports, which way is better), the target's names, and regression metrics."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np  # light (scikit-learn, for the point metrics, is imported where they are computed)

# ------------------------------------------------------------------------------------------------ the target

# The column a model predicts unless told otherwise, and its physical range (values outside are bad rows).
DEFAULT_TARGET = "pH"
PH_RANGE = (0.0, 14.0)


@dataclass(frozen=True)
class TargetNames:
    """Every user-facing name of the predicted quantity: the column it is read from, the words the console and the
    report use, and the prediction CSVs' columns (pH keeps the names of earlier versions: true_ph,
    predicted_ph_mean, predicted_ph_sd)."""

    name: str  # the dataset column, as the user wrote it: "pH", "temperature"
    slug: str  # its form in column names: "ph", "temperature"
    true: str  # true_<slug>
    predicted: str  # predicted_<slug>_mean: the sample's one prediction
    predicted_sd: str  # predicted_<slug>_sd: the spread of what each read set alone predicts
    residual: str = "residual_mean"  # observed minus predicted, whatever the target

    def renamed(self, names: TargetNames) -> dict[str, str]:
        """Column renames from these names to another target's (a table built with pH's names, written as its own)."""
        return {self.true: names.true, self.predicted: names.predicted, self.predicted_sd: names.predicted_sd}


def target_names(target: str = DEFAULT_TARGET) -> TargetNames:
    """The names of a target column: "pH" -> true_ph, predicted_ph_mean; "Temperature (C)" -> true_temperature_c."""
    slug = re.sub(r"[^0-9a-z]+", "_", target.strip().lower()).strip("_") or "target"
    return TargetNames(
        name=target,
        slug=slug,
        true=f"true_{slug}",
        predicted=f"predicted_{slug}_mean",
        predicted_sd=f"predicted_{slug}_sd",
    )


def target_range(
    target: str = DEFAULT_TARGET, given: tuple[float, float] | list[float] | None = None
) -> tuple[float, float]:
    """The values a target may take: the given range, pH's 0-14, or any finite value."""
    if given is not None:
        return float(given[0]), float(given[1])
    return PH_RANGE if target == DEFAULT_TARGET else (-math.inf, math.inf)


# A metric's name is <split>_<statistic> (val_r2, test_rmse), made here and nowhere else: metric_name().
SPLITS = ("train", "val", "test")
STATISTICS = ("loss", "mse", "rmse", "mae", "r2", "n_samples")
# The statistics regression_metrics computes, and those a bootstrap interval is given for.
POINT_STATISTICS = ("mse", "rmse", "mae", "r2")
INTERVAL_STATISTICS = ("r2", "rmse", "mae")
CI_SUFFIX = "_ci95"
BEST_PREFIX = "best_"


def metric_name(split: str, statistic: str, *, interval: bool = False) -> str:
    """The name of a statistic on a split ("val", "r2" -> "val_r2"); interval: its 95 % bootstrap interval's
    ("test_r2_ci95")."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; one of: {', '.join(SPLITS)}")
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; one of: {', '.join(STATISTICS)}")
    return f"{split}_{statistic}{CI_SUFFIX if interval else ''}"


TRAIN_LOSS = metric_name("train", "loss")
VAL_LOSS, VAL_MSE, VAL_RMSE, VAL_MAE, VAL_R2 = (metric_name("val", s) for s in ("loss", "mse", "rmse", "mae", "r2"))
TEST_MSE, TEST_RMSE, TEST_MAE, TEST_R2 = (metric_name("test", s) for s in ("mse", "rmse", "mae", "r2"))
TRAIN_N_SAMPLES, TEST_N_SAMPLES = metric_name("train", "n_samples"), metric_name("test", "n_samples")
TEST_R2_CI95 = metric_name("test", "r2", interval=True)
EPOCH = "epoch"
# What a search ranks trials by when its file does not say.
DEFAULT_METRIC = VAL_LOSS

# Validation metrics a run can be selected by, each with the direction that is better.
METRIC_MODES: dict[str, str] = {VAL_LOSS: "min", VAL_RMSE: "min", VAL_MAE: "min", VAL_R2: "max"}
# What fit() records per epoch (training_log.json, a checkpoint's history) and a trial reports to Ray Tune.
EPOCH_METRICS = (EPOCH, TRAIN_LOSS, VAL_LOSS, VAL_RMSE, VAL_MAE, VAL_R2, VAL_MSE, "lr", "epoch_seconds")
# The per-epoch metrics a trial is summed up by: its best epoch's, as best_<metric> columns of trials.csv.
SUMMARY_METRICS = (VAL_LOSS, VAL_RMSE, VAL_MAE, VAL_R2, TRAIN_LOSS)


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


def regression_metrics(true: np.ndarray, predicted: np.ndarray, split: str | None = None) -> dict[str, float]:
    """MSE, RMSE, MAE, R² of per-sample values; NaN where undefined (no samples; R² of one sample).

    split: the values are that split's, named metric_name(split, statistic) ("val_r2"); None: the bare statistics.
    """
    # scikit-learn here, not at the top: the metric names above are read by every command's --help.
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    if len(true) == 0:
        values = dict.fromkeys(POINT_STATISTICS, math.nan)
    else:
        mse = float(mean_squared_error(true, predicted))
        values = {
            "mse": mse,
            "rmse": math.sqrt(mse),
            "mae": float(mean_absolute_error(true, predicted)),
            "r2": float(r2_score(true, predicted)) if len(true) >= 2 else math.nan,
        }
    return {metric_name(split, name) if split else name: value for name, value in values.items()}


# Bootstrap confidence intervals: percentile intervals over resampled samples, seeded so every rerun of a
# results file gives the same interval. 2,000 resamples put the 2.5 % and 97.5 % points within about ±0.005 R².
CI_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
_BLOCK = 250  # resamples scored at once: memory stays at _BLOCK x n samples whatever BOOTSTRAP_RESAMPLES is


def _resampled_scores(
    true: np.ndarray, predictions: list[np.ndarray], n_boot: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """R², RMSE and MAE of each prediction on the same n_boot resamples of the samples (with replacement)."""
    rng = np.random.default_rng(seed)
    n = len(true)
    out: list[dict[str, list[np.ndarray]]] = [{"r2": [], "rmse": [], "mae": []} for _ in predictions]
    for start in range(0, n_boot, _BLOCK):
        idx = rng.integers(0, n, size=(min(_BLOCK, n_boot - start), n))
        t = true[idx]
        sst = ((t - t.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
        for scores, predicted in zip(out, predictions):
            err = t - predicted[idx]
            sse = (err**2).sum(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):  # a resample of one repeated value has no R²
                scores["r2"].append(np.where(sst > 0, 1 - sse / sst, np.nan))
            scores["rmse"].append(np.sqrt(sse / n))
            scores["mae"].append(np.abs(err).mean(axis=1))
    return [{name: np.concatenate(parts) for name, parts in scores.items()} for scores in out]


def _interval(values: np.ndarray, level: float = CI_LEVEL) -> list[float] | None:
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return None
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return [float(lo), float(hi)]


def bootstrap_ci(
    true: np.ndarray,
    predicted: np.ndarray,
    split: str = "test",
    *,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, list[float] | None]:
    """95 % bootstrap intervals of R², RMSE and MAE over a split's samples: {"test_r2_ci95": [lo, hi], ...}.

    The samples are resampled with replacement (seeded: the same inputs give the same intervals); None where
    undefined (fewer than 2 samples).
    """
    true, predicted = np.asarray(true, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    names = [metric_name(split, name, interval=True) for name in INTERVAL_STATISTICS]
    if len(true) < 2:
        return dict.fromkeys(names)
    (scores,) = _resampled_scores(true, [predicted], n_boot, seed)
    return {metric_name(split, name, interval=True): _interval(values) for name, values in scores.items()}


def paired_delta_r2(
    true: np.ndarray,
    predicted: np.ndarray,
    reference: np.ndarray,
    *,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, list[float] | None]:
    """R² of `predicted` minus R² of `reference` on the same samples, and its 95 % paired bootstrap interval.

    Paired: both are scored on the very same resamples, so what the samples share (a hard study, an outlier)
    cancels out of the difference and the interval is narrower than two separate intervals suggest.
    """
    true = np.asarray(true, dtype=np.float64)
    predicted, reference = np.asarray(predicted, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if len(true) < 2:
        return math.nan, None
    delta = regression_metrics(true, predicted)["r2"] - regression_metrics(true, reference)["r2"]
    ours, theirs = _resampled_scores(true, [predicted, reference], n_boot, seed)
    return float(delta), _interval(ours["r2"] - theirs["r2"])


def verdict(interval: list[float] | None) -> str:
    """Where a difference's interval lies: above 0 "ahead", below 0 "behind", around 0 "not distinguishable"."""
    if not interval:
        return "not distinguishable"
    lo, hi = interval
    return "ahead" if lo > 0 else "behind" if hi < 0 else "not distinguishable"

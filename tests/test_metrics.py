"""Bootstrap intervals of test metrics and the paired difference in R² to a baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tune_ph.metrics import bootstrap_ci, paired_delta_r2, regression_metrics, verdict


def _data(n: int = 300, noise: float = 0.7, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    true = rng.normal(7, 1, n)
    return true, true + rng.normal(0, noise, n)


def test_intervals_are_seeded_and_cover_the_point_estimates() -> None:
    true, predicted = _data()
    ci = bootstrap_ci(true, predicted)
    assert set(ci) == {"test_r2_ci95", "test_rmse_ci95", "test_mae_ci95"}
    assert ci == bootstrap_ci(true, predicted)  # seeded: the same numbers every time
    assert bootstrap_ci(true, predicted, seed=1) != ci
    point = regression_metrics(true, predicted)
    for name in ("r2", "rmse", "mae"):
        lo, hi = ci[f"test_{name}_ci95"]
        assert lo < point[name] < hi, (name, lo, point[name], hi)
    # R² 0.5 from 300 samples: the interval is about ±0.1 wide (sd of R² ~ 0.05); a quarter of the samples, twice.
    width = np.diff(ci["test_r2_ci95"])[0]
    assert 0.1 < width < 0.3
    quarter = bootstrap_ci(true[:75], predicted[:75], "val")["val_r2_ci95"]
    assert np.diff(quarter)[0] > 1.5 * width


def test_intervals_are_undefined_below_two_samples() -> None:
    assert bootstrap_ci(np.array([7.0]), np.array([6.5])) == dict.fromkeys(
        ["test_r2_ci95", "test_rmse_ci95", "test_mae_ci95"]
    )
    delta, interval = paired_delta_r2(np.array([7.0]), np.array([6.5]), np.array([6.0]))
    assert math.isnan(delta) and interval is None


def test_paired_difference_and_its_verdict() -> None:
    true, good = _data(noise=0.5)
    rng = np.random.default_rng(2)
    worse = true + rng.normal(0, 0.9, len(true))
    delta, interval = paired_delta_r2(true, good, worse)
    expected = regression_metrics(true, good)["r2"] - regression_metrics(true, worse)["r2"]
    assert delta == pytest.approx(expected) and interval[0] < delta < interval[1]
    assert verdict(interval) == "ahead" and interval[0] > 0
    back, back_interval = paired_delta_r2(true, worse, good)
    assert back == pytest.approx(-delta) and verdict(back_interval) == "behind"
    # The same predictions: no difference at all; nearly the same: not distinguishable.
    assert paired_delta_r2(true, good, good) == (0.0, [0.0, 0.0])
    _, close = paired_delta_r2(true, good, good + rng.normal(0, 0.05, len(true)))
    assert verdict(close) == "not distinguishable" and close[0] < 0 < close[1]
    assert verdict(None) == "not distinguishable"
    # Paired: narrower than the two models' own intervals would suggest (they share the hard samples).
    ours = np.diff(bootstrap_ci(true, good)["test_r2_ci95"])[0]
    theirs = np.diff(bootstrap_ci(true, worse)["test_r2_ci95"])[0]
    assert np.diff(interval)[0] < math.hypot(ours, theirs)

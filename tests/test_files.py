"""Tests for tune_ph.files: atomic writes, the column names of the predictions CSVs."""

from __future__ import annotations


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    """Results are shared: an atomic write must not leave mkstemp's owner-only 0600 behind."""
    import os
    import stat

    from tune_ph.files import write_json

    path = write_json(tmp_path / "metrics.json", {"r2": float("nan")})
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert path.read_text().strip().endswith("}") and "null" in path.read_text()


PREDICTION_COLUMNS = [
    "sample_id",
    "study_name",
    "true_ph",
    "predicted_ph_mean",
    "predicted_ph_sd",
    "n_sets",
    "residual_mean",
    "environment",
]


def test_evaluate_and_the_baseline_name_their_columns_alike():
    """One name per quantity in every predictions CSV; a baseline has no read sets, so no n_sets and no spread."""
    from types import SimpleNamespace

    import numpy as np
    import pandas as pd

    from tune_ph.baseline import members
    from tune_ph.report.evaluate import predictions_table
    from tune_ph.training.predict import Predictions

    ids, studies, envs = np.array(["a", "b"]), np.array(["s1", "s2"]), np.array(["soil", "lake"])
    preds = Predictions(
        sample_index=np.array([0, 1]),
        predicted=np.array([6.0, 7.5]),
        true=np.array([6.5, 7.0]),
        set_sd=np.array([0.1, np.nan]),
        n_sets=np.array([3, 1]),
    )
    model = predictions_table(SimpleNamespace(sample_ids=ids, study_name=studies, environment=envs), preds)
    assert list(model.columns) == PREDICTION_COLUMNS
    assert model["sample_id"].tolist() == ["a", "b"] and model["residual_mean"].tolist() == [0.5, -0.5]

    samples = pd.DataFrame({"sample_id": ids, "study_name": studies, "environment": envs, "pH": [6.5, 7.0]})
    baseline = members.predictions_table(samples, np.array([6.0, 7.5]))
    assert list(baseline.columns) == [c for c in PREDICTION_COLUMNS if c not in ("predicted_ph_sd", "n_sets")]
    same = ["true_ph", "predicted_ph_mean", "residual_mean"]
    pd.testing.assert_frame_equal(baseline[same], model[same], check_dtype=False)  # and mean the same

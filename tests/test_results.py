"""Reading an experiment folder by hand-made files: damaged result lines, an empty table."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from tune_ph import metrics
from tune_ph.errors import InputError
from tune_ph.report import results


def _experiment(tmp_path, result_text: str):
    folder = tmp_path / "exp"
    (folder / "trial_a").mkdir(parents=True)
    (folder / results.SETTINGS_FILE).write_text(json.dumps({"search": {"metric": "val_loss"}}))
    (folder / "trial_a" / "params.json").write_text(json.dumps({"head": "linear"}))
    (folder / "trial_a" / "result.json").write_text(result_text)
    return folder


def _row(epoch: int, val_loss: float) -> str:
    return json.dumps({"epoch": epoch, "training_iteration": epoch, "val_loss": val_loss}) + "\n"


def test_a_cut_off_last_result_line_is_skipped(tmp_path):
    folder = _experiment(tmp_path, _row(1, 0.5) + _row(2, 0.4) + '{"epoch": 3, "val_lo')
    (trial,) = results.Experiment(str(folder)).trials()
    assert list(trial.history["epoch"]) == [1, 2]
    table = results.trials_table([trial], "val_loss")
    assert table.loc[0, "best_epoch"] == 2


def test_a_damaged_result_line_names_the_file(tmp_path):
    folder = _experiment(tmp_path, _row(1, 0.5) + "garbage\n" + _row(3, 0.3))
    with pytest.raises(InputError, match=r"trial_a/result.json: line 2 is not JSON"):
        results.Experiment(str(folder)).trials()


def test_summary_of_no_trials(capsys):
    results.print_summary(pd.DataFrame(), "val_loss")
    assert "no trial has run yet" in capsys.readouterr().out


def _rows(*rows: dict) -> str:
    return "".join(json.dumps({"training_iteration": row["epoch"], **row}) + "\n" for row in rows)


@pytest.mark.parametrize("metric", list(metrics.METRIC_MODES))
def test_the_best_epoch_follows_the_metrics_mode(tmp_path, metric: str) -> None:
    """metrics.py decides which way each metric is better; the trials table's best_<metric> columns follow it."""
    # Every metric rises from epoch 1 to 2: the best epoch of a loss is 1, of R² 2.
    rows = [{"epoch": e, **{m: value for m in metrics.SUMMARY_METRICS}} for e, value in ((1, 0.3), (2, 0.6))]
    (trial,) = results.Experiment(str(_experiment(tmp_path, _rows(*rows)))).trials()
    row = results.trials_table([trial], metric).iloc[0]
    best = 1 if metric != "val_r2" else 2
    assert metrics.metric_mode(metric) == ("min" if best == 1 else "max")
    assert row["best_epoch"] == best
    assert row[metrics.best_column(metric)] == rows[best - 1][metric]
    assert {metrics.best_column(m) for m in metrics.SUMMARY_METRICS} <= set(row.index)
    assert metrics.is_better(metric, rows[best - 1][metric], rows[2 - best][metric])
    assert not metrics.is_better(metric, float("nan"), metrics.worst_value(metric))


def test_metric_names_have_one_owner() -> None:
    assert metrics.best_column("val_r2") == "best_val_r2"
    assert set(metrics.METRIC_MODES) <= set(metrics.EPOCH_METRICS) and set(metrics.SUMMARY_METRICS) <= set(
        metrics.EPOCH_METRICS
    )
    with pytest.raises(ValueError, match="unknown metric 'val_acc'; choose one of: val_loss, val_rmse"):
        metrics.worst_value("val_acc")


def test_a_trial_needs_nothing_of_report() -> None:
    """What a Ray trial imports (trainable -> fit -> model) stays clear of the report package (matplotlib, HTML)."""
    code = (
        "import sys, tune_ph.search.trainable; print(sorted(m for m in sys.modules if m.startswith('tune_ph.report')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

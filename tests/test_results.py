"""Reading an experiment folder by hand-made files: damaged result lines, an empty table."""

from __future__ import annotations

import json

import pandas as pd
import pytest

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

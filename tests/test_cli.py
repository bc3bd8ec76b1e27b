"""Exit codes: only the input-error family is exit 2 with one line; a bug keeps its traceback and exits 1."""

from __future__ import annotations

import pytest

from tune_ph import cli
from tune_ph.commands import train as train_cli
from tune_ph.data import sources
from tune_ph.errors import ConfigError, InputError, RunFailure, SetupError


def _raises(err: BaseException):
    def main(argv):
        raise err

    return main


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (InputError("--x 3: bad; use 2"), cli.EXIT_BAD_INPUT),
        (ConfigError("epochs", "epochs must be a positive integer, got 0"), cli.EXIT_BAD_INPUT),
        (RunFailure("every trial failed"), cli.EXIT_FAILURE),
        (SetupError("Ray cannot start"), cli.EXIT_FAILURE),
    ],
)
def test_expected_errors_are_one_line(err, code, capsys):
    assert cli.run(_raises(err)) == code
    err_text = capsys.readouterr().err
    assert err_text == f"error: {err}\n"


@pytest.mark.parametrize("err", [ValueError("shapes do not match"), FileNotFoundError("x"), KeyError("k")])
def test_other_errors_keep_their_traceback(err, capsys):
    assert cli.run(_raises(err)) == cli.EXIT_FAILURE
    err_text = capsys.readouterr().err
    assert err_text.startswith("Traceback (most recent call last):") and type(err).__name__ in err_text


def test_a_value_error_deep_inside_a_command_is_a_failure_with_its_traceback(tmp_path, monkeypatch, capsys):
    """A library's ValueError in the middle of `train` (here: the split) is a bug to report, not bad input."""

    def broken_split(*args, **kwargs):
        raise ValueError("Found array with 0 sample(s) (shape=(0,)) while a minimum of 1 is required.")

    monkeypatch.setattr(sources, "split_samples", broken_split)
    monkeypatch.setenv("TUNE_PH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    rc = train_cli.main(["--dataset", "demo", "--from-scratch", "--output-dir", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_FAILURE, err
    assert "Traceback (most recent call last):" in err and "in broken_split" in err, err
    assert err.rstrip().endswith(
        "ValueError: Found array with 0 sample(s) (shape=(0,)) while a minimum of 1 is required."
    )
    assert not err.startswith("error: ")


def test_argparse_usage_errors_stay_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        train_cli.main(["--epochs", "three"])
    assert exit_.value.code == cli.EXIT_BAD_INPUT
    assert "--epochs" in capsys.readouterr().err


def test_keyboard_interrupt_is_130(capsys):
    assert cli.run(_raises(KeyboardInterrupt())) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err == "interrupted\n"

"""The counts issue 23 brought down stay down (benchmarks/count_structure.py counts them)."""

from __future__ import annotations

import importlib.util

from helpers import ROOT

_spec = importlib.util.spec_from_file_location("count_structure", ROOT / "benchmarks" / "count_structure.py")
count_structure = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(count_structure)


def test_no_metric_name_is_spelled_outside_metrics_py():
    assert count_structure.metric_literals() == []


def test_no_subpackage_imports_one_above_it():
    """DESIGN.md's order: commands > search > report > training > model > data, baseline beside (function-local
    imports count)."""
    assert count_structure.upward_imports() == []


def test_every_name_is_imported_from_the_module_that_defines_it():
    assert count_structure.reexports() == []


def test_the_counter_sees_an_upward_import(tmp_path, monkeypatch):
    """The layering test is not vacuous: a model module importing from training is caught."""
    package = tmp_path / "tune_ph"
    (package / "model").mkdir(parents=True)
    (package / "training").mkdir()
    (package / "model" / "bad.py").write_text("def f():\n    from tune_ph.training.fit import fit\n")
    (package / "training" / "fit.py").write_text("def fit():\n    pass\n")
    monkeypatch.setattr(count_structure, "ROOT", tmp_path)
    monkeypatch.setattr(count_structure, "PACKAGE", package)
    (found,) = count_structure.upward_imports()
    assert "tune_ph.model.bad -> tune_ph.training.fit" in found


def test_max_length_is_decided_in_at_most_three_modules():
    """The model's maximum (config), the data's cap and the resolved config (data.tokens), the search's per-model
    length (search.spec); everyone else passes a length on."""
    assert len(count_structure.max_length_deciders()) <= 3, count_structure.max_length_deciders()


def test_one_run_function_calls_fit():
    """The train command and a Ray trial both train through training.run.run."""
    assert [place.rsplit(": ", 1)[1] for place in count_structure.fit_callers()] == ["tune_ph.training.run"]


def test_one_engine_makes_flags_of_every_settings_record():
    """TrainConfig, PretrainConfig and the search settings all get their flags from tune_ph/schema.py."""
    assert count_structure.flag_engines() == ["tune_ph.schema.add_arguments"]


def test_nothing_branches_on_a_part_name():
    """A part's behaviour is its registered class's: no `if kind == "attention"` anywhere in tune_ph/."""
    assert count_structure.part_name_branches() == []


def test_the_counter_sees_a_branch_on_a_part_name(tmp_path, monkeypatch):
    package = tmp_path / "tune_ph"
    package.mkdir()
    (package / "bad.py").write_text(
        "def f(cfg, m):\n    if cfg.aggregation == 'attention' or m in ('hgb', 'x'):\n        return 1\n"
        "    match cfg.head:\n        case 'trees':\n            return 2\n"
    )
    monkeypatch.setattr(count_structure, "ROOT", tmp_path)
    monkeypatch.setattr(count_structure, "PACKAGE", package)
    assert [place.rsplit(": ", 1)[1] for place in count_structure.part_name_branches()] == [
        "'attention'",
        "'hgb'",
        "'trees'",
    ]

"""The counts issue 23 brought down stay down (benchmarks/count_structure.py counts them)."""

from __future__ import annotations

import importlib.util

from helpers import ROOT

_spec = importlib.util.spec_from_file_location("count_structure", ROOT / "benchmarks" / "count_structure.py")
count_structure = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(count_structure)


def test_no_metric_name_is_spelled_outside_metrics_py():
    assert count_structure.metric_literals() == []

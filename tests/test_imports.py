"""What a module pulls in when imported on its own: a Ray trial loads only what training needs."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import ROOT


def _modules_after(statement: str) -> set[str]:
    """sys.modules of a fresh interpreter after `statement` (a fresh one: this test process has imported much more)."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def _families(modules: set[str], *roots: str) -> list[str]:
    return sorted(m for m in modules if any(m == r or m.startswith(f"{r}.") for r in roots))


def test_a_trial_imports_only_what_training_needs():
    """Every Ray worker imports the trainable: no report (its pages, plots), no Optuna, no matplotlib."""
    loaded = _modules_after("import tune_ph.search.trainable")
    assert "tune_ph.search.trainable" in loaded and "tune_ph.training.fit" in loaded  # the import did happen
    assert _families(loaded, "tune_ph.report", "optuna", "matplotlib") == []
    # The search's driver-side modules stay out too.
    assert _families(loaded, "tune_ph.search") == ["tune_ph.search", "tune_ph.search.trainable"]


def test_the_search_package_itself_imports_nothing():
    loaded = _modules_after("import tune_ph.search")
    assert _families(loaded, "tune_ph") == ["tune_ph", "tune_ph.cli", "tune_ph.errors", "tune_ph.search"]
    assert _families(loaded, "ray", "torch", "optuna") == []

"""The README tells the truth: its CPU recipe is the one bench_quality.py runs."""

from __future__ import annotations

import importlib.util

from helpers import ROOT


def _bench_quality():
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "benchmarks" / "bench_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_quotes_the_benchmarked_recipe() -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())  # line breaks inside a command do not matter
    bench = _bench_quality()
    assert "python -m tune_ph pretrain --dataset" in readme
    assert bench.PRETRAIN_ARGS in readme.replace(" \\ ", " ")
    assert bench.TRAIN_ARGS in readme.replace(" \\ ", " ")

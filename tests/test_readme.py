"""The README tells the truth: its recipe is the search bench_quality.py runs, and the quick start's space."""

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
    space = bench.SPACE.relative_to(ROOT)
    assert f"python -m tune_ph.search --space {space} --dataset ../shared/data/realistic16s" in readme
    assert "python benchmarks/bench_quality.py --dataset ../shared/data/realistic16s" in readme
    assert "python -m tune_ph.search --space search_spaces/quick.yaml" in readme


def test_readme_describes_the_demo_as_built() -> None:
    from tune_ph.data import demo

    readme = " ".join((ROOT / "README.md").read_text().split())
    taxa = demo.NUM_FAMILIES * demo.VARIANTS**2 * demo.STRAINS
    assert f"drawn from {taxa} taxa" in readme and f"reads per sample of {demo.READ_LENGTH} bases" in readme
    assert f"{demo.NUM_FAMILIES} families" in readme and f"{demo.VARIANTS} variants each" in readme

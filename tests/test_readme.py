"""The README tells the truth: its recipe is the search bench_quality.py runs, the quick start's space, and its
train command trains the quick start's recipe."""

from __future__ import annotations

import importlib.util
import shlex

import yaml
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


def _first_train_command() -> list[str]:
    """The first command of the README's *Train one configuration*, as argv after `python -m tune_ph train`."""
    section = (ROOT / "README.md").read_text().split("## Train one configuration", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    command = block.replace("\\\n", " ").splitlines()[0].split("#", 1)[0]
    words = shlex.split(command)
    assert words[:4] == ["python", "-m", "tune_ph", "train"], command
    return words[4:]


def test_readme_trains_the_quick_search_recipe_with_the_train_command() -> None:
    from tune_ph import config
    from tune_ph.commands import train as train_cli
    from tune_ph.config import TrainConfig

    quick = yaml.safe_load((ROOT / "search_spaces" / "quick.yaml").read_text())
    cfg = TrainConfig(**config.given_fields(train_cli.parse_args(_first_train_command())))
    # device: the search pins its CPU trials; the command's auto is the same on a CPU machine.
    fixed = {k: v for k, v in quick["fixed"].items() if k != "device"}
    expected = TrainConfig(**fixed)  # as a TrainConfig reads them (sets_per_step 0 means all: None)
    assert {k: getattr(cfg, k) for k in fixed} == {k: getattr(expected, k) for k in fixed}
    space = quick["space"]
    for name in ("clusters", "cluster_dims", "head"):
        assert getattr(cfg, name) in space[name]["choice"], name
    low, high = space["learning_rate"]["loguniform"]
    assert low <= cfg.learning_rate <= high

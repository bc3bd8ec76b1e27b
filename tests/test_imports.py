"""What a module pulls in when imported on its own: a Ray trial loads only what training needs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
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
    # The search's driver-side modules stay out too; worker_exit is the workers' own (a quiet SIGTERM exit).
    assert _families(loaded, "tune_ph.search") == [
        "tune_ph.search",
        "tune_ph.search.trainable",
        "tune_ph.search.worker_exit",
    ]
    # Training's validation pass, not the predict command's: no data sources, scikit-learn or scipy (the split and
    # the tokenized data arrive ready; pandas comes with Ray itself).
    assert _families(loaded, "sklearn", "scipy", "tune_ph.data.sources", "tune_ph.data.split") == []
    assert _families(loaded, "tune_ph.training.inference", "tune_ph.training.checkpoints", "tune_ph.baseline") == []


def test_the_search_package_itself_imports_nothing():
    loaded = _modules_after("import tune_ph.search")
    assert _families(loaded, "tune_ph") == ["tune_ph", "tune_ph.cli", "tune_ph.errors", "tune_ph.search"]
    assert _families(loaded, "ray", "torch", "optuna") == []


# What takes seconds to import on a busy machine: none of it may be needed to answer --help or a bad flag.
HEAVY = ("torch", "ray", "datasets", "sklearn", "scipy", "optuna", "matplotlib")


def test_search_help_imports_no_ray_torch_or_datasets():
    """The real entry point, as a user types it (`-X importtime` lists every module the interpreter loaded)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tune_ph.search", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "--num-samples" in proc.stdout, proc.stderr[-2000:]
    loaded = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    # The listing did record our own modules: the search command's own imports (the command module itself is
    # loaded by the dispatcher through importlib, which -X importtime does not list).
    assert {"tune_ph.search.space", "tune_ph.search_settings"} <= loaded
    assert _families(loaded, *HEAVY) == []


# Per command: argument lists that --help or a bad flag answers, each with a fragment of what it prints.
FLAG_ONLY = {
    "search": [
        (["--help"], "--num-samples"),
        (["--space", "no/such.yaml"], "quick.yaml"),
        (["--space", "search_spaces/quick.yaml", "--num-samples", "0"], "search.num_samples"),
        (["--space", "search_spaces/quick.yaml", "--name", "../up"], "not a usable experiment name"),
        (["--resume"], "--resume needs --name"),
    ],
    "train": [(["--help"], "--learning-rate"), (["--epochs", "0"], "epochs must be a positive integer")],
    "evaluate": [(["--help"], "--checkpoint"), (["--checkpoint", "x", "--device", "tpu"], "device must be")],
    "export": [(["--help"], "--storage-path"), (["x", "--device", "tpu"], "device must be")],
    "predict": [
        (["--help"], "--fasta-dir"),
        (["--checkpoint", "x", "--output", "y.csv"], "exactly one of --dataset"),
        (["--checkpoint", "x", "--output", "y.csv", "--dataset", "demo", "--batch-size", "0"], "batch_size"),
    ],
    "baseline": [(["--help"], "--k"), (["--k", "99"], "--k must be an integer from 1 to 8")],
    "pretrain": [(["--help"], "--output-dir"), (["--output-dir", " "], "output_dir must name a folder")],
    "data": [(["--help"], "summary"), (["summary", "demo", "--test-fraction", "2"], "test_fraction")],
    "monitor": [(["--help"], "--port")],
}


@pytest.mark.parametrize("command", sorted(FLAG_ONLY))
def test_help_and_flag_errors_answer_before_the_heavy_imports(command):
    """Every command's --help, and each error its flags alone show, before torch, Ray or scikit-learn load."""
    from tune_ph.__main__ import COMMANDS

    assert set(FLAG_ONLY) == set(COMMANDS)  # every command is covered
    runs = [[command, *argv] for argv, _ in FLAG_ONLY[command]]
    code = f"""
import contextlib, io, json, sys
from tune_ph.__main__ import main
out = []
for argv in {runs!r}:
    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
        try:
            rc = main(argv)
        except SystemExit as stop:
            rc = stop.code
    out.append([rc, text.getvalue()])
print(json.dumps([out, sorted(sys.modules)]))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out, modules = json.loads(proc.stdout.strip().splitlines()[-1])
    for (argv, fragment), (rc, text) in zip(FLAG_ONLY[command], out):
        assert fragment in text, (argv, text)
        if argv == ["--help"]:
            assert rc == 0, text
        else:
            assert rc == 2 and len(text.strip().splitlines()) == 1, (argv, text)  # one `error:` line
    assert _families(set(modules), *HEAVY) == []

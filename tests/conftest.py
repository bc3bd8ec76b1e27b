"""Shared fixtures for the search tests: one Ray instance per session, a build counter, a finished tiny search."""

from __future__ import annotations

import os
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The test modules import helpers from here as tests.conftest, also under a bare `pytest` (no cwd on sys.path).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Loaded by every Python process that has the hook folder on PYTHONPATH (Ray workers inherit it from the driver):
# wraps tune_ph.tokens.build/tokenize so each call appends the calling pid to $TUNE_PH_BUILD_LOG. This lets
# tests prove that trial processes never tokenize, without mocking anything they run.
_SITECUSTOMIZE = textwrap.dedent('''
    import importlib.abc, importlib.util, os, sys

    _LOG = os.environ.get("TUNE_PH_BUILD_LOG")

    class _CountTokenizing(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name != "tune_ph.tokens" or not _LOG:
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None:
                return None
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                for fn in ("build", "tokenize"):
                    original = getattr(module, fn)

                    def counted(*args, _original=original, _fn=fn, **kwargs):
                        with open(_LOG, "a") as f:
                            f.write(f"{os.getpid()} {_fn}\\n")
                        return _original(*args, **kwargs)

                    setattr(module, fn, counted)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _CountTokenizing())
''')

TINY_MODEL = {"d_model": 16, "n_layer": 1, "d_inner": 32, "filter_order": 16, "l_max": 130}


def tiny_space(**changes: object) -> dict:
    """A search that trains in seconds: 16-wide one-layer backbone, 128 tokens, one set per sample."""
    space = {
        "name": "tiny",
        "fixed": {
            "dataset": "demo", "from_scratch": True, "model_config": dict(TINY_MODEL), "max_length": 128,
            "num_sets": 1, "epochs": 2, "batch_size": 32, "device": "cpu",
        },
        "space": {
            "head": {"choice": ["linear", "mlp2"]},
            "learning_rate": {"loguniform": [1e-4, 3e-3]},
            "head_dropout": {"uniform": [0.0, 0.3], "when": {"head": ["mlp2"]}},
        },
        "search": {"num_samples": 3, "seed": 0, "max_concurrent": 2},
        "scheduler": {"grace_period": 1, "reduction_factor": 2, "max_epochs": 2},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
    }
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            space[section][name] = value
        else:
            space[section] = value
    return space


def write_space(folder: Path, space: dict, name: str = "space.yaml") -> Path:
    import yaml

    path = folder / name
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def build_log() -> Path:
    """File the sitecustomize hook appends to; set up before Ray starts so workers inherit it."""
    hook_dir = Path(tempfile.mkdtemp(prefix="tph_hook_"))
    (hook_dir / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    log = hook_dir / "builds.log"
    log.touch()
    os.environ["TUNE_PH_BUILD_LOG"] = str(log)
    paths = [str(hook_dir), str(ROOT), str(ROOT / "hyena-dna"), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    # Keep the token cache out of the user's home and shared by the session's processes.
    os.environ.setdefault("TUNE_PH_CACHE", str(hook_dir / "token_cache"))
    return log


@pytest.fixture(scope="session")
def ray_session(build_log: Path):
    """Ray started once for the whole session (2 CPUs, no dashboard, a short temp dir for its sockets)."""
    ray = pytest.importorskip("ray")
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, _temp_dir=temp_dir, address="local",
             logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def finished_experiment(ray_session, build_log: Path, tmp_path_factory) -> dict:
    """One tiny 3-trial search run end to end through the CLI entry point (shared by several tests)."""
    from tune_ph import search, tokens

    out = tmp_path_factory.mktemp("experiments")
    space = write_space(out, tiny_space())
    calls = []
    original = tokens.build

    def counting_build(*args, **kwargs):
        calls.append(kwargs.get("max_length"))
        return original(*args, **kwargs)

    tokens.build = counting_build
    lines_before = build_log.read_text().splitlines()
    try:
        rc = search.main(["--space", str(space), "--output", str(out), "--verbose", "0"])
    finally:
        tokens.build = original
    return {
        "rc": rc, "folder": out / "tiny", "driver_builds": calls,
        "hook_lines": build_log.read_text().splitlines()[len(lines_before):],
    }



@pytest.fixture
def one_thread():
    """Tiny models run fastest single-threaded; spinning thread pools crawl on a busy 2-core machine."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

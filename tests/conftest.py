"""Session fixtures: an isolated token cache, one Ray instance per session, a finished tiny search."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import BUILD_LOG_VAR, KILL_DIR_VAR, ROOT, tiny_space, write_space

from tune_ph.commands import search as search_cli


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """The session's token cache and secret key: out of the user's home, shared by its processes, env restored."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNE_PH_CACHE", str(tmp_path_factory.mktemp("token_cache")))
        mp.setenv("TUNE_PH_CONFIG", str(tmp_path_factory.mktemp("config")))  # the secret key: not the user's
        yield


@pytest.fixture(scope="session", autouse=True)
def small_baseline_family():
    """The baselines fitted beside the model (train, search, export) in tests: the references and k-mer HGB and
    Ridge at k=4, seconds on the demo. The whole family is fitted in test_baseline.py."""
    from tune_ph.baseline import family

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(family, "DEFAULT_FAMILY", family.FamilySpec(ks=(4,), otu_k=0))
        yield


@pytest.fixture(scope="session")
def build_log(tmp_path_factory) -> Path:
    """File that Ray workers append to whenever they tokenize (see helpers.count_tokenizing)."""
    log = tmp_path_factory.mktemp("hook") / "builds.log"
    log.touch()
    return log


@pytest.fixture(scope="session")
def kill_dir(tmp_path_factory) -> Path:
    """Folder the session's Ray workers watch for helpers.kill_switch's `kill-once` file."""
    return tmp_path_factory.mktemp("kill")


@pytest.fixture(scope="session")
def ray_session(build_log: Path, kill_dir: Path):
    """Ray started once for the whole session through the product's own init_ray (loopback only, 2 CPUs, no
    dashboard, a short temp dir for its sockets)."""
    import ray

    from tune_ph.search import cluster

    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    runtime_env = {
        "worker_process_setup_hook": "helpers.worker_setup",
        "env_vars": {
            BUILD_LOG_VAR: str(build_log),
            KILL_DIR_VAR: str(kill_dir),
            "PYTHONPATH": str(ROOT / "tests"),
            # As if exported in the user's shell (Ray then keeps it): trials must still follow cpus_per_trial.
            "OMP_NUM_THREADS": "3",
        },
    }
    environ = dict(os.environ)  # Ray writes RAY_AUTH_MODE and friends into the driver's environment
    assert cluster.init_ray(num_cpus=2, temp_dir=temp_dir, runtime_env=runtime_env)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)  # Ray leaves its session folder (logs, sockets) behind
    os.environ.clear()
    os.environ.update(environ)


@pytest.fixture(scope="session")
def finished_experiment(ray_session, build_log: Path, tmp_path_factory) -> dict:
    """One tiny 3-trial search run end to end through the CLI entry point (shared by several tests), on whole
    studies held out (split_by: study): export, report and predict --split must all follow it."""
    from tune_ph.data import tokens

    out = tmp_path_factory.mktemp("experiments")
    space = write_space(out, tiny_space(fixed__split_by="study"))
    calls = []
    original = tokens.build

    def counting_build(*args, **kwargs):
        calls.append(kwargs.get("max_length"))
        return original(*args, **kwargs)

    tokens.build = counting_build
    lines_before = build_log.read_text().splitlines()
    try:
        rc = search_cli.main(["--space", str(space), "--output-dir", str(out), "--verbose", "0"])
    finally:
        tokens.build = original
    return {
        "rc": rc,
        "folder": out / "tiny",
        "driver_builds": calls,
        "hook_lines": build_log.read_text().splitlines()[len(lines_before) :],
    }


@pytest.fixture
def one_thread():
    """Tiny models run fastest single-threaded; spinning thread pools crawl on a busy 2-core machine."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

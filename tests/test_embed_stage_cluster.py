"""A two-node Ray cluster on this machine (ray.cluster_utils.Cluster, one CPU per node): a small frozen search joined
with `python -m tune_ph.search --address ADDR` embeds its reads on both nodes, with the vectors and the winner of the
same search on one node."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, tiny_space, write_space

from tune_ph import files

pytestmark = pytest.mark.slow

NODE_LINE = re.compile(r"read vectors: node (\w+) \(([\d.]+)\) embedded (\d+) of (\d+) reads")


def _search(space: Path, out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNE_PH_CACHE": str(cache), "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT / "tests")}
    argv = ["--space", str(space), "--output-dir", str(out), "--no-baseline", "--verbose", "1", *extra]
    proc = subprocess.run(
        [sys.executable, "-m", "tune_ph.search", *argv], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


# The two nodes start in a process of their own: Ray's module state in this test process (an earlier test's loopback
# start) would otherwise bind them to loopback only, while Ray 2.60 rewrites the address a driver joins from
# 127.0.0.1 to the machine's routable one, so the search could not reach them.
_TWO_NODES = """
import sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
print(cluster.address, flush=True)
sys.stdin.read()  # until the test closes stdin
cluster.shutdown()
"""


def _winner(folder: Path) -> tuple[dict, dict]:
    best = folder / files.BEST_DIR
    return json.loads((best / files.RUN_CONFIG_FILE).read_text()), json.loads((best / files.METRICS_FILE).read_text())


def test_a_search_joined_to_two_nodes_embeds_on_both_with_one_nodes_vectors_and_winner(tmp_path, monkeypatch):
    from tune_ph.search import embed_stage

    space = write_space(
        tmp_path,
        tiny_space(
            fixed__freeze_backbone=True,
            fixed__max_sets=4,
            search__num_samples=2,
            search__max_concurrent=1,
        ),
    )
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    nodes = subprocess.Popen(
        [sys.executable, "-c", _TWO_NODES],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    try:
        address = nodes.stdout.readline().strip()
        assert address.rpartition(":")[2].isdigit(), f"the two-node cluster did not start (printed {address!r})"
        two = _search(space, tmp_path / "two", tmp_path / "cache-two", "--address", address, "--allow-no-auth")
    finally:
        nodes.stdin.close()
        nodes.wait(timeout=120)
    shares = {m.group(1): int(m.group(3)) for m in NODE_LINE.finditer(two.stderr)}
    assert len(shares) == 2, two.stderr[-4000:]  # each node's share is logged
    total = {int(m.group(4)) for m in NODE_LINE.finditer(two.stderr)}
    assert len(total) == 1 and sum(shares.values()) == total.pop()
    assert all(n >= embed_stage.MIN_SHARD for n in shares.values())

    one = _search(space, tmp_path / "one", tmp_path / "cache-one")
    assert NODE_LINE.search(one.stderr)
    entries = {name: sorted((tmp_path / f"cache-{name}" / "embeddings").glob("*.npy")) for name in ("one", "two")}
    assert [p.name for p in entries["one"]] == [p.name for p in entries["two"]] and entries["one"]
    for a, b in zip(entries["one"], entries["two"], strict=True):
        np.testing.assert_allclose(np.load(a), np.load(b), atol=1e-5, rtol=0)
    (config_one, metrics_one), (config_two, metrics_two) = (
        _winner(tmp_path / "one" / "tiny"),
        _winner(tmp_path / "two" / "tiny"),
    )
    searched = ("head", "learning_rate", "head_dropout")
    assert {k: config_one.get(k) for k in searched} == {k: config_two.get(k) for k in searched}
    assert metrics_one["test_r2"] == pytest.approx(metrics_two["test_r2"], abs=1e-4)

"""Hostile inputs, round three: model memory bounded by what a file holds, nothing silently wrong, no links followed,
one error line for each case that used to be a traceback."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY

from hyena_dna import HyenaDNAModel
from tune_ph import files
from tune_ph.config import MAX_SIZES, TrainConfig
from tune_ph.errors import ConfigError, InputError
from tune_ph.model.regressor import build_model, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

PEAK_LIMIT = 1 << 30  # the interpreter, torch and tune_ph take a few hundred MiB; the models declared take 2.7-5 GB
# Below hyena_dna's upper bounds and (on most machines) the memory available: 0.8 G numbers, 3.2 GB of float32.
BIG_BACKBONE = {"d_model": 2048, "n_layer": 16, "d_inner": 8192}


def tiny_state(**train) -> dict:
    """A best_model.pt's content as train writes it (untrained tiny model, clusters fit on random vectors)."""
    cfg = TrainConfig(dataset="demo", from_scratch=True, model_config=dict(TINY), max_length=64, device="cpu", **train)
    model = build_model(cfg)
    if cfg.aggregation == "clusters":
        model.aggregation.clusters.fit(torch.randn(64, TINY["d_model"]), seed=0)
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "train_config": cfg.to_dict(),
        "model_config": model.backbone.config.to_dict(),
        "target_mean": 6.0,
        "target_std": 1.0,
        "max_length": 64,
        "epoch": 1,
    }


def save(path: Path, state: dict) -> Path:
    files.save_torch(path, state)
    return path


CLUSTERS = {"aggregation": "clusters", "freeze_backbone": True, "clusters": 4, "cluster_dims": 8}


# The child's own peak RSS (VmHWM, reset by exec): what loading the file cost, not pytest's peak.
PEAK_SCRIPT = """
import sys
from hyena_dna import memory
memory.available_memory = lambda: 64 << 30  # as on a big machine: the file alone must stop the build
{body}
with open("/proc/self/status") as fh:
    print("vmhwm", next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:")))
"""


def peak_of(body: str, *args: str) -> tuple[int, str]:
    script = PEAK_SCRIPT.format(body=body)
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split("vmhwm")[-1]), done.stdout


# ------------------------------------------------------------------------------------------------ memory


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_a_checkpoint_declaring_a_big_backbone_it_does_not_carry_is_refused_unbuilt(tmp_path):
    state = tiny_state()
    state["model_config"] = {**state["model_config"], **BIG_BACKBONE}
    path = save(tmp_path / "best_model.pt", state)
    assert path.stat().st_size < 1 << 20
    body = (
        "from tune_ph.model.regressor import load_checkpoint\n"
        "try:\n    load_checkpoint(sys.argv[1])\nexcept Exception as err:\n    print('refused', err)\n"
    )
    peak, out = peak_of(body, str(path))
    assert "refused" in out and "declare a model of 8" in out and "but it carries 2" in out, out
    assert peak < PEAK_LIMIT, peak


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_a_weights_folder_declaring_a_big_backbone_it_does_not_carry_is_refused_unbuilt(tmp_path):
    from hyena_dna import HyenaDNAConfig

    folder = tmp_path / "ckpt"
    HyenaDNAModel(HyenaDNAConfig(**TINY)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **BIG_BACKBONE}))
    body = (
        "from tune_ph.config import TrainConfig\nfrom tune_ph.model.regressor import build_model\n"
        "try:\n    build_model(TrainConfig(model=sys.argv[1], max_length=64))\n"
        "except Exception as err:\n    print('refused', type(err).__name__, err)\n"
    )
    peak, out = peak_of(body, str(folder))
    assert "refused InputError" in out and "its config declares 8" in out and "weights.ckpt" in out, out
    assert peak < PEAK_LIMIT, peak


@pytest.mark.parametrize("name", sorted(MAX_SIZES))
def test_every_size_like_field_has_an_upper_bound(name):
    with pytest.raises(ConfigError, match=rf"{name} must be at most"):
        TrainConfig(**{**CLUSTERS, name: MAX_SIZES[name] + 1})


@pytest.mark.parametrize("clusters", [40_000, 80_000_000, 10_000_000])
def test_a_checkpoint_declaring_huge_clusters_is_one_line(clusters, tmp_path):
    state = tiny_state(**CLUSTERS)
    state["train_config"]["clusters"] = clusters
    with pytest.raises(InputError, match=rf"best_model.pt.*clusters must be at most 16,384, got {clusters}"):
        load_checkpoint(save(tmp_path / "best_model.pt", state))


def test_a_head_that_does_not_fit_is_refused_before_it_is_built(monkeypatch):
    from hyena_dna import memory

    monkeypatch.setattr(memory, "available_memory", lambda: 256 << 20)
    cfg = TrainConfig(**{**CLUSTERS, "clusters": 16_384, "head": "mlp2"}, from_scratch=True, model_config=dict(TINY))
    with pytest.raises(ConfigError, match=r"mlp2 head on 16384 inputs needs about 2,0\d\d MiB to train"):
        build_model(cfg)


# ------------------------------------------------------------------------------------------------ silently wrong


def _nan_weight(state: dict) -> str:
    name = next(k for k, v in state["model"].items() if v.is_floating_point() and k.startswith("head"))
    state["model"][name] = torch.full_like(state["model"][name], math.nan)
    return "NaN or infinite"


def _inf_centroids(state: dict) -> str:
    state["model"]["aggregation.clusters.centroids"][0, 0] = math.inf
    return "NaN or infinite"


def _zero_centroids(state: dict) -> str:
    state["model"]["aggregation.clusters.centroids"].zero_()
    return "repeat a centroid"


def _zero_projection(state: dict) -> str:
    state["model"]["aggregation.clusters.projection"].zero_()
    return "projection .* is all zeros"


def _zero_std(state: dict) -> str:
    state["target_std"] = 0.0
    return "target_std is 0.0, not a positive number"


def _nan_std(state: dict) -> str:
    state["target_std"] = math.nan
    return "target_std is nan, not a positive number"


def _long_max_length(state: dict) -> str:
    state["max_length"] = 4096
    state["train_config"]["max_length"] = None
    return "max_length 4096 is outside 8..64"


def _contradicting_max_length(state: dict) -> str:
    state["max_length"] = 32
    return "max_length 32 contradicts its train_config's max_length 64"


@pytest.mark.parametrize(
    "damage",
    [
        _nan_weight,
        _inf_centroids,
        _zero_centroids,
        _zero_projection,
        _zero_std,
        _nan_std,
        _long_max_length,
        _contradicting_max_length,
    ],
)
def test_a_checkpoint_that_would_predict_silently_wrong_is_refused(damage, tmp_path):
    state = tiny_state(**CLUSTERS)
    load_checkpoint(save(tmp_path / "good.pt", state))  # what it is made from loads
    expected = damage(state)
    with pytest.raises(InputError, match=rf"best_model.pt: its .*{expected}"):
        load_checkpoint(save(tmp_path / "best_model.pt", state))

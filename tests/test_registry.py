"""Parts are registered classes: a new aggregation, head or baseline model is one class and one registration line
(each toy part below is registered from this file alone and trained through the normal path), and the built-in
parts keep the checkpoint layout they had before the registries (tests/state_keys_main.json, recorded on main)."""

from __future__ import annotations

import itertools
import json
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from helpers import ROOT, motif_dataset
from torch import nn

from tune_ph import config
from tune_ph.baseline import choices, regressors
from tune_ph.baseline.family import FamilySpec, run_family
from tune_ph.config import TrainConfig
from tune_ph.data.demo import make_demo
from tune_ph.data.sources import clean_samples
from tune_ph.data.split import split_samples
from tune_ph.errors import ConfigError
from tune_ph.model import abundance
from tune_ph.model.aggregation import AGGREGATIONS, Aggregation
from tune_ph.model.checkpoint import state_budget
from tune_ph.model.heads import HEADS
from tune_ph.model.read_encoders import ENCODERS
from tune_ph.model.regressor import build_model, head_bytes, model_of
from tune_ph.registry import Registry, undeclared
from tune_ph.training.fit import fit

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"d_model": 16, "n_layer": 1, "d_inner": 32, "filter_order": 16, "l_max": 130}


def _combinations() -> list[tuple[str, TrainConfig]]:
    """Every aggregation x head x read encoder x standardisation a config allows, as tests/state_keys_main.json
    names them."""
    out = []
    for agg, head, enc, std in itertools.product(
        ["mean", "attention", "mean_prediction", "clusters"],
        ["linear", "mlp2", "mlp2_ln", "mlp5", "trees"],
        ["hyena", "kmer"],
        [False, True],
    ):
        frozen = agg == "clusters" or enc == "kmer" or std
        if head == "trees" and agg != "clusters":
            continue
        cfg = TrainConfig(
            from_scratch=True,
            model_config=TINY,
            aggregation=agg,
            head=head,
            read_encoder=enc,
            encoder_k=2,
            freeze_backbone=frozen,
            clusters=8,
            cluster_dims=4,
            cluster_levels=2,
            device="cpu",
            seed=3,
        )
        out.append((f"{agg}/{head}/{enc}/frozen={frozen}", cfg))
    return out


def test_every_built_in_part_keeps_the_checkpoint_layout_it_had_on_main():
    """State-dict keys and shapes (so every saved checkpoint still loads), and the memory bounds, of every
    combination of the built-in parts, against the lists recorded on main before the registries."""
    recorded = json.loads((ROOT / "tests" / "state_keys_main.json").read_text())
    combinations = _combinations()
    assert {name for name, _ in combinations} == set(recorded)
    for name, cfg in combinations:
        model = build_model(cfg)
        state = model.state_dict()
        keys = {k: list(v.shape) for k, v in state.items() if not k.startswith("backbone.")}
        assert keys == recorded[name]["keys"], name
        assert sum(k.startswith("backbone.") for k in state) == recorded[name]["n_backbone"], name
        assert head_bytes(cfg, TINY["d_model"]) == recorded[name]["head_bytes"], name
        saved = {"model_config": model.backbone.config.to_dict(), "train_config": cfg.to_dict()}
        assert state_budget(saved) == recorded[name]["budget"], name


@pytest.mark.parametrize("registry", [AGGREGATIONS, HEADS, ENCODERS, abundance.TRANSFORMS, regressors.MODELS])
def test_every_declared_name_has_its_registered_class(registry: Registry[Any]):
    assert undeclared(registry) == []
    assert set(registry) == set(registry.catalog)  # the catalog (torch-free) names exactly the classes


def test_a_class_that_disagrees_with_its_declaration_is_refused():
    class Frozen(Aggregation):
        name = "mean"  # declared in config.AGGREGATIONS as trainable with the backbone
        frozen_only = "only on a frozen backbone"

    with pytest.raises(ValueError, match="'mean' is declared as"):
        AGGREGATIONS.register(Frozen)
    assert AGGREGATIONS["mean"].__name__ == "MeanVector" and config.AGGREGATIONS["mean"].frozen_only is None


def test_an_unknown_part_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown aggregation 'max'; choose one of: mean, attention"):
        AGGREGATIONS["max"]
    with pytest.raises(ConfigError, match="unknown aggregation 'max'"):
        TrainConfig(aggregation="max")


# ---------------------------------------------------------------- a new part, registered from here


class MaxVector(Aggregation):
    """The head on each feature's largest value over a sample's sets, scaled by a learned weight per feature: a
    new aggregation with state of its own (saved under aggregation.scale)."""

    name = "toy_max"

    def __init__(self, width: int, standardise: bool = False):
        super().__init__(width, standardise)
        self.scale = nn.Parameter(torch.ones(width))

    def combine(
        self,
        vectors: torch.Tensor,
        owner: torch.Tensor,
        num_samples: int,
        head: nn.Module,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # A set's weight (the reads it stands for) leaves a maximum unchanged: repeated copies have the same max.
        top = vectors.new_full((num_samples, vectors.shape[1]), -torch.inf)
        top = top.scatter_reduce(0, owner[:, None].expand_as(vectors), vectors, reduce="amax")
        return head.regress(top * self.scale)


class GatedLinear(nn.Module):
    """A linear head behind a learned gate per feature: a new head (its state under head.gate, head.out)."""

    name = "toy_gated"
    fields: ClassVar[tuple[str, ...]] = ("pooling",)
    trainable_by_gradient = True

    def __init__(self, width: int, pooling: str):
        super().__init__()
        self.pooling = pooling
        self.gate = nn.Parameter(torch.zeros(width))
        self.out = nn.Linear(width, 1)

    @classmethod
    def from_config(cls, cfg: TrainConfig, width: int) -> GatedLinear:
        return cls(width, cfg.pooling)

    @classmethod
    def numel(cls, cfg: TrainConfig, width: int) -> int:
        return 2 * width + 1

    @staticmethod
    def sized_state(saved: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
        return {}

    def regress(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(features * torch.sigmoid(self.gate)).squeeze(-1)


class NearestMeans:
    """Each sample's pH as the mean of its `neighbours` nearest train samples' (Euclidean, on the features): a new
    baseline model, fitted and predicted by numpy alone."""

    name = "toy_knn"
    neighbours = 5

    @classmethod
    def settings(cls) -> dict[str, Any]:
        return {"neighbours": cls.neighbours}

    @classmethod
    def fit(cls, x_train: Any, y_train: np.ndarray, x_val: Any, y_val: np.ndarray) -> tuple[Any, dict[str, Any]]:
        return _Neighbours(np.asarray(x_train), y_train, cls.neighbours), {"knn_neighbours": cls.neighbours}


class _Neighbours:
    def __init__(self, x: np.ndarray, y: np.ndarray, k: int):
        self.x, self.y, self.k = x, y, k

    def predict(self, x: Any) -> np.ndarray:
        distance = ((np.asarray(x)[:, None, :] - self.x[None]) ** 2).sum(-1)
        return self.y[np.argsort(distance, axis=1)[:, : self.k]].mean(axis=1)


@pytest.fixture
def registered():
    """Register each toy part with its one line, and withdraw it after the test."""
    AGGREGATIONS.register(MaxVector)
    HEADS.register(GatedLinear)
    regressors.MODELS.register(NearestMeans)
    yield
    AGGREGATIONS.withdraw(MaxVector.name)
    HEADS.withdraw(GatedLinear.name)
    regressors.MODELS.withdraw(NearestMeans.name)


@pytest.mark.parametrize("frozen", [False, True])
def test_a_new_aggregation_and_head_train_and_load_through_the_normal_path(registered, tmp_path, frozen):
    assert "toy_max" in config.AGGREGATIONS and "toy_gated" in config.ARCHITECTURES  # valid choices now
    cfg = TrainConfig(
        from_scratch=True,
        model_config=TINY,
        aggregation="toy_max",
        head="toy_gated",
        freeze_backbone=frozen,
        device="cpu",
        max_length=64,
        max_sets=2,
        batch_size=4,
        epochs=3,
        learning_rate=3e-3,
        cache_dir=str(tmp_path),
    )
    ds = motif_dataset(n_samples=24, max_sets=2)
    result = fit(cfg, ds, progress=False)
    model = result.best_state
    weights = model.weights
    assert isinstance(model.train_config, TrainConfig) and model.train_config.aggregation == "toy_max"
    assert {"aggregation.scale", "head.gate", "head.out.weight", "head.out.bias"} <= set(weights)
    assert ("aggregation.norm.running_mean" in weights) is frozen  # the base class's standardisation, as others
    assert not torch.equal(weights["head.gate"], torch.zeros_like(weights["head.gate"]))  # gradient steps moved it
    # The checkpoint rebuilds through the registries (model_of checks the carried tensors against the declared ones).
    loaded = model_of(model)
    assert isinstance(loaded.aggregation, MaxVector) and isinstance(loaded.head, GatedLinear)
    ids, mask = ds.tokens_of(np.arange(4))
    fresh = build_model(cfg)
    fresh.load_state_dict(weights)
    torch.testing.assert_close(loaded(ids, mask), fresh.eval()(ids, mask))


def test_a_new_baseline_model_is_a_member_of_the_family_and_cached(registered, tmp_path):
    assert "toy_knn" in choices.MODELS
    demo = clean_samples(make_demo(num_samples=60, seed=3))
    split = split_samples(demo, seed=42)
    spec = FamilySpec(ks=(2,), models=("toy_knn", "ridge"), otu_k=0, references=False)
    family = run_family(demo, split, spec, cache_dir=tmp_path)
    assert list(family) == ["kmer2-toy_knn", "kmer2-ridge"]
    toy = family["kmer2-toy_knn"]
    assert toy.metrics["model"] == "toy_knn" and toy.metrics["knn_neighbours"] == 5 and toy.metrics["k"] == 2
    assert np.isfinite(toy.metrics["test_r2"]) and len(toy.predictions) == len(split["test"])
    again = run_family(demo, split, spec, cache_dir=tmp_path)
    assert again["kmer2-toy_knn"].cached and again["kmer2-toy_knn"].metrics["test_r2"] == toy.metrics["test_r2"]

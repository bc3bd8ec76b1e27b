"""Tests for tune_ph.model.regressor: the optimizer's parameter groups, checkpoint loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hyena_dna.model import HyenaFilter
from tune_ph.config import TrainConfig
from tune_ph.model.regressor import build_model, configure_optimizer, load_checkpoint, parameter_groups

BACKBONE = {
    "d_model": 16,
    "n_layer": 2,
    "d_inner": 32,
    "filter_order": 16,
    "l_max": 66,
    "filter_lr": 3e-4,
    "filter_wd": 0.02,
}


def cfg(**changes) -> TrainConfig:
    return TrainConfig(
        from_scratch=True, model_config=dict(BACKBONE), learning_rate=1e-3, weight_decay=0.05, head="mlp2_ln", **changes
    )


def test_norms_biases_and_embeddings_get_no_weight_decay_and_the_filter_its_own_settings():
    model = build_model(cfg())
    groups = {g["name"]: g for g in parameter_groups(model, cfg())}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["no_decay"]["lr"] == 1e-3
    assert groups["decay"]["weight_decay"] == 0.05 and groups["decay"]["lr"] == 1e-3
    # The implicit filter trains at the backbone config's own layer.lr / layer.wd.
    assert groups["filter"]["lr"] == 3e-4 and groups["filter"]["weight_decay"] == 0.02
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, (nn.LayerNorm, nn.Embedding)) or name == "bias":
                in_filter = any(
                    isinstance(m, HyenaFilter) and param in set(m.implicit_filter.parameters()) for m in model.modules()
                )
                assert id(param) in ids["filter" if in_filter else "no_decay"], (module, name)
    filters = [m for m in model.modules() if isinstance(m, HyenaFilter)]
    freqs = [p for f in filters for n, p in f.implicit_filter.named_parameters() if n.endswith("freq")]
    assert freqs and all(id(p) in ids["filter"] for p in freqs)  # Sin frequencies: the filter's settings
    linear_weights = [
        m.weight
        for m in model.modules()
        if isinstance(m, nn.Linear) and not any(m in set(f.implicit_filter.modules()) for f in filters)
    ]
    assert linear_weights and all(id(w) in ids["decay"] for w in linear_weights)
    # Every trainable parameter is in exactly one group.
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
    assert len(set().union(*ids.values())) == len(list(model.parameters()))


def test_optimizer_uses_the_groups_and_a_frozen_backbone_is_left_out():
    frozen = cfg(freeze_backbone=True)
    model = build_model(frozen)
    optimizer = configure_optimizer(model, frozen)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.head.parameters()}
    assert {g["name"] for g in optimizer.param_groups} == {"decay", "no_decay"}  # no filter group when frozen
    step = configure_optimizer(build_model(cfg()), cfg())
    assert {g["name"]: g["weight_decay"] for g in step.param_groups} == {"decay": 0.05, "no_decay": 0.0, "filter": 0.02}


def test_load_checkpoint_refuses_non_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip or a pickle")
    with pytest.raises(ValueError, match="bad.pt cannot be read as a tune_ph checkpoint"):
        load_checkpoint(bad)
    torch.save({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="lacks train_config"):
        load_checkpoint(tmp_path / "partial.pt")

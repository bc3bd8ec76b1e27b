"""Checkpoint I/O: config.json, safe reading of Lightning checkpoints, strict keys, save/load, hub and offline paths."""

import json
import os
import pickle
import sys
import types
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants as hf_constants
import pytest
import torch

from hyena_dna import CheckpointKeyError, HyenaDNAConfig, HyenaDNAModel, PretrainedNotFoundError
from hyena_dna.pretrained import backbone_state_dict, read_checkpoint_tensors


def tiny_config(**kw) -> HyenaDNAConfig:
    return HyenaDNAConfig(d_model=16, n_layer=2, d_inner=32, l_max=66, **kw)


def lightning_like_checkpoint(model: HyenaDNAModel, path: Path, extra_object=None) -> None:
    """Write a checkpoint the way the public files are laid out, with a pickled non-torch object inside."""
    from hyena_dna.pretrained import checkpoint_state_dict

    state = checkpoint_state_dict(model)
    state["model.lm_head.weight"] = state["model.backbone.embeddings.word_embeddings.weight"]
    state["train_torchmetrics.num_tokens.count"] = torch.tensor(123)
    torch.save({"state_dict": state, "optimizer_states": [{"lr": 1e-3}], "hyper_parameters": extra_object}, path)


@pytest.fixture
def fake_omegaconf():
    """A stand-in class pickled under a module that does not exist when the checkpoint is read back."""
    module = types.ModuleType("fake_omegaconf_for_tests")

    class DictConfig:
        def __init__(self, content):
            self.content = content

    DictConfig.__module__ = module.__name__
    DictConfig.__qualname__ = "DictConfig"
    module.DictConfig = DictConfig
    sys.modules[module.__name__] = module
    yield DictConfig
    sys.modules.pop(module.__name__, None)


def test_config_reads_public_layout_and_round_trips(tmp_path):
    public = {
        "d_model": 128,
        "n_layer": 2,
        "d_inner": 512,
        "vocab_size": 12,
        "resid_dropout": 0.0,
        "embed_dropout": 0.1,
        "fused_mlp": False,
        "fused_dropout_add_ln": True,
        "checkpoint_mixer": False,
        "checkpoint_mlp": False,
        "residual_in_fp32": True,
        "pad_vocab_size_multiple": 8,
        "return_hidden_state": True,
        "layer": {
            "_name_": "hyena",
            "emb_dim": 5,
            "filter_order": 64,
            "local_order": 3,
            "l_max": 1026,
            "modulate": True,
            "w": 10,
            "lr": 6e-4,
            "wd": 0.0,
            "lr_pos_emb": 0.0,
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(public))
    config = HyenaDNAConfig.from_json(tmp_path / "config.json")
    assert (config.d_model, config.l_max, config.max_length, config.filter_lr) == (128, 1026, 1024, 6e-4)
    assert config.shift == 0.05 and config.padded_vocab_size == 16
    written = config.to_dict()
    for key, value in public.items():
        if key != "layer":
            assert written[key] == value, key
    assert {k: written["layer"][k] for k in public["layer"]} == public["layer"]
    assert HyenaDNAConfig.from_dict(written) == config


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="d_model"):
        HyenaDNAConfig.from_dict({"d_model": -3})
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        HyenaDNAConfig.from_json(tmp_path / "config.json")


def test_public_layout_checkpoint_is_refused_by_weights_only_but_read_safely(ref_fixtures):
    path = ref_fixtures / "hyenadna-tiny-1k-ref" / "weights.ckpt"
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # OmegaConf objects inside: why we need our own reader
    tensors = read_checkpoint_tensors(path)
    assert "model.lm_head.weight" in tensors
    backbone = backbone_state_dict(tensors)
    assert "lm_head.weight" not in backbone and "embeddings.word_embeddings.weight" in backbone


def test_gradient_checkpointing_keys_are_mapped(ref_fixtures):
    tensors = read_checkpoint_tensors(ref_fixtures / "hyenadna-gradckpt-ref" / "weights.ckpt")
    assert any(".mixer.layer." in k for k in tensors)
    backbone = backbone_state_dict(tensors)
    assert "layers.0.mixer.in_proj.weight" in backbone and "layers.0.mlp.fc1.weight" in backbone
    assert not any(".layer." in k for k in backbone)


def test_reader_never_executes_pickled_code(tmp_path, fake_omegaconf):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    model = HyenaDNAModel(tiny_config())
    lightning_like_checkpoint(model, tmp_path / "weights.ckpt", extra_object=[Evil(), fake_omegaconf({"a": 1})])
    tensors = read_checkpoint_tensors(tmp_path / "weights.ckpt")
    assert not marker.exists()
    assert torch.equal(tensors["model.backbone.ln_f.weight"], model.ln_f.weight.detach())


@pytest.mark.parametrize("gradckpt", [False, True])
def test_save_and_load_round_trip(tmp_path, gradckpt):
    torch.manual_seed(0)
    model = HyenaDNAModel(tiny_config(checkpoint_mixer=gradckpt, checkpoint_mlp=gradckpt)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "weights.ckpt").is_file()
    keys = read_checkpoint_tensors(tmp_path / "weights.ckpt")
    assert any(".mixer.layer." in k for k in keys) == gradckpt
    loaded = HyenaDNAModel.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    ids = torch.randint(7, 12, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)


def test_loads_lightning_layout_with_foreign_objects(tmp_path, fake_omegaconf):
    model = HyenaDNAModel(tiny_config()).eval()
    model.config.to_json(tmp_path / "config.json")
    lightning_like_checkpoint(model, tmp_path / "weights.ckpt", extra_object=fake_omegaconf({"lr": 1}))
    sys.modules.pop(fake_omegaconf.__module__)  # as on a machine without omegaconf
    loaded = HyenaDNAModel.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.state_dict(), model.state_dict(), rtol=0, atol=0)


def test_strict_keys_missing_unexpected_and_shape(tmp_path):
    model = HyenaDNAModel(tiny_config())
    model.save_pretrained(tmp_path)
    state = torch.load(tmp_path / "weights.ckpt", weights_only=True)["state_dict"]
    del state["model.backbone.layers.1.norm2.bias"]
    state["model.backbone.layers.9.mixer.bogus"] = torch.zeros(1)
    state["model.backbone.ln_f.weight"] = torch.zeros(3)
    torch.save({"state_dict": state}, tmp_path / "weights.ckpt")
    with pytest.raises(CheckpointKeyError) as err:
        HyenaDNAModel.from_pretrained(tmp_path)
    msg = str(err.value)
    assert "1 missing: layers.1.norm2.bias" in msg
    assert "1 unexpected: layers.9.mixer.bogus" in msg
    assert "ln_f.weight: checkpoint (3,) vs model (16,)" in msg


def test_folder_without_weights_is_a_clear_error(tmp_path):
    tiny_config().to_json(tmp_path / "config.json")
    with pytest.raises(PretrainedNotFoundError, match="lacks weights.ckpt"):
        HyenaDNAModel.from_pretrained(tmp_path)


def test_offline_error_names_what_was_looked_for(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(PretrainedNotFoundError) as err:
        HyenaDNAModel.from_pretrained("hyenadna-small-32k-seqlen")
    msg = str(err.value)
    assert "LongSafari/hyenadna-small-32k-seqlen" in msg
    assert "HF_HUB_OFFLINE" in msg and "folder" in msg and "weights.ckpt" in msg


def test_size_name_resolves_through_the_hub_client(monkeypatch, tmp_path):
    model = HyenaDNAModel(tiny_config())
    model.save_pretrained(tmp_path / "snapshot")
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs.get("allow_patterns")))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = HyenaDNAModel.from_pretrained("hyenadna-tiny-1k-seqlen")
    assert calls == [("LongSafari/hyenadna-tiny-1k-seqlen", ["config.json", "weights.ckpt"])]
    torch.testing.assert_close(loaded.state_dict(), model.state_dict(), rtol=0, atol=0)


def test_nonsense_name_lists_the_sizes():
    with pytest.raises(PretrainedNotFoundError, match="hyenadna-large-1m-seqlen"):
        HyenaDNAModel.from_pretrained("./no/such/folder")

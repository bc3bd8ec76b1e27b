"""The -hf (transformers) layout: config translation, key conversion, safe loading, reference equivalence."""

import json
import pickle
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hyena_dna import (
    CheckpointKeyError,
    HyenaDNAConfig,
    HyenaDNAModel,
    PretrainedNotFoundError,
    from_hf_layout,
    to_hf_layout,
)
from hyena_dna.config import config_layout
from hyena_dna.pretrained import read_checkpoint_tensors

# LongSafari/hyenadna-small-32k-seqlen-hf/config.json, as published (key for key).
PUBLIC_SMALL_32K_HF = {
    "_name_or_path": "hyenadna-small-32k-seqlen-hf",
    "activation_freq": 10,
    "architectures": ["HyenaDNAForCausalLM"],
    "auto_map": {
        "AutoConfig": "configuration_hyena.HyenaConfig",
        "AutoModel": "modeling_hyena.HyenaDNAModel",
        "AutoModelForCausalLM": "modeling_hyena.HyenaDNAForCausalLM",
        "AutoModelForSequenceClassification": "modeling_hyena.HyenaDNAForSequenceClassification",
    },
    "d_inner": 1024,
    "d_model": 256,
    "emb_dim": 5,
    "embed_dropout": 0.1,
    "filter_order": 64,
    "hyena_dropout": 0.0,
    "hyena_filter_dropout": 0.0,
    "hyena_order": 2,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "max_seq_len": 32770,
    "model_type": "hyenadna",
    "n_layer": 4,
    "num_inner_mlps": 2,
    "pad_token_id": 4,
    "pad_vocab_size_multiple": 8,
    "short_filter_order": 3,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "train_freq": True,
    "transformers_version": "4.35.0.dev0",
    "use_bias": True,
    "vocab_size": 12,
}
FREQ = "layers.{}.mixer.filter_fn.implicit_filter.{}.freq"


def tiny_config(**kw) -> HyenaDNAConfig:
    return HyenaDNAConfig(d_model=16, n_layer=2, d_inner=32, filter_order=16, l_max=66, **kw)


def outputs(model: HyenaDNAModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids)


# --- config -------------------------------------------------------------------------------------------------


def test_public_hf_config_translates_and_round_trips():
    config = HyenaDNAConfig.from_dict(PUBLIC_SMALL_32K_HF)  # the layout is detected
    assert (config.d_model, config.n_layer, config.d_inner) == (256, 4, 1024)
    assert (config.l_max, config.max_length) == (32770, 32768)  # max_seq_len is l_max, not the max length
    assert (config.local_order, config.w, config.emb_dim, config.filter_order) == (3, 10, 5, 64)
    assert (config.modulate, config.shift, config.residual_in_fp32) == (True, 0.05, True)
    assert not config.checkpoint_mixer and not config.checkpoint_mlp
    # Same architecture as the original small-32k, apart from the key wrapper flags.
    original = HyenaDNAConfig.from_name("hyenadna-small-32k-seqlen")
    for name in ("d_model", "n_layer", "d_inner", "l_max", "emb_dim", "filter_order", "local_order", "w", "vocab_size"):
        assert getattr(config, name) == getattr(original, name), name
    assert config.to_hf_dict() == PUBLIC_SMALL_32K_HF
    assert HyenaDNAConfig.from_dict(config.to_dict()) == config  # also survives our original layout


def test_layout_detection():
    assert config_layout(PUBLIC_SMALL_32K_HF) == "hf"
    assert config_layout(tiny_config().to_dict()) == "original"
    # The first public tiny-1k config.json had "model_type": "hyenadna" next to its "layer" block.
    assert config_layout({"model_type": "hyenadna", "layer": {"l_max": 1026}}) == "original"
    assert config_layout({"d_model": 16, "l_max": 66}) == "original"  # flat model_config of tune_ph


def test_missing_hf_fields_take_the_hf_defaults():
    config = HyenaDNAConfig.from_dict({"model_type": "hyenadna", "d_model": 64, "max_seq_len": 130})
    assert (config.d_inner, config.n_layer, config.emb_dim, config.w, config.l_max) == (256, 12, 3, 1, 130)


@pytest.mark.parametrize("field, value", [("hyena_order", 3), ("short_filter_order", 5), ("layer_norm_epsilon", 1e-6)])
def test_hf_config_the_hf_code_cannot_run_is_refused(field, value):
    with pytest.raises(ValueError, match=field):
        HyenaDNAConfig.from_dict({**PUBLIC_SMALL_32K_HF, field: value})


@pytest.mark.parametrize("change", [{"shift": 0.0}, {"modulate": False}, {"hyena_order": 3}, {"local_order": 5}])
def test_to_hf_refuses_what_the_hf_code_hard_codes(change):
    with pytest.raises(ValueError, match=next(iter(change))):
        to_hf_layout({}, tiny_config(**change))


# --- weights ------------------------------------------------------------------------------------------------


def test_to_hf_layout_keys():
    torch.manual_seed(0)
    model = HyenaDNAModel(tiny_config())
    state = model.state_dict()
    tensors, hf_config = to_hf_layout(state, model.config)
    assert hf_config["max_seq_len"] == 66 and hf_config["model_type"] == "hyenadna"
    assert all(k.startswith("hyena.backbone.") for k in tensors if k != "lm_head.weight")
    for layer in range(2):
        assert f"hyena.backbone.{FREQ.format(layer, 1)}" in tensors
        assert f"hyena.backbone.{FREQ.format(layer, 3)}" not in tensors  # stored once
        assert f"hyena.backbone.{FREQ.format(layer, 5)}" not in tensors
    assert len(tensors) == len(state) - 2 * 2 + 1
    torch.testing.assert_close(tensors["lm_head.weight"], state["embeddings.word_embeddings.weight"])
    assert tensors["lm_head.weight"].data_ptr() != state["embeddings.word_embeddings.weight"].data_ptr()
    assert from_hf_layout(tensors, model.config).keys() == state.keys()


def test_to_hf_layout_refuses_unequal_shared_freq():
    model = HyenaDNAModel(tiny_config())
    state = dict(model.state_dict())
    state[FREQ.format(1, 3)] = state[FREQ.format(1, 3)] + 1
    with pytest.raises(ValueError, match="stores the shared Sin freq once"):
        to_hf_layout(state, model.config)


def test_save_and_load_hf_layout_round_trip(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = HyenaDNAModel(tiny_config())
    with torch.no_grad():
        for layer in model.layers:  # the shared freq must really come back (it is 10 everywhere at init)
            layer.mixer.filter_fn.implicit_filter[1].freq.uniform_(5, 15)
    model.save_pretrained(tmp_path, layout="hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["max_seq_len"] == 66

    def no_pickle(*args, **kwargs):
        raise AssertionError("the -hf layout must load without pickle or torch.load")

    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    loaded = HyenaDNAModel.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.state_dict(), model.state_dict(), rtol=0, atol=0)
    ids = torch.randint(7, 12, (2, 50))
    torch.testing.assert_close(outputs(loaded, ids), outputs(model, ids), rtol=0, atol=0)


def _rewrite(folder: Path, edit) -> None:
    tensors = load_file(folder / "model.safetensors")
    tensors = edit(tensors) or tensors
    save_file(tensors, folder / "model.safetensors")


def test_bare_backbone_prefix_and_freq_at_any_position(tmp_path):
    torch.manual_seed(0)
    model = HyenaDNAModel(tiny_config())
    model.save_pretrained(tmp_path, layout="hf")

    def edit(tensors):
        out = {k.removeprefix("hyena."): v for k, v in tensors.items()}  # a saved bare HyenaDNAModel
        out[f"backbone.{FREQ.format(0, 5)}"] = out.pop(f"backbone.{FREQ.format(0, 1)}")  # kept elsewhere
        return out

    _rewrite(tmp_path, edit)
    loaded = HyenaDNAModel.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.state_dict(), model.state_dict(), rtol=0, atol=0)


def test_hf_strict_keys_missing_unexpected_and_shape(tmp_path):
    model = HyenaDNAModel(tiny_config())
    model.save_pretrained(tmp_path, layout="hf")

    def edit(tensors):
        del tensors["hyena.backbone.layers.1.norm2.bias"]
        tensors["hyena.backbone.layers.9.mixer.bogus"] = torch.zeros(1)
        tensors["hyena.backbone.ln_f.weight"] = torch.zeros(3)
        tensors["score.weight"] = torch.zeros(1, 16)  # a classification head: not the backbone's, ignored

    _rewrite(tmp_path, edit)
    with pytest.raises(CheckpointKeyError) as err:
        HyenaDNAModel.from_pretrained(tmp_path)
    msg = str(err.value)
    assert "model.safetensors" in msg
    assert "1 missing: layers.1.norm2.bias" in msg
    assert "1 unexpected: layers.9.mixer.bogus" in msg
    assert "ln_f.weight: checkpoint (3,) vs model (16,)" in msg


def test_missing_freq_is_listed_and_differing_copies_refused(tmp_path):
    model = HyenaDNAModel(tiny_config())
    tensors, _ = to_hf_layout(model.state_dict(), model.config)
    no_freq = {k: v for k, v in tensors.items() if not k.endswith("freq")}
    state = from_hf_layout(no_freq, model.config)
    assert FREQ.format(0, 1) not in state  # left missing, so the strict load lists it
    two = dict(tensors)
    two[f"hyena.backbone.{FREQ.format(0, 3)}"] = torch.zeros(1, 16)
    with pytest.raises(CheckpointKeyError, match="shared parameter"):
        from_hf_layout(two, model.config)
    both = {**tensors, "backbone.ln_f.bias": torch.zeros(16)}
    with pytest.raises(CheckpointKeyError, match="found both"):
        from_hf_layout(both, model.config)


def test_train_freq_false_fills_the_constant(tmp_path):
    model = HyenaDNAModel(tiny_config(w=7.0))
    model.save_pretrained(tmp_path, layout="hf")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "train_freq": False}))
    _rewrite(tmp_path, lambda t: {k: v for k, v in t.items() if not k.endswith("freq")})
    loaded = HyenaDNAModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.layers[1].mixer.filter_fn.implicit_filter[5].freq, torch.full((1, 16), 7.0))


def test_hf_folder_with_only_pickled_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(PUBLIC_SMALL_32K_HF))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(PretrainedNotFoundError, match="lacks model.safetensors.*pytorch_model.bin"):
        HyenaDNAModel.from_pretrained(tmp_path)


def test_unknown_layout_name(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        HyenaDNAModel(tiny_config()).save_pretrained(tmp_path, layout="transformers")


# --- hub ----------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """snapshot_download replaced by a folder per repo; records (repo_id, allow_patterns)."""
    calls, repos = [], {}

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs.get("allow_patterns")))
        return str(repos[repo_id])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    return calls, repos


def test_hf_size_name_fetches_safetensors(fake_hub, tmp_path):
    calls, repos = fake_hub
    model = HyenaDNAModel(tiny_config())
    repos["LongSafari/hyenadna-tiny-1k-seqlen-hf"] = model.save_pretrained(tmp_path / "snap", layout="hf")
    loaded = HyenaDNAModel.from_pretrained("hyenadna-tiny-1k-seqlen-hf")
    assert calls == [("LongSafari/hyenadna-tiny-1k-seqlen-hf", ["config.json", "model.safetensors"])]
    torch.testing.assert_close(loaded.state_dict(), model.state_dict(), rtol=0, atol=0)


def test_hf_layout_repo_with_another_name_is_found_by_its_config(fake_hub, tmp_path):
    calls, repos = fake_hub
    model = HyenaDNAModel(tiny_config())
    repos["someone/hyenadna-finetuned"] = model.save_pretrained(tmp_path / "snap", layout="hf")
    HyenaDNAModel.from_pretrained("someone/hyenadna-finetuned")
    assert calls == [
        ("someone/hyenadna-finetuned", ["config.json", "weights.ckpt"]),
        ("someone/hyenadna-finetuned", ["config.json", "model.safetensors"]),
    ]


# --- reference equivalence ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "folder, lengths", [("hyenadna-tiny-1k-ref", (1024, 300)), ("hyenadna-gradckpt-ref", (4096, 777))]
)
def test_reference_fixtures_converted_to_hf_reproduce_the_reference(ref_fixtures, tmp_path, folder, lengths):
    root = ref_fixtures / folder
    config = HyenaDNAConfig.from_json(root / "config.json")
    tensors, hf_config = to_hf_layout(read_checkpoint_tensors(root / "weights.ckpt"), config)
    assert not any(".layer." in k or k.startswith("model.") for k in tensors)
    assert sum(k.endswith(".freq") for k in tensors) == config.n_layer  # the shared freq once per filter
    assert hf_config["max_seq_len"] == config.l_max
    (tmp_path / "config.json").write_text(json.dumps(hf_config, indent=2))
    save_file(tensors, tmp_path / "model.safetensors")
    model = HyenaDNAModel.from_pretrained(tmp_path).eval()
    manifest = json.loads((root / "manifest.json").read_text())
    assert model.num_parameters() == manifest["params"]
    for length in lengths:
        ids = torch.from_numpy(np.load(root / f"input_ids_L{length}.npy"))
        expected = np.load(root / f"hidden_L{length}.npy")
        hidden = outputs(model, ids).numpy()
        assert hidden.shape == expected.shape
        assert np.abs(hidden - expected).max() < 1e-4

"""The public sizes table (architecture + gradient-checkpoint flags) and max_length_of."""

import json

import pytest

from hyena_dna import PRETRAINED_SIZES, HyenaDNAConfig, HyenaDNAModel, PretrainedSize, max_length_of

# What each public LongSafari config.json says (evidence in the comments of hyena_dna/config.py).
EXPECTED = {
    "hyenadna-tiny-1k-seqlen": (128, 2, 1024, False),
    "hyenadna-tiny-1k-seqlen-d256": (256, 2, 1024, False),
    "hyenadna-tiny-16k-seqlen-d128": (128, 2, 16384, False),
    "hyenadna-small-32k-seqlen": (256, 4, 32768, True),  # "update config with gradient checkpoint flag"
    "hyenadna-medium-160k-seqlen": (256, 8, 160000, False),  # 482-byte config.json, never given the flags
    "hyenadna-medium-450k-seqlen": (256, 8, 450000, True),
    "hyenadna-large-1m-seqlen": (256, 8, 1000000, True),  # "update config with checkpointing"
}


def test_table_is_explicit_per_size():
    assert set(PRETRAINED_SIZES) == set(EXPECTED)
    for name, (d_model, n_layer, max_length, ckpt) in EXPECTED.items():
        spec = PRETRAINED_SIZES[name]
        assert isinstance(spec, PretrainedSize)
        assert spec == (d_model, n_layer, max_length, ckpt, ckpt), name
        assert spec[2] == spec.max_length == max_length  # tune_ph reads PRETRAINED_SIZES[size][2]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_from_name_takes_the_checkpoint_flags_from_the_table(name):
    config = HyenaDNAConfig.from_name(name)
    ckpt = EXPECTED[name][3]
    assert (config.checkpoint_mixer, config.checkpoint_mlp) == (ckpt, ckpt)
    assert config.l_max == EXPECTED[name][2] + 2 and config.d_inner == 4 * config.d_model
    # The -hf ports are the same architecture, but their weights never carry the ".layer" wrapper.
    hf = HyenaDNAConfig.from_name(f"LongSafari/{name}-hf")
    assert (hf.d_model, hf.n_layer, hf.l_max) == (config.d_model, config.n_layer, config.l_max)
    assert not hf.checkpoint_mixer and not hf.checkpoint_mlp


def test_flags_no_longer_follow_the_length():
    # The old rule was "max_length >= 160000": it got small-32k (true) and medium-160k (false) wrong.
    assert HyenaDNAConfig.from_name("hyenadna-small-32k-seqlen").checkpoint_mixer is True
    assert HyenaDNAConfig.from_name("hyenadna-medium-160k-seqlen").checkpoint_mixer is False


@pytest.mark.parametrize("name", list(EXPECTED))
def test_max_length_of_names_and_hub_ids(name):
    expected = EXPECTED[name][2]
    assert max_length_of(name) == expected
    assert max_length_of(f"LongSafari/{name}") == expected
    assert max_length_of(f"{name}-hf") == expected
    assert max_length_of(f"LongSafari/{name}-hf") == expected


def test_max_length_of_local_folders_in_both_layouts(tmp_path):
    model = HyenaDNAModel(HyenaDNAConfig(d_model=16, n_layer=1, d_inner=32, filter_order=16, l_max=202))
    model.save_pretrained(tmp_path / "original")
    model.save_pretrained(tmp_path / "hf", layout="hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["max_seq_len"] == 202
    assert max_length_of(tmp_path / "original") == 200
    assert max_length_of(str(tmp_path / "hf") + "/") == 200
    # A local folder is read from its own config, whatever its name says.
    named = tmp_path / "hyenadna-large-1m-seqlen"
    model.save_pretrained(named)
    assert max_length_of(str(named)) == 200


def test_max_length_of_an_hf_config_maps_max_seq_len_to_l_max(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "hyenadna", "d_model": 256, "n_layer": 4, "max_seq_len": 32770, "emb_dim": 5})
    )
    assert max_length_of(tmp_path) == 32768


@pytest.mark.parametrize("bad", ["hyenadna-huge", "LongSafari/hyenadna-huge-hf", "./no/such/folder", ""])
def test_max_length_of_unknown_lists_sizes_and_the_folder_option(bad):
    with pytest.raises(ValueError) as err:
        max_length_of(bad)
    msg = str(err.value)
    assert all(size in msg for size in EXPECTED)
    assert "local" in msg and "folder" in msg and "config.json" in msg


def test_max_length_of_folder_without_config(tmp_path):
    with pytest.raises(ValueError, match="without config.json"):
        max_length_of(tmp_path)

"""The search refuses impossible resources at once (before weights, data or Ray), naming the key and the flag."""

from __future__ import annotations

import time

import pytest
import torch
from helpers import ROOT, TINY_MODEL, tiny_space, write_space

from tune_ph.commands import search as search_cli

needs_cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without GPU")


@needs_cpu_only
def test_shipped_gpu_space_fails_fast_on_a_cpu_only_machine(tmp_path, capsys):
    started = time.perf_counter()
    rc = search_cli.main(["--space", str(ROOT / "search_spaces" / "heads.yaml"), "--output-dir", str(tmp_path)])
    took = time.perf_counter() - started
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "resources.gpus_per_trial" in err and "--gpus-per-trial 0" in err and "no GPU" in err
    assert took < 30
    assert not (tmp_path / "heads" / "trial_").exists() and not list(tmp_path.rglob("trial_*"))


def test_more_cpus_than_the_machine_has_are_refused(tmp_path, capsys):
    space = write_space(tmp_path, tiny_space(resources={"cpus_per_trial": 4096, "gpus_per_trial": 0}))
    rc = search_cli.main(["--space", str(space), "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "resources.cpus_per_trial" in err and "--cpus-per-trial" in err, err


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_cpu_override_is_refused(tmp_path, capsys, value):
    space = write_space(tmp_path, tiny_space())
    rc = search_cli.main(["--space", str(space), "--output-dir", str(tmp_path), "--cpus-per-trial", value])
    err = capsys.readouterr().err
    assert rc == 2 and "resources.cpus_per_trial: cpus_per_trial must be a finite number" in err, err


def test_local_folders_become_absolute_for_trials(tmp_path, monkeypatch) -> None:
    """A trial runs in a folder of its own: `runs/pretrained` must reach it as an absolute path."""
    from hyena_dna import HyenaDNAConfig, HyenaDNAModel
    from tune_ph.search.run import load_spec

    HyenaDNAModel(HyenaDNAConfig.from_dict(dict(TINY_MODEL))).save_pretrained(tmp_path / "runs" / "pretrained")
    monkeypatch.chdir(tmp_path)
    space = tiny_space(name="abs")
    space["fixed"].update(model="runs/pretrained", cache_dir="cache")
    space["fixed"].pop("model_config")
    space["fixed"]["from_scratch"] = False
    path = write_space(tmp_path, space)
    spec, _folder, _storage = load_spec(str(path), None, tmp_path / "experiments", False, {})
    assert spec.fixed["model"] == str(tmp_path / "runs" / "pretrained")
    assert spec.fixed["cache_dir"] == str(tmp_path / "cache")
    assert spec.fixed["dataset"] == "demo"  # not a path: unchanged


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """A machine that cannot reach the Hugging Face hub, with nothing in its cache."""
    from huggingface_hub import constants as hf_constants

    empty = str(tmp_path / "empty-hf-cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", empty)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", empty)


@needs_cpu_only
def test_a_pretrained_gpu_space_offline_names_all_it_lacks_and_the_offline_route(tmp_path, capsys, offline_hub):
    heads = ROOT / "search_spaces" / "heads.yaml"
    rc = search_cli.main(["--space", str(heads), "--output-dir", str(tmp_path / "experiments")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1, err  # one line, no hub text
    assert "a GPU" in err and "resources.gpus_per_trial" in err
    assert "pretrained weights of hyenadna-tiny-1k-seqlen" in err
    # heads.yaml reads the hub dataset, which needs the internet too: the route pretrains and searches on the demo.
    assert "python -m tune_ph pretrain --dataset demo --from-scratch --output-dir runs/pretrained" in err
    assert "--model runs/pretrained --dataset demo --gpus-per-trial 0" in err
    assert "pretrain --dataset jedick/microbial-DNA-pH" not in err
    assert "jedick/microbial-DNA-pH is a hub dataset, which needs the internet" in err
    assert "quick.yaml" in err and "heads.yaml, " not in err  # heads.yaml itself needs weights
    assert not (tmp_path / "experiments").exists()  # nothing written


def test_weights_the_hub_cannot_give_are_one_line_with_the_offline_route(tmp_path, capsys, offline_hub):
    heads = ROOT / "search_spaces" / "heads.yaml"
    args = ["--space", str(heads), "--output-dir", str(tmp_path / "experiments"), "--gpus-per-trial", "0"]
    rc = search_cli.main([*args, "--device", "cpu", "--dataset", "demo"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert len(err.strip().splitlines()) == 1, err
    assert "pretrained weights of hyenadna-tiny-1k-seqlen" in err and "offline?" in err
    assert "python -m tune_ph pretrain --dataset demo --from-scratch --output-dir runs/pretrained" in err
    assert "--model runs/pretrained`" in err and "Fixes:" not in err  # the demo is local: no --dataset added
    assert "hub dataset" not in err
    assert not list(tmp_path.rglob("trial_*"))


def test_the_offline_route_pretrains_on_a_local_dataset_with_the_pretrain_command_s_own_flags(tmp_path):
    """The suggested pretrain command parses as the pretrain command's flags, on a dataset this machine holds."""
    import shlex

    from tune_ph.commands import pretrain as pretrain_cli
    from tune_ph.search import space

    spec = space.load_space(ROOT / "search_spaces" / "heads.yaml")
    message = space.lacking_message(spec, gpu=False, weights=["hyenadna-tiny-1k-seqlen"])
    suggested = message.split("`")[1]
    assert suggested.startswith("python -m tune_ph pretrain ")
    args = pretrain_cli.parse_args(shlex.split(suggested)[4:])
    assert args.dataset == "demo" and args.from_scratch and args.output_dir == "runs/pretrained"
    local = tmp_path / "my_dataset"
    local.mkdir()
    spec.fixed["dataset"] = str(local)
    message = space.lacking_message(spec, gpu=False, weights=["hyenadna-tiny-1k-seqlen"])
    assert f"pretrain --dataset {local} --from-scratch" in message and "hub dataset" not in message


def test_spaces_without_weights_are_read_from_the_folder():
    from tune_ph.search import space

    names = [p.name for p in space.spaces_without_weights()]
    assert "quick.yaml" in names
    assert "heads.yaml" not in names and "sizes.yaml" not in names  # pretrained hub weights
    # Every listed file does train from scratch.
    for path in space.spaces_without_weights():
        assert space.load_space(path).fixed.get("from_scratch") is True

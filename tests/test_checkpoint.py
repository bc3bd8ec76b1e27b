"""The Checkpoint record: its on-disk layout round-trips, old layouts still load, a bad file is one clear error."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_MODEL

from hyena_dna import HyenaDNAConfig
from tune_ph.commands import evaluate as evaluate_cli
from tune_ph.config import TrainConfig
from tune_ph.errors import InputError
from tune_ph.model.checkpoint import REQUIRED_KEYS, Checkpoint
from tune_ph.model.regressor import build_model, load_checkpoint


def _cfg(**overrides) -> TrainConfig:
    return TrainConfig(dataset="demo", from_scratch=True, model_config=dict(TINY_MODEL), device="cpu", **overrides)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(_cfg())


def _new_layout(model) -> dict:
    """What fit() writes today, every key of it."""
    optimizer = torch.optim.AdamW(model.parameters())
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": None,
        "epoch": 3,
        "metric": "val_r2",
        "best_value": 0.25,
        "best_epoch": 2,
        "target_mean": 6.5,
        "target_std": 1.25,
        "max_length": 64,
        "dataset_fingerprint": "abc123",
        "train_config": _cfg(max_length=64).to_dict(),
        "model_config": model.backbone.config.to_dict(),
        "history": [{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.4}, {"epoch": 3, "val_loss": 0.45}],
    }


def _same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        if key == "model":
            assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key])
        elif key != "optimizer":
            assert a[key] == b[key], key
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]


def test_the_new_layout_round_trips_through_a_file(tmp_path, model) -> None:
    state = _new_layout(model)
    path = tmp_path / "best_model.pt"
    Checkpoint.from_state(state, "memory").save(path)
    on_disk = torch.load(path, weights_only=True)  # still a plain dict of tensors and primitives
    _same_state(on_disk, state)
    loaded = Checkpoint.load(path)
    assert isinstance(loaded.train_config, TrainConfig) and isinstance(loaded.model_config, HyenaDNAConfig)
    assert (loaded.epoch, loaded.metric, loaded.best_value, loaded.best_epoch) == (3, "val_r2", 0.25, 2)
    assert (loaded.max_length, loaded.target_mean, loaded.target_std) == (64, 6.5, 1.25)
    _same_state(loaded.to_state(), state)


def test_the_first_layout_loads(tmp_path, model) -> None:
    """The layout of the first tune_ph (best_val_loss, no metric) and the least a checkpoint ever held."""
    first = {k: v for k, v in _new_layout(model).items() if k not in ("metric", "best_value")}
    first["best_val_loss"] = 0.4
    torch.save(first, tmp_path / "first.pt")
    loaded = Checkpoint.load(tmp_path / "first.pt")
    assert (loaded.metric, loaded.best_value, loaded.epoch) == ("val_loss", 0.4, 3)

    least = {k: v for k, v in _new_layout(model).items() if k in REQUIRED_KEYS}
    least["train_config"] = {k: v for k, v in least["train_config"].items() if k not in ("aggregation", "max_length")}
    torch.save(least, tmp_path / "least.pt")
    rebuilt, loaded = load_checkpoint(tmp_path / "least.pt")
    # Saved before max_length was: the run's length is the model's; before aggregation: per-set predictions.
    assert loaded.max_length == model.backbone.config.max_length == TINY_MODEL["l_max"] - 2
    assert loaded.train_config.aggregation == "mean_prediction"
    assert (loaded.epoch, loaded.metric, loaded.optimizer, loaded.history) == (0, None, None, [])
    ids = torch.randint(0, 10, (2, 16))
    with torch.no_grad():
        assert torch.equal(rebuilt(ids, torch.ones_like(ids, dtype=torch.bool)), model.eval()(ids, ids >= 0))


def test_the_effective_max_length_falls_back_to_the_config(tmp_path, model) -> None:
    state = {k: v for k, v in _new_layout(model).items() if k != "max_length"}
    assert Checkpoint.from_state(state).max_length == 64  # the saved train_config's


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"target_std": None}, "lacks target_std"),
        ({"epoch": "3"}, "its epoch is str, expected an integer"),
        ({"best_epoch": True}, "its best_epoch is bool"),
        ({"target_mean": "6.5"}, "its target_mean is str, expected a number"),
        (
            {"model": {"head.net.0.weight": [1.0, 2.0]}},
            "its model holds 'head.net.0.weight', which is not a named tensor",
        ),
        ({"train_config": {"learning_rat": 0.1}}, "its train_config cannot be used"),
        ({"model_config": {"d_model": -1}}, "its model_config cannot be used"),
        ({"history": {"epoch": 1}}, "its history is dict, expected a list"),
    ],
)
def test_a_bad_key_is_one_line_naming_the_file(tmp_path, model, change: dict, words: str) -> None:
    state = _new_layout(model)
    for key, value in change.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    path = tmp_path / "run" / "best_model.pt"
    path.parent.mkdir()
    torch.save(state, path)
    with pytest.raises(InputError) as caught:
        Checkpoint.load(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and words in message and "\n" not in message


def test_a_foreign_file_is_refused_on_the_command_line(tmp_path, capsys) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pt")
    assert evaluate_cli.main(["--checkpoint", str(tmp_path / "list.pt"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'list.pt'} is not a tune_ph checkpoint: it holds list, not a mapping of settings"

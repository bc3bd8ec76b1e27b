"""Tests for tune_ph.training.fit: fit on tiny models and datasets, freezing, NaN stop, resume, config checks."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from helpers import TINY, motif_dataset

from hyena_dna import HyenaDNAConfig, PretrainedNotFoundError
from tune_ph import cli, config
from tune_ph.baseline import choices
from tune_ph.commands import train as train_cli
from tune_ph.config import TrainConfig
from tune_ph.data.tokens import TokenizedDataset
from tune_ph.metrics import EPOCH_METRICS
from tune_ph.model.checkpoint import Checkpoint
from tune_ph.model.regressor import PhRegressor, build_model
from tune_ph.training import fit as fit_module
from tune_ph.training.epoch import NonFiniteLossError
from tune_ph.training.fit import fit
from tune_ph.training.predict import predict
from tune_ph.training.run import run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset() -> TokenizedDataset:
    return motif_dataset()


def cfg(**overrides) -> TrainConfig:
    base = dict(
        epochs=2, batch_size=8, learning_rate=1e-3, device="cpu", from_scratch=True, seed=0, model_config=dict(TINY)
    )
    base.update(overrides)
    return TrainConfig(**base)


def test_fit_learns_a_learnable_task(dataset: TokenizedDataset) -> None:
    result = fit(cfg(epochs=6, learning_rate=3e-3, head_dropout=0.0), dataset, progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert [h["epoch"] for h in result.history] == list(range(1, 7))
    assert losses[-1] < 0.5 * losses[0]
    assert result.history[result.best_epoch - 1]["val_loss"] == min(h["val_loss"] for h in result.history)
    assert max(h["val_r2"] for h in result.history) > 0.5
    assert all(set(h) == set(EPOCH_METRICS) for h in result.history)  # what a trial reports and the log holds
    assert result.best_state.epoch == result.best_epoch
    # Predictions come back in pH units, not standardised ones.
    model, _ = _model_from_state(result.best_state)
    preds = predict(
        model, dataset, "val", target_mean=result.best_state.target_mean, target_std=result.best_state.target_std
    )
    assert 2.0 < preds.predicted.mean() < 10.0
    assert len(preds.predicted) == int((dataset.split == "val").sum())  # one prediction per sample
    rmse = np.sqrt(np.mean((preds.predicted - preds.true) ** 2))
    assert rmse == pytest.approx(result.history[result.best_epoch - 1]["val_rmse"])


def _model_from_state(state: Checkpoint) -> tuple[PhRegressor, TrainConfig]:
    c = state.train_config
    model = build_model(c)
    model.load_state_dict(state.weights)
    return model, c


def test_freeze_backbone_trains_head_only(dataset: TokenizedDataset) -> None:
    torch.manual_seed(0)
    c = cfg(epochs=1, freeze_backbone=True)
    model = build_model(c)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert not model.backbone.training and model.head.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    result = fit(c, dataset, model=model, progress=False)
    after = result.best_state.weights
    for key, value in before.items():
        if key.startswith("backbone."):
            assert torch.equal(after[key], value), key
    assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith("head."))
    # The optimizer only ever saw the head's parameters.
    n_head = len(list(model.head.parameters()))
    groups = result.best_state.optimizer["param_groups"]
    assert sum(len(g["params"]) for g in groups) == n_head


def test_fine_tuning_changes_backbone(dataset: TokenizedDataset) -> None:
    c = cfg(epochs=1)
    model = build_model(c)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    fit(c, dataset, model=model, progress=False)
    assert any(not torch.equal(model.backbone.state_dict()[k], v) for k, v in before.items())


class _NanOnCall(torch.nn.Module):
    def __init__(self, bad_call: int):
        super().__init__()
        self.calls, self.bad_call = 0, bad_call

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = torch.nn.functional.mse_loss(pred, target)
        return loss * float("nan") if self.calls == self.bad_call else loss


def test_non_finite_loss_stops_with_epoch_and_batch(dataset: TokenizedDataset, monkeypatch) -> None:
    n_batches = dataset.num_sample_batches("train", 8)
    # Calls: epoch 1 has n_batches training calls, then one val-loss call; batch 2 of epoch 2 goes bad.
    monkeypatch.setattr(fit_module, "make_loss", lambda _cfg: _NanOnCall(n_batches + 1 + 2))
    seen: list[int] = []
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, batch 2\b"):
        fit(cfg(epochs=3), dataset, progress=False, on_epoch_end=lambda m, _s: seen.append(m["epoch"]))
    assert seen == [1]


def test_huge_learning_rate_is_caught(dataset: TokenizedDataset) -> None:
    with pytest.raises(NonFiniteLossError, match="epoch 1, batch"):
        fit(cfg(epochs=1, learning_rate=1e30, grad_clip=None), dataset, progress=False)


def test_resume_continues_at_the_next_epoch(dataset: TokenizedDataset) -> None:
    states: dict[int, bytes] = {}

    def keep(metrics: dict, checkpoint_fn) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint_fn().to_state(), buffer)  # what a Ray checkpoint holds
        states[metrics["epoch"]] = buffer.getvalue()

    c = cfg(epochs=2, lr_scheduler="plateau")
    first = fit(c, dataset, progress=False, on_epoch_end=keep)
    state = Checkpoint.from_state(torch.load(io.BytesIO(states[2]), weights_only=True))
    assert state.epoch == 2 and len(state.history) == 2
    assert state.scheduler is not None and state.optimizer["state"]

    epochs_run: list[int] = []
    resumed = fit(
        cfg(epochs=4, lr_scheduler="plateau"),
        dataset,
        progress=False,
        resume_from=state,
        on_epoch_end=lambda m, _s: epochs_run.append(m["epoch"]),
    )
    assert epochs_run == [3, 4]
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[:2] == first.history
    # The checkpoint is read, not moved: a second resume from the same object trains the same epochs.
    again = fit(cfg(epochs=4, lr_scheduler="plateau"), dataset, progress=False, resume_from=state)
    losses = [h[name] for h in again.history[2:] for name in ("train_loss", "val_loss")]
    assert losses == pytest.approx([h[name] for h in resumed.history[2:] for name in ("train_loss", "val_loss")])
    # Nothing left to do: resuming a finished run returns at once.
    done: list[int] = []
    fit(cfg(epochs=2), dataset, progress=False, resume_from=state, on_epoch_end=lambda m, _s: done.append(m["epoch"]))
    assert done == []


def test_callback_and_early_stopping_end_training(dataset: TokenizedDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    fit(cfg(epochs=5), dataset, progress=False, on_epoch_end=lambda m, _s: seen.append(m["epoch"]) or True)
    assert seen == [1]
    # Validation follows a script, so the stop does not hang on how flat a real run happens to be: error 1.0,
    # then 0.5 (best), then worse twice. Patience 2 stops after epoch 4.
    errors = iter([1.0, 0.5, 0.8, 0.9, 0.1, 0.1])

    def scripted(*args, **kwargs):
        val = predict(*args, **kwargs)
        val.predicted = val.true + next(errors)
        return val

    monkeypatch.setattr(fit_module, "predict", scripted)
    result = fit(cfg(epochs=6, early_stopping_patience=2), dataset, progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert result.best_epoch == 2


def test_seed_makes_runs_repeatable(dataset: TokenizedDataset) -> None:
    a = fit(cfg(epochs=1), dataset, progress=False)
    b = fit(cfg(epochs=1), dataset, progress=False)
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    assert a.history[0]["val_loss"] == b.history[0]["val_loss"]


class RecordingSink:
    def __init__(self, stop_after: int | None = None) -> None:
        self.started: list[tuple[TrainConfig, TokenizedDataset, PhRegressor | None]] = []
        self.epochs: list[dict] = []
        self.checkpoints: list[Checkpoint] = []
        self.stop_after = stop_after

    def start(self, cfg, dataset, model) -> None:
        self.started.append((cfg, dataset, model))

    def report(self, metrics, checkpoint_fn) -> bool:
        self.epochs.append(metrics)
        self.checkpoints.append(checkpoint_fn())
        return self.stop_after is not None and len(self.epochs) >= self.stop_after


def test_run_resolves_the_config_from_its_data_and_reports_to_the_sink(dataset: TokenizedDataset) -> None:
    """The one run function: the sink sees the resolved config (the data's max_length) before the first epoch and
    every epoch with its checkpoint after; the caller's config is left as it was; True from report stops."""
    given = cfg(epochs=3)
    assert given.max_length is None
    sink = RecordingSink(stop_after=2)
    done = run(given, sink, dataset=dataset, progress=False)
    assert given.max_length is None  # never written back
    ((started, data, model),) = sink.started
    assert started.max_length == dataset.max_length == done.cfg.max_length and data is dataset and model is None
    assert [m["epoch"] for m in sink.epochs] == [1, 2] and len(done.fit.history) == 2
    assert all(c.train_config.max_length == dataset.max_length for c in sink.checkpoints)
    # The same numbers as fit() on its own: run() adds no randomness of its own.
    alone = fit(TrainConfig(**{**given.to_dict(), "epochs": 2}), dataset, progress=False)
    assert [h["val_loss"] for h in alone.history] == [h["val_loss"] for h in done.fit.history]


def test_dataset_longer_than_model_is_refused() -> None:
    ds = motif_dataset(n_samples=24, max_length=128)
    with pytest.raises(ValueError, match="max_length=128"):
        fit(cfg(epochs=1), ds, progress=False)


def test_missing_pretrained_weights_raise_with_hint(tmp_path) -> None:
    empty = tmp_path / "checkpoint"
    empty.mkdir()
    with pytest.raises(PretrainedNotFoundError, match="--from-scratch"):
        build_model(TrainConfig(model=str(empty)))
    # With from_scratch the same folder's config.json alone is enough.
    HyenaDNAConfig(**TINY).to_json(empty / "config.json")
    model = build_model(TrainConfig(model=str(empty), from_scratch=True))
    assert model.backbone.config.d_model == 32


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="mlp2_ln"):
        TrainConfig(head="mlp7")
    with pytest.raises(ValueError, match="smoothl1"):
        TrainConfig(loss="l3")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="lerning_rate"):
        TrainConfig.from_dict({"lerning_rate": 1e-3})
    c = TrainConfig(head="mlp3", pooling="last", lr_scheduler="plateau")
    assert TrainConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("loss", config.LOSSES)
def test_every_loss_trains(dataset: TokenizedDataset, loss: str) -> None:
    result = fit(cfg(epochs=1, loss=loss, head="linear", pooling="last"), dataset, progress=False)
    assert np.isfinite(result.history[0]["train_loss"])


def test_the_cli_logs_and_saves_the_baseline_chosen_on_val_beside_the_model(tmp_path, caplog) -> None:
    model_dir = tmp_path / "tiny-model"
    model_dir.mkdir()
    HyenaDNAConfig(d_model=8, n_layer=1, d_inner=16, l_max=66).to_json(model_dir / "config.json")
    argv = ["--dataset", "demo", "--model", str(model_dir), "--from-scratch", "--epochs", "1", "--max-length", "64"]
    argv += ["--max-sets", "1", "--batch-size", "32", "--no-progress", "--device", "cpu"]
    argv += ["--output-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")]
    with caplog.at_level("INFO", logger="tune_ph"):
        assert train_cli.main(argv) == 0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    chosen = saved["baseline"]["chosen"]
    family = saved["baseline"]["results"]
    # Chosen among the models of the reads alone: the study and environment means are references beside it, and
    # on the demo of clades with one read set per sample a reference scores highest on val.
    from_reads = [m for m in family.values() if choices.from_reads(m)]
    assert from_reads and family[chosen]["val_r2"] == max(m["val_r2"] for m in from_reads)
    lo, hi = saved["test_r2_ci95"]
    assert lo <= saved["test_r2"] <= hi and "test_predictions" not in saved["baseline"]
    vs = saved["vs_baseline"]
    assert vs["baseline"] == chosen and vs["n_samples"] == saved["test_n_samples"]
    assert vs["delta_r2"] == pytest.approx(saved["test_r2"] - family[chosen]["test_r2"])
    assert vs["delta_r2_ci95"][0] <= vs["delta_r2"] <= vs["delta_r2_ci95"][1]
    lines = [r.getMessage() for r in caplog.records if r.name == "tune_ph.commands.train"]
    assert any(line.startswith(f"baseline chosen on val: {chosen} (val R² ") for line in lines)
    assert lines[-1].startswith(f"test R² vs the baseline chosen on val ({chosen}): ")
    assert lines[-1].endswith(vs["verdict"])
    # evaluate rebuilds the same split and compares with the baseline the run saved: the same numbers.
    from tune_ph.commands import evaluate as evaluate_cli

    assert evaluate_cli.main(["--checkpoint", str(tmp_path / "run" / "best_model.pt"), "--device", "cpu"]) == 0
    again = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert again["vs_baseline"] == vs and again["test_r2_ci95"] == saved["test_r2_ci95"]
    argv[argv.index("--output-dir") + 1] = str(tmp_path / "run2")
    assert train_cli.main([*argv, "--no-baseline"]) == 0
    assert "baseline" not in json.loads((tmp_path / "run2" / "metrics.json").read_text())


# ------------------------------------------------------------------------------------------------ --model-config


def test_the_model_config_flag_takes_inline_json_or_a_json_file(tmp_path) -> None:
    backbone = tmp_path / "backbone.json"
    backbone.write_text(json.dumps(TINY))
    for value in (json.dumps(TINY), str(backbone)):
        args = train_cli.parse_args(["--from-scratch", "--model-config", value])
        assert TrainConfig(**config.given_fields(args)).model_config == TINY
    assert "model_config" not in config.given_fields(train_cli.parse_args([]))  # not given: the default (None)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("{d_model: 64}", "--model-config '{d_model: 64}' is neither a JSON file nor JSON"),
        ("[64]", "--model-config must hold a JSON object {...}, got list"),
        ('{"d_modl": 64}', "unknown HyenaDNAConfig field(s) d_modl"),
    ],
)
def test_a_bad_model_config_flag_is_one_error_line_before_anything_is_written(tmp_path, capsys, value, says) -> None:
    out = tmp_path / "run"
    argv = ["--dataset", "demo", "--from-scratch", "--model-config", value, "--output-dir", str(out), "--no-progress"]
    assert train_cli.main(argv) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and says in err, err
    assert not out.exists()


@pytest.mark.slow  # a CLI training run (seconds: a tiny backbone, one read set per sample)
def test_the_cli_trains_learned_otus_on_a_custom_backbone_from_its_flags(tmp_path) -> None:
    argv = ["--dataset", "demo", "--from-scratch", "--freeze-backbone", "--model-config", json.dumps(TINY)]
    argv += ["--max-length", "64", "--max-sets", "2", "--aggregation", "clusters", "--clusters", "8"]
    argv += ["--cluster-dims", "8", "--abundance", "relative", "--head", "linear", "--epochs", "2", "--device", "cpu"]
    argv += ["--no-baseline", "--no-progress", "--output-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path)]
    assert train_cli.main(argv) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train_config"]["model_config"] == TINY
    assert saved["model_config"] == HyenaDNAConfig(**TINY).to_dict()  # the backbone built is the flag's
    assert np.isfinite(json.loads((tmp_path / "run" / "metrics.json").read_text())["test_r2"])

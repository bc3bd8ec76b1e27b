"""tune_ph.training.pretrain: the loss falls, the folder loads back, train split only, resume, padding, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_MODEL, sets_dataset

from hyena_dna import HyenaDNAConfig, HyenaDNAModel
from hyena_dna.tokenizer import VOCAB, VOCAB_SIZE
from tune_ph import cli
from tune_ph.commands import pretrain as pretrain_cli
from tune_ph.config import TrainConfig
from tune_ph.data import sources
from tune_ph.data.tokens import TokenizedDataset
from tune_ph.errors import ConfigError, InputError
from tune_ph.model import causal_lm
from tune_ph.model.causal_lm import CausalLM, right_padded
from tune_ph.model.regressor import build_model
from tune_ph.training import pretrain, pretrain_state
from tune_ph.training.epoch import NonFiniteLossError
from tune_ph.training.fit import fit
from tune_ph.training.pretrain_config import PretrainConfig
from tune_ph.training.pretrain_state import PretrainState

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_LENGTH = 48


def markov_dataset(n_samples: int = 24, sets: int = 2, seed: int = 0) -> TokenizedDataset:
    """Ragged sets (padding in every batch) of a cycle A->C->G->T with 10% noise: next tokens are learnable."""
    rng = np.random.default_rng(seed)
    bases = np.array([VOCAB[b] for b in "ACGT"], dtype=np.uint8)
    chunks, set_sample = [], []
    for i in range(n_samples):
        for _ in range(sets):
            n = int(rng.integers(MAX_LENGTH // 2, MAX_LENGTH + 1))
            pos = (rng.integers(4) + np.arange(n)) % 4
            noisy = rng.random(n) < 0.1
            pos[noisy] = rng.integers(4, size=int(noisy.sum()))
            chunks.append(bases[pos])
            set_sample.append(i)
    ph = np.linspace(4, 8, n_samples)
    return sets_dataset(
        chunks, set_sample, ph, n_val=4, n_test=4, max_length=MAX_LENGTH, max_sets=sets, fingerprint="markov"
    )


@pytest.fixture(scope="module")
def dataset() -> TokenizedDataset:
    return markov_dataset()


def cfg(out: Path, **overrides) -> PretrainConfig:
    base = dict(
        output_dir=str(out),
        from_scratch=True,
        model_config=dict(TINY_MODEL),
        device="cpu",
        batch_size=8,
        learning_rate=3e-3,
        warmup_steps=2,
        log_every=1,
        seed=0,
        progress=False,
    )
    base.update(overrides)
    return PretrainConfig(**base)


def test_loss_falls_and_history_is_written(dataset: TokenizedDataset, tmp_path: Path) -> None:
    # 32 train sets, 4 steps per epoch.
    result = pretrain.pretrain(cfg(tmp_path / "run", epochs=6), dataset, progress=False)
    losses = [h["loss"] for h in result.history["train"]]
    assert [h["step"] for h in result.history["train"]] == list(range(1, 25)) and result.steps == 24
    assert abs(losses[0] - math.log(VOCAB_SIZE)) < 0.3  # random init: about uniform over the vocabulary
    assert np.mean(losses[-4:]) < 0.9 * np.mean(losses[:2])
    evals = result.history["eval"]
    assert [e["step"] for e in evals] == [4, 8, 12, 16, 20, 24] and all(e["epoch_end"] for e in evals)
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert json.loads((tmp_path / "run" / pretrain.HISTORY_FILE).read_text()) == result.history
    assert result.tokens_per_second > 0


def test_folder_loads_back_strictly_with_the_trained_weights(dataset: TokenizedDataset, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = pretrain.pretrain(cfg(out, max_steps=3), dataset, progress=False)
    loaded = HyenaDNAModel.from_pretrained(out)  # strict: any missing or extra key is an error
    trained = result.backbone.state_dict()
    assert loaded.config.to_dict() == result.backbone.config.to_dict()
    assert loaded.state_dict().keys() == trained.keys()
    assert all(torch.equal(loaded.state_dict()[k], trained[k].cpu()) for k in trained)
    state = torch.load(out / pretrain_state.STATE_FILE, weights_only=True)  # a plain dict of tensors and settings
    assert state["step"] == 3 and all(torch.equal(state["backbone"][k], trained[k]) for k in trained)
    record = PretrainState.load(out)
    assert (record.step, record.config.max_steps, record.max_length) == (3, 3, MAX_LENGTH)
    assert record.to_state().keys() == state.keys() and record.to_state()["config"] == state["config"]
    # Not an untouched initialisation: the weights moved.
    fresh = HyenaDNAModel(HyenaDNAConfig.from_dict(dict(TINY_MODEL)))
    assert not torch.equal(fresh.state_dict()["ln_f.bias"], trained["ln_f.bias"])


def test_only_train_sets_are_trained_on(dataset: TokenizedDataset, tmp_path: Path, monkeypatch) -> None:
    calls: list[tuple[bool, np.ndarray]] = []
    original = right_padded

    def spy(ds, set_index):
        calls.append((torch.is_grad_enabled(), np.asarray(set_index).copy()))  # evaluation runs without grad
        return original(ds, set_index)

    monkeypatch.setattr(pretrain, "right_padded", spy)  # the training steps
    monkeypatch.setattr(causal_lm, "right_padded", spy)  # the eval loss
    pretrain.pretrain(cfg(tmp_path / "run", epochs=2), dataset, progress=False)
    trained = [s for grad, s in calls if grad]
    evaluated = np.concatenate([s for grad, s in calls if not grad])
    assert len(trained) == 8  # 2 epochs of 4 steps
    train_sets = dataset.set_indices("train")
    for epoch in (trained[:4], trained[4:]):  # every train set once per epoch, nothing else
        assert np.array_equal(np.sort(np.concatenate(epoch)), train_sets)
    assert not np.array_equal(np.concatenate(trained[:4]), np.concatenate(trained[4:]))  # reshuffled
    assert set(evaluated) <= set(dataset.set_indices("val"))


def test_resume_continues_at_the_saved_step(dataset: TokenizedDataset, tmp_path: Path, monkeypatch) -> None:
    whole = pretrain.pretrain(cfg(tmp_path / "whole", epochs=2), dataset, progress=False)
    out = tmp_path / "stopped"
    original = right_padded
    batches = []

    def stop_at_fifth_batch(ds, set_index):
        if torch.is_grad_enabled():
            batches.append(set_index)
            if len(batches) == 5:
                raise KeyboardInterrupt  # as Ctrl-C in step 5; the last state is step 4's
        return original(ds, set_index)

    monkeypatch.setattr(pretrain, "right_padded", stop_at_fifth_batch)
    with pytest.raises(KeyboardInterrupt):
        pretrain.pretrain(cfg(out, epochs=2, checkpoint_every=2), dataset, progress=False)
    assert torch.load(out / pretrain_state.STATE_FILE, weights_only=True)["step"] == 4
    monkeypatch.setattr(pretrain, "right_padded", original)

    steps_run = []
    monkeypatch.setattr(pretrain, "right_padded", lambda ds, s: steps_run.append(len(s)) or original(ds, s))
    resumed = pretrain.pretrain(cfg(out, epochs=2, checkpoint_every=2), dataset, progress=False, resume=True)
    assert resumed.steps == whole.steps == 8
    assert [h["step"] for h in resumed.history["train"]] == list(range(1, 9))
    assert [e["step"] for e in resumed.history["eval"]] == [4, 8]
    # The same batches, dropout masks and schedule as the run that never stopped: the same weights.
    for key, value in whole.backbone.state_dict().items():
        torch.testing.assert_close(resumed.backbone.state_dict()[key], value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        [h["loss"] for h in resumed.history["train"]], [h["loss"] for h in whole.history["train"]]
    )


def test_resume_refuses_other_settings_and_a_fresh_run_refuses_a_used_folder(
    dataset: TokenizedDataset, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    with pytest.raises(InputError, match="no pretrain_state.pt"):
        pretrain.pretrain(cfg(out), dataset, progress=False, resume=True)
    pretrain.pretrain(cfg(out, max_steps=1), dataset, progress=False)
    with pytest.raises(InputError, match=r"already holds a pretraining run.*--resume"):
        pretrain.pretrain(cfg(out, max_steps=1), dataset, progress=False)
    with pytest.raises(ConfigError, match="learning_rate"):
        pretrain.pretrain(cfg(out, max_steps=1, learning_rate=1e-2), dataset, progress=False, resume=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=f"{other} is not empty"):
        pretrain.pretrain(cfg(other, max_steps=1), dataset, progress=False)


def test_padding_never_contributes_to_the_loss(dataset: TokenizedDataset) -> None:
    torch.manual_seed(0)
    lm = CausalLM(HyenaDNAModel(HyenaDNAConfig.from_dict(dict(TINY_MODEL)))).eval()
    with torch.no_grad():  # large weights: at initialisation the context barely moves a token's hidden state
        for param in lm.parameters():
            if param.dim() >= 2:
                param.normal_(std=0.5)

    def with_other_padding(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = ids.clone()
        out[~mask] = torch.randint(0, VOCAB_SIZE, (int((~mask).sum()),))
        return out

    sets = dataset.set_indices("train")[:6]
    ids, mask = right_padded(dataset, sets)
    assert (~mask).any() and bool(mask[:, 0].all())  # ragged, each set from position 0
    with torch.no_grad():
        loss = lm(ids, mask)
        assert torch.allclose(lm(with_other_padding(ids, mask), mask), loss, atol=1e-6)
        # Left padding (the fine-tuning layout) would leak: the causal model reads the padding before a set.
        left_ids, left_mask = dataset.tokens_of(sets)
        left = lm(left_ids, left_mask)
        assert (lm(with_other_padding(left_ids, left_mask), left_mask) - left).abs() > 1e-2
        # The same as each set alone, without any padding: the mean over all its (token, next token) pairs.
        losses = []
        for s in sets:
            alone = torch.from_numpy(dataset.set_tokens(int(s)).astype(np.int64))[None]
            logits = lm.logits(lm.backbone(alone))[0, :-1]
            losses.append(F.cross_entropy(logits, alone[0, 1:], reduction="none"))
    torch.testing.assert_close(loss, torch.cat(losses).mean(), rtol=1e-5, atol=1e-6)


def test_config_rules() -> None:
    with pytest.raises(ConfigError, match="model_config"):
        PretrainConfig(output_dir="x", model_config=dict(TINY_MODEL))  # no pretrained weights for it
    with pytest.raises(ConfigError, match="warmup_steps"):
        PretrainConfig(output_dir="x", warmup_steps=-1)
    with pytest.raises(ConfigError, match="val_fraction"):
        PretrainConfig(output_dir="x", test_fraction=0.5, val_fraction=0.5)
    assert PretrainConfig(output_dir="x").train_config().split_seed == TrainConfig().split_seed


def test_cli_end_to_end_on_the_demo_then_fine_tune(tmp_path: Path) -> None:
    out = tmp_path / "pretrained"
    model_json = tmp_path / "tiny.json"
    model_json.write_text(json.dumps(TINY_MODEL))
    common = ["--dataset", "demo", "--max-length", "64", "--max-sets", "1", "--device", "cpu"]
    argv = [*common, "--from-scratch", "--model-config", str(model_json), "--max-steps", "3"]
    argv += ["--batch-size", "8", "--eval-sets", "8", "--output-dir", str(out), "--no-progress"]
    assert pretrain_cli.main(argv) == cli.EXIT_OK
    history = json.loads((out / pretrain.HISTORY_FILE).read_text())
    assert history["train"][-1]["step"] == 3 and history["eval"][-1]["eval_loss"] > 0
    assert pretrain_cli.main(argv) == cli.EXIT_BAD_INPUT  # the folder holds a run now
    assert pretrain_cli.main(["--output-dir", str(out), "--resume", "--no-progress"]) == cli.EXIT_OK  # already done

    tc = TrainConfig(model=str(out), dataset="demo", max_length=64, max_sets=1, device="cpu", epochs=1)
    model = build_model(tc)
    saved = HyenaDNAModel.from_pretrained(out).state_dict()
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in saved.items())
    ds = sources.prepare_for(tc)
    result = fit(tc, ds, progress=False, model=model)
    assert len(result.history) == 1 and math.isfinite(result.history[0]["val_loss"])


def test_a_damaged_state_is_one_line_naming_the_file(dataset: TokenizedDataset, tmp_path: Path) -> None:
    out = tmp_path / "run"
    pretrain.pretrain(cfg(out, max_steps=1), dataset, progress=False)
    state = torch.load(out / pretrain_state.STATE_FILE, weights_only=True)
    torch.save({**state, "step": "1"}, out / pretrain_state.STATE_FILE)
    with pytest.raises(InputError) as caught:
        pretrain.pretrain(cfg(out, max_steps=2), dataset, progress=False, resume=True)
    assert str(caught.value).startswith(f"{out / pretrain_state.STATE_FILE}: its step is str, expected an integer")
    torch.save({k: v for k, v in state.items() if k != "torch_rng"}, out / pretrain_state.STATE_FILE)
    with pytest.raises(InputError, match=r"pretrain_state.pt is not a pretraining state: it lacks torch_rng$"):
        pretrain.pretrain(cfg(out, max_steps=2), dataset, progress=False, resume=True)


def test_a_non_finite_loss_stops_the_run_naming_the_steps(
    dataset: TokenizedDataset, tmp_path: Path, monkeypatch
) -> None:
    forward, calls = CausalLM.forward, []

    def bad_from_step_3(self, *args):
        calls.append(len(calls) + 1)
        loss = forward(self, *args)
        return loss * float("nan") if len(calls) >= 3 else loss

    monkeypatch.setattr(CausalLM, "forward", bad_from_step_3)
    with pytest.raises(NonFiniteLossError, match=r"in steps 3\.\.4; the run was stopped"):
        pretrain.pretrain(cfg(tmp_path / "run", max_steps=6, log_every=2), dataset, progress=False)


def test_a_log_gets_step_lines_not_a_bar(dataset: TokenizedDataset, tmp_path: Path, caplog, capsys) -> None:
    """Progress on, output not a terminal (a user's log file): INFO step lines, and no tqdm carriage returns."""
    import logging

    with caplog.at_level(logging.INFO, logger=pretrain.log.name):
        pretrain.pretrain(cfg(tmp_path / "run", max_steps=4, log_every=2, progress=True), dataset, progress=True)
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line.split()[1] for line in steps] == ["2/4", "4/4"]
    assert all(r.levelno == logging.INFO for r in caplog.records)
    assert "\r" not in capsys.readouterr().err

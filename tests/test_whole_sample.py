"""The whole-sample model: every read packed, sets drawn per step, set aggregation, the frozen embedding cache."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY, motif_dataset

from hyena_dna import HyenaDNAConfig, HyenaDNAModel
from hyena_dna.tokenizer import decode
from tune_ph import files
from tune_ph.config import AGGREGATIONS, POOLINGS, TrainConfig
from tune_ph.data import token_cache
from tune_ph.data.tokens import build
from tune_ph.files import save_torch
from tune_ph.model import aggregation, embeddings
from tune_ph.model.checkpoint import REQUIRED_KEYS
from tune_ph.model.clusters import ReadClusters
from tune_ph.model.heads import RegressionHead
from tune_ph.model.read_encoders import pool_hidden
from tune_ph.model.regressor import build_model, load_checkpoint
from tune_ph.report.evaluate import evaluate_checkpoint
from tune_ph.search import tuner
from tune_ph.search.space import parse_space
from tune_ph.training.epoch import seed_everything
from tune_ph.training.fit import fit

pytestmark = pytest.mark.usefixtures("one_thread")


def _reads(rng: np.random.Generator, n: int) -> list[str]:
    return ["".join(rng.choice(list("ACGT"), size=int(rng.integers(20, 40)))) for _ in range(n)]


# ---------------------------------------------------------------- packing and drawing sets


def test_default_packs_every_read_of_every_sample() -> None:
    rng = np.random.default_rng(0)
    reads = {f"s{i}": _reads(rng, 30 + 7 * i) for i in range(3)}
    df = pd.DataFrame(
        {
            "sample_id": list(reads),
            "study_name": "S",
            "pH": [5.0, 6.0, 7.0],
            "sequences": list(reads.values()),
            "environment": "soil",
        }
    )
    ds = build(df, {"train": list(reads)}, max_length=128, max_sets=None, use_cache=False)
    assert ds.max_sets == 0  # 0: as many sets as the reads fill
    starts, counts = ds.sample_sets()
    for k, sid in enumerate(ds.sample_ids):
        pieces = []
        for s in range(starts[k], starts[k] + counts[k]):
            pieces += decode(ds.set_tokens(s)).split("[SEP]")
        assert pieces == reads[str(sid)]  # all reads, each once, in order
    assert counts.min() > 5  # more than the published recipe's 5 sets
    # max_sets still caps (the published 5-set recipe).
    capped = build(df, {"train": list(reads)}, max_length=128, max_sets=5, use_cache=False)
    assert capped.sample_sets()[1].tolist() == [5, 5, 5]


def test_training_draws_fresh_sets_each_epoch_and_evaluation_uses_all() -> None:
    ds = motif_dataset(n_samples=20, max_sets=6)
    starts, counts = ds.sample_sets()

    def drawn(seed: int) -> dict[int, tuple[int, ...]]:
        out = {}
        for choice in ds.choose_sets("train", 4, sets_per_step=2, shuffle=True, seed=seed):
            for row, sample in enumerate(choice.sample_index):
                sets = choice.set_index[choice.owner == row]
                assert len(sets) == 2 and len(set(sets)) == 2  # without replacement
                assert (ds.set_sample[sets] == sample).all()  # a sample's own sets only
                out[int(sample)] = tuple(sets)
        return out

    epoch1, epoch2 = drawn(1), drawn(2)
    assert sorted(epoch1) == sorted(ds.sample_indices("train").tolist())  # every train sample, once
    assert epoch1 == drawn(1)  # deterministic given the seed
    assert sum(epoch1[s] != epoch2[s] for s in epoch1) >= len(epoch1) // 2  # other reads next epoch
    for choice in ds.choose_sets("val", 3):  # evaluation: every set of every sample
        for row, sample in enumerate(choice.sample_index):
            sets = choice.set_index[choice.owner == row]
            assert sets.tolist() == list(range(starts[sample], starts[sample] + counts[sample]))


# ---------------------------------------------------------------- aggregation


@pytest.mark.parametrize("standardise", [False, True])
@pytest.mark.parametrize("kind", AGGREGATIONS)
def test_aggregation_ignores_set_order_and_other_samples(kind: str, standardise: bool) -> None:
    torch.manual_seed(0)
    d = 16
    if kind == "clusters":  # fit on vectors of their own; they standardise in their own space
        clusters = ReadClusters(d, n_clusters=4, dims=3)
        clusters.fit(torch.randn(40, d), seed=0)
        agg, head = aggregation.Clusters(d, clusters), RegressionHead(4, "mlp2", dropout=0.0)
    else:
        agg = aggregation.AGGREGATIONS[kind](d, standardise=standardise)
        head = RegressionHead(d, "mlp2", dropout=0.0)
    agg.eval(), head.eval()
    counts = [3, 1, 5]
    owner = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))
    vectors = torch.randn(len(owner), d)
    with torch.no_grad():
        base = agg(vectors, owner, 3, head)
        perm = torch.randperm(len(owner))
        shuffled = agg(vectors[perm], owner[perm], 3, head)
        alone = agg(vectors[owner == 1], torch.zeros(1, dtype=torch.long), 1, head)
        # Other samples' sets changed beyond recognition: sample 1's prediction must not move.
        noisy = vectors.clone()
        noisy[owner != 1] = 1e3 * torch.randn(int((owner != 1).sum()), d)
        disturbed = agg(noisy, owner, 3, head)
    assert base.shape == (3,)
    torch.testing.assert_close(shuffled, base)
    torch.testing.assert_close(alone[0], base[1])
    torch.testing.assert_close(disturbed[1], base[1])
    assert not torch.allclose(disturbed[0], base[0])  # the test can see a change where there is one


@pytest.mark.parametrize("frozen", [False, True])
def test_set_vectors_are_standardised_only_for_a_frozen_backbone(tmp_path, frozen: bool) -> None:
    """A frozen backbone's vectors are fixed, so running statistics fit them; a training backbone's move."""
    cfg = TrainConfig(from_scratch=True, model_config=dict(TINY), device="cpu", freeze_backbone=frozen)
    model = build_model(cfg)
    assert isinstance(model.aggregation.norm, torch.nn.BatchNorm1d) is frozen
    # Checkpoints say which in their weights, and load back strictly either way (also into the other config).
    model.aggregation.norm = torch.nn.BatchNorm1d(TINY["d_model"], affine=False) if not frozen else torch.nn.Identity()
    state = {
        "model": model.state_dict(),
        "model_config": model.backbone.config.to_dict(),
        "train_config": cfg.to_dict(),
        "target_mean": 7.0,
        "target_std": 1.0,
    }
    assert set(REQUIRED_KEYS) == set(state)  # the least a checkpoint holds
    save_torch(tmp_path / "m.pt", state)
    loaded, _ = load_checkpoint(tmp_path / "m.pt")
    assert isinstance(loaded.aggregation.norm, torch.nn.BatchNorm1d) is not frozen


def _tiny_cfg(tmp_path, **overrides) -> TrainConfig:
    """A tiny from-scratch model on 64-token sets, with its caches under tmp_path."""
    base = dict(from_scratch=True, model_config=dict(TINY), device="cpu", max_length=64, batch_size=4)
    return TrainConfig(**base, cache_dir=str(tmp_path), **overrides)


@pytest.mark.parametrize("frozen", [False, True])
def test_resume_keeps_the_norm_its_weights_were_trained_with(tmp_path, frozen: bool) -> None:
    """A run saved by another version (a training backbone with the norm, a frozen one without) resumes."""
    ds = motif_dataset(n_samples=16, max_sets=2)
    cfg = _tiny_cfg(tmp_path, max_sets=2, freeze_backbone=frozen, epochs=2)
    states = []
    fit(cfg, ds, progress=False, on_epoch_end=lambda _m, checkpoint_fn: states.append(checkpoint_fn()) or True)
    state = states[0]
    if frozen:
        state.weights = {k: v for k, v in state.weights.items() if not k.startswith("aggregation.norm.")}
    else:
        norm = torch.nn.BatchNorm1d(TINY["d_model"], affine=False)
        state.weights.update({f"aggregation.norm.{k}": v for k, v in norm.state_dict().items()})
    resumed = fit(cfg, ds, progress=False, resume_from=state)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    norm_keys = [k for k in resumed.best_state.weights if k.startswith("aggregation.norm.")]
    assert bool(norm_keys) is not frozen  # the saved era's choice, not the config's


def test_attention_weights_sum_to_one_per_sample_and_matter() -> None:
    torch.manual_seed(1)
    agg = aggregation.Attention(8)
    owner = torch.tensor([0, 0, 0, 1, 1])
    w = agg.weights(torch.randn(5, 8), owner, 2)
    torch.testing.assert_close(torch.zeros(2).index_add_(0, owner, w), torch.ones(2))
    assert (w > 0).all() and w[:3].std() > 0


def test_pooling_reads_real_positions_only() -> None:
    """Padding positions never enter a set vector: pool/sum/first/last use the mask."""
    hidden = torch.randn(2, 5, 3)
    mask = torch.tensor([[False, False, True, True, True], [False, True, True, True, True]])
    torch.testing.assert_close(pool_hidden(hidden, mask, "pool")[0], hidden[0, 2:].mean(0))
    torch.testing.assert_close(pool_hidden(hidden, mask, "sum")[1], hidden[1, 1:].sum(0))
    torch.testing.assert_close(pool_hidden(hidden, mask, "first")[0], hidden[0, 2])
    torch.testing.assert_close(pool_hidden(hidden, mask, "last")[1], hidden[1, 4])
    junk = hidden.clone()
    junk[~mask] = 1e6
    for pooling in POOLINGS:
        torch.testing.assert_close(pool_hidden(junk, mask, pooling), pool_hidden(hidden, mask, pooling))


# ---------------------------------------------------------------- the frozen-backbone embedding cache


def _backbone(seed: int = 0) -> HyenaDNAModel:
    torch.manual_seed(seed)
    return HyenaDNAModel(HyenaDNAConfig.from_dict(dict(TINY)))


def test_cache_hit_then_miss_on_changed_weights(tmp_path, monkeypatch) -> None:
    ds = motif_dataset(n_samples=12, max_sets=2)
    calls = []
    real = embeddings.compute
    monkeypatch.setattr(embeddings, "compute", lambda *a, **k: calls.append(1) or real(*a, **k))
    backbone = _backbone()
    first = embeddings.set_vectors(backbone, ds, cache_dir=tmp_path, progress=False)
    assert first.shape == (len(ds), len(POOLINGS), TINY["d_model"]) and len(calls) == 1
    again = embeddings.set_vectors(backbone, ds, cache_dir=tmp_path, progress=False)
    assert len(calls) == 1  # a hit: the backbone did not run
    np.testing.assert_array_equal(again, first)
    with torch.no_grad():
        backbone.ln_f.bias.add_(0.5)  # one changed weight is another backbone
    # A copy: the entry is memory-mapped, and the test below damages the file in place.
    changed = np.array(embeddings.set_vectors(backbone, ds, cache_dir=tmp_path, progress=False))
    assert len(calls) == 2 and not np.allclose(changed, first)
    # The vectors are what the backbone gives each set on its own.
    ids, mask = ds.tokens_of(np.array([3]))
    with torch.no_grad():
        hidden = backbone.eval()(ids)
    np.testing.assert_allclose(changed[3, POOLINGS.index("pool")], hidden[0][mask[0]].mean(0).numpy(), atol=1e-5)
    # A damaged entry is recomputed, not fatal.
    embeddings.cache_path(backbone, ds, tmp_path).write_bytes(b"not an array")
    embeddings.set_vectors(backbone, ds, cache_dir=tmp_path, progress=False)
    assert len(calls) == 3
    # Forged vectors of the right shape, with a matching content hash: the spot check recomputes a few sets.
    path = embeddings.cache_path(backbone, ds, tmp_path)
    fake = np.random.default_rng(0).normal(size=changed.shape).astype(np.float32)
    np.save(path, fake)
    files.write_text(embeddings.hash_path(path), files.content_hash({"vectors": fake}, path.name))
    assert embeddings.stream_hash(path, path.name) == files.content_hash({"vectors": fake}, path.name)
    np.testing.assert_allclose(embeddings.set_vectors(backbone, ds, cache_dir=tmp_path, progress=False), changed)
    assert len(calls) == 4


def test_frozen_training_never_runs_the_backbone(tmp_path, monkeypatch) -> None:
    ds = motif_dataset(n_samples=24, max_sets=3)
    cfg = _tiny_cfg(tmp_path, max_sets=3, freeze_backbone=True, epochs=3, learning_rate=3e-3, aggregation="attention")
    seed_everything(cfg.seed)
    vectors = embeddings.set_vectors(build_model(cfg).backbone, ds, cache_dir=tmp_path, progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("a frozen trial ran the backbone")

    real_forward, runs = HyenaDNAModel.forward, []

    def spot_checks_only(self, input_ids):
        # Each cache read recomputes a couple of sets chosen at random (embeddings._spot_check); nothing else runs.
        runs.append(input_ids.shape[0])
        return real_forward(self, input_ids)

    monkeypatch.setattr(HyenaDNAModel, "forward", spot_checks_only)
    result = fit(cfg, ds, progress=False)  # the vectors come from the disk cache
    # Evaluating the frozen checkpoint reads the same cache: still no backbone run but the spot check.
    result.best_state.save(tmp_path / "best_model.pt")
    metrics = evaluate_checkpoint(tmp_path / "best_model.pt", dataset=ds, device="cpu")
    assert metrics["test_n_samples"] == 6 and np.isfinite(metrics["test_r2"])
    assert runs == [embeddings._SPOT_CHECKS] * 2, runs  # one spot check per cache read (fit, evaluate)
    monkeypatch.setattr(HyenaDNAModel, "forward", refuse)
    assert len(result.history) == 3 and result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    monkeypatch.setattr(embeddings, "compute", refuse)
    shared = {embeddings.cache_key(_backbone_of(cfg), ds): vectors}
    monkeypatch.setattr(token_cache, "cache_folder", refuse)  # not even the disk cache is read
    again = fit(cfg, ds, progress=False, shared_vectors=shared)
    assert [h["val_loss"] for h in again.history] == [h["val_loss"] for h in result.history]


def _backbone_of(cfg: TrainConfig) -> HyenaDNAModel:
    seed_everything(cfg.seed)
    return build_model(cfg).backbone


def test_search_driver_computes_the_vectors_its_frozen_trials_look_up(tmp_path) -> None:
    ds = motif_dataset(n_samples=12, max_sets=2)
    fixed = {
        "dataset": "demo",
        "from_scratch": True,
        "model_config": dict(TINY),
        "max_length": 64,
        "device": "cpu",
        "cache_dir": str(tmp_path),
    }
    spec = parse_space({"name": "f", "fixed": fixed, "space": {"freeze_backbone": {"choice": [False, True]}}})
    shared = tuner.shared_vectors(spec, {spec.model_choices()[0]: ds})
    trial = TrainConfig.from_trial({**fixed, "freeze_backbone": True})
    assert list(shared) == [embeddings.cache_key(_backbone_of(trial), ds)]
    unfrozen = parse_space({"name": "g", "fixed": fixed, "space": {"head": {"choice": ["linear", "mlp2"]}}})
    assert (
        tuner.shared_vectors(unfrozen, {unfrozen.model_choices()[0]: ds}) == {}
    )  # no frozen trial: nothing to compute

"""aggregation='clusters' (learned OTUs): the fit matches scikit-learn, CLR abundances, config rules, a frozen
backbone that learns which organisms a sample holds, checkpoints, and embedding each distinct read once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL, sets_dataset
from sklearn.cluster import MiniBatchKMeans
from sklearn.decomposition import PCA

from hyena_dna import tokenizer
from tune_ph.config import TrainConfig
from tune_ph.errors import ConfigError
from tune_ph.model import embeddings
from tune_ph.model.clusters import ReadClusters
from tune_ph.model.regressor import build_model, load_checkpoint
from tune_ph.report.evaluate import evaluate_checkpoint
from tune_ph.training import fit as fit_module
from tune_ph.training.fit import fit, seeded_model
from tune_ph.training.predict import predict

pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(n_blobs: int = 8, per_blob: int = 50, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 5, (n_blobs, d))
    labels = np.repeat(np.arange(n_blobs), per_blob)
    return torch.from_numpy((centers[labels] + rng.normal(0, 0.3, (len(labels), d))).astype(np.float32)), labels


def test_the_fit_is_scikit_learns_pca_and_kmeans():
    vectors, labels = _blobs()
    clusters = ReadClusters(16, n_clusters=8, dims=4)
    clusters.fit(vectors, seed=0)
    expected = PCA(n_components=4, whiten=True, random_state=0).fit_transform(vectors.numpy())
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(clusters.embed(vectors).numpy(), expected, atol=1e-4)
    kmeans = MiniBatchKMeans(8, batch_size=4096, n_init=1, max_iter=20, random_state=0).fit(expected)
    np.testing.assert_allclose(clusters.centroids.numpy(), kmeans.cluster_centers_, atol=1e-5)
    assigned = clusters.assign(vectors)[:, 0].numpy()
    np.testing.assert_array_equal(assigned, kmeans.predict(clusters.embed(vectors).numpy()))
    # Well separated organisms: each blob's vectors fall (almost all) in one cluster of their own.
    purity = sum(np.bincount(assigned[labels == b]).max() for b in range(8)) / len(labels)
    assert purity > 0.9, purity


def test_assignment_in_bounded_chunks_equals_assigning_every_read_at_once(monkeypatch):
    # Distances to every centroid of every fit are computed a chunk of reads at a time (a million reads x 6,800
    # centroids would be 27 GB at once); chunk edges must not change any read's cluster.
    vectors, _ = _blobs(n_blobs=6, per_blob=40)
    clusters = ReadClusters(16, n_clusters=8, dims=4, levels=2, fits=2)
    clusters.fit(vectors, seed=3)
    whole = clusters.assign(vectors)
    z = clusters.embed(vectors)
    distance = torch.cdist(z, clusters.centroids)
    starts = np.r_[0, np.cumsum(clusters.sizes)]
    expected = torch.stack(
        [distance[:, a:b].argmin(dim=-1) + a for a, b in zip(starts[:-1], starts[1:], strict=True)], dim=1
    )
    torch.testing.assert_close(whole, expected)
    monkeypatch.setattr("tune_ph.model.clusters.ASSIGN_DISTANCES", 7 * len(clusters.centroids))  # 7 reads a chunk
    torch.testing.assert_close(clusters.assign(vectors), whole)
    assert clusters.assign(vectors[:0]).shape == (0, len(clusters.sizes))


def test_abundances_of_some_rows_read_a_chunk_at_a_time_equal_those_of_the_rows_copied_out(tmp_path):
    # A trial's split features read the split's rows from all vectors (the cache's memory map) a chunk at a time;
    # counts and topics add up over chunks, so weights, topics and every fit come out as from one copy.
    vectors, _ = _blobs(n_blobs=6, per_blob=40)
    clusters = ReadClusters(16, n_clusters=8, dims=4, levels=2, topics=3, fits=2, transform="relative")
    clusters.fit(vectors, seed=5)
    rows = np.random.default_rng(0).permutation(len(vectors))[:150]
    owner = torch.from_numpy(np.arange(150) % 7)
    weights = torch.from_numpy(np.random.default_rng(1).integers(1, 5, 150).astype(np.float32))
    clusters.load_topics(clusters.fit_topics(clusters.counts(vectors[rows], owner, 7, weights), seed=0))
    counts = clusters.counts(vectors[rows], owner, 7, weights)
    torch.testing.assert_close(clusters.counts_of_rows(vectors, rows, owner, 7, weights, chunk=16), counts)
    assert (counts[:, -6:] > 0).any() and counts.sum() > 0  # the topics' blocks are counted too
    got = clusters.abundances(vectors, owner, 7, weights, rows=rows)
    torch.testing.assert_close(got, clusters.abundances(vectors[rows], owner, 7, weights))
    np.save(tmp_path / "vectors.npy", vectors.numpy())
    mapped = np.load(tmp_path / "vectors.npy", mmap_mode="r")  # read-only, as the cache's entries are
    torch.testing.assert_close(clusters.counts_of_rows(mapped, rows, owner, 7, weights, chunk=16), counts)


def test_abundances_are_the_clr_of_cluster_counts():
    vectors, _ = _blobs(n_blobs=4, per_blob=20)
    clusters = ReadClusters(16, n_clusters=4, dims=3)
    clusters.fit(vectors, seed=1)
    owner = torch.tensor([0] * 50 + [1] * 30)
    chosen = vectors[torch.randperm(80, generator=torch.Generator().manual_seed(0))]
    clr = clusters.abundances(chosen, owner, 2)
    assigned = clusters.assign(chosen)[:, 0]
    for sample in range(2):
        counts = torch.bincount(assigned[owner == sample], minlength=4).float()
        expected = torch.log(counts + 0.5) - torch.log(counts + 0.5).mean()
        torch.testing.assert_close(clr[sample], expected)
    torch.testing.assert_close(clr.sum(dim=1), torch.zeros(2), atol=1e-5, rtol=0)


def test_clusters_need_a_frozen_backbone_and_fit_its_width():
    with pytest.raises(ConfigError, match="freeze_backbone"):
        TrainConfig(aggregation="clusters", freeze_backbone=False).validate()
    cfg = TrainConfig(
        dataset="demo",
        from_scratch=True,
        model_config=dict(TINY_MODEL),
        freeze_backbone=True,
        aggregation="clusters",
        cluster_dims=TINY_MODEL["d_model"] + 1,
    )
    with pytest.raises(ConfigError, match="cluster_dims"):
        build_model(cfg)
    with pytest.raises(ConfigError, match="clusters"):
        TrainConfig(clusters=1).validate()


ORGANISMS = 6
READ_LENGTH = 48


def organism_dataset(n_samples: int = 60, reads: int = 16, seed: int = 0):
    """Reads of six organisms (random sequences, 1 % substitutions); low pH favours organisms 0-2, high pH 3-5.

    Base composition says nothing here: only which organisms a sample holds does, as in real samples.
    """
    rng = np.random.default_rng(seed)
    genomes = rng.integers(0, 4, (ORGANISMS, READ_LENGTH))
    ph = rng.uniform(4.0, 9.0, n_samples).astype(np.float32)
    bases = np.array([tokenizer.encode(b)[0] for b in "ACGT"], dtype=np.uint8)
    chunks, set_sample = [], []
    for i, value in enumerate(ph):
        high = (value - 4.0) / 5.0
        weights = np.r_[np.full(3, 1 - high), np.full(3, high)] + 0.05
        for organism in rng.choice(ORGANISMS, reads, p=weights / weights.sum()):
            read = genomes[organism].copy()
            mutated = rng.random(READ_LENGTH) < 0.01
            read[mutated] = rng.integers(0, 4, mutated.sum())
            chunks.append(bases[read])
            set_sample.append(i)
    return sets_dataset(
        chunks, set_sample, ph, n_val=10, n_test=10, max_length=64, max_sets=0, fingerprint=f"organisms{seed}"
    )


def clusters_config(tmp_path, **overrides) -> TrainConfig:
    settings = dict(
        dataset="demo",
        from_scratch=True,
        model_config=dict(TINY_MODEL),
        freeze_backbone=True,
        aggregation="clusters",
        clusters=ORGANISMS,
        cluster_dims=8,
        head="linear",
        sets_per_step=0,
        batch_size=8,
        learning_rate=3e-2,
        weight_decay=0.0,
        epochs=40,
        max_length=64,
        device="cpu",
        cache_dir=str(tmp_path / "cache"),
    )
    return TrainConfig(**{**settings, **overrides})


def test_a_random_frozen_backbone_learns_which_organisms_a_sample_holds(tmp_path):
    dataset = organism_dataset()
    cfg = clusters_config(tmp_path)
    result = fit(cfg, dataset, progress=False, metric="val_r2")
    best = max(h["val_r2"] for h in result.history)
    assert best > 0.6, [round(h["val_r2"], 3) for h in result.history]
    # The clusters are weights like any other: a saved checkpoint predicts exactly what the fitted model did.
    path = result.best_state.save(tmp_path / "best_model.pt")
    model, state = load_checkpoint(path)
    assert torch.count_nonzero(model.aggregation.clusters.centroids) > 0
    metrics = evaluate_checkpoint(path, dataset=dataset, output_dir=tmp_path / "eval", device="cpu")
    again = predict(
        model, dataset, "test", target_mean=state.target_mean, target_std=state.target_std, batch_size=16
    ).predicted
    test_ph = dataset.ph[dataset.split == "test"].astype(np.float64)
    r2 = 1 - ((again - test_ph) ** 2).sum() / ((test_ph - test_ph.mean()) ** 2).sum()
    assert metrics["test_r2"] == pytest.approx(r2, abs=1e-5) and metrics["test_r2"] > 0.5


@pytest.mark.parametrize(("head", "topics", "sets_per_step"), [("mlp2", 2, 0), ("linear", 0, 3)])
def test_a_gradient_head_on_fixed_abundances_takes_them_once_per_split_and_learns_the_same(
    tmp_path, monkeypatch, head, topics, sets_per_step
):
    """With every read of a sample in every step, its abundances are the same at every step: they are taken once per
    split (as the trees' are) instead of assigning every read at every step and validation. Same losses either way.
    With a few random reads a step they change, and every step assigns its reads."""
    dataset = organism_dataset(n_samples=40, seed=3)
    cfg = clusters_config(tmp_path, head=head, topics=topics, sets_per_step=sets_per_step, epochs=4)
    calls = []
    assign = ReadClusters.assign
    monkeypatch.setattr(ReadClusters, "assign", lambda self, v: calls.append(len(v)) or assign(self, v))
    result = fit(cfg, dataset, progress=False)
    train, val = len(dataset.set_indices("train")), len(dataset.set_indices("val"))
    once = train * (topics > 0) + train + val  # the topics' fit counts the train reads; then each split once
    assert (sum(calls) == once) == (sets_per_step == 0), (sum(calls), once)
    monkeypatch.setattr(fit_module._Run, "fixed_features", property(lambda self: False))
    every_step = fit(cfg, dataset, progress=False)
    for fast, slow in zip(result.history, every_step.history, strict=True):
        for name in ("train_loss", "val_loss", "val_r2"):
            assert fast[name] == pytest.approx(slow[name], abs=1e-5), (name, fast[name], slow[name])


def test_fixed_abundances_without_val_samples_stop_with_the_split_named(tmp_path):
    dataset = organism_dataset(n_samples=30, seed=3)
    dataset.split[dataset.split == "val"] = "test"
    assert not len(dataset.sample_indices("val"))
    with pytest.raises(ValueError, match="the 'val' split has no samples"):
        fit(clusters_config(tmp_path, head="mlp2", epochs=2), dataset, progress=False)


def _record_calls(monkeypatch, method: str) -> list[tuple[torch.Tensor | np.ndarray, dict, bool]]:
    """What every call of ReadClusters.<method>(data, seed, **keywords) is given, as it runs on: a copy of the data
    (vectors or counts), the keywords, and whether the data was a memory map."""
    seen = []
    original = getattr(ReadClusters, method)

    def recording(self, data, seed, **keywords):
        copied = data.clone() if isinstance(data, torch.Tensor) else np.array(data)
        seen.append((copied, keywords, isinstance(data, np.memmap)))
        return original(self, data, seed, **keywords)

    monkeypatch.setattr(ReadClusters, method, recording)
    return seen


def test_the_cluster_fit_sees_only_the_train_reads(tmp_path, monkeypatch):
    """The clusters (and their PCA) are fit on the train split's read vectors alone: nothing of a val or test read
    shapes the features the head is selected and tested on. The fit is handed the cache's memory map and the train
    rows, never a copy of the train rows' vectors (10^6 reads' would not fit in memory twice)."""
    dataset = organism_dataset(n_samples=24, reads=6, seed=2)
    seen = _record_calls(monkeypatch, "fit_arrays")
    cfg = clusters_config(tmp_path, epochs=1)
    fit(cfg, dataset, progress=False)
    ((vectors, keywords, mapped),) = seen
    train = dataset.set_indices("train")
    assert mapped and len(vectors) == len(dataset)
    np.testing.assert_array_equal(keywords["rows"], train)
    assert len(train) < len(dataset)
    model = seeded_model(cfg)  # fit's own backbone
    every = embeddings.set_vectors(model.backbone, dataset, cache_dir=cfg.cache_dir, device="cpu", progress=False)
    expected = embeddings.for_pooling(every, cfg.pooling)[torch.from_numpy(train)]
    torch.testing.assert_close(torch.from_numpy(vectors[keywords["rows"]]), expected)


def test_each_distinct_read_is_embedded_once(tmp_path, monkeypatch):
    dataset = organism_dataset(n_samples=20, reads=8, seed=1)
    representatives, inverse = embeddings.distinct_sets(dataset)
    keys = [dataset.set_tokens(i).tobytes() for i in range(len(dataset))]
    assert len(representatives) == len(set(keys)) < len(dataset)  # the organisms' reads repeat
    assert all(keys[i] == keys[representatives[inverse[i]]] for i in range(len(dataset)))
    backbone = build_model(clusters_config(tmp_path)).backbone.eval()
    seen = []
    forward = type(backbone).forward
    monkeypatch.setattr(type(backbone), "forward", lambda self, ids: seen.append(len(ids)) or forward(self, ids))
    vectors = embeddings.compute(backbone, dataset, batch_size=7, progress=False)
    assert sum(seen) == len(representatives)
    ids, _ = dataset.tokens_of(np.arange(len(dataset)))
    with torch.no_grad():
        one_by_one = torch.cat([forward(backbone, ids[i : i + 1]) for i in range(len(dataset))])
    _, mask = dataset.tokens_of(np.arange(len(dataset)))
    mean = (one_by_one * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    np.testing.assert_allclose(vectors[:, 0], mean.numpy(), atol=1e-5)  # pooling 0 is "pool": the mean


def test_topics_gather_the_clusters_of_one_lineage_by_co_abundance():
    """Six finest clusters, two lineages of three whose reads rise and fall together across samples: the topics
    share each cluster's reads by P(topic | cluster), and the clusters of one lineage share their topic."""
    rng = np.random.default_rng(0)
    clusters = ReadClusters(16, n_clusters=6, dims=4, transform="relative", topics=2)
    share = rng.uniform(0, 1, 60)
    within = np.array([0.5, 0.3, 0.2])
    p = np.concatenate([share[:, None] * within, (1 - share)[:, None] * within], axis=1)
    counts = torch.from_numpy(np.stack([rng.multinomial(200, row) for row in p]).astype(np.float32))
    weights = clusters.fit_topics(torch.cat([counts, torch.zeros(60, 2)], dim=1), seed=0)
    assert weights.shape == (2, 6)
    np.testing.assert_allclose(weights.sum(axis=0), 1.0, atol=1e-5)
    topic = weights.argmax(axis=0)
    assert len(set(topic[:3])) == 1 and len(set(topic[3:])) == 1 and topic[0] != topic[3], weights
    clusters.load_topics(weights)
    with pytest.raises(ValueError, match="topics fit"):
        clusters.load_topics(weights[:1])


def test_topic_counts_are_the_finest_counts_shared_by_topic_and_a_composition_of_their_own():
    vectors, _ = _blobs(n_blobs=8, per_blob=10)
    clusters = ReadClusters(16, n_clusters=8, dims=4, levels=2, transform="relative", topics=3)
    clusters.fit(vectors, seed=0)
    weights = torch.rand(3, 8, generator=torch.Generator().manual_seed(0))
    clusters.load_topics((weights / weights.sum(0)).numpy())
    owner = torch.arange(80) % 4
    counts = clusters.counts(vectors, owner, 4)
    assert counts.shape == (4, 8 + 2 + 3) == (4, clusters.n_features)
    torch.testing.assert_close(counts[:, 10:], counts[:, :8] @ clusters.topic_weights.T)
    torch.testing.assert_close(counts[:, 10:].sum(1), counts[:, :8].sum(1))  # every read shared out in full
    shares = clusters.abundances(vectors, owner, 4)
    torch.testing.assert_close(shares[:, 10:].sum(1), torch.ones(4))


def test_topics_are_fit_on_the_train_samples_and_kept_in_the_checkpoint(tmp_path, monkeypatch):
    dataset = organism_dataset()
    seen = _record_calls(monkeypatch, "fit_topics")
    read_from = []
    counts_of_rows = ReadClusters.counts_of_rows

    def recording(self, vectors, rows, *args, **keywords):
        read_from.append((type(vectors), len(rows)))
        return counts_of_rows(self, vectors, rows, *args, **keywords)

    monkeypatch.setattr(ReadClusters, "counts_of_rows", recording)
    cfg = clusters_config(tmp_path, topics=2, abundance="relative", head="trees", epochs=1)
    result = fit(cfg, dataset, progress=False, metric="val_r2")
    ((counts, _, _),) = seen
    assert len(counts) == int((dataset.split == "train").sum())
    # The topics' fit and the trees' train and val features read the cache's memory map chunk by chunk (its pages
    # are dropped as they go), not a tensor of it and not a copy of a split's vectors.
    splits = [len(dataset.set_indices(split)) for split in ("train", "train", "val")]
    assert read_from == [(np.memmap, n) for n in splits], read_from
    assert result.history[-1]["val_r2"] > 0.3, result.history
    path = result.best_state.save(tmp_path / "best_model.pt")
    model, _ = load_checkpoint(path)
    assert model.aggregation.clusters.topics == 2
    torch.testing.assert_close(model.aggregation.clusters.topic_weights.sum(0), torch.ones(ORGANISMS))
    metrics = evaluate_checkpoint(path, dataset=dataset, output_dir=tmp_path / "eval", device="cpu")
    assert metrics["test_r2"] > 0.3


def test_fits_cluster_the_same_reads_side_by_side_and_the_first_is_the_single_fit():
    """cluster_fits 3: three clusterings (k-means and topic seeds seed, seed + 1, seed + 2) of one whitening, each
    with its resolutions and topics; the first is exactly what one fit gives, the others cut the reads elsewhere."""
    vectors, _ = _blobs(n_blobs=12, per_blob=20)
    owner = torch.arange(len(vectors)) % 10
    one = ReadClusters(16, n_clusters=16, dims=4, levels=2, transform="relative", topics=3)
    three = ReadClusters(16, n_clusters=16, dims=4, levels=2, transform="relative", topics=3, fits=3)
    for clusters in (one, three):
        clusters.fit(vectors, seed=5)
        clusters.load_topics(clusters.fit_topics(clusters.counts(vectors, owner, 10), seed=5))
    assert three.blocks == [16, 4] * 3 + [3] * 3 and three.n_features == 3 * (16 + 4 + 3)
    assert three.centroids.shape == (3 * 20, 4) and three.topic_weights.shape == (3 * 3, 16)
    torch.testing.assert_close(three.centroids[:20], one.centroids)
    torch.testing.assert_close(three.topic_weights[:3], one.topic_weights)
    assert not torch.allclose(three.centroids[20:40], one.centroids)  # another seed: another cut
    counts = three.counts(vectors, owner, 10)
    for k in range(3):  # every read counted once at every resolution of every fit, and shared out to its topics
        finest, coarse = counts[:, k * 20 : k * 20 + 16], counts[:, k * 20 + 16 : k * 20 + 20]
        torch.testing.assert_close(finest.sum(1), torch.bincount(owner).float())
        torch.testing.assert_close(coarse.sum(1), torch.bincount(owner).float())
        topics = counts[:, 60 + 3 * k : 63 + 3 * k]
        torch.testing.assert_close(topics, finest @ three.topic_weights[3 * k : 3 * k + 3].T)
        # Each fit's topics are LDA of that fit's own finest counts, with its own seed.
        alone = ReadClusters(16, n_clusters=16, dims=4, transform="relative", topics=3)
        fine_only = torch.cat([finest, torch.zeros(10, 3)], dim=1)
        np.testing.assert_allclose(three.topic_weights[3 * k : 3 * k + 3].numpy(), alone.fit_topics(fine_only, 5 + k))
    shares = three.abundances(vectors, owner, 10)
    torch.testing.assert_close(shares[:, : one.n_features - 3], one.abundances(vectors, owner, 10)[:, :-3])
    with pytest.raises(ConfigError, match="cluster_fits"):
        ReadClusters(16, n_clusters=16, dims=4, fits=0)


def test_a_model_of_several_fits_trains_saves_and_loads_with_the_head_sized_by_every_fit(tmp_path):
    dataset = organism_dataset()
    cfg = clusters_config(tmp_path, cluster_fits=3, topics=2, abundance="relative", head="mlp2")
    result = fit(cfg, dataset, progress=False, metric="val_r2")
    assert max(h["val_r2"] for h in result.history) > 0.5, result.history
    path = result.best_state.save(tmp_path / "best_model.pt")
    model, _ = load_checkpoint(path)
    clusters = model.aggregation.clusters
    assert clusters.fits == 3 and clusters.n_features == 3 * (ORGANISMS + 2)
    assert model.head.net[0].in_features == clusters.n_features
    metrics = evaluate_checkpoint(path, dataset=dataset, output_dir=tmp_path / "eval", device="cpu")
    assert metrics["test_r2"] > 0.3


def test_a_checkpoint_of_several_fits_is_within_the_state_budget_it_declares():
    """The size check before loading bounds the head by its inputs (every fit's clusters and topics): a 5-fit
    mlp2 with AdamW's two moments fits its budget, which one fit's bound (the clusters alone) would refuse."""
    from tune_ph.model.checkpoint import state_budget

    cfg = clusters_config(
        Path("."), clusters=1024, cluster_levels=4, cluster_fits=5, topics=32, head="mlp2", abundance="relative"
    )
    model = build_model(cfg)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    saved = {"model_config": model.backbone.config.to_dict(), "train_config": cfg.to_dict()}
    one_fit = {**saved, "train_config": {**cfg.to_dict(), "cluster_fits": 1}}
    assert state_budget(one_fit) < 3 * weights <= state_budget(saved)


def test_a_centroid_two_fits_share_is_not_taken_for_damage():
    """Two fits of the same reads may keep the same centroid (a cluster of one outlier read): the load check
    refuses only centroids that are all one point."""
    from tune_ph.errors import InputError
    from tune_ph.model.checkpoint import check_values

    centroids = torch.randn(6, 4)
    centroids[3] = centroids[0]
    check_values({"aggregation.clusters.centroids": centroids}, "shared.pt")
    with pytest.raises(InputError, match="shared.pt: its clusters .* are all one point"):
        check_values({"aggregation.clusters.centroids": torch.ones(6, 4)}, "shared.pt")

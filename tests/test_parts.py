"""The parts a learned-OTU model is built from: abundance transforms, several cluster resolutions, the k-mer read
encoder (the control), gradient-boosted trees kept without pickle, and the baseline beside the model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_clusters import ORGANISMS, clusters_config, organism_dataset

from hyena_dna import tokenizer
from tune_ph.baseline.family import choose_on_val
from tune_ph.baseline.members import Baseline
from tune_ph.baseline.reference import baseline_line, leak_note, reference_of
from tune_ph.config import TrainConfig
from tune_ph.errors import ConfigError, InputError
from tune_ph.files import load_torch
from tune_ph.model import abundance, embeddings
from tune_ph.model.clusters import ReadClusters, level_sizes
from tune_ph.model.read_encoders import KmerEncoder, kmer_vectors
from tune_ph.model.regressor import load_checkpoint
from tune_ph.model.tree_head import TreeHead
from tune_ph.report.evaluate import evaluate_checkpoint
from tune_ph.training.fit import fit

pytestmark = pytest.mark.usefixtures("one_thread")


def test_abundance_transforms():
    counts = torch.tensor([[3.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 2.0]])
    torch.testing.assert_close(abundance.transform("relative", counts).sum(dim=1), torch.ones(2))
    torch.testing.assert_close(abundance.transform("relative", counts)[0], torch.tensor([0.75, 0.25, 0.0, 0.0]))
    torch.testing.assert_close(abundance.transform("presence", counts)[1], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    clr = abundance.transform("clr", counts)
    torch.testing.assert_close(clr.sum(dim=1), torch.zeros(2), atol=1e-6, rtol=0)
    assert clr[0, 0] > clr[0, 1] > clr[0, 2]
    with pytest.raises(ValueError, match="unknown abundance transform 'log'"):
        abundance.transform("log", counts)


def test_several_resolutions_are_each_a_composition():
    assert level_sizes(1024, 4) == [1024, 256, 64, 16] and level_sizes(8, 3) == [8, 2]
    rng = np.random.default_rng(0)
    vectors = torch.from_numpy(rng.normal(size=(400, 12)).astype(np.float32))
    clusters = ReadClusters(12, n_clusters=32, dims=6, levels=3, transform="relative")
    assert clusters.sizes == [32, 8, 2] and clusters.n_features == 42
    clusters.fit(vectors, seed=0)
    owner = torch.arange(400) % 5
    labels = clusters.assign(vectors)
    # Each resolution's labels lie in its own block of rows of `centroids`, finest first.
    assert labels[:, 0].max() < 32 and 32 <= labels[:, 1].min() and labels[:, 1].max() < 40 and labels[:, 2].min() >= 40
    shares = clusters.abundances(vectors, owner, 5)
    assert shares.shape == (5, 42)
    for block in torch.split(shares, clusters.sizes, dim=1):
        torch.testing.assert_close(block.sum(dim=1), torch.ones(5))
    # One resolution is exactly the layout of older checkpoints: the state dict has the same keys and shapes.
    assert {k: tuple(v.shape) for k, v in ReadClusters(12, 32, 6).state_dict().items()} == {
        "center": (12,),
        "projection": (12, 6),
        "centroids": (32, 6),
    }


def _tokens(*reads: str, length: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(reads), length), tokenizer.PAD_ID if hasattr(tokenizer, "PAD_ID") else 4)
    mask = torch.zeros(len(reads), length, dtype=torch.bool)
    for i, read in enumerate(reads):  # left padding, as the datasets pad
        ids[i, length - len(read) :] = torch.tensor([tokenizer.encode(b)[0] for b in read])
        mask[i, length - len(read) :] = True
    return ids, mask


def test_the_kmer_encoder_counts_each_reads_kmers():
    encoder = KmerEncoder(2)
    ids, mask = _tokens("ACGTA", "AANAA")
    profiles = encoder(ids, mask)
    assert profiles.shape == (2, 16)
    index = {a + b: 4 * "ACGT".index(a) + "ACGT".index(b) for a in "ACGT" for b in "ACGT"}
    expected = torch.zeros(16)
    for kmer in ("AC", "CG", "GT", "TA"):
        expected[index[kmer]] = 0.25
    torch.testing.assert_close(profiles[0], expected)
    # A k-mer with N, or one reaching into the padding, is not counted: "AANAA" has AA twice, nothing else.
    assert profiles[1, index["AA"]] == 1.0 and profiles[1].sum() == 1.0
    stacked = kmer_vectors(encoder, lambda rows: (ids[rows], mask[rows]), 2)
    torch.testing.assert_close(stacked, profiles)


def test_trees_are_kept_as_text_and_predict_the_same_after_loading(tmp_path):
    rng = np.random.default_rng(0)
    features = torch.from_numpy(rng.random((300, 6)).astype(np.float32))
    target = 3 * (features[:, 0] > 0.5).float() + features[:, 1]
    head = TreeHead(6, leaves=7, min_samples=5)
    rounds = head.fit(features[:200], target[:200], features[200:250], target[200:250])
    assert rounds > 0 and head.fitted and head.model_text.dtype == torch.uint8
    predicted = head.regress(features[250:])
    residual = ((predicted - target[250:]) ** 2).sum() / ((target[250:] - target[250:].mean()) ** 2).sum()
    assert residual < 0.2
    assert bytes(head.model_text.numpy()[:4]) == b"tree"  # LightGBM's own text format, not a pickle
    torch.save(head.state_dict(), tmp_path / "head.pt")
    again = TreeHead(6)
    again.load_state_dict(torch.load(tmp_path / "head.pt", weights_only=True))
    torch.testing.assert_close(again.regress(features[250:]), predicted)
    forged = TreeHead(6)
    forged.load_state_dict({"model_text": torch.frombuffer(bytearray(b"\x80\x04import os"), dtype=torch.uint8)})
    with pytest.raises(InputError, match="not a LightGBM model"):
        forged.regress(features[:2])
    wrong_width = TreeHead(5)
    wrong_width.load_state_dict(head.state_dict())
    with pytest.raises(InputError, match="reads 6 features"):
        wrong_width.regress(features[:2, :5])


def test_walking_the_trees_of_one_changed_feature_predicts_what_lightgbm_predicts(tmp_path):
    """regress_with re-walks only the trees that split on the changed feature (the drivers shuffle thousands of
    features one by one); its predictions are LightGBM's own, values exactly at a threshold, zeros, NaNs and
    infinities included. A model whose prediction is more than a sum of leaves is left to LightGBM."""
    rng = np.random.default_rng(1)
    features = rng.random((400, 8)).astype(np.float32)
    features[rng.random(features.shape) < 0.3] = 0.0  # abundances: many zeros
    target = torch.from_numpy(2 * (features[:, 0] > 0.4) + features[:, 1] - features[:, 2] * features[:, 3])
    features[rng.random(features.shape) < 0.05] = np.nan  # so that splits learn where missing values go
    head = TreeHead(8, leaves=15, min_samples=5)
    x = torch.from_numpy(features)
    head.fit(x[:300], target[:300].float(), x[300:], target[300:].float())
    assert any(split["missing_type"] == "NaN" for split in _splits(head.booster().dump_model()["tree_info"]))
    torch.save(head.state_dict(), tmp_path / "head.pt")
    loaded = TreeHead(8)
    loaded.load_state_dict(torch.load(tmp_path / "head.pt", weights_only=True))
    thresholds = np.array([t["threshold"] for t in _splits(head.booster().dump_model()["tree_info"])], np.float32)
    predicted = head.regress(x)
    for feature in range(8):
        values = rng.choice(np.concatenate([features[:, feature], thresholds, [0.0, np.nan]]), 400).astype(np.float32)
        changed = x.clone()
        changed[:, feature] = torch.from_numpy(values)
        expected = head.regress(changed)
        for walker in (head, loaded):
            walked = walker.regress_with(x, predicted, feature, torch.from_numpy(values))
            torch.testing.assert_close(walked, expected, atol=1e-6, rtol=0)
        assert (walked != predicted).any() == bool(head.used_features().tolist().count(feature))
    # Where a prediction is more than a sum of leaves reached by thresholds, LightGBM's own predict must answer.
    for setting in ({"zero_as_missing": True}, {"objective": "poisson"}, {"linear_tree": True}):
        other = TreeHead(8, leaves=15, min_samples=5)
        other.params.update(setting)
        positive = target.abs().float() + 0.1
        other.fit(x[:300], positive[:300], x[300:], positive[300:])
        assert other.regress_with(x, other.regress(x), 0, x[:, 1]) is None, setting


def _splits(trees: list[dict]) -> list[dict]:
    """Every split node of a LightGBM model dump's trees."""
    found, stack = [], [t["tree_structure"] for t in trees]
    while stack:
        node = stack.pop()
        if "split_feature" in node:
            found.append(node)
            stack += [node["left_child"], node["right_child"]]
    return found


def test_config_rules_of_the_new_parts():
    with pytest.raises(ConfigError, match="trees read a sample's cluster abundances"):
        TrainConfig(head="trees", freeze_backbone=True, aggregation="mean")
    with pytest.raises(ConfigError, match="read_encoder=kmer has nothing to fine-tune"):
        TrainConfig(read_encoder="kmer")
    for name, value in (("encoder_k", 7), ("cluster_levels", 0), ("tree_leaves", 1), ("tree_learning_rate", 0.0)):
        with pytest.raises(ConfigError, match=name):
            TrainConfig(**{name: value})
    with pytest.raises(ConfigError, match="abundance"):
        TrainConfig(abundance="log")


@pytest.mark.parametrize("read_encoder", ["hyena", "kmer"])
def test_trees_on_several_resolutions_learn_which_organisms_a_sample_holds(tmp_path, read_encoder):
    dataset = organism_dataset()
    cfg = clusters_config(
        tmp_path,
        head="trees",
        read_encoder=read_encoder,
        encoder_k=3,
        clusters=ORGANISMS * 4,
        cluster_levels=2,
        abundance="relative",
        tree_leaves=4,
        tree_min_samples=3,
    )
    result = fit(cfg, dataset, progress=False, metric="val_r2")
    assert len(result.history) == 1  # trees are grown once, to their best round on val
    assert result.history[0]["val_r2"] > 0.5, result.history
    assert result.best_state.optimizer is None  # nothing to step
    path = result.best_state.save(tmp_path / "best_model.pt")
    assert "aggregation.clusters.centroids" in load_torch(path, what="checkpoint")["model"]
    model, _ = load_checkpoint(path)
    assert isinstance(model.head, TreeHead) and (read_encoder == "kmer") == (model.read_encoder is not None)
    metrics = evaluate_checkpoint(path, dataset=dataset, output_dir=tmp_path / "eval", device="cpu")
    assert metrics["test_r2"] > 0.5


def _count_pieces(monkeypatch) -> dict[str, list]:
    """Record every piece of a clusters fit that is computed rather than shared: PCAs, k-means (k, seed), topics."""
    from tune_ph.model import clusters as clusters_module
    from tune_ph.model import streamed

    computed: dict[str, list] = {"pca": [], "kmeans": [], "topics": []}
    pca, kmeans, topics = (
        streamed.whitened_pca,
        clusters_module.kmeans_centroids,
        ReadClusters.fit_topics,
    )
    monkeypatch.setattr(streamed, "whitened_pca", lambda *a, **k: computed["pca"].append(1) or pca(*a, **k))
    monkeypatch.setattr(
        clusters_module, "kmeans_centroids", lambda e, k, s: computed["kmeans"].append((k, s)) or kmeans(e, k, s)
    )
    monkeypatch.setattr(
        ReadClusters,
        "fit_topics",
        lambda self, counts, seed, fits=None: (
            computed["topics"].append((seed, fits)) or topics(self, counts, seed, fits)
        ),
    )
    return computed


def test_trials_that_ask_for_the_same_clusters_share_one_fit(tmp_path, monkeypatch):
    dataset = organism_dataset(n_samples=24, reads=6, seed=3)
    computed = _count_pieces(monkeypatch)
    monkeypatch.setattr(embeddings, "_FITS", {})  # as a fresh worker: only the cache on disk is shared
    first = fit(clusters_config(tmp_path, epochs=1, abundance="clr"), dataset, progress=False)
    assert computed == {"pca": [1], "kmeans": [(ORGANISMS, 42)], "topics": []}
    monkeypatch.setattr(embeddings, "_FITS", {})
    second = fit(clusters_config(tmp_path, epochs=1, abundance="relative", head="mlp2"), dataset, progress=False)
    assert computed == {"pca": [1], "kmeans": [(ORGANISMS, 42)], "topics": []}  # another abundance and head: shared
    name = "aggregation.clusters.centroids"
    torch.testing.assert_close(first.best_state.weights[name], second.best_state.weights[name])
    fit(clusters_config(tmp_path, epochs=1, cluster_dims=4), dataset, progress=False)
    assert computed["pca"] == [1, 1] and computed["kmeans"] == [(ORGANISMS, 42)] * 2  # other dimensions: refitted


def test_fits_that_differ_in_levels_fits_or_topics_share_their_common_pieces(tmp_path, monkeypatch):
    """A fit of one resolution takes the finest k-means of a fit of two, one fit takes the first of three (with its
    topics), and what is shared equals what a fit of its own computes."""
    dataset = organism_dataset(n_samples=24, reads=6, seed=3)
    computed = _count_pieces(monkeypatch)
    monkeypatch.setattr(embeddings, "_FITS", {})
    settings = dict(epochs=1, clusters=8, abundance="relative", head="trees", topics=2)
    wide = fit(clusters_config(tmp_path, cluster_levels=2, cluster_fits=3, **settings), dataset, progress=False)
    assert computed["kmeans"] == [(8, 42), (2, 42), (8, 43), (2, 43), (8, 44), (2, 44)]
    assert computed["topics"] == [(42, [0]), (42, [1]), (42, [2])]
    monkeypatch.setattr(embeddings, "_FITS", {})
    narrow = fit(clusters_config(tmp_path, cluster_levels=1, cluster_fits=1, **settings), dataset, progress=False)
    assert len(computed["kmeans"]) == 6 and len(computed["topics"]) == 3 and computed["pca"] == [1]  # all shared
    monkeypatch.setattr(embeddings, "_FITS", {})
    alone = fit(
        clusters_config(tmp_path / "own", cluster_levels=1, cluster_fits=1, **settings), dataset, progress=False
    )
    assert len(computed["kmeans"]) == 7 and len(computed["topics"]) == 4  # a cache of its own: computed again
    for name in ("aggregation.clusters.centroids", "aggregation.clusters.topic_weights"):
        shared, own = narrow.best_state.weights[name], alone.best_state.weights[name]
        torch.testing.assert_close(shared, own, rtol=0, atol=0)
    finest_first_fit = wide.best_state.weights["aggregation.clusters.centroids"][:8]
    torch.testing.assert_close(narrow.best_state.weights["aggregation.clusters.centroids"], finest_first_fit)
    torch.testing.assert_close(
        narrow.best_state.weights["aggregation.clusters.topic_weights"],
        wide.best_state.weights["aggregation.clusters.topic_weights"][:2],
    )


def _member(name: str, val_r2: float, features: str = "kmer") -> Baseline:
    table = pd.DataFrame({"sample_id": ["a", "b"], "predicted_ph_mean": [6.0, 7.0]})
    return Baseline(name, {"name": name, "val_r2": val_r2, "test_r2": val_r2 - 0.01, "features": features}, table)


def test_the_baseline_is_the_best_model_of_the_reads_and_the_study_mean_a_reference():
    family = {
        "environment-mean": _member("environment-mean", 0.60, features="none"),
        "study-mean": _member("study-mean", 0.70, features="none"),
        "kmer8-hgb": _member("kmer8-hgb", 0.55),
        "otu5-hgb": _member("otu5-hgb", 0.65),
    }
    assert choose_on_val(family) == "otu5-hgb"  # the study mean reads labels a new study lacks
    reference = reference_of(family, choose_on_val(family), "python -m tune_ph baseline --dataset d")
    line = baseline_line(reference)
    assert "otu5-hgb" in line and "best of 2 from the reads" in line
    assert "references (not from the reads alone): study mean 0.690, environment mean 0.590" in line
    assert "leaks study identity" in line and "--split-by study" in line
    assert leak_note(reference, model_val_r2=0.75) is None  # the DNA model beats the study mean: no leak to point at
    only_references = {k: v for k, v in family.items() if k.endswith("mean")}
    assert choose_on_val(only_references) == "study-mean"

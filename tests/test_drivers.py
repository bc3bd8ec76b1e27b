"""Which organisms drive a clusters model: taxonomy tables, permutation importance on val, drivers.csv, the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_clusters import ORGANISMS, READ_LENGTH, clusters_config, organism_dataset

from tune_ph import files
from tune_ph.data.taxonomy import load_taxonomy
from tune_ph.errors import InputError
from tune_ph.model.regressor import load_checkpoint
from tune_ph.report import drivers, html_report
from tune_ph.report.evaluate import evaluate_checkpoint
from tune_ph.training.fit import fit

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_plain_two_column_table_and_a_qiime_export_are_read(tmp_path):
    plain = tmp_path / "plain.tsv"
    plain.write_text("acgt\tk__Bacteria; p__Firmicutes\nGGCC\tk__Archaea\n")
    taxa = load_taxonomy(plain)
    assert taxa.taxon_of("ACGT") == "k__Bacteria; p__Firmicutes" and taxa.taxon_of("ggcc") == "k__Archaea"
    qiime = tmp_path / "taxonomy.tsv"
    qiime.write_text("Feature ID\tTaxon\tConfidence\nasv1\tk__Bacteria; g__Bacillus\t0.98\n")
    by_id = load_taxonomy(qiime)
    assert by_id.taxon_of("ACGTAC") is None  # an id means nothing until its sequence is known
    assert by_id.with_sequences({"asv1": "acgtac"}).taxon_of("ACGTAC") == "k__Bacteria; g__Bacillus"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ACGT\n", "row 1 has no taxon"),
        ("ACGT\tBacillus\nacgt\tOther\n", "row 2 repeats 'acgt' of row 1"),
        ("", "no rows"),
    ],
)
def test_a_bad_taxonomy_table_is_one_line_naming_the_file_and_row(tmp_path, text, message):
    path = tmp_path / "taxa.tsv"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_taxonomy(path)
    assert message in str(err.value) and str(path) in str(err.value) and len(str(err.value).splitlines()) == 1
    with pytest.raises(InputError, match="no such file"):
        load_taxonomy(tmp_path / "missing.tsv")


def _genomes(seed: int) -> dict[str, int]:
    """The organisms' unmutated reads as organism_dataset(seed=seed) draws them (its generator's first draw)."""
    genomes = np.random.default_rng(seed).integers(0, 4, (ORGANISMS, READ_LENGTH))
    return {"".join("ACGT"[b] for b in genome): k for k, genome in enumerate(genomes)}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """A clusters model of the six-organism data (organisms 0-2 at low pH, 3-5 at high), evaluated with a taxonomy
    naming each organism's unmutated read."""
    tmp_path = tmp_path_factory.mktemp("drivers")
    dataset = organism_dataset(n_samples=80, seed=1)
    genomes = _genomes(1)
    (tmp_path / "taxa.tsv").write_text("".join(f"{read}\torganism {k}\n" for read, k in genomes.items()))
    result = fit(clusters_config(tmp_path), dataset, progress=False, metric="val_r2")
    path = result.best_state.save(tmp_path / "best" / files.MODEL_FILE)
    evaluate_checkpoint(path, dataset=dataset, device="cpu", taxonomy=str(tmp_path / "taxa.tsv"))
    return tmp_path / "best", genomes


def test_the_drivers_are_the_organisms_that_move_ph_each_with_its_side_and_read(evaluated):
    best, genomes = evaluated
    table = pd.read_csv(best / files.DRIVERS_FILE, keep_default_na=False)
    assert list(table.columns) == drivers.driver_columns("pH")
    assert table["importance"].is_monotonic_decreasing and table["importance"].iloc[0] > 0.05
    assert (best / files.DRIVERS_PLOT).read_bytes().startswith(b"\x89PNG")
    strong = table[table["importance"] > 0.05]
    assert len(strong) >= 2
    for row in strong.itertuples():
        organism = int(row.taxon.removeprefix("organism "))
        # Organisms 0-2 dominate low-pH samples and 3-5 high-pH ones: the table says which side each is on.
        assert row.more_in == ("low pH" if organism < 3 else "high pH"), row
        assert (row.share_low_ph > row.share_high_ph) == (organism < 3)
        # The most central read is the organism's own (at most a few of its 48 bases mutated).
        genome = next(read for read, k in genomes.items() if k == organism)
        assert sum(a != b for a, b in zip(row.central_read, genome)) <= 3
        known, total = map(int, row.taxon_reads.split(" of "))
        assert known > total / 2 and row.train_reads >= total


def test_the_report_shows_the_drivers_with_their_plot_and_table(evaluated):
    best, _ = evaluated
    section = html_report.drivers_html(best)
    assert '<h2 id="drivers">' in section and "data:image/png;base64," in section
    assert "organism " in section and "permutation importance" in section and "--taxonomy" not in section
    without = pd.read_csv(best / files.DRIVERS_FILE, keep_default_na=False).assign(taxon="", taxon_reads="")
    plain = best.parent / "plain"
    plain.mkdir(exist_ok=True)
    without.to_csv(plain / files.DRIVERS_FILE, index=False)
    assert "Give a taxonomy table (--taxonomy TSV) to name them." in html_report.drivers_html(plain)
    assert html_report.drivers_html(best.parent / "nothing") == ""


def test_a_model_without_clusters_has_no_drivers(tmp_path):
    from helpers import motif_dataset, tiny_state

    from tune_ph.model.checkpoint import Checkpoint
    from tune_ph.model.regressor import model_of

    checkpoint = Checkpoint.from_state(tiny_state(aggregation="mean"))
    assert drivers.write_drivers(model_of(checkpoint), checkpoint, motif_dataset(), tmp_path) is None
    assert not (tmp_path / files.DRIVERS_FILE).exists()


def test_the_drivers_of_several_fits_say_which_fit_each_cluster_is_of(tmp_path):
    """cluster_fits 2: cluster k of 6 exists in both clusterings, so each row names its fit, and both fits' clusters
    of the organisms show (each fit finds the six organisms)."""
    dataset = organism_dataset(n_samples=80, seed=1)
    result = fit(clusters_config(tmp_path, cluster_fits=2), dataset, progress=False, metric="val_r2")
    path = result.best_state.save(tmp_path / "best" / files.MODEL_FILE)
    evaluate_checkpoint(path, dataset=dataset, device="cpu")
    table = pd.read_csv(tmp_path / "best" / files.DRIVERS_FILE, keep_default_na=False)
    assert list(table.columns) == drivers.driver_columns("pH")
    assert set(table["fit"]) == {1, 2} and set(table["resolution"]) == {6}
    assert table["cluster"].between(0, 5).all()


def test_features_no_tree_splits_on_are_not_shuffled_and_weigh_nothing(tmp_path, monkeypatch):
    """Trees read only the features they split on: the drivers shuffle those alone (five cluster fits give
    thousands of features), each by walking the trees that split on it, and every other feature's importance is
    exactly 0. The walked importances are those of predicting every shuffled val set anew."""
    dataset = organism_dataset(n_samples=80, seed=1)
    cfg = clusters_config(tmp_path, cluster_fits=3, head="trees", abundance="relative", epochs=1)
    result = fit(cfg, dataset, progress=False, metric="val_r2")
    path = result.best_state.save(tmp_path / "best" / files.MODEL_FILE)
    model, state = load_checkpoint(path)
    used = model.head.used_features()
    assert 0 < len(used) < model.aggregation.clusters.n_features
    head = type(model.head)
    predicted, walked = [], []
    regress, regress_with = head.regress, head.regress_with
    monkeypatch.setattr(head, "regress", lambda self, x: predicted.append(1) or regress(self, x))
    monkeypatch.setattr(head, "regress_with", lambda self, *a: walked.append(a[2]) or regress_with(self, *a))
    every = model.aggregation.clusters.n_features
    table = drivers.cluster_drivers(model, state, dataset, top=every)
    assert len(predicted) == 1 and sorted(walked) == sorted(used)  # the unshuffled val set, then each used feature
    feature = (table["fit"] - 1) * ORGANISMS + table["cluster"]  # one resolution of six clusters per fit
    assert len(table) == every
    assert (table.loc[~feature.isin(used), ["importance", "importance_sd"]] == 0).all().all()
    assert (table.loc[feature.isin(used), "importance"] != 0).any()
    monkeypatch.setattr(head, "regress_with", lambda self, *a: None)  # a head that cannot: each shuffle predicted
    anew = drivers.cluster_drivers(model, state, dataset, top=every)
    assert len(predicted) == 2 + len(used)
    pd.testing.assert_frame_equal(anew, table, atol=1e-6, rtol=0)

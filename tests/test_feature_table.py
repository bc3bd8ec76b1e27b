"""Feature (ASV) tables as the field writes them: BIOM (HDF5, JSON), QIIME 2 TSV, DADA2 seqtab CSV, with sequences and
metadata; counts weight abundances without expansion; filters; one-line errors for bad tables; the worked example."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from biom import Table
from helpers import ROOT, TINY_MODEL, tiny_space, write_space
from sklearn.cluster import MiniBatchKMeans

from tune_ph.baseline import otus
from tune_ph.baseline.kmers import kmer_profiles
from tune_ph.commands import data as data_cli
from tune_ph.commands import predict as predict_cli
from tune_ph.commands import search as search_cli
from tune_ph.config import TrainConfig
from tune_ph.data import feature_table, sources, tokens
from tune_ph.data.feature_table import TableOptions
from tune_ph.files import save_torch
from tune_ph.model.aggregation import AGGREGATIONS, segment_mean
from tune_ph.model.clusters import ReadClusters
from tune_ph.model.heads import RegressionHead
from tune_ph.model.regressor import build_model
from tune_ph.report.evaluate import evaluate_checkpoint
from tune_ph.training import inference

EXAMPLE = ROOT / "examples" / "qiime2"
RNG = np.random.default_rng(7)
SEQS = ["".join(RNG.choice(list("ACGT"), 60)) for _ in range(4)]
IDS = ["asv1", "asv2", "asv3", "asv4"]
SAMPLES = ["S1", "S2", "S3"]
# samples x features
COUNTS = np.array([[10, 0, 3, 1], [0, 5, 5, 0], [2, 2, 0, 7]])


def _biom(path: Path, counts=COUNTS, features=IDS, samples=SAMPLES, hdf5: bool = True) -> Path:
    table = Table(np.asarray(counts, dtype=float).T, list(features), list(samples))
    if hdf5:
        with h5py.File(path, "w") as fh:
            table.to_hdf5(fh, "test")
    else:
        path.write_text(table.to_json("test"))
    return path


def _fasta(path: Path, ids=IDS, seqs=SEQS) -> Path:
    path.write_text("".join(f">{i} some description\n{s[:30]}\n{s[30:]}\n" for i, s in zip(ids, seqs)))
    return path


def _meta(path: Path, samples=SAMPLES, header="sample-id\tpH\tenvironment", types=True) -> Path:
    lines = [header] + (["#q2:types\tnumeric\tcategorical"] if types else [])
    lines += [f"{s}\t{5 + i}\t{('soil', 'lake')[i % 2]}" for i, s in enumerate(samples)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _files(tmp_path: Path) -> TableOptions:
    return TableOptions(str(_fasta(tmp_path / "seqs.fasta")), str(_meta(tmp_path / "meta.tsv")))


def _expected(df: pd.DataFrame) -> None:
    row = df.set_index("sample_id").loc["S1"]
    assert row["sequences"] == [SEQS[0], SEQS[2], SEQS[3]]  # most abundant first, absent features left out
    assert row["counts"] == [10, 3, 1]
    assert df.set_index("sample_id")["pH"].to_dict() == {"S1": 5.0, "S2": 6.0, "S3": 7.0}
    assert df.set_index("sample_id").loc["S2", "environment"] == "lake"


@pytest.mark.parametrize("hdf5", [True, False], ids=["hdf5", "json"])
def test_biom_with_sequences_and_metadata(tmp_path, hdf5):
    path = _biom(tmp_path / "feature-table.biom", hdf5=hdf5)
    df = sources.load_samples(str(path), table=_files(tmp_path))
    _expected(df)


def test_qiime2_tsv_and_dada2_seqtab_read_as_the_biom(tmp_path):
    options = _files(tmp_path)
    tsv = tmp_path / "feature-table.tsv"  # QIIME 2's `biom convert --to-tsv`: features x samples
    rows = ["# Constructed from biom file", "#OTU ID\t" + "\t".join(SAMPLES)]
    rows += [f"{f}\t" + "\t".join(str(c) for c in COUNTS[:, j]) for j, f in enumerate(IDS)]
    tsv.write_text("\n".join(rows) + "\n")
    _expected(sources.load_samples(str(tsv), table=options))
    # DADA2's write.csv(seqtab): samples x sequences, the row names' header cell empty; no FASTA needed.
    seqtab = tmp_path / "seqtab.csv"
    lines = ['"",' + ",".join(f'"{s}"' for s in SEQS)]
    lines += [f'"{s}",' + ",".join(map(str, COUNTS[i])) for i, s in enumerate(SAMPLES)]
    seqtab.write_text("\n".join(lines) + "\n")
    _expected(sources.load_samples(str(seqtab), table=TableOptions(metadata=options.metadata)))
    # R's write.table(seqtab, sep="\t") leaves the row names' header cell out.
    seqtab = tmp_path / "seqtab.tsv"
    lines = ["\t".join(SEQS)] + [f"{s}\t" + "\t".join(map(str, COUNTS[i])) for i, s in enumerate(SAMPLES)]
    seqtab.write_text("\n".join(lines) + "\n")
    _expected(sources.load_samples(str(seqtab), table=TableOptions(metadata=options.metadata)))


def test_counts_weight_without_expanding_reads(tmp_path):
    path = _biom(tmp_path / "t.biom")
    df = sources.load_samples(str(path), table=_files(tmp_path))
    ds = tokens.build(df, {"train": SAMPLES}, max_length=64, cache_dir=tmp_path / "cache")
    # One set per distinct sequence of a sample, weighted by its count; a cache hit keeps the weights.
    assert ds.set_weight.tolist() == [10, 3, 1, 5, 5, 7, 2, 2]
    again = tokens.build(df, {"train": SAMPLES}, max_length=64, cache_dir=tmp_path / "cache")
    assert np.array_equal(again.set_weight, ds.set_weight)
    assert tokens.fingerprint(df) != tokens.fingerprint(df.assign(counts=[[1] * len(c) for c in df["counts"]]))
    # A sequence counted 10 times weighs as 10 copies of it in the mean and the cluster abundances.
    vectors, owner, w = torch.tensor([[1.0], [4.0]]), torch.tensor([0, 0]), torch.tensor([3.0, 1.0])
    assert segment_mean(vectors, owner, 1, w).item() == pytest.approx(7 / 4)
    clusters = ReadClusters(1, 2, 1)
    clusters.load_fit({"center": np.zeros(1), "projection": np.ones((1, 1)), "centroids": np.array([[1.0], [-1.0]])})
    counts = clusters.counts(torch.tensor([[2.0], [-3.0]]), owner, 1, w)
    assert counts.tolist() == [[3.0, 1.0]]
    # Every registered aggregation of set vectors: a set of weight 3 counts as three copies of it.
    torch.manual_seed(0)
    head, vectors = RegressionHead(8, "mlp2").eval(), torch.randn(2, 8)
    repeated = (vectors[[0, 0, 0, 1]], torch.zeros(4, dtype=torch.long))
    for kind in ("mean", "mean_prediction", "attention"):
        aggregation = AGGREGATIONS[kind](8).eval()
        weighted = aggregation(vectors, owner, 1, head, w)
        assert torch.allclose(weighted, aggregation(*repeated, 1, head), atol=1e-6), kind
        assert not torch.allclose(weighted, aggregation(vectors, owner, 1, head), atol=1e-4), kind
    # The k-mer baselines' profiles: the same as repeating each read count times.
    reads, weights = ["ACGTA", "TTTTT"], [3, 1]
    assert np.allclose(kmer_profiles([reads], 2, weights=[weights]), kmer_profiles([["ACGTA"] * 3 + ["TTTTT"]], 2))
    sparse_rows = kmer_profiles([reads], 2, weights=[weights], sparse_rows=True).toarray()
    assert np.allclose(sparse_rows, kmer_profiles([["ACGTA"] * 3 + ["TTTTT"]], 2))
    # The k-mer OTU baselines' cluster abundances: the same.
    km = MiniBatchKMeans(2, n_init=1, random_state=0).fit(kmer_profiles([["ACGTA"], ["TTTTT"]], 2))
    by_count = otus._abundances(pd.DataFrame({"sequences": [reads], "counts": [weights]}), 2, [km])[0]
    assert np.allclose(by_count, otus._abundances(pd.DataFrame({"sequences": [["ACGTA"] * 3 + ["TTTTT"]]}), 2, [km])[0])
    assert sorted(by_count[0].tolist()) == [0.25, 0.75]


def test_min_count_and_rarefy_say_what_they_drop(tmp_path, caplog):
    path = _biom(tmp_path / "t.biom")
    caplog.set_level(logging.INFO)
    base = _files(tmp_path)
    df = sources.load_samples(str(path), table=TableOptions(base.sequences, base.metadata, min_count=8))
    assert "dropped 1 of 4 feature(s) with a total count below 8 (--min-count), 7 reads in all" in caplog.text
    assert {s for reads in df["sequences"] for s in reads} == {SEQS[0], SEQS[2], SEQS[3]}  # totals 12, 7, 8, 8
    caplog.clear()
    df = sources.load_samples(str(path), table=TableOptions(base.sequences, base.metadata, rarefy=11))
    assert "dropped 1 sample(s) with fewer than 11 reads (--rarefy), e.g. S2" in caplog.text
    assert [sum(c) for c in df["counts"]] == [11, 11]
    again = sources.load_samples(str(path), table=TableOptions(base.sequences, base.metadata, rarefy=11))
    assert again["counts"].tolist() == df["counts"].tolist()  # a fixed seed


def test_table_options_need_a_feature_table(capsys, tmp_path):
    assert data_cli.main(["summary", "demo", "--metadata", str(_meta(tmp_path / "m.tsv"))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--metadata goes with a feature table" in err and "leave it out" in err, err


def _companions(tmp_path: Path) -> list[str]:
    return ["--sequences", str(_fasta(tmp_path / "s.fa")), "--metadata", str(_meta(tmp_path / "m.tsv"))]


def _summary_error(capsys, table: Path, *flags: str) -> str:
    assert data_cli.main(["summary", str(table), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_error_sample_ids_missing_from_metadata(tmp_path, capsys):
    table = _biom(tmp_path / "t.biom")
    meta = _meta(tmp_path / "m.tsv", samples=["S1", "S3"])
    err = _summary_error(capsys, table, "--sequences", str(_fasta(tmp_path / "s.fa")), "--metadata", str(meta))
    assert str(meta) in err and "1 sample id(s)" in err and "'S2'" in err and "add a row for each" in err, err


@pytest.mark.parametrize(("value", "problem"), [(-3, "is negative"), (2.5, "is not a whole number")])
def test_error_negative_or_fractional_count(tmp_path, capsys, value, problem):
    counts = COUNTS.astype(float)
    counts[1, 2] = value
    table = _biom(tmp_path / "t.biom", counts=counts)
    err = _summary_error(capsys, table, *_companions(tmp_path))
    assert str(table) in err and "feature 'asv3' in sample 'S2'" in err and problem in err and "whole numbers" in err


def test_error_fractional_count_in_tsv_names_line_and_column(tmp_path, capsys):
    tsv = tmp_path / "t.tsv"
    tsv.write_text("#OTU ID\tS1\tS2\tS3\nasv1\t1\t2\t3\nasv2\t4\t0.5\t6\n")
    err = _summary_error(capsys, tsv, *_companions(tmp_path))
    assert f"{tsv}: line 3, column 'S2': the count 0.5 is not a whole number" in err, err


def test_error_features_without_sequences(tmp_path, capsys):
    table = _biom(tmp_path / "t.biom")
    meta = str(_meta(tmp_path / "m.tsv"))
    err = _summary_error(capsys, table, "--metadata", meta)  # ids, and no FASTA
    assert "feature 'asv1' (number 1) is an id, not a DNA sequence" in err and "--sequences" in err, err
    fasta = _fasta(tmp_path / "s.fa", ids=IDS[:3], seqs=SEQS[:3])
    err = _summary_error(capsys, table, "--sequences", str(fasta), "--metadata", meta)
    assert "1 of its 4 feature(s) have no sequence in" in err and str(fasta) in err and "'asv4'" in err, err


def test_error_non_dna_letters(tmp_path, capsys):
    table = _biom(tmp_path / "t.biom")
    fasta = _fasta(tmp_path / "s.fa", seqs=[SEQS[0], SEQS[1][:10] + "X" + SEQS[1][11:], *SEQS[2:]])
    err = _summary_error(capsys, table, "--sequences", str(fasta), "--metadata", str(_meta(tmp_path / "m.tsv")))
    assert f"{fasta}: feature 'asv2'" in err and "'X' at position 10" in err, err


@pytest.mark.parametrize("axis", ["sample", "feature"])
def test_error_duplicate_ids(tmp_path, capsys, axis):
    tsv = tmp_path / "t.tsv"
    samples = ["S1", "S2", "S1"] if axis == "sample" else SAMPLES
    ids = ["asv1", "asv2", "asv1", "asv4"] if axis == "feature" else IDS
    rows = ["#OTU ID\t" + "\t".join(samples)]
    rows += [f"{f}\t" + "\t".join(map(str, COUNTS[:, j])) for j, f in enumerate(ids)]
    tsv.write_text("\n".join(rows) + "\n")
    err = _summary_error(capsys, tsv, *_companions(tmp_path))
    assert f"{tsv}: {axis} " in err and "appears twice (number 1 and 3)" in err and "must be unique" in err, err


def test_error_duplicate_metadata_ids_and_no_ph_column(tmp_path, capsys):
    table = _biom(tmp_path / "t.biom")
    fasta = str(_fasta(tmp_path / "s.fa"))
    meta = _meta(tmp_path / "m.tsv", samples=["S1", "S2", "S3", "S2"])
    err = _summary_error(capsys, table, "--sequences", fasta, "--metadata", str(meta))
    assert f"--metadata {meta}: sample id 'S2' is on line 4 and line 6" in err, err
    meta = tmp_path / "no_ph.tsv"
    meta.write_text("#SampleID\tacidity\n" + "".join(f"{s}\t5\n" for s in SAMPLES))
    err = _summary_error(capsys, table, "--sequences", fasta, "--metadata", str(meta))
    assert f"--metadata {meta}: no pH column (found: acidity); add one named pH" in err, err


def _tiny_checkpoint(path: Path, **settings) -> Path:
    """A tiny random model saved as a checkpoint (no training: the tests are about plumbing)."""
    cfg = TrainConfig(
        from_scratch=True, model_config=dict(TINY_MODEL), max_length=64, device="cpu", aggregation="mean", **settings
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # a random head barely varies; widen its output so equal predictions are no coincidence
        model.head.net[-1].weight.mul_(300.0)
    state = {
        "model": model.state_dict(),
        "train_config": cfg.to_dict(),
        "model_config": model.backbone.config.to_dict(),
    }
    save_torch(path, {**state, "target_mean": 6.5, "target_std": 1.5, "max_length": 64, "epoch": 1})
    return path


def test_predict_from_a_biom_table_weighs_each_sequence_by_its_count(tmp_path, capsys, one_thread):
    # 60-base sequences in 64 tokens: one per set whether read from the table or as repeated reads.
    checkpoint = _tiny_checkpoint(tmp_path / "best_model.pt", dataset="demo")
    table, fasta, out = _biom(tmp_path / "new.biom"), _fasta(tmp_path / "s.fa"), tmp_path / "p.csv"
    argv = ["--checkpoint", str(checkpoint), "--dataset", str(table), "--sequences", str(fasta), "--output", str(out)]
    assert predict_cli.main(argv) == 0
    assert "predicted 3 sample(s) from 35 of their 35 reads (8 read sets)" in capsys.readouterr().out
    predicted = pd.read_csv(out).set_index("sample_id")
    assert predicted["n_sets"].to_dict() == {"S1": 3, "S2": 2, "S3": 3}
    assert predicted["n_reads"].to_dict() == {"S1": 14, "S2": 10, "S3": 11}
    # The same as the samples with each sequence repeated count times, as reads ...
    df = feature_table.read_feature_table(table, TableOptions(str(fasta)), labelled=False)
    repeated = [
        [s for s, n in zip(reads, counts) for _ in range(n)] for reads, counts in zip(df["sequences"], df["counts"])
    ]
    as_reads = inference.predict_samples(checkpoint, df.drop(columns="counts").assign(sequences=repeated), device="cpu")
    expected = as_reads.set_index("sample_id").loc[predicted.index, "predicted_ph_mean"]
    assert np.allclose(predicted["predicted_ph_mean"], expected, atol=1e-4)
    # ... and not as the distinct sequences once each.
    once = inference.predict_samples(checkpoint, df.drop(columns="counts"), device="cpu").set_index("sample_id")
    assert not np.allclose(predicted["predicted_ph_mean"], once.loc[predicted.index, "predicted_ph_mean"], atol=1e-2)


def test_a_run_on_a_table_evaluates_on_another_kind_of_source(tmp_path, one_thread):
    options = _files(tmp_path)
    table = _biom(tmp_path / "t.biom")
    run = tmp_path / "run"
    run.mkdir()
    checkpoint = _tiny_checkpoint(run / "best_model.pt", dataset=str(table), **vars(options))
    evaluate_checkpoint(checkpoint, dataset="demo", output_dir=tmp_path / "eval", device="cpu")
    # The demo's test split: the run's FASTA and metadata were not forced on it.
    assert len(pd.read_csv(tmp_path / "eval" / "test_predictions.csv")) == 60


def test_example_summary(capsys):
    args = ["--sequences", str(EXAMPLE / "dna-sequences.fasta"), "--metadata", str(EXAMPLE / "sample-metadata.tsv")]
    assert data_cli.main(["summary", str(EXAMPLE / "feature-table.biom"), *args]) == 0
    out = capsys.readouterr().out
    assert out.startswith("60 samples, 2 studies, 2 environments") and "distinct sequences" in out, out


# ---------------------------------------------------------------- the worked example, end to end


@pytest.fixture(scope="module")
def example_search(ray_session, tmp_path_factory) -> Path:
    """A tiny search on the example's BIOM table through the CLI (learned OTUs on a frozen tiny backbone)."""
    out = tmp_path_factory.mktemp("biom_search")
    space = tiny_space(
        name="biom",
        fixed__dataset=str(EXAMPLE / "feature-table.biom"),
        fixed__sequences=str(EXAMPLE / "dna-sequences.fasta"),
        fixed__metadata=str(EXAMPLE / "sample-metadata.tsv"),
        fixed__taxonomy=str(EXAMPLE / "taxonomy.tsv"),
        fixed__max_sets=None,
        fixed__freeze_backbone=True,
        fixed__aggregation="clusters",
        fixed__sets_per_step=0,
        fixed__cluster_dims=8,
        space={"clusters": {"choice": [16, 32]}, "learning_rate": {"loguniform": [1e-3, 1e-2]}},
        search__num_samples=2,
    )
    argv = ["--space", str(write_space(out, space)), "--output-dir", str(out), "--verbose", "0"]
    assert search_cli.main(argv) == 0
    return out / "biom"


@pytest.mark.slow
def test_search_on_a_biom_table_and_predict_new_samples(example_search, tmp_path, capsys):
    trials = pd.read_csv(example_search / "trials.csv")
    assert len(trials) == 2 and set(trials["status"]) == {"TERMINATED"}
    metrics = json.loads((example_search / "best" / "metrics.json").read_text())
    assert np.isfinite(metrics["test_r2"])
    assert (example_search / "report.html").is_file()
    # The example's taxonomy.tsv is keyed by feature id: the drivers are named through dna-sequences.fasta.
    drivers = pd.read_csv(example_search / "best" / "drivers.csv", keep_default_na=False)
    assert drivers["taxon"].str.startswith("d__Bacteria; ").all(), drivers[["taxon", "taxon_reads"]]
    config = json.loads((example_search / "best" / "config.json").read_text())
    assert config["train_config"]["metadata"].endswith(
        "sample-metadata.tsv"
    )  # the table's companions travel with the run

    out = tmp_path / "new.csv"
    argv = ["--checkpoint", str(example_search), "--dataset", str(EXAMPLE / "new-samples.biom")]
    argv += ["--sequences", str(EXAMPLE / "dna-sequences.fasta")]
    argv += ["--metadata", str(EXAMPLE / "new-samples-metadata.tsv")]
    assert predict_cli.main([*argv, "--output", str(out), "--no-progress"]) == 0
    table = pd.read_csv(out)
    new = feature_table.read_feature_table(
        EXAMPLE / "new-samples.biom",
        TableOptions(str(EXAMPLE / "dna-sequences.fasta"), str(EXAMPLE / "new-samples-metadata.tsv")),
    )
    assert sorted(table["sample_id"]) == sorted(new["sample_id"]) and len(table) == 12
    # n_reads: the reads the counts stand for; n_sets: the distinct sequences, each embedded once.
    by_id = new.set_index("sample_id")
    assert (table["n_reads"] == [sum(by_id.loc[s, "counts"]) for s in table["sample_id"]]).all()
    assert (table["n_sets"] == [len(by_id.loc[s, "sequences"]) for s in table["sample_id"]]).all()
    assert table["predicted_ph_mean"].between(0, 14).all() and table["true_ph"].notna().all()
    assert "pH known for 12 of 12" in capsys.readouterr().out


# ---------------------------------------------------------------- with --target and --taxonomy


def test_a_feature_table_reads_the_target_column_of_its_metadata(tmp_path, capsys, one_thread):
    table, fasta = _biom(tmp_path / "t.biom"), str(_fasta(tmp_path / "s.fa"))
    meta = tmp_path / "m.tsv"
    meta.write_text("sample-id\tpH\ttemperature\n" + "".join(f"{s}\t6\t{12 + 3 * i}\n" for i, s in enumerate(SAMPLES)))
    cfg = TrainConfig(dataset=str(table), sequences=fasta, metadata=str(meta), target="temperature")
    df = sources.load_for(cfg)
    # The target's values land in the label column every later stage reads, its own column kept.
    assert df.set_index("sample_id")["pH"].to_dict() == {"S1": 12.0, "S2": 15.0, "S3": 18.0}
    assert df["temperature"].tolist() == df["pH"].tolist() and df["counts"].tolist()[0] == [10, 3, 1]
    # The range is the target's: 18 is outside --target-range 10 16, a bad row named by the column.
    flags = ["--sequences", fasta, "--metadata", str(meta), "--target", "temperature"]
    err = _summary_error(capsys, table, *flags, "--target-range", "10", "16")
    assert "'S3'" in err and "temperature" in err and "outside 10-16 (--target-range)" in err, err
    # A metadata file without the target's column says which column it needs.
    err = _summary_error(capsys, table, "--sequences", fasta, "--metadata", str(_meta(tmp_path / "ph.tsv")), *flags[4:])
    assert "no temperature column (--target)" in err and "add one named temperature" in err, err
    # predict of a temperature model compares with the metadata's temperature, not its pH.
    checkpoint = _tiny_checkpoint(tmp_path / "best_model.pt", dataset="demo", target="temperature")
    out = tmp_path / "p.csv"
    argv = ["--checkpoint", str(checkpoint), "--dataset", str(table), *flags[:4], "--output", str(out)]
    assert predict_cli.main([*argv, "--no-progress"]) == 0
    assert "temperature known for 3 of 3" in capsys.readouterr().out
    assert pd.read_csv(out).set_index("sample_id")["true_temperature"].to_dict() == {"S1": 12, "S2": 15, "S3": 18}


def test_a_taxonomy_keyed_by_feature_id_names_the_drivers_of_a_feature_table(tmp_path, one_thread):
    from test_clusters import ORGANISMS, clusters_config

    from tune_ph.training.fit import fit

    # Six organisms as six features (ids, their sequences in a FASTA); low pH favours 0-2, high pH 3-5.
    rng = np.random.default_rng(3)
    seqs = ["".join(rng.choice(list("ACGT"), 48)) for _ in range(ORGANISMS)]
    ids = [f"asv{k}" for k in range(ORGANISMS)]
    samples = [f"S{i:02d}" for i in range(60)]
    ph = np.round(rng.uniform(4.0, 9.0, len(samples)), 2)
    high = (ph[:, None] - 4.0) / 5.0
    counts = rng.poisson(40 * np.hstack([np.repeat(1 - high, 3, axis=1), np.repeat(high, 3, axis=1)]) + 2)
    table = _biom(tmp_path / "t.biom", counts=counts, features=ids, samples=samples)
    fasta = _fasta(tmp_path / "s.fa", ids=ids, seqs=seqs)
    meta = tmp_path / "m.tsv"
    meta.write_text("sample-id\tpH\n" + "".join(f"{s}\t{v}\n" for s, v in zip(samples, ph)))
    taxa = tmp_path / "taxonomy.tsv"  # as QIIME 2 exports it: keyed by feature id, not by sequence
    taxa.write_text("Feature ID\tTaxon\tConfidence\n" + "".join(f"{i}\tg__Genus{k}\t0.99\n" for k, i in enumerate(ids)))
    cfg = clusters_config(
        tmp_path, dataset=str(table), sequences=str(fasta), metadata=str(meta), taxonomy=str(taxa), epochs=30
    )
    dataset = sources.prepare_for(cfg)
    result = fit(cfg, dataset, progress=False, metric="val_r2")
    path = result.best_state.save(tmp_path / "best" / "best_model.pt")
    evaluate_checkpoint(path, dataset=dataset, device="cpu")
    drivers = pd.read_csv(tmp_path / "best" / "drivers.csv", keep_default_na=False)
    # Every cluster is named through the FASTA: the id's sequence is the read the model saw.
    assert drivers["taxon"].str.match(r"g__Genus\d$").all(), drivers[["taxon", "taxon_reads"]]
    strong = drivers[drivers["importance"] > 0.05]
    assert len(strong) >= 2, drivers
    for row in strong.itertuples():
        assert row.more_in == ("low pH" if int(row.taxon[-1]) < 3 else "high pH"), row
    # A set stands for its count's reads: a cluster's train reads are the counts of its sequences.
    known, total = map(int, drivers["taxon_reads"].iloc[0].split(" of "))
    assert known == total == drivers["train_reads"].iloc[0] > 60

"""Any numeric target (--target temperature): loading, range checks, the names of every output, train to predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_clusters import clusters_config

from tune_ph import config, files
from tune_ph.commands import predict as predict_cli
from tune_ph.commands.train import RunFolder
from tune_ph.config import TrainConfig
from tune_ph.data import sources
from tune_ph.errors import BadRowError, ConfigError, DatasetError
from tune_ph.metrics import target_names
from tune_ph.report.evaluate import evaluate_checkpoint
from tune_ph.training.run import run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ph_keeps_its_column_names_and_another_target_gets_its_own():
    ph = target_names()
    assert (ph.true, ph.predicted, ph.predicted_sd, ph.residual) == (
        "true_ph",
        "predicted_ph_mean",
        "predicted_ph_sd",
        "residual_mean",
    )
    assert (ph.true, ph.predicted, ph.predicted_sd) == (files.TRUE_PH, files.PREDICTED_PH, files.PREDICTED_PH_SD)
    temperature = target_names("temperature")
    assert (temperature.true, temperature.predicted) == ("true_temperature", "predicted_temperature_mean")
    assert target_names("Salinity (PSU)").predicted_sd == "predicted_salinity_psu_sd"


def _table(values: list[float], column: str = "temperature") -> pd.DataFrame:
    """Three demo samples with a target column of the given values (and no pH)."""
    demo = sources.load_samples("demo").head(len(values)).drop(columns=["pH"])
    demo[column] = values
    return demo


def test_a_temperature_column_is_read_into_the_label_and_needs_only_finite_values():
    target = sources.Target("temperature", (-np.inf, np.inf))
    clean = sources.clean_samples(_table([-12.5, 25.0, 80.0]), target=target)
    assert clean["pH"].tolist() == [-12.5, 25.0, 80.0]  # outside 0-14: fine for a temperature
    # Cleaning a cleaned table again gives the same table (predict cleans what load_samples returned).
    assert sources.clean_samples(clean, target=target)["pH"].tolist() == [-12.5, 25.0, 80.0]


def test_a_non_finite_temperature_is_one_error_line_naming_the_column():
    target = sources.Target("temperature", (-np.inf, np.inf))
    with pytest.raises(BadRowError) as err:
        sources.clean_samples(_table([20.0, np.inf, 21.0]), target=target)
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert "field 'temperature' is inf, not a finite number" in message and "(row 1)" in message


def test_a_ph_out_of_range_still_errors_and_a_target_range_is_applied():
    demo = sources.load_samples("demo").head(3).copy()
    demo.loc[1, "pH"] = 15.0
    with pytest.raises(BadRowError, match=r"field 'pH' is 15.0, outside 0-14"):
        sources.clean_samples(demo)
    target = sources.Target.of(TrainConfig(target="temperature", target_range=[0, 50]))
    with pytest.raises(BadRowError, match=r"field 'temperature' is 80.0, outside 0-50 \(--target-range\)"):
        sources.clean_samples(_table([10.0, 80.0, 20.0]), target=target)


def test_a_missing_target_column_names_it():
    with pytest.raises(DatasetError, match="missing column.*salinity"):
        sources.load_samples("demo", target=sources.Target("salinity", (-np.inf, np.inf)))


def test_target_and_its_range_are_one_field_each_with_flags_and_rules():
    import argparse

    parser = argparse.ArgumentParser()
    config.add_arguments(parser, only=("target", "target_range"))
    args = parser.parse_args(["--target", "temperature", "--target-range", "-5", "45"])
    assert config.given_fields(args, ("target", "target_range")) == {"target": "temperature", "target_range": [-5, 45]}
    with pytest.raises(ConfigError, match="target_range must be two finite numbers LO HI with LO < HI"):
        TrainConfig(target="temperature", target_range=[45.0, 5.0])
    with pytest.raises(ConfigError, match="target must name"):
        TrainConfig(target=" ")
    assert TrainConfig().target == "pH"  # the default, and what a checkpoint saved before the field meant


@pytest.fixture(scope="module")
def temperature_run(tmp_path_factory) -> Path:
    """A clusters model of temperature on 60 demo samples (temperature = 4 x pH - 10, pH dropped), trained by
    training.run with the train command's sink, then evaluated on its test split."""
    folder = tmp_path_factory.mktemp("temperature")
    demo = sources.load_samples("demo").head(60).copy()
    demo["temperature"] = demo.pop("pH") * 4.0 - 10.0
    # Reads of 100 bases: whole in the 128-token sets, so each set is a read and a taxonomy keyed by reads names it.
    demo["sequences"] = [[read[:100] for read in reads[:12]] for reads in demo["sequences"]]
    demo.to_parquet(folder / "samples.parquet")
    cfg = clusters_config(
        folder,
        dataset=str(folder / "samples.parquet"),
        target="temperature",
        clusters=8,
        epochs=3,
        max_length=128,
        output_dir=str(folder / "run"),
    )
    done = run(cfg, RunFolder(folder / "run", with_baseline=False), progress=False)
    evaluate_checkpoint(folder / "run" / files.MODEL_FILE, dataset=done.dataset, device="cpu")
    return folder


def test_a_temperature_model_trains_and_reports_with_its_names(temperature_run: Path):
    run_dir = temperature_run / "run"
    metrics = json.loads((run_dir / files.METRICS_FILE).read_text())
    assert metrics["target"] == "temperature" and np.isfinite(metrics["test_rmse"])
    table = pd.read_csv(run_dir / files.PREDICTIONS_FILE)
    assert list(table.columns) == [
        "sample_id",
        "study_name",
        "true_temperature",
        "predicted_temperature_mean",
        "predicted_temperature_sd",
        "n_sets",
        "residual_mean",
        "environment",
    ]
    source = pd.read_parquet(temperature_run / "samples.parquet").set_index("sample_id")["temperature"]
    known = source.loc[table["sample_id"].astype(str)].to_numpy()
    assert np.allclose(table["true_temperature"], known, atol=1e-4)  # the temperatures themselves, not the pH
    drivers = pd.read_csv(run_dir / files.DRIVERS_FILE)
    assert {"share_low_temperature", "share_high_temperature"} <= set(drivers.columns)
    assert drivers["more_in"].str.endswith(" temperature").all()


def test_predict_with_a_temperature_model_names_its_columns(temperature_run: Path, capsys):
    output = temperature_run / "predictions.csv"
    argv = ["--checkpoint", str(temperature_run / "run"), "--dataset", str(temperature_run / "samples.parquet")]
    assert predict_cli.main([*argv, "--output", str(output), "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "temperature known for 60 of 60: R²" in out
    table = pd.read_csv(output)
    assert {"predicted_temperature_mean", "predicted_temperature_sd", "true_temperature"} <= set(table.columns)
    assert not any("_ph" in column for column in table.columns)
    assert table["true_temperature"].min() < 0 < table["true_temperature"].max()  # 4 pH - 10 over all 60 samples


@pytest.mark.slow
def test_a_temperature_search_reports_its_drivers_and_the_predict_step(ray_session, temperature_run, tmp_path, capsys):
    """End to end through the search command: --target and --taxonomy on the command line, report.html with the
    target's words and the driving clusters, best/ with the target's columns, and the next: list's predict step."""
    from helpers import tiny_space, write_space

    from tune_ph.commands import search as search_cli
    from tune_ph.report import results

    reads = pd.read_parquet(temperature_run / "samples.parquet")["sequences"]
    taxa = tmp_path / "taxa.tsv"
    taxa.write_text(
        "".join(f"{read}\ttaxon {k % 3}\n" for k, read in enumerate(sorted({r for rs in reads for r in rs})))
    )
    fixed = {
        **tiny_space()["fixed"],
        "dataset": str(temperature_run / "samples.parquet"),
        "freeze_backbone": True,
        "aggregation": "clusters",
        "clusters": 8,
        "cluster_dims": 8,
        "max_sets": None,
        "sets_per_step": 0,
        "cache_dir": str(temperature_run / "cache"),
    }
    space = write_space(tmp_path, tiny_space(name="warm", fixed=fixed, search__num_samples=2))
    argv = ["--space", str(space), "--output-dir", str(tmp_path / "experiments"), "--no-baseline"]
    assert search_cli.main([*argv, "--target", "temperature", "--taxonomy", str(taxa)]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "experiments" / "warm"
    assert f"python -m tune_ph predict --checkpoint {folder} --dataset NEW_SAMPLES --output predictions.csv" in out
    best = folder / files.BEST_DIR
    assert json.loads((best / files.METRICS_FILE).read_text())["target"] == "temperature"
    assert "predicted_temperature_mean" in pd.read_csv(best / files.PREDICTIONS_FILE).columns
    driving = pd.read_csv(best / files.DRIVERS_FILE, keep_default_na=False)
    assert driving["taxon"].str.startswith("taxon ").all()
    page = (folder / results.REPORT_FILE).read_text()
    assert '<h2 id="drivers">' in page and "predicted: <code>temperature</code>" in page
    assert "variation in temperature between" in page and "Not shown: 2 completed trials are too few" in page

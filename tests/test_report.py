"""report.html explains the winner (id, searched values, why, test vs baseline), why each trial stopped, caveats."""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
import pytest

from tune_ph import files
from tune_ph.baseline import reference
from tune_ph.baseline.reference import Reference
from tune_ph.report import export, html_report, plots, results, winner
from tune_ph.report.page import fmt
from tune_ph.report.results import Trial
from tune_ph.report.winner import find_winner, winner_html
from tune_ph.search_settings import SavedSearch

SETTINGS = {
    "name": "synthetic",
    "fixed": {
        "dataset": "demo",
        "from_scratch": True,
        "model_config": {"d_model": 16, "n_layer": 2, "d_inner": 32, "filter_order": 16, "l_max": 130},
        "epochs": 10,
    },
    "space": {
        "head": {"choice": ["linear", "mlp2"]},
        "pooling": {"choice": ["pool", "last"]},
        "learning_rate": {"loguniform": [3e-4, 2e-3]},
        "head_dropout": {"uniform": [0.0, 0.3], "when": {"head": ["mlp2"]}},
    },
    "search": {"num_samples": 5, "metric": "val_loss"},
    "scheduler": {"grace_period": 3, "reduction_factor": 2, "max_epochs": 10},
}
SAVED = SavedSearch.from_dict(SETTINGS)  # as the report reads it
WINNER = "aaa00001"
ERROR = "RuntimeError: CUDA out of memory <script>alert(1)</script>"


def _history(losses: list[float]) -> pd.DataFrame:
    n = len(losses)
    loss = np.array(losses)
    return pd.DataFrame(
        {
            "training_iteration": range(1, n + 1),
            "epoch": range(1, n + 1),
            "val_loss": loss,
            "val_rmse": loss * 7.123456,
            "val_mae": loss * 6.0,
            "val_r2": 1 - loss,
            "train_loss": loss * 1.5,
        }
    )


def _trials() -> list[Trial]:
    winner_losses = [0.38, 0.27, 0.15, 0.36, 0.12, 0.15, 0.0834934931796818, 0.1, 0.09, 0.12]
    config = {"head": "linear", "pooling": "pool", "learning_rate": 0.0011271614630954272, "epochs": 10}
    return [
        Trial(WINNER, "TERMINATED", "/x/trial_1", config, _history(winner_losses)),
        Trial(
            "aaa00002",
            "TERMINATED",
            "/x/trial_2",
            {"head": "mlp2", "pooling": "last", "learning_rate": 4.046e-4, "head_dropout": 0.2338, "epochs": 10},
            _history([0.4, 0.3, 0.2, 0.15, 0.12, 0.1, 0.095, 0.09, 0.0877, 0.09]),
        ),
        Trial(
            "aaa00003",
            "TERMINATED",
            "/x/trial_3",
            {"head": "mlp2", "pooling": "pool", "learning_rate": 6.9e-4, "head_dropout": 0.0952, "epochs": 10},
            _history([0.4, 0.39, 0.3916]),
        ),
        Trial(
            "aaa00004",
            "TERMINATED",
            "/x/trial_4",
            {"head": "linear", "pooling": "last", "learning_rate": 3.1e-4, "epochs": 10, "early_stopping_patience": 2},
            _history([0.5, 0.3, 0.2, 0.25, 0.26, 0.27]),
        ),
        Trial(
            "aaa00005",
            "ERROR",
            "/x/trial_5",
            {"head": "mlp2", "pooling": "pool", "learning_rate": 1.9e-3, "head_dropout": 0.1, "epochs": 10},
            pd.DataFrame(),  # failed before its first epoch ended
            error=ERROR,
        ),
    ]


def _study(path: Path, values: dict[str, float], name: str = "synthetic") -> None:
    """An Optuna study like the search's: one completed trial per finished Ray trial."""
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{path}", direction="minimize")
    dists = {
        "head": optuna.distributions.CategoricalDistribution(["linear", "mlp2"]),
        "pooling": optuna.distributions.CategoricalDistribution(["pool", "last"]),
        "learning_rate": optuna.distributions.FloatDistribution(3e-4, 2e-3, log=True),
    }
    for trial in _trials():
        if trial.trial_id in values:
            params = {k: trial.config[k] for k in dists}
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=values[trial.trial_id]))


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> dict:
    """A finished experiment's folder as export leaves it (best/ with config, metrics, residuals), built without Ray."""
    folder = tmp_path_factory.mktemp("report") / "synthetic"
    best = folder / files.BEST_DIR
    best.mkdir(parents=True)
    trials = _trials()
    table = results.trials_table(trials, "val_loss", SAVED.planned_epochs())
    train_config = {**SETTINGS["fixed"], **trials[0].config, "max_length": 128}
    model_config = {"d_model": 16, "n_layer": 2, "layer": {"l_max": 130}}
    info = {
        "trial_id": WINNER,
        "epoch": 7,
        "selected_by": "val_loss",
        "val_metrics": {"val_loss": 0.0834934931796818},
        "train_config": train_config,
        "model_config": model_config,
        "model": export.describe_model(train_config, model_config, 12345),
    }
    (best / "config.json").write_text(json.dumps(info))
    metrics = {"test_r2": 0.8678641816600368, "test_rmse": 0.7446477, "test_mae": 0.5938820, "test_n_samples": 60}
    (best / "metrics.json").write_text(json.dumps(metrics))
    residuals = pd.DataFrame({"true_ph": [5.0, 6.0, 7.5], "residual_mean": [0.1, -0.2, 0.3], "environment": "soil"})
    plots.plot_residuals(residuals, best / "residuals.png")
    _study(folder / results.STUDY_FILE, {t.trial_id: float(t.history["val_loss"].min()) for t in trials[:4]})
    return {"folder": folder, "table": table, "frames": {t.trial_id: t.history for t in trials}, "info": info}


class Page(HTMLParser):
    """report.html split by its <h2 id=...> sections: text, tables (rows of cell text) and image sources."""

    def __init__(self, text: str):
        super().__init__()
        self.section = "top"
        self.text: dict[str, list[str]] = defaultdict(list)
        self.tables: dict[str, list[list[list[str]]]] = defaultdict(list)
        self.images: dict[str, list[str]] = defaultdict(list)
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "h2":
            self.section = attrs.get("id") or "?"
        elif tag == "table":
            self.tables[self.section].append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images[self.section].append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self.tables[self.section][-1].append(self._row)

    def handle_data(self, data):
        self.text[self.section].append(data)
        if self._cell is not None:
            self._cell.append(data)

    def words(self, section: str) -> str:
        return " ".join(" ".join(self.text[section]).split())

    def table(self, section: str, index: int = 0) -> pd.DataFrame:
        rows = self.tables[section][index]
        return pd.DataFrame(rows[1:], columns=rows[0])


@pytest.fixture(scope="module")
def written(experiment: dict) -> tuple[str, Page]:
    """report.html of the synthetic experiment (no baseline given), as text and parsed."""
    path = html_report.write_report(
        experiment["folder"],
        experiment["table"],
        experiment["frames"],
        settings=SAVED,
        study_db=experiment["folder"] / results.STUDY_FILE,
        metric="val_loss",
    )
    text = path.read_text()
    return text, Page(text)


def _winner_section(experiment: dict, baseline: Reference, **test_extra) -> Page:
    """Only the winner section (a pure function of the table, settings and best/), with a given baseline."""
    best = experiment["folder"] / files.BEST_DIR
    test = {**json.loads((best / "metrics.json").read_text()), **test_extra}
    found = find_winner(experiment["table"], SAVED, "val_loss", results.BestInfo.from_dict(experiment["info"]), test)
    return Page(winner_html(found, experiment["folder"], baseline))


def test_the_winner_section_names_the_trial_its_searched_values_and_why(written):
    _, page = written
    words = page.words("winner")
    assert f"The winner: trial {WINNER}" in words
    searched = dict(page.table("winner", 0).values.tolist())
    assert list(searched) == ["head", "pooling", "learning_rate", "head_dropout"]  # the space's order
    assert searched["head"] == "linear" and searched["pooling"] == "pool"
    assert searched["learning_rate"] == "0.001127"  # 4 significant digits
    assert searched["head_dropout"] == "not used (only when head is mlp2)"
    # Why: the metric, its value at the exported epoch, the rank and the runner-up for comparison.
    assert "at epoch 7 of 10 its val_loss" in words and "0.08349" in words
    assert "rank 1 of the 4 trial(s) with a val_loss (5 in all)" in words
    assert "Runner-up: trial aaa00002 with 0.0877" in words
    assert "custom HyenaDNA — custom config (from scratch): d_model 16, 2 layers, up to 128 tokens" in words
    test = page.table("winner", 1)
    assert test.iloc[0].tolist() == ["HyenaDNA (this winner)", "0.8679", "", "0.7446", "0.5939", "60"]


def test_the_residual_plot_is_embedded(experiment, written):
    _, page = written
    sources = page.images["winner"]
    png = (experiment["folder"] / "best" / "residuals.png").read_bytes()
    assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in sources
    # Every other figure is inline too: the page needs no other file.
    all_sources = [s for section in page.images.values() for s in section]
    assert len(all_sources) >= 4 and all(s.startswith("data:image/png;base64,") for s in all_sources)


def test_the_baseline_chosen_on_val_is_shown_beside_the_test_metrics_or_how_to_compute_it(experiment):
    chosen = {"k": 8, "val_r2": 0.95, "test_r2": 0.81, "test_rmse": 0.1727, "test_mae": 0.1337, "test_n_samples": 60}
    chosen["test_r2_ci95"] = [0.7512, 0.8633]
    best_on_test = {"k": 6, "val_r2": 0.90, "test_r2": 0.99289}
    found = Reference(results={"kmer8-ridge": chosen, "kmer6-hgb": best_on_test}, chosen="kmer8-ridge")
    vs = {"baseline": "kmer8-ridge", "delta_r2": 0.0579, "delta_r2_ci95": [0.0123, 0.1011], "verdict": "ahead"}
    page = _winner_section(experiment, found, vs_baseline={**vs, "n_samples": 60})
    rows = page.table("winner", 1).values.tolist()
    assert rows[1] == ["baseline chosen on val: kmer8-ridge", "0.81", "[0.751, 0.863]", "0.1727", "0.1337", "60"]
    words = page.words("winner")
    assert "Against the baseline chosen on val ( kmer8-ridge , the best val R² of 2 baselines;" in words
    assert "the DNA model is ahead : test R² difference +0.058, 95 % interval [+0.012, +0.101]" in words
    assert "over the same 60 test samples; it lies above 0" in words
    family = page.table("winner", 2).values.tolist()  # every baseline, with the val R² that chose
    assert family == [["kmer8-ridge", "0.95", "0.81", "[0.751, 0.863]"], ["kmer6-hgb", "0.9", "0.9929", ""]]
    # An export from before the intervals: the plain difference to the chosen one (not the best on test).
    words = _winner_section(experiment, found).words("winner")
    assert "minus the baseline chosen on val (kmer8-ridge): +0.058, without an interval" in words

    command = "python -m tune_ph baseline --dataset my_data"
    page = _winner_section(experiment, Reference(reason="dataset my_data is not a local path", command=command))
    words = page.words("winner")
    assert "baseline: not computed (dataset my_data is not a local path)" in words and command in words


def test_the_trials_table_says_why_each_trial_stopped(written):
    _, page = written
    table = page.table("trials")
    outcome = dict(zip(table["trial"], table["outcome"]))
    assert outcome == {
        WINNER: "finished",
        "aaa00002": "finished",
        "aaa00003": "stopped by ASHA at epoch 3",
        "aaa00004": "early stopping at epoch 6 (no better metric for 2 epochs)",
        "aaa00005": f"error: {ERROR}",
    }
    # Sorted by the metric (failed trials last), numbers to 4 significant digits, unused parameters marked.
    assert table["trial"].tolist()[:2] == [WINNER, "aaa00002"] and table["#"].tolist()[0] == "1"
    assert table.loc[table["trial"] == WINNER, "best val_loss"].item() == "0.08349"
    assert table.loc[table["trial"] == WINNER, "val_rmse"].item() == "0.5948"
    assert table.loc[table["trial"] == WINNER, "head_dropout"].item() == "—"


def test_text_from_the_experiment_is_escaped(written):
    text, page = written
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert ERROR in page.words("trials")


def test_importances_of_a_small_search_are_hidden_and_the_page_says_why(written):
    _, page = written
    words = page.words("importances")
    assert "Not shown: 4 completed trials are too few (they are shown from 20 on)" in words
    assert "plots above" in words
    assert not page.images["importances"]


def test_importances_from_enough_trials_are_shown_with_their_uncertainty(experiment, tmp_path):
    """From 20 completed trials on, the plot is there, with the caveat on how far to trust it."""
    import random

    rng = random.Random(0)
    study = optuna.create_study(study_name="many", storage=f"sqlite:///{tmp_path / 's.db'}", direction="minimize")
    dists = {
        "head": optuna.distributions.CategoricalDistribution(["linear", "mlp2"]),
        "learning_rate": optuna.distributions.FloatDistribution(3e-4, 2e-3, log=True),
    }
    for _ in range(html_report.SMALL_SEARCH):
        params = {"head": rng.choice(["linear", "mlp2"]), "learning_rate": rng.uniform(3e-4, 2e-3)}
        value = (params["head"] == "mlp2") + rng.random() * 0.1
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    page = Page(html_report._importances_html(tmp_path / "s.db", "many", 0))
    words = page.words("importances")
    assert "Not shown" not in words and page.images["importances"]
    assert "Importances from 20 completed trials carry much uncertainty" in words


def test_importance_notes():
    notes = html_report.importance_notes({"learning_rate": 0.99, "head": 0.01}, 26, n_stopped=4)
    assert "Importances from 26 completed trials carry much uncertainty" in notes[0]
    assert notes[1].startswith("learning_rate gets 0.99 of the importance")
    assert "4 trial(s) were stopped early by ASHA" in notes[2]
    assert html_report.importance_notes({"learning_rate": 0.6, "head": 0.4}, 40) == []
    assert "8 completed trials are too few" in html_report.too_few_trials(8)


def test_stop_reason():
    assert results.stop_reason("TERMINATED", 10, 10) == "finished"
    assert results.stop_reason("TERMINATED", 4, 10) == "stopped by ASHA at epoch 4"
    assert results.stop_reason("TERMINATED", 4, None) == "finished"  # no plan known: nothing to compare with
    assert results.stop_reason("TERMINATED", 6, 10, patience=2).startswith("early stopping at epoch 6")
    assert results.stop_reason("ERROR", 2, 10, "ValueError: nan loss") == "error: ValueError: nan loss"
    assert results.stop_reason("PAUSED", 3, 10) == "paused (search interrupted)"
    assert SAVED.planned_epochs() == 10 and SavedSearch.from_dict({"fixed": {"epochs": 4}}).planned_epochs() == 4


def test_learning_curves_mark_stopped_trials(experiment):
    table = experiment["table"]
    reasons = dict(zip(table["trial_id"], table["stop_reason"]))
    fig = plots.learning_curves(experiment["frames"], reasons, winner=WINNER, winner_epoch=7, rungs=SAVED.asha_rungs())
    dashed = [line for line in fig.axes[0].get_lines() if line.get_linestyle() == "--"]
    plt.close(fig)
    assert len(dashed) == 2  # the ASHA-stopped trial and the early-stopped one
    assert SAVED.asha_rungs() == [3, 6]


def test_parallel_coordinates_and_scatter_put_the_winner_where_it_is(experiment):
    table = experiment["table"]
    params = list(SETTINGS["space"])
    fig = plots.parallel_coordinates(
        table, params, "best_val_loss", winner=WINNER, choices={"head": ["linear", "mlp2"]}
    )
    ticks = {t.get_text(): t.get_position()[1] for t in fig.axes[0].texts}
    plt.close(fig)
    assert {"linear", "mlp2", "pool", "last", "n/a (not used)"} <= set(ticks)
    # n/a sits well apart below an axis's lowest value, so it never reads as a small one (a dropout of almost 0).
    lowest = min(y for label, y in ticks.items() if label != "n/a (not used)")
    assert ticks["n/a (not used)"] <= lowest - 0.25
    fig = plots.metric_by_parameter(table, params, "best_val_loss", winner=WINNER)
    points = fig.axes[2].collections[0]  # learning_rate
    red = [tuple(p) for p, c in zip(points.get_offsets(), points.get_facecolors()) if c[0] > 0.8 and c[2] < 0.3]
    plt.close(fig)
    assert red == [pytest.approx((0.0011271614630954272, 0.0834934931796818))]


def test_describe_model_names_where_the_weights_came_from():
    custom = export.describe_model(
        {"model": "hyenadna-tiny-1k-seqlen", "from_scratch": True, "model_config": {"d_model": 16}},
        {"d_model": 16, "n_layer": 1, "layer": {"l_max": 130}},
    )
    assert custom["source"] == "custom config (from scratch)" and "tiny-1k" not in custom["name"]
    assert custom["max_length"] == 128 and custom["n_layer"] == 1
    scratch = export.describe_model({"model": "hyenadna-tiny-1k-seqlen", "from_scratch": True}, {})
    assert scratch["source"] == "from scratch: hyenadna-tiny-1k-seqlen architecture"
    pretrained = export.describe_model({"model": "hyenadna-small-32k-seqlen"}, {})
    assert pretrained["source"] == "pretrained: LongSafari/hyenadna-small-32k-seqlen"


def test_baseline_for_a_remote_dataset_is_not_computed_but_explained():
    out = reference.reference_baseline({"dataset": "someone/remote-ph", "split_seed": 7}, local_only=True)
    assert "not a local path" in out.reason and not out.results
    assert out.command == "python -m tune_ph baseline --dataset someone/remote-ph --split-seed 7"
    assert reference.reference_baseline(None).reason == "no training config"


def test_baseline_for_the_demo_is_computed(tmp_path):
    out = reference.reference_baseline({"dataset": "demo", "cache_dir": str(tmp_path)})
    chosen = out.metrics
    assert chosen["test_n_samples"] == 60 and 0 < chosen["test_r2"] <= 1 and out.chosen in out.results


def test_the_report_reuses_the_saved_baseline_json(experiment, monkeypatch):
    folder = experiment["folder"]
    saved = {"results": {"ridge": {"k": 6, "test_r2": 0.4321, "test_rmse": 0.7}}, "k": 6, "command": "x"}  # old
    (folder / "baseline.json").write_text(json.dumps(saved))
    monkeypatch.setattr(reference, "reference_baseline", lambda *a, **k: pytest.fail("recomputed"))
    monkeypatch.setattr(results, "Experiment", lambda path: type("E", (), {"trials": lambda self: _trials()})())
    monkeypatch.setattr(results, "load_settings", lambda folder: SETTINGS)
    try:
        assert export.write_report(str(folder), folder) is not None
    finally:
        (folder / "baseline.json").unlink()
    rows = Page((folder / "report.html").read_text()).table("winner", 1).values.tolist()
    assert rows[1][:2] == ["baseline chosen on val: kmer6-ridge", "0.4321"]


@pytest.mark.slow
def test_report_and_model_description_of_a_real_search(finished_experiment):
    folder = finished_experiment["folder"]
    info = json.loads((folder / "best" / "config.json").read_text())
    assert info["model"]["source"] == "custom config (from scratch)"
    assert info["model"]["d_model"] == 16 and info["model"]["n_layer"] == 1 and info["model"]["parameters"] > 0
    assert {"trial_id", "epoch", "selected_by", "val_metrics", "train_config", "model_config"} <= set(info)
    page = Page((folder / "report.html").read_text())
    assert f"The winner: trial {info['trial_id']}" in page.words("winner")
    searched = dict(page.table("winner", 0).values.tolist())
    assert searched["head"] == info["train_config"]["head"]
    assert searched["learning_rate"] == fmt(info["train_config"]["learning_rate"])
    # The demo's baseline, saved by the search, and the winner's paired comparison with it.
    saved = json.loads((folder / "baseline.json").read_text())
    assert f"baseline chosen on val: {saved['chosen']}" in page.words("winner")
    vs = json.loads((folder / "best" / "metrics.json").read_text())["vs_baseline"]
    assert vs["baseline"] == saved["chosen"] and vs["verdict"] in page.words("winner")
    assert any(s.startswith("data:image/png;base64,") for s in page.images["winner"])
    trials = pd.read_csv(folder / "trials.csv")
    outcome = dict(zip(page.table("trials")["trial"], page.table("trials")["outcome"]))
    for row in trials.itertuples():
        expected = "finished" if row.epochs_run >= 2 else f"stopped by ASHA at epoch {row.epochs_run}"
        assert outcome[row.trial_id] == row.stop_reason == expected
    assert "completed trials are too few" in page.words("importances")


@pytest.mark.parametrize(
    ("test", "fragments"),
    [
        ({"test_r2": 0.4123, "test_rmse": 0.52, "test_n_samples": 60}, ["explain 41% of it", "0.52 pH units", "60"]),
        ({"test_r2": -0.2, "test_rmse": 2.1, "test_n_samples": 9}, ["explain none of it", "2.10 pH units"]),
    ],
)
def test_r2_in_words_says_what_the_number_means_for_ph(test, fragments):
    words = winner.r2_in_words(test)
    assert "no better than predicting their mean pH" in words
    for fragment in fragments:
        assert fragment in words, words
    assert winner.r2_in_words({"test_r2": float("nan")}) is None


def test_learning_curves_name_the_winner_and_each_finished_trial(experiment):
    table = experiment["table"]
    reasons = dict(zip(table["trial_id"], table["stop_reason"]))
    fig = plots.learning_curves(experiment["frames"], reasons, winner=WINNER, winner_epoch=7)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    plt.close(fig)
    assert labels[0] == f"winner: trial {WINNER} (★ epoch 7, exported)"
    finished = [t for t, r in reasons.items() if r == "finished" and t != WINNER]
    assert finished and all(f"trial {t} (finished)" in labels for t in finished)
    assert "finished" not in labels  # no unnamed entry whose colour matches no curve


def test_learning_curves_of_many_finished_trials_keep_one_legend_entry_for_them():
    frames = {f"t{i:02d}": pd.DataFrame({"epoch": [1, 2], "val_loss": [0.5, 0.4 - i / 100]}) for i in range(12)}
    fig = plots.learning_curves(frames, dict.fromkeys(frames, "finished"), winner="t11", winner_epoch=2)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    plt.close(fig)
    assert labels == ["winner: trial t11 (★ epoch 2, exported)", "finished (a colour per trial)"]


def test_the_report_explains_the_residual_slope_n_a_ticks_and_the_test_r2(written):
    _, page = written
    words = page.words("winner")
    assert " ".join(winner.RESIDUALS_NOTE.split()) in words
    assert "low pH is over-predicted and high pH under-predicted" in words and "regression to the mean" in words
    assert "explain 87% of it" in words  # the test R² in words, beside the table
    assert "head_dropout is used only when head is mlp2" in page.words("parallel")
    assert winner.used_when(SAVED, "head_dropout") == "head is mlp2" and winner.used_when(SAVED, "head") == ""


def test_one_layer_is_not_called_layers(tmp_path):
    one = winner.Winner(trial_id="x", metric="val_loss", model={"name": "m", "source": "s", "n_layer": 1})
    assert "1 layer." in " ".join(Page(winner_html(one, tmp_path)).words("winner").split())

"""Export an experiment: trials.csv, the best trial's best checkpoint -> best/, its test evaluation, report.html."""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tune_ph import cli, report, results
from tune_ph.config import METRIC_MODES
from tune_ph.evaluate import evaluate_checkpoint
from tune_ph.files import write_json
from tune_ph.tokens import TokenizedDataset

log = logging.getLogger("tune_ph.export")


def export_best(
    path: str,
    folder: Path,
    metric: str = "val_loss",
    datasets: dict[int, TokenizedDataset] | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Copy the best checkpoint to folder/best/ (best_model.pt + config.json) and evaluate it on the test split."""
    experiment = results.Experiment(path)
    trial, checkpoint, metrics = results.best_checkpoint(experiment, metric)
    out = Path(folder) / results.BEST_DIR
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    experiment.copy_checkpoint(trial, checkpoint, out / "best_model.pt")
    state = torch.load(out / "best_model.pt", map_location="cpu", weights_only=True)
    info = {
        "trial_id": trial.trial_id,
        "trial_path": trial.path,
        "checkpoint": checkpoint,
        "epoch": int(state.get("epoch", metrics.get("epoch", 0))),
        "selected_by": metric,
        "val_metrics": {k: metrics[k] for k in results.VAL_METRICS if k in metrics},
        "train_config": state.get("train_config"),
        "model_config": state.get("model_config"),
    }
    write_json(out / "config.json", info)
    log.info("best trial %s epoch %d (%s %.4f) -> %s", trial.trial_id, info["epoch"], metric, metrics[metric], out)
    dataset = (datasets or {}).get(int(state.get("max_length", 0)))
    return evaluate_checkpoint(out / "best_model.pt", dataset=dataset, output_dir=out, device=device)


def write_report(path: str, folder: Path, metric: str = "val_loss") -> Path | None:
    """report.html with learning curves, the metric by hyperparameter and parameter importances."""
    folder = Path(folder)
    try:
        trials = results.Experiment(path).trials()
        return report.write_report(
            folder,
            results.trials_table(trials, metric),
            {t.trial_id: t.history for t in trials},
            settings=results.load_settings(folder),
            study_db=folder / results.STUDY_FILE,
            metric=metric,
        )
    except Exception as err:  # the report is a convenience; the results are already saved
        log.warning("could not write the experiment report: %s", err)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tune_ph.export`: exit code 0, 1 (runtime failure), 2 (bad input) or 130 (interrupted)."""
    return cli.run(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tune_ph.export",
        description="Write trials.csv, export the best trial's best checkpoint to EXPERIMENT/best/ and test it.",
    )
    p.add_argument("experiment", help="experiment folder (e.g. experiments/quick)")
    p.add_argument("--storage-path", help="where Ray stored the trials if not in the folder (the --storage used)")
    p.add_argument(
        "--metric",
        default=None,
        choices=METRIC_MODES,
        help="selection metric (default: the search's, usually val_loss)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--no-report", action="store_true")
    args = p.parse_args(argv)
    folder = Path(args.experiment)
    settings = results.load_settings(folder)
    metric = args.metric or settings.get("search", {}).get("metric", "val_loss")
    path = results.experiment_path(folder, args.storage_path or settings.get(results.STORAGE_KEY))
    table = results.write_trials_table(path, folder, metric)
    results.print_summary(table, metric)
    test = export_best(path, folder, metric, device=args.device)
    print(
        f"exported to {folder / results.BEST_DIR}: "
        + ", ".join(f"{k} {v:.3f}" for k, v in test.items() if isinstance(v, float))
    )
    if not args.no_report:
        written = write_report(path, folder, metric)
        if written:
            print(f"report: {written}")
    return cli.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())

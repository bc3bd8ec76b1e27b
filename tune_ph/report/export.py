"""Export an experiment: trials.csv, the best trial's best checkpoint -> best/, its test evaluation, report.html."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from hyena_dna import HUB_ORG
from tune_ph import files
from tune_ph.baseline import reference as baselines
from tune_ph.baseline.reference import Reference
from tune_ph.data.tokens import TokenizedDataset
from tune_ph.errors import InputError
from tune_ph.files import write_json
from tune_ph.metrics import SUMMARY_METRICS, VAL_LOSS
from tune_ph.model.checkpoint import Checkpoint
from tune_ph.report import html_report, results
from tune_ph.report.evaluate import evaluate_checkpoint

log = logging.getLogger(__name__)


def describe_model(
    train_config: dict[str, Any] | None,
    model_config: dict[str, Any] | None,
    n_params: int = 0,
    trained_length: int | None = None,
) -> dict:
    """What the exported model is, honestly: its name, where its weights came from, its size.

    A custom model_config is trained from scratch whatever `model` says (the field then only names the run).
    trained_length: tokens per read set in its training (a Checkpoint's max_length); default: the config's.
    """
    tc, mc = train_config or {}, model_config or {}
    name = str(tc.get("model") or "")
    if tc.get("model_config"):
        name = "custom HyenaDNA"
        source = "custom config (from scratch)"
    elif tc.get("from_scratch"):
        source = f"from scratch: {name} architecture"
    elif Path(name).expanduser().is_dir():
        source = f"pretrained: local checkpoint {name}"
    else:
        source = f"pretrained: {name if '/' in name else f'{HUB_ORG}/{name}'}"
    out: dict[str, Any] = {"name": name, "source": source}
    for key in ("d_model", "n_layer"):
        if key in mc:
            out[key] = mc[key]
    length = (mc.get("layer") or {}).get("l_max") or mc.get("l_max")
    if isinstance(length, int):
        out["max_length"] = length - 2  # l_max counts the two special tokens
    trained_length = trained_length or tc.get("max_length")
    if trained_length:
        out["trained_length"] = trained_length  # tokens per read set in this training
    if n_params:
        out["parameters"] = n_params
    return out


def export_best(
    path: str,
    folder: Path,
    metric: str = VAL_LOSS,
    datasets: dict[str, TokenizedDataset] | None = None,
    device: str = "auto",
    baseline: Reference | None = None,
    with_baseline: bool = True,
    taxonomy: str | None = None,
) -> dict[str, Any]:
    """Copy the best checkpoint to folder/best/ (best_model.pt + config.json) and evaluate it on the test split.

    The test metrics are compared with the baseline chosen on val: `baseline`, else the experiment's
    baseline.json, else computed now for a small local dataset (and saved); with_baseline=False: none.
    taxonomy: a TSV naming the taxa of a clusters model's drivers (default: the trial's TrainConfig.taxonomy).
    """
    experiment = results.Experiment(path)
    trial, checkpoint, metrics = results.best_checkpoint(experiment, metric)
    final = Path(folder) / files.BEST_DIR
    # Built beside best/ and renamed over it at the end: a failed export never loses the previous one.
    out = final.with_name(f".{final.name}.new")
    _remove(out)
    out.mkdir(parents=True)
    try:
        experiment.copy_checkpoint(trial, checkpoint, out / files.MODEL_FILE)
        saved = Checkpoint.load(out / files.MODEL_FILE)
        train_config, model_config = saved.train_config.to_dict(), saved.model_config.to_dict()
        info = results.BestInfo(
            trial_id=trial.trial_id,
            trial_path=trial.path,
            checkpoint=checkpoint,
            epoch=saved.epoch,
            selected_by=metric,
            val_metrics={k: metrics[k] for k in SUMMARY_METRICS if k in metrics},
            train_config=train_config,
            model_config=model_config,
            model=describe_model(train_config, model_config, saved.num_parameters(), saved.max_length),
        )
        write_json(out / files.RUN_CONFIG_FILE, info.to_dict())
        log.info("best trial %s epoch %d (%s %.4f) -> %s", trial.trial_id, info.epoch, metric, metrics[metric], final)
        dataset = (datasets or {}).get(saved.train_config.model)  # the search's, when it is the trial's data
        if dataset is not None and dataset.max_length != saved.max_length:
            dataset = None
        if baseline is None and with_baseline:
            baseline = report_baseline(folder, train_config)
        test = evaluate_checkpoint(
            out / files.MODEL_FILE, dataset=dataset, output_dir=out, device=device, baseline=baseline, taxonomy=taxonomy
        )
        test["checkpoint"] = str(final / files.MODEL_FILE)
        write_json(out / files.METRICS_FILE, test)
    except BaseException:
        _remove(out)  # a refused or failed export leaves no half-built folder
        raise
    _remove(final)
    out.rename(final)
    return test


def _remove(path: Path) -> None:
    """Remove a folder, or a link or file in its place (never what a link points to: a received experiment's
    best/ may be a link to anywhere)."""
    try:
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
    except OSError as err:
        raise InputError(f"{path}: cannot remove it to export the best trial ({err.strerror}); remove it") from None


def report_baseline(folder: Path, train_config: dict[str, Any] | None) -> Reference:
    """The baseline the search saved (folder/baseline.json), else computed now for a small local dataset (and
    saved there, so the report and a later export read it)."""
    saved = baselines.load_saved(folder)
    if saved and saved.results:
        return saved
    found = baselines.reference_baseline(train_config, local_only=True, max_bases=baselines.BASELINE_MAX_BASES)
    if found.results:
        write_json(Path(folder) / files.BASELINE_FILE, found.to_dict())
    return found


def write_report(path: str, folder: Path, metric: str = VAL_LOSS, with_baseline: bool = True) -> Path | None:
    """report.html: the winner and why, test metrics beside a k-mer baseline, curves, trials, importances."""
    folder = Path(folder)
    try:
        settings = results.saved_search(folder)
        trials = results.Experiment(path).trials()
        info = results.best_info(folder)
        train_config = info.train_config if info else None
        found = report_baseline(folder, train_config) if with_baseline else Reference(reason="--no-baseline")
        return html_report.write_report(
            folder,
            results.trials_table(trials, metric, settings.planned_epochs()),
            {t.trial_id: t.history for t in trials},
            settings=settings,
            study_db=folder / results.STUDY_FILE,
            metric=metric,
            baseline=found,
        )
    except Exception as err:  # the report is a convenience; the results are already saved
        log.warning("could not write the experiment report: %s", err)
        return None

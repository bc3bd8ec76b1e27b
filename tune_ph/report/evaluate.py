"""Re-run the test evaluation of a saved checkpoint from its stored config alone: CSV, metrics, plot."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tune_ph import files
from tune_ph.baseline.reference import Reference, compare
from tune_ph.config import TrainConfig
from tune_ph.data import sources
from tune_ph.data.tokens import TokenizedDataset
from tune_ph.files import write_csv, write_json
from tune_ph.metrics import bootstrap_ci
from tune_ph.model import embeddings
from tune_ph.model.regressor import load_checkpoint, resolve_device
from tune_ph.report.html_report import plot_residuals
from tune_ph.training.predict import Predictions, predict, regression_metrics

log = logging.getLogger(__name__)

__all__ = ["evaluate_checkpoint", "load_checkpoint", "predictions_table"]


def predictions_table(dataset: TokenizedDataset, preds: Predictions) -> pd.DataFrame:
    """One row per sample: sample_id, study_name, true_ph, predicted_ph_mean, predicted_ph_sd, n_sets, residual_mean,
    environment (predicted_ph_mean: the sample's one prediction, named as in the published recipe's tables)."""
    samples = preds.sample_index
    return pd.DataFrame(
        {
            "sample_id": dataset.sample_ids[samples],
            "study_name": dataset.study_name[samples],
            # float32 is the dataset's precision; widening it would print 6.02 as 6.019999980926514.
            "true_ph": preds.true.astype(np.float32),
            "predicted_ph_mean": preds.predicted,
            "predicted_ph_sd": preds.set_sd,
            "n_sets": preds.n_sets,
            # Observed minus predicted: a positive residual means the model under-predicted pH.
            "residual_mean": preds.true - preds.predicted,
            "environment": dataset.environment[samples],
        }
    )


def evaluate_checkpoint(
    checkpoint_path: str | Path,
    *,
    dataset: TokenizedDataset | str | None = None,
    output_dir: str | Path | None = None,
    device: str = "auto",
    progress: bool = False,
    baseline: Reference | None = None,
) -> dict[str, Any]:
    """Predict the test split with a checkpoint; write test_predictions.csv, metrics.json, residuals.png.

    dataset: a TokenizedDataset (reused as is), a source string, or None for the source in the saved config.
    output_dir: defaults to the checkpoint's folder. The metrics hold 95 % bootstrap intervals (test_r2_ci95, ...)
    and, given the baseline chosen on val with its test predictions, "vs_baseline": the paired difference in R².
    """
    checkpoint_path = Path(checkpoint_path)
    model, state = load_checkpoint(checkpoint_path)
    cfg = TrainConfig.from_saved(state["train_config"])
    max_length = int(state.get("max_length") or cfg.max_length or model.backbone.config.max_length)
    if dataset is None or isinstance(dataset, str):
        if isinstance(dataset, str):
            cfg.dataset = dataset
        cfg.max_length = max_length
        dataset = sources.prepare_for(cfg)
    elif dataset.max_length != max_length or dataset.max_sets != (cfg.max_sets or 0):
        raise ValueError(
            f"the dataset was tokenized with max_length={dataset.max_length}, max_sets={dataset.max_sets} but "
            f"{checkpoint_path} was trained with max_length={max_length}, max_sets={cfg.max_sets}; "
            "pass dataset=None to rebuild it from the saved config"
        )
    fingerprint = state.get("dataset_fingerprint")
    if fingerprint and fingerprint != dataset.fingerprint:
        log.warning("evaluating on a dataset whose fingerprint differs from the one the checkpoint was trained on")

    torch_device = resolve_device(device)
    model.to(torch_device)
    # A frozen backbone's vectors are usually cached already (training computed them): no backbone run then.
    vectors = embeddings.cached(model.backbone, dataset, cfg.cache_dir) if cfg.freeze_backbone else None
    preds = predict(
        model,
        dataset,
        "test",
        target_mean=float(state["target_mean"]),
        target_std=float(state["target_std"]),
        batch_size=cfg.batch_size,
        sets_per_forward=cfg.sets_per_forward(),
        device=torch_device,
        progress=progress,
        vectors=None if vectors is None else embeddings.for_pooling(vectors, cfg.pooling),
    )
    table = predictions_table(dataset, preds)
    true, predicted = table["true_ph"].to_numpy(), table["predicted_ph_mean"].to_numpy()
    metrics: dict[str, Any] = regression_metrics(true, predicted, "test_")
    metrics.update(bootstrap_ci(true, predicted, "test_"))
    metrics.update(
        test_n_samples=len(table),
        test_n_sets=int(preds.n_sets.sum()),
        epoch=int(state.get("epoch", 0)),
        checkpoint=str(checkpoint_path),
    )
    comparison = compare(table, baseline)
    if comparison is not None:
        metrics["vs_baseline"] = comparison.to_dict()

    out = Path(output_dir) if output_dir is not None else checkpoint_path.parent
    write_csv(out / files.PREDICTIONS_FILE, table)
    write_json(out / files.METRICS_FILE, metrics)  # an undefined R² (one test sample) is written as null
    title = f"Test residuals, R² {metrics['test_r2']:.3f} ({len(table)} samples)"
    plot_residuals(table, out / files.RESIDUALS_FILE, title=title)
    return metrics

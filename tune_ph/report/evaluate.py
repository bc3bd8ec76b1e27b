"""Re-run the test evaluation of a saved checkpoint from its stored config alone: CSV, metrics, plot."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tune_ph import files
from tune_ph.baseline.reference import Reference, compare
from tune_ph.data import feature_table, sources, tokens
from tune_ph.data.taxonomy import Taxonomy, load_taxonomy
from tune_ph.data.tokens import TokenizedDataset
from tune_ph.files import write_json
from tune_ph.metrics import TEST_R2, bootstrap_ci, regression_metrics
from tune_ph.model import embeddings
from tune_ph.model.regressor import load_checkpoint, resolve_device
from tune_ph.report import drivers
from tune_ph.report.plots import plot_residuals
from tune_ph.training.checkpoints import checkpoint_split
from tune_ph.training.predict import Predictions, predict

log = logging.getLogger(__name__)

__all__ = ["evaluate_checkpoint", "predictions_table"]


def predictions_table(dataset: TokenizedDataset, preds: Predictions) -> pd.DataFrame:
    """One row per sample, files.PREDICTION_COLUMNS: sample_id, study_name, true_ph, predicted_ph_mean (the
    sample's one prediction), predicted_ph_sd, n_sets, residual_mean, environment."""
    samples = preds.sample_index
    return pd.DataFrame(
        {
            files.SAMPLE_ID: dataset.sample_ids[samples],
            files.STUDY_NAME: dataset.study_name[samples],
            # float32 is the dataset's precision; widening it would print 6.02 as 6.019999980926514.
            files.TRUE_PH: preds.true.astype(np.float32),
            files.PREDICTED_PH: preds.predicted,
            files.PREDICTED_PH_SD: preds.set_sd,
            files.N_SETS: preds.n_sets,
            files.RESIDUAL: preds.true - preds.predicted,
            files.ENVIRONMENT: dataset.environment[samples],
        },
        columns=list(files.PREDICTION_COLUMNS),
    )


def _with_feature_sequences(taxa: Taxonomy | None, sequences: str | None, max_length: int) -> Taxonomy | None:
    """A taxonomy keyed by feature id (QIIME 2's taxonomy.tsv) also keyed by each id's sequence in a feature table's
    FASTA (--sequences), whole and as its set holds it (its last max_length bases: each distinct sequence of a
    feature table is a set of its own): the drivers look taxa up by the sequences the model read."""
    if taxa is None or not taxa.by_id or sequences is None:
        return taxa
    by_id = feature_table.read_fasta_ids(Path(sequences).expanduser())
    return taxa.with_sequences(by_id).with_sequences({k: v[-max_length:] for k, v in by_id.items()})


def evaluate_checkpoint(
    checkpoint_path: str | Path,
    *,
    dataset: TokenizedDataset | str | None = None,
    output_dir: str | Path | None = None,
    device: str = "auto",
    progress: bool = False,
    baseline: Reference | None = None,
    taxonomy: str | None = None,
) -> dict[str, Any]:
    """Predict the test split with a checkpoint; write test_predictions.csv, metrics.json, residuals.png, and for a
    clusters model drivers.csv and drivers.png (the clusters that move its val predictions most; report.drivers).

    dataset: a TokenizedDataset (reused as is), a source string, or None for the source in the saved config; the
    run's own source is split as its split.json beside the checkpoint says (checked), else as its config draws it.
    output_dir: defaults to the checkpoint's folder. The metrics hold 95 % bootstrap intervals (test_r2_ci95, ...)
    and, given the baseline chosen on val with its test predictions, "vs_baseline": the paired difference in R².
    taxonomy: a TSV naming the drivers' taxa (default: the run's own, TrainConfig.taxonomy).
    """
    checkpoint_path = Path(checkpoint_path)
    model, checkpoint = load_checkpoint(checkpoint_path)
    cfg = checkpoint.train_config
    # Read before minutes of prediction: a bad table is one error line at once.
    taxa_file = taxonomy or cfg.taxonomy
    taxa = load_taxonomy(taxa_file) if taxa_file and model.aggregation.read_clusters is not None else None
    data_cfg = cfg  # the settings the samples are read with (a feature table's FASTA names its ids' sequences)
    if dataset is None or isinstance(dataset, str):
        source = dataset if isinstance(dataset, str) else cfg.dataset
        # The run's own data: its own split, checked (another dataset's samples are split as the config draws them).
        if source == cfg.dataset and os.path.lexists(checkpoint_path.parent / files.SPLIT_FILE):
            df = sources.load_for(cfg)
            split = checkpoint_split(checkpoint_path, checkpoint, df)
            dataset = tokens.build(
                df, split, max_length=checkpoint.max_length, max_sets=cfg.max_sets, cache_dir=cfg.cache_dir
            )
        else:
            other = replace(cfg, dataset=source, max_length=checkpoint.max_length)
            if source != cfg.dataset and not feature_table.is_feature_table(Path(source).expanduser()):
                # The run's feature-table companions (FASTA, metadata, filters) are not another kind of source's.
                other = replace(other, sequences=None, metadata=None, min_count=0, rarefy=None)
            data_cfg = other
            dataset = sources.prepare_for(other)
    elif dataset.max_length != checkpoint.max_length or dataset.max_sets != (cfg.max_sets or 0):
        raise ValueError(
            f"the dataset was tokenized with max_length={dataset.max_length}, max_sets={dataset.max_sets} but "
            f"{checkpoint_path} was trained with max_length={checkpoint.max_length}, max_sets={cfg.max_sets}; "
            "pass dataset=None to rebuild it from the saved config"
        )
    if checkpoint.dataset_fingerprint and checkpoint.dataset_fingerprint != dataset.fingerprint:
        log.warning("evaluating on a dataset whose fingerprint differs from the one the checkpoint was trained on")

    torch_device = resolve_device(device)
    model.to(torch_device)
    # A frozen backbone's vectors are usually cached already (training computed them): no backbone run then.
    # The backbone's cached vectors serve a model that reads them; a model with its own read encoder (k-mer
    # profiles) counts them as it predicts.
    uses_backbone = cfg.freeze_backbone and model.read_encoder is None
    vectors = embeddings.cached(model.backbone, dataset, cfg.cache_dir) if uses_backbone else None
    preds = predict(
        model,
        dataset,
        "test",
        target_mean=checkpoint.target_mean,
        target_std=checkpoint.target_std,
        batch_size=cfg.batch_size,
        sets_per_forward=cfg.sets_per_forward(),
        device=torch_device,
        progress=progress,
        vectors=None if vectors is None else embeddings.for_pooling(vectors, cfg.pooling),
    )
    table = predictions_table(dataset, preds)
    true, predicted = table[files.TRUE_PH].to_numpy(), table[files.PREDICTED_PH].to_numpy()
    metrics: dict[str, Any] = regression_metrics(true, predicted, "test")
    metrics.update(bootstrap_ci(true, predicted, "test"))
    metrics.update(
        test_n_samples=len(table),
        test_n_sets=int(preds.n_sets.sum()),
        epoch=checkpoint.epoch,
        checkpoint=str(checkpoint_path),
        target=cfg.target,
    )
    comparison = compare(table, baseline)
    if comparison is not None:
        metrics["vs_baseline"] = comparison.to_dict()

    out = Path(output_dir) if output_dir is not None else checkpoint_path.parent
    files.write_predictions(out / files.PREDICTIONS_FILE, table, cfg.target)
    write_json(out / files.METRICS_FILE, metrics)  # an undefined R² (one test sample) is written as null
    title = f"Test residuals, R² {metrics[TEST_R2]:.3f} ({len(table)} samples)"
    plot_residuals(table, out / files.RESIDUALS_FILE, title=title, target=cfg.target)
    if model.aggregation.read_clusters is not None:
        pooled = None if vectors is None else embeddings.for_pooling(vectors, cfg.pooling)
        taxa = _with_feature_sequences(taxa, data_cfg.sequences, dataset.max_length)
        drivers.write_drivers(model.cpu(), checkpoint, dataset, out, pooled, taxa)
    return metrics

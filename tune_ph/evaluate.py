"""Re-run the test evaluation of a saved checkpoint from its stored config alone: CSV, metrics, plot."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __name__ == "__main__":
    # Before torch loads its OpenMP runtime: busy-waiting threads crawl (5-10x slower steps measured on a
    # 2-core machine) whenever anything else runs; passive waiting costs little when the machine is idle.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import torch

from hyena_dna import HyenaDNAConfig, HyenaDNAModel
from tune_ph.head import RegressionHead
from tune_ph.train import PhRegressor, TrainConfig, Predictions, load_dataset, predict, regression_metrics, resolve_device

if TYPE_CHECKING:
    from tune_ph.tokens import TokenizedDataset

log = logging.getLogger("tune_ph.evaluate")

_REQUIRED_KEYS = ("model", "train_config", "model_config", "target_mean", "target_std")


def load_checkpoint(path: str | Path) -> tuple[PhRegressor, dict[str, Any]]:
    """Rebuild the model of a checkpoint saved by train/fit (weights_only load) -> (model in eval mode, state)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass RUN/best_model.pt of a finished run")
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in _REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path} is not a tune_ph checkpoint: it lacks {', '.join(missing)}")
    cfg = TrainConfig.from_dict(state["train_config"])
    backbone = HyenaDNAModel(HyenaDNAConfig.from_dict(state["model_config"]))
    head = RegressionHead(backbone.config.d_model, cfg.head, cfg.pooling, cfg.head_dropout)
    model = PhRegressor(backbone, head, freeze_backbone=cfg.freeze_backbone)
    model.load_state_dict(state["model"])
    return model.eval(), state


def predictions_table(dataset: TokenizedDataset, preds: Predictions, num_sets: int) -> pd.DataFrame:
    """One row per sample: sample_id, study_name, true_ph, predicted_ph_set1..N, mean, residual, environment."""
    samples, mean_pred, true = preds.sample_means()
    row_of = {int(s): i for i, s in enumerate(samples)}
    per_set = np.full((len(samples), num_sets), np.nan)
    ranks = dataset.set_ranks()[preds.set_index]
    for sample, rank, value in zip(preds.sample_index, ranks, preds.predicted):
        if rank < num_sets:
            per_set[row_of[int(sample)], rank] = value
    table = pd.DataFrame(
        {
            "sample_id": dataset.sample_ids[samples],
            "study_name": dataset.study_name[samples],
            # float32 is the dataset's precision; widening it would print 6.02 as 6.019999980926514.
            "true_ph": true.astype(np.float32),
        }
    )
    for k in range(num_sets):
        table[f"predicted_ph_set{k + 1}"] = per_set[:, k]
    table["predicted_ph_mean"] = mean_pred
    # Observed minus predicted: a positive residual means the model under-predicted pH.
    table["residual_mean"] = true - mean_pred
    table["environment"] = dataset.environment[samples]
    return table


def evaluate_checkpoint(
    checkpoint_path: str | Path,
    *,
    dataset: TokenizedDataset | str | None = None,
    output_dir: str | Path | None = None,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Predict the test split with a checkpoint; write test_predictions.csv, metrics.json, residuals.png.

    dataset: a TokenizedDataset (reused as is), a source string, or None for the source in the saved config.
    output_dir: defaults to the checkpoint's folder.
    """
    from tune_ph.report import plot_residuals

    checkpoint_path = Path(checkpoint_path)
    model, state = load_checkpoint(checkpoint_path)
    cfg = TrainConfig.from_dict(state["train_config"])
    max_length = int(state.get("max_length") or cfg.max_length or model.backbone.config.max_length)
    if dataset is None or isinstance(dataset, str):
        if isinstance(dataset, str):
            cfg.dataset = dataset
        dataset = load_dataset(cfg, max_length)
    elif dataset.max_length != max_length or dataset.num_sets != cfg.num_sets:
        raise ValueError(
            f"the dataset was tokenized with max_length={dataset.max_length}, num_sets={dataset.num_sets} but "
            f"{checkpoint_path} was trained with max_length={max_length}, num_sets={cfg.num_sets}; "
            "pass dataset=None to rebuild it from the saved config"
        )
    fingerprint = state.get("dataset_fingerprint")
    if fingerprint and fingerprint != dataset.fingerprint:
        log.warning("evaluating on a dataset whose fingerprint differs from the one the checkpoint was trained on")

    torch_device = resolve_device(device)
    model.to(torch_device)
    preds = predict(
        model, dataset, "test", target_mean=float(state["target_mean"]), target_std=float(state["target_std"]),
        batch_size=cfg.batch_size, device=torch_device, progress=progress,
    )  # fmt: skip
    table = predictions_table(dataset, preds, cfg.num_sets)
    metrics: dict[str, Any] = regression_metrics(table["true_ph"].to_numpy(), table["predicted_ph_mean"].to_numpy(), "test_")
    metrics.update(
        test_n_samples=len(table),
        test_n_sets=len(preds.set_index),
        epoch=int(state.get("epoch", 0)),
        checkpoint=str(checkpoint_path),
    )

    out = Path(output_dir) if output_dir is not None else checkpoint_path.parent
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "test_predictions.csv", index=False)
    # JSON has no NaN; an undefined R² (one test sample) is written as null.
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    (out / "metrics.json").write_text(json.dumps(clean, indent=2) + "\n")
    plot_residuals(table, out / "residuals.png", title=f"Test residuals, R² {metrics['test_r2']:.3f} ({len(table)} samples)")
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tune_ph.evaluate",
        description="Re-run the test evaluation of a training run from its checkpoint and saved config.",
    )
    p.add_argument("--checkpoint", required=True, help="RUN/best_model.pt")
    p.add_argument("--dataset", default=None, help="override the dataset source stored in the checkpoint")
    p.add_argument("--output-dir", default=None, help="where to write the outputs (default: the checkpoint's folder)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        metrics = evaluate_checkpoint(args.checkpoint, dataset=args.dataset, output_dir=args.output_dir, device=args.device)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

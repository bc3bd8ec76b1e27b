"""Inference: per-set and per-sample pH predictions; `python -m tune_ph.predict` for new, unlabelled samples."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from tune_ph import cli, config, data, tokens
from tune_ph.checkpoints import checkpoint_split, find_checkpoint
from tune_ph.config import TrainConfig
from tune_ph.errors import DatasetError, InputError
from tune_ph.fasta import DEFAULT_MAX_DNA
from tune_ph.fasta_samples import read_fasta_dir
from tune_ph.files import write_csv
from tune_ph.metrics import regression_metrics
from tune_ph.model import PhRegressor, autocast, load_checkpoint, resolve_device
from tune_ph.tokens import TokenizedDataset

__all__ = ["Predictions", "predict", "predict_samples", "regression_metrics", "sample_metrics"]

# A per-batch progress bar pays off from about this many samples on.
_PROGRESS_MIN_SAMPLES = 200


@dataclass
class Predictions:
    """Per-set predictions of one split, in pH units, with the sample each set belongs to."""

    set_index: np.ndarray  # int64 (n_sets,)
    sample_index: np.ndarray  # int64 (n_sets,)
    predicted: np.ndarray  # float64 (n_sets,)
    true: np.ndarray  # float64 (n_sets,)

    def sample_means(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sample indices sorted, mean predicted pH per sample, true pH per sample)."""
        samples, inverse = np.unique(self.sample_index, return_inverse=True)
        counts = np.bincount(inverse)
        predicted = np.bincount(inverse, weights=self.predicted) / counts
        true = np.bincount(inverse, weights=self.true) / counts
        return samples, predicted, true

    def sample_spread(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sample indices sorted, sample standard deviation of the per-set predictions, number of sets).

        The standard deviation uses n - 1 (NaN for a sample with one set): the spread of the model's answers
        over a sample's read sets, a rough uncertainty of its mean.
        """
        samples, inverse = np.unique(self.sample_index, return_inverse=True)
        counts = np.bincount(inverse)
        mean = np.bincount(inverse, weights=self.predicted) / counts
        squares = np.bincount(inverse, weights=(self.predicted - mean[inverse]) ** 2)
        spread = np.full(len(samples), np.nan)
        many = counts > 1
        spread[many] = np.sqrt(squares[many] / (counts[many] - 1))
        return samples, spread, counts


def predict(
    model: PhRegressor,
    dataset: TokenizedDataset,
    split: str,
    *,
    target_mean: float,
    target_std: float,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Predictions:
    """Predict every set of one split; returns per-set predictions in pH units."""
    device = resolve_device(device) if isinstance(device, str) else device
    model.eval()
    outputs: list[torch.Tensor] = []
    set_index: list[torch.Tensor] = []
    sample_index: list[torch.Tensor] = []
    batches = dataset.batches(split, batch_size, shuffle=False)
    total = dataset.num_batches(split, batch_size)
    with torch.inference_mode(), autocast(device):
        for batch in tqdm(batches, total=total, desc=f"predict {split}", disable=not progress, leave=False):
            ids = batch.input_ids.to(device, non_blocking=True)
            mask = batch.mask.to(device, non_blocking=True)
            outputs.append(model(ids, mask))
            set_index.append(batch.set_index)
            sample_index.append(batch.sample_index)
    if not outputs:
        raise ValueError(f"the {split!r} split has no sequence sets; check the split fractions and the dataset size")
    predicted = torch.cat(outputs).float().cpu().double().numpy() * target_std + target_mean
    sets = torch.cat(set_index).numpy().astype(np.int64)
    samples = torch.cat(sample_index).numpy().astype(np.int64)
    return Predictions(sets, samples, predicted, dataset.ph[samples].astype(np.float64))


# ---------------------------------------------------------------- new samples


def _reads_used(reads: list[str], max_length: int, num_sets: int) -> int:
    """How many of a sample's reads its read sets hold (the packing of tokens.tokenize)."""
    return sum(map(len, tokens.pack_sets([len(r) for r in reads if r], max_length, num_sets)))


def predict_samples(
    checkpoint: str | Path,
    samples: pd.DataFrame,
    *,
    split: str | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    skip_bad_rows: bool = False,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Predict the pH of every sample of a table with a checkpoint, tokenized with the checkpoint's settings.

    samples: sample_id and sequences (lists of reads); study_name, environment and pH are optional (as
    data.load_samples(..., labelled=False) or fasta_samples.read_fasta_dir return them). Samples without reads
    are skipped with a warning. split: "train", "val" or "test" predicts only that split of the checkpoint's run.
    Returns one row per sample: sample_id, study_name, predicted_ph (mean over its sets), predicted_ph_sd,
    n_sets, n_reads_used, n_reads, and true_ph, residual (true - predicted) when any sample has a pH.
    """
    if split is not None and split not in tokens.SPLITS:
        raise InputError(f"unknown split {split!r}; use one of {', '.join(tokens.SPLITS)} (or None for every sample)")
    path = find_checkpoint(checkpoint)
    model, state = load_checkpoint(path)
    cfg = TrainConfig.from_dict(state["train_config"])
    max_length = int(state.get("max_length") or cfg.max_length or model.backbone.config.max_length)
    df = data.clean_samples(samples, skip_bad_rows=skip_bad_rows, where="samples", labelled=False)
    if split is not None:
        chosen = set(checkpoint_split(path, state, df)[split])
        df = df.loc[df["sample_id"].isin(chosen)].reset_index(drop=True)
        if df.empty:
            raise InputError(
                f"none of the samples is in the {split} split of {path}; is it the data it was trained on?"
            )
    if df.empty:
        raise DatasetError("no sample to predict: every sample was empty or skipped")
    dataset = tokens.build(df, {}, max_length=max_length, num_sets=cfg.num_sets)
    torch_device = resolve_device(device)
    model.to(torch_device)
    preds = predict(
        model,
        dataset,
        "all",
        target_mean=float(state["target_mean"]),
        target_std=float(state["target_std"]),
        batch_size=batch_size or cfg.batch_size,
        device=torch_device,
        progress=dataset.num_samples >= _PROGRESS_MIN_SAMPLES if progress is None else progress,
    )
    index, mean, true = preds.sample_means()
    _, spread, n_sets = preds.sample_spread()
    reads = df.set_index("sample_id")["sequences"].loc[dataset.sample_ids[index]]
    table = pd.DataFrame(
        {
            "sample_id": dataset.sample_ids[index],
            "study_name": dataset.study_name[index],
            "predicted_ph": mean,
            "predicted_ph_sd": spread,
            "n_sets": n_sets,
            "n_reads_used": [_reads_used(r, max_length, cfg.num_sets) for r in reads],
            "n_reads": [len(r) for r in reads],
        }
    )
    if np.isfinite(true).any():
        table["true_ph"] = true.astype(np.float32)  # the dataset's precision, as evaluate writes it
        table["residual"] = true - mean  # observed minus predicted, as evaluate's residual_mean
    return table


def sample_metrics(table: pd.DataFrame) -> dict[str, float] | None:
    """R², RMSE, MAE, MSE and n of the samples of a predict_samples table whose pH is known; None if none is."""
    if "true_ph" not in table.columns:
        return None
    known = table.loc[table["true_ph"].notna()]
    metrics: dict[str, float] = regression_metrics(known["true_ph"].to_numpy(), known["predicted_ph"].to_numpy())
    return {**metrics, "n": len(known)}


# ---------------------------------------------------------------- CLI

# TrainConfig fields that are also flags here (their help and checks come from config.py).
_CONFIG_FLAGS = ("dataset", "batch_size", "device", "skip_bad_rows")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tune_ph.predict`: exit code 0, 1 (runtime failure), 2 (bad input) or 130 (interrupted)."""
    return cli.run(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tune_ph.predict",
        description="Predict the pH of new samples (a dataset source or FASTA files) with a trained checkpoint.",
        epilog="Reads are packed into sets with the checkpoint's own max_length and num_sets; --batch-size defaults "
        "to the checkpoint's, --device to auto. Output: one row per sample (sample_id, study_name, predicted_ph, "
        "predicted_ph_sd, n_sets, n_reads_used, n_reads; true_ph and residual when pH is known).",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a best_model.pt, a run folder, an experiment's best/ folder or an experiment folder",
    )
    config.add_arguments(p, only=_CONFIG_FLAGS, overrides=True)
    p.add_argument("--fasta-dir", help="instead of --dataset: DIR/{study_name}/{sample_id}.fasta[.gz] or DIR/*.fasta")
    p.add_argument("--metadata", help="with --fasta-dir: CSV with sample_id (+ study_name, environment, pH)")
    p.add_argument(
        "--max-dna",
        type=int,
        default=DEFAULT_MAX_DNA,
        help="with --fasta-dir: max bases per sample, whole reads in file order (default %(default)s)",
    )
    p.add_argument(
        "--split",
        choices=tokens.SPLITS,
        help="predict only this split of the checkpoint's run (its split.json or its saved split settings)",
    )
    p.add_argument("--output", required=True, help="the predictions CSV to write")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    given = config.given_fields(args, _CONFIG_FLAGS)
    for name, value in given.items():
        config.check_field(name, value)
    if (args.dataset is None) == (args.fasta_dir is None):
        raise InputError("give exactly one of --dataset SOURCE or --fasta-dir DIR")
    if args.fasta_dir is None and args.metadata is not None:
        raise InputError("--metadata goes with --fasta-dir (a --dataset source carries its own columns)")
    if args.max_dna < 1:
        raise InputError(f"--max-dna must be a positive number of bases, got {args.max_dna}")
    output = Path(args.output)
    if output.is_dir():
        raise InputError(f"--output {output} is a folder; give a file name such as {output / 'predictions.csv'}")

    path = find_checkpoint(args.checkpoint)
    load_checkpoint(path)  # a damaged checkpoint should fail before minutes of data loading
    skip = bool(given.get("skip_bad_rows", False))
    if args.fasta_dir is not None:
        samples = read_fasta_dir(args.fasta_dir, args.metadata, max_dna=args.max_dna, skip_bad_rows=skip)
    else:
        samples = data.load_samples(args.dataset, skip_bad_rows=skip, labelled=False)
    table = predict_samples(
        path,
        samples,
        split=args.split,
        batch_size=given.get("batch_size"),
        device=given.get("device", "auto"),
        skip_bad_rows=skip,
        progress=False if args.no_progress else None,
    )
    write_csv(output, table)
    print(f"predicted {len(table)} sample(s) ({int(table['n_sets'].sum())} read sets) with {path} -> {output}")
    metrics = sample_metrics(table)
    if metrics is not None:
        print(
            f"pH known for {metrics['n']} of {len(table)}: R² {metrics['r2']:.3f}  RMSE {metrics['rmse']:.3f}  "
            f"MAE {metrics['mae']:.3f}"
        )
    return cli.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m tune_ph predict`: a checkpoint + FASTA files or a dataset -> one pH prediction per sample."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

# Libraries that take seconds to import (torch, pandas, scikit-learn, Ray) are imported in _main once the flags
# are known to be usable: --help and every error the flags alone show answer in a moment.
from tune_ph import cli, config, files
from tune_ph.data.fasta import DEFAULT_MAX_DNA
from tune_ph.errors import InputError
from tune_ph.files import write_csv

# The TrainConfig fields predict takes as flags (same names and rules as training's).
CONFIG_FLAGS = ("dataset", "batch_size", "device", "skip_bad_rows", "max_sets", "sequences", "min_count", "rarefy")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tune_ph predict`: exit code 0, 1 (runtime failure), 2 (bad input) or 130 (interrupted)."""
    return cli.run(_main, argv)


def build_parser() -> argparse.ArgumentParser:
    """predict's flags (the search's console prints a predict command; a test parses it with these)."""
    p = argparse.ArgumentParser(
        prog="python -m tune_ph predict",
        description="Predict the pH (or the checkpoint's --target) of new samples (a dataset source or FASTA files) "
        "with a trained checkpoint.",
        epilog="Every read of a sample is used, packed into sets of the checkpoint's max_length (--max-sets caps "
        "the sets per sample); --batch-size defaults to the checkpoint's, --device to auto. Output: one row per "
        f"sample ({', '.join(files.PREDICT_COLUMNS)}; {files.TRUE_PH} and {files.RESIDUAL} when pH is known; "
        "a model of another --target names its columns after it: predicted_temperature_mean, ...).",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a best_model.pt, a run folder, an experiment's best/ folder or an experiment folder",
    )
    config.add_arguments(p, only=CONFIG_FLAGS, overrides=True)
    p.add_argument("--fasta-dir", help="instead of --dataset: DIR/{study_name}/{sample_id}.fasta[.gz] or DIR/*.fasta")
    p.add_argument(
        "--metadata",
        help="with --fasta-dir: CSV with sample_id (+ study_name, environment, pH); with a feature table as --dataset: "
        "its sample metadata TSV/CSV (optional: pH, or the checkpoint's --target, when known, is compared with the "
        "predictions)",
    )
    p.add_argument(
        "--max-dna",
        type=int,
        default=DEFAULT_MAX_DNA,
        help="with --fasta-dir: max bases per sample, whole reads in file order (default %(default)s)",
    )
    p.add_argument(
        "--split",
        choices=files.SPLITS,
        help="predict only this split of the checkpoint's run (its split.json or its saved split settings)",
    )
    p.add_argument("--output", required=True, help="the predictions CSV to write")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    given = config.given_fields(args, CONFIG_FLAGS)
    for name, value in given.items():
        config.check_field(name, value)
    if (args.dataset is None) == (args.fasta_dir is None):
        raise InputError("give exactly one of --dataset SOURCE or --fasta-dir DIR")
    if args.fasta_dir is not None and (args.sequences is not None or args.min_count or args.rarefy is not None):
        raise InputError("--sequences, --min-count and --rarefy go with a feature table as --dataset, not --fasta-dir")
    if args.max_dna < 1:
        raise InputError(f"--max-dna must be a positive number of bases, got {args.max_dna}")
    output = Path(args.output)
    if output.is_dir():
        raise InputError(f"--output {output} is a folder; give a file name such as {output / 'predictions.csv'}")

    from tune_ph.data import sources
    from tune_ph.data.fasta_samples import read_fasta_dir
    from tune_ph.data.feature_table import TableOptions
    from tune_ph.model.regressor import load_checkpoint
    from tune_ph.training.checkpoints import find_checkpoint
    from tune_ph.training.inference import predict_samples, sample_metrics

    path = find_checkpoint(args.checkpoint)
    _, checkpoint = load_checkpoint(path)  # a damaged checkpoint should fail before minutes of data loading
    target = sources.Target.of(checkpoint.train_config)  # what the model predicts, and the column it is known in
    skip = bool(given.get("skip_bad_rows", False))
    if args.fasta_dir is not None:
        samples = read_fasta_dir(args.fasta_dir, args.metadata, max_dna=args.max_dna, skip_bad_rows=skip)
    else:
        # A feature table's filters are the command line's: a prediction keeps every read unless told otherwise.
        options = TableOptions(args.sequences, args.metadata, given.get("min_count", 0), args.rarefy)
        samples = sources.load_samples(args.dataset, skip_bad_rows=skip, labelled=False, target=target, table=options)
    table = predict_samples(
        path,
        samples,
        split=args.split,
        batch_size=given.get("batch_size"),
        device=given.get("device", "auto"),
        skip_bad_rows=skip,
        progress=False if args.no_progress else None,
        max_sets=given.get("max_sets"),
    )
    write_csv(output, table)
    used, reads, sets = (int(table[c].sum()) for c in ("n_reads_used", "n_reads", "n_sets"))
    print(
        f"predicted {len(table)} sample(s) from {used:,} of their {reads:,} reads ({sets:,} read sets) "
        f"with {path} -> {output}"
    )
    metrics = sample_metrics(table, target.name)
    if metrics is not None:
        print(
            f"{target.name} known for {metrics['n']} of {len(table)}: R² {metrics['r2']:.3f}  "
            f"RMSE {metrics['rmse']:.3f}  MAE {metrics['mae']:.3f}"
        )
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

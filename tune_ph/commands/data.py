"""`python -m tune_ph data`: build a dataset from FASTA, summarise, cache."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

# Libraries that take seconds to import (torch, pandas, scikit-learn, Ray) are imported in _main once the flags
# are known to be usable: --help and every error the flags alone show answer in a moment.
from tune_ph import cli, config
from tune_ph.config import DEFAULT_DATASET, TrainConfig
from tune_ph.data import fasta, token_cache

# The TrainConfig fields `data summary` takes as flags (how the split is drawn).
SUMMARY_FIELDS = (
    "target",
    "target_range",
    "skip_bad_rows",
    "split_seed",
    "split_by",
    "test_fraction",
    "val_fraction",
    "sequences",
    "metadata",
    "min_count",
    "rarefy",
)


def _print_examples(label: str, names: list[str]) -> None:
    if names:
        more = f" (+{len(names) - 5} more)" if len(names) > 5 else ""
        print(f"  {len(names)} {label}: {', '.join(names[:5])}{more}")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tune_ph data build|summary|cache`: exit code 0, 1 (runtime failure) or 2 (bad input)."""
    return cli.run(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tune_ph data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a hub-layout dataset from FASTA files and a metadata CSV")
    b.add_argument("--fasta-dir", required=True, help="folder with {study_name}/{sample_id}.fasta[.gz]")
    b.add_argument(
        "--metadata",
        required=True,
        help="CSV with sample_id, study_name, environment, pH (+ sample, Bacteria, Archaea)",
    )
    b.add_argument("--output-dir", required=True, help="output folder (written as OUTPUT_DIR/data/train-*.parquet)")
    b.add_argument(
        "--max-dna",
        type=int,
        default=fasta.DEFAULT_MAX_DNA,
        help="max bases per sample, whole reads in file order (default %(default)s)",
    )
    s = sub.add_parser("summary", help="load a dataset source and print its size and split")
    s.add_argument("source", nargs="?", default=DEFAULT_DATASET, help="demo, hub id, folder or file")
    config.add_arguments(s, only=SUMMARY_FIELDS)
    token_cache.add_command(sub)
    args = parser.parse_args(argv)
    if args.command == "cache":
        token_cache.run_command(args)
    elif args.command == "build":
        res = fasta.build_dataset(args.fasta_dir, args.metadata, args.output_dir, max_dna=args.max_dna)
        print(
            f"wrote {res['samples']} samples ({res['reads']:,} reads, {res['bases']:,} bases) "
            f"in {res['shards']} shard(s) to {res['out']}/data/"
        )
        _print_examples("sample(s) in the metadata without reads", res["without_reads"])
        _print_examples("FASTA file(s) without metadata", res["without_metadata"])
        print(f"use it with: --dataset {res['out']}")
    else:
        # TrainConfig's rules for these flags: fractions that leave samples to train on, seeds numpy takes.
        cfg = TrainConfig(dataset=args.source, **config.given_fields(args, SUMMARY_FIELDS))
        from tune_ph.data.sources import load_for
        from tune_ph.data.split import split_samples

        df = load_for(cfg)
        split = split_samples(
            df,
            seed=cfg.split_seed,
            test_fraction=cfg.test_fraction,
            val_fraction=cfg.val_fraction,
            by=cfg.split_by,
        )
        counts = df["environment"].value_counts()
        print(f"{len(df)} samples, {df['study_name'].nunique()} studies, {len(counts)} environments")
        if "counts" in df.columns:  # a feature table: distinct sequences, each with its reads
            distinct = len({r for reads in df["sequences"] for r in reads})
            reads = int(df["counts"].map(sum).sum())
            print(f"{distinct:,} distinct sequences, {reads:,} reads (each sequence is embedded once)")
        print("environments: " + ", ".join(f"{env} {n}" for env, n in counts.items()))
        print("split: " + ", ".join(f"{name} {len(ids)}" for name, ids in split.items()))
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""`python -m tune_ph export`: an experiment's best trial -> best/, its test evaluation, report.html."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

# Libraries that take seconds to import (torch, pandas, scikit-learn, Ray) are imported in _main once the flags
# are known to be usable: --help and every error the flags alone show answer in a moment.
from tune_ph import cli, config, files
from tune_ph.baseline.reference import Comparison
from tune_ph.metrics import METRIC_MODES


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tune_ph export`: exit code 0, 1 (runtime failure), 2 (bad input) or 130 (interrupted)."""
    return cli.run(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tune_ph export",
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
    config.add_arguments(p, only=("device", "taxonomy"))  # the same flags and rules as training's
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--no-baseline", action="store_true", help="skip the comparison with the baseline chosen on val")
    args = p.parse_args(argv)
    config.check_field("device", args.device)

    from tune_ph.report import results
    from tune_ph.report.export import export_best, write_report

    folder = Path(args.experiment)
    saved = results.saved_search(folder)
    metric = args.metric or saved.search.metric
    path = results.experiment_path(folder, args.storage_path or saved.storage)
    table = results.write_trials_table(path, folder, metric)
    results.print_summary(table, metric)
    test = export_best(
        path, folder, metric, device=args.device, with_baseline=not args.no_baseline, taxonomy=args.taxonomy
    )
    print(
        f"exported to {folder / files.BEST_DIR}: "
        + ", ".join(f"{k} {v:.3f}" for k, v in test.items() if isinstance(v, float))
    )
    comparison = Comparison.from_dict(test.get("vs_baseline"))
    if comparison is not None:
        print(f"  {comparison.line()}")
    if not args.no_report:
        written = write_report(path, folder, metric, with_baseline=not args.no_baseline)
        if written:
            print(f"report: {written}")
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

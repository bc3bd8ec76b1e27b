"""`python -m tune_ph evaluate`: re-run the test evaluation of a saved checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tune_ph import cli, config


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tune_ph evaluate`: exit code 0, 1 (runtime failure), 2 (bad input) or 130 (interrupted)."""
    return cli.run(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tune_ph evaluate",
        description="Re-run the test evaluation of a training run from its checkpoint and saved config.",
    )
    p.add_argument("--checkpoint", required=True, help="RUN/best_model.pt")
    p.add_argument("--dataset", default=None, help="override the dataset source stored in the checkpoint")
    p.add_argument("--output-dir", default=None, help="where to write the outputs (default: the checkpoint's folder)")
    config.add_arguments(p, only=("device",))  # the same flag and rule as training's
    args = p.parse_args(argv)
    config.check_field("device", args.device)
    from tune_ph.baseline.reference import load_saved  # torch and the data libraries: after the flags
    from tune_ph.report.evaluate import evaluate_checkpoint

    # The baseline the run or search saved (a run folder's, or the experiment's above best/): compared again.
    folder = Path(args.checkpoint).parent
    baseline = None if args.dataset else load_saved(folder) or load_saved(folder.parent)
    metrics = evaluate_checkpoint(
        args.checkpoint, dataset=args.dataset, output_dir=args.output_dir, device=args.device, baseline=baseline
    )
    print(json.dumps(metrics, indent=2))
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

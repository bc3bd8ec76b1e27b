"""`python -m tune_ph pretrain`: flags -> PretrainConfig -> next-token pretraining of the backbone."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

# Libraries that take seconds to import (torch, pandas, scikit-learn, Ray) are imported in _main once the flags
# are known to be usable: --help and every error the flags alone show answer in a moment.
from tune_ph import cli
from tune_ph.training import pretrain_config
from tune_ph.training.pretrain_config import PretrainConfig

log = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tune_ph pretrain",
        description="Self-supervised next-token pretraining of HyenaDNA on the train split's reads; "
        "the output folder is a checkpoint that `python -m tune_ph train --model OUTPUT_DIR` fine-tunes.",
    )
    pretrain_config.add_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last state")
    p.add_argument(
        "--num-threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice; 1 is often faster on a busy machine)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tune_ph pretrain`: exit code 0, 1 (runtime failure), 2 (bad input) or 130 (interrupted)."""
    return cli.run(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    given = pretrain_config.given_fields(args)
    if not args.resume:  # a resumed run's flags are checked against its saved settings, after the imports
        PretrainConfig.from_dict(given)

    import torch

    from tune_ph.model.regressor import resolve_device
    from tune_ph.training.pretrain import pretrain, saved_config

    # A resumed run's settings are its own; flags given with --resume must agree (pretrain() checks).
    base = saved_config(Path(given["output_dir"])) if args.resume else {}
    cfg = PretrainConfig.from_dict({**base, **given})
    resolve_device(cfg.device)  # e.g. cuda on a machine without one: refused before anything is built or written
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    result = pretrain(cfg, resume=args.resume)
    evals = [e["eval_loss"] for e in result.history["eval"] if e["eval_loss"] is not None]
    log.info(
        "done: %d steps, last eval_loss %s; fine-tune it with: python -m tune_ph train --model %s",
        result.steps,
        f"{evals[-1]:.4f}" if evals else "n/a",
        result.output_dir,
    )
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""`python -m tune_ph train`: flags -> TrainConfig -> a run folder: fit, test evaluation, k-mer baseline."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Libraries that take seconds to import (torch, pandas, scikit-learn, Ray) are imported in _main once the flags
# are known to be usable: --help and every error the flags alone show answer in a moment.
from tune_ph import cli, config, files
from tune_ph.config import TrainConfig
from tune_ph.data.taxonomy import load_taxonomy
from tune_ph.files import write_json
from tune_ph.metrics import EPOCH, TEST_MAE, TEST_N_SAMPLES, TEST_R2, TEST_R2_CI95, TEST_RMSE, VAL_LOSS

if TYPE_CHECKING:
    from tune_ph.baseline.reference import Reference
    from tune_ph.data.tokens import TokenizedDataset
    from tune_ph.model.checkpoint import Checkpoint
    from tune_ph.model.regressor import PhRegressor

log = logging.getLogger(__name__)


class RunFolder:
    """The train command's sink for training.run: the run folder's records before the first epoch (split, resolved
    config, environment, the baseline beside it), then training_log.json and the best epoch's checkpoint."""

    def __init__(self, out: Path, with_baseline: bool) -> None:
        self.out, self.with_baseline = out, with_baseline
        self.reference: Reference | None = None
        self.history: list[dict[str, Any]] = []

    def start(self, cfg: TrainConfig, dataset: TokenizedDataset, model: PhRegressor | None) -> None:
        from tune_ph.baseline import reference as baselines
        from tune_ph.data.split import SplitRecord
        from tune_ph.training import environment

        out = self.out
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / files.SPLIT_FILE, SplitRecord.of_dataset(dataset, cfg).to_dict())
        backbone = model.backbone.config.to_dict() if model is not None else None
        write_json(out / files.RUN_CONFIG_FILE, {"train_config": cfg.to_dict(), "model_config": backbone})
        environment.write(out, seed=cfg.seed, split_seed=cfg.split_seed)  # what else decides the numbers
        splits = ("train", "val", "test")
        sizes = [(len(dataset.sample_indices(name)), len(dataset.set_indices(name))) for name in splits]
        log.info(
            "run folder %s; samples (read sets of %d tokens): %s",
            out,
            dataset.max_length,
            ", ".join(f"{n} {name} ({k})" for name, (n, k) in zip(splits, sizes)),
        )
        self.reference = baselines.reference_baseline(cfg) if self.with_baseline else None  # cached; failure: a warning
        if self.reference is not None:
            write_json(out / files.BASELINE_FILE, self.reference.to_dict())  # evaluate compares with it again
            log.info("%s", baselines.baseline_line(self.reference))

    def report(self, metrics: dict[str, Any], checkpoint_fn: Callable[[], Checkpoint]) -> None:
        self.history.append(metrics)
        write_json(self.out / files.LOG_FILE, self.history)
        checkpoint = checkpoint_fn()
        if checkpoint.best_epoch == metrics[EPOCH]:
            checkpoint.save(self.out / files.MODEL_FILE)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tune_ph train",
        description="Fine-tune HyenaDNA + a regression head to predict pH; writes a run folder and tests it.",
    )
    config.add_arguments(p)
    p.add_argument(
        "--num-threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice; 1 is often faster on a busy machine)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-baseline", action="store_true", help="skip the k-mer baseline (same split) beside the model")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tune_ph train`: exit code 0, 1 (runtime failure), 2 (bad input) or 130 (interrupted)."""
    return cli.run(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    cfg = TrainConfig(**config.given_fields(args))
    if cfg.taxonomy:  # read by the test evaluation at the end: a bad table fails before training
        load_taxonomy(cfg.taxonomy)

    import torch

    from tune_ph.baseline import reference as baselines
    from tune_ph.model.regressor import resolve_device
    from tune_ph.report.evaluate import evaluate_checkpoint
    from tune_ph.training.run import run

    resolve_device(cfg.device)  # e.g. cuda on a machine without one: refused before anything is built or written
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    out = Path(cfg.output_dir or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    cfg = replace(cfg, output_dir=str(out))
    # run() builds the backbone before the data: a missing pretrained checkpoint fails before minutes of tokenizing.
    sink = RunFolder(out, with_baseline=not args.no_baseline)
    done = run(cfg, sink, progress=not args.no_progress)
    result, dataset, reference = done.fit, done.dataset, sink.reference
    log.info(
        "best epoch %d (val_loss %.4f); evaluating on the test split",
        result.best_epoch,
        result.history[result.best_epoch - 1][VAL_LOSS] if result.history else float("nan"),
    )
    metrics = evaluate_checkpoint(
        out / files.MODEL_FILE, dataset=dataset, output_dir=out, device=cfg.device, baseline=reference
    )
    log.info(
        "test: R² %s  RMSE %.3f  MAE %.3f  (%d samples) -> %s",
        baselines.with_interval(metrics[TEST_R2], metrics.get(TEST_R2_CI95)),
        metrics[TEST_RMSE],
        metrics[TEST_MAE],
        metrics[TEST_N_SAMPLES],
        out,
    )
    if reference is not None:
        metrics["baseline"] = reference.summary()
        write_json(out / files.METRICS_FILE, metrics)
        comparison = baselines.Comparison.from_dict(metrics.get("vs_baseline"))
        log.info("%s", comparison.line() if comparison else baselines.baseline_line(reference))
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""CLI: a YAML search space -> Ray Tune (Optuna TPE + ASHA) over train.fit -> trials.csv, best/ export, report."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from tune_ph.space import SearchSpec, SpaceError, apply_overrides, load_space, parse_space

log = logging.getLogger("tune_ph.search")

SETTINGS_FILE = "search_settings.json"
STORAGE_KEY = "_storage"  # in SETTINGS_FILE: the --storage the experiment was started with
STUDY_FILE = "optuna_study.db"
class SetupError(RuntimeError):
    """Ray cannot be started the way the command line asks."""


KEEP_CHECKPOINTS = 2  # per trial: the best by val_loss (Tune also always keeps the latest for resuming)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tune_ph.search",
        description="Search fine-tuning settings with Ray Tune (Optuna TPE + ASHA); export and test the best trial.",
    )
    p.add_argument("--space", help="search-space YAML (see search_spaces/); not needed with --resume")
    p.add_argument("--name", help="experiment name (default: the YAML's name or file stem)")
    p.add_argument("--output", default="experiments", help="folder holding experiment folders (default: %(default)s)")
    p.add_argument("--storage", help="shared path or pyarrow URI (s3://, gs://, ...) for Ray's trial results and "
                                     "checkpoints, reachable from every node (default: --output)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted experiment of this name")
    p.add_argument("--retry-errored", action="store_true", help="with --resume: also rerun trials that failed")
    # Overrides of the YAML's settings.
    p.add_argument("--dataset", help="dataset source (overrides fixed.dataset)")
    p.add_argument("--epochs", type=int, help="overrides fixed.epochs (and scheduler.max_epochs)")
    p.add_argument("--num-samples", type=int, help="number of trials (overrides search.num_samples)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (overrides search.max_concurrent)")
    p.add_argument("--seed", type=int, help="TPE seed (overrides search.seed)")
    p.add_argument("--cpus-per-trial", type=float, help="overrides resources.cpus_per_trial")
    p.add_argument("--gpus-per-trial", type=float, help="GPU share per trial, e.g. 0.25 (overrides resources)")
    p.add_argument("--device", help="training device for every trial (auto, cpu, cuda)")
    # Cluster and dashboard.
    p.add_argument("--address", help="join an existing Ray cluster (e.g. 'auto' or HEAD_IP:6379)")
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard (127.0.0.1, token auth)")
    p.add_argument("--dashboard-host", help="serve the dashboard on this interface instead of 127.0.0.1 "
                                            "(reachable from other machines; use with care)")
    p.add_argument("--dashboard-port", type=int, default=8265)
    p.add_argument("--no-export", action="store_true", help="skip the final export and test evaluation")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2), help="Tune's console output level")
    return p.parse_args(argv)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "dataset": args.dataset, "epochs": args.epochs, "num_samples": args.num_samples,
        "max_concurrent": args.max_concurrent, "seed": args.seed, "cpus_per_trial": args.cpus_per_trial,
        "gpus_per_trial": args.gpus_per_trial, "device": args.device,
    }  # fmt: skip


def load_spec(args: argparse.Namespace) -> tuple[SearchSpec, Path]:
    """The validated settings and the local experiment folder; on --resume, the settings saved with it."""
    if args.resume:
        name = args.name or (load_space(args.space).name if args.space else None)
        if not name:
            raise SpaceError("--resume needs --name (or --space) to find the experiment")
        folder = Path(args.output) / name
        saved = folder / SETTINGS_FILE
        if not saved.is_file():
            raise SpaceError(f"{folder}: no {SETTINGS_FILE} here, so there is nothing to resume; "
                             "run without --resume to start it")
        settings = json.loads(saved.read_text())
        storage = settings.pop(STORAGE_KEY, None)
        spec = parse_space(settings, str(saved))
        if storage and not args.storage:
            args.storage = storage
        return spec, folder
    if not args.space:
        raise SpaceError("--space is required (e.g. --space search_spaces/quick.yaml)")
    spec = load_space(args.space)
    if args.name:
        spec.name = args.name
    spec = apply_overrides(spec, _overrides(args))
    return spec, Path(args.output) / spec.name


def base_train_config(spec: SearchSpec, model: str | None = None) -> Any:
    """A TrainConfig with the fixed settings (data options decide the split and tokens)."""
    from tune_ph.trainable import train_config_dict
    from tune_ph.train import TrainConfig

    values = train_config_dict(spec.param_space())
    if model:
        values["model"] = model
    values.pop("max_length", None)
    return TrainConfig.from_dict(values)


def check_pretrained(spec: SearchSpec) -> None:
    """Fetch (or find in the cache) every pretrained backbone the search may use, before any trial starts.

    Failing here takes seconds; failing in every trial would take a whole search. It also means trials on
    this node read the weights from the local cache instead of all downloading them at once.
    """
    if "from_scratch" in spec.params:
        scratch = spec.params["from_scratch"].args
    else:
        scratch = [spec.fixed.get("from_scratch", False)]
    if all(scratch) or spec.fixed.get("model_config"):
        return
    from hyena_dna.pretrained import resolve_checkpoint_dir

    for model in spec.model_choices():
        resolve_checkpoint_dir(model)


def prepare_datasets(spec: SearchSpec) -> dict[int, Any]:
    """Load and tokenize the dataset once per distinct max length, on the driver."""
    from tune_ph.train import load_dataset

    cfg = base_train_config(spec)
    out = {}
    for length in spec.max_lengths():
        started = time.perf_counter()
        out[length] = load_dataset(cfg, length)
        log.info("dataset %s tokenized for max_length %d in %.1fs", cfg.dataset, length, time.perf_counter() - started)
    return out


def init_ray(args: argparse.Namespace) -> bool:
    """Start (or join) Ray; returns True when this process started it and should shut it down."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": True, "logging_level": logging.WARNING}
    if args.address:
        ctx = ray.init(address=args.address, **kwargs)
        _print_dashboard(ctx)
        return True
    dashboard = bool(args.dashboard or args.dashboard_host)
    if dashboard:
        try:
            missing = ray._private.utils.get_dashboard_dependency_error()
        except AttributeError:  # a Ray without this check: let ray.init report it
            missing = None
        if missing:
            raise SetupError(f"--dashboard needs Ray's dashboard packages ({missing}); install them with "
                             "pip install 'ray[default]', or run without --dashboard")
    host = "127.0.0.1"
    if args.dashboard_host:
        host = args.dashboard_host
        print(f"WARNING: the Ray dashboard will listen on {host}:{args.dashboard_port}; anyone who can reach it "
              "and holds the token can run code on this machine. Keep token authentication on and prefer an "
              "SSH tunnel to 127.0.0.1.", file=sys.stderr)
    ctx = ray.init(
        address="local",
        include_dashboard=dashboard,
        dashboard_host=host,
        dashboard_port=args.dashboard_port,
        # A single-machine search needs no outside connections: keep Ray's services on loopback.
        _node_ip_address="127.0.0.1",
        **kwargs,
    )
    if dashboard:
        _print_dashboard(ctx)
    return True


def _print_dashboard(ctx: Any) -> None:
    url = getattr(ctx, "dashboard_url", None)
    if not url:
        return
    if not url.startswith("http"):
        url = "http://" + url
    mode = os.environ.get("RAY_AUTH_MODE", "token")
    if mode.lower() == "token":
        how = ("token authentication is on: the dashboard asks for the token; print it with `ray get-auth-token` "
               "(kept in ~/.ray/auth_token unless $RAY_AUTH_TOKEN or $RAY_AUTH_TOKEN_PATH says otherwise)")
    else:
        how = (f"RAY_AUTH_MODE={mode} in your environment: the dashboard is NOT protected by a token; unset it "
               "to get Ray's token authentication back")
    print(f"Ray dashboard: {url}\n  {how}")


def make_trainable(spec: SearchSpec, datasets: dict[int, Any]) -> Any:
    """train_trial with the datasets in the object store (once) and per-trial resources."""
    from ray import tune

    from tune_ph.trainable import train_trial

    gpus = spec.resources["gpus_per_trial"]
    cpus = spec.resources["cpus_per_trial"]
    trainable = tune.with_parameters(train_trial, datasets=datasets, gpus_per_trial=gpus)
    if isinstance(gpus, dict):
        default = next(iter(gpus.values()))

        def resources(config: dict[str, Any]) -> dict[str, float]:
            return {"cpu": cpus, "gpu": gpus.get(config.get("model"), default)}

        return tune.with_resources(trainable, resources)
    return tune.with_resources(trainable, {"cpu": cpus, "gpu": gpus})


def make_tuner(spec: SearchSpec, trainable: Any, folder: Path, storage: str | None, verbose: int,
               callbacks: list | None = None) -> Any:
    """A fresh Tuner: OptunaSearch (seeded TPE, study in SQLite) + ASHA on val_loss."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from tune_ph.space import OptunaSpace

    metric = spec.search["metric"]
    seed = spec.search["seed"]
    n_startup = max(2, min(10, spec.search["num_samples"] // 3))
    study = optuna.storages.RDBStorage(f"sqlite:///{(folder / STUDY_FILE).resolve()}")
    searcher = OptunaSearch(
        space=OptunaSpace(spec.params),
        # TPE learns from each trial's best epoch, the value selection uses too.
        metric=f"best_{metric}" if metric == "val_loss" else metric,
        mode="min",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup),
        storage=study,
        study_name=spec.name,
    )
    max_epochs = spec.scheduler.get("max_epochs", spec.fixed.get("epochs", 10))
    scheduler = ASHAScheduler(
        metric="val_loss", mode="min", time_attr="training_iteration", max_t=max_epochs,
        grace_period=spec.scheduler.get("grace_period", 1),
        reduction_factor=spec.scheduler.get("reduction_factor", 2),
    )  # fmt: skip
    return tune.Tuner(
        trainable,
        param_space=spec.param_space(),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=spec.search["num_samples"],
            max_concurrent_trials=spec.search["max_concurrent"],
            # Trials of one search share imports and CUDA context; each still builds its own model from config.
            reuse_actors=True,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=run_config(spec, folder, storage, verbose, callbacks),
    )


def trial_name(trial: Any) -> str:
    """Short trial folder names (Tune's default packs the whole config into the path)."""
    return f"trial_{trial.trial_id}"


def run_config(spec: SearchSpec, folder: Path, storage: str | None, verbose: int, callbacks: list | None = None) -> Any:
    from ray import tune

    return tune.RunConfig(
        name=spec.name,
        storage_path=storage or str(folder.parent.resolve()),
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=KEEP_CHECKPOINTS, checkpoint_score_attribute="val_loss", checkpoint_score_order="min"
        ),
        # A failing trial (OOM, NaN loss, exception) is recorded with its error; the others go on.
        failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        verbose=verbose,
        callbacks=callbacks,
    )


def experiment_path(folder: Path, storage: str | None, name: str) -> str:
    """Where Ray keeps the experiment (trial folders, experiment state)."""
    if storage:
        return storage.rstrip("/") + "/" + name
    return str(folder.resolve())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        spec, folder = load_spec(args)
    except SpaceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from ray import tune

    storage = args.storage
    if storage and "://" not in storage:
        storage = args.storage = str(Path(storage).expanduser().resolve())
    path = experiment_path(folder, storage, spec.name)
    started_before = tune.Tuner.can_restore(path)
    if not args.resume and started_before:
        print(f"error: experiment {path} already exists; continue it with --resume, or pick another --name",
              file=sys.stderr)
        return 2
    if args.resume and any(v is not None for v in _overrides(args).values()):
        print("note: with --resume the experiment keeps the settings it was started with; overrides are ignored")
    folder.mkdir(parents=True, exist_ok=True)
    settings = spec.to_dict()
    if storage:
        settings[STORAGE_KEY] = storage
    if not args.resume or not (folder / SETTINGS_FILE).exists():
        (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")

    # Short epochs make Tune snapshot often (num_to_keep forces it); that is expected here, not a problem.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    try:
        check_pretrained(spec)
    except OSError as err:  # hyena_dna.PretrainedNotFoundError: the message says how to get the weights
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        shutdown = init_ray(args)
    except SetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        started = time.perf_counter()
        datasets = prepare_datasets(spec)
        setup_seconds = time.perf_counter() - started
        from tune_ph import export

        trainable = make_trainable(spec, datasets)
        if args.resume and not started_before:
            print(f"{path} has no trials yet; starting the search")
        if args.resume and started_before:
            print(f"resuming {path}")
            tuner = tune.Tuner.restore(
                path, trainable=trainable, resume_unfinished=True, resume_errored=args.retry_errored,
                restart_errored=False,
            )  # fmt: skip
        else:
            tuner = make_tuner(spec, trainable, folder, storage, args.verbose)
        grid = tuner.fit()
        table = export.write_trials_table(path, folder, metric=spec.search["metric"])
        export.print_summary(table, spec.search["metric"])
        print(f"dataset setup: {setup_seconds:.1f}s once for {len(table)} trial(s)")
        finished = (table["status"] == "TERMINATED").sum() + (table["status"] == "ERROR").sum()
        if finished < spec.search["num_samples"]:
            print(f"the search stopped early ({finished}/{spec.search['num_samples']} trials finished); continue it "
                  f"with the same command plus --resume, or export the best so far with "
                  f"`python -m tune_ph.export {folder}`")
            return 130 if len(grid) else 1
        if args.no_export:
            return 0
        try:
            metrics = export.export_best(path, folder, metric=spec.search["metric"], datasets=datasets)
        except RuntimeError as err:  # e.g. every trial failed: trials.csv says why
            print(f"error: {err}; see {folder / 'trials.csv'}", file=sys.stderr)
            return 1
        if metrics:
            print(f"best trial exported to {folder / 'best'}: test R² {metrics.get('test_r2', float('nan')):.3f}, "
                  f"RMSE {metrics.get('test_rmse', float('nan')):.3f}")
        export.write_report(path, folder)
        return 0
    finally:
        if shutdown:
            import ray

            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())

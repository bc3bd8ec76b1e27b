"""`python -m tune_ph.search`: a YAML space -> Ray Tune (Optuna TPE + ASHA) over train.fit -> export the best."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from hyena_dna.pretrained import resolve_checkpoint_dir
from tune_ph import (
    baseline,
    cli,
    cluster,
    config,
    console,
    data,
    environment,
    export,
    files,
    monitor,
    outcome,
    resources,
    results,
    tuner,
)
from tune_ph.config import TrainConfig
from tune_ph.errors import InputError, SpaceError
from tune_ph.files import write_csv, write_json
from tune_ph.runlock import ExperimentLock
from tune_ph.search_spec import values_of
from tune_ph.space import SearchSpec, apply_overrides, check_devices, check_name, load_space, parse_space
from tune_ph.space_params import Checker
from tune_ph.tokens import TokenizedDataset
from tune_ph.trainable import trial_threads

log = logging.getLogger("tune_ph.search")

# TrainConfig fields that have a command-line override here (the others are set in the YAML).
OVERRIDE_FIELDS = ("dataset", "model", "epochs", "device")
SECTION_OVERRIDES = ("num_samples", "max_concurrent", "seed", "cpus_per_trial", "gpus_per_trial")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tune_ph.search",
        description="Search fine-tuning settings with Ray Tune (Optuna TPE + ASHA); export and test the best trial.",
    )
    p.add_argument("--space", help="search-space YAML (see search_spaces/); not needed with --resume")
    p.add_argument("--name", help="experiment name (default: the YAML's name or file stem)")
    p.add_argument(
        "--output-dir", default="experiments", help="folder holding experiment folders (default: %(default)s)"
    )
    p.add_argument(
        "--storage",
        help="shared path or pyarrow URI (s3://, gs://, ...) for Ray's trial results and "
        "checkpoints, reachable from every node (default: --output-dir)",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted experiment of this name")
    p.add_argument("--retry-errored", action="store_true", help="with --resume: also rerun trials that failed")
    overrides = p.add_argument_group("overrides of the YAML (fixed TrainConfig values)")
    config.add_arguments(overrides, only=OVERRIDE_FIELDS, overrides=True)
    overrides.add_argument("--num-samples", type=int, help="number of trials (search.num_samples)")
    overrides.add_argument("--max-concurrent", type=int, help="trials at once (search.max_concurrent)")
    overrides.add_argument("--seed", type=int, help="TPE seed (search.seed)")
    overrides.add_argument("--cpus-per-trial", type=float, help="resources.cpus_per_trial")
    overrides.add_argument("--gpus-per-trial", type=float, help="GPU share per trial, e.g. 0.25 (resources)")
    ray_group = p.add_argument_group("cluster and dashboard")
    ray_group.add_argument("--address", help="join an existing Ray cluster (e.g. 'auto' or HEAD_IP:6379)")
    ray_group.add_argument(
        "--dashboard",
        action="store_true",
        help="start Ray's cluster dashboard (127.0.0.1, token auth): nodes, workers, logs; the trials and their "
        "metrics are in --optuna-dashboard and TensorBoard",
    )
    ray_group.add_argument(
        "--dashboard-host",
        help="serve the dashboard on this interface instead of 127.0.0.1 "
        "(reachable from other machines; use with care)",
    )
    ray_group.add_argument("--dashboard-port", type=int, default=8265)
    watch = p.add_argument_group("watching the search")
    watch.add_argument(
        "--optuna-dashboard",
        nargs="?",
        type=int,
        const=monitor.DEFAULT_PORT,
        metavar="PORT",
        help=f"serve optuna-dashboard on the search's Optuna study at http://127.0.0.1:PORT (default "
        f"{monitor.DEFAULT_PORT}; 0 picks a free port) until the search ends; needs {monitor.MONITOR_HINT}",
    )
    ray_group.add_argument(
        "--allow-no-auth",
        action="store_true",
        help="allow --address or a non-loopback --dashboard-host without Ray's token "
        "authentication (only on a network you fully trust)",
    )
    p.add_argument("--no-export", action="store_true", help="skip the final export and test evaluation")
    p.add_argument("--no-baseline", action="store_true", help="skip the k-mer baseline (same split) beside the best")
    p.add_argument(
        "--verbose",
        type=int,
        default=1,
        choices=(0, 1, 2),
        help="console: 0 quiet, 1 status table and a line per trial event (default), 2 also every result",
    )
    return p.parse_args(argv)


def overrides_of(args: argparse.Namespace) -> dict[str, Any]:
    """The YAML overrides given on the command line (None = not given)."""
    values = config.given_fields(args, OVERRIDE_FIELDS)
    values.update({k: getattr(args, k) for k in SECTION_OVERRIDES if getattr(args, k) is not None})
    return values


def load_spec(
    space: str | None, name: str | None, output_dir: Path, resume: bool, overrides: dict[str, Any]
) -> tuple[SearchSpec, Path, str | None]:
    """The validated settings, the local experiment folder and the --storage it was started with.

    On --resume, the settings saved with the experiment (overrides are not applied).
    """
    if resume:
        name = name or (load_space(space).name if space else None)
        if not name:
            raise SpaceError("--resume needs --name (or --space) to find the experiment")
        check_name(Checker("--resume"), "--name", name)  # `../x` would read and write outside --output-dir
        folder = output_dir / name
        settings = results.load_settings(folder)
        if not settings:
            raise SpaceError(
                f"{folder}: no {results.SETTINGS_FILE} here, so there is nothing to resume; "
                "run without --resume to start it"
            )
        storage = settings.pop(results.STORAGE_KEY, None)
        return parse_space(settings, str(folder / results.SETTINGS_FILE)), folder, storage
    if not space:
        raise SpaceError("--space is required (e.g. --space search_spaces/quick.yaml)")
    spec = load_space(space)
    spec = apply_overrides(spec, {**overrides, "name": name})
    return _absolute_paths(spec), output_dir / spec.name, None


def _absolute_paths(spec: SearchSpec) -> SearchSpec:
    """Local folders in the fixed settings made absolute: Ray runs each trial in a folder of its own, where
    `runs/pretrained` would name nothing."""
    for key in ("model", "dataset", "cache_dir"):
        value = spec.fixed.get(key)
        if isinstance(value, str) and (key == "cache_dir" or Path(value).expanduser().exists()):
            spec.fixed[key] = str(Path(value).expanduser().resolve())
    return spec


def check_pretrained(spec: SearchSpec) -> None:
    """Fetch (or find in the cache) every pretrained backbone the search may use, before any trial starts.

    Failing here takes seconds; failing in every trial would take a whole search. It also means trials on
    this node read the weights from the local cache instead of all downloading them at once.
    """
    if "from_scratch" in spec.params:
        param = spec.params["from_scratch"]
        entries = list(param.values.values()) if param.per else [param]
        scratch = [v for entry in entries for v in values_of(entry)]
    else:
        scratch = [spec.fixed.get("from_scratch", False)]
    if scratch and all(scratch):
        return
    for model in spec.model_choices():
        resolve_checkpoint_dir(model)


def prepare_datasets(spec: SearchSpec) -> dict[int, TokenizedDataset]:
    """Load and tokenize the dataset once per distinct max length, on the driver.

    Keyed by the length a trial asks for (its fixed max_length, else its model's maximum) and by the length the
    dataset got: a model's maximum is capped by the longest sample, so small-32k reads whole samples without
    tens of thousands of tokens of padding.
    """
    base = {k: v for k, v in spec.fixed.items() if k in config.field_names() and k != "max_length"}
    out: dict[int, TokenizedDataset] = {}
    for model in spec.model_choices():
        requested = spec.max_length_for(model)
        if requested in out:
            continue
        started = time.perf_counter()
        # The data fields of every trial are the same; only the length differs by model.
        cfg = TrainConfig.from_dict({**base, "model": model, "max_length": spec.fixed_length_for(model)})
        dataset = data.prepare_for(cfg, model_max_length=requested)
        out[requested] = out[dataset.max_length] = dataset
        log.info(
            "dataset %s tokenized in sets of %d tokens (for %s) in %.1fs",
            cfg.dataset,
            dataset.max_length,
            model,
            time.perf_counter() - started,
        )
    return out


def search_baseline(spec: SearchSpec, folder: Path) -> dict[str, Any]:
    """The k-mer baseline on every trial's data and split (cached; a failure is a warning), saved in the folder."""
    base = {k: v for k, v in spec.fixed.items() if k in config.field_names() and k != "max_length"}
    found = baseline.reference_baseline(TrainConfig.from_dict({**base, "model": spec.model_choices()[0]}))
    write_json(folder / files.BASELINE_FILE, found)
    return found


def run_search(
    spec: SearchSpec,
    folder: Path,
    *,
    storage: str | None = None,
    resume: bool = False,
    retry_errored: bool = False,
    export_best: bool = True,
    verbose: int = 1,
    dashboard: monitor.StudyDashboard | None = None,
    datasets: dict[int, TokenizedDataset] | None = None,
    setup_seconds: float = 0.0,
    reference: dict[str, Any] | None = None,
) -> int:
    """Run (or resume) the search in a started Ray, write trials.csv, export and test the best trial.

    `dashboard` (bound, not yet serving) starts serving once the tuner has created the Optuna study.
    datasets: prepare_datasets(spec), when the caller made them already (and took setup_seconds doing so).
    reference: search_baseline(spec, folder), shown at the start, beside the best so far and in the summary.
    """
    path = results.experiment_path(folder, storage)
    started_before = _refuse_existing(path, resume)
    metric = spec.search["metric"]
    if datasets is None:
        started = time.perf_counter()
        datasets = prepare_datasets(spec)
        setup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    vectors = tuner.shared_vectors(spec, datasets)  # frozen trials then never run the backbone
    setup_seconds += time.perf_counter() - started
    trainable = tuner.make_trainable(spec, datasets, vectors)
    if resume and started_before:
        print(f"resuming {path}")
        runner = tune.Tuner.restore(
            path, trainable=trainable, resume_unfinished=True, resume_errored=retry_errored, restart_errored=False
        )
    else:
        if resume:
            print(f"{path} has no trials yet; starting the search")
        runner = tuner.make_tuner(spec, trainable, folder, storage, verbose)
    logdir = console.logdir_of(folder, storage)
    if dashboard is not None:
        dashboard.start()
    if verbose:
        line = baseline.baseline_line(reference) if reference else None
        console.print_start(folder, logdir, spec.search["num_samples"], dashboard.url if dashboard else None, line)
    with console.ray_console(verbose), console.beside_best(reference):
        grid = runner.fit()
    # Statuses from Ray's saved state, corrected by what fit() returned here (a worker that died is ERROR).
    trials = results.Experiment(path).trials()
    table = outcome.settle(results.trials_table(trials, metric, spec.scheduler["max_epochs"]), grid)
    write_csv(folder / results.TRIALS_FILE, table)
    outcome.tell_study(folder, spec.name, path, metric)
    results.print_summary(table, metric)
    if reference:
        print(baseline.baseline_line(reference))
    print(f"dataset setup: {setup_seconds:.1f}s once for {len(table)} trial(s)")
    code = outcome.exit_code(table, spec.search["num_samples"], any_results=len(grid) > 0)
    if code != cli.EXIT_OK:
        finished = int(table["status"].isin(outcome.DONE).sum())
        print(
            f"the search stopped early ({finished}/{spec.search['num_samples']} trials finished); continue it "
            "or export the best trial so far with the commands below"
        )
        console.print_outputs(folder, logdir, metric, finished=False, exported=False)
        return code
    if not export_best:
        console.print_outputs(folder, logdir, metric, finished=True, exported=False)
        return cli.EXIT_OK
    try:
        metrics = export.export_best(path, folder, metric=metric, datasets=datasets)
    except RuntimeError as err:  # e.g. every trial failed: trials.csv says why
        raise RuntimeError(f"{err}; see {folder / results.TRIALS_FILE}") from None
    print(
        f"best trial exported to {folder / results.BEST_DIR}: test R² {metrics['test_r2']:.3f}, "
        f"RMSE {metrics['test_rmse']:.3f}"
    )
    beside = baseline.versus(metrics["test_r2"], reference)
    if beside:
        print(f"  {beside}")
    export.write_report(path, folder, metric)
    console.print_outputs(folder, logdir, metric, finished=True, exported=True)
    return cli.EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tune_ph.search`: exit code 0, 1 (runtime failure), 2 (bad input) or 130 (interrupted)."""
    return cli.run(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    if args.optuna_dashboard is not None:  # a missing extra stops here, before anything is written or started
        monitor.require_dashboard("--optuna-dashboard")
        monitor.check_port(args.optuna_dashboard, "--optuna-dashboard")
    overrides = overrides_of(args)
    spec, folder, saved_storage = load_spec(args.space, args.name, Path(args.output_dir), args.resume, overrides)
    storage = args.storage or saved_storage
    if storage and "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    if args.resume and overrides:
        print("note: with --resume the experiment keeps the settings it was started with; overrides are ignored")
    requests = resources.trial_requests(
        spec.resources["cpus_per_trial"], spec.resources["gpus_per_trial"], spec.model_choices()
    )
    if not args.address:  # a Ray started here: check this machine now, before weights are fetched or Ray starts
        check_devices(spec, torch.cuda.device_count())
        resources.preflight_local(requests)
    # One search per experiment folder: a second one of the same name stops here (exit 2), naming the first.
    with ExperimentLock(folder):
        return _locked_main(args, spec, folder, storage, requests)


def _refuse_existing(path: str, resume: bool) -> bool:
    """Whether Ray has started this experiment before; without --resume that is an error (it would mix in)."""
    started_before = tune.Tuner.can_restore(path)
    if started_before and not resume:
        raise SpaceError(f"experiment {path} already exists; continue it with --resume, or pick another --name")
    return started_before


def _locked_main(
    args: argparse.Namespace, spec: SearchSpec, folder: Path, storage: str | None, requests: dict[str, Any]
) -> int:
    """The search, once this process holds the experiment folder's lock: data first, then files, then Ray."""
    _refuse_existing(results.experiment_path(folder, storage), args.resume)  # before anything is written
    check_pretrained(spec)
    # Before anything is written or Ray starts: a dataset that cannot be used costs seconds and leaves nothing.
    started = time.perf_counter()
    datasets = prepare_datasets(spec)
    setup_seconds = time.perf_counter() - started
    settings = spec.to_dict()
    if storage:
        settings[results.STORAGE_KEY] = storage
    if not args.resume:  # a resumed search keeps the settings it started with (load_spec read them)
        results.save_settings(folder, settings)
    _record_environment(spec, folder)
    reference = None if args.no_baseline else search_baseline(spec, folder)  # once, before any trial
    # Short epochs make Tune snapshot often (num_to_keep forces it); that is expected here, not a problem.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    console.quiet_ray_hints()  # before Ray starts: its token warning is logged by ray.init
    dashboard = None
    if args.optuna_dashboard is not None:  # bound now, so a port in use fails before Ray starts
        dashboard = monitor.StudyDashboard(folder / results.STUDY_FILE, args.optuna_dashboard, "--optuna-dashboard")
    shutdown = False
    session = None
    keep_logs = True
    try:
        shutdown = cluster.init_ray(
            address=args.address,
            dashboard=args.dashboard,
            dashboard_host=args.dashboard_host,
            dashboard_port=args.dashboard_port,
            allow_no_auth=args.allow_no_auth,
        )
        session = cluster.session_dir() if shutdown and not args.address else None  # ours alone: removed at the end
        resources.preflight(requests)  # the cluster actually running (a joined one, or a Ray this process found)
        code = run_search(
            spec,
            folder,
            storage=storage,
            resume=args.resume,
            retry_errored=args.retry_errored,
            export_best=not args.no_export,
            verbose=args.verbose,
            dashboard=dashboard,
            datasets=datasets,
            setup_seconds=setup_seconds,
            reference=reference,
        )
        keep_logs = False
        return code
    except (InputError, KeyboardInterrupt):
        keep_logs = False  # Ray's logs say nothing about bad input or Ctrl-C
        raise
    finally:
        if dashboard is not None:
            dashboard.stop()
        if shutdown:
            ray.shutdown()
        if session is not None:
            cluster.remove_session_dir(session, keep=keep_logs)


def _record_environment(spec: SearchSpec, folder: Path) -> None:
    """environment.json: what decides the numbers besides the settings, so two results can be compared."""
    cpus = spec.resources["cpus_per_trial"]
    environment.record(
        folder,
        search_seed=spec.search["seed"],
        training_seed=spec.fixed.get("seed", "searched" if "seed" in spec.params else TrainConfig().seed),
        # Every trial's torch threads (from cpus_per_trial): the float reduction order of its training follows it.
        trial_threads=trial_threads(cpus),
    )


if __name__ == "__main__":
    sys.exit(main())

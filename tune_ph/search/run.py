"""`python -m tune_ph.search`: a YAML space -> Ray Tune (Optuna TPE + ASHA) over train.fit -> export the best."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from hyena_dna.pretrained import PretrainedNotFoundError, resolve_checkpoint_dir
from tune_ph import cli, files
from tune_ph.baseline import reference as baselines
from tune_ph.config import TrainConfig
from tune_ph.data import sources
from tune_ph.data.tokens import TokenizedDataset
from tune_ph.errors import InputError, ResourceError, RunFailure, SpaceError
from tune_ph.files import write_csv, write_json
from tune_ph.report import export, monitor, results
from tune_ph.search import cluster, console, origin, outcome, resources, space, tuner
from tune_ph.search.runlock import ExperimentLock
from tune_ph.search.space import parse_space, resume_name, spec_from_flags
from tune_ph.search.spec import SearchSpec, values_of
from tune_ph.search.trainable import trial_threads
from tune_ph.search_settings import STORAGE_KEY, LaunchSettings
from tune_ph.training import environment

log = logging.getLogger(__name__)


def load_spec(
    space: str | None,
    name: str | None,
    output_dir: Path,
    resume: bool,
    overrides: dict[str, Any],
    loaded: SearchSpec | None = None,
) -> tuple[SearchSpec, Path, str | None]:
    """The validated settings, the local experiment folder and the --storage it was started with.

    On --resume, the settings saved with the experiment (overrides are not applied). loaded: what
    spec_from_flags(space, name, overrides) returned already for a new search.
    """
    if resume:
        folder = output_dir / resume_name(space, name)
        settings = results.load_settings(folder)
        if not settings:
            raise SpaceError(
                f"{folder}: no {results.SETTINGS_FILE} here, so there is nothing to resume; "
                "run without --resume to start it"
            )
        storage = settings.pop(STORAGE_KEY, None)
        return parse_space(settings, str(folder / results.SETTINGS_FILE)), folder, storage
    spec = loaded or spec_from_flags(space, name, overrides)
    return spec, output_dir / spec.name, None


def unused_experiment(spec: SearchSpec, folder: Path, storage: str | None) -> tuple[SearchSpec, Path]:
    """A rerun never touches an earlier experiment: when NAME holds one, this search is NAME-2 (then -3, ...)."""

    def taken(candidate: Path) -> bool:
        return (candidate / results.SETTINGS_FILE).exists() or tune.Tuner.can_restore(
            results.experiment_path(candidate, storage)
        )

    if not taken(folder):
        return spec, folder
    with ExperimentLock(folder):  # a search still running there is refused (BusyError names it), not sidestepped
        pass
    number = 2
    while taken(folder.with_name(f"{spec.name}-{number}")):
        number += 1
    fresh = folder.with_name(f"{spec.name}-{number}")
    # A finished search is complete: a rerun is a new experiment (README), and --resume would have nothing to do.
    if outcome.finished(folder):
        print(f"{folder} holds a finished search, left as it is; this one is a new experiment, {fresh}")
    else:
        print(f"{folder} holds an unfinished search (continue that one with --resume); this one is {fresh}")
    spec.name = fresh.name
    return spec, fresh


def pretrained_models(spec: SearchSpec) -> list[str]:
    """The models whose pretrained weights some trial loads (none when every trial trains from scratch)."""
    if "from_scratch" in spec.params:
        param = spec.params["from_scratch"]
        entries = list(param.values.values()) if param.per else [param]
        scratch = [v for entry in entries for v in values_of(entry)]
    else:
        scratch = [spec.fixed.get("from_scratch", False)]
    return [] if scratch and all(scratch) else spec.model_choices()


def check_pretrained(spec: SearchSpec) -> None:
    """Fetch (or find in the cache) every pretrained backbone the search may use, before any trial starts.

    Failing here takes seconds; failing in every trial would take a whole search. It also means trials on
    this node read the weights from the local cache instead of all downloading them at once.
    """
    for model in pretrained_models(spec):
        try:
            folder = resolve_checkpoint_dir(model)
        except PretrainedNotFoundError as err:
            if Path(model).expanduser().exists():  # a local folder: its own message names what it lacks
                raise
            cause = f", {type(err.__cause__).__name__}" if err.__cause__ is not None else ""
            why = f"neither the Hugging Face hub nor its local cache had them{cause}: offline?"
            raise RunFailure(space.lacking_message(spec, gpu=False, weights=[model], why=why)) from None
        files.check_pretrain_done(folder)  # an unfinished pretraining's weights: refused here, not in every trial


def uncached_pretrained(spec: SearchSpec) -> list[str]:
    """The hub models the search would have to download: neither a local folder nor in the hub's cache."""
    missing = []
    for model in pretrained_models(spec):
        if Path(model).expanduser().exists():
            continue
        try:
            resolve_checkpoint_dir(model, local_only=True)
        except PretrainedNotFoundError:
            missing.append(model)
    return missing


def check_this_machine(spec: SearchSpec, requests: dict[str, Any]) -> None:
    """For a Ray started here, before weights are fetched or Ray starts: the devices and the resources the trials
    ask for; a missing GPU is named together with missing weights, so that one message shows the offline route."""
    gpus = torch.cuda.device_count()
    space.check_devices(spec, gpus)
    try:
        resources.preflight_local(requests)
    except ResourceError:
        asks_gpu = any(ask.get("GPU", 0) > 0 for ask in requests.values())
        lacking = uncached_pretrained(spec) if gpus == 0 and asks_gpu else []
        if lacking:
            raise ResourceError(space.lacking_message(spec, gpu=True, weights=lacking)) from None
        raise


def prepare_datasets(spec: SearchSpec) -> dict[str, TokenizedDataset]:
    """Load and tokenize the dataset once per distinct max length, on the driver; keyed by model.

    The length a trial asks for is its fixed max_length, else its model's maximum, which the data caps by the
    longest sample (small-32k reads whole samples without tens of thousands of tokens of padding): the dataset's
    max_length is the trial's effective one.
    """
    out: dict[str, TokenizedDataset] = {}
    by_length: dict[int, TokenizedDataset] = {}
    for model in spec.model_choices():
        requested = spec.max_length_for(model)
        if requested in by_length:
            out[model] = by_length[requested]
            continue
        started = time.perf_counter()
        # The data fields of every trial are the same; only the length differs by model.
        cfg = spec.train_config(model)
        dataset = sources.prepare_for(cfg, model_max_length=requested)
        out[model] = by_length[requested] = dataset
        log.info(
            "dataset %s tokenized in sets of %d tokens (for %s) in %.1fs",
            cfg.dataset,
            dataset.max_length,
            model,
            time.perf_counter() - started,
        )
    return out


def search_baseline(spec: SearchSpec, folder: Path) -> baselines.Reference:
    """The baseline chosen on val on every trial's data and split (cached; a failure is a warning), saved in the
    folder."""
    found = baselines.reference_baseline(spec.train_config(spec.model_choices()[0]))
    write_json(folder / files.BASELINE_FILE, found.to_dict())
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
    datasets: dict[str, TokenizedDataset] | None = None,
    setup_seconds: float = 0.0,
    reference: baselines.Reference | None = None,
) -> int:
    """Run (or resume) the search in a started Ray, write trials.csv, export and test the best trial.

    `dashboard` (bound, not yet serving) starts serving once the tuner has created the Optuna study.
    datasets: prepare_datasets(spec), when the caller made them already (and took setup_seconds doing so).
    reference: search_baseline(spec, folder), shown at the start, beside the best so far and in the summary.
    """
    path = results.experiment_path(folder, storage)
    started_before = _refuse_existing(path, resume)
    metric = spec.search.metric
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
        tuner.bind_study(runner, folder)  # a resumed copy writes its own study, never the original's
    else:
        if resume:
            print(f"{path} has no trials yet; starting the search")
        runner = tuner.make_tuner(spec, trainable, folder, storage, verbose)
    logdir = console.logdir_of(folder, storage)
    if dashboard is not None:
        dashboard.start()
    if verbose:
        line = baselines.baseline_line(reference) if reference else None
        console.print_start(folder, logdir, spec.search.num_samples, dashboard.url if dashboard else None, line)
    with console.ray_console(verbose), console.beside_best(reference):
        grid = runner.fit()
    # Statuses from Ray's saved state, corrected by what fit() returned here (a worker that died is ERROR).
    trials = results.Experiment(path).trials()
    table = outcome.settle(results.trials_table(trials, metric, spec.scheduler.max_epochs), grid)
    write_csv(folder / results.TRIALS_FILE, table)
    outcome.tell_study(folder, spec.name, path, metric)
    results.print_summary(table, metric)
    print(f"dataset setup: {setup_seconds:.1f}s once for {len(table)} trial(s)")
    code = outcome.exit_code(table, spec.search.num_samples, any_results=len(grid) > 0)
    if reference and (code != cli.EXIT_OK or not export_best):  # no test metrics to set beside it
        print(f"{baselines.baseline_line(reference)} (the best trial's test metrics come from the export)")
    if code != cli.EXIT_OK:
        finished = int(table["status"].isin(outcome.DONE).sum())
        print(
            f"the search stopped early ({finished}/{spec.search.num_samples} trials finished); continue it "
            "or export the best trial so far with the commands below"
        )
        console.print_outputs(folder, logdir, metric, finished=False, exported=False)
        return code
    if not export_best:
        console.print_outputs(folder, logdir, metric, finished=True, exported=False)
        return cli.EXIT_OK
    try:
        metrics = export.export_best(path, folder, metric=metric, datasets=datasets, baseline=reference)
    except RunFailure as err:  # e.g. every trial failed: trials.csv says why
        raise RunFailure(f"{err}; see {folder / results.TRIALS_FILE}") from None
    print(f"best trial exported to {folder / files.BEST_DIR}")
    export.write_report(path, folder, metric)
    console.print_winner(folder, table, metric, metrics, reference)
    console.print_outputs(folder, logdir, metric, finished=True, exported=True)
    return cli.EXIT_OK


def _refuse_existing(path: str, resume: bool) -> bool:
    """Whether Ray has started this experiment before; without --resume that is an error (it would mix in)."""
    started_before = tune.Tuner.can_restore(path)
    if started_before and not resume:
        raise SpaceError(f"experiment {path} already exists; continue it with --resume, or pick another --name")
    return started_before


def locked_search(
    launch: LaunchSettings, spec: SearchSpec, folder: Path, storage: str | None, requests: dict[str, Any]
) -> int:
    """The search, once this process holds the experiment folder's lock: data first, then files, then Ray."""
    _refuse_existing(results.experiment_path(folder, storage), launch.resume)  # before anything is written
    check_pretrained(spec)
    # Before anything is written or Ray starts: a dataset that cannot be used costs seconds and leaves nothing.
    started = time.perf_counter()
    datasets = prepare_datasets(spec)
    setup_seconds = time.perf_counter() - started
    settings = spec.to_dict()
    if storage:
        settings[STORAGE_KEY] = storage
    if not launch.resume:  # a resumed search keeps the settings it started with (load_spec read them)
        results.save_settings(folder, settings)
        origin.record(folder, storage)  # where and by whom: --resume trusts only folders created here
    _record_environment(spec, folder)
    reference = search_baseline(spec, folder) if launch.baseline else None  # once, before any trial
    # Short epochs make Tune snapshot often (num_to_keep forces it); that is expected here, not a problem.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    console.quiet_ray_hints()  # before Ray starts: its token warning is logged by ray.init
    dashboard = None
    if launch.optuna_dashboard is not None:  # bound now, so a port in use fails before Ray starts
        dashboard = monitor.StudyDashboard(folder / results.STUDY_FILE, launch.optuna_dashboard, "--optuna-dashboard")
    shutdown = False
    session = None
    keep_logs = True
    try:
        shutdown = cluster.init_ray(
            address=launch.address,
            dashboard=launch.dashboard,
            dashboard_host=launch.dashboard_host,
            dashboard_port=launch.dashboard_port,
            allow_no_auth=launch.allow_no_auth,
        )
        session = cluster.session_dir() if shutdown and not launch.address else None  # ours alone: removed at the end
        resources.preflight(requests)  # the cluster actually running (a joined one, or a Ray this process found)
        code = run_search(
            spec,
            folder,
            storage=storage,
            resume=launch.resume,
            retry_errored=launch.retry_errored,
            export_best=launch.export,
            verbose=launch.verbose,
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
        origin.seal(folder, storage)  # Ray wrote its last pickle: MAC them, so --resume tells them from planted ones
        if session is not None:
            cluster.remove_session_dir(session, keep=keep_logs)


def _record_environment(spec: SearchSpec, folder: Path) -> None:
    """environment.json: what decides the numbers besides the settings, so two results can be compared."""
    cpus = spec.resources.cpus_per_trial
    environment.record(
        folder,
        search_seed=spec.search.seed,
        training_seed=spec.fixed.get("seed", "searched" if "seed" in spec.params else TrainConfig().seed),
        # Every trial's torch threads (from cpus_per_trial): the float reduction order of its training follows it.
        trial_threads=trial_threads(cpus),
    )

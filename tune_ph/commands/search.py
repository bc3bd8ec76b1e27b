"""`python -m tune_ph.search` (or `python -m tune_ph search`): flags -> a SearchSpec -> the search, exported."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Only what the flags and the YAML need: Ray, torch and the data libraries are imported in _main once the command
# line and the space file are known to be usable, so --help and every error they show answer in a moment.
from tune_ph import cli, config
from tune_ph import search_settings as settings
from tune_ph.data.taxonomy import load_taxonomy
from tune_ph.report import monitor
from tune_ph.search import origin, space

# TrainConfig fields that have a command-line override here (the others are set in the YAML).
OVERRIDE_FIELDS = (
    "dataset",
    "target",
    "target_range",
    "sequences",
    "metadata",
    "min_count",
    "rarefy",
    "split_by",
    "split_seed",
    "model",
    "epochs",
    "device",
    "taxonomy",
)


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
    p.add_argument(
        origin.TRUST_FLAG,
        action="store_true",
        help="with --resume: resume a folder your key does not vouch for (moved, copied, received or changed); its "
        "Ray state is unpickled, which can run code, so only for folders you trust",
    )
    overrides = p.add_argument_group("overrides of the YAML (fixed TrainConfig values)")
    config.add_arguments(overrides, only=OVERRIDE_FIELDS, overrides=True)
    settings.add_arguments(p.add_argument_group("overrides of the YAML's search, scheduler and resources settings"))
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
    ray_group.add_argument(
        "--dashboard-port",
        type=int,
        default=None,
        help="the Ray dashboard's port (default 8265, or a free one when another Ray holds it; 0: a free one)",
    )
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
    values.update(settings.given(args))
    return values


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tune_ph.search`: exit code 0, 1 (runtime failure), 2 (bad input) or 130 (interrupted)."""
    return cli.run(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    if args.optuna_dashboard is not None:  # a missing extra stops here, before anything is written or started
        monitor.require_dashboard("--optuna-dashboard")
        monitor.check_port(args.optuna_dashboard, "--optuna-dashboard")
    overrides = overrides_of(args)
    # The space file and the flags are checked before the heavy imports: their errors answer in a moment.
    if args.resume:
        space.resume_name(args.space, args.name)
    given = None if args.resume else space.spec_from_flags(args.space, args.name, overrides)
    if given is not None and given.fixed.get("taxonomy"):  # read by the export at the end: a bad table fails now
        given.fixed["taxonomy"] = str(Path(given.fixed["taxonomy"]).expanduser().resolve())
        load_taxonomy(given.fixed["taxonomy"])

    from tune_ph.search import cluster, resources
    from tune_ph.search.run import check_this_machine, load_spec, locked_search, unused_experiment
    from tune_ph.search.runlock import ExperimentLock

    if (args.dashboard or args.dashboard_host) and not args.address:
        cluster.require_dashboard()
        # A port in use (another Ray) is found now, before anything is written, not as Ray's ValueError later.
        args.dashboard_port = cluster.dashboard_port(args.dashboard_port, args.dashboard_host)
    if args.dashboard_port is None:
        args.dashboard_port = cluster.DEFAULT_DASHBOARD_PORT
    spec, folder, saved_storage = load_spec(
        args.space, args.name, Path(args.output_dir), args.resume, overrides, loaded=given
    )
    storage = args.storage or saved_storage
    if storage and "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    if args.resume:  # before anything of the folder is unpickled: only folders created here, or trusted ones
        origin.check_resume(folder, trusted=args.trust_resume, storage=storage)
    if not args.resume:
        spec, folder = unused_experiment(spec, folder, storage)
    if args.resume and overrides:
        print("note: with --resume the experiment keeps the settings it was started with; overrides are ignored")
    requests = resources.trial_requests(
        spec.resources.cpus_per_trial, spec.resources.gpus_per_trial, spec.model_choices()
    )
    if not args.address:  # a Ray started here: check this machine now, before weights are fetched or Ray starts
        check_this_machine(spec, requests)
    # One search per experiment folder: a second one of the same name stops here (exit 2), naming the first.
    with ExperimentLock(folder):
        return locked_search(settings.LaunchSettings.from_args(args), spec, folder, storage, requests)


if __name__ == "__main__":
    sys.exit(main())

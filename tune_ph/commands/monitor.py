"""`python -m tune_ph monitor`: optuna-dashboard on an experiment's Optuna study (127.0.0.1 only)."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from tune_ph import cli
from tune_ph.errors import InputError
from tune_ph.report.monitor import DEFAULT_PORT, LOOPBACK, MONITOR_HINT, StudyDashboard, require_dashboard


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tune_ph monitor`: exit code 0 (stopped with Ctrl-C), 1 (runtime failure) or 2 (bad input)."""
    return cli.run(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tune_ph monitor",
        description="Serve optuna-dashboard on an experiment's Optuna study (finished or still running) at "
        f"http://{LOOPBACK}:PORT until Ctrl-C. Needs the monitor extra: {MONITOR_HINT}.",
    )
    p.add_argument("experiment", help="experiment folder (e.g. experiments/quick)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port on 127.0.0.1 (default: %(default)s)")
    args = p.parse_args(argv)
    require_dashboard("python -m tune_ph monitor")
    from tune_ph.report import results  # pandas and pyarrow: after the flags and the extra are known to be usable

    folder = Path(args.experiment)
    db = folder / results.STUDY_FILE
    if not db.is_file():
        what = "no such folder" if not folder.is_dir() else f"no {results.STUDY_FILE} here"
        raise InputError(f"{folder}: {what}; give the experiment folder of a search (experiments/NAME)")
    with StudyDashboard(db, args.port, "--port") as dashboard:
        dashboard.start()
        print(f"optuna-dashboard for {db}: {dashboard.url}")
        tunnel = f"ssh -L {dashboard.port}:{LOOPBACK}:{dashboard.port} HOST"
        print(f"  it listens on {LOOPBACK} only; from another machine: {tunnel}")
        print(f"  learning curves: {shlex.join(['tensorboard', '--logdir', str(folder)])}")
        print("  Ctrl-C stops it")
        try:
            dashboard.wait()
        except KeyboardInterrupt:
            print("stopped")
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

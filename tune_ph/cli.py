"""What every command-line tool shares: the OpenMP preamble, logging setup, and error -> exit code."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence

# Before torch loads its OpenMP runtime (tune_ph/__init__ imports this module first): busy-waiting threads
# crawl (5-10x slower steps measured on a 2-core machine) whenever anything else runs; passive waiting costs
# little when the machine is idle. setdefault: a user's own choice wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tune_ph.errors import InputError  # noqa: E402 - after the preamble on purpose

EXIT_OK = 0
EXIT_FAILURE = 1  # a runtime failure: training diverged, Ray could not start, weights could not be fetched
EXIT_BAD_INPUT = 2  # bad input or usage: the message names the file, row, field or flag
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), the shell convention

log = logging.getLogger("tune_ph")


def setup_logging(level: int = logging.INFO) -> None:
    """One log format for every tool; calling it twice changes nothing."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def exit_code(err: BaseException) -> int:
    """The exit code of an error that ended a command."""
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    # ValueError covers InputError and the libraries' own argument checks; FileNotFoundError is a path the user
    # typed. Other OSErrors (disk full, network) are runtime failures.
    if isinstance(err, (InputError, ValueError, FileNotFoundError)):
        return EXIT_BAD_INPUT
    return EXIT_FAILURE


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a tool's main(argv): expected errors become one `error: ...` line and their exit code, no traceback."""
    setup_logging()
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return exit_code(err)

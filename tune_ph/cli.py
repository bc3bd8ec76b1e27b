"""What every command-line tool shares: the OpenMP preamble, logging setup, and error -> exit code."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence

# Before torch loads its OpenMP runtime (tune_ph/__init__ imports this module first): busy-waiting threads
# crawl (5-10x slower steps measured on a 2-core machine) whenever anything else runs; passive waiting costs
# little when the machine is idle. setdefault: a user's own choice wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tune_ph.errors import InputError, RunFailure  # noqa: E402 - after the preamble on purpose

EXIT_OK = 0
EXIT_FAILURE = 1  # a runtime failure: training diverged, Ray could not start, weights could not be fetched
EXIT_BAD_INPUT = 2  # bad input or usage: the message names the file, row, field or flag (argparse exits 2 itself)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), the shell convention

log = logging.getLogger("tune_ph")


def setup_logging(level: int = logging.INFO) -> None:
    """One log format for every tool; calling it twice changes nothing."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def _says_it_all(err: BaseException) -> bool:
    """Whether an error's one-line message is the whole report: ours (InputError, RunFailure), or hyena_dna's
    weights that cannot be found or fetched (its message names the model and the fix)."""
    if isinstance(err, (InputError, RunFailure)):
        return True
    pretrained = sys.modules.get("hyena_dna.pretrained")  # only loaded if the command got as far as weights
    return pretrained is not None and isinstance(err, pretrained.PretrainedNotFoundError)


def exit_code(err: BaseException) -> int:
    """The exit code of an error that ended a command: only our input errors are bad input.

    A ValueError or FileNotFoundError from elsewhere (torch, numpy, our own code) is a failure, not the user's input:
    the places that check input raise an InputError naming what to fix.
    """
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(err, InputError):
        return EXIT_BAD_INPUT
    return EXIT_FAILURE


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a tool's main(argv): an expected error becomes one `error: ...` line and its exit code; anything else
    keeps its traceback (exit 1), so a bug is never mistaken for bad input."""
    setup_logging()
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        if _says_it_all(err):
            print(f"error: {err}", file=sys.stderr)
        else:
            traceback.print_exc()
        return exit_code(err)

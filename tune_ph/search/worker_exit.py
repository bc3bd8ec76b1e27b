"""A Ray worker stopped by SIGTERM exits without a stray `SystemExit` traceback on the search's console."""

from __future__ import annotations

import sys
from typing import Any

# Ray's worker turns SIGTERM (a stopped trial, the end of a search) into sys.exit(). When the signal lands while
# Python runs a callback it cannot raise from (a weakref's, a __del__), Python prints "Exception ignored in ..."
# with the whole traceback through sys.unraisablehook, and Ray forwards it to the driver's console as if a trial
# had failed. That exit is the shutdown Ray asked for: only it is dropped; every other unraisable error still shows.
_MARK = "_tune_ph_quiet_shutdown"


def quiet_shutdown() -> None:
    """Install, once per process, an unraisable-exception hook that drops SystemExit and passes on the rest."""
    if getattr(sys.unraisablehook, _MARK, False):
        return
    passed_on = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, SystemExit):
            return
        passed_on(unraisable)

    setattr(hook, _MARK, True)
    sys.unraisablehook = hook

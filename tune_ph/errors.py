"""The project's exception types; the command-line tools map them to exit codes (tune_ph.cli).

InputError and its subclasses: exit 2 with one `error:` line. RunFailure and its subclasses: exit 1 with one line.
Any other exception is a bug or an unforeseen failure: exit 1 with its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input or usage (a file, row, field or flag): the message names it and the fix. Exit code 2."""


class ConfigError(InputError):
    """A TrainConfig value that breaks a rule; ``field`` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class DatasetError(InputError):
    """A dataset source cannot be read or does not have the expected schema."""


class BadRowError(DatasetError):
    """A sample row is invalid (non-DNA characters, a missing field, pH out of range, a duplicate id)."""


class SpaceError(InputError):
    """A search-space file that cannot be used; the message names the file, the key path and what is allowed."""


class ResourceError(InputError):
    """A trial asks for more CPUs or GPUs than any node has (it would stay PENDING forever), or for a nonsense
    amount; the message names the YAML key and the flag that fixes it."""


class BusyError(InputError):
    """Another search is using the experiment folder (its lock names the process); exit code 2."""


class RunFailure(RuntimeError):
    """A run that could not produce its result, for a reason its message states in full (every trial failed, the
    weights could not be fetched). Exit code 1, without a traceback."""


class SetupError(RunFailure):
    """The environment cannot run what was asked (Ray cannot start, an extra is missing). Exit code 1."""

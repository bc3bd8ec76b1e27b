"""Where, on which host and by whom an experiment folder was created: --resume trusts only folders created here.

Resuming loads Ray's pickled state from the folder (tuner.pkl, the searcher's state), and unpickling runs whatever
code a crafted file asks. A folder this user created at this path on this host holds only what this user's own
searches wrote; a moved, copied or received one may hold anything, so it is resumed only with --trust-resume.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from tune_ph.errors import InputError
from tune_ph.files import write_json

log = logging.getLogger(__name__)

ORIGIN_FILE = "origin.json"
TRUST_FLAG = "--trust-resume"


@dataclass(frozen=True)
class Origin:
    """Where an experiment folder was created (origin.json)."""

    path: str  # the folder's absolute path, links resolved
    host: str
    user: str
    uid: int
    created: str  # ISO 8601, local time with offset

    @classmethod
    def here(cls, folder: Path) -> Origin:
        """This folder, host and user, now."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry (some containers)
            user = str(os.getuid())
        return cls(
            path=str(Path(folder).resolve()),
            host=socket.gethostname(),
            user=user,
            uid=os.getuid(),
            created=datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        )

    def same_place(self, other: Origin) -> bool:
        """Same folder, host and user (not the same time)."""
        return (self.path, self.host, self.uid) == (other.path, other.host, other.uid)

    def describe(self) -> str:
        return f"{self.path} on {self.host} by {self.user} ({self.created})"


def record(folder: Path) -> Origin:
    """Write origin.json for a folder created (or adopted with --trust-resume) by this process."""
    origin = Origin.here(folder)
    write_json(Path(folder) / ORIGIN_FILE, asdict(origin))
    return origin


def read(folder: Path) -> Origin | None:
    """The folder's recorded origin; None when there is none or it cannot be read (then it is not trusted)."""
    path = Path(folder) / ORIGIN_FILE
    try:
        data = json.loads(path.read_text())
        return Origin(**{k: data[k] for k in ("path", "host", "user", "uid", "created")})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
        log.warning("%s: not readable (%s); the folder is treated as received from elsewhere", path, err)
        return None


def check_resume(folder: Path, trusted: bool) -> None:
    """Refuse to resume a folder not created here (InputError naming it and the flag), unless trusted: then it is
    adopted (origin.json now records this place), with a warning."""
    found = read(folder)
    here = Origin.here(folder)
    if found is not None and found.same_place(here):
        return
    if found is None:
        why = f"it has no readable {ORIGIN_FILE} (made by an older tune_ph, or received without one)"
    else:
        why = f"it was created at {found.describe()}"
    if not trusted:
        raise InputError(
            f"--resume: {folder} was not created here ({why}); resuming loads Ray's pickled state from it "
            f"(tuner.pkl), which can run code. If you trust its contents, pass {TRUST_FLAG} to resume it here"
        )
    log.warning("%s: resuming a folder not created here (%s), trusted by %s", folder, why, TRUST_FLAG)
    record(folder)

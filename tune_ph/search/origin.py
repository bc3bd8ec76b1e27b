"""Where, on which host and by whom an experiment folder was created, and what Ray pickled there, under this user's
MAC: --resume unpickles only what it can authenticate.

Resuming loads Ray's pickled state from the folder (tuner.pkl, the searcher's state, the experiment state's
cloudpickled values), and unpickling runs whatever code a crafted file asks. Path, host and uid are predictable, so
origin.json is MACed with this user's secret key (tune_ph.secret), and so are the hashes of Ray's pickled files,
sealed when a search here ends: a moved, copied, received or forged folder, or one whose pickles changed since, is
resumed only with --trust-resume.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import socket
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from tune_ph import secret
from tune_ph.errors import InputError
from tune_ph.files import write_json

log = logging.getLogger(__name__)

ORIGIN_FILE = "origin.json"
TRUST_FLAG = "--trust-resume"
_PURPOSE = "tune_ph origin v1"
_FIELDS = ("path", "host", "user", "uid", "created")
# What Tuner.restore unpickles from the experiment folder: tuner.pkl, trainable.pkl, the searcher's state, and the
# experiment state JSON (its values are cloudpickled). All sealed; any other file is never unpickled.
_PICKLE_SUFFIXES = (".pkl", ".pickle")
_STATE_PREFIXES = ("experiment_state", "basic-variant-state", "search_gen_state", "searcher-state")
_STORAGE_PREFIX = "storage:"


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


def _ray_folders(folder: Path, storage: str | None) -> dict[str, Path]:
    """Where Ray keeps its state, by the prefix its files have in the seal: the folder, and a local --storage's."""
    found = {"": Path(folder)}
    if storage and "://" not in storage:  # a remote storage (s3://) is not sealed (the README says so)
        found[_STORAGE_PREFIX] = Path(storage) / Path(folder).name
    return found


def _pickled_files(folder: Path, storage: str | None = None) -> dict[str, str]:
    """The sha256 of every file of Ray's folders that its restore unpickles (links included, by name)."""
    found = {}
    for prefix, where in _ray_folders(folder, storage).items():
        if not where.is_dir():
            continue
        for entry in sorted(os.scandir(where), key=lambda e: e.name):
            if not (entry.name.endswith(_PICKLE_SUFFIXES) or entry.name.startswith(_STATE_PREFIXES)):
                continue
            if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                found[prefix + entry.name] = "not a regular file"  # never matches a seal: a link is not content
                continue
            h = hashlib.sha256()
            with open(entry.path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            found[prefix + entry.name] = h.hexdigest()
    return found


def _payload(data: dict) -> bytes:
    return json.dumps({k: v for k, v in data.items() if k != "mac"}, sort_keys=True).encode()


def _write(folder: Path, origin: Origin, storage: str | None) -> None:
    data = {**asdict(origin), "pickles": _pickled_files(Path(folder), storage)}
    data["mac"] = secret.mac(_PURPOSE, _payload(data))
    write_json(Path(folder) / ORIGIN_FILE, data)


def record(folder: Path, storage: str | None = None) -> Origin:
    """Write origin.json for a folder created (or adopted with --trust-resume) by this process, sealing the
    pickles it (and a local --storage) holds now."""
    origin = Origin.here(folder)
    _write(folder, origin, storage)
    return origin


def seal(folder: Path, storage: str | None = None) -> None:
    """After a search here: MAC the pickles Ray wrote, so that --resume can tell them from planted ones.

    Only a folder whose origin.json this user's key already vouches for is sealed (a search runs only on those)."""
    found = read(folder)
    if found is None or not authentic(folder):
        return
    try:
        _write(folder, found, storage)
    except OSError as err:  # a full disk: resuming will then ask for --trust-resume, which says why
        log.warning("%s: could not seal Ray's state (%s)", folder, err)


def _read_data(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as err:
        log.warning("%s: not readable (%s); the folder is treated as received from elsewhere", path, err)
        return None


def read(folder: Path) -> Origin | None:
    """The folder's recorded origin; None when there is none or it cannot be read (then it is not trusted)."""
    path = Path(folder) / ORIGIN_FILE
    data = _read_data(path)
    if data is None:
        return None
    try:
        return Origin(**{k: data[k] for k in _FIELDS})
    except (KeyError, TypeError) as err:
        log.warning("%s: not readable (%s); the folder is treated as received from elsewhere", path, err)
        return None


def authentic(folder: Path) -> bool:
    """Whether origin.json carries this user's MAC (it was written by this user's tune_ph, not forged)."""
    data = _read_data(Path(folder) / ORIGIN_FILE)
    return data is not None and secret.verify(_PURPOSE, _payload(data), data.get("mac"))


def _changed_pickles(folder: Path, storage: str | None) -> list[str]:
    """Ray's pickled files that differ from what the last search here sealed (planted, changed or unsealed)."""
    data = _read_data(Path(folder) / ORIGIN_FILE) or {}
    sealed = data.get("pickles") if isinstance(data.get("pickles"), dict) else {}
    return [name for name, digest in _pickled_files(Path(folder), storage).items() if sealed.get(name) != digest]


def _untrusted_reason(folder: Path, storage: str | None) -> str | None:
    """Why the folder cannot be resumed without --trust-resume; None when it can."""
    found = read(folder)
    if found is None:
        return f"it has no readable {ORIGIN_FILE} (made by an older tune_ph, or received without one)"
    if not authentic(folder):
        return (
            f"its {ORIGIN_FILE} does not carry your key's MAC ({secret.key_path()}): forged, or made elsewhere or "
            "by an older tune_ph"
        )
    if not found.same_place(Origin.here(folder)):
        return f"it was created at {found.describe()}"
    changed = _changed_pickles(folder, storage)
    if changed:
        return (
            f"Ray's state {', '.join(changed[:3])} changed since your last search here sealed it (planted, or that "
            "search was killed hard)"
        )
    return None


def check_resume(folder: Path, trusted: bool, storage: str | None = None) -> None:
    """Refuse to resume a folder whose origin and pickles this user's key does not vouch for (InputError naming it
    and the flag), unless trusted: then it is adopted (origin.json now records and seals it here), with a warning."""
    why = _untrusted_reason(folder, storage)
    if why is None:
        return
    if not trusted:
        raise InputError(
            f"--resume: {folder} is not vouched for by your key ({why}); resuming loads Ray's pickled state from it "
            f"(tuner.pkl), which can run code. If you trust its contents, pass {TRUST_FLAG} to resume it here"
        )
    log.warning("%s: resuming a folder not created here (%s), trusted by %s", folder, why, TRUST_FLAG)
    record(folder, storage)

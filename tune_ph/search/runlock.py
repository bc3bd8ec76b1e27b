"""One search per experiment folder at a time: a lock file (fcntl.flock) that records its holder's pid and host."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from tune_ph.errors import BusyError

log = logging.getLogger(__name__)

LOCK_FILE = "search.lock"
# flock is not available on every network filesystem; there the holder's pid (same host) decides instead.
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user
        return True
    return True


def _holder_text(info: dict[str, Any]) -> str:
    started = f", started {info['started']}" if info.get("started") else ""
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}{started}"


class ExperimentLock:
    """Exclusive use of an experiment folder by this process, as a context manager.

    The kernel releases a flock when its process dies (a crash, kill -9, the OOM killer), so a lock file left
    behind by a dead search never blocks the next one. Only if the filesystem has no flock does the recorded pid
    decide: a dead process on this host is taken over; a holder on another host cannot be checked from here.
    Entering creates the folder when needed; leaving removes the lock file, and the folders it created if nothing
    else was written there.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None
        self._created: list[Path] = []  # folders this lock created, deepest first

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> ExperimentLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock or raise BusyError naming the folder and the running search (exit code 2)."""
        if self.held:
            return
        self._created = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            for _ in range(10):  # a releasing holder may unlink the file between our open and our flock
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                if not self._lock(fd):
                    info = self._read(fd)
                    os.close(fd)
                    raise BusyError(
                        f"{self.folder} is in use by another search ({_holder_text(info)}); wait for it to "
                        "finish or stop it, or pick another --name (or --output-dir). The lock is released when "
                        "that process ends, even if it crashes"
                    )
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    self._fd = fd
                    self._write_info()
                    return
                os.close(fd)
            raise BusyError(f"{self.folder}: could not take {LOCK_FILE}: another process keeps replacing it")
        except BaseException:
            self._remove_folder_if_created()
            raise

    def _lock(self, fd: int) -> bool:
        """flock the file; False when another process holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as err:
            if err.errno not in _NO_FLOCK:
                raise
        info = self._read(fd)
        host, pid = info.get("host"), info.get("pid")
        if not isinstance(pid, int) or pid == os.getpid():
            return True
        if host == socket.gethostname():
            return not _pid_alive(pid)
        log.warning(
            "%s: the filesystem has no flock and the lock is held on %s; delete it if that is stale", self.path, host
        )
        return False

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            info = json.loads(os.read(fd, 65536).decode("utf-8") or "{}")
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def _write_info(self) -> None:
        assert self._fd is not None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        os.write(self._fd, (json.dumps(info) + "\n").encode())

    def release(self) -> None:
        """Remove the lock file (while still holding it, so no one takes a file about to vanish) and unlock."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        os.close(self._fd)
        self._fd = None
        self._remove_folder_if_created()

    def _remove_folder_if_created(self) -> None:
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:  # not empty: the search wrote something worth keeping
                break
        self._created = []

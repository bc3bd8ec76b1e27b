"""optuna-dashboard on an experiment's Optuna study, 127.0.0.1 only: beside a search or `python -m tune_ph monitor`."""

from __future__ import annotations

import errno
import importlib.util
import logging
import socketserver
import threading
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from tune_ph.errors import InputError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"  # never another interface: the dashboard can edit and delete studies, and has no login
DEFAULT_PORT = 8080  # optuna-dashboard's own default
MONITOR_HINT = 'pip install -e ".[monitor]"'  # the extra with optuna-dashboard and tensorboard


def dashboard_installed() -> bool:
    return importlib.util.find_spec("optuna_dashboard") is not None


def tensorboard_installed() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def require_dashboard(flag: str) -> None:
    """Stop with the install hint (exit 2) when optuna-dashboard is not installed; before anything starts."""
    try:
        import optuna_dashboard  # noqa: F401
    except ImportError:
        raise InputError(
            f"{flag} needs the optuna-dashboard package, which is not installed; install the monitor extra with "
            f"{MONITOR_HINT} (optuna-dashboard and tensorboard), or run without {flag}"
        ) from None


def check_port(port: int, flag: str) -> int:
    if not 0 <= port <= 65535:
        raise InputError(f"{flag} {port}: not a TCP port; use 1-65535 (0 picks a free one)")
    return port


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's open request never keeps the process alive


class _QuietHandler(WSGIRequestHandler):
    # The dashboard polls every few seconds; wsgiref would print each request into the search's console.
    def log_message(self, format: str, *args: Any) -> None:
        pass


class StudyDashboard:
    """optuna-dashboard for an Optuna SQLite study, served from a background thread on 127.0.0.1.

    The port is bound when the object is made, so a port in use fails before the search starts; `start()` opens
    the study and serves (call it once the study exists: the dashboard does not create Optuna's tables).
    """

    def __init__(self, db: Path, port: int = DEFAULT_PORT, flag: str = "--port"):
        self.db = Path(db).resolve()
        check_port(port, flag)
        try:
            self._server = _Server((LOOPBACK, port), _QuietHandler)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise InputError(f"{flag} {port}: port {port} on {LOOPBACK} is in use; pick another port") from None
            raise
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/dashboard"

    def start(self) -> StudyDashboard:
        from optuna_dashboard import wsgi

        if not self.db.is_file():
            raise InputError(f"{self.db}: no Optuna study here (the search writes it when it starts)")
        self._server.set_app(wsgi(f"sqlite:///{self.db}"))
        self._thread = threading.Thread(target=self._server.serve_forever, name="optuna-dashboard", daemon=True)
        self._thread.start()
        return self

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C in the main thread interrupts the wait)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> StudyDashboard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

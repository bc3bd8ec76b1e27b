"""optuna-dashboard on an experiment's Optuna study, 127.0.0.1 only: beside a search or `python -m tune_ph monitor`."""

from __future__ import annotations

import errno
import importlib.util
import logging
import socketserver
import threading
from collections.abc import Callable
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


def local_hosts_only(app: Callable[..., Any], port: Callable[[], int]) -> Callable[..., Any]:
    """The WSGI app, answering only requests addressed to 127.0.0.1:PORT or localhost:PORT.

    Binding the loopback interface is not enough: a web page can make the browser send requests to a name it
    controls that resolves to 127.0.0.1 (DNS rebinding), and the dashboard would then edit studies for that page.
    Such requests carry the page's name in their Host header; they are refused.
    """

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        allowed = {f"{LOOPBACK}:{port()}", f"localhost:{port()}"}
        if environ.get("HTTP_HOST", "").strip().lower() not in allowed:
            start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"403: this dashboard only answers http://{LOOPBACK}:{port()}/ (Host header)\n".encode()]
        return app(environ, start_response)

    return guarded


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
        try:
            app = wsgi(f"sqlite:///{self.db}")
        except Exception as err:  # Optuna's StorageInternalError on a file that is not SQLite, sqlalchemy's, ...
            text = str(err).splitlines()[0][:200] if str(err) else ""
            raise InputError(
                f"{self.db}: not a readable Optuna study database ({type(err).__name__}: {text}); "
                "give the experiment folder of a search"
            ) from None
        self._server.set_app(local_hosts_only(app, lambda: self.port))
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

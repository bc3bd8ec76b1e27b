"""Start or join Ray safely (loopback-only local runs, token-auth policy, private token) and check that trials fit."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import secrets
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("tune_ph.cluster")

LOOPBACK = "127.0.0.1"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
# Ray 2.60 rewrites ray.init(_node_ip_address="127.0.0.1") to the machine's routable address
# (services.resolve_ip_for_localhost) unless ray_constants.ENABLE_RAY_CLUSTER is off; that constant is read from
# this variable when `ray` is imported. With a loopback node address every Ray server binds loopback.
CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Ray keeps resources in fixed point (4 decimals): compare with slack so rounding never makes a fit fail.
_EPS = 1e-6


class SetupError(RuntimeError):
    """Ray cannot be started or joined the way the command line asks."""


class ResourceError(ValueError):
    """A trial asks for more CPUs or GPUs than any node of the Ray cluster has, or for a nonsense amount."""


# --------------------------------------------------------------------------------------------------------------
# Token authentication


def is_loopback_host(host: str | None) -> bool:
    """True for loopback addresses and "localhost" (None means Ray's default, which is loopback)."""
    if host is None or host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False  # a host name: it may resolve to anything, so treat it as reachable from outside
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def token_paths(env: Mapping[str, str] | None = None) -> list[Path]:
    """Files Ray 2.60 may read the token from: $RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token (where Ray writes it)."""
    env = os.environ if env is None else env
    paths = []
    if env.get(TOKEN_PATH_ENV):
        paths.append(Path(env[TOKEN_PATH_ENV]).expanduser())
    paths.append(default_token_path(env))
    return paths


def default_token_path(env: Mapping[str, str] | None = None) -> Path:
    """~/.ray/auth_token, the file `ray.init` and `ray get-auth-token --generate` create (Path.home()/.ray)."""
    env = os.environ if env is None else env
    home = env.get("HOME")
    return (Path(home) if home else Path.home()) / ".ray" / "auth_token"


def _token_available(env: Mapping[str, str]) -> bool:
    if env.get(TOKEN_ENV):
        return True
    return any(p.is_file() and p.stat().st_size > 0 for p in token_paths(env))


def token_auth_enabled(address: str | None, env: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """Whether Ray 2.60 will use token authentication for this run, and the setting that decides it (for messages).

    RAY_AUTH_MODE decides when set (Ray compares it case-insensitively). Unset, Ray turns tokens on for a new
    local cluster, and for address="auto" only when a token exists; for an explicit address it sends no token
    (checked: the head then answers "InvalidAuthToken: Authentication token is missing").
    """
    env = os.environ if env is None else env
    mode = env.get(AUTH_MODE_ENV)
    if mode is not None:
        return mode.lower() == "token", f"{AUTH_MODE_ENV}={mode}"  # case-insensitive, as Ray reads it
    if address is None:
        return True, f"{AUTH_MODE_ENV} unset (Ray turns token authentication on for a new local cluster)"
    if address == "auto" and _token_available(env):
        return True, f"{AUTH_MODE_ENV} unset, a token is available (Ray turns token authentication on)"
    return False, f"{AUTH_MODE_ENV} is not set (Ray 2.60 then sends no token to --address {address})"


def check_auth(*, address: str | None, dashboard_host: str | None, allow_no_auth: bool = False,
               env: Mapping[str, str] | None = None) -> None:
    """Refuse a cluster-facing run without token authentication unless allowed; warn for a local one.

    Cluster-facing: joining a cluster (`address`), or a dashboard on a non-loopback interface. There, without a
    token, whoever reaches a Ray port can run code on every node; locally, any process on this machine can.
    """
    enabled, setting = token_auth_enabled(address, env)
    if enabled:
        return
    exposed = []
    if address is not None:
        exposed.append(f"join the Ray cluster at {address}")
    if dashboard_host is not None and not is_loopback_host(dashboard_host):
        exposed.append(f"serve the Ray dashboard on {dashboard_host}")
    if exposed:
        what = " and ".join(exposed)
        if not allow_no_auth:
            raise SetupError(
                f"refusing to {what} with Ray's token authentication off ({setting}): anyone who can reach "
                "the cluster's ports could run code on every node. Set RAY_AUTH_MODE=token on every node and "
                "share ~/.ray/auth_token (README, 'Several machines'), or, on a network you fully trust, pass "
                "--allow-no-auth (allow_no_auth=True)")
        log.warning("--allow-no-auth: about to %s WITHOUT token authentication (%s); anyone who can reach the "
                    "cluster's ports can run arbitrary code on every node and read its data", what, setting)
        return
    log.warning("Ray's token authentication is off (%s): Ray listens on loopback only, but any process or user "
                "on this machine can connect and run code as you; unset RAY_AUTH_MODE to turn it back on", setting)


def create_private_token(env: Mapping[str, str] | None = None) -> Path | None:
    """Create ~/.ray/auth_token with mode 0600 before Ray would create it world-readable (0644 under umask 022).

    Only when no token exists anywhere Ray looks; an existing token is never touched here. $RAY_AUTH_TOKEN_PATH
    pointing at a missing file is left for Ray to report (it refuses to start). Returns the created path.
    """
    env = os.environ if env is None else env
    if env.get(TOKEN_ENV) or env.get(TOKEN_PATH_ENV):
        return None
    path = default_token_path(env)
    if path.exists():
        return None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        # O_EXCL + mode: the file never exists with wider permissions, not even for a moment.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # created concurrently (another run): use that one
        return None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))  # the format of Ray 2.60's generate_new_authentication_token
    log.info("generated a Ray authentication token in %s (mode 0600)", path)
    return path


def secure_token_files(env: Mapping[str, str] | None = None) -> list[Path]:
    """chmod 0600 every token file Ray may use that is ours and readable by others; returns the files changed."""
    changed = []
    for path in token_paths(env):
        try:
            st = path.stat()
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or not st.st_mode & 0o077:
            continue  # someone else's file (or a mounted secret): not ours to change
        try:
            os.chmod(path, 0o600)
        except OSError as err:
            log.warning("could not make the Ray token %s private (%s); others may read it: chmod 600 it", path, err)
            continue
        log.info("made the Ray token %s private (mode %o -> 600)", path, stat.S_IMODE(st.st_mode))
        changed.append(path)
    return changed


def _reset_token_cache() -> None:
    # Ray's C++ token loader caches what it read; reload after we wrote a token, as Ray does after its own.
    try:
        from ray._raylet import AuthenticationTokenLoader

        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):
        pass


# --------------------------------------------------------------------------------------------------------------
# Starting Ray


@contextlib.contextmanager
def loopback_node() -> Iterator[None]:
    """While Ray starts: make Ray resolve this node's address to loopback, so every server binds loopback.

    Ray 2.60 binds its gRPC servers (GCS, raylet, workers, dashboard agent), the runtime-env agent, the metrics
    exporters and the agent HTTP port to the node address when that address is loopback, and to all interfaces
    (or the routable address) otherwise. `_node_ip_address="127.0.0.1"` alone is rewritten to the routable
    address. The variable is inherited by the raylet, agents and workers started now; the driver's setting is
    restored afterwards (by then Ray answers the node address from the running node).
    """
    from ray._private import ray_constants

    saved_env = os.environ.get(CLUSTER_ENV)
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[CLUSTER_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False  # `ray` is usually imported already, so the variable alone is late
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(CLUSTER_ENV, None)
        else:
            os.environ[CLUSTER_ENV] = saved_env


def init_ray(*, address: str | None = None, dashboard: bool = False, dashboard_host: str | None = None,
             dashboard_port: int = 8265, num_cpus: int | None = None, temp_dir: str | None = None,
             allow_no_auth: bool = False) -> bool:
    """Start a loopback-only Ray on this machine, or join `address`; True when this process started it.

    A true result means the caller should `ray.shutdown()` at the end. If Ray is already initialized in this
    process nothing is started (False). Raises SetupError for a run that cannot or must not start (auth policy,
    missing dashboard packages, num_cpus with an address).
    """
    if address == "local":  # Ray's spelling of "start one here"
        address = None
    dashboard = bool(dashboard or dashboard_host)
    # Checks first: refusing must not depend on whether some Ray happens to be running already.
    check_auth(address=address, dashboard_host=dashboard_host if dashboard and address is None else None,
               allow_no_auth=allow_no_auth)
    if address is not None and num_cpus is not None:
        raise SetupError("num_cpus only applies to a Ray started here; a cluster's CPUs are set by "
                         "`ray start --num-cpus` on each node")
    import ray

    if dashboard and address is None:
        try:
            missing = ray._private.utils.get_dashboard_dependency_error()
        except AttributeError:  # a Ray without this check: let ray.init report it
            missing = None
        if missing:
            raise SetupError(f"--dashboard needs Ray's dashboard packages ({missing}); install them with "
                             "pip install -e '.[dashboard]' (ray[default]), or run without --dashboard")
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": True, "logging_level": logging.WARNING}
    if address is not None:
        if dashboard:
            log.warning("the dashboard of a cluster you join is the head's (`ray start --head --dashboard-host`); "
                        "--dashboard/--dashboard-host are ignored with --address")
        ctx = ray.init(address=address, **kwargs)
        secure_token_files()
        print_dashboard(ctx, address)
        return True
    host = dashboard_host or LOOPBACK
    if dashboard and not is_loopback_host(host):
        log.warning("the Ray dashboard will listen on %s:%d: anyone who can reach it and holds the token can run "
                    "code on this machine. Prefer an SSH tunnel to 127.0.0.1 (ssh -L %d:127.0.0.1:%d host)",
                    host, dashboard_port, dashboard_port, dashboard_port)
    if token_auth_enabled(None)[0] and create_private_token():
        _reset_token_cache()
    if num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    if temp_dir is not None:
        kwargs["_temp_dir"] = temp_dir
    with loopback_node():
        ctx = ray.init(
            address="local",
            include_dashboard=dashboard,
            dashboard_host=host,
            dashboard_port=dashboard_port,
            _node_ip_address=LOOPBACK,
            **kwargs,
        )
    secure_token_files()  # a token made earlier (older Ray, `ray get-auth-token --generate`) may still be 0644
    if dashboard:
        print_dashboard(ctx, None)
    return True


def print_dashboard(ctx: Any, address: str | None) -> None:
    """Print the dashboard URL and how it is protected (user-facing output, hence print)."""
    url = getattr(ctx, "dashboard_url", None)
    if not url:
        return
    if not url.startswith("http"):
        url = "http://" + url
    enabled, setting = token_auth_enabled(address)
    if enabled:
        how = ("token authentication is on: the dashboard asks for the token; print it with `ray get-auth-token` "
               f"(kept in ~/.ray/auth_token unless ${TOKEN_ENV} or ${TOKEN_PATH_ENV} says otherwise)")
    else:
        how = (f"the dashboard is NOT protected by a token ({setting}); set {AUTH_MODE_ENV}=token to turn Ray's "
               "token authentication back on")
    print(f"Ray dashboard: {url}\n  {how}")


# --------------------------------------------------------------------------------------------------------------
# Resource preflight


def trial_requests(cpus_per_trial: float, gpus_per_trial: float | Mapping[str, float],
                   models: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """The per-trial requests check_trial_resources takes: {"": {...}}, or one entry per model for per-model GPUs.

    `models` limits a per-model mapping to the sizes the search can actually pick.
    """
    if isinstance(gpus_per_trial, Mapping):
        names = list(gpus_per_trial) if models is None else list(models)
        return {m: {"CPU": cpus_per_trial, "GPU": gpus_per_trial.get(m, 0)} for m in names}
    return {"": {"CPU": cpus_per_trial, "GPU": gpus_per_trial}}


def _fmt(x: float) -> str:
    return f"{x:g}"


def _node_text(node: Mapping[str, float]) -> str:
    return f"{_fmt(node.get('CPU', 0))} CPU, {_fmt(node.get('GPU', 0))} GPU"


def _usable(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def check_trial_resources(requests: Mapping[str, Mapping[str, float]], nodes: Sequence[Mapping[str, float]]) -> None:
    """Raise ResourceError unless every request fits one node; Ray would otherwise leave trials PENDING forever.

    `requests` maps a model name ("" when resources are not per model) to {"CPU": c, "GPU": g}; `nodes` are the
    alive nodes' resource totals. A request fits when one node has at least its CPUs and its GPUs. The message
    names the YAML key, what was asked, the largest node and the command-line flag that overrides it.
    """
    problems: list[str] = []  # ordered, without repeats: cpus_per_trial is shared by every model
    nodes = [dict(n) for n in nodes]
    for model, ask in requests.items():
        cpu, gpu = ask.get("CPU", 0), ask.get("GPU", 0)
        cpu_key = "resources.cpus_per_trial"
        gpu_key = "resources.gpus_per_trial" + (f".values.{model}" if model else "")
        every = " (--gpus-per-trial sets every model's share)" if model else ""
        gpu_flag = "--gpus-per-trial N" + every
        bad = False
        for key, value, flag, what in ((cpu_key, cpu, "--cpus-per-trial N", "CPUs"), (gpu_key, gpu, gpu_flag, "GPUs")):
            if not _usable(value):
                problems.append(f"{key}: {value!r} is not a number of {what} per trial; give a finite number "
                                f">= 0 (override: {flag})")
                bad = True
        if bad:
            continue
        if not nodes:
            problems.append("the Ray cluster has no alive node to run trials on")
            break
        if any(n.get("CPU", 0) + _EPS >= cpu and n.get("GPU", 0) + _EPS >= gpu for n in nodes):
            continue
        by_gpu = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)))
        by_cpu = max(nodes, key=lambda n: (n.get("CPU", 0), n.get("GPU", 0)))
        max_gpu, max_cpu = by_gpu.get("GPU", 0), by_cpu.get("CPU", 0)
        many = f" (of {len(nodes)} alive nodes)" if len(nodes) > 1 else ""
        if gpu > max_gpu + _EPS:
            if max_gpu <= 0:
                problems.append(
                    f"{gpu_key}: asks for {_fmt(gpu)} GPU per trial, but this Ray cluster has no GPU (largest "
                    f"node{many}: {_node_text(by_gpu)}). Train on CPU with --gpus-per-trial 0{every}, or run "
                    "where there is a GPU")
            else:
                problems.append(
                    f"{gpu_key}: asks for {_fmt(gpu)} GPUs per trial, but the largest node{many} has "
                    f"{_node_text(by_gpu)}. Use --gpus-per-trial {_fmt(max_gpu)} or less (0 trains on CPU){every}")
        if cpu > max_cpu + _EPS:
            problems.append(
                f"{cpu_key}: asks for {_fmt(cpu)} CPUs per trial, but the largest node{many} has "
                f"{_node_text(by_cpu)}. Use --cpus-per-trial {_fmt(math.floor(max_cpu + _EPS))} or less")
        if gpu <= max_gpu + _EPS and cpu <= max_cpu + _EPS:
            # Each fits somewhere, but no single node has both.
            gpu_nodes = [n for n in nodes if n.get("GPU", 0) + _EPS >= gpu]
            best = max(gpu_nodes, key=lambda n: n.get("CPU", 0))
            problems.append(
                f"{cpu_key} = {_fmt(cpu)} with {gpu_key} = {_fmt(gpu)}: no single node has both; the nodes "
                f"with {_fmt(gpu)} GPU have at most {_node_text(best)} (largest node{many}: {_node_text(by_cpu)}). "
                f"Use --cpus-per-trial {_fmt(math.floor(best.get('CPU', 0) + _EPS))} or less, or "
                "--gpus-per-trial 0")
    problems = list(dict.fromkeys(problems))
    if problems:
        raise ResourceError("trials cannot be scheduled on this Ray cluster (they would stay PENDING forever):\n  "
                            + "\n  ".join(problems))


def alive_node_resources() -> list[dict[str, float]]:
    """Resource totals of the running cluster's alive nodes (ray.nodes())."""
    import ray

    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def preflight(requests: Mapping[str, Mapping[str, float]]) -> None:
    """check_trial_resources against the running Ray cluster (call after init_ray, before the Tuner starts).

    Counts only nodes alive now: on an autoscaling cluster, nodes it could still add are not seen.
    """
    import ray

    if not ray.is_initialized():
        raise SetupError("Ray is not running: call init_ray() before preflight()")
    check_trial_resources(requests, alive_node_resources())

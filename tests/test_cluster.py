"""tune_ph.search.cluster: Ray listens on loopback only, token-auth policy, a private token file, resource preflight."""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tune_ph.errors import ResourceError, SetupError
from tune_ph.search import cluster, resources
from tune_ph.search.cluster import check_auth
from tune_ph.search.resources import check_trial_resources, trial_requests

ROOT = Path(__file__).resolve().parents[1]
AUTH_VARS = (cluster.AUTH_MODE_ENV, cluster.TOKEN_ENV, cluster.TOKEN_PATH_ENV)
# Processes every single-node Ray session has; the live check fails if any is missing, so it cannot pass vacuously.
EXPECTED = ("gcs_server", "raylet", "ray::RuntimeEnvAgent", "ray::IDLE")
# With Ray's dashboard packages installed the live check also starts the dashboard (head, agent, metrics exporters).
EXPECTED_DASHBOARD = ("ray::DashboardAgent", "dashboard.py")


# ------------------------------------------------------------------------------------------------------------
# Listening sockets of a process tree, from /proc (no psutil needed)


def process_tree(root: int) -> set[int]:
    """root and all its descendants (Ray's GCS, raylet, agents, workers are children of the driver or raylet)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, []))
    return tree


def _decode(hexaddr: str, v6: bool) -> tuple[str, int]:
    ip_hex, port_hex = hexaddr.split(":")
    raw = bytes.fromhex(ip_hex)
    if v6:  # four host-order 32-bit words
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        return socket.inet_ntop(socket.AF_INET6, raw), int(port_hex, 16)
    return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port_hex, 16)


def listening_sockets(pids: set[int]) -> list[dict]:
    """LISTEN TCP sockets (IPv4 and IPv6) owned by these processes: address, port, pid, command."""
    owner: dict[str, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owner.setdefault(target[8:-1], pid)
    found = []
    for table, v6 in (("tcp", False), ("tcp6", True)):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in owner:  # 0A = TCP_LISTEN; field 9 = inode
                continue
            addr, port = _decode(fields[1], v6)
            pid = owner[fields[9]]
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                cmd = "?"
            found.append({"addr": addr, "port": port, "pid": pid, "cmd": cmd.strip()[:400]})
    return found


def off_loopback(listeners: list[dict]) -> list[dict]:
    """The sockets bound to a wildcard (0.0.0.0, ::) or a routable address."""
    bad = []
    for s in listeners:
        ip = ipaddress.ip_address(s["addr"])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is IPv4 loopback on a dual-stack socket
        if not ip.is_loopback:
            bad.append(s)
    return bad


def dashboard_available() -> bool:
    import ray._private.utils

    return ray._private.utils.get_dashboard_dependency_error() is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ray(temp_dir: str) -> bool:
    """Ray the way the search starts it, plus the dashboard when its packages are installed (more listeners)."""
    dashboard = dashboard_available()
    return cluster.init_ray(
        num_cpus=2, temp_dir=temp_dir, dashboard=dashboard, dashboard_port=free_port() if dashboard else 8265
    )


def inspect_running(home: Path) -> dict:
    """What the running Ray of this process listens on, once its workers and agents are up."""
    import ray
    from ray._private import ray_constants

    expected = EXPECTED + (EXPECTED_DASHBOARD if dashboard_available() else ())

    @ray.remote(num_cpus=1)
    def pid() -> int:
        return os.getpid()

    ray.get([pid.remote() for _ in range(2)])  # make sure workers exist and are listening
    deadline = time.monotonic() + 30
    while True:
        listeners = listening_sockets(process_tree(os.getpid()))
        cmds = " ".join(s["cmd"] for s in listeners)
        if all(name in cmds for name in expected) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    time.sleep(1.0)  # agents finish starting asynchronously; take the last look after they settle
    listeners = listening_sockets(process_tree(os.getpid()))
    token = home / ".ray" / "auth_token"
    return {
        "listeners": listeners,
        "expected": expected,
        "nodes": resources.alive_node_resources(),
        "node_ip": ray._private.worker.global_worker.node.node_ip_address,
        "token_mode": oct(stat.S_IMODE(token.stat().st_mode)) if token.exists() else None,
        "cluster_env_after": os.environ.get(cluster.CLUSTER_ENV),
        "cluster_flag_after": ray_constants.ENABLE_RAY_CLUSTER,
    }


def start_and_inspect() -> dict:
    """In a fresh process: start Ray the way the search does (init_ray), inspect it, shut it down."""
    import ray  # imported before init_ray, as in the search CLI, so the import-time variable alone would be late

    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    try:
        assert start_ray(temp_dir)
        return inspect_running(Path(os.environ["HOME"]))
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """Ray started once by cluster.init_ray (2 CPUs, temp HOME for the token); in a child process if this process
    already runs a Ray (the suite's session fixture), so the check always exercises init_ray's own start."""
    import ray

    home = tmp_path_factory.mktemp("home")
    env_saved = {k: os.environ.get(k) for k in (*AUTH_VARS, "HOME")}
    if ray.is_initialized():
        env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
        env["HOME"] = str(home)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        code = (
            "import json, tests.test_cluster as t; "
            "print('RESULT ' + json.dumps({**t.start_and_inspect(), 'subprocess': True}))"
        )
        run = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
        )
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
        yield json.loads([ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
        return
    for k in AUTH_VARS:
        os.environ.pop(k, None)
    os.environ["HOME"] = str(home)
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    try:
        assert start_ray(temp_dir)
        yield {**inspect_running(home), "subprocess": False}
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        for k, v in env_saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        cluster._reset_token_cache()  # later tests of the session read the real home's token again


# ------------------------------------------------------------------------------------------------------------
# Loopback only


def test_socket_listing_sees_wildcard_and_loopback_listeners():
    """The /proc reader finds this process's sockets and tells wildcard from loopback (else the live check is moot)."""
    socks = []
    try:
        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::")):
            s = socket.socket(family, socket.SOCK_STREAM)
            try:
                s.bind((host, 0))
            except OSError:  # no IPv6 here
                s.close()
                continue
            s.listen()
            socks.append((s, host, s.getsockname()[1]))
        mine = {s["port"]: s for s in listening_sockets({os.getpid()})}
        for _, host, port in socks:
            assert port in mine, f"{host}:{port} not found"
            assert mine[port]["addr"] == host
        flagged = {s["port"] for s in off_loopback(list(mine.values()))}
        for _, host, port in socks:
            assert (port in flagged) == (host != "127.0.0.1")
    finally:
        for s, _, _ in socks:
            s.close()


def test_every_ray_listener_is_on_loopback(local_ray):
    listeners = local_ray["listeners"]
    cmds = " ".join(s["cmd"] for s in listeners)
    for name in local_ray["expected"]:  # GCS, raylet, runtime-env agent, workers (+ dashboard) are all seen
        assert name in cmds, f"no listening socket of {name}: {listeners}"
    bad = off_loopback(listeners)
    assert not bad, "Ray listens off loopback:\n" + "\n".join(f"{s['addr']}:{s['port']} {s['cmd']}" for s in bad)
    assert ipaddress.ip_address(local_ray["node_ip"]).is_loopback


def test_init_ray_restores_what_it_set(local_ray):
    # The variable only has to reach the processes Ray starts during init; the driver gets its own value back.
    assert local_ray["cluster_env_after"] is None
    assert local_ray["cluster_flag_after"] is True


def test_loopback_node_sets_then_restores(monkeypatch):
    from ray._private import ray_constants

    monkeypatch.setenv(cluster.CLUSTER_ENV, "1")
    before = ray_constants.ENABLE_RAY_CLUSTER
    with cluster.loopback_node():
        assert os.environ[cluster.CLUSTER_ENV] == "0"
        assert ray_constants.ENABLE_RAY_CLUSTER is False
    assert os.environ[cluster.CLUSTER_ENV] == "1"
    assert ray_constants.ENABLE_RAY_CLUSTER is before


# ------------------------------------------------------------------------------------------------------------
# Token authentication policy


@pytest.fixture
def no_ray_init(monkeypatch):
    """Fail if anything tries to start or join Ray: refusals must happen before."""
    import ray

    def boom(*args, **kwargs):
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "init", boom)


@pytest.mark.parametrize("mode", ["disabled", "off", ""])
def test_joining_a_cluster_without_token_auth_is_refused(monkeypatch, no_ray_init, mode):
    monkeypatch.setenv(cluster.AUTH_MODE_ENV, mode)
    with pytest.raises(SetupError) as err:
        cluster.init_ray(address="10.1.2.3:6379")
    msg = str(err.value)
    assert f"RAY_AUTH_MODE={mode}" in msg and "10.1.2.3:6379" in msg
    assert "--allow-no-auth" in msg and "run code" in msg


def test_explicit_address_with_auth_mode_unset_is_refused(monkeypatch, no_ray_init):
    # Ray 2.60 sends no token to an explicit address unless RAY_AUTH_MODE=token: an open cluster would accept us.
    monkeypatch.delenv(cluster.AUTH_MODE_ENV, raising=False)
    with pytest.raises(SetupError, match="RAY_AUTH_MODE is not set"):
        cluster.init_ray(address="10.1.2.3:6379")


def test_public_dashboard_without_token_auth_is_refused(monkeypatch, no_ray_init):
    monkeypatch.setenv(cluster.AUTH_MODE_ENV, "disabled")
    with pytest.raises(SetupError, match="serve the Ray dashboard on 0.0.0.0"):
        cluster.init_ray(dashboard=True, dashboard_host="0.0.0.0")


def test_allow_no_auth_lets_it_through_with_a_warning(monkeypatch, caplog):
    monkeypatch.setenv(cluster.AUTH_MODE_ENV, "disabled")
    with caplog.at_level(logging.WARNING, logger="tune_ph.search.cluster"):
        check_auth(address="10.1.2.3:6379", dashboard_host=None, allow_no_auth=True)
    [record] = [r for r in caplog.records if r.name == "tune_ph.search.cluster"]
    assert record.levelno == logging.WARNING and "arbitrary code" in record.getMessage()


def test_local_run_without_token_auth_only_warns(monkeypatch, caplog):
    monkeypatch.setenv(cluster.AUTH_MODE_ENV, "disabled")
    with caplog.at_level(logging.WARNING, logger="tune_ph.search.cluster"):
        check_auth(address=None, dashboard_host="127.0.0.1")
    assert any(r.levelno == logging.WARNING and "token authentication is off" in r.getMessage() for r in caplog.records)


def test_token_mode_passes_silently(monkeypatch, caplog):
    monkeypatch.setenv(cluster.AUTH_MODE_ENV, "TOKEN")  # Ray reads the mode case-insensitively
    with caplog.at_level(logging.WARNING, logger="tune_ph.search.cluster"):
        check_auth(address="10.1.2.3:6379", dashboard_host="0.0.0.0")
    assert not caplog.records


def test_auto_address_counts_as_token_auth_only_with_a_token(tmp_path):
    env = {"HOME": str(tmp_path)}
    assert cluster.token_auth_enabled("auto", env)[0] is False
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("x" * 64)
    assert cluster.token_auth_enabled("auto", env)[0] is True
    assert cluster.token_auth_enabled("10.1.2.3:6379", env)[0] is False


def test_dashboard_without_its_packages_stops_with_install_hint(monkeypatch, no_ray_init):
    import ray._private.utils

    monkeypatch.setattr(ray._private.utils, "get_dashboard_dependency_error", lambda: "No module named 'aiohttp'")
    monkeypatch.delenv(cluster.AUTH_MODE_ENV, raising=False)
    with pytest.raises(SetupError, match=r"aiohttp.*pip install -e '\.\[dashboard\]'"):
        cluster.init_ray(dashboard=True)


def test_num_cpus_with_an_address_is_an_error(monkeypatch, no_ray_init):
    monkeypatch.setenv(cluster.AUTH_MODE_ENV, "token")
    with pytest.raises(SetupError, match="ray start --num-cpus"):
        cluster.init_ray(address="10.1.2.3:6379", num_cpus=2)


@pytest.mark.parametrize("mode,says", [("token", "`ray get-auth-token`"), ("disabled", "NOT protected")])
def test_dashboard_line_says_how_it_is_protected(monkeypatch, capsys, mode, says):
    monkeypatch.setenv(cluster.AUTH_MODE_ENV, mode)
    cluster.print_dashboard(type("Ctx", (), {"dashboard_url": "127.0.0.1:8265"})(), None)
    out = capsys.readouterr().out
    assert out.startswith("Ray dashboard (nodes, trials' actors, logs): http://127.0.0.1:8265 - ") and says in out
    assert out.count("\n") == 1  # one line says where it is and how to open it


@pytest.mark.parametrize(
    "host,loopback",
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        (None, True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.2", False),
        ("myhost", False),
    ],
)
def test_is_loopback_host(host, loopback):
    assert cluster.is_loopback_host(host) is loopback


# ------------------------------------------------------------------------------------------------------------
# The token file


def test_token_created_private_and_never_overwritten(tmp_path):
    env = {"HOME": str(tmp_path)}
    path = cluster.create_private_token(env)
    assert path == tmp_path / ".ray" / "auth_token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0
    assert cluster.create_private_token(env) is None
    assert path.read_text() == token


def test_token_path_from_env_is_left_to_ray(tmp_path):
    # A RAY_AUTH_TOKEN_PATH naming a missing file is a mistake Ray reports; we must not invent a token there.
    env = {"HOME": str(tmp_path), cluster.TOKEN_PATH_ENV: str(tmp_path / "missing")}
    assert cluster.create_private_token(env) is None
    assert not (tmp_path / "missing").exists() and not (tmp_path / ".ray").exists()


def test_existing_world_readable_tokens_are_made_private(tmp_path, monkeypatch):
    home_token = tmp_path / ".ray" / "auth_token"
    home_token.parent.mkdir()
    other = tmp_path / "elsewhere" / "token"
    other.parent.mkdir()
    for p in (home_token, other):
        p.write_text("t" * 64)
        p.chmod(0o644)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(cluster.TOKEN_PATH_ENV, str(other))
    assert sorted(cluster.secure_token_files()) == sorted([home_token, other])
    for p in (home_token, other):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600 and p.read_text() == "t" * 64
    assert cluster.secure_token_files() == []


def test_ray_started_by_init_ray_has_a_private_token(local_ray):
    assert local_ray["token_mode"] == "0o600"


# ------------------------------------------------------------------------------------------------------------
# Resource preflight

CPU_ONLY = [{"CPU": 2.0, "memory": 8e9}]


def _error(requests, nodes) -> str:
    with pytest.raises(ResourceError) as err:
        check_trial_resources(requests, nodes)
    return str(err.value)


def test_gpu_share_on_a_cpu_only_cluster_names_key_and_cpu_flag():
    msg = _error(trial_requests(1, 0.25), CPU_ONLY)  # heads.yaml on a laptop
    assert "resources.gpus_per_trial:" in msg and "0.25 GPU" in msg
    assert "no GPU" in msg and "2 CPU, 0 GPU" in msg
    assert "--gpus-per-trial 0" in msg
    assert "cpus_per_trial" not in msg


def test_too_many_cpus_names_key_largest_node_and_flag():
    msg = _error(trial_requests(64, 0), CPU_ONLY)
    assert "resources.cpus_per_trial" in msg and "64 CPUs" in msg
    assert "largest node has 2 CPU, 0 GPU" in msg and "--cpus-per-trial 2" in msg
    assert "gpus_per_trial" not in msg


def test_both_too_big_reports_both():
    msg = _error(trial_requests(64, 1), CPU_ONLY)
    assert "resources.cpus_per_trial" in msg and "resources.gpus_per_trial" in msg


@pytest.mark.parametrize(
    "cpus,gpus,key",
    [
        (math.nan, 0, "resources.cpus_per_trial"),
        (math.inf, 0, "resources.cpus_per_trial"),
        (-1, 0, "resources.cpus_per_trial"),
        (1, math.nan, "resources.gpus_per_trial"),
        (1, -0.5, "resources.gpus_per_trial"),
        (1, "0.25", "resources.gpus_per_trial"),
    ],
)
def test_nonsense_numbers_are_refused_even_on_a_big_node(cpus, gpus, key):
    msg = _error(trial_requests(cpus, gpus), [{"CPU": 1024.0, "GPU": 8.0}])  # NaN compares False: it would "fit"
    assert f"{key}: {gpus if key.endswith('gpus_per_trial') else cpus!r}" in msg
    assert "finite number" in msg


def test_per_model_gpu_names_the_model_key():
    nodes = [{"CPU": 16.0, "GPU": 1.0}]
    requests = trial_requests(2, {"hyenadna-tiny-1k-seqlen": 0.25, "hyenadna-medium-160k-seqlen": 2})
    msg = _error(requests, nodes)
    assert "resources.gpus_per_trial.values.hyenadna-medium-160k-seqlen" in msg and "2 GPUs" in msg
    assert "tiny-1k" not in msg
    assert "--gpus-per-trial 1 or less" in msg and "16 CPU, 1 GPU" in msg
    assert "sets every model's share" in msg  # the flag replaces the whole per-model table


def test_per_model_on_cpu_only_offers_cpu_training():
    msg = _error(trial_requests(1, {"a": 0.25, "b": 0.5}), CPU_ONLY)
    assert "resources.gpus_per_trial.values.a" in msg and "resources.gpus_per_trial.values.b" in msg
    assert "--gpus-per-trial 0" in msg


def test_cpu_and_gpu_must_fit_on_the_same_node():
    nodes = [{"CPU": 32.0}, {"CPU": 4.0, "GPU": 1.0}]
    msg = _error(trial_requests(8, 1), nodes)
    assert "no single node has both" in msg and "4 CPU, 1 GPU" in msg
    assert "--cpus-per-trial 4" in msg and "of 2 alive nodes" in msg


@pytest.mark.parametrize(
    "requests,nodes",
    [
        (trial_requests(1, 0.25), [{"CPU": 2.0, "GPU": 1.0}]),
        (trial_requests(2, 0), CPU_ONLY),
        (trial_requests(8, 1), [{"CPU": 2.0}, {"CPU": 8.0, "GPU": 1.0}]),
        (trial_requests(1, {"small": 0.5, "big": 1}), [{"CPU": 4.0, "GPU": 1.0}]),
    ],
)
def test_fitting_requests_pass(requests, nodes):
    check_trial_resources(requests, nodes)


def test_no_alive_node_is_an_error():
    assert "no alive node" in _error(trial_requests(1, 0), [])


def test_trial_requests_keeps_only_the_searched_models():
    req = trial_requests(1, {"a": 0.5, "unused": 4}, models=["a"])
    assert req == {"a": {"CPU": 1, "GPU": 0.5}}


def test_preflight_reads_the_running_cluster(local_ray):
    most = max(n.get("CPU", 0) for n in resources.alive_node_resources())
    assert most >= 1
    resources.preflight(trial_requests(1, 0))
    with pytest.raises(ResourceError, match="resources.cpus_per_trial"):
        resources.preflight(trial_requests(most + 1, 0))


# ------------------------------------------------------------------------------------------------------------
# The dashboard of a running search


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.mark.slow
def test_search_dashboard_is_loopback_token_protected_and_shows_the_trials(tmp_path):
    from helpers import tiny_space, write_space

    port = free_port()
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS} | {"HOME": str(home)}
    space = write_space(
        tmp_path, tiny_space(name="watched", fixed__epochs=40, search__num_samples=2, scheduler__max_epochs=40)
    )
    argv = ["--space", str(space), "--output-dir", str(tmp_path / "exp"), "--no-export", "--no-baseline"]
    log = tmp_path / "console.txt"
    with log.open("w") as out:
        search = subprocess.Popen(
            [sys.executable, "-m", "tune_ph.search", *argv, "--dashboard", "--dashboard-port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/api/v0/actors?detail=1"
    try:
        trials, deadline = [], time.monotonic() + 240
        while not trials and time.monotonic() < deadline and search.poll() is None:
            time.sleep(1)
            token_file = home / ".ray" / "auth_token"
            if not token_file.exists():
                continue
            try:
                status, body = _get(url, token_file.read_text().strip())
            except OSError:  # not listening yet
                continue
            if status == 200:
                actors = json.loads(body)["data"]["result"]["result"]
                trials = [a for a in actors if a.get("class_name") == "ImplicitFunc" and a.get("state") == "ALIVE"]
        assert trials, log.read_text()[-3000:]
        assert _get(url)[0] in (401, 403)  # no token, no answer
        assert _get(url, "not-the-token")[0] in (401, 403)
        listeners = [s for s in listening_sockets(process_tree(search.pid)) if s["port"] == port]
        assert listeners and not off_loopback(listeners), listeners
    finally:
        search.send_signal(signal.SIGINT)
        try:
            search.wait(timeout=60)
        except subprocess.TimeoutExpired:
            search.kill()
    console = log.read_text()
    line = f"Ray dashboard (nodes, trials' actors, logs): http://127.0.0.1:{port} - open it in a browser"
    assert line in console, console[-3000:]


def test_search_with_dashboard_but_without_its_packages_stops_before_writing(monkeypatch, tmp_path, capsys):
    import ray._private.utils
    from helpers import tiny_space, write_space

    from tune_ph.commands import search as search_cli

    monkeypatch.setattr(ray._private.utils, "get_dashboard_dependency_error", lambda: "No module named 'aiohttp'")
    space = write_space(tmp_path, tiny_space())
    # A setup problem (exit 1, as every SetupError), said in one line before anything is written.
    assert search_cli.main(["--space", str(space), "--output-dir", str(tmp_path / "exp"), "--dashboard"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install -e '.[dashboard]'" in err, err
    assert not (tmp_path / "exp").exists()  # no stub experiment left for the next run to stumble on


@pytest.mark.parametrize(
    "address, host",
    [
        ("127.0.0.1:6379", "127.0.0.1"),
        ("ray://localhost:10001", "localhost"),
        ("[::1]:6379", "::1"),
        ("10.0.0.5:6379", "10.0.0.5"),
        ("head.example.org", "head.example.org"),
        ("auto", None),
    ],
)
def test_address_host(address, host):
    assert cluster.address_host(address) == host


# A head started the way this project starts Ray (every server on loopback), in a process of its own.
_LOOPBACK_HEAD = """
import sys
from ray.cluster_utils import Cluster
from tune_ph.search import cluster
with cluster.loopback_node():
    head = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
print(head.address, flush=True)
sys.stdin.read()  # until the test closes stdin
head.shutdown()
"""
_JOIN = """
import sys
import ray
from tune_ph.search.cluster import init_ray
init_ray(address=sys.argv[1], allow_no_auth=True)
print("alive nodes", sum(node["Alive"] for node in ray.nodes()), flush=True)
"""


@pytest.mark.slow
def test_a_driver_joins_a_loopback_only_cluster_at_127_0_0_1():
    """`--address 127.0.0.1:PORT` reaches a cluster bound to loopback (Ray 2.60 would otherwise give the joining
    driver the routable address, from which nothing on loopback answers)."""
    env = {**os.environ, cluster.AUTH_MODE_ENV: "disabled"}
    head = subprocess.Popen(
        [sys.executable, "-c", _LOOPBACK_HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        address = head.stdout.readline().strip()
        assert address.startswith("127.0.0.1:"), f"the loopback head did not start (printed {address!r})"
        joined = subprocess.run(
            [sys.executable, "-c", _JOIN, address], env=env, capture_output=True, text=True, timeout=240
        )
        assert joined.returncode == 0 and "alive nodes 1" in joined.stdout, joined.stderr[-3000:]
    finally:
        head.stdin.close()
        head.wait(timeout=120)

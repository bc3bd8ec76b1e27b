"""A stopped Ray worker's SystemExit stays off the console; other unraisable errors still show."""

import subprocess
import sys
import textwrap

# In a fresh interpreter: the hook is process-global, and pytest installs its own unraisable hook.
_SCRIPT = textwrap.dedent(
    """
    import gc, weakref
    from tune_ph.search.worker_exit import quiet_shutdown

    class Thing:
        pass

    def exits(_):
        raise SystemExit(15)  # what Ray's SIGTERM handler raises when it lands inside a weakref callback

    def breaks(_):
        raise ValueError("a real error")

    quiet_shutdown()
    quiet_shutdown()  # twice: still one hook, still passing the rest on
    a, b = Thing(), Thing()
    refs = [weakref.ref(a, exits), weakref.ref(b, breaks)]
    del a, b
    gc.collect()
    print("still running")
    """
)


def test_quiet_shutdown_drops_only_systemexit_from_unraisable_errors():
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "still running" in done.stdout
    assert "SystemExit" not in done.stderr
    assert "ValueError: a real error" in done.stderr


def test_without_the_hook_python_prints_the_systemexit():
    # The situation the hook exists for: without it, the exit is printed as an ignored exception's traceback.
    script = "\n".join(line for line in _SCRIPT.splitlines() if not line.startswith("quiet_shutdown()"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "Exception ignored" in done.stderr and "SystemExit" in done.stderr

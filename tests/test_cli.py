"""`python -m goloop`: the report of what goloop runs on (goloop only: it is
goloop's own command). Each run is a fresh interpreter, as a user runs it."""
import json
import os
import re
import subprocess
import sys

import pytest

import loops


def _run(*args, backend=None):
    env = dict(os.environ)
    pkg_dir = os.path.dirname(os.path.dirname(loops.goloop.__file__))
    env["PYTHONPATH"] = pkg_dir + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("GOLOOP_BACKEND", None)
    if backend is not None:
        env["GOLOOP_BACKEND"] = backend
    return subprocess.run([sys.executable, "-m", "goloop", *args], env=env,
                          capture_output=True, text=True, timeout=60, cwd="/")


def _fields(text):
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(": ")
        if sep:
            out[key] = value
    return out


def _ktls_loaded():
    return os.path.exists("/proc/net/tls_stat") or os.path.isdir("/sys/module/tls")


@pytest.mark.parametrize("backend", [None, "epoll", "io_uring"])
def test_report(goloop, backend):
    js = _run("--json", backend=backend)
    if backend == "io_uring" and js.returncode != 0:
        # A forced backend the kernel lacks: no loop, and the report says why.
        info = json.loads(js.stdout)
        assert info["backend"] is None and info["io_uring"]["usable"] is False
        pytest.skip(f"io_uring unavailable here: {info['backend_reason']}")
    assert js.returncode == 0, js.stdout + js.stderr
    info = json.loads(js.stdout)
    text = _run(backend=backend)
    assert text.returncode == 0, text.stdout + text.stderr
    assert text.stderr == ""
    lines = text.stdout.splitlines()
    fields = _fields(text.stdout)

    assert lines[0].startswith(f"goloop {goloop.__version__} (")
    assert info["goloop"] == goloop.__version__
    assert re.fullmatch(r"go\d+\.\d+(\.\d+)?\S* linux/\w+", fields["go"]), fields["go"]
    assert fields["go"] == info["go"]
    assert fields["kernel"] == os.uname().release

    uring = info["io_uring"]
    assert fields["io_uring"].startswith("usable" if uring["usable"] else "unavailable (")
    if backend is None:
        # Auto-detection picks io_uring exactly when the probe found it usable.
        want = "io_uring" if uring["usable"] else "epoll"
        assert info["backend"] == want
        assert fields["backend"].startswith(f"{want} (auto-detected: ")
    else:
        assert info["backend"] == backend
        assert fields["backend"] == f"{backend} (GOLOOP_BACKEND={backend})"
    if uring["usable"]:
        # The backend cannot run without these: reported usable means found.
        for key, label in (("multishot_accept", "multishot accept"),
                           ("multishot_recv", "multishot recv"),
                           ("provided_buffer_rings", "provided buffer rings"),
                           ("send_zc", "send_zc")):
            assert uring[key] is True, uring
            assert fields[label] == "yes"
    else:
        assert uring["error"]

    # Kernel TLS: a loaded module must be reported; without one, the report
    # rests on the TCP_ULP attempt and says so.
    assert fields["kernel TLS"].startswith("available" if info["ktls"] else "unavailable")
    if _ktls_loaded():
        assert info["ktls"] is True
    if not info["ktls"]:
        assert "TCP_ULP" in info["ktls_reason"]
    assert fields["resolver"].split()[0] in ("go", "system")


def test_bad_backend_says_why(goloop):
    res = _run(backend="bogus")
    assert res.returncode == 1
    assert "backend: none (ValueError: goloop: unknown backend 'bogus'" in res.stdout
    assert "Traceback" not in res.stderr


def test_import_does_not_start_go(goloop):
    # The command imports goloop like any program; the report is what
    # starts Go, so `import goloop.__main__` alone must not.
    res = subprocess.run(
        [sys.executable, "-c",
         "import goloop.__main__, goloop, sys; sys.exit(goloop._core._runtime_started())"],
        env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(loops.goloop.__file__))),
        capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr

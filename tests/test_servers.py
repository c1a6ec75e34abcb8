"""goloop under the servers people run it in: gunicorn's pre-fork workers
(goloop.GunicornWebWorker, for aiohttp apps) and uvicorn.

goloop only: these are about goloop's own entry points (a gunicorn worker
class, the policy uvicorn picks up) and its fork rule (Go starts in each
worker, never in gunicorn's master). Each server runs in its own process and
is spoken to over real HTTP on loopback.
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

import loops

HERE = os.path.dirname(os.path.abspath(__file__))


def _need(module, goloop):
    """The server package, or a skip; with GOLOOP_REQUIRED=1 its absence is an
    error, as CI must not pass by skipping what it is meant to check."""
    try:
        return __import__(module)
    except ImportError as exc:
        if loops.GOLOOP_REQUIRED:
            pytest.fail(f"GOLOOP_REQUIRED=1 but {module} is not installed: {exc}")
        pytest.skip(f"{module} not installed")


def _env(tmp_path, **extra):
    pkg_dir = os.path.dirname(os.path.dirname(loops.goloop.__file__))
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(tmp_path), pkg_dir, env.get("PYTHONPATH", "")) if p)
    return env


def _listener():
    """A listening loopback socket on a free port, handed to the server as an
    fd: no window in which another process could take the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def _get(port, path, timeout=15):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, (resp.status, body)
        return json.loads(body)
    finally:
        conn.close()


def _maps(pid):
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


# ---- gunicorn ----

GUNICORN_APP = '''
import asyncio, os
from aiohttp import web

runner = None

async def whoami(request):
    lp = asyncio.get_running_loop()
    return web.json_response({"pid": os.getpid(),
                              "loop": type(lp).__module__ + "." + type(lp).__qualname__})

async def leave(request):
    # Stop accepting in this worker, so the next connection reaches the
    # other one (see the test). asyncio.Server.close() only: aiohttp's
    # site.stop() would also shut down the connection serving this request.
    for site in runner.sites:
        site._server.close()
    return await whoami(request)

async def factory():
    global runner
    app = web.Application()
    app.router.add_get("/", whoami)
    app.router.add_get("/leave", leave)
    runner = web.AppRunner(app)
    return runner
'''


@pytest.mark.timeout(60)
def test_gunicorn_prefork_workers_run_goloop(goloop, tmp_path):
    _need("gunicorn", goloop)
    _need("aiohttp", goloop)
    (tmp_path / "gunicorn_app.py").write_text(GUNICORN_APP)
    log = tmp_path / "gunicorn.log"
    sock = _listener()
    port = sock.getsockname()[1]
    with sock, open(log, "w") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "gunicorn_app:factory",
             "--worker-class", "goloop.GunicornWebWorker", "--workers", "2",
             "--bind", f"fd://{sock.fileno()}", "--graceful-timeout", "20",
             "--log-level", "info", "--error-logfile", "-"],
            pass_fds=[sock.fileno()], stdout=logf, stderr=subprocess.STDOUT,
            env=_env(tmp_path), cwd=str(tmp_path))
    try:
        # The socket listens already: the request waits for a worker to boot.
        first = _get(port, "/leave")
        # On io_uring a worker's multishot accept takes every connection
        # while that worker lives, so the second worker is only reached once
        # the first stops accepting; on epoll either may win each one.
        second = _get(port, "/")
        assert first["pid"] != second["pid"]
        workers = {first["pid"], second["pid"]}
        assert workers <= set(_children(proc.pid))
        for reply in (first, second):
            assert reply["loop"] == "goloop.loop.Loop", reply
        # Go runs in each worker, and was never loaded in the master: a Go
        # runtime does not survive fork, so one started there would leave the
        # workers unable to run Go.
        for pid in workers:
            assert "libgoloop.so" in _maps(pid)
        assert "libgoloop.so" not in _maps(proc.pid)
        assert "_core" in _maps(proc.pid)  # the master did import goloop
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Shutting down: Master" in text, text
    for bad in ("[ERROR]", "[CRITICAL]", "Traceback", "Exception"):
        assert bad not in text, text
    assert text.count("Worker exiting") == 2, text


def _children(pid):
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(p) for p in f.read().split()]
    return out

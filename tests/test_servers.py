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


# ---- uvicorn ----

# uvicorn's Server.run() calls config.setup_event_loop() and then
# asyncio.run(), which asks the policy for its loop. With loop="asyncio" (on
# Linux) and loop="none", setup_event_loop leaves the policy alone, so the
# policy goloop.install() set makes the server's loop; loop="auto" (the
# default) would install uvloop's policy over it when uvloop is importable.
UVICORN_APP = '''
import asyncio, json, os

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            await send({"type": msg["type"] + ".complete"})
            if msg["type"] == "lifespan.shutdown":
                return
    lp = asyncio.get_running_loop()
    body = json.dumps({"pid": os.getpid(),
                       "loop": type(lp).__module__ + "." + type(lp).__qualname__,
                       "path": scope["path"]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
'''

UVICORN_SERVER = '''
import sys
import goloop, uvicorn
from asgi_app import app

mode, port = sys.argv[1], int(sys.argv[2])
kw = dict(host="127.0.0.1", port=port, log_level="info", http="h11")
if mode == "run-asyncio":        # goloop.install(), then uvicorn.run(loop="asyncio")
    goloop.install()
    uvicorn.run(app, loop="asyncio", **kw)
elif mode == "config-none":      # goloop.install(), then Server(Config(loop="none")).run()
    goloop.install()
    uvicorn.Server(uvicorn.Config(app, loop="none", **kw)).run()
elif mode == "serve-goloop-run": # no policy: goloop.run(server.serve())
    goloop.run(uvicorn.Server(uvicorn.Config(app, loop="none", **kw)).serve())
elif mode == "run-auto":         # loop="auto", uvicorn's default, after goloop.install()
    goloop.install()
    uvicorn.run(app, loop="auto", **kw)
elif mode == "cli":              # the uvicorn command line, goloop installed first
    goloop.install()
    from uvicorn.main import main
    sys.argv = ["uvicorn", "--host", "127.0.0.1", "--port", str(port), "--loop",
                "asyncio", "--http", "h11", "asgi_app:app"]
    main()
'''


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["run-asyncio", "config-none", "serve-goloop-run", "cli",
                                  "run-auto"])
def test_uvicorn_serves_on_goloop(goloop, tmp_path, mode):
    _need("uvicorn", goloop)
    want = "goloop.loop.Loop"
    if mode == "run-auto":
        # What the documentation warns of: loop="auto" replaces goloop's
        # policy with uvloop's whenever uvloop is importable.
        if loops.uvloop is None:
            pytest.skip("uvloop not installed")
        want = "uvloop.Loop"
    (tmp_path / "uvicorn_server.py").write_text(UVICORN_SERVER)
    (tmp_path / "asgi_app.py").write_text(UVICORN_APP)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "uvicorn_server.py"), mode, str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=_env(tmp_path), cwd=str(tmp_path))
    lines = []
    try:
        # uvicorn logs this line once its socket listens.
        for line in proc.stdout:
            lines.append(line)
            if "Uvicorn running on" in line:
                break
        else:
            pytest.fail("uvicorn did not start:\n" + "".join(lines))
        for i in range(3):
            reply = _get(port, f"/r{i}")
            assert reply == {"pid": proc.pid, "loop": want, "path": f"/r{i}"}
        if want.startswith("goloop"):
            assert "libgoloop.so" in _maps(proc.pid)
        proc.send_signal(signal.SIGTERM)  # uvicorn's graceful shutdown
        rest, _ = proc.communicate(timeout=30)
        lines.append(rest)
        assert proc.returncode == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = "".join(lines)
    assert "Finished server process" in text, text
    assert "Traceback" not in text and "ERROR" not in text, text


UVICORN_WORKERS = '''
import sys
import goloop, uvicorn

# At the top level: uvicorn starts its workers with multiprocessing's spawn,
# which re-imports this module (as __mp_main__) in each new interpreter.
goloop.install()

if __name__ == "__main__":
    uvicorn.run("asgi_app:app", host="127.0.0.1", port=int(sys.argv[1]), workers=2,
                loop="asyncio", http="h11", log_level="info")
'''


@pytest.mark.timeout(60)
def test_uvicorn_spawned_workers_run_goloop(goloop, tmp_path):
    _need("uvicorn", goloop)
    (tmp_path / "uvicorn_workers.py").write_text(UVICORN_WORKERS)
    (tmp_path / "asgi_app.py").write_text(UVICORN_APP)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "uvicorn_workers.py"), str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=_env(tmp_path), cwd=str(tmp_path))
    lines = []
    try:
        started = 0
        for line in proc.stdout:  # each worker logs this once it serves
            lines.append(line)
            started += "Application startup complete" in line
            if started == 2:
                break
        else:
            pytest.fail("uvicorn's workers did not start:\n" + "".join(lines))
        reply = _get(port, "/")
        assert reply["loop"] == "goloop.loop.Loop", reply
        assert reply["pid"] in _children(proc.pid)
        # The supervisor imported goloop and installed the policy, but made
        # no loop: Go runs only in the workers.
        assert "libgoloop.so" not in _maps(proc.pid)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        lines.append(rest)
        assert proc.returncode == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = "".join(lines)
    assert text.count("Finished server process") == 2, text
    assert "Traceback" not in text and "ERROR" not in text, text

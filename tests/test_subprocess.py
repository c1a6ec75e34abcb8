"""Subprocesses: loop.subprocess_exec / subprocess_shell and asyncio's Process API.

Run on goloop, uvloop and asyncio side by side. asyncio's own loop (3.11) needs a
child watcher to see its children exit; the fixture below gives it the default kind
(ThreadedChildWatcher). goloop watches each child through a pidfd and must never
consult a child watcher: for goloop the fixture installs one that fails if used.
"""

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest

from bounded import run

PY = sys.executable
PIPE = asyncio.subprocess.PIPE


class _NoChildWatcher(asyncio.AbstractChildWatcher):
    """goloop's loop must not use asyncio's child watchers at all."""

    def _fail(self, *args, **kwargs):
        raise AssertionError("goloop consulted asyncio's child watcher")

    add_child_handler = remove_child_handler = is_active = __enter__ = _fail

    def attach_loop(self, loop):
        pass  # the policy's set_event_loop calls this; it is not the loop using it

    def close(self):
        pass

    def __exit__(self, *exc):
        self._fail()


@pytest.fixture(autouse=True)
def child_watcher(loop_name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = asyncio.get_event_loop_policy()
        if loop_name == "asyncio":
            watcher = asyncio.ThreadedChildWatcher()
        elif loop_name == "goloop":
            watcher = _NoChildWatcher()
        else:
            watcher = None
        if watcher is not None:
            policy.set_child_watcher(watcher)
    try:
        yield
    finally:
        if watcher is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                # asyncio's policy would call close() on ours; drop it directly.
                policy._watcher = None


def _proc_state(pid):
    """The state letter of /proc/PID/stat ('Z' for a zombie), None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # the latter: reaped while we read
        return None


def _wait_for_state(pid, want, deadline=10.0):
    # Reaping by a thread or by the kernel sends us no event: poll /proc, bounded.
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        state = _proc_state(pid)
        if state == want or (want is None and state is None):
            return True
        time.sleep(0.005)
    return False


def test_communicate_large(loop):
    """MiBs each way through stdin and stdout, checked by digest."""
    data = os.urandom(6 << 20)
    code = ("import sys, hashlib; d = sys.stdin.buffer.read(); "
            "sys.stdout.buffer.write(d); sys.stdout.buffer.write(d[::-1]); "
            "sys.stderr.write(hashlib.sha256(d).hexdigest())")

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", code, stdin=PIPE, stdout=PIPE, stderr=PIPE)
        out, err = await proc.communicate(data)
        assert proc.returncode == 0
        assert err.decode() == hashlib.sha256(data).hexdigest()
        assert hashlib.sha256(out).digest() == hashlib.sha256(data + data[::-1]).digest()

    run(loop, main(), timeout=30)


def test_stderr_to_stdout_and_devnull(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; print('out', flush=True); print('err', file=sys.stderr)",
            stdin=subprocess.DEVNULL, stdout=PIPE, stderr=subprocess.STDOUT)
        out, err = await proc.communicate()
        assert (out, err) == (b"out\nerr\n", None)
        assert proc.stdin is None and proc.stderr is None

        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; print(repr(sys.stdin.read())); print('x', file=sys.stderr)",
            stdin=subprocess.DEVNULL, stdout=PIPE, stderr=subprocess.DEVNULL)
        out, err = await proc.communicate()
        assert (out, err, proc.returncode) == (b"''\n", None, 0)

    run(loop, main())


def test_shell_exit_status(loop):
    async def main():
        proc = await asyncio.create_subprocess_shell("exit 3")
        assert await proc.wait() == 3
        proc = await asyncio.create_subprocess_shell("echo $((6*7))", stdout=PIPE)
        out, _ = await proc.communicate()
        assert (out, proc.returncode) == (b"42\n", 0)

    run(loop, main())


@pytest.mark.parametrize("how", ["kill", "terminate"])
def test_returncode_on_kill_and_terminate(loop, how):
    async def main():
        proc = await asyncio.create_subprocess_exec("sleep", "60")
        assert proc.returncode is None
        getattr(proc, how)()
        rc = await proc.wait()
        assert rc == (-signal.SIGKILL if how == "kill" else -signal.SIGTERM)
        assert proc.returncode == rc
        # The child is gone and reaped: signalling it again is a no-op, as in asyncio.
        assert _proc_state(proc.pid) is None

    run(loop, main())


def test_send_signal(loop):
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(42))\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")

    async def main():
        proc = await asyncio.create_subprocess_exec(PY, "-c", code, stdout=PIPE)
        assert await proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGUSR1)
        assert await proc.wait() == 42

    run(loop, main())


def test_child_exits_before_we_read(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "print('early')", stdout=PIPE)
        assert await proc.wait() == 0
        assert await proc.stdout.read() == b"early\n"

    run(loop, main())


def test_protocol_callbacks_order(loop):
    """connection_made first; process_exited and each pipe's pipe_connection_lost
    once; connection_lost once, last, and only then does wait() return."""
    events = []

    class Proto(asyncio.SubprocessProtocol):
        def __init__(self):
            self.done = loop.create_future()

        def connection_made(self, transport):
            events.append("made")

        def pipe_data_received(self, fd, data):
            if ("data", fd) not in events:
                events.append(("data", fd))

        def pipe_connection_lost(self, fd, exc):
            events.append(("pipe_lost", fd, exc))

        def process_exited(self):
            events.append("exited")

        def connection_lost(self, exc):
            events.append(("lost", exc))
            self.done.set_result(None)

    async def main():
        t, p = await loop.subprocess_exec(
            Proto, PY, "-c", "import sys; print('o'); print('e', file=sys.stderr)",
            stdin=PIPE, stdout=PIPE, stderr=PIPE)
        assert t.get_pid() > 0
        assert t.get_pipe_transport(0) is not None
        assert t.get_pipe_transport(3) is None
        t.get_pipe_transport(0).close()
        await p.done
        assert t.get_returncode() == 0
        t.close()
        return events

    ev = run(loop, main())
    assert ev[0] == "made"
    assert ev[-1] == ("lost", None)
    assert sorted(e for e in ev if isinstance(e, tuple) and e[0] == "pipe_lost") == [
        ("pipe_lost", 0, None), ("pipe_lost", 1, None), ("pipe_lost", 2, None)]
    assert ev.count("exited") == 1
    assert {("data", 1), ("data", 2)} <= set(ev)


def test_loop_in_a_thread(loop):
    """No SIGCHLD handler, no main-thread watcher: a loop in another thread sees
    its children exit."""
    result = {}

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper()); sys.exit(5)",
            stdin=PIPE, stdout=PIPE)
        out, _ = await proc.communicate(b"threaded")
        return out, proc.returncode

    def in_thread():
        try:
            result["value"] = run(loop, main())
        except BaseException as exc:  # reported below, in the test's thread
            result["error"] = exc

    t = threading.Thread(target=in_thread)
    t.start()
    t.join(30)
    assert not t.is_alive()
    if "error" in result:
        raise result["error"]
    assert result["value"] == (b"THREADED", 5)


def test_many_concurrent_children(loop):
    async def one(i):
        proc = await asyncio.create_subprocess_exec(
            "cat", stdin=PIPE, stdout=PIPE)
        out, _ = await proc.communicate(b"child %d\n" % i * 100)
        return out, proc.returncode

    async def main():
        return await asyncio.gather(*(one(i) for i in range(50)))

    results = run(loop, main(), timeout=30)
    assert results == [(b"child %d\n" % i * 100, 0) for i in range(50)]


def test_cancel_wait(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec("sleep", "60")
        waiter = asyncio.ensure_future(proc.wait())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert proc.returncode is None
        proc.kill()
        assert await proc.wait() == -signal.SIGKILL

    run(loop, main())


@pytest.mark.skip_loop("uvloop", reason="uvloop 0.17 leaves the child a zombie once its "
                       "loop closed (still 'Z' after the 10 s deadline)")
def test_loop_close_with_running_child_leaves_no_zombie(loop):
    """asyncio does not kill a child when its loop closes; the child must still
    be reaped when it exits (not stay a zombie)."""
    async def start():
        # No pipes: closing a pipe transport after its loop closed raises
        # (call_soon on a closed loop), in asyncio as here.
        t, _ = await loop.subprocess_exec(
            asyncio.SubprocessProtocol, "sleep", "60", stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return t

    t = run(loop, start())
    pid = t.get_pid()
    loop.close()
    assert _proc_state(pid) not in (None, "Z")  # still running
    os.kill(pid, signal.SIGKILL)
    assert _wait_for_state(pid, None), f"pid {pid} left as {_proc_state(pid)!r}"
    t.close()  # the child is gone: nothing to kill, nothing raised


def test_transport_close_after_loop_close_kills_child(loop, loop_name):
    """Closing the transport of a child whose loop has closed kills the child,
    and it is reaped."""
    if loop_name == "uvloop":
        pytest.skip("uvloop's transport refuses any call once its loop closed")

    async def start():
        t, _ = await loop.subprocess_exec(
            asyncio.SubprocessProtocol, "sleep", "60", stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return t

    t = run(loop, start())
    pid = t.get_pid()
    loop.close()
    t.close()
    assert _wait_for_state(pid, None), f"pid {pid} left as {_proc_state(pid)!r}"


def test_never_reaps_a_child_it_did_not_start(loop):
    """A child started outside the loop stays ours to collect, with its own status."""
    outside = subprocess.Popen(["sh", "-c", "exit 7"])
    try:
        assert _wait_for_state(outside.pid, "Z")  # exited, not reaped

        async def main():
            procs = [await asyncio.create_subprocess_exec("true") for _ in range(5)]
            return [await p.wait() for p in procs]

        assert run(loop, main()) == [0] * 5
        assert _proc_state(outside.pid) == "Z"
    finally:
        assert outside.wait() == 7


def test_popen_arguments(loop, tmp_path):
    """cwd, env, pass_fds, start_new_session, preexec_fn, a file and an fd as
    stdin/stdout: forwarded to subprocess.Popen as asyncio forwards them."""
    (tmp_path / "in.txt").write_bytes(b"from a file\n")
    r, w = os.pipe()
    code = ("import os, sys\n"
            "os.write(int(sys.argv[1]), b'via pass_fds')\n"
            "print(os.getcwd(), os.environ.get('GOLOOP_T'), os.getsid(0) == os.getpid(),"
            " os.getpgid(0) == os.getpid())\n"
            "print(sys.stdin.read(), end='')\n")

    async def main():
        with open(tmp_path / "in.txt", "rb") as fin, open(tmp_path / "out.txt", "wb") as fout:
            proc = await asyncio.create_subprocess_exec(
                PY, "-c", code, str(w), stdin=fin.fileno(), stdout=fout,
                cwd=str(tmp_path), env={"GOLOOP_T": "yes"}, pass_fds=(w,),
                start_new_session=True)
            assert await proc.wait() == 0
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import os; print(os.getpgid(0) == os.getpid())", stdout=PIPE,
            preexec_fn=os.setpgrp)
        out, _ = await proc.communicate()
        assert out == b"True\n"

    try:
        run(loop, main())
        os.close(w)
        w = -1
        assert os.read(r, 100) == b"via pass_fds"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    assert (tmp_path / "out.txt").read_text() == f"{tmp_path} yes True True\nfrom a file\n"


@pytest.mark.xfail_loop("uvloop", reason="uvloop's subprocess_exec does not check text=")
def test_text_mode_refused(loop):
    async def main():
        with pytest.raises(ValueError):
            await loop.subprocess_exec(asyncio.SubprocessProtocol, "true", text=True)
        with pytest.raises(ValueError):
            await loop.subprocess_shell(asyncio.SubprocessProtocol, "true",
                                        universal_newlines=True)

    run(loop, main())


def test_bad_arguments(loop):
    """asyncio's checks, before any process starts."""
    async def main():
        with pytest.raises(ValueError):
            await loop.subprocess_shell(asyncio.SubprocessProtocol, "true", bufsize=4096)
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("/nonexistent/goloop-test")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        run(loop, main())


def test_exit_seen_while_a_forked_process_shares_the_pidfd(loop):
    """A process forked while the child runs holds a copy of every fd, the
    pidfd too. Once the child is reaped the loop must stop watching the pidfd
    for good: with epoll a watch dropped only after the fd is closed would
    stay behind (the file is still open elsewhere) and wake the loop for ever."""
    async def main():
        proc = await asyncio.create_subprocess_exec("sleep", "60")
        r, w = os.pipe()
        holder = os.fork()
        if holder == 0:  # holds copies of our fds until told to go
            try:
                os.close(w)
                os.read(r, 1)
            finally:
                os._exit(0)
        os.close(r)
        try:
            proc.kill()
            assert await proc.wait() == -signal.SIGKILL
            await asyncio.sleep(0.05)
            cpu = time.process_time()
            await asyncio.sleep(0.3)
            cpu = time.process_time() - cpu
        finally:
            os.close(w)
            os.waitpid(holder, 0)
        assert cpu < 0.15, f"the idle loop used {cpu:.2f} s of CPU in 0.3 s"

    run(loop, main())


def test_no_pidfd_kills_and_reaps_the_child(loop, loop_name, monkeypatch):
    # goloop only: how it watches a child is its own (a pidfd); if it cannot,
    # the child must not be left running unseen or as a zombie.
    if loop_name != "goloop":
        pytest.skip("goloop's pidfd watch")
    seen = []

    def no_pidfd(pid, flags=0):
        seen.append(pid)
        raise OSError(38, "Function not implemented")  # as on Linux < 5.3

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)

    async def main():
        with pytest.raises(OSError):
            await asyncio.create_subprocess_exec("sleep", "60", stdout=PIPE)

    run(loop, main())
    assert len(seen) == 1 and _proc_state(seen[0]) is None

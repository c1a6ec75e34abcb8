"""Server processes for the benchmark: started pinned, waited for, always reaped.

Every server the harness starts is registered here and killed on the way out,
whether the suite ends normally, raises, or is interrupted. Servers also get
PR_SET_PDEATHSIG so that they die with the harness even if it is SIGKILLed.
"""

import ctypes
import os
import signal
import socket
import subprocess
import tempfile
import time

_live = set()

# Set by the harness: run load generators SCHED_FIFO, so that on a machine
# busy with other work they are not kept waiting behind it. Servers run at
# the harness's nice level (-20) but not SCHED_FIFO: a multi-threaded server
# pinned to one CPU can livelock under FIFO, one thread spinning on a lock
# that a preempted thread of the same priority holds. goloop's Go runtime
# threads did exactly that under aiohttp load (docs/benchmarks.md).
realtime = False

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)



ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The loops the counting benchmarks (memory.py, syscalls.py) compare: name ->
# (the server's --loop, extra environment).
LOOP_CONFIGS = {
    "goloop-io_uring": ("goloop", {"GOLOOP_BACKEND": "io_uring"}),
    "goloop-epoll": ("goloop", {"GOLOOP_BACKEND": "epoll"}),
    "uvloop": ("uvloop", {}),
    "asyncio": ("asyncio", {}),
}


def tree_path(env):
    """Servers import goloop from this tree when it is built in place (make
    inplace), else from the interpreter's site-packages (make build)."""
    if os.path.exists(os.path.join(ROOT, "python", "goloop", "libgoloop.so")):
        env["PYTHONPATH"] = os.path.join(ROOT, "python") + (
            ":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def can_realtime():
    """Whether this process may make children SCHED_FIFO (root, or CAP_SYS_NICE)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except OSError:
        return False
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return True


def _child_setup():
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if realtime:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))


def _server_setup():
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class ServerError(Exception):
    pass


class Server:
    """A server process listening on 127.0.0.1:port or on a Unix socket."""

    def __init__(self, argv, *, cpu, port=None, unix=None, env=None, cwd=None, ready_timeout=20.0):
        self.port, self.unix = port, unix
        self.died, self.last_words = None, ""
        self.stderr = tempfile.TemporaryFile()
        # A new session keeps a terminal's Ctrl-C away from the servers: the
        # harness receives it and stops them itself, in order.
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), *argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr,
            env=env, cwd=cwd, start_new_session=True, preexec_fn=_server_setup)
        _live.add(self)
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self):
        return self.proc.pid

    def _wait_ready(self, timeout):
        """Poll until the listening socket accepts a connection.

        There is no event to wait on across processes short of a pipe
        protocol with every server; a refused connect is cheap and the
        poll ends at the first success.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f"server exited with {self.proc.returncode}: {self.stderr_tail()}")
            try:
                if self.unix:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.settimeout(1.0)
                    s.connect(self.unix)
                else:
                    s = socket.create_connection(("127.0.0.1", self.port), timeout=1.0)
                s.close()
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"server not accepting after {timeout:.0f}s: {self.stderr_tail()}")
            time.sleep(0.02)

    def alive(self):
        return self.proc.poll() is None

    def stderr_tail(self, limit=300):
        try:
            self.stderr.seek(0)
            text = self.stderr.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""
        lines = [ln for ln in text.splitlines() if ln.strip()]
        # faulthandler's report ends with a list of extension modules; the
        # line that says what happened is the one to show.
        fatal = [ln for ln in lines if ln.startswith("Fatal Python error")]
        return (fatal[0] if fatal else lines[-1] if lines else "no output")[-limit:]

    def stderr_text(self):
        """Everything the server wrote to stderr so far."""
        try:
            self.stderr.seek(0)
            return self.stderr.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""

    def echo_probe(self, timeout=3.0, ssl_context=None):
        """One byte echoed on a fresh connection: the server still serves.

        ssl_context: a client ssl.SSLContext, for a server that speaks TLS.
        """
        try:
            if self.unix:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(timeout)
                s.connect(self.unix)
            else:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
            if ssl_context is not None:
                s = ssl_context.wrap_socket(s, server_hostname="localhost")
            with s:
                s.sendall(b"?")
                return s.recv(1) == b"?"
        except OSError:
            return False

    def stop(self):
        """Stop the server; afterwards `died` says whether it had already exited."""
        if self.stderr.closed:
            return
        self.died = self.proc.poll()
        self.last_words = self.stderr_tail() if self.died is not None else ""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.unix:
            try:
                os.unlink(self.unix)
            except OSError:
                pass
        self.stderr.close()
        _live.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def stop_all():
    for s in list(_live):
        s.stop()


def free_port():
    """A port nothing listens on now; the server binds it right after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """utime+stime of a whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def run_bounded(argv, timeout, cwd=None, fifo=True):
    """Run a client to completion; a hung client is killed, never waited on forever.

    fifo=False keeps the client under the normal scheduler even when load
    generators run SCHED_FIFO: a client that is itself an event loop with
    threads (goloop's Go runtime) risks the livelock described above.
    """
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd,
                          preexec_fn=_child_setup if fifo else _server_setup)

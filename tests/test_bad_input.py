"""Bad input over the public asyncio API, table-driven, with asyncio as the judge.

Every case is a small function of an `Env` (the loop under test plus throw-away
resources it cleans up). It runs twice: once on a fresh asyncio SelectorEventLoop, which
gives the reference, then on the loop under test (goloop, uvloop, asyncio). What is
compared is the outcome:

  raised    the exception type (exactly), or None
  returned  what the case returns when that is a plain value (a bool, a list, ...)
  handled   the exception types that reached the loop's exception handler while the
            case ran and the loop settled afterwards (a non-callable run by call_soon,
            a transport's fatal error): sorted, without repeats

Afterwards the loop under test must still run callbacks and timers: bad input may be
refused, never leave the loop broken. Every case is bounded in time (a coroutine case
is awaited with a deadline and reported as "HANG" when it passes it), so a hang fails
a case instead of the suite.

uvloop deviations from asyncio are strict xfails with the reason; goloop deviations
stay red. A case that crashes goloop's interpreter is skipped on goloop only, with a
reason starting "CRASH:".
"""

import array
import asyncio
import concurrent.futures
import decimal
import inspect
import os
import shutil
import signal
import socket
import ssl
import tempfile
import threading

import pytest

import loops
from bounded import run
from peers import Recorder, listener, peer_connection

CASE_DEADLINE = 5.0
HANG = "HANG"


# -- the harness ---------------------------------------------------------------------

class Case:
    def __init__(self, name, fn, debug, marks):
        self.name, self.fn, self.debug, self.marks = name, fn, debug, marks


CASES = []


# uvloop 0.17's deviations from asyncio, case by case: strict xfails (skips where the
# deviation is a hang, which would only fail after the case's deadline).
_UV_DEBUG = "uvloop makes no debug-mode callback checks (asyncio raises TypeError at the call)"
_UV_NONE = "uvloop reports RuntimeError, not TypeError, when a None callback runs"
_UV_CONTEXT = ("uvloop lets TypeError ('an instance of Context was expected') escape the "
               "run loop; asyncio reports AttributeError to the exception handler")
_UV_FD_FIRST = ("uvloop's sock_* turn the object into an fd and register it first "
                "(ValueError/PermissionError), before asyncio's socket call")
_UV_SSL = "uvloop does not refuse an ssl.SSLSocket (asyncio: TypeError)"
_UV_REMOVE = "uvloop's remove_reader/remove_writer return None, not False"
_UV_PORT = ("uvloop validates ports in its own getaddrinfo (TypeError for a list, "
            "gaierror for out-of-range ints, or wraps 70000 to 4464)")
_UV_GET_BUFFER = ("uvloop wraps a failing get_buffer() (raising, or a buffer it cannot "
                  "write into) in RuntimeError")
UVLOOP_XFAIL = {
    "call_soon-int-debug": _UV_DEBUG,
    "call_soon-coroutine-debug": _UV_DEBUG,
    "call_soon-coroutine-function-debug": _UV_DEBUG,
    "call_soon_threadsafe-int-debug": _UV_DEBUG,
    "call_soon_threadsafe-coroutine-debug": _UV_DEBUG,
    "call_soon_threadsafe-coroutine-function-debug": _UV_DEBUG,
    "call_later-int-debug": _UV_DEBUG,
    "call_later-coroutine-debug": _UV_DEBUG,
    "call_later-coroutine-function-debug": _UV_DEBUG,
    "call_at-int-debug": _UV_DEBUG,
    "call_at-coroutine-debug": _UV_DEBUG,
    "call_soon-None": _UV_NONE,
    "call_soon-None-debug": _UV_NONE,
    "call_soon_threadsafe-None": _UV_NONE,
    "call_soon_threadsafe-None-debug": _UV_NONE,
    "call_soon-context-int": _UV_CONTEXT,
    "call_soon-context-dict": _UV_CONTEXT,
    "call_soon_threadsafe-context-int": _UV_CONTEXT,
    "call_soon_threadsafe-context-dict": _UV_CONTEXT,
    "call_later-context-int": _UV_CONTEXT,
    "call_at-context-int": _UV_CONTEXT,
    "create_task-context-int": _UV_CONTEXT,
    "call_later-Decimal-delay": "uvloop takes float(delay): a Decimal delay is accepted",
    "call_later-huge-int-delay": "uvloop accepts an int delay too large for a float",
    "call_at-Decimal-when": "uvloop subtracts loop.time() from `when` at the call: TypeError",
    "call_later-nan-fires-soon": "uvloop converts the delay to integer milliseconds: "
                                 "ValueError for NaN",
    "call_at-nan-fires-soon": "uvloop converts the delay to integer milliseconds: "
                              "ValueError for NaN",
    "closed-remove_reader": _UV_REMOVE,
    "closed-remove_writer": _UV_REMOVE,
    "remove_reader-not-registered": _UV_REMOVE,
    "remove_reader-fd-not-open": _UV_REMOVE,
    "remove_writer-not-registered": _UV_REMOVE,
    "remove_writer-fd-not-open": _UV_REMOVE,
    "closed-stop": "uvloop's stop() on a closed loop raises RuntimeError",
    "thread-add_signal_handler": "uvloop raises ValueError, not RuntimeError, "
                                 "outside the main thread",
    "sock_recv-sock-closed-socket": _UV_FD_FIRST,
    "sock_recv-sock-None": _UV_FD_FIRST,
    "sock_recv-sock-regular-file": _UV_FD_FIRST,
    "sock_recv_into-sock-closed-socket": _UV_FD_FIRST,
    "sock_recv_into-sock-None": _UV_FD_FIRST,
    "sock_recv_into-sock-regular-file": _UV_FD_FIRST,
    "sock_accept-sock-closed-socket": _UV_FD_FIRST,
    "sock_accept-sock-None": _UV_FD_FIRST,
    "sock_accept-sock-regular-file": _UV_FD_FIRST,
    "sock_recv-sock-ssl-socket": _UV_SSL,
    "sock_recv_into-sock-ssl-socket": _UV_SSL,
    "sock_sendall-sock-ssl-socket": _UV_SSL,
    "sock_connect-sock-ssl-socket": _UV_SSL,
    "sock_accept-sock-ssl-socket": _UV_SSL,
    "create_connection-ssl-sock": _UV_SSL,
    "create_server-ssl-sock": _UV_SSL,
    "connect_accepted_socket-ssl-sock": _UV_SSL,
    "sock_recv_into-readonly-memoryview-no-data": "uvloop checks the buffer only when "
                                                  "data arrives: the case times out",
    "sock_sendall-None": "uvloop's sock_sendall(None) sends nothing and returns",
    "sock_connect-1-tuple": "uvloop passes the address to getaddrinfo: TypeError",
    "sock_connect-empty-tuple": "uvloop passes the address to getaddrinfo: TypeError",
    "sock_connect-path-on-inet": "uvloop resolves the string: gaierror",
    "sock_connect-port-70000": _UV_PORT,
    "sock_connect-port-minus-1": _UV_PORT,
    "sock_connect-port-list": _UV_PORT,
    "create_connection-port-list": _UV_PORT,
    "create_connection-port-70000": _UV_PORT,
    "create_connection-port-minus-1": _UV_PORT,
    "create_connection-port-2**64": _UV_PORT,
    "create_server-port-list": _UV_PORT,
    "create_server-port-70000": _UV_PORT,
    "create_server-port-minus-1": _UV_PORT,
    "getaddrinfo-port-list": _UV_PORT,
    "getaddrinfo-port-float": _UV_PORT,
    "getaddrinfo-port-2**64": _UV_PORT,
    "getaddrinfo-name-port-2**64": _UV_PORT,
    "getaddrinfo-name-port-list": _UV_PORT,
    "getaddrinfo-flags-float": "uvloop's getaddrinfo accepts a float for flags",
    "getnameinfo-1-tuple": "uvloop checks the sockaddr length itself: ValueError",
    "getnameinfo-5-tuple": "uvloop checks the sockaddr length itself: ValueError",
    "getnameinfo-port-str": "uvloop's getnameinfo accepts a str port",
    "protocol-buffered-get_buffer-raises": _UV_GET_BUFFER,
    "protocol-buffered-get_buffer-bytes": _UV_GET_BUFFER,
    "protocol-buffered-get_buffer-int": _UV_GET_BUFFER,
    "protocol-buffered-get_buffer-None": _UV_GET_BUFFER,
    "protocol-buffered-get_buffer-non-contiguous": _UV_GET_BUFFER,
    "create_connection-factory-returns-None": "uvloop checks the protocol itself: "
                                              "TypeError('protocol is required')",
    "create_server-factory-returns-None": "uvloop reports TypeError('protocol is "
                                          "required') to the exception handler",
    "create_unix_connection-path-too-long": "uvloop reports FileNotFoundError for an "
                                            "AF_UNIX path that is too long",
    "transport-write-None": "uvloop's write(None) is silently ignored",
    "transport-write-array": "uvloop's write() takes any buffer (asyncio: TypeError "
                             "unless bytes, bytearray or memoryview)",
    "transport-write-non-contiguous": "uvloop raises TypeError at write() for a "
                                      "non-contiguous memoryview (asyncio: BufferError "
                                      "to the exception handler, connection closed)",
    "transport-set_write_buffer_limits-high-huge": "uvloop stores limits as C longs: "
                                                   "OverflowError",
    "transport-get_extra_info-unhashable-key": "uvloop's get_extra_info returns the "
                                               "default for an unhashable key",
    "set_default_executor-int": "uvloop 0.17 only warns (DeprecationWarning) for a "
                                "non-ThreadPoolExecutor",
    "set_default_executor-None": "uvloop 0.17 only warns (DeprecationWarning) for a "
                                 "non-ThreadPoolExecutor",
    "set_default_executor-plain-Executor": "uvloop 0.17 only warns (DeprecationWarning) "
                                           "for a non-ThreadPoolExecutor",
}
UVLOOP_SKIP = {
    "sock_recv-negative-nbytes-no-data": "uvloop waits for data before recv() checks "
                                         "nbytes: hangs until the case's deadline",
    "sock_recv-listening": "uvloop waits on a listening socket's sock_recv forever "
                           "(asyncio: OSError ENOTCONN)",
    "sock_accept-udp": "uvloop waits on a UDP socket's sock_accept forever "
                       "(asyncio: OSError EOPNOTSUPP)",
    "sock_recv-sock-int": "uvloop waits for an int fd to be readable, then fails "
                          "(AttributeError) only when cancelled",
    "sock_recv_into-sock-int": "uvloop waits for an int fd to be readable, then fails "
                               "(AttributeError) only when cancelled",
    "sock_accept-sock-int": "uvloop waits for an int fd to be readable, then fails "
                            "(AttributeError) only when cancelled",
    "add_reader-fd-closed-while-watched": "CRASH: uvloop (libuv) aborts the process when "
                                          "a watched fd is closed behind its back",
}


# Cases that crash goloop's interpreter: skipped on goloop only, so the rest can run.
GOLOOP_CRASH = {}


def _marks(name):
    marks = []
    if name in UVLOOP_XFAIL:
        marks.append(pytest.mark.xfail_loop("uvloop", reason=UVLOOP_XFAIL[name]))
    if name in UVLOOP_SKIP:
        marks.append(pytest.mark.skip_loop("uvloop", reason=UVLOOP_SKIP[name]))
    if name in GOLOOP_CRASH:
        marks.append(pytest.mark.skip_loop("goloop", reason="CRASH: " + GOLOOP_CRASH[name]))
    return marks

def T(name, fn, *, debug=False):
    """A table row: fn(env) is the case (a plain function or an async one)."""
    assert name not in {c.name for c in CASES}, name
    CASES.append(Case(name, fn, debug, _marks(name)))


def case(name, *, debug=False):
    """T as a decorator, for cases longer than a lambda."""
    def deco(fn):
        T(name, fn, debug=debug)
        return fn
    return deco


class Env:
    """The loop a case runs on and resources closed when the case is over."""

    def __init__(self, loop):
        self.loop = loop
        self._cleanups = []
        self._acleanups = []

    def defer(self, fn, *args):
        self._cleanups.append((fn, args))

    def close(self):
        while self._cleanups:
            fn, args = self._cleanups.pop()
            try:
                fn(*args)
            except Exception:
                pass

    async def aclose(self):
        while self._acleanups:
            fn = self._acleanups.pop()
            try:
                await fn()
            except Exception:
                pass

    # resources
    def sock(self, family=socket.AF_INET, type=socket.SOCK_STREAM, blocking=False):
        s = socket.socket(family, type)
        s.setblocking(blocking)
        self.defer(s.close)
        return s

    def socketpair(self, blocking=False):
        a, b = socket.socketpair()
        for s in (a, b):
            s.setblocking(blocking)
            self.defer(s.close)
        return a, b

    def closed_socket(self, family=socket.AF_INET, type=socket.SOCK_STREAM):
        s = socket.socket(family, type)
        s.close()
        return s

    def pipe(self):
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self.defer(os.close, r)
        self.defer(os.close, w)
        return r, w

    def regular_file(self):
        f = tempfile.TemporaryFile()
        self.defer(f.close)
        return f

    def opened(self, path):
        """A read-only fd for path (a device, a directory)."""
        fd = os.open(path, os.O_RDONLY)
        self.defer(os.close, fd)
        return fd

    def named_file(self):
        """The path of a regular file that exists."""
        path = self.unix_path()
        with open(path, "wb"):
            pass
        return path

    def listener(self, family=socket.AF_INET, blocking=False):
        s = listener(family)
        s.setblocking(blocking)
        self.defer(s.close)
        return s

    def unix_path(self):
        d = tempfile.mkdtemp(prefix="gl-bad-")
        self.defer(shutil.rmtree, d, True)
        return os.path.join(d, "sock")

    def unix_listener(self):
        path = self.unix_path()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.defer(s.close)
        s.bind(path)
        s.listen(8)
        return s, path

    def dead_port(self):
        """A TCP port on 127.0.0.1 nothing listens on (connections are refused)."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def coro(self):
        c = _noop()
        self.defer(c.close)
        return c

    def ssl_socket(self):
        """An ssl.SSLSocket (asyncio refuses them everywhere)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        s = ctx.wrap_socket(socket.socket(), server_hostname="localhost",
                            do_handshake_on_connect=False)
        s.setblocking(False)
        self.defer(s.close)
        return s

    def other_loop(self):
        lp = asyncio.SelectorEventLoop()
        self.defer(lp.close)
        return lp

    def connection(self):
        """A client transport with a Recorder protocol and its blocking peer."""
        return peer_connection(self.loop, lambda: Recorder(self.loop))

    def add(self, kind, fd, callback=None, *args):
        """add_reader/add_writer; removed again when the case is over."""
        getattr(self.loop, "add_" + kind)(fd, _cb if callback is None else callback, *args)
        self.defer(self._remove, kind, fd)

    def _remove(self, kind, fd):
        if not self.loop.is_closed():
            getattr(self.loop, "remove_" + kind)(fd)

    async def keep(self, aw):
        """Await a server or connection factory; closed when the case is over."""
        result = await aw
        if isinstance(result, asyncio.AbstractServer):
            async def close_server():
                result.close()
                await result.wait_closed()
            self._acleanups.append(close_server)
        elif isinstance(result, tuple) and result and isinstance(
                result[0], asyncio.BaseTransport):
            async def close_transport():
                result[0].close()
                await asyncio.sleep(0)
            self._acleanups.append(close_transport)
        return None

    async def in_thread(self, fn, *args):
        """fn(*args) in a thread of its own while the loop runs."""
        fut = self.loop.create_future()

        def target():
            try:
                res = fn(*args)
            except BaseException as exc:  # noqa: B902 - carried back to the loop
                self.loop.call_soon_threadsafe(_settle_future, fut, None, exc)
            else:
                self.loop.call_soon_threadsafe(_settle_future, fut, res, None)
        t = threading.Thread(target=target, daemon=True)
        t.start()
        try:
            return await fut
        finally:
            t.join(CASE_DEADLINE)


def _settle_future(fut, res, exc):
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(res)


def _cb(*args):
    pass


def _noargs():
    pass


async def _noop():
    pass


def _plain(value):
    """value when it is comparable across loops, else a stand-in."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return "<object>"


class Outcome:
    def __init__(self, raised, returned, handled, escaped, detail):
        self.raised, self.returned, self.handled, self.escaped, self.detail = (
            raised, returned, handled, escaped, detail)

    def key(self):
        return (self.raised, self.returned, self.handled, self.escaped)

    def __repr__(self):
        what = f"raised {self.raised}" if self.raised else f"returned {self.returned!r}"
        if self.handled:
            what += f", handler got {list(self.handled)}"
        if self.escaped:
            what += f", then {self.escaped} escaped the run loop"
        return what + (f" ({self.detail})" if self.detail else "")


async def _guarded(env, fn):
    try:
        return await fn(env)
    finally:
        await env.aclose()


def _run_case(loop, env, fn):
    if not inspect.iscoroutinefunction(fn):
        return fn(env)
    task = loop.create_task(_guarded(env, fn))
    done, _ = loop.run_until_complete(asyncio.wait({task}, timeout=CASE_DEADLINE))
    if not done:
        try:  # a hang, whatever cancelling it does (uvloop's cancel can raise)
            task.cancel()
            loop.run_until_complete(asyncio.wait({task}, timeout=1.0))
        except Exception:
            pass
        raise _Hang()
    return task.result()


class _Hang(Exception):
    pass


def _settle(loop):
    async def spin():
        for _ in range(3):
            await asyncio.sleep(0)
    run(loop, spin(), timeout=CASE_DEADLINE)


def outcome(loop, c):
    """Run case c on loop, then let the loop settle for a few iterations."""
    handled = []
    loop.set_exception_handler(lambda lp, ctx: handled.append(ctx))
    loop.set_debug(c.debug)
    env = Env(loop)
    raised = returned = escaped = None
    detail = ""
    try:
        try:
            returned = _plain(_run_case(loop, env, c.fn))
        except _Hang:
            raised, detail = HANG, f"no answer in {CASE_DEADLINE} s"
        except Exception as exc:
            raised, detail = type(exc).__name__, f"{type(exc).__name__}: {exc}"
        if not loop.is_closed() and not loop.is_running():
            try:
                _settle(loop)
            except Exception as exc:
                # An error no callback caught: it left run_until_complete.
                escaped = type(exc).__name__
                detail += f"; escaped: {type(exc).__name__}: {exc}"
    finally:
        env.close()
    types = sorted({type(ctx["exception"]).__name__ for ctx in handled
                    if ctx.get("exception") is not None})
    return Outcome(raised, returned, tuple(types), escaped, detail.lstrip("; "))


_reference = {}


def reference(c):
    """The outcome of case c on asyncio's own selector loop (computed once)."""
    if c.name not in _reference:
        lp = asyncio.SelectorEventLoop()
        try:
            _reference[c.name] = outcome(lp, c)
        finally:
            lp.close()
    return _reference[c.name]


async def _still_works(loop):
    fut = loop.create_future()
    loop.call_soon(fut.set_result, "soon")
    assert await fut == "soon"
    fut = loop.create_future()
    loop.call_later(0.001, fut.set_result, "later")
    assert await fut == "later"
    await asyncio.sleep(0)


# -- callbacks: call_soon, call_soon_threadsafe, call_later, call_at -----------------

def _on(method, *args, **kwargs):
    """The case loop.<method>(*args, **kwargs)."""
    return lambda e: getattr(e.loop, method)(*args, **kwargs)


for _m in ("call_soon", "call_soon_threadsafe"):
    T(f"{_m}-int", _on(_m, 42))
    T(f"{_m}-int-debug", _on(_m, 42), debug=True)
    T(f"{_m}-None", _on(_m, None))
    T(f"{_m}-None-debug", _on(_m, None), debug=True)
    T(f"{_m}-str", _on(_m, "callback"))
    T(f"{_m}-coroutine", lambda e, m=_m: getattr(e.loop, m)(e.coro()))
    T(f"{_m}-coroutine-debug", lambda e, m=_m: getattr(e.loop, m)(e.coro()), debug=True)
    T(f"{_m}-coroutine-function-debug", _on(_m, _noop), debug=True)
    T(f"{_m}-no-arguments", _on(_m))
    T(f"{_m}-callback-gets-too-many-args", _on(_m, _noargs, 1, 2))
    T(f"{_m}-context-int", _on(_m, _cb, context=42))
    T(f"{_m}-context-dict", _on(_m, _cb, context={}))
    T(f"{_m}-context-None", _on(_m, _cb, context=None))
    T(f"{_m}-unknown-keyword", _on(_m, _cb, delay=1))
    T(f"{_m}-unknown-keyword-with-context", _on(_m, _cb, 1, context=42, name="x"))

T("call_later-None-delay", lambda e: e.loop.call_later(None, _cb))
T("call_later-str-delay", lambda e: e.loop.call_later("1", _cb))
T("call_later-bytes-delay", lambda e: e.loop.call_later(b"1", _cb))
T("call_later-list-delay", lambda e: e.loop.call_later([1], _cb))
T("call_later-Decimal-delay", lambda e: e.loop.call_later(decimal.Decimal("0.01"), _cb))
T("call_later-huge-int-delay", lambda e: e.loop.call_later(10 ** 400, _cb))
T("call_later-no-arguments", lambda e: e.loop.call_later())
T("call_later-no-callback", lambda e: e.loop.call_later(0.01))
T("call_later-int", lambda e: e.loop.call_later(0, 42))
T("call_later-int-debug", lambda e: e.loop.call_later(0, 42), debug=True)
T("call_later-coroutine-debug", lambda e: e.loop.call_later(0, e.coro()), debug=True)
T("call_later-coroutine-function-debug", lambda e: e.loop.call_later(0, _noop), debug=True)
T("call_later-context-int", lambda e: e.loop.call_later(0, _cb, context=42))
T("call_later-unknown-keyword", lambda e: e.loop.call_later(0, _cb, when=1))
T("call_at-None-when", lambda e: e.loop.call_at(None, _cb))
T("call_at-no-arguments", lambda e: e.loop.call_at())
T("call_at-no-callback", lambda e: e.loop.call_at(e.loop.time()))
T("call_at-int-debug", lambda e: e.loop.call_at(e.loop.time(), 42), debug=True)
T("call_at-coroutine-debug", lambda e: e.loop.call_at(e.loop.time(), e.coro()), debug=True)
T("call_at-context-int", lambda e: e.loop.call_at(e.loop.time(), _cb, context=42))
T("call_at-unknown-keyword", lambda e: e.loop.call_at(e.loop.time(), _cb, delay=1))


def _call_at_then_run(when):
    # asyncio stores any `when` and fails only if its run loop subtracts the time
    # from it; a loop may refuse at the call instead.
    def go(e):
        h = e.loop.call_at(when, _cb)
        try:
            run(e.loop, asyncio.sleep(0))
        finally:
            h.cancel()
    return go


T("call_at-str-when", _call_at_then_run("soon"))
T("call_at-Decimal-when", _call_at_then_run(decimal.Decimal(0)))


def _fires(method, value):
    async def go(e):
        fut = e.loop.create_future()
        getattr(e.loop, method)(value, fut.set_result, "fired")
        return await asyncio.wait_for(fut, 1.0)
    return go


def _never_fires(method, value):
    async def go(e):
        fired = []
        h = getattr(e.loop, method)(value, fired.append, "fired")
        try:
            await asyncio.sleep(0.02)
        finally:
            h.cancel()
        return fired
    return go


T("call_later-nan-fires-soon", _fires("call_later", float("nan")))
T("call_later-minus-inf-fires-soon", _fires("call_later", float("-inf")))
T("call_later-minus-1e300-fires-soon", _fires("call_later", -1e300))
T("call_at-nan-fires-soon", _fires("call_at", float("nan")))
T("call_at-minus-inf-fires-soon", _fires("call_at", float("-inf")))
T("call_later-inf-never-fires", _never_fires("call_later", float("inf")))
T("call_later-1e300-never-fires", _never_fires("call_later", 1e300))
T("call_later-2**62-never-fires", _never_fires("call_later", float(2 ** 62)))
T("call_at-inf-never-fires", _never_fires("call_at", float("inf")))
T("call_at-1e300-never-fires", _never_fires("call_at", 1e300))


# -- running, tasks, a closed loop, a running loop, other threads --------------------

class _BadAwaitable:
    def __await__(self):
        return 42  # not an iterator


def _generator():
    yield 1


for _name, _arg in [("int", lambda e: 42), ("None", lambda e: None),
                    ("str", lambda e: "coro"), ("function", lambda e: _noop),
                    ("generator", lambda e: _generator()),
                    ("bad-awaitable", lambda e: _BadAwaitable()),
                    ("other-loops-future", lambda e: e.other_loop().create_future())]:
    T(f"run_until_complete-{_name}",
      lambda e, a=_arg: e.loop.run_until_complete(a(e)))
    T(f"create_task-{_name}", lambda e, a=_arg: e.loop.create_task(a(e)))

T("create_task-future", lambda e: e.loop.create_task(e.loop.create_future()))
T("create_task-no-arguments", lambda e: e.loop.create_task())
T("create_task-unknown-keyword", lambda e: e.loop.create_task(e.coro(), loop=e.loop))
T("create_task-context-int", lambda e: e.loop.create_task(e.coro(), context=42))
T("create_task-int-debug", lambda e: e.loop.create_task(42), debug=True)
T("set_task_factory-int", lambda e: e.loop.set_task_factory(42))
T("set_exception_handler-int", lambda e: e.loop.set_exception_handler(42))


def _closed(e):
    e.loop.close()
    return e.loop


T("closed-run_forever", lambda e: _closed(e).run_forever())
T("closed-run_until_complete", lambda e: _closed(e).run_until_complete(e.coro()))
T("closed-run_until_complete-int", lambda e: _closed(e).run_until_complete(42))
T("closed-create_task", lambda e: _closed(e).create_task(e.coro()))
T("closed-create_task-debug", lambda e: _closed(e).create_task(e.coro()), debug=True)
T("closed-call_soon", lambda e: _closed(e).call_soon(_cb))
T("closed-call_soon_threadsafe", lambda e: _closed(e).call_soon_threadsafe(_cb))
T("closed-call_later", lambda e: _closed(e).call_later(0, _cb))
T("closed-call_at", lambda e: _closed(e).call_at(0, _cb))
T("closed-run_in_executor", lambda e: _closed(e).run_in_executor(None, _cb))
T("closed-add_reader", lambda e: _closed(e).add_reader(e.pipe()[0], _cb))
T("closed-add_writer", lambda e: _closed(e).add_writer(e.pipe()[1], _cb))
T("closed-remove_reader", lambda e: _closed(e).remove_reader(e.pipe()[0]))
T("closed-remove_writer", lambda e: _closed(e).remove_writer(e.pipe()[1]))
T("closed-add_signal_handler",
  lambda e: _closed(e).add_signal_handler(signal.SIGUSR1, _cb))
T("closed-close-again", lambda e: _closed(e).close())
T("closed-stop", lambda e: _closed(e).stop())


@case("running-close")
async def _running_close(e):
    e.loop.close()


@case("running-run_forever")
async def _running_run_forever(e):
    e.loop.run_forever()


@case("running-run_until_complete")
async def _running_ruc(e):
    e.loop.run_until_complete(e.coro())


@case("running-close-from-callback")
async def _running_close_cb(e):
    fut = e.loop.create_future()

    def cb():
        try:
            e.loop.close()
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(None)
    e.loop.call_soon(cb)
    await fut


def _from_thread(fn):
    async def go(e):
        return _plain(await e.in_thread(fn, e))
    return go


for _name, _fn in [
        ("call_soon", lambda e: e.loop.call_soon(_cb)),
        ("call_later", lambda e: e.loop.call_later(0.001, _cb)),
        ("call_at", lambda e: e.loop.call_at(e.loop.time(), _cb)),
        ("create_task", lambda e: e.loop.create_task(e.coro())),
        ("call_soon_threadsafe", lambda e: e.loop.call_soon_threadsafe(_cb))]:
    T(f"thread-{_name}-debug", _from_thread(_fn), debug=True)
T("thread-call_soon-non-callable-debug", _from_thread(lambda e: e.loop.call_soon(42)),
  debug=True)
T("thread-run_until_complete", _from_thread(
    lambda e: e.loop.run_until_complete(e.coro())))
T("thread-run_forever", _from_thread(lambda e: e.loop.run_forever()))
T("thread-close", _from_thread(lambda e: e.loop.close()))
T("thread-add_signal_handler", _from_thread(
    lambda e: e.loop.add_signal_handler(signal.SIGUSR1, _cb)))


# -- readers and writers ---------------------------------------------------------------

class _FilenoRaises:
    def fileno(self):
        raise OSError(9, "no fd")


class _FilenoStr:
    def fileno(self):
        return "three"


for _kind in ("reader", "writer"):
    T(f"add_{_kind}-negative-fd", lambda e, k=_kind: e.add(k, -1))
    T(f"add_{_kind}-str", lambda e, k=_kind: e.add(k, "3"))
    T(f"add_{_kind}-float", lambda e, k=_kind: e.add(k, 3.0))
    T(f"add_{_kind}-None", lambda e, k=_kind: e.add(k, None))
    T(f"add_{_kind}-fileno-raises", lambda e, k=_kind: e.add(k, _FilenoRaises()))
    T(f"add_{_kind}-fileno-str", lambda e, k=_kind: e.add(k, _FilenoStr()))
    T(f"add_{_kind}-closed-socket", lambda e, k=_kind: e.add(k, e.closed_socket()))
    T(f"add_{_kind}-fd-not-open", lambda e, k=_kind: e.add(k, 1_000_000))
    T(f"add_{_kind}-fd-2**40", lambda e, k=_kind: e.add(k, 2 ** 40))
    T(f"add_{_kind}-regular-file", lambda e, k=_kind: e.add(k, e.regular_file()))
    T(f"add_{_kind}-regular-file-fd",
      lambda e, k=_kind: e.add(k, e.regular_file().fileno()))
    T(f"add_{_kind}-dev-null", lambda e, k=_kind: e.add(k, e.opened("/dev/null")))
    T(f"add_{_kind}-directory", lambda e, k=_kind: e.add(k, e.opened("/tmp")))
    T(f"add_{_kind}-pipe", lambda e, k=_kind: e.add(k, e.pipe()[0 if k == "reader" else 1]))
    T(f"add_{_kind}-no-callback", lambda e, k=_kind: getattr(e.loop, "add_" + k)(e.pipe()[0]))
    T(f"remove_{_kind}-negative-fd", lambda e, k=_kind: getattr(e.loop, "remove_" + k)(-1))
    T(f"remove_{_kind}-str", lambda e, k=_kind: getattr(e.loop, "remove_" + k)("3"))
    T(f"remove_{_kind}-closed-socket",
      lambda e, k=_kind: getattr(e.loop, "remove_" + k)(e.closed_socket()))
    T(f"remove_{_kind}-not-registered",
      lambda e, k=_kind: getattr(e.loop, "remove_" + k)(e.pipe()[0]))
    T(f"remove_{_kind}-fd-not-open",
      lambda e, k=_kind: getattr(e.loop, "remove_" + k)(1_000_000))

    @case(f"add_{_kind}-transport-fd")
    async def _add_transport_fd(e, k=_kind):
        async with e.connection() as (tr, pr, peer):
            e.add(k, tr.get_extra_info("socket").fileno())

    @case(f"add_{_kind}-transport-socket")
    async def _add_transport_sock(e, k=_kind):
        async with e.connection() as (tr, pr, peer):
            e.add(k, tr.get_extra_info("socket"))

    @case(f"remove_{_kind}-transport-fd")
    async def _remove_transport_fd(e, k=_kind):
        async with e.connection() as (tr, pr, peer):
            return getattr(e.loop, "remove_" + k)(tr.get_extra_info("socket").fileno())


@case("add_reader-non-callable-fires")
async def _reader_non_callable(e):
    r, w = e.pipe()
    e.add("reader", r, 42)
    os.write(w, b"x")
    await asyncio.sleep(0.02)
    e.loop.remove_reader(r)


@case("add_reader-callback-wrong-arg-count-fires")
async def _reader_wrong_args(e):
    r, w = e.pipe()
    e.add("reader", r, _noargs, 1)
    os.write(w, b"x")
    await asyncio.sleep(0.02)
    e.loop.remove_reader(r)


@case("add_reader-fd-closed-while-watched")
async def _reader_fd_closed(e):
    # Closing an fd that is being watched is a user error asyncio tolerates: the
    # kernel drops it from epoll; remove_reader afterwards still answers True.
    r, w = os.pipe()
    os.close(w)
    try:
        e.loop.add_reader(r, _cb)
    finally:
        os.close(r)
    await asyncio.sleep(0.01)
    return e.loop.remove_reader(r)


# -- sock_* ----------------------------------------------------------------------------

@case("sock_recv-blocking-socket-debug", debug=True)
async def _recv_blocking_debug(e):
    a, b = e.socketpair(blocking=True)
    b.send(b"x")
    return await e.loop.sock_recv(a, 10)


@case("sock_recv-blocking-socket-data-ready")
async def _recv_blocking_ready(e):
    a, b = e.socketpair(blocking=True)
    b.send(b"x")
    return await e.loop.sock_recv(a, 10)


@case("sock_recv_into-blocking-socket-debug", debug=True)
async def _recv_into_blocking_debug(e):
    a, b = e.socketpair(blocking=True)
    b.send(b"x")
    return await e.loop.sock_recv_into(a, bytearray(10))


@case("sock_sendall-blocking-socket-debug", debug=True)
async def _sendall_blocking_debug(e):
    a, b = e.socketpair(blocking=True)
    return await e.loop.sock_sendall(a, b"x")


@case("sock_sendall-blocking-socket")
async def _sendall_blocking(e):
    a, b = e.socketpair(blocking=True)
    return await e.loop.sock_sendall(a, b"x")


@case("sock_connect-blocking-socket-debug", debug=True)
async def _connect_blocking_debug(e):
    ls = e.listener()
    return await e.loop.sock_connect(e.sock(blocking=True), ls.getsockname())


@case("sock_accept-blocking-socket-debug", debug=True)
async def _accept_blocking_debug(e):
    ls = e.listener(blocking=True)
    return await e.loop.sock_accept(ls)


for _op, _sock_call in [
        ("sock_recv", lambda e, s: e.loop.sock_recv(s, 10)),
        ("sock_recv_into", lambda e, s: e.loop.sock_recv_into(s, bytearray(10))),
        ("sock_sendall", lambda e, s: e.loop.sock_sendall(s, b"data")),
        ("sock_connect", lambda e, s: e.loop.sock_connect(s, ("127.0.0.1", e.dead_port()))),
        ("sock_accept", lambda e, s: e.loop.sock_accept(s))]:
    for _what, _sock in [
            ("closed-socket", lambda e: e.closed_socket()),
            ("int", lambda e: e.pipe()[0]),
            ("None", lambda e: None),
            ("regular-file", lambda e: e.regular_file()),
            ("ssl-socket", lambda e: e.ssl_socket()),
    ]:
        async def _go(e, c=_sock_call, s=_sock):
            return _plain(await c(e, s(e)))
        T(f"{_op}-sock-{_what}", _go)


def _recv_case(nbytes):
    async def go(e):
        a, b = e.socketpair()
        b.send(b"x")
        return await e.loop.sock_recv(a, nbytes)
    return go


T("sock_recv-negative-nbytes", _recv_case(-1))
T("sock_recv-huge-nbytes", _recv_case(2 ** 64))
T("sock_recv-str-nbytes", _recv_case("10"))
T("sock_recv-None-nbytes", _recv_case(None))
T("sock_recv-float-nbytes", _recv_case(10.0))
T("sock_recv-zero-nbytes", _recv_case(0))


@case("sock_recv-negative-nbytes-no-data")
async def _recv_neg_nodata(e):
    a, b = e.socketpair()
    return await e.loop.sock_recv(a, -1)


def _recv_into_case(make_buf, data=True):
    async def go(e):
        a, b = e.socketpair()
        if data:
            b.send(b"x")
        return await asyncio.wait_for(e.loop.sock_recv_into(a, make_buf()), 1.0)
    return go


T("sock_recv_into-readonly-memoryview", _recv_into_case(lambda: memoryview(b"abcdef")))
T("sock_recv_into-readonly-memoryview-no-data",
  _recv_into_case(lambda: memoryview(b"abcdef"), data=False))
T("sock_recv_into-bytes", _recv_into_case(lambda: b"abcdef"))
T("sock_recv_into-str", _recv_into_case(lambda: "abcdef"))
T("sock_recv_into-None", _recv_into_case(lambda: None))
T("sock_recv_into-non-contiguous", _recv_into_case(lambda: memoryview(bytearray(10))[::2]))
T("sock_recv_into-empty-bytearray", _recv_into_case(lambda: bytearray(0)))


def _sendall_case(data):
    async def go(e):
        a, b = e.socketpair()
        return await e.loop.sock_sendall(a, data)
    return go


T("sock_sendall-str", _sendall_case("text"))
T("sock_sendall-int", _sendall_case(42))
T("sock_sendall-None", _sendall_case(None))
T("sock_sendall-list", _sendall_case([b"a"]))
T("sock_sendall-non-contiguous", _sendall_case(memoryview(b"abcdef")[::2]))
T("sock_sendall-empty", _sendall_case(b""))


@case("sock_sendall-unconnected")
async def _sendall_unconnected(e):
    return await e.loop.sock_sendall(e.sock(), b"x")


@case("sock_sendall-listening")
async def _sendall_listening(e):
    return await e.loop.sock_sendall(e.listener(), b"x")


@case("sock_recv-listening")
async def _recv_listening(e):
    return await e.loop.sock_recv(e.listener(), 10)


@case("sock_recv-transport-fd")
async def _recv_transport_sock(e):
    # A socket object for the fd a transport owns (detached again, never closed):
    # nothing to read, so asyncio looks for a transport on the fd before waiting.
    async with e.connection() as (tr, pr, peer):
        sock = socket.socket(fileno=tr.get_extra_info("socket").fileno())
        try:
            return await e.loop.sock_recv(sock, 10)
        finally:
            sock.detach()


@case("sock_accept-not-listening")
async def _accept_not_listening(e):
    return await e.loop.sock_accept(e.sock())


@case("sock_accept-udp")
async def _accept_udp(e):
    return await e.loop.sock_accept(e.sock(type=socket.SOCK_DGRAM))


def _connect_case(address, family=socket.AF_INET, type=socket.SOCK_STREAM):
    async def go(e):
        s = e.sock(family, type)
        addr = address(e) if callable(address) else address
        return await e.loop.sock_connect(s, addr)
    return go


T("sock_connect-refused", _connect_case(lambda e: ("127.0.0.1", e.dead_port())))
T("sock_connect-int-address", _connect_case(42))
T("sock_connect-None-address", _connect_case(None))
T("sock_connect-1-tuple", _connect_case(("127.0.0.1",)))
T("sock_connect-empty-tuple", _connect_case(()))
T("sock_connect-port-70000", _connect_case(("127.0.0.1", 70000)))
T("sock_connect-port-minus-1", _connect_case(("127.0.0.1", -1)))
T("sock_connect-port-bad-service", _connect_case(("127.0.0.1", "no-such-service")))
T("sock_connect-port-list", _connect_case(("127.0.0.1", [80])))
T("sock_connect-host-int", _connect_case((42, 80)))
T("sock_connect-ipv6-on-inet", _connect_case(("::1", 80)))
T("sock_connect-ipv4-on-inet6",
  _connect_case(lambda e: ("127.0.0.1", e.dead_port()), family=socket.AF_INET6))
T("sock_connect-path-on-inet", _connect_case("/tmp/nothing-here"))
T("sock_connect-tuple-on-unix", _connect_case(("127.0.0.1", 80), family=socket.AF_UNIX))
T("sock_connect-missing-path-on-unix",
  _connect_case(lambda e: e.unix_path(), family=socket.AF_UNIX))
T("sock_connect-int-on-unix", _connect_case(42, family=socket.AF_UNIX))


@case("sock_connect-already-connected")
async def _connect_twice(e):
    ls = e.listener()
    s = e.sock()
    await e.loop.sock_connect(s, ls.getsockname())
    await e.loop.sock_connect(s, ls.getsockname())


# -- transports ------------------------------------------------------------------------

def _on_transport(fn):
    async def go(e):
        async with e.connection() as (tr, pr, peer):
            res = fn(tr)
            await asyncio.sleep(0.01)
            return _plain(res)
    return go


T("transport-write-str", _on_transport(lambda tr: tr.write("text")))
T("transport-write-int", _on_transport(lambda tr: tr.write(42)))
T("transport-write-None", _on_transport(lambda tr: tr.write(None)))
T("transport-write-list", _on_transport(lambda tr: tr.write([b"a"])))
T("transport-write-array", _on_transport(lambda tr: tr.write(array.array("b", b"ab"))))
T("transport-write-non-contiguous",
  _on_transport(lambda tr: tr.write(memoryview(b"abcdef")[::2])))
T("transport-writelines-str-items", _on_transport(lambda tr: tr.writelines(["a", "b"])))
T("transport-writelines-int", _on_transport(lambda tr: tr.writelines(42)))
T("transport-writelines-None", _on_transport(lambda tr: tr.writelines(None)))
T("transport-write-after-close", _on_transport(lambda tr: (tr.close(), tr.write(b"x"))))
T("transport-write-after-abort", _on_transport(lambda tr: (tr.abort(), tr.write(b"x"))))
T("transport-write-after-write_eof",
  _on_transport(lambda tr: (tr.write_eof(), tr.write(b"x"))))
T("transport-write-empty-after-write_eof",
  _on_transport(lambda tr: (tr.write_eof(), tr.write(b""))))
T("transport-writelines-after-write_eof",
  _on_transport(lambda tr: (tr.write_eof(), tr.writelines([b"x"]))))
T("transport-write_eof-twice", _on_transport(lambda tr: (tr.write_eof(), tr.write_eof())))
T("transport-write_eof-after-close",
  _on_transport(lambda tr: (tr.close(), tr.write_eof())))
T("transport-close-twice", _on_transport(lambda tr: (tr.close(), tr.close())))
T("transport-abort-after-close", _on_transport(lambda tr: (tr.close(), tr.abort())))

for _name, _kw in [("high-negative", dict(high=-1)),
                   ("low-negative", dict(low=-1)),
                   ("high-below-low", dict(high=1, low=2)),
                   ("high-str", dict(high="64")),
                   ("low-str", dict(high=64, low="8")),
                   ("high-None-low-None", dict(high=None, low=None)),
                   ("high-float", dict(high=1024.0)),
                   ("high-huge", dict(high=2 ** 70)),
                   ("unknown-keyword", dict(hi=10)),
                   ("positional-three", None)]:
    if _kw is None:
        T(f"transport-set_write_buffer_limits-{_name}",
          _on_transport(lambda tr: tr.set_write_buffer_limits(1, 0, 0)))
    else:
        T(f"transport-set_write_buffer_limits-{_name}",
          _on_transport(lambda tr, kw=_kw: (tr.set_write_buffer_limits(**kw),
                                            tr.get_write_buffer_limits())))

T("transport-pause_reading-twice",
  _on_transport(lambda tr: (tr.pause_reading(), tr.pause_reading(), tr.is_reading())))
T("transport-resume_reading-not-paused",
  _on_transport(lambda tr: (tr.resume_reading(), tr.is_reading())))
T("transport-pause_reading-after-close",
  _on_transport(lambda tr: (tr.close(), tr.pause_reading())))
T("transport-resume_reading-after-close",
  _on_transport(lambda tr: (tr.pause_reading(), tr.close(), tr.resume_reading())))
T("transport-get_extra_info-unknown",
  _on_transport(lambda tr: tr.get_extra_info("no-such-key")))
T("transport-get_extra_info-unknown-default",
  _on_transport(lambda tr: tr.get_extra_info("no-such-key", "dflt")))
T("transport-get_extra_info-int-key", _on_transport(lambda tr: tr.get_extra_info(42)))
T("transport-get_extra_info-unhashable-key",
  _on_transport(lambda tr: tr.get_extra_info([])))
T("transport-get_extra_info-no-arguments", _on_transport(lambda tr: tr.get_extra_info()))


# -- protocols that misbehave: what the transport does with their errors --------------

class _Watched:
    """A protocol that reports how its connection ended (lost: the exception type's
    name, or None for a clean close)."""

    def __init__(self, loop):
        self.lost = loop.create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(type(exc).__name__ if exc is not None else None)


class _Plain(_Watched, asyncio.Protocol):
    pass


class _Buffered(_Watched, asyncio.BufferedProtocol):
    def __init__(self, loop):
        super().__init__(loop)
        self.buf = bytearray(64)

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        pass


def _misbehaving(cls, *, send=b"data", shut=False, **methods):
    """The case: a connection whose protocol is cls with methods replaced; the peer
    sends `send` (then shuts down writing when shut). Returns how the connection
    ended within half a second: ("lost", exception type name) or ("open",)."""
    async def go(e):
        proto = cls(e.loop)
        for name, fn in methods.items():
            setattr(proto, name, fn.__get__(proto))
        ls = e.listener(blocking=True)
        ls.settimeout(CASE_DEADLINE)
        tr, _ = await e.loop.create_connection(lambda: proto, *ls.getsockname())
        try:
            peer, _ = ls.accept()
            e.defer(peer.close)
            if send:
                peer.sendall(send)
            if shut:
                peer.shutdown(socket.SHUT_WR)
            try:
                return ("lost", await asyncio.wait_for(asyncio.shield(proto.lost), 0.5))
            except asyncio.TimeoutError:
                return ("open",)
        finally:
            tr.close()
            await asyncio.sleep(0)
    return go


def _raise(self, *args):
    raise ZeroDivisionError("protocol bug")


T("protocol-data_received-raises", _misbehaving(_Plain, data_received=_raise))
T("protocol-eof_received-raises",
  _misbehaving(_Plain, send=b"", shut=True, eof_received=_raise))
T("protocol-connection_made-raises", _misbehaving(_Plain, connection_made=_raise))
T("protocol-data_received-not-callable",
  _misbehaving(_Plain, data_received=lambda self: 42))
T("protocol-buffered-get_buffer-raises", _misbehaving(_Buffered, get_buffer=_raise))
T("protocol-buffered-get_buffer-empty",
  _misbehaving(_Buffered, get_buffer=lambda self, n: bytearray(0)))
T("protocol-buffered-get_buffer-bytes",
  _misbehaving(_Buffered, get_buffer=lambda self, n: b"read-only"))
T("protocol-buffered-get_buffer-int", _misbehaving(_Buffered, get_buffer=lambda self, n: 42))
T("protocol-buffered-get_buffer-None",
  _misbehaving(_Buffered, get_buffer=lambda self, n: None))
T("protocol-buffered-get_buffer-non-contiguous",
  _misbehaving(_Buffered, get_buffer=lambda self, n: memoryview(bytearray(64))[::2]))
T("protocol-buffered-get_buffer-tiny",
  _misbehaving(_Buffered, get_buffer=lambda self, n: bytearray(1)))
T("protocol-buffered-buffer_updated-raises",
  _misbehaving(_Buffered, buffer_updated=_raise))


def _set_protocol_int(self, transport):
    self.transport = transport
    transport.set_protocol(42)


T("transport-set_protocol-int-then-data",
  _misbehaving(_Plain, connection_made=_set_protocol_int))


@case("create_connection-factory-returns-None")
async def _cc_factory_none(e):
    return await e.keep(e.loop.create_connection(lambda: None, *e.listener().getsockname()))


@case("create_server-factory-returns-None")
async def _cs_factory_none(e):
    srv = await e.loop.create_server(lambda: None, "127.0.0.1", 0)
    try:
        c = e.sock(blocking=False)
        await e.loop.sock_connect(c, srv.sockets[0].getsockname())
        await asyncio.sleep(0.05)
    finally:
        srv.close()
        await srv.wait_closed()


# -- connections and servers -----------------------------------------------------------

def _proto():
    return asyncio.Protocol()


def _cc(make_kwargs):
    async def go(e):
        kw = make_kwargs(e)
        return await e.keep(e.loop.create_connection(_proto, **kw))
    return go


def _tcp_addr(e):
    return dict(zip(("host", "port"), e.listener().getsockname()))


T("create_connection-host-and-sock",
  _cc(lambda e: dict(_tcp_addr(e), sock=e.sock())))
T("create_connection-port-and-sock",
  _cc(lambda e: dict(port=e.listener().getsockname()[1], sock=e.sock())))
T("create_connection-nothing", _cc(lambda e: {}))
T("create_connection-ssl_handshake_timeout-without-ssl",
  _cc(lambda e: dict(_tcp_addr(e), ssl_handshake_timeout=1.0)))
T("create_connection-ssl_shutdown_timeout-without-ssl",
  _cc(lambda e: dict(_tcp_addr(e), ssl_shutdown_timeout=1.0)))
T("create_connection-server_hostname-without-ssl",
  _cc(lambda e: dict(_tcp_addr(e), server_hostname="localhost")))
T("create_connection-udp-sock", _cc(lambda e: dict(sock=e.sock(type=socket.SOCK_DGRAM))))
T("create_connection-closed-sock", _cc(lambda e: dict(sock=e.closed_socket())))
T("create_connection-ssl-sock", _cc(lambda e: dict(sock=e.ssl_socket())))
T("create_connection-sock-int", _cc(lambda e: dict(sock=e.pipe()[0])))
T("create_connection-port-str", _cc(lambda e: dict(host="127.0.0.1", port="no-such-service")))
T("create_connection-port-list", _cc(lambda e: dict(host="127.0.0.1", port=[80])))
T("create_connection-port-70000", _cc(lambda e: dict(host="127.0.0.1", port=70000)))
T("create_connection-port-minus-1", _cc(lambda e: dict(host="127.0.0.1", port=-1)))
T("create_connection-port-2**64", _cc(lambda e: dict(host="127.0.0.1", port=2 ** 64)))
T("create_connection-host-int", _cc(lambda e: dict(host=42, port=80)))
T("create_connection-refused", _cc(lambda e: dict(host="127.0.0.1", port=e.dead_port())))
T("create_connection-family-mismatch",
  _cc(lambda e: dict(_tcp_addr(e), family=socket.AF_INET6)))
T("create_connection-family-unix",
  _cc(lambda e: dict(_tcp_addr(e), family=socket.AF_UNIX)))
T("create_connection-local_addr-str", _cc(lambda e: dict(_tcp_addr(e), local_addr="x")))
T("create_connection-local_addr-bad-port",
  _cc(lambda e: dict(_tcp_addr(e), local_addr=("127.0.0.1", "no-such-service"))))
T("create_connection-local_addr-family-mismatch",
  _cc(lambda e: dict(_tcp_addr(e), local_addr=("::1", 0))))
T("create_connection-unconnected-sock", _cc(lambda e: dict(sock=e.sock())))
T("create_connection-unix-sock-unconnected",
  _cc(lambda e: dict(sock=e.sock(socket.AF_UNIX))))
@case("create_connection-protocol-factory-not-callable")
async def _cc_factory(e):
    return await e.keep(e.loop.create_connection(42, *e.listener().getsockname()))


@case("create_connection-protocol-factory-raises")
async def _cc_factory_raises(e):
    def boom():
        raise ZeroDivisionError
    return await e.keep(e.loop.create_connection(boom, *e.listener().getsockname()))


def _cs(make_kwargs):
    async def go(e):
        return await e.keep(e.loop.create_server(_proto, **make_kwargs(e)))
    return go


T("create_server-ssl-True", _cs(lambda e: dict(host="127.0.0.1", port=0, ssl=True)))
T("create_server-ssl-False", _cs(lambda e: dict(host="127.0.0.1", port=0, ssl=False)))
T("create_server-ssl_handshake_timeout-without-ssl",
  _cs(lambda e: dict(host="127.0.0.1", port=0, ssl_handshake_timeout=1.0)))
T("create_server-ssl_shutdown_timeout-without-ssl",
  _cs(lambda e: dict(host="127.0.0.1", port=0, ssl_shutdown_timeout=1.0)))
T("create_server-host-and-sock",
  _cs(lambda e: dict(host="127.0.0.1", port=0, sock=e.listener())))
T("create_server-nothing", _cs(lambda e: {}))
T("create_server-udp-sock", _cs(lambda e: dict(sock=e.sock(type=socket.SOCK_DGRAM))))
T("create_server-closed-sock", _cs(lambda e: dict(sock=e.closed_socket())))
T("create_server-ssl-sock", _cs(lambda e: dict(sock=e.ssl_socket())))
T("create_server-port-str", _cs(lambda e: dict(host="127.0.0.1", port="no-such-service")))
T("create_server-port-list", _cs(lambda e: dict(host="127.0.0.1", port=[80])))
T("create_server-port-70000", _cs(lambda e: dict(host="127.0.0.1", port=70000)))
T("create_server-port-minus-1", _cs(lambda e: dict(host="127.0.0.1", port=-1)))
T("create_server-host-int", _cs(lambda e: dict(host=42, port=0)))
T("create_server-family-mismatch",
  _cs(lambda e: dict(host="127.0.0.1", port=0, family=socket.AF_INET6)))
T("create_server-backlog-str", _cs(lambda e: dict(sock=e.listener(), backlog="x")))
T("create_server-address-in-use",
  _cs(lambda e: dict(host="127.0.0.1", port=e.listener().getsockname()[1],
                     reuse_address=False)))
T("create_server-unix-sock", _cs(lambda e: dict(sock=e.unix_listener()[0])))


def _cus(make_kwargs):
    async def go(e):
        return await e.keep(e.loop.create_unix_server(_proto, **make_kwargs(e)))
    return go


T("create_unix_server-ssl-True", _cus(lambda e: dict(path=e.unix_path(), ssl=True)))
T("create_unix_server-ssl_handshake_timeout-without-ssl",
  _cus(lambda e: dict(path=e.unix_path(), ssl_handshake_timeout=1.0)))
T("create_unix_server-path-and-sock",
  _cus(lambda e: dict(path=e.unix_path(), sock=e.unix_listener()[0])))
T("create_unix_server-nothing", _cus(lambda e: {}))
T("create_unix_server-path-int", _cus(lambda e: dict(path=42)))
T("create_unix_server-tcp-sock", _cus(lambda e: dict(sock=e.listener())))
T("create_unix_server-unix-dgram-sock",
  _cus(lambda e: dict(sock=e.sock(socket.AF_UNIX, socket.SOCK_DGRAM))))
T("create_unix_server-closed-sock",
  _cus(lambda e: dict(sock=e.closed_socket(socket.AF_UNIX))))
T("create_unix_server-missing-dir",
  _cus(lambda e: dict(path=os.path.join(e.unix_path(), "no", "sock"))))
T("create_unix_server-path-too-long", _cus(lambda e: dict(path="/tmp/" + "x" * 200)))
T("create_unix_server-path-in-use",
  _cus(lambda e: dict(path=e.unix_listener()[1])))
T("create_unix_server-path-is-regular-file", _cus(lambda e: dict(path=e.named_file())))


def _cuc(make_kwargs):
    async def go(e):
        return await e.keep(e.loop.create_unix_connection(_proto, **make_kwargs(e)))
    return go


T("create_unix_connection-missing-path", _cuc(lambda e: dict(path=e.unix_path())))
T("create_unix_connection-path-is-regular-file",
  _cuc(lambda e: dict(path=e.named_file())))
T("create_unix_connection-path-int", _cuc(lambda e: dict(path=42)))
T("create_unix_connection-path-and-sock",
  _cuc(lambda e: dict(path=e.unix_path(), sock=e.sock(socket.AF_UNIX))))
T("create_unix_connection-nothing", _cuc(lambda e: {}))
T("create_unix_connection-tcp-sock", _cuc(lambda e: dict(sock=e.sock())))
T("create_unix_connection-unix-dgram-sock",
  _cuc(lambda e: dict(sock=e.sock(socket.AF_UNIX, socket.SOCK_DGRAM))))
T("create_unix_connection-closed-sock",
  _cuc(lambda e: dict(sock=e.closed_socket(socket.AF_UNIX))))
T("create_unix_connection-ssl_handshake_timeout-without-ssl",
  _cuc(lambda e: dict(path=e.unix_listener()[1], ssl_handshake_timeout=1.0)))
T("create_unix_connection-server_hostname-without-ssl",
  _cuc(lambda e: dict(path=e.unix_listener()[1], server_hostname="localhost")))
T("create_unix_connection-ssl-without-server_hostname",
  _cuc(lambda e: dict(path=e.unix_listener()[1], ssl=True)))
T("create_unix_connection-path-too-long", _cuc(lambda e: dict(path="/tmp/" + "x" * 200)))


def _cas(make_kwargs):
    async def go(e):
        return await e.keep(e.loop.connect_accepted_socket(_proto, **make_kwargs(e)))
    return go


T("connect_accepted_socket-udp", _cas(lambda e: dict(sock=e.sock(type=socket.SOCK_DGRAM))))
T("connect_accepted_socket-None", _cas(lambda e: dict(sock=None)))
T("connect_accepted_socket-int", _cas(lambda e: dict(sock=e.pipe()[0])))
T("connect_accepted_socket-closed", _cas(lambda e: dict(sock=e.closed_socket())))
T("connect_accepted_socket-ssl-sock", _cas(lambda e: dict(sock=e.ssl_socket())))
T("connect_accepted_socket-ssl_handshake_timeout-without-ssl",
  _cas(lambda e: dict(sock=e.socketpair()[0], ssl_handshake_timeout=1.0)))
T("connect_accepted_socket-ssl_shutdown_timeout-without-ssl",
  _cas(lambda e: dict(sock=e.socketpair()[0], ssl_shutdown_timeout=1.0)))


# -- getaddrinfo / getnameinfo ---------------------------------------------------------

def _gai(*args, **kwargs):
    async def go(e):
        await e.loop.getaddrinfo(*args, **kwargs)
    return go


T("getaddrinfo-host-int", _gai(42, 80))
T("getaddrinfo-host-list", _gai(["localhost"], 80))
T("getaddrinfo-port-list", _gai("127.0.0.1", [80]))
T("getaddrinfo-port-float", _gai("127.0.0.1", 80.0))
T("getaddrinfo-port-2**64", _gai("127.0.0.1", 2 ** 64))
T("getaddrinfo-port-70000", _gai("127.0.0.1", 70000))
T("getaddrinfo-port-minus-1", _gai("127.0.0.1", -1))
T("getaddrinfo-name-port-70000", _gai("localhost", 70000))
T("getaddrinfo-name-port-minus-1", _gai("localhost", -1))
T("getaddrinfo-name-port-2**64", _gai("localhost", 2 ** 64))
T("getaddrinfo-name-port-list", _gai("localhost", [80]))
T("getaddrinfo-name-bad-service", _gai("localhost", "no-such-service"))
T("getaddrinfo-bad-service", _gai("127.0.0.1", "no-such-service"))
T("getaddrinfo-family-str", _gai("localhost", 80, family="x"))
T("getaddrinfo-family-bad", _gai("localhost", 80, family=12345))
T("getaddrinfo-family-unix", _gai("localhost", 80, family=socket.AF_UNIX))
T("getaddrinfo-family-mismatch", _gai("::1", 80, family=socket.AF_INET))
T("getaddrinfo-type-bad", _gai("localhost", 80, type=12345))
T("getaddrinfo-type-str", _gai("localhost", 80, type="stream"))
T("getaddrinfo-proto-bad", _gai("localhost", 80, type=socket.SOCK_STREAM, proto=12345))
T("getaddrinfo-flags-minus-1", _gai("localhost", 80, flags=-1))
T("getaddrinfo-flags-str", _gai("localhost", 80, flags="x"))
T("getaddrinfo-flags-2**64", _gai("localhost", 80, flags=2 ** 64))
T("getaddrinfo-flags-float", _gai("localhost", 80, flags=1.0))
T("getaddrinfo-numerichost-name", _gai("localhost", 80, flags=socket.AI_NUMERICHOST))
T("getaddrinfo-numericserv-name", _gai("localhost", "http", flags=socket.AI_NUMERICSERV))
T("getaddrinfo-canonname-no-host", _gai(None, 80, flags=socket.AI_CANONNAME))
T("getaddrinfo-no-host-no-port", _gai(None, None))
T("getaddrinfo-label-too-long", _gai("a" * 64 + ".example", 80))
T("getaddrinfo-empty-label", _gai("a..example", 80))
T("getaddrinfo-unknown-keyword", _gai("localhost", 80, socktype=1))
T("getaddrinfo-no-port", lambda e: e.loop.getaddrinfo("localhost"))


def _gni(*args):
    async def go(e):
        return _plain(await e.loop.getnameinfo(*args))
    return go


T("getnameinfo-str", _gni("127.0.0.1"))
T("getnameinfo-1-tuple", _gni(("127.0.0.1",)))
T("getnameinfo-port-str", _gni(("127.0.0.1", "80")))
T("getnameinfo-port-70000", _gni(("127.0.0.1", 70000)))
T("getnameinfo-port-minus-1", _gni(("127.0.0.1", -1)))
T("getnameinfo-ipv4-3-tuple", _gni(("127.0.0.1", 80, 0)))
T("getnameinfo-5-tuple", _gni(("::1", 80, 0, 0, 0)))
T("getnameinfo-host-name", _gni(("localhost", 80)))
T("getnameinfo-host-int", _gni((42, 80)))
T("getnameinfo-bad-address", _gni(("300.1.1.1", 80)))
T("getnameinfo-flags-str", _gni(("127.0.0.1", 80), "x"))
T("getnameinfo-flags-minus-1", _gni(("127.0.0.1", 80), -1))
T("getnameinfo-flags-2**64", _gni(("127.0.0.1", 80), 2 ** 64))
T("getnameinfo-numeric",
  _gni(("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV))
T("getnameinfo-ipv6-scope-bad", _gni(("fe80::1%nosuchif", 80)))
T("getnameinfo-flowinfo-too-big", _gni(("::1", 80, 0x100000, 0)))


# -- executors -------------------------------------------------------------------------

def _awaiting(fn):
    async def go(e):
        return _plain(await fn(e))
    return go


T("run_in_executor-int", _awaiting(lambda e: e.loop.run_in_executor(None, 42)))
T("run_in_executor-int-debug", _awaiting(lambda e: e.loop.run_in_executor(None, 42)),
  debug=True)
T("run_in_executor-coroutine-function-debug",
  _awaiting(lambda e: e.loop.run_in_executor(None, _noop)), debug=True)
T("run_in_executor-executor-int", _awaiting(lambda e: e.loop.run_in_executor(42, _cb)))
T("run_in_executor-no-function", _awaiting(lambda e: e.loop.run_in_executor(None)))
T("run_in_executor-wrong-arg-count",
  _awaiting(lambda e: e.loop.run_in_executor(None, _noargs, 1)))
T("set_default_executor-int", lambda e: e.loop.set_default_executor(42))
T("set_default_executor-None", lambda e: e.loop.set_default_executor(None))
T("set_default_executor-plain-Executor",
  lambda e: e.loop.set_default_executor(concurrent.futures.Executor()))


# -- signals ---------------------------------------------------------------------------

def _sig(sig, callback=_cb):
    def go(e):
        try:
            e.loop.add_signal_handler(sig, callback)
        finally:
            if isinstance(sig, int) and sig in signal.valid_signals():
                e.defer(e.loop.remove_signal_handler, sig)
    return go


T("add_signal_handler-0", _sig(0))
T("add_signal_handler-1000", _sig(1000))
T("add_signal_handler-minus-1", _sig(-1))
T("add_signal_handler-SIGKILL", _sig(signal.SIGKILL))
T("add_signal_handler-SIGSTOP", _sig(signal.SIGSTOP))
T("add_signal_handler-str", _sig("SIGUSR1"))
T("add_signal_handler-None", _sig(None))
T("add_signal_handler-float", _sig(float(signal.SIGUSR1)))
T("add_signal_handler-coroutine-function", _sig(signal.SIGUSR1, _noop))
T("add_signal_handler-coroutine", lambda e: _sig(signal.SIGUSR1, e.coro())(e))
T("add_signal_handler-no-callback", lambda e: e.loop.add_signal_handler(signal.SIGUSR1))
T("remove_signal_handler-0", lambda e: e.loop.remove_signal_handler(0))
T("remove_signal_handler-1000", lambda e: e.loop.remove_signal_handler(1000))
T("remove_signal_handler-str", lambda e: e.loop.remove_signal_handler("SIGUSR1"))
T("remove_signal_handler-not-set", lambda e: e.loop.remove_signal_handler(signal.SIGUSR2))
T("remove_signal_handler-SIGKILL", lambda e: e.loop.remove_signal_handler(signal.SIGKILL))


def _signal_fires(callback, *args):
    async def go(e):
        e.loop.add_signal_handler(signal.SIGUSR1, callback, *args)
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            await asyncio.sleep(0.05)
        finally:
            e.loop.remove_signal_handler(signal.SIGUSR1)
    return go


T("add_signal_handler-non-callable-fires", _signal_fires(42))
T("add_signal_handler-wrong-arg-count-fires", _signal_fires(_noargs, 1))


@pytest.fixture
def saved_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)
    signal.set_wakeup_fd(wakeup)


# -- the test --------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def go_resolver_warm():
    """One name lookup through goloop's Go resolver before the first fd snapshot.

    The Go runtime opens its own netpoller (an epoll fd and an eventfd) the first time
    Go code uses the network, once per process: on the epoll backend nothing does that
    before the first DNS query, so the first case to reach the Go resolver would see
    two new fds that are not its loop's. conftest's warm-up runs no lookup."""
    if "goloop" in loops.SELECTED and loops.unavailable("goloop") is None:
        lp = loops.factory("goloop")()
        try:
            lp.run_until_complete(asyncio.wait_for(lp.getaddrinfo("localhost", 80), 10))
        finally:
            lp.close()


@pytest.mark.parametrize("c", [pytest.param(c, id=c.name, marks=c.marks) for c in CASES])
def test_bad_input(saved_signals, loop, loop_name, c):
    expected = reference(c)
    got = outcome(loop, c)
    assert got.key() == expected.key(), (
        f"{c.name}: asyncio {expected!r}; {loop_name} {got!r}")
    if not loop.is_closed():
        loop.set_exception_handler(None)
        loop.set_debug(False)
        run(loop, _still_works(loop))


def test_cases_are_many():
    assert len(CASES) >= 200, len(CASES)
    names = {c.name for c in CASES}
    unknown = (set(UVLOOP_XFAIL) | set(UVLOOP_SKIP) | set(GOLOOP_CRASH)) - names
    assert not unknown, unknown

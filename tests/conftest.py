"""pytest wiring: every behaviour test runs over goloop, uvloop and asyncio's own loop.

A test asks for the `loop` fixture and is run once per loop (ids "goloop", "uvloop",
"asyncio"). The fixture makes a fresh loop, installs it as the current loop, closes it
afterwards and fails the test if the loop left file descriptors open: close() must
release everything, and a test that leaks on asyncio is itself wrong.

Markers:
  xfail_loop(name, reason)   strict xfail for one loop (used for uvloop's
                             deviations from asyncio, and for asyncio 3.11's own
                             deviations from its documentation; goloop failures
                             stay red)
  skip_loop(name, reason)    skip on one loop: a uvloop deviation that would only
                             fail after a long timeout
  no_fd_check(*names, reason) skip the /proc/self/fd comparison for those loops (all
                             when no name is given): known leaks of uvloop only

Hang protection: with pytest-timeout installed every test gets
`timeout(GOLOOP_TEST_TIMEOUT, default 60 s)`; independently, faulthandler dumps every
thread's stack and exits the process after 1.5x that, which also catches a hang inside
C or Go where a Python-level SIGALRM handler never gets to run.
"""

import asyncio
import faulthandler
import gc
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import loops  # noqa: E402

TEST_TIMEOUT = float(os.environ.get("GOLOOP_TEST_TIMEOUT", "60"))
_hang_report = None  # a dup of the real stderr: fd 2 is captured while tests run


def pytest_configure(config):
    global _hang_report
    _hang_report = os.fdopen(os.dup(2), "w")
    config.addinivalue_line(
        "markers", "xfail_loop(name, reason): strict xfail on that loop only")
    config.addinivalue_line(
        "markers", "skip_loop(name, reason): skip on that loop only")
    config.addinivalue_line(
        "markers", "no_fd_check(*names, reason): no /proc/self/fd check on those loops")
    config.addinivalue_line(
        "markers", "timeout(seconds): per-test timeout (pytest-timeout)")


def pytest_unconfigure(config):
    if _hang_report is not None:
        _hang_report.close()


def pytest_report_header(config):
    lines = [f"loops: {', '.join(loops.SELECTED)}"]
    for name in loops.SELECTED:
        why = loops.unavailable(name)
        if why:
            lines.append(f"  {name}: SKIPPED, {why}")
    backend = os.environ.get("GOLOOP_BACKEND")
    if backend:
        lines.append(f"GOLOOP_BACKEND={backend}")
    return lines


def _loop_params():
    params = []
    for name in loops.SELECTED:
        why = loops.unavailable(name)
        marks = [pytest.mark.skip(reason=why)] if why else []
        params.append(pytest.param(name, id=name, marks=marks))
    return params


@pytest.fixture(params=_loop_params())
def loop_name(request):
    return request.param


_warmed = set()


def _warm_up(name):
    """Run one loop of this kind before the first fd snapshot: libuv (and a Go
    runtime) open process-wide fds once, on first use, which are not a loop's leak."""
    if name in _warmed:
        return
    _warmed.add(name)
    lp = loops.factory(name)()
    try:
        lp.run_until_complete(asyncio.sleep(0))
    finally:
        lp.close()


@pytest.fixture
def loop(loop_name, request):
    _warm_up(loop_name)
    before = loops.open_fds()
    lp = loops.factory(loop_name)()
    asyncio.set_event_loop(lp)
    try:
        yield lp
    finally:
        try:
            if not lp.is_closed():
                lp.close()
        finally:
            asyncio.set_event_loop(None)
    for mark in request.node.iter_markers("no_fd_check"):
        if not mark.args or loop_name in mark.args:
            return
    # Transports closed during the test may only drop their last reference here.
    gc.collect()
    # What survived is alive; freezing it keeps the next test's collection to
    # the objects that test makes (see pytest_collection_finish).
    gc.freeze()
    after = loops.open_fds()
    leaked = {fd: what for fd, what in after.items()
              if fd not in before or before[fd] != what}
    if leaked:
        pytest.fail(f"{loop_name}: fds left open after loop.close(): {leaked}")


@pytest.fixture
def goloop():
    """The goloop package, for tests of its own API (policy, install, run, fork)."""
    if "goloop" not in loops.SELECTED:
        pytest.skip("goloop not in GOLOOP_TEST_LOOPS")
    why = loops.unavailable("goloop")
    if why:
        pytest.skip(why)
    return loops.goloop


def pytest_collection_finish(session):
    # Every fd check below runs gc.collect(), and the collected test modules
    # (CPython's asyncio suite among them) leave a heap that took 75 ms to walk
    # per collection: 260 of the io_uring pass's 380 s. Objects alive now are
    # the session's own (modules, parametrisations), never a test's
    # transports, so they move to the permanent generation that gc.collect()
    # does not walk.
    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(config, items):
    have_timeout_plugin = config.pluginmanager.hasplugin("timeout")
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("loop_name") if callspec else None
        for mark in item.iter_markers("xfail_loop"):
            if mark.args and mark.args[0] == name:
                item.add_marker(pytest.mark.xfail(
                    reason=mark.kwargs.get("reason", mark.args[1:] and mark.args[1]),
                    strict=True))
        for mark in item.iter_markers("skip_loop"):
            if mark.args and mark.args[0] == name:
                item.add_marker(pytest.mark.skip(reason=mark.kwargs.get("reason")))
        if have_timeout_plugin and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    mark = item.get_closest_marker("timeout")
    timeout = float(mark.args[0]) if mark and mark.args else TEST_TIMEOUT
    faulthandler.dump_traceback_later(timeout * 1.5, exit=True, file=_hang_report)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()

"""Which event loops the suite runs on, and how each is made.

Shared by conftest.py (the `loop` fixture) and test_cpython_asyncio.py (CPython's
unittest mixins), so both honour the same environment:

  GOLOOP_TEST_LOOPS=goloop,uvloop,asyncio   restrict the loops (default: all three)
  GOLOOP_REQUIRED=1                         a failing `import goloop` is an error,
                                            not a skip (CI sets it)
"""

import asyncio
import os

ALL_LOOPS = ("goloop", "uvloop", "asyncio")


def _selected():
    raw = os.environ.get("GOLOOP_TEST_LOOPS", "").strip()
    if not raw:
        return ALL_LOOPS
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    unknown = [n for n in names if n not in ALL_LOOPS]
    if unknown:
        raise RuntimeError(
            f"GOLOOP_TEST_LOOPS names unknown loops {unknown}; known: {ALL_LOOPS}")
    return names


SELECTED = _selected()
GOLOOP_REQUIRED = os.environ.get("GOLOOP_REQUIRED") == "1"

try:
    import goloop
    if not hasattr(goloop, "new_event_loop"):
        # From the repository root, the Go source directory goloop/ imports as an
        # empty namespace package; that is not the Python package.
        raise ImportError(f"{getattr(goloop, '__path__', goloop)} is not the goloop "
                          "Python package")
    GOLOOP_IMPORT_ERROR = None
except Exception as exc:  # ImportError, or a broken build raising anything else
    goloop = None
    GOLOOP_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

try:
    import uvloop
    UVLOOP_IMPORT_ERROR = None
except Exception as exc:
    uvloop = None
    UVLOOP_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

if GOLOOP_REQUIRED and "goloop" in SELECTED and goloop is None:
    raise RuntimeError(
        f"GOLOOP_REQUIRED=1 but `import goloop` failed: {GOLOOP_IMPORT_ERROR} "
        "(run `make inplace` and put python/ on PYTHONPATH)")


def _asyncio_factory():
    # The selector loop is asyncio's reference implementation on Linux.
    return asyncio.SelectorEventLoop()


def factory(name):
    """The zero-argument callable making a fresh loop of that kind."""
    if name == "goloop":
        return goloop.new_event_loop
    if name == "uvloop":
        return uvloop.new_event_loop
    if name == "asyncio":
        return _asyncio_factory
    raise ValueError(name)


def unavailable(name):
    """Why a loop cannot run here, or None when it can."""
    if name == "goloop" and goloop is None:
        return f"goloop not importable ({GOLOOP_IMPORT_ERROR})"
    if name == "uvloop" and uvloop is None:
        return f"uvloop not importable ({UVLOOP_IMPORT_ERROR})"
    return None


def open_fds():
    """The process's open fds, mapped to what they point at."""
    fds = {}
    for entry in os.listdir("/proc/self/fd"):
        try:
            fds[int(entry)] = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:
            pass  # the fd listdir itself used, closed by now
    return fds

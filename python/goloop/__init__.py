"""goloop: a drop-in asyncio event loop whose I/O core is written in Go.

    import asyncio, goloop
    goloop.install()             # or asyncio.set_event_loop_policy(goloop.EventLoopPolicy())
    asyncio.run(main())          # or goloop.run(main())

Importing goloop does not start the Go runtime: the Go library is loaded
when the first loop is made, so a process may import goloop and fork.
"""
import os as _os

from . import _core
from ._policy import EventLoopPolicy, install, new_event_loop, run
from ._dns import DNSError, Resolver
from .loop import GoCallError, Loop
from ._tlscontext import TLSContext

_core._set_library(_os.environ.get(
    "GOLOOP_LIBRARY", _os.path.join(_os.path.dirname(__file__), "libgoloop.so")))

__version__ = "0.1.0"
__all__ = ("Loop", "EventLoopPolicy", "GoCallError", "DNSError", "Resolver", "TLSContext",
           "install", "new_event_loop", "run", "GunicornWebWorker")


def __getattr__(name):
    # Imported on first use: goloop.worker imports aiohttp and gunicorn,
    # which a program that only wants the loop need not have or load.
    if name == "GunicornWebWorker":
        from .worker import GunicornWebWorker
        return GunicornWebWorker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

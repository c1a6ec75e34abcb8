"""A gunicorn worker that serves aiohttp applications on goloop.

    gunicorn app:factory --worker-class goloop.GunicornWebWorker

This is aiohttp's own GunicornWebWorker (aiohttp.worker) with one change:
each worker's loop is a goloop loop, as aiohttp's GunicornUVLoopWebWorker
makes it a uvloop loop. gunicorn imports the worker class in its master
process; this module and goloop's package import no Go, so the master never
loads libgoloop.so. Go starts in each worker, after gunicorn forked it, when
init_process makes the worker's loop: a Go runtime does not survive a fork,
so one started in the master would leave every worker unable to run Go.
"""
import asyncio

from aiohttp import worker as _aiohttp_worker

from ._policy import EventLoopPolicy

__all__ = ("GunicornWebWorker",)


def _close_inherited_loop():
    """Close a loop the master left set for this thread (an app module that
    called asyncio.get_event_loop() at import under --preload), without
    making one when there is none as asyncio.get_event_loop() would: its
    fds were copied by the fork and are this worker's to release."""
    policy = asyncio.get_event_loop_policy()
    local = getattr(policy, "_local", None)  # BaseDefaultEventLoopPolicy's
    old = getattr(local, "_loop", None)
    if old is not None and not old.is_closed() and not old.is_running():
        old.close()


class GunicornWebWorker(_aiohttp_worker.GunicornWebWorker):
    """aiohttp's gunicorn worker on a goloop loop, one Go runtime per worker."""

    def init_process(self):
        _close_inherited_loop()
        # The policy too, not just this loop: code in the worker that asks
        # asyncio for a new loop (asyncio.run in a thread, ...) gets goloop.
        asyncio.set_event_loop_policy(EventLoopPolicy())
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        # gunicorn's own setup (signals through self.loop, the app, run());
        # aiohttp's init_process is skipped because all it does is make a
        # loop, by asking asyncio for one to close first.
        super(_aiohttp_worker.GunicornWebWorker, self).init_process()

"""The uvloop-shaped entry points: a policy, install() and run()."""
import asyncio
import sys

from .loop import Loop


def new_event_loop():
    """Return a new goloop event loop."""
    return Loop()


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """An asyncio policy whose new loops are goloop loops."""

    def _loop_factory(self):
        return new_event_loop()


def install():
    """Make goloop the loop of every later asyncio.new_event_loop()/asyncio.run()."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main, *, debug=None, **run_kwargs):
    """asyncio.run(main) on a new goloop loop."""
    if asyncio.events._get_running_loop() is not None:
        # Refuse before making a loop, as asyncio.run does.
        raise RuntimeError("goloop.run() cannot be called from a running event loop")
    if sys.version_info >= (3, 12):
        return asyncio.run(main, debug=debug, loop_factory=new_event_loop, **run_kwargs)
    if hasattr(asyncio, "Runner"):  # 3.11
        with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
            return runner.run(main)
    # 3.10: asyncio.run's steps, on our loop
    loop = new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        return loop.run_until_complete(main)
    finally:
        try:
            tasks = asyncio.all_tasks(loop)
            for t in tasks:
                t.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()

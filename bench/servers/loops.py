"""The three event loops under comparison, made the way their users make them."""

import asyncio


def new_loop(name):
    if name == "asyncio":
        # The default policy's loop: a selector (epoll) loop on Linux.
        return asyncio.DefaultEventLoopPolicy().new_event_loop()
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    if name == "goloop":
        import goloop
        return goloop.new_event_loop()
    raise ValueError(f"unknown loop {name!r}")

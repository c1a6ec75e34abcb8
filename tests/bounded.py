"""Run a coroutine on a loop with a deadline, so a broken loop fails a test instead
of hanging the suite."""

import asyncio

DEADLINE = 10.0


def run(loop, coro, timeout=DEADLINE):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))

"""run_in_executor round trip: a task awaits a trivial function run in the
default executor, one at a time, so every round trip wakes the waiting loop
from another thread (call_soon_threadsafe).

    python bench/executor_roundtrip.py [--loops goloop,uvloop,asyncio]
                                       [--calls 20000] [--rounds 5]

Each round runs every loop once, in a fresh process pinned to CPU 0
(taskset; the executor's thread shares it), in rotating order, and prints
the microseconds per round trip; then the median per loop and its ratio to
uvloop's. Run from the repository root (PYTHONPATH as for bench/run.sh).
"""

import asyncio
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fresh_rounds  # noqa: E402


async def round_trips(calls):
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, int)   # the executor's thread exists
    t0 = time.perf_counter()
    for _ in range(calls):
        await loop.run_in_executor(None, int)
    return (time.perf_counter() - t0) / calls * 1e6


def main(argv):
    fresh_rounds.main(argv, __file__, __doc__, {"calls": 20000}, round_trips,
                      "us per round trip", "{:5.1f}", per_op=True)


if __name__ == "__main__":
    main(sys.argv[1:])

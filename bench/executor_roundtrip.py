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

import argparse
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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loops", default="goloop,uvloop,asyncio")
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        fresh_rounds.one(args.one, round_trips(args.calls))
        return
    loops = args.loops.split(",")
    got = fresh_rounds.rounds(__file__, loops, args.rounds, ["--calls", str(args.calls)],
                              "us per round trip", "{:5.1f}")
    fresh_rounds.report(got, "us", "{:5.1f}", per_op=True)


if __name__ == "__main__":
    main(sys.argv[1:])

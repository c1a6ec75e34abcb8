"""Rounds of one measurement per loop, each in a fresh process pinned to CPU 0,
in rotating order (streams_bulk.py, executor_roundtrip.py, small_writes.py).

A script's main is main(argv, script, doc, options, measure, unit, fmt): its
command line is --loops, --rounds and its own integer options; for each round
and loop it runs `taskset -c 0 python SCRIPT --one LOOP OPTIONS...`, which
measures measure(**options) on a new loop of that name and prints the number
as JSON; the rounds are printed as they come, then each loop's median and its
ratio to uvloop's (report).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys


def main(argv, script, doc, options, measure, unit, fmt, per_op=False):
    """options: {name: default} of the script's integer options (--per-iter
    for per_iter); measure(**options) is the coroutine one round measures."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--loops", default="goloop,uvloop,asyncio")
    for name, default in options.items():
        p.add_argument("--" + name.replace("_", "-"), type=int, default=default)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    given = {name: getattr(args, name) for name in options}
    if args.one:
        one(args.one, measure(**given))
        return
    child = [a for name, v in given.items() for a in ("--" + name.replace("_", "-"), str(v))]
    got = rounds(script, args.loops.split(","), args.rounds, child, unit, fmt)
    report(got, unit, fmt, per_op)


def rounds(script, loops, n, args, unit, fmt="{:7.1f}"):
    got = {name: [] for name in loops}
    for r in range(n):
        order = loops[r % len(loops):] + loops[:r % len(loops)]
        line = []
        for name in order:
            out = subprocess.run(["taskset", "-c", "0", sys.executable, script, "--one", name, *args],
                                 capture_output=True, text=True, timeout=600, check=True)
            got[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            line.append(f"{name} " + fmt.format(got[name][-1]))
        print(f"round {r + 1}: " + "  ".join(line) + f"  {unit}", flush=True)
    return got


def report(got, unit, fmt, per_op=False):
    """Each loop's median and its ratio to uvloop's: loop/uvloop for a rate,
    uvloop/loop for a time per operation (per_op), so above 1 is faster."""
    ref = statistics.median(got["uvloop"]) if "uvloop" in got else None
    for name, values in got.items():
        m = statistics.median(values)
        ratio = ""
        if ref:
            ratio = f"  uvloop/{name} {ref / m:.2f}x" if per_op else f"  {m / ref:.2f}x uvloop"
        print(f"{name:10s} median {fmt.format(m)} {unit}{ratio}")


def one(loop_name, coro):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "servers"))
    from loops import new_loop
    loop = new_loop(loop_name)
    try:
        print(json.dumps(loop.run_until_complete(coro)))
    finally:
        loop.close()

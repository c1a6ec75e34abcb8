"""Rounds of one measurement per loop, each in a fresh process pinned to CPU 0,
in rotating order (streams_bulk.py, executor_roundtrip.py, small_writes.py).

A script calls rounds(script, loops, n, args, unit): for each round and loop it
runs `taskset -c 0 python SCRIPT --one LOOP ARGS...`, which prints one JSON
number on its last line, prints the round's numbers as they come, and returns
{loop: [numbers]} for the script's own summary. The --one run measures with
one(loop_name, coro): coro on a new loop of that name, printed as JSON.
"""

import json
import os
import statistics
import subprocess
import sys


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

"""Echo server that reports its own memory, for bench/memory.py.

    python mem_server.py --loop goloop|uvloop|asyncio --port N [--tracemalloc]

The asyncio.Protocol echo of echo_server.py on 127.0.0.1:N, plus a control
channel on stdin/stdout: it prints {"ready": true} once listening, and for
each line "stats" it reads on stdin prints one JSON line: VmRSS and PSS of
the process, the connections it holds, and (goloop) the Go runtime's
numbers from runtime.stats; "stats gc" also has Go collect and hand freed
memory back first (runtime.stats "gc"), then reads RSS again. With
--tracemalloc the Python heap's traced size and its largest allocation sites
are added (tracemalloc itself costs memory and time: a separate run).

The stats are taken on the loop's thread (call_soon_threadsafe from the
thread reading stdin), so they see the loop between callbacks.
"""

import argparse
import asyncio
import gc
import json
import os
import sys
import threading
import tracemalloc

from echo_server import EchoProtocol
from loops import new_loop

held = 0


class CountedEcho(EchoProtocol):
    def connection_made(self, transport):
        global held
        held += 1
        super().connection_made(transport)

    def connection_lost(self, exc):
        global held
        held -= 1


def proc_memory():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "RssAnon:", "RssFile:", "VmHWM:")):
                k, v = line.split(":")
                out[k.lower() + "_kb"] = int(v.split()[0])
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                out["pss_kb"] = int(line.split()[1])
    out["threads"] = len(os.listdir("/proc/self/task"))
    return out


async def stats(loop, args, go_gc):
    gc.collect()
    out = {"held": held, **proc_memory()}
    if args.loop == "goloop":
        raw = await loop._go_call("runtime.stats", b"gc" if go_gc else b"")
        out["go"] = json.loads(raw)
        if go_gc:
            out["after_go_gc"] = proc_memory()
    if args.tracemalloc:
        snap = tracemalloc.take_snapshot()
        out["traced_kb"] = tracemalloc.get_traced_memory()[0] // 1024
        out["top"] = [(str(s.traceback[0]), s.size // 1024, s.count)
                      for s in snap.statistics("lineno")[:8]]
    return out


def control(loop, args):
    """Reads commands on stdin; each answer is printed from the loop's thread."""
    def answer(line):
        async def run():
            try:
                res = await stats(loop, args, line.strip() == "stats gc")
            except Exception as e:  # a failed stat is reported, not fatal
                res = {"error": repr(e)}
            print(json.dumps(res), flush=True)
        loop.create_task(run())

    for line in sys.stdin:
        if line.strip().startswith("stats"):
            loop.call_soon_threadsafe(answer, line)
    loop.call_soon_threadsafe(loop.stop)


async def main(loop, args):
    server = await loop.create_server(CountedEcho, "127.0.0.1", args.port, backlog=4096)
    print(json.dumps({"ready": True}), flush=True)
    threading.Thread(target=control, args=(loop, args), daemon=True).start()
    return server


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loop", required=True, choices=["goloop", "uvloop", "asyncio"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tracemalloc", action="store_true")
    args = p.parse_args(sys.argv[1:])
    if args.tracemalloc:
        tracemalloc.start(1)
    loop = new_loop(args.loop)
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(main(loop, args))
    loop.run_forever()

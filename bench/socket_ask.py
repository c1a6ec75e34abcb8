"""What a new connection's socket object costs a server, per loop.

    PYTHONPATH=python .venv/bin/python bench/socket_ask.py [--count N] [--rounds R]

Many servers ask each new connection's transport for its socket and set an
option on it, as aiohttp's tcp_nodelay does in connection_made:

    sock = transport.get_extra_info("socket")
    if sock.family in (AF_INET, AF_INET6):
        sock.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)

This times those three steps in a server's connection_made, per connection,
on each loop in a process of its own (CPU 0, rounds interleaved): the
clients are plain blocking sockets in a thread of the same process, one
connection at a time. It prints the median ns of each step per loop, and
the whole process's CPU time per connection (server, clients, the loop).
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LOOPS = ("goloop", "uvloop", "asyncio")


def one(loop_name, count):
    sys.path.insert(0, os.path.join(HERE, "servers"))
    import asyncio
    from loops import new_loop

    loop = new_loop(loop_name)
    times = [0, 0, 0]
    n = 0
    done = loop.create_future()

    class Server(asyncio.Protocol):
        def connection_made(self, transport):
            nonlocal n
            t0 = time.perf_counter_ns()
            sock = transport.get_extra_info("socket")
            t1 = time.perf_counter_ns()
            inet = sock.family in (socket.AF_INET, socket.AF_INET6)
            t2 = time.perf_counter_ns()
            if inet:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t3 = time.perf_counter_ns()
            times[0] += t1 - t0
            times[1] += t2 - t1
            times[2] += t3 - t2
            n += 1
            transport.close()
            if n == count and not done.done():
                done.set_result(None)

    async def main():
        server = await loop.create_server(Server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def clients():
            for _ in range(count):
                with socket.create_connection(("127.0.0.1", port)) as c:
                    c.recv(1)  # the server's close

        th = threading.Thread(target=clients)
        th.start()
        await done
        th.join()
        server.close()
        await server.wait_closed()

    c0 = time.process_time()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    cpu = time.process_time() - c0
    return [round(t / count) for t in times] + [round(cpu / count * 1e9)]


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=3000, help="connections per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--loops", default=",".join(LOOPS))
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.count)))
        return
    loops = [x for x in args.loops.split(",") if x]
    got = {lp: [] for lp in loops}
    for _ in range(args.rounds):
        for lp in loops:
            r = subprocess.run(["taskset", "-c", "0", sys.executable, __file__, "--one", lp,
                                "--count", str(args.count)],
                               capture_output=True, text=True, check=True, timeout=300)
            got[lp].append(json.loads(r.stdout.strip().splitlines()[-1]))
    steps = ("get_extra_info", "family", "setsockopt")
    print(f"{'loop':8} " + " ".join(f"{s:>15}" for s in steps) + f" {'sum':>8} {'process CPU':>12}   (median ns per connection, {args.rounds} rounds of {args.count})")
    for lp in loops:
        med = [statistics.median(r[i] for r in got[lp]) for i in range(4)]
        print(f"{lp:8} " + " ".join(f"{m:>15,.0f}" for m in med[:3]) + f" {sum(med[:3]):>8,.0f}"
              f" {med[3]:>12,.0f}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""What a new client connection costs a loop: loop.create_connection, then close.

    python connect_client.py --loop goloop|uvloop|asyncio --port N
                             [--count K] [--rounds R] [--warmup W]

Against an echo server on 127.0.0.1:N (the benchmark's C echo), it makes K
connections one after another, in two ways that alternate round by round:

- close: `await loop.create_connection(asyncio.Protocol, '127.0.0.1', N)`,
  then `transport.close()` and on to the next connect, so the close's
  bookkeeping overlaps the next connect, as in a client that does not wait;
- lost: the same, then waits for `connection_lost`, so each connection is
  taken down completely before the next starts.

It prints one JSON line: per round and way, wall-clock and process CPU
microseconds per connection. Nothing is sent on the connections: this is the
loop's cost of opening and closing one (socket, connect, the transport and
protocol objects, close), not of moving data.
"""

import argparse
import asyncio
import json
import sys
import time

from loops import new_loop


class LostProtocol(asyncio.Protocol):
    """Resolves its future when the connection is gone."""

    def __init__(self, done):
        self.done = done

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(None)


async def close_only(loop, port, count):
    for _ in range(count):
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        transport.close()


async def until_lost(loop, port, count):
    for _ in range(count):
        done = loop.create_future()
        transport, _ = await loop.create_connection(lambda: LostProtocol(done), "127.0.0.1", port)
        transport.close()
        await done


async def settle(loop):
    # The last closes of a `close` round finish in callbacks that are already
    # scheduled; let them run before the next round's clock starts.
    for _ in range(10):
        await asyncio.sleep(0)


async def main(loop, args):
    ways = {"close": close_only, "lost": until_lost}
    out = {"loop": args.loop, "count": args.count}
    for name, fn in ways.items():
        await fn(loop, args.port, args.warmup)
        await settle(loop)
        out[f"{name}_us"], out[f"{name}_cpu_us"] = [], []
    for _ in range(args.rounds):
        for name, fn in ways.items():
            t0, c0 = time.perf_counter(), time.process_time()
            await fn(loop, args.port, args.count)
            t1, c1 = time.perf_counter(), time.process_time()
            await settle(loop)
            out[f"{name}_us"].append(round((t1 - t0) / args.count * 1e6, 2))
            out[f"{name}_cpu_us"].append(round((c1 - c0) / args.count * 1e6, 2))
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loop", required=True, choices=["goloop", "uvloop", "asyncio"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=1000, help="connections per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each way")
    p.add_argument("--warmup", type=int, default=200, help="connections of each way first, not timed")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    loop = new_loop(args.loop)
    asyncio.set_event_loop(loop)
    try:
        print(json.dumps(loop.run_until_complete(main(loop, args))))
    finally:
        loop.close()

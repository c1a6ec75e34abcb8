"""Runs of small writes: a protocol that writes many short pieces per
iteration (field by field, as a Redis or HTTP/2 encoder does), in one process.

    python bench/small_writes.py [--loops goloop,uvloop,asyncio] [--mib 64]
                                 [--size 100] [--per-iter 100] [--rounds 5]

A client transport over a Unix socketpair writes --per-iter messages of
--size bytes, then yields to the loop (asyncio.sleep(0)), until --mib MiB are
written; the other end is an asyncio.Protocol on the same loop that counts
what arrives, and the clock stops when it has everything. The writer never
waits for drain, so what is measured is the cost of write() and of turning
the writes into sends.

Each round runs every loop once, in a fresh process pinned to CPU 0
(taskset), in rotating order; prints MB/s (10**6 bytes a second) per round and
the median per loop with its ratio to uvloop's. Run from the repository root
(PYTHONPATH as for bench/run.sh).
"""

import asyncio
import os
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fresh_rounds  # noqa: E402


async def transfer(total, size, per_iter):
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    done = loop.create_future()

    class Sink(asyncio.Protocol):
        got = 0

        def data_received(self, data):
            self.got += len(data)
            if self.got >= total and not done.done():
                done.set_result(None)

    rtr, sink = await loop.create_connection(Sink, sock=b)
    wtr, _ = await loop.create_connection(asyncio.Protocol, sock=a)
    msg = b"x" * size
    t0 = time.perf_counter()
    sent = 0
    while sent < total:
        for _ in range(per_iter):
            wtr.write(msg)
        sent += size * per_iter
        await asyncio.sleep(0)
    await done
    elapsed = time.perf_counter() - t0
    wtr.close()
    rtr.close()
    if sink.got != sent:
        raise RuntimeError(f"received {sink.got} of {sent} bytes")
    return sent / elapsed / 1e6


def main(argv):
    fresh_rounds.main(argv, __file__, __doc__, {"mib": 64, "size": 100, "per_iter": 100},
                      lambda mib, size, per_iter: transfer(mib << 20, size, per_iter),
                      "MB/s", "{:7.0f}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Streams bulk transfer: bytes through asyncio streams with flow control at
work on both ends, in one process (one loop).

    python bench/streams_bulk.py [--loops goloop,uvloop,asyncio] [--mib 256]
                                 [--conns 4] [--rounds 5]

Each of --conns clients writes its share of --mib MiB in messages of 1 B to
256 KiB (log-uniform, seeded), with drain() after each write, to a
start_server echo whose handler reads random sizes up to 256 KiB, writes them
back and drains; each client reads the echo with read(1 MiB). So both ends'
StreamReaders pause and resume reading all the time, and both ends' writers
wait in drain(): the pattern of a proxy or a file upload through streams,
not a request/response echo. The same pattern, with checks, is
tests/test_chaos.py's streams soak.

Each round runs every loop once, in a fresh process pinned to CPU 0
(taskset), in rotating order; prints MB/s (10**6 bytes a second, counting
what the clients sent) per round and the median per loop with its ratio to
uvloop's. Run from the repository root (PYTHONPATH as for bench/run.sh).
"""

import asyncio
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fresh_rounds  # noqa: E402

MAX_MESSAGE = 256 << 10


async def transfer(total, conns):
    pool = random.Random(1).randbytes((1 << 20) + MAX_MESSAGE)

    async def handle(reader, writer):
        rng = random.Random(2)
        while data := await reader.read(rng.randint(1, MAX_MESSAGE)):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def client(i):
        reader, writer = await asyncio.open_connection(*addr)
        rng = random.Random(f"client {i}")
        got = 0

        async def send():
            left = total // conns
            while left > 0:
                n = min(left, int(2 ** rng.uniform(0, 18)), MAX_MESSAGE)
                off = rng.randrange(len(pool) - n)
                writer.write(pool[off:off + n])
                left -= n
                await writer.drain()
            writer.write_eof()

        async def receive():
            nonlocal got
            while data := await reader.read(1 << 20):
                got += len(data)

        await asyncio.gather(send(), receive())
        writer.close()
        return got

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    addr = server.sockets[0].getsockname()
    t0 = time.perf_counter()
    got = await asyncio.gather(*(client(i) for i in range(conns)))
    elapsed = time.perf_counter() - t0
    server.close()
    await server.wait_closed()
    if sum(got) != total // conns * conns:
        raise RuntimeError(f"echoed {sum(got)} of {total // conns * conns} bytes")
    return sum(got) / elapsed / 1e6


def main(argv):
    fresh_rounds.main(argv, __file__, __doc__, {"mib": 256, "conns": 4},
                      lambda mib, conns: transfer(mib << 20, conns), "MB/s", "{:7.0f}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Pipe throughput: bytes from a child process through a pipe into a read pipe
transport (`dd bs=1M if=/dev/zero`: 1 MiB writes), and from a write pipe transport into a child
(`cat > /dev/null`), on one loop.

    python bench/pipe_throughput.py LOOP [MiB] [runs]

LOOP is goloop, goloop-epoll, uvloop or asyncio. Prints one line per direction:
the best and the median of `runs` in MB/s (10**6 bytes per second). Pin it
with taskset to compare loops on the same CPUs; PIPE_BENCH_CHILD_CPU=N runs
the child on CPU N (taskset), apart from the loop.
"""
import asyncio
import os
import statistics
import subprocess
import sys
import time


_CHILD_CPU = os.environ.get("PIPE_BENCH_CHILD_CPU")
_PIN = ["taskset", "-c", _CHILD_CPU] if _CHILD_CPU else []


class Sink(asyncio.Protocol):
    def __init__(self, done):
        self.n = 0
        self.done = done

    def data_received(self, data):
        self.n += len(data)

    def connection_lost(self, exc):
        self.done.set_result(exc)


class Source(asyncio.Protocol):
    def __init__(self):
        self.resumed = None

    def pause_writing(self):
        self.resumed = asyncio.get_running_loop().create_future()

    def resume_writing(self):
        if self.resumed is not None:
            self.resumed.set_result(None)
            self.resumed = None

    def connection_lost(self, exc):
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_exception(exc or ConnectionError("lost"))


async def read_side(total):
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    proc = subprocess.Popen(_PIN + ["dd", "if=/dev/zero", "bs=1M", f"count={total >> 20}", "status=none"], stdout=w)
    os.close(w)
    done = loop.create_future()
    t0 = time.perf_counter()
    tr, p = await loop.connect_read_pipe(lambda: Sink(done), os.fdopen(r, "rb", 0))
    await done
    dt = time.perf_counter() - t0
    proc.wait()
    assert p.n == total, (p.n, total)
    return total / dt / 1e6


async def write_side(total):
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    proc = subprocess.Popen(_PIN + ["cat"], stdin=r, stdout=subprocess.DEVNULL)
    os.close(r)
    chunk = b"\0" * (256 << 10)
    t0 = time.perf_counter()
    tr, p = await loop.connect_write_pipe(Source, os.fdopen(w, "wb", 0))
    sent = 0
    while sent < total:
        tr.write(chunk)
        sent += len(chunk)
        if p.resumed is not None:
            await p.resumed
    tr.close()
    while tr.get_write_buffer_size():
        await asyncio.sleep(0.001)
    await loop.run_in_executor(None, proc.wait)
    dt = time.perf_counter() - t0
    return total / dt / 1e6


def new_loop(name):
    if name.startswith("goloop"):
        import goloop
        return goloop.Loop(backend="epoll" if name == "goloop-epoll" else None)
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def main():
    name = sys.argv[1]
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    total = mib << 20
    loop = new_loop(name)
    try:
        for label, fn in (("read", read_side), ("write", write_side)):
            rates = [loop.run_until_complete(fn(total)) for _ in range(runs)]
            print(f"{name:13s} {label:5s} {mib} MiB: best {max(rates):6.0f} MB/s, "
                  f"median {statistics.median(rates):6.0f} MB/s")
    finally:
        loop.close()


if __name__ == "__main__":
    main()

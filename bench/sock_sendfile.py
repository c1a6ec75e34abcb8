"""loop.sock_sendfile throughput: a file (64 MiB by default, in /dev/shm when it
exists, so the disk is not measured) sent over a loopback TCP connection to a
reader in another process that reads until EOF.

    python bench/sock_sendfile.py LOOP [MiB] [runs]
    python bench/sock_sendfile.py LOOP small [KiB] [calls]

The second form measures the cost of one call instead: `calls` sock_sendfile
calls (default 20000) of a small file (16 KiB) on one connection, as a static
file server makes them; it prints calls per second and CPU time per call.

LOOP is goloop, goloop-epoll, uvloop or asyncio. uvloop 0.17 has no
sock_sendfile (NotImplementedError); for it the script runs asyncio's own
fallback (BaseEventLoop._sock_sendfile_fallback: reads in the executor and
sock_sendall), which is what a program on uvloop gets from asyncio's code.
Prints the best and the median MB/s (10**6 bytes per second) of `runs`, and the
loop process's CPU time per MiB sent (user+system, all threads). Pin it with
taskset to compare loops on the same CPU; SENDFILE_BENCH_READER_CPU=N runs the
reader on CPU N.
"""
import asyncio
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time

_READER_CPU = os.environ.get("SENDFILE_BENCH_READER_CPU")
_PIN = ["taskset", "-c", _READER_CPU] if _READER_CPU else []

# The reader: accept one connection, read until EOF, print the count.
_READER = r"""
import socket, sys
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
print(l.getsockname()[1], flush=True)
c, _ = l.accept()
n = 0
buf = bytearray(1 << 20)
while True:
    k = c.recv_into(buf)
    if not k:
        break
    n += k
print(n, flush=True)
"""


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_loop(name):
    if name.startswith("goloop"):
        if name == "goloop-epoll":
            os.environ["GOLOOP_BACKEND"] = "epoll"
        import goloop
        return goloop.new_event_loop()
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


async def one(f, size, name):
    loop = asyncio.get_running_loop()
    proc = subprocess.Popen(_PIN + [sys.executable, "-c", _READER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        f.seek(0)
        c0, t0 = cpu(), time.perf_counter()
        if name == "uvloop":
            n = await asyncio.BaseEventLoop._sock_sendfile_fallback(loop, sock, f, 0, None)
        else:
            n = await loop.sock_sendfile(sock, f, fallback=False)
        dt, dc = time.perf_counter() - t0, cpu() - c0
        sock.close()
        got = int(await loop.run_in_executor(None, proc.stdout.readline))
        assert n == size == got, (n, size, got)
        return size / dt / 1e6, dc / (size / (1 << 20)) * 1e6
    finally:
        proc.wait()


async def small(f, size, calls, name):
    loop = asyncio.get_running_loop()
    proc = subprocess.Popen(_PIN + [sys.executable, "-c", _READER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        send = loop.sock_sendfile
        if name == "uvloop":
            def send(sock, f, offset, count, fallback):
                f.seek(0)  # the fallback reads from the position when offset is 0
                return asyncio.BaseEventLoop._sock_sendfile_fallback(loop, sock, f, offset, count)
        c0, t0 = cpu(), time.perf_counter()
        for _ in range(calls):
            await send(sock, f, 0, size, fallback=False)
        dt, dc = time.perf_counter() - t0, cpu() - c0
        sock.close()
        got = int(await loop.run_in_executor(None, proc.stdout.readline))
        assert got == size * calls, (got, size * calls)
        return calls / dt, dc / calls * 1e6
    finally:
        proc.wait()


def main():
    name = sys.argv[1]
    if len(sys.argv) > 2 and sys.argv[2] == "small":
        kib = int(sys.argv[3]) if len(sys.argv) > 3 else 16
        calls = int(sys.argv[4]) if len(sys.argv) > 4 else 20000
        loop = make_loop(name)
        with tempfile.TemporaryFile() as f:
            f.write(os.urandom(kib << 10))
            f.flush()
            try:
                rates = [loop.run_until_complete(small(f, kib << 10, calls, name)) for _ in range(3)]
            finally:
                loop.close()
        print(f"{name}: {calls} calls of {kib} KiB x 3: best {max(r for r, _ in rates):.0f} calls/s, "
              f"median {statistics.median(r for r, _ in rates):.0f} calls/s, "
              f"CPU {statistics.median(c for _, c in rates):.1f} us/call")
        return
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    size = mib << 20
    where = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryFile(dir=where) as f:
        f.write(os.urandom(1 << 20) * mib)
        f.flush()
        loop = make_loop(name)
        try:
            results = [loop.run_until_complete(one(f, size, name)) for _ in range(runs)]
        finally:
            loop.close()
    rates = [r for r, _ in results]
    cpus = [c for _, c in results]
    print(f"{name}: {mib} MiB x {runs}: best {max(rates):.0f} MB/s, median {statistics.median(rates):.0f} MB/s, "
          f"CPU {statistics.median(cpus):.0f} us/MiB")


if __name__ == "__main__":
    main()

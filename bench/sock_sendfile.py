"""loop.sock_sendfile throughput: a file (64 MiB by default, in /dev/shm when it
exists, so the disk is not measured) sent over a loopback TCP connection to a
reader in another process that reads until EOF.

    python bench/sock_sendfile.py LOOP [MiB] [runs]

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


def main():
    name = sys.argv[1]
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    size = mib << 20
    if name.startswith("goloop"):
        if name == "goloop-epoll":
            os.environ["GOLOOP_BACKEND"] = "epoll"
        import goloop
        factory = goloop.new_event_loop
    elif name == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    where = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryFile(dir=where) as f:
        f.write(os.urandom(1 << 20) * mib)
        f.flush()
        loop = factory()
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

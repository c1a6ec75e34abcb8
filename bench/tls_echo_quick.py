"""A quick TLS echo comparison: one server process per loop pinned to CPU 0, one
Python client process pinned to CPU 1 doing request/response (1 KiB by default) over
10 connections for a few seconds. Reports requests/s and the server's CPU time per
request (user + system, from /proc), for:

  goloop         goloop's TLS protocol in C (_core/tls.c)
  goloop-py      goloop with GOLOOP_TLS=python (asyncio's sslproto.SSLProtocol)
  uvloop         uvloop's compiled SSL protocol
  asyncio        asyncio's selector loop and sslproto.SSLProtocol

    PYTHONPATH=python /work/main/.venv/bin/python bench/tls_echo_quick.py \
        [--seconds 5] [--conns 10] [--size 1024] [--client-loop uvloop]

On a two-CPU machine the client works as hard as the server (it encrypts and
decrypts as much), so requests/s is bounded by the client too; the server's CPU
time per request is the number to compare. The proper load generator (Go) lives in
bench/loadgen."""

import argparse
import asyncio
import os
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LOOPS = ("goloop", "goloop-py", "uvloop", "asyncio")


def make_certs(d):
    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "key.pem", "-out", "cert.pem", "-days", "2", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")
    return os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")


def new_loop(name):
    if name.startswith("goloop"):
        import goloop
        return goloop.new_event_loop()
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.SelectorEventLoop()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- server ------------------------------------------------------------------------------

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


def serve(loop_name, cert, key):
    os.sched_setaffinity(0, {0})
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    loop = new_loop(loop_name)
    srv = loop.run_until_complete(loop.create_server(Echo, "127.0.0.1", 0, ssl=ctx))
    print(srv.sockets[0].getsockname()[1], flush=True)
    try:
        loop.run_forever()
    finally:
        loop.close()


# -- client ------------------------------------------------------------------------------

class Pinger(asyncio.Protocol):
    def __init__(self, payload, counter):
        self.payload = payload
        self.counter = counter
        self.got = 0

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.payload)

    def data_received(self, data):
        self.got += len(data)
        if self.got >= len(self.payload):
            self.got -= len(self.payload)
            self.counter[0] += 1
            self.transport.write(self.payload)


def client(loop_name, port, conns, size, seconds):
    os.sched_setaffinity(0, {1})
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    loop = new_loop(loop_name)
    counter = [0]
    payload = os.urandom(size)

    async def main():
        trs = []
        for _ in range(conns):
            tr, _ = await loop.create_connection(lambda: Pinger(payload, counter),
                                                 "127.0.0.1", port, ssl=ctx)
            trs.append(tr)
        await asyncio.sleep(0.5)  # warm-up
        start_count, t0 = counter[0], time.perf_counter()
        print("START", flush=True)
        await asyncio.sleep(seconds)
        n, dt = counter[0] - start_count, time.perf_counter() - t0
        print(f"END {n} {dt}", flush=True)
        for tr in trs:
            tr.abort()

    loop.run_until_complete(main())
    loop.close()


# -- driver ------------------------------------------------------------------------------

def measure(loop_name, args, cert, key):
    env = dict(os.environ)
    env.pop("GOLOOP_TLS", None)
    if loop_name == "goloop-py":
        env["GOLOOP_TLS"] = "python"
    srv = subprocess.Popen([sys.executable, __file__, "--serve", loop_name, cert, key],
                           stdout=subprocess.PIPE, text=True, env=env)
    try:
        port = int(srv.stdout.readline())
        cenv = dict(os.environ)
        cenv.pop("GOLOOP_TLS", None)
        cl = subprocess.Popen([sys.executable, __file__, "--client", args.client_loop, str(port),
                               str(args.conns), str(args.size), str(args.seconds)],
                              stdout=subprocess.PIPE, text=True, env=cenv)
        try:
            line = cl.stdout.readline()
            assert line.strip() == "START", line
            c0 = cpu_seconds(srv.pid)
            _, n, dt = cl.stdout.readline().split()
            c1 = cpu_seconds(srv.pid)
        finally:
            cl.wait(30)
        n, dt = int(n), float(dt)
        return n / dt, (c1 - c0) / n * 1e6, (c1 - c0) / dt
    finally:
        srv.kill()
        srv.wait()


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        return serve(*sys.argv[2:5])
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        name, port, conns, size, seconds = sys.argv[2:7]
        return client(name, int(port), int(conns), int(size), float(seconds))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--client-loop", default="uvloop", choices=LOOPS)
    ap.add_argument("--loops", default=",".join(LOOPS))
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds, the loops interleaved in each; the median is shown")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        cert, key = make_certs(d)
        names = args.loops.split(",")
        results = {name: [] for name in names}
        for _ in range(args.rounds):
            for name in names:
                results[name].append(measure(name, args, cert, key))
        print(f"TLS echo, {args.conns} conns x {args.size} B, {args.seconds:g} s, "
              f"server CPU 0, client ({args.client_loop}) CPU 1, "
              f"median of {args.rounds} interleaved rounds")
        print(f"{'server':<10} {'req/s':>10} {'server µs CPU/req':>18} {'server CPU':>11}")
        for name in names:
            runs = sorted(results[name], key=lambda r: r[1])   # by CPU per request
            rps, us, util = runs[len(runs) // 2]
            print(f"{name:<10} {rps:>10,.0f} {us:>18.1f} {util:>10.0%}", flush=True)


if __name__ == "__main__":
    main()

"""Name resolution side by side: goloop, asyncio and uvloop.

    sudo PYTHONPATH=python /usr/bin/python3 bench/dns_bench.py [--names 10000]
        [--concurrency 100] [--rounds 3]

unbound serves --names distinct names (n0.bench.example ...) on 127.0.0.1:53
inside a network namespace whose /etc/resolv.conf points at it, so the C
library (asyncio's and uvloop's getaddrinfo in a thread pool) and goloop's
Go resolver ask the same server for the same data. Each loop runs in its
own process in that namespace (so no cache carries over) and resolves every
name once through loop.getaddrinfo(name, 80, type=SOCK_STREAM), as
create_connection does, with --concurrency lookups in flight. Reported:
lookups per second and latency percentiles (median of --rounds runs), the
goloop/asyncio and goloop/uvloop ratios; JSON goes to bench/results/dns.json.

Client and server run on different CPUs (the client on CPU 0, unbound and
the delay proxy on CPU 1) unless --no-pin: otherwise the scheduler's
placement decides much of the result, above all for asyncio, whose
executor threads and loop pass the GIL between the two cores.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "python"))

LOOPS = ("asyncio", "uvloop", "goloop")

# --delay-ms puts a UDP proxy (bench/delayproxy/delayproxy.c) between the
# clients and unbound: it holds every question for the given time before
# passing it on, as a resolver a few milliseconds away would (a LAN or ISP
# resolver), which no local server shows. It is built with gcc.


def build_delay_proxy(workdir):
    out = os.path.join(workdir, "delayproxy")
    subprocess.run(["gcc", "-O2", "-Wall", "-o", out,
                    os.path.join(HERE, "delayproxy", "delayproxy.c")], check=True)
    return out


def child(loop_name, names, concurrency, cpu, passes=1):
    if cpu is not None:
        # Before any thread starts (the executor's, Go's): they inherit it.
        os.sched_setaffinity(0, {cpu})
    import asyncio
    import socket
    if loop_name == "goloop":
        import goloop
        loop = goloop.new_event_loop()
    elif loop_name == "uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    todo = [f"n{i}.bench.example" for i in range(names)]
    lat = []
    errors = 0

    async def worker(it):
        nonlocal errors
        gai = loop.getaddrinfo
        for name in it:
            t0 = time.perf_counter()
            try:
                res = await gai(name, 80, type=socket.SOCK_STREAM)
                if not res:
                    errors += 1
            except OSError:
                errors += 1
            lat.append(time.perf_counter() - t0)

    async def main():
        # One warm-up lookup outside the measurement: thread pool, Go runtime.
        await loop.getaddrinfo("ns.example", 80, type=socket.SOCK_STREAM)
        # With --repeat the names are resolved once unmeasured first: the
        # measured pass then asks for names asked before (goloop answers
        # from its cache; the C library has none and asks unbound again).
        for _ in range(passes - 1):
            await asyncio.gather(*[worker(iter(todo[i::concurrency])) for i in range(concurrency)])
        del lat[:]
        it = iter(todo)
        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*[worker(it) for _ in range(concurrency)])
        return time.perf_counter() - t0, time.process_time() - c0

    elapsed, cpu = loop.run_until_complete(main())
    loop.close()
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3  # noqa: E731
    print(json.dumps({
        "loop": loop_name, "lookups": len(lat), "errors": errors,
        "seconds": elapsed, "rate": len(lat) / elapsed,
        "cpu_us": cpu / len(lat) * 1e6,  # client process CPU (all threads) per lookup
        "p50_ms": pick(0.50), "p99_ms": pick(0.99), "max_ms": lat[-1] * 1e3,
    }))


def server_cpu(ub):
    """unbound's CPU seconds so far (user + system), from /proc."""
    with open(f"/proc/{ub.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--names", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loops", default=",".join(LOOPS))
    ap.add_argument("--delay-ms", type=float, default=0.0,
                    help="hold each question this long in a proxy (a resolver farther away)")
    ap.add_argument("--no-pin", action="store_true",
                    help="let the scheduler place client and server (default: client on "
                         "CPU 0, unbound and the proxy on CPU 1)")
    ap.add_argument("--repeat", action="store_true",
                    help="resolve every name once before the measured pass (repeat lookups)")
    ap.add_argument("--perf", metavar="FILE",
                    help="run goloop's client under perf record -g, writing FILE")
    ap.add_argument("--child")
    ap.add_argument("--cpu", type=int)
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.out is None:
        suffix = (f"-delay{a.delay_ms:g}ms" if a.delay_ms else "") + ("-repeat" if a.repeat else "")
        a.out = os.path.join(HERE, "results", f"dns{suffix}.json")
    if a.child:
        return child(a.child, a.names, a.concurrency, a.cpu, 2 if a.repeat else 1)
    pin = not a.no_pin and len(os.sched_getaffinity(0)) >= 2
    client_cpu, server_cpu_set = (0, {1}) if pin else (None, None)

    import dns_support
    if dns_support.UNBOUND is None:
        sys.exit("unbound is not installed (apt-get install unbound)")
    why = dns_support.netns_supported()
    if why:
        sys.exit("this benchmark needs a network namespace: " + why)
    loops = a.loops.split(",")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"), GOLOOP_RESOLVER="go")
    runs = {name: [] for name in loops}
    import contextlib
    import tempfile
    with contextlib.ExitStack() as stack:
        ns = stack.enter_context(dns_support.netns("nameserver 127.0.0.1\n"))
        # Without a delay unbound itself listens on 127.0.0.1:53; with one,
        # the proxy does and unbound sits behind it on another port.
        ub = stack.enter_context(dns_support.Unbound(
            port=53 if not a.delay_ms else 5353, netns=ns, bench_names=a.names))
        if pin:
            os.sched_setaffinity(ub.proc.pid, server_cpu_set)
        if a.delay_ms:
            workdir = stack.enter_context(tempfile.TemporaryDirectory())
            proxy = subprocess.Popen(
                [dns_support.IP, "netns", "exec", ns]
                + (["taskset", "-c", ",".join(map(str, server_cpu_set))] if pin else [])
                + [build_delay_proxy(workdir),
                 "127.0.0.1:53", "127.0.0.1:5353", str(a.delay_ms)],
                stdout=subprocess.PIPE, text=True)
            stack.callback(lambda: (proxy.kill(), proxy.wait()))
            if proxy.stdout.readline().strip() != "ready":
                sys.exit("delay proxy did not start")
        for rnd in range(a.rounds):
            for name in loops:
                s0 = server_cpu(ub)
                profile = (["perf", "record", "-q", "-F", "4999", "-g", "-o", os.path.abspath(a.perf), "--"]
                           if a.perf and name == "goloop" else [])
                r = dns_support.netns_exec(
                    ns, profile + [sys.executable, os.path.abspath(__file__), "--child", name,
                         "--names", str(a.names), "--concurrency", str(a.concurrency)]
                    + (["--cpu", str(client_cpu)] if pin else [])
                    + (["--repeat"] if a.repeat else []),
                    capture_output=True, text=True, env=env, timeout=900)
                if r.returncode != 0:
                    sys.exit(f"{name} failed:\n{r.stderr}")
                res = json.loads(r.stdout.strip().splitlines()[-1])
                res["server_cpu_us"] = (server_cpu(ub) - s0) / res["lookups"] * 1e6
                if res["errors"]:
                    sys.exit(f"{name}: {res['errors']} lookups failed")
                runs[name].append(res)
                print(f"round {rnd + 1} {name:8s} {res['rate']:9.0f} lookups/s  "
                      f"p99 {res['p99_ms']:7.2f} ms  cpu/lookup: client "
                      f"{res['cpu_us']:.0f} us, unbound {res['server_cpu_us']:.0f} us",
                      file=sys.stderr)

    summary = {}
    for name, rs in runs.items():
        summary[name] = {
            "rate": statistics.median(r["rate"] for r in rs),
            "p50_ms": statistics.median(r["p50_ms"] for r in rs),
            "p99_ms": statistics.median(r["p99_ms"] for r in rs),
            "client_cpu_us": statistics.median(r["cpu_us"] for r in rs),
            "server_cpu_us": statistics.median(r["server_cpu_us"] for r in rs),
        }
    where = (f"unbound behind a proxy adding {a.delay_ms:g} ms" if a.delay_ms
             else "unbound on 127.0.0.1:53")
    if pin:
        where += ", client on CPU 0, server on CPU 1"
    if a.repeat:
        where += ", names asked before"
    print(f"\n{a.names} distinct names, concurrency {a.concurrency}, "
          f"median of {a.rounds} rounds ({where}, in a netns)\n")
    print(f"{'loop':10s} {'lookups/s':>12s} {'p50 ms':>9s} {'p99 ms':>9s} "
          f"{'client CPU/lookup':>18s} {'unbound CPU/lookup':>19s}")
    for name in loops:
        s = summary[name]
        print(f"{name:10s} {s['rate']:12.0f} {s['p50_ms']:9.2f} {s['p99_ms']:9.2f} "
              f"{s['client_cpu_us']:15.0f} us {s['server_cpu_us']:16.0f} us")
    ratios = {}
    if "goloop" in summary:
        for other in ("asyncio", "uvloop"):
            if other in summary:
                ratios[f"goloop/{other}"] = summary["goloop"]["rate"] / summary[other]["rate"]
                print(f"goloop/{other}: {ratios[f'goloop/{other}']:.1f}x lookups/s, "
                      f"p99 {summary[other]['p99_ms'] / summary['goloop']['p99_ms']:.1f}x lower")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({
            "command": "PYTHONPATH=python /usr/bin/python3 bench/dns_bench.py " + " ".join(sys.argv[1:]),
            "names": a.names, "concurrency": a.concurrency, "rounds": a.rounds,
            "delay_ms": a.delay_ms, "pinned": pin, "repeat": a.repeat,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(), "summary": summary, "ratios": ratios, "runs": runs,
        }, f, indent=2)
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()

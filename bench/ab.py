"""Paired comparison of two loops on one echo cell, for ratios that noise would blur.

    python bench/ab.py [--a goloop] [--b uvloop] [--variant protocol]
                       [--conns 10] [--size 1024] [--rounds 10] [--seconds 1]

Both servers stay up (pinned to CPU 0; the idle one costs nothing), and the
load generator (CPU 1) alternates between them, one window each per round.
Slow drifts of the machine then hit both sides of every pair alike; the
median of the per-round ratios, and its spread, is reported. Same process
rules as the suite: SCHED_FIFO unless BENCH_REALTIME=0, loopback only,
servers reaped on any exit. Run from the repository root; PYTHON and
PYTHONPATH as for bench/run.sh.
"""

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import procs  # noqa: E402
import suite  # noqa: E402


def window(server, args):
    argv = ["taskset", "-c", str(suite.CLIENT_CPU), suite.LOADGEN,
            "-addr", f"127.0.0.1:{server.port}", "-conns", str(args.conns),
            "-size", str(args.size), "-warmup", "0.3s", "-duration", f"{args.seconds}s",
            "-windows", "1", "-server-pid", str(server.pid)]
    r = procs.run_bounded(argv, timeout=args.seconds + 30)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if out.get("error"):
        raise RuntimeError(out["error"])
    if not server.alive():
        raise RuntimeError(f"server died: {server.stderr_tail()}")
    return out


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", default="goloop", choices=suite.LOOPS)
    p.add_argument("--b", default="uvloop", choices=suite.LOOPS)
    p.add_argument("--variant", default="protocol", choices=suite.VARIANTS)
    p.add_argument("--conns", type=int, default=10)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seconds", type=float, default=1.0)
    args = p.parse_args(argv)

    python = os.environ.get("PYTHON") or sys.executable
    procs.realtime = (os.environ.get("BENCH_REALTIME", "1") not in ("", "0")
                      and procs.can_realtime())
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -20)
    except OSError:
        pass

    servers = {}
    try:
        for loop in (args.a, args.b):
            port = procs.free_port()
            servers[loop] = procs.Server(
                [python, "-X", "faulthandler", suite.ECHO_SERVER, "--loop", loop,
                 "--variant", args.variant, "--port", str(port)],
                cpu=suite.SERVER_CPU, port=port, cwd=suite.SERVER_CWD)
        ratios, rps = [], {args.a: [], args.b: []}
        cpu = {args.a: [], args.b: []}
        for i in range(args.rounds):
            # Alternate who goes first, so neither always follows the other.
            order = (args.a, args.b) if i % 2 == 0 else (args.b, args.a)
            got = {loop: window(servers[loop], args) for loop in order}
            for loop in order:
                rps[loop].append(got[loop]["rps"])
                cpu[loop].append(got[loop].get("server_cpu_us_per_req", 0.0))
            ratios.append(got[args.a]["rps"] / got[args.b]["rps"])
            print(f"round {i + 1:2}: {args.a} {got[args.a]['rps']:>9,.0f}  "
                  f"{args.b} {got[args.b]['rps']:>9,.0f}  ratio {ratios[-1]:.3f}", file=sys.stderr)
    finally:
        procs.stop_all()

    med = statistics.median(ratios)
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [med, med, med]
    summary = {
        "variant": args.variant, "conns": args.conns, "size": args.size,
        "rounds": args.rounds, "seconds": args.seconds,
        "a": args.a, "b": args.b,
        "ratio_median": round(med, 3), "ratio_q1": round(q[0], 3), "ratio_q3": round(q[2], 3),
        "rps_median": {k: round(statistics.median(v)) for k, v in rps.items()},
        "cpu_us_per_req_median": {k: round(statistics.median(v), 2) for k, v in cpu.items()},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1:])

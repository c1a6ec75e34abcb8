"""Paired comparison of two loops on one cell, for ratios that noise would blur.

    python bench/ab.py [--a goloop] [--b uvloop] [--variant protocol]
                       [--conns 10] [--size 1024] [--rounds 10] [--seconds 1]
                       [--a-path DIR] [--b-path DIR] [--churn]
                       [--a-env K=V ...] [--b-env K=V ...]
                       [--tls [--tls-key ecdsa|rsa] [--tls-version 1.2|1.3]]
                       [--http --conns 100 --seconds 3]

--churn pairs the new-connection cell instead (the load generator's -churn:
connect, one message of --size bytes, reset close; protocol servers): the
rate is mostly set by the load generator's kernel work, so compare the
servers' CPU per connection (cpu_us_per_req) as well as the rates.

--a-path/--b-path put DIR first on that server's PYTHONPATH, so two builds
of the same loop can be paired (a change's before and after: --a goloop
--a-path OLD/python --b goloop --b-path NEW/python).

--a-env/--b-env K=V (repeatable) add K=V to that server's environment, so
one build can be paired with itself under two settings (--a goloop --a-env
GOLOOP_TLS=python --b goloop).

--tls pairs the TLS cell instead: both servers serve TLS (echo_server.py
--tls, a certificate made for this run by openssl, ECDSA P-256 unless
--tls-key rsa), and the load generator speaks TLS (--tls-version, default
1.3) and verifies the certificate. With --churn every connection is a full
handshake, a --size echo and a close (use --size 64 for the suite's cell).

--http pairs the aiohttp hello cell instead (bench/servers/http_server.py,
`wrk -t1 -c CONNS --latency` for --seconds per window, whole seconds), with
each window's p99 latency beside its rate.

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
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import procs  # noqa: E402
import suite  # noqa: E402


def window(server, args):
    if args.http:
        out = suite.wrk_pass(server, args.seconds, args.conns)
        if not server.alive():
            raise RuntimeError(f"server died: {server.stderr_tail()}")
        return out
    argv = ["taskset", "-c", str(suite.CLIENT_CPU), suite.LOADGEN,
            *(["-churn"] if args.churn else []),
            *(suite.tls_loadgen_flags(args.tls_version, args.cert[0]) if args.tls else []),
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
    p.add_argument("--a-path", default=None, help="PYTHONPATH entry for a's server")
    p.add_argument("--b-path", default=None, help="PYTHONPATH entry for b's server")
    p.add_argument("--churn", action="store_true",
                   help="new connections per second (protocol servers) instead of echo")
    p.add_argument("--a-env", action="append", default=[], metavar="K=V",
                   help="add K=V to a's server environment (repeatable)")
    p.add_argument("--b-env", action="append", default=[], metavar="K=V",
                   help="add K=V to b's server environment (repeatable)")
    p.add_argument("--tls", action="store_true", help="the TLS cell: servers and load over TLS")
    p.add_argument("--http", action="store_true",
                   help="the aiohttp cell: aiohttp hello servers, wrk -c CONNS (give --conns 100)")
    p.add_argument("--tls-key", default="ecdsa", choices=sorted(suite.TLS_KEYS))
    p.add_argument("--tls-version", default="1.3", choices=["1.2", "1.3"])
    args = p.parse_args(argv)
    for kv in args.a_env + args.b_env:
        if "=" not in kv or not kv.split("=", 1)[0]:
            p.error(f"--a-env/--b-env want K=V, not {kv!r}")
    if args.http and (args.tls or args.churn):
        p.error("--http pairs the aiohttp cell alone (no --tls, no --churn)")
    if args.tls and args.variant not in suite.TLS_VARIANTS:
        p.error(f"--variant {args.variant} has no TLS (TLS variants: {', '.join(suite.TLS_VARIANTS)})")
    # Sides are named by loop, or by loop and build when both run one loop.
    name_a, name_b = args.a, args.b
    if name_a == name_b:
        name_a, name_b = f"{args.a}(a)", f"{args.b}(b)"

    python = os.environ.get("PYTHON") or sys.executable
    procs.realtime = (os.environ.get("BENCH_REALTIME", "1") not in ("", "0")
                      and procs.can_realtime())
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -20)
    except OSError:
        pass

    servers = {}
    tmp = tempfile.mkdtemp(prefix="goloop-ab-")
    negotiated = None
    try:
        tls_argv = []
        if args.tls:
            args.cert = suite.make_cert(tmp, args.tls_key)
            tls_argv = ["--tls", ":".join(args.cert)]
        sides = ((name_a, args.a, args.a_path, args.a_env), (name_b, args.b, args.b_path, args.b_env))
        for name, loop, path, extra in sides:
            port = procs.free_port()
            env = None
            if path or extra:
                env = dict(os.environ)
            if path:
                env["PYTHONPATH"] = os.path.abspath(path) + (
                    os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            for kv in extra:
                k, v = kv.split("=", 1)
                env[k] = v
            if args.http:
                argv = [python, "-X", "faulthandler", suite.HTTP_SERVER, "--loop", loop,
                        "--port", str(port)]
            else:
                argv = [python, "-X", "faulthandler", suite.ECHO_SERVER, "--loop", loop,
                        "--variant", args.variant, "--port", str(port), *tls_argv]
            servers[name] = procs.Server(argv, cpu=suite.SERVER_CPU, port=port,
                                         cwd=suite.SERVER_CWD, env=env)
        ratios, rps = [], {name_a: [], name_b: []}
        cpu = {name_a: [], name_b: []}
        p99 = {name_a: [], name_b: []}
        if args.http:
            for name in servers:  # aiohttp's first requests import and compile: not measured
                suite.wrk_pass(servers[name], 1, args.conns)
        for i in range(args.rounds):
            # Alternate who goes first, so neither always follows the other.
            order = (name_a, name_b) if i % 2 == 0 else (name_b, name_a)
            got = {name: window(servers[name], args) for name in order}
            for name in order:
                rps[name].append(got[name]["rps"])
                cpu[name].append(got[name].get("server_cpu_us_per_req", 0.0))
                p99[name].append(got[name].get("p99_us", 0.0))
            ratios.append(got[name_a]["rps"] / got[name_b]["rps"])
            if args.tls:
                negotiated = " ".join(str(got[name_a].get(k)) for k in
                                      ("tls_version", "tls_cipher", "tls_curve"))
            print(f"round {i + 1:2}: {name_a} {got[name_a]['rps']:>9,.0f}  "
                  f"{name_b} {got[name_b]['rps']:>9,.0f}  ratio {ratios[-1]:.3f}  "
                  f"server CPU us/req {cpu[name_a][-1]:.2f} {cpu[name_b][-1]:.2f}  "
                  f"p99 us {p99[name_a][-1]:,.0f} {p99[name_b][-1]:,.0f}", file=sys.stderr)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    med = statistics.median(ratios)
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [med, med, med]
    summary = {
        "churn": args.churn, "variant": args.variant, "conns": args.conns, "size": args.size,
        "rounds": args.rounds, "seconds": args.seconds,
        "a": name_a, "b": name_b, "a_path": args.a_path, "b_path": args.b_path,
        "a_env": args.a_env, "b_env": args.b_env,
        "tls": (f"{negotiated}, {args.tls_key} certificate" if args.tls else None),
        "ratio_median": round(med, 3), "ratio_q1": round(q[0], 3), "ratio_q3": round(q[2], 3),
        "rps_median": {k: round(statistics.median(v)) for k, v in rps.items()},
        "cpu_us_per_req_median": {k: round(statistics.median(v), 2) for k, v in cpu.items()},
        "p99_us_median": {k: round(statistics.median(v)) for k, v in p99.items()},
        "http": args.http,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1:])

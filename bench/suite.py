"""goloop's side-by-side benchmark: echo (four asyncio APIs) and aiohttp.

    python bench/suite.py [--quick] [--unix] [--loops goloop,uvloop,asyncio]
                          [--variants protocol,...] [--out FILE]

Servers run pinned to CPU 0, load generators (bench/bin/loadgen, wrk) to
CPU 1. All traffic stays on 127.0.0.1 or Unix sockets. Results go to a JSON
file (bench/results/latest.json by default) and tables to stdout.

Environment: BENCH_SECONDS (one timed window, default 1), BENCH_WINDOWS
(windows per cell, the fastest reported, default 5), BENCH_WARMUP (default 1),
BENCH_HTTP_SECONDS (default 5), BENCH_NICE (priority of the servers and
load generators, default -20), BENCH_REALTIME (default 1: run them
SCHED_FIFO so that other work on the machine cannot delay them; 0 to leave
them under the normal scheduler), PYTHON (interpreter for the servers, default
this one).
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import procs  # noqa: E402
import report  # noqa: E402

SERVER_CPU, CLIENT_CPU = 0, 1
LOOPS = ["asyncio", "uvloop", "goloop"]
VARIANTS = ["protocol", "buffered", "streams", "sockets"]
CONNS = [10, 100]
SIZES = [1024, 10 * 1024, 100 * 1024]
LOADGEN = os.path.join(HERE, "bin", "loadgen")
CECHO = os.path.join(HERE, "bin", "cecho")
ECHO_SERVER = os.path.join(HERE, "servers", "echo_server.py")
HTTP_SERVER = os.path.join(HERE, "servers", "http_server.py")
# Servers run from their own directory: from the repository root, the Go
# package directory goloop/ would shadow the Python package as a namespace
# package.
SERVER_CWD = os.path.join(HERE, "servers")


def env_float(name, default):
    v = os.environ.get(name)
    return float(v) if v else default


def loop_available(python, loop):
    """None if `loop` can make an event loop in the server interpreter, else why not."""
    code = f"import sys; sys.path.insert(0, {os.path.join(HERE, 'servers')!r}); " \
           f"from loops import new_loop; new_loop({loop!r}).close()"
    try:
        r = procs.run_bounded([python, "-c", code], timeout=60, cwd=SERVER_CWD)
    except subprocess.TimeoutExpired:
        return "making a loop timed out"
    if r.returncode == 0:
        return None
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else f"exit {r.returncode}")[:200]


class Suite:
    def __init__(self, args):
        self.args = args
        self.python = os.environ.get("PYTHON") or sys.executable
        self.window = env_float("BENCH_SECONDS", 1.0)
        self.windows = int(env_float("BENCH_WINDOWS", 2 if args.quick else 5))
        self.warmup = env_float("BENCH_WARMUP", 0.5 if args.quick else 1.0)
        self.http_seconds = int(env_float("BENCH_HTTP_SECONDS", 2 if args.quick else 5))
        self.http_windows = 1 if args.quick else 3
        self.tmp = tempfile.mkdtemp(prefix="goloop-bench-")
        self.unavailable = {}

    # -- echo -------------------------------------------------------------

    def echo_server(self, loop, variant):
        where = self.endpoint()
        if loop == "c":
            argv = [CECHO]
        else:
            argv = [self.python, "-X", "faulthandler", ECHO_SERVER,
                    "--loop", loop, "--variant", variant]
        argv += ["--unix", where["unix"]] if "unix" in where else ["--port", str(where["port"])]
        return procs.Server(argv, cpu=SERVER_CPU, cwd=SERVER_CWD, **where)

    def endpoint(self):
        if self.args.unix:
            return {"unix": os.path.join(self.tmp, f"echo-{time.monotonic_ns()}.sock")}
        return {"port": procs.free_port()}

    def echo_cell(self, loop, variant, conns, size):
        row = {"variant": variant, "loop": loop, "conns": conns, "size": size}
        if loop in self.unavailable:
            row["error"] = "unavailable: " + self.unavailable[loop]
            return row
        try:
            server = self.echo_server(loop, variant)
        except procs.ServerError as e:
            row["error"] = f"server did not start: {e}"
            return row
        with server:
            target = ["-unix", server.unix] if server.unix else ["-addr", f"127.0.0.1:{server.port}"]
            argv = ["taskset", "-c", str(CLIENT_CPU), LOADGEN, *target,
                    "-conns", str(conns), "-size", str(size),
                    "-warmup", f"{self.warmup}s", "-duration", f"{self.window}s",
                    "-windows", str(self.windows), "-server-pid", str(server.pid)]
            budget = self.warmup + self.window * self.windows + 30
            try:
                r = procs.run_bounded(argv, timeout=budget)
                out = json.loads(r.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                out = {"error": f"load generator exceeded {budget:.0f}s"}
            except (ValueError, IndexError):
                out = {"error": f"load generator failed: {r.stderr.strip()[-200:]}"}
            if not server.alive():
                out["error"] = f"server died (exit {server.proc.returncode}): {server.stderr_tail()}"
            elif not out.get("error"):
                # The load generator has closed its connections: a server that
                # crashes on that is caught here, after a measurement that
                # stands, and the crash is reported beside it.
                server.echo_probe()
        if out.get("error"):
            row["error"] = out["error"]
            return row
        if server.died is not None:
            row["crash"] = f"server died after the load (exit {server.died}): {server.last_words}"
        row.update(
            rps=round(out["rps"]), windows_rps=[round(x) for x in out.get("windows_rps", [])],
            p50_us=round(out["p50_us"], 1), p99_us=round(out["p99_us"], 1),
            mb_per_s=round(out["bytes_per_s"] / 1e6, 1),
            cpu_us_per_req=round(out.get("server_cpu_us_per_req", 0.0), 2),
            loadgen_cpu=round(out.get("loadgen_cpu_util", 0.0), 2),
            other_cpu=round(out.get("other_cpu", 0.0), 2))
        return row

    def echo_matrix(self):
        if self.args.quick:
            cells = [(10, 1024)]
        else:
            cells = [(c, s) for s in SIZES for c in CONNS]
        rows = []
        # Cell by cell, with every loop and variant inside one cell run close
        # together in time: drift in the machine's state (other work, thermal)
        # then moves all of a cell's numbers together, and ratios stay fair.
        for conns, size in cells:
            runs = [("c", "c")] + [(lp, v) for v in self.args.variants for lp in self.args.loops]
            for loop, variant in runs:
                row = self.echo_cell(loop, variant, conns, size)
                rows.append(row)
                report.progress(row)
        return rows

    # -- aiohttp ----------------------------------------------------------

    def http_loop(self, loop):
        row = {"loop": loop}
        if loop in self.unavailable:
            row["error"] = "unavailable: " + self.unavailable[loop]
            return row
        port = procs.free_port()
        try:
            server = procs.Server([self.python, "-X", "faulthandler", HTTP_SERVER,
                                   "--loop", loop, "--port", str(port)],
                                  cpu=SERVER_CPU, port=port, cwd=SERVER_CWD)
        except procs.ServerError as e:
            row["error"] = f"server did not start: {e}"
            return row
        url = f"http://127.0.0.1:{port}/"
        wrk = ["taskset", "-c", str(CLIENT_CPU), "wrk", "-t1", "-c100", "--latency"]
        with server:
            try:
                procs.run_bounded(wrk + ["-d1s", url], timeout=30)  # warm-up
                results = []
                for _ in range(self.http_windows):
                    cpu0 = procs.cpu_seconds(server.pid)
                    r = procs.run_bounded(wrk + [f"-d{self.http_seconds}s", url],
                                          timeout=self.http_seconds + 30)
                    cpu1 = procs.cpu_seconds(server.pid)
                    res = parse_wrk(r.stdout)
                    if r.returncode != 0 or "error" in res:
                        raise RuntimeError(res.get("error") or r.stderr.strip()[-200:])
                    res["cpu_us_per_req"] = (cpu1 - cpu0) / max(res["requests"], 1) * 1e6
                    results.append(res)
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                row["error"] = str(e)[:200]
            if not server.alive():
                row["error"] = f"server died (exit {server.proc.returncode}): {server.stderr_tail()}"
        if "error" in row:
            return row
        if server.died is not None:
            row["crash"] = f"server died after the load (exit {server.died}): {server.last_words}"
        # The fastest window, as for echo: interference only slows things down.
        mid = max(results, key=lambda x: x["rps"])
        row.update(rps=round(mid["rps"]), windows_rps=[round(x["rps"]) for x in results],
                   p50_us=round(mid["p50_us"], 1), p99_us=round(mid["p99_us"], 1),
                   cpu_us_per_req=round(mid["cpu_us_per_req"], 2))
        return row

    def http_suite(self):
        rows = []
        for loop in self.args.loops:
            row = self.http_loop(loop)
            rows.append(row)
            report.progress(row, kind="aiohttp")
        return rows

    # -- all --------------------------------------------------------------

    def run(self):
        for loop in self.args.loops:
            why = loop_available(self.python, loop)
            if why:
                self.unavailable[loop] = why
                print(f"note: {loop} unavailable: {why}", file=sys.stderr)
        meta = self.meta()
        echo = self.echo_matrix() if not self.args.skip_echo else []
        http = self.http_suite() if not self.args.skip_http else []
        return {"meta": meta, "echo": echo, "aiohttp": http}

    def meta(self):
        def out(argv):
            try:
                return procs.run_bounded(argv, timeout=30, cwd=SERVER_CWD).stdout.strip()
            except (OSError, subprocess.TimeoutExpired):
                return ""
        versions = out([self.python, "-c",
                        "import sys, platform, importlib.metadata as m\n"
                        "v = {'python': platform.python_version()}\n"
                        "for p in ('uvloop', 'aiohttp'):\n"
                        "    try: v[p] = m.version(p)\n"
                        "    except Exception: v[p] = None\n"                        "try:\n"
                        "    import goloop, os; v['goloop_path'] = os.path.dirname(goloop.__file__)\n"
                        "except Exception: v['goloop_path'] = None\n"
                        "print(__import__('json').dumps(v))"])
        cpu = ""
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        return {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}",
            "versions": json.loads(versions) if versions else {},
            "goloop_commit": out(["git", "-C", HERE, "rev-parse", "--short", "HEAD"]),
            "wrk": out(["wrk", "--version"]).splitlines()[0] if shutil.which("wrk") else None,
            "transport": "unix" if self.args.unix else "tcp 127.0.0.1",
            "window_s": self.window, "windows": self.windows, "warmup_s": self.warmup,
            "http_seconds": self.http_seconds, "http_windows": self.http_windows,
            "quick": self.args.quick,
            "nice": os.getpriority(os.PRIO_PROCESS, 0),
            "realtime": procs.realtime,
            "goloop_backend": os.environ.get("GOLOOP_BACKEND", "auto"),
            "unavailable": self.unavailable,
        }


_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


def _duration_us(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def parse_wrk(text):
    res = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    n = re.search(r"(\d+) requests in", text)
    if not m or not n:
        return {"error": "wrk printed no result"}
    res["rps"], res["requests"] = float(m.group(1)), int(n.group(1))
    for pct, key in (("50", "p50_us"), ("99", "p99_us")):
        q = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        res[key] = _duration_us(q.group(1)) if q else float("nan")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if bad:
        res["error"] = f"{bad.group(1)} non-2xx responses"
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if errs and sum(map(int, errs.groups())) > 0:
        res["error"] = "socket errors: " + errs.group(0)
    return res


def compact_json(results):
    """JSON with one line per measurement: small, and a rerun diffs cell by cell."""
    parts = ['{\n "meta": ' + json.dumps(results["meta"], indent=1).replace("\n", "\n ")]
    for key in ("echo", "aiohttp"):
        rows = ",\n  ".join(json.dumps(r) for r in results[key])
        parts.append(f' "{key}": [\n  {rows}\n ]' if rows else f' "{key}": []')
    return ",\n".join(parts) + "\n}\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: one short cell per variant")
    p.add_argument("--unix", action="store_true", help="echo over Unix sockets instead of TCP")
    p.add_argument("--loops", default=",".join(LOOPS))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--skip-echo", action="store_true")
    p.add_argument("--skip-http", action="store_true")
    p.add_argument("--out", default=os.path.join(HERE, "results", "latest.json"))
    args = p.parse_args(argv)
    args.loops = [x for x in args.loops.split(",") if x]
    args.variants = [x for x in args.variants.split(",") if x]
    for x in args.loops:
        if x not in LOOPS:
            p.error(f"unknown loop {x}")
    for x in args.variants:
        if x not in VARIANTS:
            p.error(f"unknown variant {x}")
    return args


def main(argv):
    args = parse_args(argv)
    for tool in (LOADGEN, CECHO):
        if not os.access(tool, os.X_OK):
            sys.exit(f"{tool} is missing: build it with bench/run.sh")

    # SIGTERM and SIGHUP become exceptions so the finally below reaps servers.
    def _raise(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGHUP, _raise)

    # On a machine shared with other work, the benchmark's processes (which
    # all inherit this) take the CPU first; what others still take is
    # reported per cell as other_cpu.
    nice = int(env_float("BENCH_NICE", -20))
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as e:
        print(f"note: cannot set priority {nice}: {e}", file=sys.stderr)

    procs.realtime = os.environ.get("BENCH_REALTIME", "1") not in ("", "0")
    if procs.realtime and not procs.can_realtime():
        print("note: cannot use SCHED_FIFO here; servers run under the normal scheduler",
              file=sys.stderr)
        procs.realtime = False

    # Servers run from bench/servers, so a relative PYTHONPATH (say
    # PYTHONPATH=python from the repository root) must be made absolute.
    if os.environ.get("PYTHONPATH"):
        os.environ["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(p) for p in os.environ["PYTHONPATH"].split(os.pathsep) if p)

    suite = Suite(args)
    try:
        results = suite.run()
    except KeyboardInterrupt:
        sys.exit("interrupted; servers stopped, no results written")
    finally:
        procs.stop_all()
        shutil.rmtree(suite.tmp, ignore_errors=True)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(compact_json(results))
    print()
    print(report.tables(results))
    print(f"\nresults: {os.path.relpath(args.out)}")


if __name__ == "__main__":
    main(sys.argv[1:])

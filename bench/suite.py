"""goloop's side-by-side benchmark: echo (four asyncio APIs), aiohttp, new connections, TLS.

    python bench/suite.py [--quick] [--unix] [--loops goloop,uvloop,asyncio]
                          [--variants protocol,...] [--only echo,http,churn,connect,tls]
                          [--tls-key ecdsa|rsa] [--tls-version 1.2|1.3]
                          [--tls-variants protocol,...] [--tls-goloop-env K=V]
                          [--out FILE]

Servers run pinned to CPU 0, load generators (bench/bin/loadgen, wrk) to
CPU 1. All traffic stays on 127.0.0.1 or Unix sockets. Results go to a JSON
file (bench/results/latest.json by default) and tables to stdout.

Environment: BENCH_SECONDS (one timed window, default 1), BENCH_WINDOWS
(windows per cell, the fastest reported, default 5), BENCH_WARMUP (default 1),
BENCH_HTTP_SECONDS (default 5), BENCH_CHURN_ROUNDS (interleaved rounds of
the new-connection server cells, default 3), BENCH_CONNECT_ROUNDS (client
processes per loop for create_connection, interleaved, default 3),
BENCH_CONNECT_COUNT (connections per timed round there, default 1000),
BENCH_TLS_ROUNDS (interleaved rounds of the TLS cells, default 3), BENCH_NICE (priority of the servers and
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
# New connections: concurrency of the churn cells, and the one message each
# connection echoes.
CHURN_CONNS = [10, 50]
CHURN_SIZE = 64
# TLS (issue 9): echo over TLS with 10 connections, and new TLS connections
# per second (full handshake, one 64-byte echo, close). No C server here: the
# C echo has no TLS.
TLS_CONNS = 10
TLS_SIZES = [1024, 100 * 1024]
TLS_CHURN_CONNS = 10
TLS_VARIANTS = ["protocol", "buffered", "streams"]   # sockets has no TLS
TLS_KEYS = {
    # What most servers use; and the classic alternative, whose signature
    # makes the server's side of a handshake several times dearer.
    "ecdsa": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
    "rsa": ["-newkey", "rsa:2048"],
}
SECTIONS = ["echo", "http", "churn", "connect", "tls"]
LOADGEN = os.path.join(HERE, "bin", "loadgen")
CECHO = os.path.join(HERE, "bin", "cecho")
ECHO_SERVER = os.path.join(HERE, "servers", "echo_server.py")
HTTP_SERVER = os.path.join(HERE, "servers", "http_server.py")
CONNECT_CLIENT = os.path.join(HERE, "servers", "connect_client.py")
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
        self.churn_rounds = int(env_float("BENCH_CHURN_ROUNDS", 1 if args.quick else 3))
        self.connect_rounds = int(env_float("BENCH_CONNECT_ROUNDS", 1 if args.quick else 3))
        self.connect_count = int(env_float("BENCH_CONNECT_COUNT", 300 if args.quick else 1000))
        self.churn_warmup = 0.25 if args.quick else 0.5
        self.churn_windows = 1 if args.quick else 2
        self.tls_rounds = int(env_float("BENCH_TLS_ROUNDS", 1 if args.quick else 3))
        self.tmp = tempfile.mkdtemp(prefix="goloop-bench-")
        self.unavailable = {}
        self.tls_cert = None    # (cert, key) once made

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
        with server:
            try:
                procs.run_bounded(["taskset", "-c", str(CLIENT_CPU), "wrk", "-t1", "-c100", "-d1s",
                                   f"http://127.0.0.1:{port}/"], timeout=30)  # warm-up, unchecked
                results = [wrk_pass(server, self.http_seconds) for _ in range(self.http_windows)]
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
                   cpu_us_per_req=round(mid["server_cpu_us_per_req"], 2))
        return row

    def http_suite(self):
        rows = []
        for loop in self.args.loops:
            row = self.http_loop(loop)
            rows.append(row)
            report.progress(row, kind="aiohttp")
        return rows

    # -- new connections, server side ------------------------------------

    def churn_run(self, loop, conns):
        """One server process, one load generator run in -churn mode."""
        out = {}
        if loop in self.unavailable:
            return {"error": "unavailable: " + self.unavailable[loop]}
        try:
            # Always TCP: a new-connection rate over Unix sockets is another
            # benchmark, and the reset close is TCP's.
            where = {"port": procs.free_port()}
            argv = [CECHO] if loop == "c" else [
                self.python, "-X", "faulthandler", ECHO_SERVER,
                "--loop", loop, "--variant", "protocol"]
            server = procs.Server(argv + ["--port", str(where["port"])],
                                  cpu=SERVER_CPU, cwd=SERVER_CWD, **where)
        except procs.ServerError as e:
            return {"error": f"server did not start: {e}"}
        with server:
            argv = ["taskset", "-c", str(CLIENT_CPU), LOADGEN, "-churn",
                    "-addr", f"127.0.0.1:{server.port}",
                    "-conns", str(conns), "-size", str(CHURN_SIZE),
                    "-warmup", f"{self.churn_warmup}s", "-duration", f"{self.window}s",
                    "-windows", str(self.churn_windows), "-server-pid", str(server.pid)]
            budget = self.churn_warmup + self.window * self.churn_windows + 30
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
                server.echo_probe()
            # Every connection ends in a reset, which the servers must take
            # as a peer going away, silently; anything they print is shown.
            log = [ln for ln in server.stderr_text().splitlines() if ln.strip()]
        if log:
            out["server_log"] = f"{len(log)} lines, first: {log[0][:160]}"
        if server.died is not None:
            out["crash"] = f"server died after the load (exit {server.died}): {server.last_words}"
        return out

    def churn_matrix(self):
        """Connections per second: each loop's echo server taking new ones.

        Rounds are interleaved (every server once per round, the order
        rotating), and each loop's median round is reported: other work on
        the machine then weighs on all loops alike.
        """
        cells = CHURN_CONNS[:1] if self.args.quick else CHURN_CONNS
        servers = ["c"] + list(self.args.loops)
        rows = []
        for conns in cells:
            runs = {lp: [] for lp in servers}
            for rnd in range(self.churn_rounds):
                k = rnd % len(servers)
                for loop in servers[k:] + servers[:k]:
                    out = self.churn_run(loop, conns)
                    runs[loop].append(out)
                    report.progress_churn(loop, conns, rnd, out)
            for loop in servers:
                rows.append(churn_row(loop, conns, runs[loop]))
        return rows

    # -- new connections, client side ------------------------------------

    def connect_suite(self):
        """create_connection + close on each loop, against the C echo.

        The client (the loop under test) is pinned to CPU 0 as the servers
        are elsewhere, the C echo to CPU 1. Client processes are interleaved
        (each loop once per round, the order rotating); each runs three
        timed rounds of each way, and the median of all of a loop's rounds
        is reported.
        """
        loops = [lp for lp in self.args.loops if lp not in self.unavailable]
        rows = [{"loop": lp, "error": "unavailable: " + self.unavailable[lp]}
                for lp in self.args.loops if lp in self.unavailable]
        if not loops:
            return rows
        port = procs.free_port()
        try:
            server = procs.Server([CECHO, "--port", str(port)], cpu=CLIENT_CPU, port=port,
                                  cwd=SERVER_CWD)
        except procs.ServerError as e:
            return rows + [{"loop": lp, "error": f"C echo did not start: {e}"} for lp in loops]
        inner = 1 if self.args.quick else 3
        runs = {lp: [] for lp in loops}
        with server:
            for rnd in range(self.connect_rounds):
                k = rnd % len(loops)
                for loop in loops[k:] + loops[:k]:
                    argv = ["taskset", "-c", str(SERVER_CPU), self.python, "-X", "faulthandler",
                            CONNECT_CLIENT, "--loop", loop, "--port", str(port),
                            "--count", str(self.connect_count), "--rounds", str(inner),
                            "--warmup", str(min(200, self.connect_count))]
                    try:
                        # Not SCHED_FIFO: the client is an event loop with
                        # threads, like a server (procs.realtime).
                        r = procs.run_bounded(argv, timeout=120, cwd=SERVER_CWD, fifo=False)
                        out = json.loads(r.stdout.strip().splitlines()[-1])
                        if r.stderr.strip():
                            out["client_log"] = r.stderr.strip().splitlines()[-1][:200]
                    except subprocess.TimeoutExpired:
                        out = {"error": "client exceeded 120s"}
                    except (ValueError, IndexError):
                        out = {"error": f"client failed: {r.stderr.strip()[-200:]}"}
                    runs[loop].append(out)
                    report.progress_connect(loop, rnd, out)
            if not server.alive():
                for lp in loops:
                    runs[lp].append({"error": f"C echo died: {server.stderr_tail()}"})
        for loop in loops:
            rows.append(connect_row(loop, self.connect_count, runs[loop]))
        return rows


    # -- TLS ----------------------------------------------------------------

    def tls_servers(self):
        """(label, loop, extra environment) of every server in a TLS cell.

        goloop runs once more per --tls-goloop-env, so that its TLS paths
        (say GOLOOP_TLS=python) are measured beside each other in one run.
        """
        out = [(lp, lp, {}) for lp in self.args.loops]
        if "goloop" in self.args.loops:
            for kv in self.args.tls_goloop_env:
                out.append((f"goloop[{kv}]", "goloop", dict([kv.split("=", 1)])))
        return out

    def tls_run(self, label, loop, env, variant, conns, size, churn):
        """One TLS server process, one load generator run against it."""
        if loop in self.unavailable:
            return {"error": "unavailable: " + self.unavailable[loop]}
        cert, key = self.tls_cert
        port = procs.free_port()
        try:
            server = procs.Server(
                [self.python, "-X", "faulthandler", ECHO_SERVER, "--loop", loop,
                 "--variant", variant, "--port", str(port), "--tls", f"{cert}:{key}"],
                cpu=SERVER_CPU, port=port, cwd=SERVER_CWD,
                env=dict(os.environ, **env) if env else None)
        except procs.ServerError as e:
            return {"error": f"server did not start: {e}"}
        with server:
            argv = ["taskset", "-c", str(CLIENT_CPU), LOADGEN, *(["-churn"] if churn else []),
                    *tls_loadgen_flags(self.args.tls_version, cert),
                    "-addr", f"127.0.0.1:{port}", "-conns", str(conns), "-size", str(size),
                    "-warmup", f"{self.churn_warmup}s", "-duration", f"{self.window}s",
                    "-windows", str(self.churn_windows), "-server-pid", str(server.pid)]
            budget = self.churn_warmup + self.window * self.churn_windows + 30
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
                server.echo_probe(ssl_context=tls_client_context(cert))
            log = [ln for ln in server.stderr_text().splitlines() if ln.strip()]
        if log:
            out["server_log"] = f"{len(log)} lines, first: {log[0][:160]}"
        if server.died is not None:
            out["crash"] = f"server died after the load (exit {server.died}): {server.last_words}"
        return out

    def tls_matrix(self):
        """TLS echo and new TLS connections/s, interleaved rounds as for churn."""
        try:
            self.tls_cert = make_cert(self.tmp, self.args.tls_key)
        except (OSError, subprocess.SubprocessError, RuntimeError) as e:
            return [{"kind": "setup", "error": f"no certificate: {e}"}]
        servers = self.tls_servers()
        variants = self.args.tls_variants
        cells = [("echo", v, TLS_CONNS, size)
                 for size in (TLS_SIZES[:1] if self.args.quick else TLS_SIZES) for v in variants]
        cells.append(("churn", "protocol", TLS_CHURN_CONNS, CHURN_SIZE))
        rows = []
        for kind, variant, conns, size in cells:
            runs = {label: [] for label, _, _ in servers}
            for rnd in range(self.tls_rounds):
                k = rnd % len(servers)
                for label, loop, env in servers[k:] + servers[:k]:
                    out = self.tls_run(label, loop, env, variant, conns, size, kind == "churn")
                    runs[label].append(out)
                    report.progress_tls(kind, label, variant, conns, size, rnd, out)
            for label, loop, env in servers:
                rows.append(tls_row(kind, label, loop, env, variant, conns, size, runs[label]))
        return rows

    # -- all --------------------------------------------------------------

    def run(self):
        for loop in self.args.loops:
            why = loop_available(self.python, loop)
            if why:
                self.unavailable[loop] = why
                print(f"note: {loop} unavailable: {why}", file=sys.stderr)
        meta = self.meta()
        only = self.args.only
        echo = self.echo_matrix() if "echo" in only else []
        http = self.http_suite() if "http" in only else []
        churn = self.churn_matrix() if "churn" in only else []
        connect = self.connect_suite() if "connect" in only else []
        tls = self.tls_matrix() if "tls" in only else []
        return {"meta": meta, "echo": echo, "aiohttp": http, "churn": churn, "connect": connect,
                "tls": tls}

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
            "churn_rounds": self.churn_rounds, "churn_size": CHURN_SIZE,
            "churn_warmup_s": self.churn_warmup, "churn_windows": self.churn_windows,
            "connect_rounds": self.connect_rounds, "connect_count": self.connect_count,
            "tls_rounds": self.tls_rounds, "tls_key": self.args.tls_key,
            "tls_version": self.args.tls_version, "tls_goloop_env": self.args.tls_goloop_env,
            "openssl": (out([self.python, "-c", "import ssl; print(ssl.OPENSSL_VERSION)"])
                        if "tls" in self.args.only else None),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "quick": self.args.quick, "sections": self.args.only,
            "nice": os.getpriority(os.PRIO_PROCESS, 0),
            "realtime": procs.realtime,
            "goloop_backend": os.environ.get("GOLOOP_BACKEND", "auto"),
            "unavailable": self.unavailable,
        }


_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


def _duration_us(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def wrk_pass(server, seconds, conns=100):
    """One `wrk --latency` pass of whole seconds against an aiohttp server on
    127.0.0.1 (client on CLIENT_CPU): parse_wrk's numbers and the server's CPU
    per request (server_cpu_us_per_req). RuntimeError when wrk failed or saw
    errors."""
    argv = ["taskset", "-c", str(CLIENT_CPU), "wrk", "-t1", f"-c{conns}", "--latency",
            f"-d{max(1, round(seconds))}s", f"http://127.0.0.1:{server.port}/"]
    cpu0 = procs.cpu_seconds(server.pid)
    r = procs.run_bounded(argv, timeout=seconds + 30)
    cpu1 = procs.cpu_seconds(server.pid)
    res = parse_wrk(r.stdout)
    if r.returncode != 0 or "error" in res:
        raise RuntimeError(res.get("error") or r.stderr.strip()[-200:])
    res["server_cpu_us_per_req"] = (cpu1 - cpu0) / max(res["requests"], 1) * 1e6
    return res


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


def _median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def churn_row(loop, conns, runs):
    """One loop's churn cell: medians over its interleaved rounds."""
    row = {"loop": loop, "conns": conns, "size": CHURN_SIZE}
    good = [r for r in runs if not r.get("error")]
    bad = [r for r in runs if r.get("error")]
    for key in ("crash", "server_log"):
        msgs = [r[key] for r in runs if r.get(key)]
        if msgs:
            row[key] = msgs[0]
    if not good:
        row["error"] = bad[0]["error"] if bad else "no runs"
        return row
    if bad:
        row["failed_rounds"] = [r["error"] for r in bad]
    row.update(
        rps=round(_median(r["rps"] for r in good)),
        # Round by round, None for a failed one, so that the report can pair
        # each loop's round with the other loops' rounds of the same pass.
        rounds_rps=[None if r.get("error") else round(r["rps"]) for r in runs],
        p50_us=round(_median(r["p50_us"] for r in good), 1),
        p99_us=round(_median(r["p99_us"] for r in good), 1),
        cpu_us_per_conn=round(_median(r.get("server_cpu_us_per_req", 0.0) for r in good), 2),
        errors=sum(r.get("errors", 0) for r in good),
        loadgen_cpu=round(_median(r.get("loadgen_cpu_util", 0.0) for r in good), 2),
        other_cpu=round(_median(r.get("other_cpu", 0.0) for r in good), 2))
    last = [r["last_error"] for r in good if r.get("last_error")]
    if last:
        row["last_error"] = last[-1]
    return row


def make_cert(directory, kind):
    """A self-signed certificate for localhost and 127.0.0.1 (Debian's openssl CLI).

    Made once per run, in the run's temporary directory; nothing is kept.
    Returns (cert path, key path).
    """
    if not shutil.which("openssl"):
        raise RuntimeError("the openssl command is missing (apt-get install openssl)")
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    r = procs.run_bounded(
        ["openssl", "req", "-x509", *TLS_KEYS[kind], "-nodes", "-keyout", key, "-out", cert,
         "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        timeout=60, fifo=False)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip()[-200:])
    return cert, key


def tls_loadgen_flags(version, cert):
    """The load generator's TLS flags: the certificate is verified, as a real client does."""
    return ["-tls", "-tls-version", version, "-ca", cert]


def tls_client_context(cert):
    import ssl
    ctx = ssl.create_default_context(cafile=cert)
    return ctx


def tls_row(kind, label, loop, env, variant, conns, size, runs):
    """One server's TLS cell: medians over its interleaved rounds."""
    row = {"kind": kind, "loop": label, "variant": variant, "conns": conns, "size": size}
    if label != loop:
        row["base_loop"], row["env"] = loop, env
    good = [r for r in runs if not r.get("error")]
    bad = [r for r in runs if r.get("error")]
    for key in ("crash", "server_log"):
        msgs = [r[key] for r in runs if r.get(key)]
        if msgs:
            row[key] = msgs[0]
    if not good:
        row["error"] = bad[0]["error"] if bad else "no runs"
        return row
    if bad:
        row["failed_rounds"] = [r["error"] for r in bad]
    cpu_key = "cpu_us_per_conn" if kind == "churn" else "cpu_us_per_req"
    row.update(
        rps=round(_median(r["rps"] for r in good)),
        rounds_rps=[None if r.get("error") else round(r["rps"]) for r in runs],
        p50_us=round(_median(r["p50_us"] for r in good), 1),
        p99_us=round(_median(r["p99_us"] for r in good), 1),
        loadgen_cpu=round(_median(r.get("loadgen_cpu_util", 0.0) for r in good), 2),
        other_cpu=round(_median(r.get("other_cpu", 0.0) for r in good), 2))
    row[cpu_key] = round(_median(r.get("server_cpu_us_per_req", 0.0) for r in good), 2)
    row["rounds_cpu"] = [None if r.get("error") else round(r.get("server_cpu_us_per_req", 0.0), 2)
                         for r in runs]
    last = good[-1]
    row.update(tls_version=last.get("tls_version"), tls_cipher=last.get("tls_cipher"),
               tls_curve=last.get("tls_curve"))
    if kind == "churn":
        row["errors"] = sum(r.get("errors", 0) for r in good)
        row["tls_resumed"] = sum(r.get("tls_resumed", 0) for r in good)
        lasterr = [r["last_error"] for r in good if r.get("last_error")]
        if lasterr:
            row["last_error"] = lasterr[-1]
    else:
        row["mb_per_s"] = round(_median(r["bytes_per_s"] for r in good) / 1e6, 1)
    return row


def connect_row(loop, count, runs):
    """One loop's create_connection cost: medians over all its timed rounds."""
    row = {"loop": loop, "count": count}
    good = [r for r in runs if not r.get("error")]
    if not good:
        row["error"] = runs[0]["error"] if runs else "no runs"
        return row
    for key in ("close_us", "lost_us", "close_cpu_us", "lost_cpu_us"):
        every = [x for r in good for x in r.get(key, [])]
        row[key] = round(_median(every), 1)
        row["rounds_" + key] = every
    logs = [r["client_log"] for r in good if r.get("client_log")]
    if logs:
        row["client_log"] = logs[0]
    return row


def compact_json(results):
    """JSON with one line per measurement: small, and a rerun diffs cell by cell."""
    parts = ['{\n "meta": ' + json.dumps(results["meta"], indent=1).replace("\n", "\n ")]
    for key in ("echo", "aiohttp", "churn", "connect", "tls"):
        rows = ",\n  ".join(json.dumps(r) for r in results.get(key, []))
        parts.append(f' "{key}": [\n  {rows}\n ]' if rows else f' "{key}": []')
    return ",\n".join(parts) + "\n}\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: one short cell per variant")
    p.add_argument("--unix", action="store_true", help="echo over Unix sockets instead of TCP")
    p.add_argument("--loops", default=",".join(LOOPS))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--only", default=",".join(SECTIONS),
                   help="sections to run: echo, http (aiohttp), churn (new connections per "
                        "second, server side), connect (create_connection cost, client side), "
                        "tls (TLS echo and new TLS connections per second)")
    p.add_argument("--skip-echo", action="store_true")
    p.add_argument("--skip-http", action="store_true")
    p.add_argument("--skip-churn", action="store_true")
    p.add_argument("--skip-connect", action="store_true")
    p.add_argument("--skip-tls", action="store_true")
    p.add_argument("--tls-key", default="ecdsa", choices=sorted(TLS_KEYS),
                   help="the TLS cells' certificate: ECDSA P-256 (default) or RSA 2048")
    p.add_argument("--tls-version", default="1.3", choices=["1.2", "1.3"],
                   help="TLS version the load generator asks for (default 1.3)")
    p.add_argument("--tls-variants", default="protocol,streams",
                   help="echo variants of the TLS echo cells (protocol, buffered, streams; "
                        "default protocol,streams)")
    p.add_argument("--tls-goloop-env", action="append", default=[], metavar="K=V",
                   help="run goloop once more in every TLS cell with K=V in its environment "
                        "(e.g. GOLOOP_TLS=python); repeatable")
    p.add_argument("--out", default=os.path.join(HERE, "results", "latest.json"))
    args = p.parse_args(argv)
    args.loops = [x for x in args.loops.split(",") if x]
    args.variants = [x for x in args.variants.split(",") if x]
    args.only = [x for x in args.only.split(",") if x]
    for x in args.only:
        if x not in SECTIONS:
            p.error(f"unknown section {x}")
    args.only = [x for x in args.only if not getattr(args, f"skip_{x}")]
    for x in args.loops:
        if x not in LOOPS:
            p.error(f"unknown loop {x}")
    for x in args.variants:
        if x not in VARIANTS:
            p.error(f"unknown variant {x}")
    args.tls_variants = [x for x in args.tls_variants.split(",") if x]
    for x in args.tls_variants:
        if x not in TLS_VARIANTS:
            p.error(f"no TLS echo variant {x} (TLS variants: {', '.join(TLS_VARIANTS)})")
    for kv in args.tls_goloop_env:
        if "=" not in kv or not kv.split("=", 1)[0]:
            p.error(f"--tls-goloop-env wants K=V, not {kv!r}")
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

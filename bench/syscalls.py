"""Syscalls per request (issue 10): the server process's system calls, all
threads, counted by the kernel's syscall tracepoints through `perf stat`,
while the echo server (asyncio.Protocol, 1 KiB, 10 and 100 connections)
and the aiohttp hello server (wrk -t1 -c100) are under load; and the same
server idle. goloop runs on both backends (GOLOOP_BACKEND=io_uring, epoll),
beside uvloop, asyncio and (echo only) the C epoll echo.

    python bench/syscalls.py [--rounds 3] [--window 2] [--loops ...]
                             [--only echo,http] [--out FILE]

Method. One server process per (round, loop, kind), pinned to CPU 0, the
load (bench/bin/loadgen, wrk) on CPU 1 as in bench/suite.py. First the
server idles for `window` s, counted; then, per cell, a 1 s warm-up run of
the load generator, and a `window`-second run of it with perf counting
around exactly that run. `perf stat -p PID --per-thread` is started with its
events disabled (-D -1) and switched on and off through its control fifo
(perf's own set-up takes about a second, which `-- sleep N` would blur into
the count). Requests = what the load generator reports for its run, an
exact count. Counted: raw_syscalls:sys_enter (every
syscall), one syscalls:sys_enter_X per syscall in SYSCALLS (the
breakdown; the rest is "other"), futex calls split by op (wake / wait),
and context switches. Attaching only these few events keeps perf's own
cost low: with all ~360 syscall tracepoints attached, the per-task event
context switched on every context switch cut goloop's throughput by a
quarter, and so its batching, and so the counts.

Rounds interleave the loops (the order rotates); medians are reported.
Results: bench/results/counts-syscalls.json and a table on stdout.
"""

import argparse
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import procs  # noqa: E402

SERVER_CPU, CLIENT_CPU = 0, 1
LOADGEN = os.path.join(HERE, "bin", "loadgen")
CECHO = os.path.join(HERE, "bin", "cecho")
ECHO_SERVER = os.path.join(HERE, "servers", "echo_server.py")
HTTP_SERVER = os.path.join(HERE, "servers", "http_server.py")
SERVER_CWD = os.path.join(HERE, "servers")
tree_path = procs.tree_path


CONFIGS = {
    **procs.LOOP_CONFIGS,
    "c": ("c", {}),
}
ECHO_CONNS = [10, 100]
HTTP_CONNS = 100
SIZE = 1024
# The breakdown: every syscall these servers make in any number, by name.
SYSCALLS = [
    "io_uring_enter", "epoll_wait", "epoll_pwait", "epoll_ctl", "ppoll",
    "read", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg",
    "accept4", "close", "futex", "nanosleep", "clock_nanosleep", "rt_sigprocmask",
    "sched_yield", "getpid", "tgkill", "madvise", "mmap", "munmap", "getsockname",
    "getpeername", "setsockopt", "getsockopt", "ioctl", "clock_gettime",
]
FUTEX_WAKE = "op == 1 || op == 129"   # FUTEX_WAKE, with or without FUTEX_PRIVATE_FLAG
FUTEX_WAIT = "op == 0 || op == 128"


def perf_events():
    ev = ["-e", "raw_syscalls:sys_enter", "-e", "context-switches"]
    ev += ["-e", "syscalls:sys_enter_futex", "--filter", FUTEX_WAKE]
    ev += ["-e", "syscalls:sys_enter_futex", "--filter", FUTEX_WAIT]
    for s in SYSCALLS:
        ev += ["-e", f"syscalls:sys_enter_{s}"]
    return ev


class Perf:
    """`perf stat` attached to a process, counting only between enable() and disable().

    perf takes about a second to set up its tracepoint events, and with
    `perf stat -p PID -- sleep N` that second is not distinguishable from
    the counted time. So perf starts with its events disabled (-D -1) and
    is switched on and off through its control fifo: the window is the
    time between the two acknowledgements, measured here.
    """

    def __init__(self, pid):
        self.pid = pid
        self.dir = tempfile.mkdtemp(prefix="goloop-perf-")
        ctl, ack = os.path.join(self.dir, "ctl"), os.path.join(self.dir, "ack")
        os.mkfifo(ctl)
        os.mkfifo(ack)
        self.ack = os.open(ack, os.O_RDONLY | os.O_NONBLOCK)
        self.proc = subprocess.Popen(
            ["perf", "stat", "-D", "-1", "--control", f"fifo:{ctl},{ack}", "--per-thread",
             "-x", ",", *perf_events(), "-p", str(pid)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while True:  # perf opens the control fifo once its events are set up
            try:
                self.ctl = os.open(ctl, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError("perf stat did not start: " + self.proc.stderr.read()[-300:])
                time.sleep(0.01)

    def _command(self, word):
        os.write(self.ctl, word.encode() + b"\n")
        got = b""
        deadline = time.monotonic() + 30
        while b"ack\n" not in got:   # perf writes "ack\n" and its C string's NUL
            left = deadline - time.monotonic()
            r, _, _ = select.select([self.ack], [], [], max(left, 0))
            if not r:
                raise RuntimeError(f"perf stat did not acknowledge {word}")
            chunk = os.read(self.ack, 64)
            if not chunk and self.proc.poll() is not None:
                raise RuntimeError("perf stat exited: " + self.proc.stderr.read()[-300:])
            got += chunk
        return time.monotonic()

    def enable(self):
        self.t0 = self._command("enable")

    def disable(self):
        self.t1 = self._command("disable")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for attr in ("ctl", "ack"):
            fd = getattr(self, attr, None)
            if fd is not None:
                os.close(fd)
                setattr(self, attr, None)
        shutil.rmtree(self.dir, ignore_errors=True)

    def result(self):
        """Per-thread counts: {"total": {...}, "main": {...}, "seconds": window}.

        "main" is the thread whose tid is the pid: the Python thread, which
        is goloop's loop thread. The two filtered futex events come first
        among a thread's futex lines (perf prints events in the order given).
        """
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=30)
        finally:
            self.close()
        total, main = {}, {}
        seen_futex = {}
        for line in err.splitlines():
            f = line.split(",")
            if len(f) < 4 or "-" not in f[0]:
                continue
            thread, value, event = f[0], f[1], f[3]
            tid = int(thread.rsplit("-", 1)[1])
            n = 0 if value.startswith("<") else int(float(value))
            name = event.replace("syscalls:sys_enter_", "").replace("raw_syscalls:sys_enter", "all")
            if name == "futex":
                # Three futex events per thread, in order: wake, wait, all.
                k = seen_futex.get(tid, 0)
                seen_futex[tid] = k + 1
                name = ["futex_wake", "futex_wait", "futex"][k]
            total[name] = total.get(name, 0) + n
            if tid == self.pid:
                main[name] = main.get(name, 0) + n
        if "all" not in total:
            raise RuntimeError("perf stat printed no counts: " + err.strip()[-300:])
        return {"total": total, "main": main, "seconds": self.t1 - self.t0}


def thread_cpu(pid):
    """utime+stime of each thread of pid, in seconds: {tid: seconds}."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue   # the thread ended meanwhile
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def other_threads_share(pid, before, after):
    """Share of the process's CPU time in the window spent by threads other than the main one."""
    total = sum(after.values()) - sum(v for t, v in before.items() if t in after)
    main = after.get(pid, 0) - before.get(pid, 0)
    return (total - main) / total if total > 0 else 0.0


class Run:
    def __init__(self, python, window):
        self.python, self.window = python, window

    def server(self, name, kind):
        loop, extra = CONFIGS[name]
        env = dict(os.environ, **extra)
        tree_path(env)
        port = procs.free_port()
        if loop == "c":
            argv = [CECHO, "--port", str(port)]
        elif kind == "echo":
            argv = [self.python, "-X", "faulthandler", ECHO_SERVER, "--loop", loop,
                    "--variant", "protocol", "--port", str(port)]
        else:
            argv = [self.python, "-X", "faulthandler", HTTP_SERVER, "--loop", loop,
                    "--port", str(port)]
        return procs.Server(argv, cpu=SERVER_CPU, port=port, env=env, cwd=SERVER_CWD)

    def idle(self, server):
        # The readiness probe's connection has just closed: let it settle.
        perf = Perf(server.pid)
        try:
            time.sleep(0.5)
            perf.enable()
            time.sleep(self.window)
            perf.disable()
            c = perf.result()
        finally:
            perf.close()
        return {"per_s": {k: round(v / c["seconds"], 1) for k, v in c["total"].items()},
                "main_per_s": {k: round(v / c["seconds"], 1) for k, v in c["main"].items()}}

    def loaded(self, server, argv_for, parse):
        """A warm-up run of the load, then a run of `window` s inside perf's window.

        The counted requests are the ones the load generator reports for
        its run (loadgen: those that began and ended in its window; wrk:
        all), exact rather than a rate times a time. perf's window also
        holds the run's connects and closes (10 or 100 accepts and
        closes: at most 0.002 syscalls per request here).
        """
        perf = Perf(server.pid)   # sets itself up during the warm-up
        try:
            warm = procs.run_bounded(argv_for(1), timeout=60)
            parse(warm.stdout, warm.stderr)
            cpu0, th0 = procs.cpu_seconds(server.pid), thread_cpu(server.pid)
            perf.enable()
            r = procs.run_bounded(argv_for(self.window), timeout=self.window + 60)
            perf.disable()
            cpu1, th1 = procs.cpu_seconds(server.pid), thread_cpu(server.pid)
            c = perf.result()
        finally:
            perf.close()
        reqs, rps = parse(r.stdout, r.stderr)
        row = {"rps": round(rps), "perf_seconds": round(c["seconds"], 3), "requests": reqs,
               "per_req": {k: round(v / reqs, 4) for k, v in c["total"].items()},
               "main_per_req": {k: round(v / reqs, 4) for k, v in c["main"].items()},
               "per_s": {k: round(v / c["seconds"], 1) for k, v in c["total"].items()},
               "cpu_us_per_req": round((cpu1 - cpu0) / reqs * 1e6, 2),
               # CPU time of threads other than Python's (goloop: the Go
               # runtime's, besides the loop thread's own Go code), at the
               # 10 ms tick resolution of /proc: a rough share.
               "other_threads_cpu_share": round(other_threads_share(server.pid, th0, th1), 4),
               "server_cpu_util": round((cpu1 - cpu0) / c["seconds"], 3)}
        return row

    def echo(self, server, conns):
        def argv(seconds):
            # The connections are made before the window opens; 10 ms of
            # "warm-up" only lets the first requests start inside it.
            return ["taskset", "-c", str(CLIENT_CPU), LOADGEN, "-addr", f"127.0.0.1:{server.port}",
                    "-conns", str(conns), "-size", str(SIZE), "-warmup", "10ms",
                    "-duration", f"{seconds:.2f}s"]

        def parse(out, err):
            try:
                d = json.loads(out.strip().splitlines()[-1])
            except (ValueError, IndexError):
                raise RuntimeError("loadgen: " + err.strip()[-200:])
            if d.get("error") or d.get("errors"):
                raise RuntimeError(f"loadgen: {d.get('error') or d.get('last_error')}")
            return d["requests"], d["rps"]
        return self.loaded(server, argv, parse)

    def http(self, server):
        def argv(seconds):
            return ["taskset", "-c", str(CLIENT_CPU), "wrk", "-t1", f"-c{HTTP_CONNS}",
                    f"-d{max(1, round(seconds))}s", f"http://127.0.0.1:{server.port}/"]

        def parse(out, err):
            m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
            if not m:
                raise RuntimeError("wrk: " + (out + err).strip()[-200:])
            if re.search(r"Non-2xx|Socket errors", out):
                raise RuntimeError("wrk: " + out.strip()[-200:])
            n, t = int(m.group(1)), float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
            return n, n / t
        return self.loaded(server, argv, parse)


def run_round(run, names, kinds, rnd):
    rows = []
    k = rnd % len(names)
    for name in names[k:] + names[:k]:
        for kind in kinds:
            if kind == "http" and name == "c":
                continue
            row = {"config": name, "kind": kind, "round": rnd}
            try:
                with run.server(name, kind) as server:
                    row["idle"] = run.idle(server)
                    if kind == "echo":
                        for c in ECHO_CONNS:
                            row[f"c{c}"] = run.echo(server, c)
                    else:
                        row[f"c{HTTP_CONNS}"] = run.http(server)
                    if not server.alive():
                        row["error"] = "server died: " + server.stderr_tail()
            except (procs.ServerError, RuntimeError, subprocess.TimeoutExpired, ValueError,
                    IndexError) as e:
                row["error"] = str(e)[:300]
            rows.append(row)
            brief = ", ".join(f"{c}: {row[c]['per_req'].get('all', 0):.3f}/req"
                              for c in row if c.startswith("c") and c[1:].isdigit())
            print(f"round {rnd} {name} {kind}: {row.get('error') or brief}", file=sys.stderr)
    return rows


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(rows):
    cells = {}
    for r in rows:
        if "error" in r:
            continue
        for key, v in r.items():
            if key.startswith("c") and key[1:].isdigit():
                cells.setdefault((r["kind"], int(key[1:]), r["config"]), []).append(v)
        cells.setdefault((r["kind"], 0, r["config"]), []).append(r["idle"])
    out = []
    for (kind, conns, name), vs in sorted(cells.items()):
        if conns == 0:
            names = set().union(*(v["per_s"] for v in vs))
            out.append({"kind": kind, "conns": 0, "config": name, "rounds": len(vs),
                        "per_s": {k: median([v["per_s"].get(k, 0) for v in vs]) for k in sorted(names)}})
            continue
        names = set().union(*(v["per_req"] for v in vs))
        out.append({
            "kind": kind, "conns": conns, "config": name, "rounds": len(vs),
            "rps": median([v["rps"] for v in vs]),
            "cpu_us_per_req": median([v["cpu_us_per_req"] for v in vs]),
            "other_threads_cpu_share": median([v["other_threads_cpu_share"] for v in vs]),
            "server_cpu_util": median([v["server_cpu_util"] for v in vs]),
            "per_req": {k: median([v["per_req"].get(k, 0) for v in vs]) for k in sorted(names)},
            "main_per_req": {k: median([v["main_per_req"].get(k, 0) for v in vs]) for k in sorted(names)},
            "per_s": {k: median([v["per_s"].get(k, 0) for v in vs]) for k in sorted(names)},
        })
    return out


COLUMNS = [("all", "all"), ("io_uring_enter", "io_uring_enter"),
           ("epoll", ("epoll_wait", "epoll_pwait", "ppoll")),
           ("recv", ("read", "recvfrom", "recvmsg")),
           ("send", ("write", "writev", "sendto", "sendmsg")),
           ("rt_sigprocmask", "rt_sigprocmask"), ("getpid", "getpid"), ("futex", "futex"),
           ("nanosleep", ("nanosleep", "clock_nanosleep"))]


def col(d, names):
    if isinstance(names, str):
        names = (names,)
    return sum(d.get(n, 0) for n in names)


def print_tables(summary):
    print("\nSyscalls per request, server process, all threads (medians):\n")
    print("| cell | loop | req/s | " + " | ".join(c for c, _ in COLUMNS) +
          " | other | on loop thread | CPU µs/req | CPU off the main thread |")
    print("|---|---|--:|" + "--:|" * (len(COLUMNS) + 4))
    for s in summary:
        if s["conns"] == 0:
            continue
        pr = s["per_req"]
        other = pr.get("all", 0) - sum(col(pr, n) for c, n in COLUMNS if c != "all")
        cell = f"{s['kind']} {s['conns']}c" + (" 1 KiB" if s["kind"] == "echo" else "")
        print(f"| {cell} | {s['config']} | {s['rps']:,.0f} | " +
              " | ".join(f"{col(pr, n):.3f}" for _, n in COLUMNS) +
              f" | {other:.3f} | {s['main_per_req'].get('all', 0):.3f} | {s['cpu_us_per_req']} "
              f"| {100 * s['other_threads_cpu_share']:.1f}% |")
    print("\nIdle server and the Go runtime's share under load (per second, medians):\n")
    print("| server | state | syscalls/s | futex wake/s | futex wait/s | nanosleep/s "
          "| context switches/s |")
    print("|---|---|--:|--:|--:|--:|--:|")
    for s in summary:
        state = "idle" if s["conns"] == 0 else f"{s['conns']}c"
        ps = s["per_s"]
        print(f"| {s['kind']} {s['config']} | {state} | {ps.get('all', 0):,.0f} "
              f"| {ps.get('futex_wake', 0):,.0f} | {ps.get('futex_wait', 0):,.0f} "
              f"| {col(ps, ('nanosleep', 'clock_nanosleep')):,.0f} "
              f"| {ps.get('context-switches', 0):,.0f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--window", type=float, default=2.0, help="seconds perf counts, per cell")
    p.add_argument("--loops", default=",".join(CONFIGS))
    p.add_argument("--only", default="echo,http")
    p.add_argument("--out", default=os.path.join(HERE, "results", "counts-syscalls.json"))
    args = p.parse_args()
    names = [n for n in args.loops.split(",") if n]
    for n in names:
        if n not in CONFIGS:
            p.error(f"unknown loop {n!r}; one of {', '.join(CONFIGS)}")
    kinds = [k for k in args.only.split(",") if k]
    if os.geteuid() != 0:
        with open("/proc/sys/kernel/perf_event_paranoid") as f:
            if int(f.read()) > 1:
                sys.exit("perf needs root or kernel.perf_event_paranoid <= 1 to count tracepoints")
    for tool in ("perf", "wrk" if "http" in kinds else "perf", "taskset"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            sys.exit(f"{tool} is missing")
    env = dict(os.environ, PATH="/usr/local/go/bin:" + os.environ["PATH"])
    subprocess.run(["go", "build", "-o", LOADGEN, "./bench/loadgen"], cwd=ROOT, check=True, env=env)
    subprocess.run(["gcc", "-O2", "-Wall", "-o", CECHO, "bench/cecho/echo.c"], cwd=ROOT, check=True)
    run = Run(os.environ.get("PYTHON") or sys.executable, args.window)
    rows = []
    try:
        for rnd in range(args.rounds):
            rows += run_round(run, names, kinds, rnd)
    finally:
        procs.stop_all()
    summary = summarize(rows)
    print_tables(summary)
    # The machine is shared: its load at the end says how quiet the run was.
    doc = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "loadavg_at_end": os.getloadavg(),
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip(),
           "kernel": os.uname().release, "rounds": args.rounds, "window_s": args.window,
           "summary": summary, "runs": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

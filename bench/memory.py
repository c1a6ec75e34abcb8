"""Memory per connection (issue 10): RSS and PSS of each loop's echo server
idle, holding 1,000 and 10,000 idle connections, and after all 10,000 echo
one 1 KiB message at once (checked; errors must be 0). Also the fixed cost
of a goloop loop (the Go runtime) against an asyncio and a uvloop loop.

    python bench/memory.py [--rounds 3] [--loops goloop,uvloop,asyncio]
                           [--conns 1000,10000] [--tracemalloc] [--out FILE]

The server is bench/servers/mem_server.py (the asyncio.Protocol echo of
echo_server.py, which reports its own VmRSS, PSS and, for goloop, the Go
runtime's runtime.stats when asked on stdin), pinned to CPU 0; the client
is bench/holdconns (Go), pinned to CPU 1. goloop runs once per backend
(GOLOOP_BACKEND=io_uring, epoll). Rounds interleave the loops; medians are
reported. --tracemalloc adds one more pass per loop with tracemalloc on in
the server, for where the Python heap's share goes (not in the medians).
RSS is read after gc.collect() in the server and without forcing a Go
collection; goloop's row also gives RSS after runtime.stats "gc" (Go
collects and returns freed memory to the OS) at the end.

Results: JSON to bench/results/counts-memory.json, a table to stdout.
"""

import argparse
import json
import os
import resource
import select
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import procs  # noqa: E402

SERVER_CPU, CLIENT_CPU = 0, 1
SERVER = os.path.join(HERE, "servers", "mem_server.py")
SERVER_CWD = os.path.join(HERE, "servers")
HOLDCONNS = os.path.join(HERE, "bin", "holdconns")
tree_path = procs.tree_path


CONFIGS = procs.LOOP_CONFIGS


class LineProc:
    """A child process spoken to in JSON lines over its stdin/stdout."""

    def __init__(self, argv, cpu, env=None, cwd=None):
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), *argv], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
            preexec_fn=procs._server_setup)
        self.buf = b""

    def send(self, line):
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def recv(self, timeout=60.0):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from {self.proc.args[3:5]}")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    err = self.proc.stderr.read().decode(errors="replace")[-400:]
                    raise EOFError(f"{self.proc.args[3:5]} exited: {err}")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def ask(self, line, timeout=60.0):
        self.send(line)
        return self.recv(timeout)

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def server_stats(server, want_held, gc=False):
    """Stats once the server holds want_held connections (accepts may lag the client)."""
    deadline = time.monotonic() + 30
    while True:
        st = server.ask("stats gc" if gc else "stats")
        if st.get("held") == want_held or time.monotonic() > deadline:
            return st
        time.sleep(0.1)


def run_one(name, python, counts, tracemalloc=False):
    loop, extra = CONFIGS[name]
    env = dict(os.environ, **extra)
    tree_path(env)
    port = procs.free_port()
    argv = [python, SERVER, "--loop", loop, "--port", str(port)]
    if tracemalloc:
        argv.append("--tracemalloc")
    server = LineProc(argv, SERVER_CPU, env=env, cwd=SERVER_CWD)
    client = None
    row = {"config": name, "loop": loop}
    try:
        server.recv(30)  # {"ready": true}
        row["idle"] = server_stats(server, 0)
        client = LineProc([HOLDCONNS, "-addr", f"127.0.0.1:{port}", "-size", "1024"], CLIENT_CPU)
        for n in counts:
            held = client.ask(f"hold {n}", timeout=120)
            if held.get("error"):
                row["error"] = f"holding {n}: {held['error']}"
            row[f"held_{n}"] = server_stats(server, n)
        row["echo"] = client.ask("echo", timeout=120)
        row["after_echo"] = server_stats(server, counts[-1], gc=(loop == "goloop"))
    except (TimeoutError, EOFError, ValueError) as e:
        row["error"] = str(e)[:400]
    finally:
        if client is not None:
            if client.proc.poll() is None:
                try:
                    client.send("quit")
                except OSError:
                    pass
            client.stop()
        server.stop()
    if "error" not in row:
        base = row["idle"]
        for n in counts:
            st = row[f"held_{n}"]
            row[f"rss_per_conn_{n}_b"] = round((st["vmrss_kb"] - base["vmrss_kb"]) * 1024 / n)
            row[f"pss_per_conn_{n}_b"] = round((st["pss_kb"] - base["pss_kb"]) * 1024 / n)
        n = counts[-1]
        row[f"rss_per_conn_after_echo_b"] = round(
            (row["after_echo"]["vmrss_kb"] - base["vmrss_kb"]) * 1024 / n)
    return row


FIXED_SNIPPET = r"""
import asyncio, gc, json, sys
def rss():
    gc.collect()
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
def threads():
    import os
    return len(os.listdir("/proc/self/task"))
out = {"python_kb": rss()}
a = asyncio.new_event_loop(); a.run_until_complete(asyncio.sleep(0))
out["asyncio_loop_kb"] = rss()
which = sys.argv[1]
if which == "goloop":
    import goloop
    out["import_kb"] = rss()
    g = goloop.new_event_loop(); g.run_until_complete(asyncio.sleep(0))
    out["loop_kb"] = rss()
    out["go"] = json.loads(g.run_until_complete(g._go_call("runtime.stats", b"")))
    out["go_gc"] = json.loads(g.run_until_complete(g._go_call("runtime.stats", b"gc")))
    out["loop_after_go_gc_kb"] = rss()
    out["threads"] = threads()
    g.close()
elif which == "uvloop":
    import uvloop
    out["import_kb"] = rss()
    u = uvloop.new_event_loop(); u.run_until_complete(asyncio.sleep(0))
    out["loop_kb"] = rss()
    out["threads"] = threads()
    u.close()
a.close()
print(json.dumps(out))
"""


def fixed_overhead(python, which, env):
    """RSS of an interpreter with an asyncio loop, then with `which`'s loop added."""
    r = subprocess.run([python, "-c", FIXED_SNIPPET, which], capture_output=True, text=True,
                       timeout=60, cwd=SERVER_CWD, env=env)
    if r.returncode != 0:
        return {"error": r.stderr.strip()[-300:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(rows, counts):
    out = {}
    for name in CONFIGS:
        mine = [r for r in rows if r["config"] == name and "error" not in r]
        if not mine:
            continue
        s = {"rounds": len(mine),
             "idle_rss_kb": median([r["idle"]["vmrss_kb"] for r in mine]),
             "idle_pss_kb": median([r["idle"]["pss_kb"] for r in mine]),
             "echo_errors": sum(r["echo"]["errors"] for r in mine),
             "echoed": median([r["echo"]["echoed"] for r in mine]),
             "echo_seconds": median([r["echo"]["seconds"] for r in mine]),
             "after_echo_rss_kb": median([r["after_echo"]["vmrss_kb"] for r in mine]),
             "rss_per_conn_after_echo_b": median([r["rss_per_conn_after_echo_b"] for r in mine])}
        for n in counts:
            s[f"rss_kb_{n}"] = median([r[f"held_{n}"]["vmrss_kb"] for r in mine])
            s[f"rss_per_conn_{n}_b"] = median([r[f"rss_per_conn_{n}_b"] for r in mine])
            s[f"pss_per_conn_{n}_b"] = median([r[f"pss_per_conn_{n}_b"] for r in mine])
        if mine[0]["loop"] == "goloop":
            s["go_sys_idle_kb"] = median([r["idle"]["go"]["sys"] // 1024 for r in mine])
            s[f"go_sys_{counts[-1]}_kb"] = median(
                [r[f"held_{counts[-1]}"]["go"]["sys"] // 1024 for r in mine])
            s[f"go_heap_{counts[-1]}_kb"] = median(
                [r[f"held_{counts[-1]}"]["go"]["heap_alloc"] // 1024 for r in mine])
            s["after_echo_go_sys_kb"] = median([r["after_echo"]["go"]["sys"] // 1024 for r in mine])
            s["after_echo_go_heap_kb"] = median(
                [r["after_echo"]["go"]["heap_alloc"] // 1024 for r in mine])
            s["after_echo_and_go_gc_rss_kb"] = median(
                [r["after_echo"]["after_go_gc"]["vmrss_kb"] for r in mine])
        out[name] = s
    return out


def print_table(summary, counts):
    n1, n2 = counts[0], counts[-1]
    print(f"\n| loop | idle RSS MiB | RSS @{n1:,} MiB | RSS @{n2:,} MiB | RSS/conn @{n1:,} B "
          f"| RSS/conn @{n2:,} B | PSS/conn @{n2:,} B | after echo RSS MiB "
          f"| echo errors / echoed |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for name, s in summary.items():
        print(f"| {name} | {s['idle_rss_kb'] / 1024:.1f} | {s[f'rss_kb_{n1}'] / 1024:.1f} "
              f"| {s[f'rss_kb_{n2}'] / 1024:.1f} | {s[f'rss_per_conn_{n1}_b']:,} "
              f"| {s[f'rss_per_conn_{n2}_b']:,} | {s[f'pss_per_conn_{n2}_b']:,} "
              f"| {s['after_echo_rss_kb'] / 1024:.1f} | {s['echo_errors']} / {s['echoed']:,} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--loops", default=",".join(CONFIGS))
    p.add_argument("--conns", default="1000,10000")
    p.add_argument("--tracemalloc", action="store_true",
                   help="one more pass per loop with tracemalloc on in the server")
    p.add_argument("--out", default=os.path.join(HERE, "results", "counts-memory.json"))
    args = p.parse_args()
    python = os.environ.get("PYTHON") or sys.executable
    counts = [int(x) for x in args.conns.split(",")]
    names = [n for n in args.loops.split(",") if n]
    for n in names:
        if n not in CONFIGS:
            p.error(f"unknown loop {n!r}; one of {', '.join(CONFIGS)}")

    # Both the server and the client hold one fd per connection: the soft
    # limit goes up to the hard one (raising the hard one needs
    # CAP_SYS_RESOURCE), inherited by both.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < counts[-1] + 100:
        sys.exit(f"RLIMIT_NOFILE hard limit {hard} is below {counts[-1] + 100}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if not os.path.exists(HOLDCONNS):
        subprocess.run(["go", "build", "-o", HOLDCONNS, "./bench/holdconns"], cwd=ROOT,
                       check=True, env=dict(os.environ, PATH="/usr/local/go/bin:" + os.environ["PATH"]))

    rows = []
    for rnd in range(args.rounds):
        k = rnd % len(names)
        for name in names[k:] + names[:k]:
            row = run_one(name, python, counts)
            row["round"] = rnd
            rows.append(row)
            if "error" in row:
                print(f"round {rnd} {name}: ERROR {row['error']}", file=sys.stderr)
            else:
                print(f"round {rnd} {name}: idle {row['idle']['vmrss_kb']} kB, "
                      f"{counts[-1]} held {row[f'held_{counts[-1]}']['vmrss_kb']} kB, "
                      f"{row[f'rss_per_conn_{counts[-1]}_b']} B/conn, "
                      f"echo errors {row['echo']['errors']}", file=sys.stderr)
    traced = []
    if args.tracemalloc:
        for name in names:
            traced.append(run_one(name, python, counts, tracemalloc=True))
    env = tree_path(dict(os.environ))
    fixed = {w: fixed_overhead(python, w, env) for w in ("goloop", "uvloop")}

    summary = summarize(rows, counts)
    print_table(summary, counts)
    print("\nfixed cost (one interpreter, asyncio loop first, then the other loop):")
    for w, f in fixed.items():
        if "error" in f:
            print(f"  {w}: {f['error']}")
            continue
        print(f"  {w}: asyncio loop {f['asyncio_loop_kb'] / 1024:.1f} MiB, +import "
              f"{(f['import_kb'] - f['asyncio_loop_kb']) / 1024:.1f} MiB, +loop "
              f"{(f['loop_kb'] - f['import_kb']) / 1024:.1f} MiB, threads {f['threads']}"
              + (f", Go sys {f['go']['sys'] / 2**20:.1f} MiB heap "
                 f"{f['go']['heap_alloc'] / 1024:.0f} KiB" if w == "goloop" else ""))
    # The machine is shared: its load at the end says how quiet the run was.
    doc = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "loadavg_at_end": os.getloadavg(),
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip(),
           "python": python, "rounds": args.rounds, "counts": counts,
           "summary": summary, "fixed": fixed, "runs": rows, "tracemalloc": traced}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

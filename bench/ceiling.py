"""How far ahead of a reference loop goloop could get, cell by cell: where
each server's CPU goes (perf, by shared object and kernel symbol), and the
ratio goloop would reach if it did none of the work a loop can avoid.

    python bench/ceiling.py [--loops uvloop,goloop,asyncio] [--seconds 3] [--rounds 1]
                            [--json FILE] [--plot PNG]
                            [--cells echo:protocol:10:1024,tls:protocol:10:102400,http,...]
    python bench/ceiling.py --from-json FILE [--plot PNG]

A cell is echo:VARIANT:CONNS:SIZE, tls:VARIANT:CONNS:SIZE, churn:CONNS (new
connections, 64 bytes each), tlschurn:CONNS or http (aiohttp hello, wrk -c100).
For each cell and loop: one server pinned to CPU 0, the load (bench/bin/loadgen,
or wrk) on CPU 1, and `perf record -p` on the server for --seconds while the
load runs. Every sample of the server's process goes to one of:

  kernel  the kernel's work for the sockets: TCP, copies, wake-ups, memory
  entry   system call entry and exit, epoll's and io_uring's own bookkeeping:
          what a loop's way of asking the kernel costs, and could save
  crypto  libcrypto, libssl: the same AES-GCM and handshakes whoever calls them
  app     the interpreter and the application's extensions (python3.11,
          aiohttp's parsers, multidict, yarl, asyncio's C futures and tasks, _ssl)
  loop    the loop's own code (uvloop: loop.cpython*, libuv; goloop:
          libgoloop.so, _core.cpython*)
  libc    glibc (copies and allocation, mostly the loop's) and the rest

Two ceilings of goloop against each other loop R, from R's profile: R's CPU
per request over the part of it that goloop could not leave out,

  all-user  kernel + crypto: goloop with no user-space cost at all and no
            system call overhead, doing the sockets' and OpenSSL's work;
  with-app  kernel + crypto + app: the same, but the interpreter still runs
            the application. A low estimate: R's app share also holds the
            work R's own code makes the interpreter do (uvloop's Cython goes
            through the C API for its objects and calls), which goloop may
            not need (its TLS does not: it beats this ceiling at TLS 1 KiB).

A target above the all-user ceiling cannot be met by any change to goloop:
a loop that hands the bytes to Python copies them in and out and runs TCP on
them as every other does (goloop's kernel time per request measured 0.8-1.4
times uvloop's, median 1.1: docs/benchmarks.md). Run from the repository root, as bench/ab.py.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import procs  # noqa: E402
import suite  # noqa: E402

CATEGORIES = ["kernel", "entry", "crypto", "app", "loop", "libc"]
LOOP_DSOS = re.compile(r"^(loop\.cpython|libuv|libgoloop|_core\.cpython)")
CRYPTO_DSOS = re.compile(r"^(libcrypto|libssl)")
APP_DSOS = re.compile(r"^(python3|_|libpython|multidict|yarl|frozenlist|aiohttp)")
# Kernel symbols a loop's way of asking pays for, not the sockets' work.
ENTRY_SYMS = re.compile(
    r"^(entry_SYSCALL|do_syscall_64|syscall_exit|exit_to_user_mode|syscall_return|"
    r"__x64_sys_|x64_sys_call|ep_|do_epoll|__ep_|io_uring|__io_uring|io_cqring|io_submit|"
    r"io_issue|__io_issue|io_handle_tw|io_req_|__io_req|io_poll|__io_poll|io_arm|io_get_sqe|"
    r"__io_submit|io_fill_cqe|__io_fill|io_buffer_|io_kbuf|__io_put_kbuf|io_put_kbuf|"
    r"io_post_aux|io_cq|fdget|__fdget|fput|__fget|fget)")


# The issues' targets, goloop / uvloop (issue 10: echo, new connections,
# aiohttp; issue 9: TLS), by cell kind and size.
def target(cell):
    kind, *rest = cell.split(":")
    if kind == "echo":
        return 1.25 if int(rest[2]) >= 100 * 1024 else 1.10
    return {"churn": 1.3, "http": 1.25, "tls": 1.3, "tlschurn": 1.2}.get(kind)


COLORS = {"kernel": "#4c72b0", "entry": "#8da0cb", "crypto": "#937860", "app": "#55a868",
          "loop": "#dd8452", "libc": "#c44e52"}


def plot(results, ref, path):
    """Where each server's CPU per request goes, cell by cell, as a share of
    ref's: the target is a line goloop's whole bar has to end left of, and
    no loop can push its kernel and crypto part (ref's) any further left."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in results if ref in r and "goloop" in r]
    fig, ax = plt.subplots(figsize=(10, 0.9 * len(rows) + 1.6))
    labels, y = [], 0
    for r in reversed(rows):
        base = r[ref]["cpu_us"]
        for loop in ("goloop", ref):
            left = 0.0
            total = sum(r[loop][k] for k in CATEGORIES) or 1.0
            for k in CATEGORIES:
                w = r[loop][k] / total * r[loop]["cpu_us"] / base
                ax.barh(y, w, left=left, color=COLORS[k], height=0.8,
                        label=k if y == 0 else None)
                left += w
            labels.append(f"{r['cell']}  {loop}")
            y += 1
        t = target(r["cell"])
        if t:
            ax.plot([1 / t, 1 / t], [y - 2.4, y - 0.6], color="black", linewidth=2)
        y += 0.6
    ticks, pos = [], 0
    for r in reversed(rows):
        ticks += [pos, pos + 1]
        pos += 2.6
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=8)
    ax.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel(f"server CPU per request, as a share of {ref}'s "
                  f"(black line: where goloop's bar must end for the issue's target)")
    ax.legend(ncol=6, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.06))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def ceilings(row, ref):
    """goloop's ratio to ref by CPU per request now, and its two ceilings,
    from ref's own profile: shares of one process's samples do not move
    with the machine's drift the way CPU per request does from one run to
    the next, so the ceilings come out the same run after run."""
    r = row[ref]
    floor_k = r["kernel"] + r["crypto"]
    floor_a = floor_k + r["app"]
    return {"now": round(r["cpu_us"] / row["goloop"]["cpu_us"], 2),
            "all_user": round(1 / floor_k, 2) if floor_k else None,
            "with_app": round(1 / floor_a, 2) if floor_a else None,
            "target": target(row["cell"])}


def describe(v):
    return (f"by CPU per request now {v['now']:.2f}; ceiling all-user {v['all_user']:.2f}, "
            f"with-app {v['with_app']:.2f}; target {v['target']}")


def classify(dso, sym):
    if dso.startswith("[kernel"):
        return "entry" if ENTRY_SYMS.match(sym) else "kernel"
    if CRYPTO_DSOS.match(dso):
        return "crypto"
    if LOOP_DSOS.match(dso):
        return "loop"
    if APP_DSOS.match(dso):
        return "app"
    return "libc"


def shares(perf_data):
    """{category: share of the samples} from a perf.data file."""
    r = subprocess.run(["perf", "report", "-i", perf_data, "--no-children", "--sort", "dso,sym",
                        "--stdio", "-q", "--percent-limit", "0"],
                       capture_output=True, text=True, timeout=300)
    out = dict.fromkeys(CATEGORIES, 0.0)
    for line in r.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[([.k])\]\s+(\S+)", line)
        if m:
            out[classify(m.group(2), m.group(4))] += float(m.group(1)) / 100
    total = sum(out.values())
    return {k: v / total for k, v in out.items()} if total else out


def profiled(server, seconds, tmp, tag):
    data = os.path.join(tmp, f"perf-{tag}.data")
    subprocess.run(["perf", "record", "-F", "999", "-p", str(server.pid), "-o", data, "--",
                    "sleep", str(seconds)], capture_output=True, timeout=seconds + 60)
    return shares(data)


def run_cell(cell, loop, args, tmp):
    """(cpu µs per request, shares) for one loop's server under one cell's load."""
    kind, *rest = cell.split(":")
    tls = kind in ("tls", "tlschurn")
    port = procs.free_port()
    if kind == "http":
        argv = [args.python, suite.HTTP_SERVER, "--loop", loop, "--port", str(port)]
    else:
        variant = rest[0] if kind in ("echo", "tls") else "protocol"
        argv = [args.python, suite.ECHO_SERVER, "--loop", loop, "--variant", variant,
                "--port", str(port)]
        if tls:
            argv += ["--tls", ":".join(args.cert)]
    seconds = args.seconds
    env = procs.tree_path(dict(os.environ))
    with procs.Server(argv, cpu=suite.SERVER_CPU, port=port, cwd=suite.SERVER_CWD, env=env) as server:
        if kind == "http":
            load = ["taskset", "-c", str(suite.CLIENT_CPU), "wrk", "-t1", "-c100",
                    f"-d{int(seconds) + 2}s", f"http://127.0.0.1:{port}/"]
        else:
            conns, size = (rest[1], rest[2]) if kind in ("echo", "tls") else (rest[0], "64")
            load = ["taskset", "-c", str(suite.CLIENT_CPU), suite.LOADGEN,
                    *(["-churn"] if kind.endswith("churn") else []),
                    *(suite.tls_loadgen_flags("1.3", args.cert[0]) if tls else []),
                    "-addr", f"127.0.0.1:{port}", "-conns", conns, "-size", size,
                    "-warmup", "1s", "-duration", f"{seconds + 1}s", "-windows", "1",
                    "-server-pid", str(server.pid)]
        cpu0 = procs.cpu_seconds(server.pid)
        gen = subprocess.Popen(load, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # perf starts once the warm-up (1 s) is over and stops before the load does.
            subprocess.run(["sleep", "1.2"])
            got = profiled(server, seconds, tmp, f"{cell}-{loop}".replace(":", "_"))
            out, _ = gen.communicate(timeout=seconds + 60)
        finally:
            if gen.poll() is None:
                gen.kill()
        cpu1 = procs.cpu_seconds(server.pid)
    if kind == "http":
        res = suite.parse_wrk(out)
        if "error" in res:
            raise RuntimeError(f"{cell} {loop}: {res['error']}")
        cpu_us = (cpu1 - cpu0) / max(res["requests"], 1) * 1e6
    else:
        res = json.loads(out.strip().splitlines()[-1])
        if res.get("error"):
            raise RuntimeError(f"{cell} {loop}: {res['error']}")
        cpu_us = res["server_cpu_us_per_req"]
    return cpu_us, got


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loops", default="uvloop,goloop,asyncio",
                   help="the first is the reference of the plot")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=1, help="rounds per cell; medians are reported")
    p.add_argument("--cells", default="echo:protocol:10:1024,echo:protocol:10:102400,"
                   "echo:buffered:10:102400,churn:10,http,tls:protocol:10:1024,"
                   "tls:protocol:10:102400,tlschurn:10")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--plot", help="draw the shares of the first loop's CPU here (PNG)")
    p.add_argument("--from-json", help="do not measure: plot (--plot) a --json file")
    args = p.parse_args(argv)
    args.python = os.environ.get("PYTHON") or sys.executable
    loops = args.loops.split(",")
    if args.from_json:
        with open(args.from_json) as f:
            results = json.load(f)
        for row in results:
            for ref in loops:
                if ref != "goloop" and "goloop" in row:
                    row[f"vs_{ref}"] = ceilings(row, ref)
                    print(f"{row['cell']:26s} goloop/{ref}: " + describe(row[f"vs_{ref}"]))
        if args.plot:
            plot(results, loops[0], args.plot)
        return
    if not shutil.which("perf"):
        sys.exit("perf is missing (Debian: linux-perf)")
    tmp = tempfile.mkdtemp(prefix="goloop-ceiling-")
    results = []
    try:
        args.cert = suite.make_cert(tmp, "ecdsa")
        for cell in args.cells.split(","):
            row = {"cell": cell}
            runs = {loop: [] for loop in loops}
            for i in range(args.rounds):
                # Rounds interleave the loops, the order alternating.
                for loop in (loops if i % 2 == 0 else loops[::-1]):
                    runs[loop].append(run_cell(cell, loop, args, tmp))
            for loop in loops:
                cpu_us = statistics.median(c for c, _ in runs[loop])
                sh = {k: statistics.median(s[k] for _, s in runs[loop]) for k in CATEGORIES}
                total = sum(sh.values()) or 1.0   # medians of shares need not add up to 1
                sh = {k: v / total for k, v in sh.items()}
                row[loop] = {"cpu_us": round(cpu_us, 2), **{k: round(v, 4) for k, v in sh.items()}}
                line = "  ".join(f"{k} {100 * v:5.1f}%" for k, v in sh.items())
                print(f"{cell:26s} {loop:7s} {cpu_us:8.2f} us/req  {line}", flush=True)
            for ref in loops:
                if ref != "goloop" and "goloop" in row:
                    row[f"vs_{ref}"] = ceilings(row, ref)
                    print(f"{'':26s} goloop/{ref}: " + describe(row[f"vs_{ref}"]), flush=True)
            results.append(row)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.plot:
        plot(results, loops[0], args.plot)


if __name__ == "__main__":
    main(sys.argv[1:])

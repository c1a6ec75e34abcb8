"""Tables for the benchmark results; also `python bench/report.py FILE` to reprint."""

import json
import sys

LOOP_NAMES = {"asyncio": "asyncio", "uvloop": "uvloop", "goloop": "goloop", "c": "C epoll"}
VARIANT_NAMES = {
    "protocol": "asyncio.Protocol",
    "buffered": "asyncio.BufferedProtocol",
    "streams": "streams (asyncio.start_server)",
    "sockets": "loop.sock_* (sock_accept/sock_recv/sock_sendall)",
}
LOOP_ORDER = ["asyncio", "uvloop", "goloop"]


def size_name(n):
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n} B"


def cell_name(conns, size):
    return f"{conns:>3} conn x {size_name(size):>7}"


def progress(row, kind="echo"):
    if kind == "echo":
        what = f"echo {row['variant']:<8} {LOOP_NAMES[row['loop']]:<8} {cell_name(row['conns'], row['size'])}"
    else:
        what = f"aiohttp {LOOP_NAMES[row['loop']]:<8}"
    if row.get("crash"):
        print(f"  {what}  CRASH {row['crash']}", file=sys.stderr, flush=True)
    if row.get("error"):
        print(f"  {what}  ERROR {row['error']}", file=sys.stderr, flush=True)
    else:
        spread = "/".join(f"{x:,}" for x in row.get("windows_rps", []))
        print(f"  {what}  {row['rps']:>9,} req/s  p99 {row['p99_us']:>8,.0f} us  "
              f"cpu {row['cpu_us_per_req']:5.2f} us/req  [{spread}]"
              + (f"  other {row['other_cpu']:.2f} CPU" if "other_cpu" in row else ""),
              file=sys.stderr, flush=True)


def progress_churn(loop, conns, rnd, out):
    what = f"churn {LOOP_NAMES[loop]:<8} {conns:>3} conns  round {rnd + 1}"
    if out.get("error"):
        print(f"  {what}  ERROR {out['error']}", file=sys.stderr, flush=True)
        return
    print(f"  {what}  {out['rps']:>9,.0f} conn/s  p50 {out['p50_us']:>7,.0f} us  "
          f"p99 {out['p99_us']:>7,.0f} us  cpu {out.get('server_cpu_us_per_req', 0):6.1f} us/conn  "
          f"errors {out.get('errors', 0)}  other {out.get('other_cpu', 0):.2f} CPU"
          + (f"  LOG {out['server_log']}" if out.get("server_log") else ""),
          file=sys.stderr, flush=True)


def progress_connect(loop, rnd, out):
    what = f"create_connection {LOOP_NAMES[loop]:<8} round {rnd + 1}"
    if out.get("error"):
        print(f"  {what}  ERROR {out['error']}", file=sys.stderr, flush=True)
        return
    def us(key):
        return "/".join(f"{x:.0f}" for x in out.get(key, []))
    print(f"  {what}  close {us('close_us')} us (cpu {us('close_cpu_us')})  "
          f"lost {us('lost_us')} us (cpu {us('lost_cpu_us')})", file=sys.stderr, flush=True)


def progress_tls(kind, label, variant, conns, size, rnd, out):
    if kind == "churn":
        what = f"tls new conns {label:<8} {conns:>3} conns  round {rnd + 1}"
    else:
        what = f"tls echo {variant:<8} {label:<8} {cell_name(conns, size)}  round {rnd + 1}"
    if out.get("error"):
        print(f"  {what}  ERROR {out['error']}", file=sys.stderr, flush=True)
        return
    unit = "conn/s" if kind == "churn" else "req/s"
    print(f"  {what}  {out['rps']:>9,.0f} {unit}  p50 {out['p50_us']:>7,.0f} us  "
          f"p99 {out['p99_us']:>7,.0f} us  cpu {out.get('server_cpu_us_per_req', 0):6.1f} us  "
          f"{out.get('tls_version', '?')} {out.get('tls_cipher', '?')}"
          + (f"  errors {out.get('errors', 0)}" if kind == "churn" else "")
          + f"  other {out.get('other_cpu', 0):.2f} CPU"
          + (f"  LOG {out['server_log']}" if out.get("server_log") else ""),
          file=sys.stderr, flush=True)


def _fmt_rps(row):
    if row is None:
        return "-"
    if row.get("error"):
        return "ERROR"
    # "!" marks a server that crashed once the load ended (see the list).
    return f"{row['rps']:,}" + ("!" if row.get("crash") else "")


def ratio(a, b):
    if not a or not b or a.get("error") or b.get("error") or not b.get("rps"):
        return None
    return a["rps"] / b["rps"]


def _fmt_ratio(r, pct=False):
    if r is None:
        return "-"
    return f"{r * 100:.0f}%" if pct else f"{r:.2f}x"


def _table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    def line(r):
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(r, widths)))
    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def echo_tables(results):
    echo = results.get("echo", [])
    by = {(r["loop"], r["variant"], r["conns"], r["size"]): r for r in echo}
    cells = sorted({(r["conns"], r["size"]) for r in echo}, key=lambda c: (c[1], c[0]))
    variants = [v for v in VARIANT_NAMES if any(r["variant"] == v for r in echo)]
    loops = [lp for lp in LOOP_ORDER if any(r["loop"] == lp for r in echo)]
    errors = {}
    parts = []
    for v in variants:
        head = ["cell", "C epoll"] + loops
        if "goloop" in loops:
            head += [f"go/{lp[:3]}" for lp in loops if lp != "goloop"]
        head += [f"{lp[:3]}/C" for lp in loops]
        rows, lat = [], []
        for conns, size in cells:
            c = by.get(("c", "c", conns, size))
            rs = {lp: by.get((lp, v, conns, size)) for lp in loops}
            row = [cell_name(conns, size), _fmt_rps(c)] + [_fmt_rps(rs[lp]) for lp in loops]
            if "goloop" in loops:
                row += [_fmt_ratio(ratio(rs["goloop"], rs[lp])) for lp in loops if lp != "goloop"]
            row += [_fmt_ratio(ratio(rs[lp], c), pct=True) for lp in loops]
            rows.append(row)
            lrow = [cell_name(conns, size)]
            for name, r in [("c", c)] + [(lp, rs[lp]) for lp in loops]:
                if r is not None and (r.get("error") or r.get("crash")):
                    errors.setdefault(r.get("error") or r["crash"], []).append(
                        f"{LOOP_NAMES[name]} {v} {cell_name(conns, size).strip()}")
                if r is None or r.get("error"):
                    lrow += ["-", "-"]
                else:
                    lrow += [f"{r['p50_us']:,.0f}/{r['p99_us']:,.0f}", f"{r['cpu_us_per_req']:.2f}"]
            lat.append(lrow)
        parts.append(f"== Echo, {VARIANT_NAMES[v]}: requests/s, goloop's ratio, share of C epoll ==")
        parts.append(_table(head, rows))
        lhead = ["cell"]
        for name in ["c"] + loops:
            lhead += [f"{LOOP_NAMES[name]} p50/p99 us", "cpu us/req"]
        parts.append("")
        parts.append(f"-- Echo, {VARIANT_NAMES[v]}: latency and server CPU per request --")
        parts.append(_table(lhead, lat))
        parts.append("")
    if errors:
        parts.append("Errors and crashes:")
        for msg, where in errors.items():
            shown = ", ".join(sorted(set(where))[:4]) + (" ..." if len(set(where)) > 4 else "")
            parts.append(f"  {msg}\n      in {shown}")
        parts.append("")
    return "\n".join(parts)


def http_table(results):
    http = results.get("aiohttp", [])
    if not http:
        return ""
    by = {r["loop"]: r for r in http}
    head = ["loop", "req/s", "p50 us", "p99 us", "cpu us/req", "goloop/this"]
    rows = []
    for lp in LOOP_ORDER:
        r = by.get(lp)
        if r is None:
            continue
        if r.get("error"):
            rows.append([lp, "ERROR", "-", "-", "-", "-"])
            continue
        rows.append([lp, _fmt_rps(r), f"{r['p50_us']:,.0f}", f"{r['p99_us']:,.0f}",
                     f"{r['cpu_us_per_req']:.1f}",
                     _fmt_ratio(ratio(by.get("goloop"), r)) if lp != "goloop" else ""])
    out = ["== aiohttp hello (wrk -t1 -c100) ==", _table(head, rows)]
    errs = [f"  {lp}: {r.get('error') or r['crash']}" for lp, r in by.items()
            if r.get("error") or r.get("crash")]
    if errs:
        out += ["Errors and crashes:"] + errs
    return "\n".join(out)


# Issue 8's targets for the new-connection cells.
CHURN_TARGET = 1.3    # goloop's connections/s at least 1.3x uvloop's
CONNECT_TARGET = 1.0  # goloop's create_connection cost at most uvloop's


def _met(r, target, higher_is_better):
    if r is None:
        return "-"
    ok = r >= target if higher_is_better else r <= target
    return "met" if ok else "NOT met"


def _connect_ratio(by, key, other):
    g, o = by.get("goloop"), by.get(other)
    if not g or not o or g.get("error") or o.get("error") or not o.get(key):
        return None
    return g[key] / o[key]


def paired_ratio(a, b):
    """Median over interleaved rounds of a's rate over b's in the same round.

    Rounds ran the loops one after another, so a pass that other work on the
    machine slowed down slowed both; the ratio inside a pass cancels most of
    that, and is steadier than the ratio of the two medians.
    """
    if not a or not b or a.get("error") or b.get("error"):
        return None
    rs = sorted(x / y for x, y in zip(a.get("rounds_rps", []), b.get("rounds_rps", []))
                if x and y)
    if not rs:
        return None
    n = len(rs)
    return rs[n // 2] if n % 2 else (rs[n // 2 - 1] + rs[n // 2]) / 2


def cpu_ratio(a, b):
    """b's server CPU per connection over a's: the rate ratio a CPU-bound server would reach."""
    if not a or not b or a.get("error") or b.get("error") or not a.get("cpu_us_per_conn"):
        return None
    return b["cpu_us_per_conn"] / a["cpu_us_per_conn"]


def churn_table(results):
    churn = results.get("churn", [])
    if not churn:
        return ""
    by = {(r["loop"], r["conns"]): r for r in churn}
    cells = sorted({r["conns"] for r in churn})
    loops = [lp for lp in LOOP_ORDER if any(r["loop"] == lp for r in churn)]
    head = ["conns", "C epoll"] + loops
    if "goloop" in loops:
        head += [f"go/{lp[:3]}" for lp in loops if lp != "goloop"]
        head += [f"go/{lp[:3]} paired" for lp in loops if lp != "goloop"]
        head += [f"go/{lp[:3]} by CPU" for lp in loops if lp != "goloop"]
    lhead = ["conns"]
    for name in ["c"] + loops:
        lhead += [f"{LOOP_NAMES[name]} p50/p99 us", "cpu us/conn", "errors"]
    rows, lat, notes = [], [], []
    for conns in cells:
        c = by.get(("c", conns))
        rs = {lp: by.get((lp, conns)) for lp in loops}
        row = [str(conns), _fmt_rps(c)] + [_fmt_rps(rs[lp]) for lp in loops]
        if "goloop" in loops:
            others = [lp for lp in loops if lp != "goloop"]
            row += [_fmt_ratio(ratio(rs["goloop"], rs[lp])) for lp in others]
            row += [_fmt_ratio(paired_ratio(rs["goloop"], rs[lp])) for lp in others]
            row += [_fmt_ratio(cpu_ratio(rs["goloop"], rs[lp])) for lp in others]
        rows.append(row)
        lrow = [str(conns)]
        for name, r in [("c", c)] + [(lp, rs[lp]) for lp in loops]:
            if r is None or r.get("error"):
                lrow += ["-", "-", "-"]
            else:
                lrow += [f"{r['p50_us']:,.0f}/{r['p99_us']:,.0f}", f"{r['cpu_us_per_conn']:.1f}",
                         str(r.get("errors", 0))]
            for key in ("error", "crash", "server_log", "last_error"):
                if r is not None and r.get(key):
                    notes.append(f"  {LOOP_NAMES[name]} {conns} conns: {key}: {r[key]}")
        lat.append(lrow)
    out = [f"== New connections/s, server side (connect, {size_name(churn[0]['size'])} echo, "
           "reset close; median of interleaved rounds) ==", _table(head, rows)]
    if "goloop" in loops and "uvloop" in loops:
        out += [f"target goloop/uvloop >= {CHURN_TARGET} (paired): " + ", ".join(
            f"{conns} conns {_met(paired_ratio(by.get(('goloop', conns)), by.get(('uvloop', conns))), CHURN_TARGET, True)}"
            for conns in cells)]
    out += ["", "-- New connections: latency of connect->echo->close, server CPU per connection --",
            _table(lhead, lat)]
    if notes:
        out += ["Notes:"] + notes
    return "\n".join(out) + "\n"


def connect_table(results):
    conn = results.get("connect", [])
    if not conn:
        return ""
    by = {r["loop"]: r for r in conn}
    head = ["loop", "close us", "close+lost us", "cpu close", "cpu close+lost", "go/this", "go/this cpu"]
    rows, notes = [], []
    for lp in LOOP_ORDER:
        r = by.get(lp)
        if r is None:
            continue
        if r.get("error"):
            rows.append([lp, "ERROR", "-", "-", "-", "-", "-"])
            notes.append(f"  {lp}: {r['error']}")
            continue
        rel = "" if lp == "goloop" else "/".join(
            _fmt_ratio(_connect_ratio(by, k, lp)) for k in ("close_us", "lost_us"))
        relc = "" if lp == "goloop" else "/".join(
            _fmt_ratio(_connect_ratio(by, k, lp)) for k in ("close_cpu_us", "lost_cpu_us"))
        rows.append([lp, f"{r['close_us']:.1f}", f"{r['lost_us']:.1f}", f"{r['close_cpu_us']:.1f}",
                     f"{r['lost_cpu_us']:.1f}", rel, relc])
        if r.get("client_log"):
            notes.append(f"  {lp}: client printed: {r['client_log']}")
    count = conn[0].get("count", "?")
    out = [f"== create_connection + close, client side: us per connection (median of rounds of "
           f"{count}; close = close() then on, close+lost = waits for connection_lost) ==",
           _table(head, rows)]
    if "goloop" in by and "uvloop" in by:
        r1, r2 = _connect_ratio(by, "close_us", "uvloop"), _connect_ratio(by, "lost_us", "uvloop")
        out.append(f"target goloop/uvloop <= {CONNECT_TARGET}: close {_met(r1, CONNECT_TARGET, False)}, "
                   f"close+lost {_met(r2, CONNECT_TARGET, False)}")
    if notes:
        out += ["Notes:"] + notes
    return "\n".join(out) + "\n"


# Issue 9's targets for the TLS cells, goloop over uvloop.
TLS_ECHO_TARGET = 1.3
TLS_CHURN_TARGET = 1.2


def _tls_cpu_ratio(a, b, key):
    """b's server CPU per request over a's (a's rate ratio if both were CPU-bound)."""
    if not a or not b or a.get("error") or b.get("error") or not a.get(key):
        return None
    return b[key] / a[key]


def tls_table(results):
    rows_in = [r for r in results.get("tls", []) if r.get("kind") in ("echo", "churn")]
    setup = [r for r in results.get("tls", []) if r.get("kind") == "setup"]
    if not rows_in and not setup:
        return ""
    m = results.get("meta", {})
    out = [f"== TLS (issue 9): {m.get('tls_version', '?')} requested, {m.get('tls_key', '?')} "
           f"certificate, verified by the Go client; median of {m.get('tls_rounds', '?')} "
           f"interleaved rounds, each the fastest of {m.get('churn_windows', '?')} x "
           f"{m.get('window_s', '?')} s windows =="]
    out += [f"  ERROR {r['error']}" for r in setup]
    labels = []
    for r in rows_in:
        if r["loop"] not in labels:
            labels.append(r["loop"])
    labels.sort(key=lambda lb: (LOOP_ORDER.index(lb) if lb in LOOP_ORDER else len(LOOP_ORDER), lb))
    gos = [lb for lb in labels if lb == "goloop" or lb.startswith("goloop[")]
    others = [lb for lb in ("uvloop", "asyncio") if lb in labels]
    by = {(r["kind"], r["variant"], r["conns"], r["size"], r["loop"]): r for r in rows_in}
    cells = []
    for r in rows_in:
        c = (r["kind"], r["variant"], r["conns"], r["size"])
        if c not in cells:
            cells.append(c)
    head = ["cell"] + labels
    for g in gos:
        for o in others:
            short = "go" if g == "goloop" else g
            head += [f"{short}/{o[:3]} (med/paired/cpu)"]
    rows, lat, notes, verdicts = [], [], [], []
    for kind, variant, conns, size in cells:
        name = (f"echo {variant} {conns} x {size_name(size)}" if kind == "echo"
                else f"new conns, {conns} concurrent")
        rs = {lb: by.get((kind, variant, conns, size, lb)) for lb in labels}
        row = [name] + [_fmt_rps(rs[lb]) for lb in labels]
        key = "cpu_us_per_conn" if kind == "churn" else "cpu_us_per_req"
        target = TLS_CHURN_TARGET if kind == "churn" else TLS_ECHO_TARGET
        for g in gos:
            for o in others:
                row.append(" / ".join(_fmt_ratio(x) for x in (
                    ratio(rs[g], rs[o]), paired_ratio(rs[g], rs[o]), _tls_cpu_ratio(rs[g], rs[o], key))))
                if o == "uvloop":
                    p = paired_ratio(rs[g], rs[o])
                    verdicts.append(f"{name}: {g}/uvloop paired {_fmt_ratio(p)}, target >= {target}: "
                                    f"{_met(p, target, True)}")
        rows.append(row)
        lrow = [name]
        for lb in labels:
            r = rs[lb]
            if r is None or r.get("error"):
                lrow += ["-", "-"]
            else:
                lrow += [f"{r['p50_us']:,.0f}/{r['p99_us']:,.0f}", f"{r[key]:.1f}"
                         + (f" e{r['errors']}" if r.get("errors") else "")]
            for k in ("error", "crash", "server_log", "last_error", "failed_rounds"):
                if r is not None and r.get(k):
                    notes.append(f"  {lb} {name}: {k}: {r[k]}")
        lat.append(lrow)
    lhead = ["cell"]
    for lb in labels:
        lhead += [f"{lb} p50/p99 us", "cpu us/req"]
    out += [_table(head, rows)]
    out += [f"target {v}" for v in verdicts]
    neg = sorted({f"{r.get('tls_version')} {r.get('tls_cipher')} {r.get('tls_curve')}"
                  for r in rows_in if not r.get("error")})
    if neg:
        out.append("negotiated: " + "; ".join(neg))
    out += ["", "-- TLS: latency (echo: a round trip; new conns: connect->handshake->echo->close) "
            "and server CPU per request or connection --", _table(lhead, lat)]
    if notes:
        out += ["Notes:"] + notes
    return "\n".join(out) + "\n"


def tables(results):
    m = results.get("meta", {})
    head = (f"machine: {m.get('machine', '?')}\n"
            f"date: {m.get('date', '?')}  commit: {m.get('goloop_commit', '?')}  "
            f"load average at the start: {m.get('loadavg', '?')}\n")
    if results.get("echo"):
        head += (f"echo over {m.get('transport', '?')}; each cell: {m.get('warmup_s')} s warm-up, "
                 f"fastest of {m.get('windows')} x {m.get('window_s')} s windows\n")
    if results.get("churn"):
        head += (f"new connections: {m.get('churn_rounds')} interleaved rounds per cell, each "
                 f"{m.get('churn_warmup_s')} s warm-up and the fastest of {m.get('churn_windows')} x "
                 f"{m.get('window_s')} s windows\n")
    return "\n".join(p for p in (head, echo_tables(results), http_table(results),
                                  churn_table(results), connect_table(results),
                                  tls_table(results)) if p)


def markdown(results):
    """The same numbers as tables(), as Markdown for docs/benchmarks.md."""
    echo = results.get("echo", [])
    by = {(r["loop"], r["variant"], r["conns"], r["size"]): r for r in echo}
    cells = sorted({(r["conns"], r["size"]) for r in echo}, key=lambda c: (c[1], c[0]))
    out = []

    def rps(r):
        return "error" if r is not None and r.get("error") else _fmt_rps(r)

    def cpu(r):
        return f"{r['cpu_us_per_req']:.1f}" if r and not r.get("error") else "-"

    for v in VARIANT_NAMES:
        if not any(r["variant"] == v for r in echo):
            continue
        out.append(f"**{VARIANT_NAMES[v].replace('*', chr(92) + '*')}**\n")
        out.append("| cell | C epoll | asyncio | uvloop | goloop | goloop/uvloop | goloop/asyncio "
                   "| goloop % of C | server CPU us/req (C/aio/uv/go) | p99 us (aio/uv/go) |")
        out.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for conns, size in cells:
            c = by.get(("c", "c", conns, size))
            a, u, g = (by.get((lp, v, conns, size)) for lp in LOOP_ORDER)
            p99 = "/".join(f"{r['p99_us']:,.0f}" if r and not r.get("error") else "-" for r in (a, u, g))
            out.append(f"| {conns} conns x {size_name(size)} | {rps(c)} | {rps(a)} | {rps(u)} | {rps(g)} "
                       f"| {_fmt_ratio(ratio(g, u))} | {_fmt_ratio(ratio(g, a))} "
                       f"| {_fmt_ratio(ratio(g, c), pct=True)} "
                       f"| {cpu(c)} / {cpu(a)} / {cpu(u)} / {cpu(g)} | {p99} |")
        out.append("")
    http = {r["loop"]: r for r in results.get("aiohttp", [])}
    if http:
        out.append("**aiohttp hello** (`wrk -t1 -c100`)\n")
        out.append("| loop | req/s | p50 us | p99 us | server CPU us/req | goloop/this |")
        out.append("|---|--:|--:|--:|--:|--:|")
        for lp in LOOP_ORDER:
            r = http.get(lp)
            if r is None:
                continue
            if r.get("error"):
                out.append(f"| {lp} | error: {r['error']} | | | | |")
                continue
            rel = _fmt_ratio(ratio(http.get("goloop"), r)) if lp != "goloop" else ""
            out.append(f"| {lp} | {_fmt_rps(r)} | {r['p50_us']:,.0f} | {r['p99_us']:,.0f} "
                       f"| {r['cpu_us_per_req']:.1f} | {rel} |")
        out.append("")
    churn = results.get("churn", [])
    if churn:
        cby = {(r["loop"], r["conns"]): r for r in churn}
        out.append(f"**New connections per second** (server: `echo_server.py --variant protocol`; "
                   f"each connection: connect, {size_name(churn[0]['size'])} echo, reset close; "
                   "median of interleaved rounds)\n")
        out.append("| concurrent | C epoll | asyncio | uvloop | goloop | goloop/uvloop (medians / paired "
                   "/ by CPU) | goloop/asyncio (medians / paired / by CPU) "
                   "| server CPU us/conn (C/aio/uv/go) | p50/p99 us (aio/uv/go) | errors |")
        out.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for conns in sorted({r["conns"] for r in churn}):
            c = cby.get(("c", conns))
            a, u, g = (cby.get((lp, conns)) for lp in LOOP_ORDER)
            def ok(r):
                return r is not None and not r.get("error")
            lat = " / ".join(f"{r['p50_us']:,.0f}/{r['p99_us']:,.0f}" if ok(r) else "-" for r in (a, u, g))
            cpus = " / ".join(f"{r['cpu_us_per_conn']:.1f}" if ok(r) else "-" for r in (c, a, u, g))
            errs = sum(r.get("errors", 0) for r in (c, a, u, g) if ok(r))
            out.append(f"| {conns} | {rps(c)} | {rps(a)} | {rps(u)} | {rps(g)} "
                       f"| {_fmt_ratio(ratio(g, u))} / {_fmt_ratio(paired_ratio(g, u))} / {_fmt_ratio(cpu_ratio(g, u))} "
                       f"| {_fmt_ratio(ratio(g, a))} / {_fmt_ratio(paired_ratio(g, a))} / {_fmt_ratio(cpu_ratio(g, a))} "
                       f"| {cpus} | {lat} | {errs} |")
        out.append("")
    conn = {r["loop"]: r for r in results.get("connect", [])}
    if conn:
        count = next(iter(conn.values())).get("count", "?")
        out.append(f"**create_connection + close, client side** (us per connection, median of "
                   f"rounds of {count}; C echo server)\n")
        out.append("| loop | close | close + await connection_lost | CPU close | CPU close + lost "
                   "| goloop/this (wall) | goloop/this (CPU) |")
        out.append("|---|--:|--:|--:|--:|--:|--:|")
        for lp in LOOP_ORDER:
            r = conn.get(lp)
            if r is None:
                continue
            if r.get("error"):
                out.append(f"| {lp} | error: {r['error']} | | | | | |")
                continue
            rel = "" if lp == "goloop" else " / ".join(
                _fmt_ratio(_connect_ratio(conn, k, lp)) for k in ("close_us", "lost_us"))
            relc = "" if lp == "goloop" else " / ".join(
                _fmt_ratio(_connect_ratio(conn, k, lp)) for k in ("close_cpu_us", "lost_cpu_us"))
            out.append(f"| {lp} | {r['close_us']:.1f} | {r['lost_us']:.1f} | {r['close_cpu_us']:.1f} "
                       f"| {r['lost_cpu_us']:.1f} | {rel} | {relc} |")
        out.append("")

    tls = [r for r in results.get("tls", []) if r.get("kind") in ("echo", "churn")]
    if tls:
        m = results.get("meta", {})
        labels = []
        for r in tls:
            if r["loop"] not in labels:
                labels.append(r["loop"])
        labels.sort(key=lambda lb: (LOOP_ORDER.index(lb) if lb in LOOP_ORDER else len(LOOP_ORDER), lb))
        gos = [lb for lb in labels if lb == "goloop" or lb.startswith("goloop[")]
        tby = {(r["kind"], r["variant"], r["conns"], r["size"], r["loop"]): r for r in tls}
        cells = list(dict.fromkeys((r["kind"], r["variant"], r["conns"], r["size"]) for r in tls))
        out.append(f"**TLS** (TLS {m.get('tls_version', '?')}, {m.get('tls_key', '?')} certificate "
                   f"verified by the Go client; median of {m.get('tls_rounds', '?')} interleaved "
                   "rounds; ratios: medians / paired / by CPU)\n")
        cols = " | ".join(labels) + " | " + " | ".join(f"{g}/uvloop" for g in gos if "uvloop" in labels)
        out.append(f"| cell | {cols} | server CPU us/req ({'/'.join(labels)}) | p50/p99 us ({'/'.join(labels)}) |")
        out.append("|---|" + "--:|" * (len(labels) + sum(1 for g in gos if "uvloop" in labels) + 2))
        for kind, variant, conns, size in cells:
            rs = [tby.get((kind, variant, conns, size, lb)) for lb in labels]
            d = dict(zip(labels, rs))
            key = "cpu_us_per_conn" if kind == "churn" else "cpu_us_per_req"
            name = (f"echo {variant}, {conns} conns x {size_name(size)} (req/s)" if kind == "echo"
                    else f"new connections/s, {conns} concurrent")
            rats = " | ".join(" / ".join(_fmt_ratio(x) for x in (
                ratio(d[g], d["uvloop"]), paired_ratio(d[g], d["uvloop"]),
                _tls_cpu_ratio(d[g], d["uvloop"], key))) for g in gos if "uvloop" in labels)
            ok = [r is not None and not r.get("error") for r in rs]
            cpus = " / ".join(f"{r[key]:.1f}" if k else "-" for r, k in zip(rs, ok))
            lat = " / ".join(f"{r['p50_us']:,.0f}/{r['p99_us']:,.0f}" if k else "-" for r, k in zip(rs, ok))
            out.append(f"| {name} | " + " | ".join(rps(r) for r in rs) + f" | {rats} | {cpus} | {lat} |")
        out.append("")

    def where(r):
        if "count" in r and "conns" not in r:
            return f"{LOOP_NAMES[r['loop']]} create_connection"
        if "variant" not in r and "conns" in r:
            return f"{LOOP_NAMES[r['loop']]} churn {r['conns']} conns"
        if "size" not in r:
            return f"{LOOP_NAMES[r['loop']]} aiohttp"
        return f"{LOOP_NAMES[r['loop']]} {r['variant']} {r['conns']} conns x {size_name(r['size'])}"
    errors = sorted({f"{where(r)}: {r.get('error') or r['crash']}"
                     for r in echo + results.get("aiohttp", []) + churn + results.get("connect", [])
                     if r.get("error") or r.get("crash")})
    if errors:
        out.append("Errors and crashes:\n")
        out += [f"- {e}" for e in errors]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--markdown"]
    with open(args[0] if args else "bench/results/latest.json") as f:
        data = json.load(f)
    print(markdown(data) if "--markdown" in sys.argv else tables(data))

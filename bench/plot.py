"""Plots of a benchmark results file: python bench/plot.py RESULTS.json OUTDIR

Writes echo_rps.png (requests/s per loop per cell, C epoll as the ceiling),
echo_cpu.png (server CPU time per request, the same layout),
echo_ratio.png (goloop/uvloop and goloop/asyncio per cell, or uvloop/asyncio
while goloop has no numbers), aiohttp.png and connections.png (new
connections per second with each round's spread, server CPU per connection,
and the client's create_connection cost).
"""

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import VARIANT_NAMES, size_name  # noqa: E402

COLORS = {"c": "#9e9e9e", "asyncio": "#4c72b0", "uvloop": "#dd8452", "goloop": "#55a868"}
NAMES = {"c": "C epoll", "asyncio": "asyncio", "uvloop": "uvloop", "goloop": "goloop"}
SHORT = {"protocol": "Protocol", "buffered": "BufferedProtocol",
         "streams": "streams", "sockets": "loop.sock_*"}


def ok(row):
    return row is not None and not row.get("error") and row.get("rps")


def cells_of(echo):
    return sorted({(r["conns"], r["size"]) for r in echo}, key=lambda c: (c[1], c[0]))


def cell_label(conns, size):
    return f"{size_name(size)}\n{conns} conns"


def echo_rps(results, path, metric="rps"):
    echo = results["echo"]
    by = {(r["loop"], r["variant"], r["conns"], r["size"]): r for r in echo}
    cells = cells_of(echo)
    variants = [v for v in VARIANT_NAMES if any(r["variant"] == v for r in echo)]
    loops = ["c"] + [lp for lp in ("asyncio", "uvloop", "goloop") if any(r["loop"] == lp for r in echo)]
    ncols = 2 if len(variants) > 1 else 1
    nrows = (len(variants) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, 3.8 * nrows), squeeze=False)
    width = 0.8 / len(loops)
    for ax, v in zip(axes.flat, variants):
        for i, lp in enumerate(loops):
            xs, ys, errs = [], [], []
            for j, (conns, size) in enumerate(cells):
                r = by.get((lp, "c" if lp == "c" else v, conns, size))
                x = j + (i - (len(loops) - 1) / 2) * width
                if ok(r):
                    xs.append(x)
                    ys.append(r["rps"] / 1000 if metric == "rps" else r["cpu_us_per_req"])
                elif r is not None:
                    errs.append(x)
            ax.bar(xs, ys, width, label=NAMES[lp], color=COLORS[lp])
            for x in errs:
                ax.text(x, 0, "error", ha="center", va="bottom", fontsize=8, rotation=90,
                        color="red", fontweight="bold")
        ax.set_title(f"echo, {SHORT[v]}")
        ax.set_xticks(range(len(cells)))
        ax.set_xticklabels([cell_label(*c) for c in cells], fontsize=8)
        ax.set_ylabel("thousand requests/s" if metric == "rps"
                      else "server CPU per request, us (lower is better)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    for ax in list(axes.flat)[len(variants):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(loops), frameon=False)
    fig.suptitle(_subtitle(results), y=0.005, va="bottom", fontsize=8, color="#555")
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def echo_ratio(results, path):
    echo = results["echo"]
    by = {(r["loop"], r["variant"], r["conns"], r["size"]): r for r in echo}
    cells = cells_of(echo)
    variants = [v for v in VARIANT_NAMES if any(r["variant"] == v for r in echo)]
    have_go = any(ok(r) for r in echo if r["loop"] == "goloop")
    pairs = [("goloop", "uvloop"), ("goloop", "asyncio")] if have_go else [("uvloop", "asyncio")]
    ncols = 2 if len(variants) > 1 else 1
    nrows = (len(variants) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, 3.6 * nrows), squeeze=False)
    width = 0.8 / len(pairs)
    colors = ["#55a868", "#8172b3"] if have_go else ["#dd8452"]
    for ax, v in zip(axes.flat, variants):
        for i, (a, b) in enumerate(pairs):
            xs, ys = [], []
            for j, (conns, size) in enumerate(cells):
                ra, rb = by.get((a, v, conns, size)), by.get((b, v, conns, size))
                x = j + (i - (len(pairs) - 1) / 2) * width
                if ok(ra) and ok(rb):
                    xs.append(x)
                    ys.append(ra["rps"] / rb["rps"])
                elif ra is not None or rb is not None:
                    ax.text(x, 0.02, "error", ha="center", va="bottom", fontsize=8,
                            rotation=90, color="red", fontweight="bold")
            bars = ax.bar(xs, ys, width, label=f"{a} / {b}", color=colors[i])
            for bar, y in zip(bars, ys):
                ax.text(bar.get_x() + bar.get_width() / 2, y, f"{y:.2f}",
                        ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_title(f"echo, {SHORT[v]}")
        ax.set_xticks(range(len(cells)))
        ax.set_xticklabels([cell_label(*c) for c in cells], fontsize=8)
        ax.set_ylabel("throughput ratio")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.margins(y=0.15)
    for ax in list(axes.flat)[len(variants):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(pairs), frameon=False)
    note = "" if have_go else "  (goloop not measured: uvloop/asyncio shown)"
    fig.suptitle(_subtitle(results) + note, y=0.005, va="bottom", fontsize=8, color="#555")
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def aiohttp_plot(results, path):
    http = results.get("aiohttp", [])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    names, ys, colors = [], [], []
    for r in http:
        names.append(NAMES[r["loop"]])
        ys.append(r["rps"] / 1000 if ok(r) else 0)
        colors.append(COLORS[r["loop"]])
    bars = ax.bar(names, ys, color=colors)
    base = {r["loop"]: r for r in http}
    for bar, r in zip(bars, http):
        if not ok(r):
            label = "error"
        else:
            label = f"{r['rps']:,}"
            if r["loop"] == "goloop" and ok(base.get("uvloop")):
                label += f"\n{r['rps'] / base['uvloop']['rps']:.2f}x uvloop"
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), label,
                ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("thousand requests/s")
    ax.set_title("aiohttp hello, wrk -t1 -c100")
    ax.margins(y=0.2)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def connections_plot(results, path):
    churn = [r for r in results.get("churn", []) if ok(r)]
    conn = {r["loop"]: r for r in results.get("connect", []) if not r.get("error")}
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.9))
    cells = sorted({r["conns"] for r in churn})
    loops = [lp for lp in ("c", "asyncio", "uvloop", "goloop") if any(r["loop"] == lp for r in churn)]
    by = {(r["loop"], r["conns"]): r for r in churn}
    width = 0.8 / max(len(loops), 1)
    for ax, metric in ((axes[0], "rps"), (axes[1], "cpu")):
        for i, lp in enumerate(loops):
            xs, ys, lo, hi = [], [], [], []
            for j, conns in enumerate(cells):
                r = by.get((lp, conns))
                if r is None:
                    continue
                xs.append(j + (i - (len(loops) - 1) / 2) * width)
                if metric == "rps":
                    rounds = [x for x in r.get("rounds_rps", []) if x] or [r["rps"]]
                    ys.append(r["rps"] / 1000)
                    lo.append((r["rps"] - min(rounds)) / 1000)
                    hi.append((max(rounds) - r["rps"]) / 1000)
                else:
                    ys.append(r["cpu_us_per_conn"])
            ax.bar(xs, ys, width, label=NAMES[lp], color=COLORS[lp],
                   yerr=[lo, hi] if metric == "rps" else None, capsize=3,
                   error_kw={"elinewidth": 0.8, "ecolor": "#333"})
        ax.set_xticks(range(len(cells)))
        ax.set_xticklabels([f"{c} concurrent" for c in cells], fontsize=8)
        ax.set_ylabel("thousand connections/s (median, rounds' range)" if metric == "rps"
                      else "server CPU per connection, us (lower is better)")
        ax.set_title("new connections/s: connect, 64 B echo, reset close" if metric == "rps"
                     else "new connections: server CPU per connection")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    if loops:
        axes[0].legend(fontsize=8, frameon=False)
    ax = axes[2]
    names = [lp for lp in ("asyncio", "uvloop", "goloop") if lp in conn]
    ways = [("close_us", "close, wall"), ("lost_us", "close + connection_lost, wall"),
            ("close_cpu_us", "close, CPU"), ("lost_cpu_us", "close + connection_lost, CPU")]
    width = 0.8 / len(ways)
    shades = ["#4c72b0", "#8172b3", "#55a868", "#8fbf9f"]
    for i, (key, label) in enumerate(ways):
        xs = [j + (i - (len(ways) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, [conn[lp][key] for lp in names], width, label=label, color=shades[i])
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylabel("us per connection (lower is better)")
    ax.set_title("client on CPU 0: create_connection + close, C echo on CPU 1", fontsize=10)
    ax.margins(y=0.4)
    ax.legend(fontsize=7, frameon=False, ncol=2, loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.suptitle(_subtitle(results), y=0.005, va="bottom", fontsize=8, color="#555")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _subtitle(results):
    m = results.get("meta", {})
    return f"{m.get('machine', '')}; {m.get('date', '')}; server on CPU 0, load generator on CPU 1"


def main(src, outdir):
    with open(src) as f:
        results = json.load(f)
    os.makedirs(outdir, exist_ok=True)
    written = []
    if results.get("echo"):
        for name, fn in (("echo_rps.png", echo_rps), ("echo_ratio.png", echo_ratio)):
            fn(results, os.path.join(outdir, name))
            written.append(name)
        echo_rps(results, os.path.join(outdir, "echo_cpu.png"), metric="cpu")
        written.append("echo_cpu.png")
    if results.get("aiohttp"):
        aiohttp_plot(results, os.path.join(outdir, "aiohttp.png"))
        written.append("aiohttp.png")
    if results.get("churn") or results.get("connect"):
        connections_plot(results, os.path.join(outdir, "connections.png"))
        written.append("connections.png")
    print("plots: " + ", ".join(os.path.join(outdir, w) for w in written))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""Plot of the name-resolution benchmark: python bench/plot_dns.py OUTDIR [RESULTS.json ...]

Reads the results bench/dns_bench.py wrote (by default every
bench/results/dns*.json) and writes dns.png: for each set-up (server on
loopback, pinned or not; server farther away), lookups per second and the
client's CPU per lookup on asyncio, uvloop and goloop, with the
goloop/asyncio ratio over goloop's bar.
"""

import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
LOOPS = ("asyncio", "uvloop", "goloop")
COLORS = {"asyncio": "#4c72b0", "uvloop": "#dd8452", "goloop": "#55a868"}


def label(r):
    where = f"server {r['delay_ms']:g} ms away" if r.get("delay_ms") else "server on loopback"
    pin = "CPUs pinned" if r.get("pinned") else "CPUs not pinned"
    names = (f"{r['names']:,} names again\n(goloop: from cache)" if r.get("repeat")
             else f"{r['names']:,} new names")
    return f"{where}\n{pin}\n{names}"


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    paths = sys.argv[2:] or sorted(glob.glob(os.path.join(HERE, "results", "dns*.json")))
    results = []
    for p in paths:
        with open(p) as f:
            r = json.load(f)
        if all(n in r["summary"] for n in LOOPS):
            results.append(r)
    if not results:
        sys.exit("no results with all three loops")
    # Loopback first, pinned before not.
    results.sort(key=lambda r: (r.get("repeat", False), r.get("delay_ms", 0),
                                not r.get("pinned", False)))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5))
    width = 0.26
    xs = range(len(results))
    for i, name in enumerate(LOOPS):
        pos = [x + (i - 1) * width for x in xs]
        rates = [r["summary"][name]["rate"] for r in results]
        cpus = [r["summary"][name]["client_cpu_us"] for r in results]
        ax1.bar(pos, rates, width, label=name, color=COLORS[name])
        ax2.bar(pos, cpus, width, label=name, color=COLORS[name])
        if name == "goloop":
            for x, r, rate in zip(pos, results, rates):
                ratio = rate / r["summary"]["asyncio"]["rate"]
                ax1.annotate(f"{ratio:.1f}x asyncio", (x, rate), ha="center", va="bottom",
                             fontsize=8, xytext=(0, 2), textcoords="offset points")
    for ax in (ax1, ax2):
        ax.set_xticks(list(xs))
        ax.set_xticklabels([label(r) for r in results], fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    ax1.set_ylabel("lookups per second, log scale (higher is better)")
    ax2.set_ylabel("client CPU per lookup, µs (lower is better)")
    r0 = results[0]
    ax1.set_yscale("log")
    ax1.set_title(f"Lookups, {r0['concurrency']} in flight, against unbound")
    ax2.set_title("CPU the resolving process spends per lookup")
    ax1.legend()
    fig.tight_layout()
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "dns.png")
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# goloop's side-by-side benchmark (`make bench`): echo on four asyncio APIs,
# aiohttp, new connections (server: connections/s; client: the cost of
# create_connection) and TLS (echo, new TLS connections/s), on goloop, uvloop
# and asyncio, against a C epoll ceiling (not for TLS).
#
#   bash bench/run.sh [--quick] [suite options, see bench/suite.py --help]
#
# PYTHON picks the interpreter the servers run on (default: the project's
# venv, else /usr/bin/python3 with PYTHONPATH=python). BENCH_SECONDS,
# BENCH_WINDOWS, BENCH_WARMUP, BENCH_HTTP_SECONDS tune the cell length;
# BENCH_CHURN_ROUNDS, BENCH_CONNECT_ROUNDS, BENCH_CONNECT_COUNT the
# new-connection cells (see bench/suite.py).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
dpkg -s python3-matplotlib >/dev/null 2>&1 || need+=(python3-matplotlib)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
command -v openssl >/dev/null 2>&1 || need+=(openssl)   # the TLS cells' certificate
if ((${#need[@]})); then
    echo "installing ${need[*]}" >&2
    apt-get install -y "${need[@]}" >/dev/null ||
        { apt-get update >/dev/null && apt-get install -y "${need[@]}" >/dev/null; }
fi

if [[ $(nproc) -lt 2 ]]; then
    echo "bench needs two CPUs (server on CPU 0, load on CPU 1)" >&2
    exit 1
fi

mkdir -p bench/bin bench/results
export PATH=/usr/local/go/bin:$PATH
go build -o bench/bin/loadgen ./bench/loadgen
gcc -O2 -Wall -o bench/bin/cecho bench/cecho/echo.c

if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $root/.venv/bin/python ]]; then
        PYTHON=$root/.venv/bin/python
    else
        PYTHON=/usr/bin/python3
        export PYTHONPATH=$root/python${PYTHONPATH:+:$PYTHONPATH}
    fi
fi
export PYTHON
echo "servers run on $PYTHON" >&2

# A smoke run must not replace the committed results or their plots.
out=bench/results/latest.json
plots=docs/img
for a in "$@"; do
    if [[ $a == --quick ]]; then
        out=bench/results/quick.json
        plots=
    fi
done

# The harness needs nothing beyond the standard library; the servers run on
# $PYTHON, which it is also run with so that both agree.
"$PYTHON" bench/suite.py --out "$out" "$@"

if [[ -n $plots ]]; then
    if "$PYTHON" -c 'import matplotlib' 2>/dev/null; then
        MPLBACKEND=Agg "$PYTHON" bench/plot.py "$out" "$plots"
    else
        echo "matplotlib missing: no plots" >&2
    fi
fi

# Name resolution (docs/dns.md): the issue's set-up (server on loopback,
# client and server pinned to a CPU each), the same unpinned, the server
# 2 ms away, and names asked a second time (goloop's cache; 4,000 names so
# that A and AAAA of all fit its 10,000 entries).
if [[ -f bench/dns_bench.py ]]; then
    # A smoke run: one round each, results beside the committed ones.
    dns=(bench/dns_bench.py)
    dnsout=bench/results
    if [[ -z $plots ]]; then
        dns+=(--rounds 1)
        dnsout=bench/results/quick
        mkdir -p "$dnsout"
    fi
    "$PYTHON" "${dns[@]}" --out "$dnsout/dns.json"
    "$PYTHON" "${dns[@]}" --no-pin --out "$dnsout/dns-nopin.json"
    "$PYTHON" "${dns[@]}" --delay-ms 2 --out "$dnsout/dns-delay2ms.json"
    "$PYTHON" "${dns[@]}" --repeat --names 4000 --out "$dnsout/dns-repeat.json"
    if [[ -n $plots ]] && "$PYTHON" -c 'import matplotlib' 2>/dev/null; then
        MPLBACKEND=Agg "$PYTHON" bench/plot_dns.py "$plots"
    fi
fi

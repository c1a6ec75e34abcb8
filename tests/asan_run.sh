#!/usr/bin/env bash
# The Python suite (goloop only; io_uring, then part of it on epoll) against a build of the C
# extension goloop._core under AddressSanitizer + UndefinedBehaviorSanitizer.
# Run by `make test-asan`; by hand: bash tests/asan_run.sh .venv/bin/python
#
# The sanitized package is built out of tree into build/asan/ (the Go library
# in it is built normally) and imported through PYTHONPATH; .venv is untouched.
# Exit status: non-zero if either pytest run fails or any sanitizer report was
# written, by pytest itself or by any process it started.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PY=${1:-.venv/bin/python}
[[ $PY == /* ]] || PY=$ROOT/$PY
[ -x "$PY" ] || { echo "asan_run.sh: no python at $PY (run make venv)"; exit 2; }

LIB=$ROOT/build/asan          # the sanitized goloop package (import root)
TMP=$ROOT/build/asan-temp     # its object files, apart from the normal build's
LOGS=$ROOT/build/asan-logs    # ASAN reports (asan.PID), pytest and build output

# Debian's gcc ships these (package libgcc-12-dev, a dependency of gcc).
LIBASAN=$(gcc -print-file-name=libasan.so)
[ -e "$LIBASAN" ] && [[ $LIBASAN == /* ]] || { echo "asan_run.sh: gcc has no libasan.so"; exit 2; }

rm -rf "$LOGS"
mkdir -p "$LOGS"

# ---- build
# -fno-wrapv undoes CPython's -fwrapv for this build only, so signed overflow in
# the extension is reported. float-cast-overflow is not part of
# -fsanitize=undefined in gcc. extra_compile_args' -O2 comes last and stays.
SAN="-fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=undefined,float-cast-overflow"
echo "asan: building goloop._core with $SAN into build/asan"
if ! CFLAGS="$SAN -fno-wrapv -fno-omit-frame-pointer -g" LDFLAGS="$SAN" \
        "$PY" setup.py build_py --build-lib "$LIB" \
        build_ext --force --build-lib "$LIB" --build-temp "$TMP" >"$LOGS/build.log" 2>&1; then
    cat "$LOGS/build.log"
    echo "asan: build failed"
    exit 1
fi
grep -E "(warning|error):" "$LOGS/build.log" | grep -v "^warning: build_py" || true

CORE=$(ls "$LIB"/goloop/_core.*.so)
syms=$(nm -D "$CORE")
for sym in __asan_report_load __ubsan_handle_type_mismatch; do
    grep -q "$sym" <<<"$syms" || { echo "asan: $CORE is not instrumented ($sym missing)"; exit 1; }
done

# ---- environment
# detect_leaks=0: CPython leaves objects allocated at exit by design.
# allow_user_segv_handler=1 (the default, spelled out): lets the Go runtime of
#   libgoloop.so (and faulthandler) install their SIGSEGV/SIGBUS/SIGFPE handlers
#   over ASAN's. Go needs them for its own nil-pointer panics and forwards faults
#   in non-Go code to the handler it found (faulthandler, then ASAN). With 0 a Go
#   nil dereference that Go would recover becomes a fatal ASAN SEGV report.
#   ASAN's handlers use SA_ONSTACK with their own sigaltstack (use_sigaltstack=1),
#   which Go's c-shared runtime accepts.
# log_path: reports land in files, so one from a subprocess whose stderr a test
#   captures (test_fork, test_dns) is still seen. UBSAN does not honour log_path
#   when ASAN is loaded, so its reports go to stderr: pytest runs with
#   --capture=sys (fd 2 is not captured and survives the process dying) and its
#   output is searched afterwards.
# PYTHONMALLOC=malloc: every Python object comes from malloc instead of pymalloc's
#   arenas, so a PyObject freed too early (a missing Py_INCREF) is a
#   heap-use-after-free that ASAN reports.
export LD_PRELOAD=$LIBASAN
export ASAN_OPTIONS="detect_leaks=0:allow_user_segv_handler=1:handle_segv=1:use_sigaltstack=1:detect_stack_use_after_return=1:halt_on_error=1:abort_on_error=0:log_path=$LOGS/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:report_error_type=1"
export PYTHONMALLOC=malloc
export PYTHONPATH=$LIB
export GOLOOP_TEST_LOOPS=goloop GOLOOP_REQUIRED=1
# tests that bound RSS skip that bound: ASAN's quarantine keeps freed memory
export GOLOOP_ASAN=1
# CPython's module tests get a per-test hang guard (test_cpython_modules.py:
# 10 s). Sanitized C and PYTHONMALLOC=malloc make TLS handshakes several times
# slower: test_ssl's test_create_connection_ssl_1 (25 handshakes and transfers,
# the clients served one at a time) takes about 21 s here on an idle machine,
# and ran past 10 s. A hang still ends at this bound. Its own limit on the last
# client's handshake (support.SHORT_TIMEOUT, 30 s) timed it out once with the
# machine loaded: CPython's own limits are scaled x4, as regrtest scales them
# for a slow worker (cpython_modules_run.py).
export GOLOOP_CPYTHON_TEST_TIMEOUT=${GOLOOP_CPYTHON_TEST_TIMEOUT:-60}
export GOLOOP_CPYTHON_SLOW=${GOLOOP_CPYTHON_SLOW:-4}

where=$(cd tests && "$PY" -c 'import goloop, goloop._core as c; print(c.__file__)')
[ "$where" = "$CORE" ] || { echo "asan: tests would import $where, not $CORE"; exit 1; }

# ---- tests
SANITIZER_LINE=": runtime error: |ERROR: (Address|Undefined|Leak)Sanitizer|SUMMARY: (Address|Undefined)Sanitizer"
status=0
# io_uring runs the whole suite. The C extension does not know which backend
# it runs on; what differs on epoll is the order and timing of completions
# (sends that finish inside the batch, readiness instead of completions), and
# that matters to the C code that follows a connection's life. So epoll runs
# the files whose C paths depend on that order (transports, TLS, close,
# sendfile, sock ops, datagrams) and leaves out the ones that check argument
# validation, signals, subprocesses, DNS and CPython's own tests, which take
# the same C paths on either backend: this keeps `make test` under 20 minutes
# (ASAN_EPOLL_TESTS=. runs everything).
ASAN_EPOLL_TESTS=${ASAN_EPOLL_TESTS:-"test_transport.py test_tcp.py test_tls.py test_ktls.py test_gotls.py test_start_tls.py
    test_lifecycle.py test_chaos.py test_close.py test_accept.py test_sendfile.py test_sock.py
    test_sock_sendfile.py test_udp.py test_unix.py test_reliability.py"}
for backend in io_uring epoll; do
    log=$LOGS/pytest-$backend.log
    tests=${ASAN_TESTS:-.}
    [ $backend = epoll ] && tests=$ASAN_EPOLL_TESTS
    echo "asan: pytest, goloop on $backend (-v output in build/asan-logs/${log##*/})"
    # -v names each test before it runs, so the log's last test line is the one
    # a sanitizer abort stopped in.
    (cd tests && GOLOOP_BACKEND=$backend "$PY" -m pytest -v -p no:cacheprovider \
        --timeout 120 --tb=native --capture=sys --durations=30 $tests) >"$log" 2>&1
    rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "asan: last test started: $(grep -E '^[^ ]+\.py::' "$log" | tail -n 1 | cut -d' ' -f1)"
        # the first sanitizer (or faulthandler) lines, else pytest's own summary
        first=$(grep -nE "$SANITIZER_LINE|^Fatal Python error" "$log" | head -n 1 | cut -d: -f1)
        if [ -n "$first" ]; then
            sed -n "${first},$((first + 24))p" "$log"
        else
            tail -n 30 "$log"
        fi
        echo "asan: pytest on $backend exited $rc"
        status=1
    else
        tail -n 1 "$log"
    fi
done

# ---- reports
unset LD_PRELOAD
shopt -s nullglob
reports=("$LOGS"/asan.*)
if [ ${#reports[@]} -gt 0 ]; then
    for f in "${reports[@]}"; do
        echo "==== $f"
        cat "$f"
    done
    status=1
fi
if grep -lE "$SANITIZER_LINE" "$LOGS"/pytest-*.log; then
    echo "asan: sanitizer output in the pytest logs above"
    status=1
fi
if [ $status -eq 0 ]; then
    echo "asan: no sanitizer report (logs in build/asan-logs)"
else
    echo "asan: FAILED (logs in build/asan-logs)"
fi
exit $status

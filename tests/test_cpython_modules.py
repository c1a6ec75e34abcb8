"""CPython 3.11's loop-agnostic asyncio test modules, run whole under each
loop's policy: every test that passes on asyncio's own loop must pass on
goloop too, apart from the known failures listed below with their reasons.

test_cpython_asyncio.py instantiates the loop-parametrized mixins
(test_events, test_sock_lowlevel, test_server, test_buffered_proto). The
modules here are not parametrized by loop: their tests get a loop from the
policy (asyncio.new_event_loop(), asyncio.run(), IsolatedAsyncioTestCase),
so installing a loop's EventLoopPolicy runs them on that loop. Each test's
record says how many loops the policy made while it ran; tests that made
none (those on test_utils.TestLoop, or on no loop) prove nothing about
goloop, and the counts are checked equal across loops, so a test that
silently stopped using the policy shows up.

Left out: test_futures, test_pep492, test_protocols and test_transports
(their tests make no loop from the policy: TestLoop, mocks or none),
test_runners (its tests install policies of their own), test_events,
test_sock_lowlevel, test_server, test_buffered_proto (in
test_cpython_asyncio.py), and the selector-, proactor- and Windows-specific
modules. test_subprocess and test_sendfile belong to the helpers adding
subprocesses and sendfile.

Each loop runs the modules in fresh interpreters (cpython_modules_run.py),
in parallel: under a minute for asyncio and goloop on two idle cores.
GOLOOP_CPYTHON_SUMMARY=path writes the counts per module and loop and every
failure's traceback tail there.
"""
import collections
import concurrent.futures
import json
import os
import subprocess
import sys

import pytest

import loops

HERE = os.path.dirname(os.path.abspath(__file__))

try:
    import test.test_asyncio.test_streams  # noqa: F401  Debian's libpython3.11-testsuite
except ImportError as exc:  # pragma: no cover
    pytest.skip(f"CPython's test suite is not installed: {exc}", allow_module_level=True)

# Grouped into runs of similar length (test_tasks alone takes ~15 s).
GROUPS = [
    ["test_tasks"],
    ["test_ssl", "test_sslproto"],
    ["test_streams", "test_locks", "test_queues", "test_taskgroups", "test_timeouts",
     "test_waitfor", "test_futures2", "test_threads", "test_context"],
]
MODULES = [m for g in GROUPS for m in g]

P = "test.test_asyncio."

# Known goloop failures: test id -> reason. Each runs and must still fail
# (a pass means the entry is stale: remove it), except those in
# GOLOOP_SKIPPED, which are not run at all because they hang.
GOLOOP_KNOWN_FAILURES = {
}
GOLOOP_SKIPPED = {
}

# uvloop is run as a reference only, with GOLOOP_CPYTHON_UVLOOP=1 (its
# failures are reported in the summary, not judged): 217 of its 1212 runs
# fail on test_utils.TestCase.close_loop reading loop._default_executor.
PASSED = ("pass", "xfail")


def _run(loop_name, modules, skips):
    env = dict(os.environ)
    pkg_dir = os.path.dirname(os.path.dirname(loops.goloop.__file__)) if loops.goloop else ""
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_dir, env.get("PYTHONPATH", "")) if p)
    if loop_name != "goloop" and os.environ.get("GOLOOP_ASAN") == "1":
        # Under tests/asan_run.sh the reference loops run without the
        # sanitizers: no goloop C code is theirs to check, and sanitized they
        # doubled the pass's time (214 s). loops.py then imports the installed
        # goloop, if any; the asyncio policy does not use it.
        for k in ("LD_PRELOAD", "PYTHONMALLOC", "GOLOOP_CPYTHON_SLOW"):
            env.pop(k, None)
        env["PYTHONPATH"] = ""
        env["GOLOOP_REQUIRED"] = "0"
    env["GOLOOP_CPYTHON_SKIP"] = json.dumps(skips)
    env.setdefault("GOLOOP_CPYTHON_TEST_TIMEOUT", "10")
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "cpython_modules_run.py"), loop_name, *modules],
        env=env, capture_output=True, text=True, timeout=400, cwd=HERE)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(
            f"{loop_name} {modules}: no result (exit {proc.returncode})\n"
            + proc.stderr[-6000:]) from None


@pytest.fixture(scope="module")
def results():
    """{loop name: {test id: record}} for asyncio (the reference), goloop and,
    with GOLOOP_CPYTHON_UVLOOP=1, uvloop; asyncio runs even when
    GOLOOP_TEST_LOOPS leaves it out, as every comparison is against it."""
    names = ["asyncio", "goloop"]
    if (os.environ.get("GOLOOP_CPYTHON_UVLOOP") == "1" and "uvloop" in loops.SELECTED
            and not loops.unavailable("uvloop")):
        names.append("uvloop")
    jobs = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 1)) as ex:
        for name in names:
            skips = GOLOOP_SKIPPED if name == "goloop" else {}
            for group in GROUPS:
                jobs[ex.submit(_run, name, group, skips)] = name
        out = {name: {} for name in names}
        for fut, name in jobs.items():
            out[name].update(fut.result())
    _write_summary(out)
    return out


def _write_summary(out):
    """Counts per module and loop, for the report (GOLOOP_CPYTHON_SUMMARY=path)."""
    path = os.environ.get("GOLOOP_CPYTHON_SUMMARY")
    if not path:
        return
    table = {}
    for name, recs in out.items():
        for tid, rec in recs.items():
            mod = tid[len(P):].split(".")[0] if tid.startswith(P) else "?"
            table.setdefault(mod, {}).setdefault(name, collections.Counter())[rec["outcome"]] += 1
    with open(path, "w") as f:
        json.dump({"modules": table,
                   "failures": {name: {t: r for t, r in recs.items()
                                       if r["outcome"] in ("fail", "error", "xpass")}
                                for name, recs in out.items()}}, f, indent=1)


def _of(module, recs):
    return {t: r for t, r in recs.items() if t.startswith(P + module + ".")}


@pytest.mark.timeout(420)
@pytest.mark.parametrize("module", MODULES)
def test_module_on_goloop(goloop, module, results):
    ref = _of(module, results["asyncio"])
    got = _of(module, results["goloop"])
    assert ref, f"asyncio ran no test of {module}"
    problems = []
    for tid, want in sorted(ref.items()):
        have = got.get(tid)
        if have is None:
            problems.append(f"{tid}: not run on goloop")
            continue
        if tid in GOLOOP_SKIPPED:
            assert have["outcome"] == "skip", (tid, have)
            continue
        if tid in GOLOOP_KNOWN_FAILURES:
            if have["outcome"] in PASSED:
                problems.append(f"{tid}: passes now; remove it from GOLOOP_KNOWN_FAILURES")
            continue
        if want["outcome"] in PASSED and have["outcome"] not in PASSED:
            problems.append(f"{tid}: {have['outcome']} on goloop, {want['outcome']} on asyncio\n"
                            + have.get("detail", ""))
        # The same tests make loops from the policy on both: goloop's ran on goloop.
        if have["outcome"] in PASSED and have["loops"] != want["loops"]:
            problems.append(f"{tid}: made {have['loops']} loops on goloop, "
                            f"{want['loops']} on asyncio")
    assert not problems, "\n".join(problems)


def test_known_lists_name_real_tests(goloop, results):
    ids = set(results["asyncio"])
    stale = [t for t in list(GOLOOP_KNOWN_FAILURES) + list(GOLOOP_SKIPPED) if t not in ids]
    assert not stale, stale

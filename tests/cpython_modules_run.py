"""Run CPython 3.11's asyncio test modules with one loop's policy installed.

    python cpython_modules_run.py LOOP MODULE [MODULE ...]

LOOP is goloop, uvloop or asyncio; MODULE a name under test.test_asyncio.
Prints one JSON object: for each test id its outcome, how many loops the
policy made while it ran (0: the test ran on no loop of LOOP's, e.g. on
test_utils.TestLoop), and for a failure the last lines of its traceback.
Used by test_cpython_modules.py, in a fresh interpreter per loop and module
set, so that one module's leftovers (a policy, a thread, a loop) reach no
other run.
"""
import asyncio
import faulthandler
import importlib
import json
import os
import signal
import sys
import time
import unittest

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import loops  # noqa: E402

made = [0]
# Per test: a hang becomes that test's error and the run goes on. The alarm
# reaches a loop waiting in Go at once (the loop wakes for signals, as for
# Ctrl-C), so the exception unwinds out of run_until_complete.
TEST_TIMEOUT = float(os.environ.get("GOLOOP_CPYTHON_TEST_TIMEOUT", "20"))


class TestTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise TestTimeout(f"test still running after {TEST_TIMEOUT:g} s")


def _policy_class(name):
    if name == "goloop":
        base = loops.goloop.EventLoopPolicy
    elif name == "uvloop":
        base = loops.uvloop.EventLoopPolicy
    else:
        base = asyncio.DefaultEventLoopPolicy

    class Counting(base):
        def new_event_loop(self):
            made[0] += 1
            return super().new_event_loop()
    return Counting


def _summary(err_text, lines=6):
    tail = [ln for ln in err_text.strip().splitlines() if ln.strip()]
    return "\n".join(tail[-lines:])


class Result(unittest.TestResult):
    def __init__(self):
        super().__init__()
        self.outcomes = {}
        self._made_before = 0

    def startTest(self, test):
        super().startTest(test)
        self._made_before = made[0]
        self._t0 = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, TEST_TIMEOUT)

    def stopTest(self, test):
        signal.setitimer(signal.ITIMER_REAL, 0)
        super().stopTest(test)

    def _record(self, test, outcome, detail=None):
        entry = {"outcome": outcome, "loops": made[0] - self._made_before,
                 "seconds": round(time.monotonic() - self._t0, 3)}
        if detail:
            entry["detail"] = detail
        # A test that errs in tearDown after passing is recorded twice; the
        # worse outcome stands.
        old = self.outcomes.get(test.id())
        if old is None or old["outcome"] in ("pass", "skip"):
            self.outcomes[test.id()] = entry
        # Progress on stderr: what ran before a hang that ends the process.
        print(f"{test.id()} {outcome} {entry['seconds']}s", file=sys.stderr, flush=True)

    def addSuccess(self, test):
        self._record(test, "pass")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._record(test, "fail", _summary(self.failures[-1][1]))

    def addError(self, test, err):
        super().addError(test, err)
        if isinstance(test, unittest.TestCase):
            self._record(test, "error", _summary(self.errors[-1][1]))
        else:  # setUpModule/tearDownModule and the like
            self.outcomes[str(test)] = {"outcome": "error", "loops": 0, "seconds": 0,
                                        "detail": _summary(self.errors[-1][1])}

    def addSkip(self, test, reason):
        self._record(test, "skip", reason)

    def addExpectedFailure(self, test, err):
        self._record(test, "xfail")

    def addUnexpectedSuccess(self, test):
        self._record(test, "xpass")


def _skip_known(suite, skips):
    """Skip the tests named in skips (id -> reason) without running them:
    a test that hangs on this loop would stall the whole run."""
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            _skip_known(test, skips)
        elif test.id() in skips:
            def skipped():
                pass
            skipped.__unittest_skip__ = True
            skipped.__unittest_skip_why__ = skips[test.id()]
            setattr(test, test._testMethodName, skipped)


def main():
    name, modules = sys.argv[1], sys.argv[2:]
    skips = json.loads(os.environ.get("GOLOOP_CPYTHON_SKIP", "{}"))
    # A hang inside Go or C would never reach a Python timeout: dump every
    # stack and exit, so the caller sees where.
    faulthandler.dump_traceback_later(float(os.environ.get("GOLOOP_MODULE_TIMEOUT", "300")),
                                      exit=True)
    signal.signal(signal.SIGALRM, _on_alarm)
    slow = float(os.environ.get("GOLOOP_CPYTHON_SLOW", "1"))
    if slow > 1:
        # A slow build (ASAN: the whole interpreter allocates through the
        # sanitizer) scales the tests' own time limits, as CPython's regrtest
        # does for a slow worker. test_ssl's test_create_connection_ssl_1 has
        # 25 clients served one at a time by a blocking thread, the last one's
        # handshake bounded by SHORT_TIMEOUT (30 s): 21 s under ASAN on an idle
        # machine, so a busy one timed it out.
        from test import support
        support.SHORT_TIMEOUT *= slow
        support.LONG_TIMEOUT *= slow
    policy = _policy_class(name)
    result = Result()
    for modname in modules:
        mod = importlib.import_module(f"test.test_asyncio.{modname}")
        suite = unittest.defaultTestLoader.loadTestsFromModule(mod)
        _skip_known(suite, skips)
        # Each module's tearDownModule resets the policy to None.
        asyncio.set_event_loop_policy(policy())
        suite.run(result)
        # unittest runs the last module's tearDownModule from the runner.
        suite._tearDownPreviousClass(None, result)
        suite._handleModuleTearDown(result)
    asyncio.set_event_loop_policy(None)
    json.dump(result.outcomes, sys.stdout)
    sys.stdout.flush()
    # A test that timed out may have left a thread blocked for good (a
    # server thread waiting for its client); it must not keep us alive.
    os._exit(0)


if __name__ == "__main__":
    main()

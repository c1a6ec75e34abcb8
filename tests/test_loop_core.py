"""The loop core: running and stopping, time and timers, callbacks and handles, futures
and tasks, the exception handler, debug mode, async generators and executors.
asyncio's selector loop is the specification every assertion here was checked on."""

import asyncio
import concurrent.futures
import contextvars
import logging
import threading
import time

import pytest

from bounded import run


# -- running, stopping, closing ----------------------------------------------------

def test_run_until_complete_returns_result(loop):
    async def answer():
        await asyncio.sleep(0)
        return 42
    assert loop.run_until_complete(answer()) == 42
    assert not loop.is_running()


def test_run_until_complete_raises_coroutine_exception(loop):
    async def boom():
        raise ZeroDivisionError
    with pytest.raises(ZeroDivisionError):
        loop.run_until_complete(boom())


def test_run_until_complete_accepts_future(loop):
    fut = loop.create_future()
    loop.call_soon(fut.set_result, "done")
    assert loop.run_until_complete(fut) == "done"


def test_run_until_complete_rejects_non_awaitable(loop):
    with pytest.raises(TypeError):
        loop.run_until_complete(42)


def test_run_until_complete_stopped_early_raises(loop):
    async def stop_then_wait():
        loop.stop()
        await asyncio.sleep(0.01)
    with pytest.raises(RuntimeError, match="Event loop stopped before Future completed"):
        loop.run_until_complete(stop_then_wait())


def test_run_forever_until_stop(loop):
    seen = []

    def cb():
        seen.append(loop.is_running())
        loop.stop()
    loop.call_soon(cb)
    assert not loop.is_running()
    loop.run_forever()
    assert seen == [True]
    assert not loop.is_running()


def test_stop_before_run_forever_runs_one_iteration(loop):
    # asyncio: stop() before run_forever() runs the callbacks already scheduled, but
    # not those they schedule in turn.
    order = []
    loop.call_soon(lambda: (order.append("a"), loop.call_soon(order.append, "c")))
    loop.call_soon(order.append, "b")
    loop.stop()
    loop.run_forever()
    assert order == ["a", "b"]
    loop.stop()
    loop.run_forever()
    assert order == ["a", "b", "c"]


def test_loop_can_run_again_after_stop(loop):
    for i in range(3):
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert loop.run_until_complete(asyncio.sleep(0, "again")) == "again"


def test_nested_run_raises(loop):
    async def nested():
        with pytest.raises(RuntimeError):
            loop.run_forever()
        coro = asyncio.sleep(0)
        try:
            with pytest.raises(RuntimeError):
                loop.run_until_complete(coro)
        finally:
            coro.close()
        return "ok"
    assert run(loop, nested()) == "ok"


def test_running_loop_cannot_close(loop):
    async def close_inside():
        with pytest.raises(RuntimeError):
            loop.close()
    run(loop, close_inside())
    assert not loop.is_closed()


def test_close_is_idempotent(loop):
    assert not loop.is_closed()
    loop.close()
    assert loop.is_closed()
    loop.close()
    assert loop.is_closed()


def test_get_running_loop_inside(loop):
    async def which():
        return asyncio.get_running_loop()
    assert run(loop, which()) is loop
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


# -- time and timers ---------------------------------------------------------------

def test_time_is_monotonic_clock(loop):
    # asyncio's loop.time() is time.monotonic(); libraries compare the two.
    before = time.monotonic()
    t = loop.time()
    after = time.monotonic()
    assert before - 0.001 <= t <= after + 0.001


@pytest.mark.xfail_loop("uvloop", reason="uvloop's time() is libuv's millisecond clock")
def test_time_has_sub_millisecond_resolution(loop):
    async def sample():
        seen = set()
        deadline = time.monotonic() + 0.005
        while time.monotonic() < deadline:
            seen.add(loop.time())
        return sorted(seen)
    values = run(loop, sample())
    steps = [b - a for a, b in zip(values, values[1:])]
    # 0.0009, not 0.001: a millisecond clock's steps can come out a float
    # ulp under 0.001 (1234.567 - 1234.566), which would pass by chance.
    assert steps and min(steps) < 0.0009, steps[:5]


@pytest.mark.xfail_loop("uvloop", reason="uvloop rounds delays to libuv's "
                        "milliseconds: 10.1 ms fires after 10 ms, 0.5 ms becomes call_soon")
def test_timer_never_fires_early(loop):
    async def measure():  # delay: the loop variable below
        fired = loop.create_future()
        start_mono = time.monotonic()
        handle = loop.call_later(
            delay, lambda: fired.set_result((loop.time(), time.monotonic())))
        when = handle.when()
        at_loop, at_mono = await fired
        return when, at_loop, at_mono - start_mono
    for delay in [0.0005, 0.001, 0.0049, 0.0101, 0.03] * 3:
        when, at_loop, elapsed = run(loop, measure())
        assert at_loop >= when, (delay, at_loop, when)
        assert elapsed >= delay - 1e-6, (elapsed, delay)


def test_call_later_fires_in_deadline_order(loop):
    order = []
    loop.call_later(0.03, order.append, 3)
    loop.call_later(0.01, order.append, 1)
    loop.call_later(0.02, order.append, 2)
    loop.call_later(0.04, loop.stop)
    loop.run_forever()
    assert order == [1, 2, 3]


@pytest.mark.xfail_loop("uvloop", reason="uvloop's TimerHandle.when() is the "
                        "deadline rounded to milliseconds, not the one passed to call_at")
def test_call_at_uses_loop_time(loop):
    async def go():
        fired = loop.create_future()
        when = loop.time() + 0.0205  # not a whole millisecond
        h = loop.call_at(when, lambda: fired.set_result(loop.time()))
        assert h.when() == when
        return when, await fired
    when, at = run(loop, go())
    assert at >= when


def test_call_later_zero_and_negative_run_soon(loop):
    order = []
    loop.call_later(0, order.append, "zero")
    loop.call_later(-5, order.append, "negative")
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    assert sorted(order) == ["negative", "zero"]


def test_call_later_passes_arguments(loop):
    got = loop.create_future()
    loop.call_later(0.001, lambda *a: got.set_result(a), 1, "two", None)
    assert run(loop, got) == (1, "two", None)


def test_timer_when_is_absolute(loop):
    now = loop.time()
    h = loop.call_later(100, lambda: None)
    # 1e-6: uvloop computes when() in milliseconds, and its sum may be one
    # float ulp above time() + 100.
    assert now + 99.9 < h.when() <= loop.time() + 100 + 1e-6
    h.cancel()


def test_long_timer_does_not_keep_stopped_loop_busy(loop):
    # A cancelled far-away timer must not be waited for.
    h = loop.call_later(3600, lambda: None)
    h.cancel()
    t0 = time.monotonic()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert time.monotonic() - t0 < 5


def test_many_timers(loop):
    fired = []
    n = 2000
    for i in range(n):
        loop.call_later((i % 20) / 1000, fired.append, i)
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert sorted(fired) == list(range(n))


# -- call_soon ---------------------------------------------------------------------

def test_call_soon_fifo(loop):
    order = []
    for i in range(200):
        loop.call_soon(order.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert order == list(range(200))


def test_call_soon_scheduled_inside_runs_after_current_batch(loop):
    order = []

    def first():
        order.append("first")
        loop.call_soon(order.append, "nested")
    loop.call_soon(first)
    loop.call_soon(order.append, "second")
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert order == ["first", "second", "nested"]


def test_call_soon_context(loop):
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in ctx")
    got = []
    loop.call_soon(lambda: got.append(var.get()), context=ctx)
    loop.call_soon(lambda: got.append(var.get()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert got == ["in ctx", "default"]


@pytest.mark.parametrize("bad", [None, 42, "string"])
@pytest.mark.xfail_loop("uvloop", reason="uvloop does not check callbacks in "
                        "debug mode")
def test_debug_call_soon_rejects_non_callable(loop, bad):
    # asyncio 3.11 checks the callback only in debug mode.
    loop.set_debug(True)
    with pytest.raises(TypeError):
        loop.call_soon(bad)


@pytest.mark.xfail_loop("uvloop", reason="uvloop does not check callbacks in "
                        "debug mode")
def test_debug_call_soon_rejects_coroutine_function(loop):
    loop.set_debug(True)

    async def coro_fn():
        pass
    with pytest.raises(TypeError):
        loop.call_soon(coro_fn)


# -- handles -----------------------------------------------------------------------

def test_handle_cancel(loop):
    ran = []
    h = loop.call_soon(ran.append, 1)
    assert not h.cancelled()
    h.cancel()
    assert h.cancelled()
    h.cancel()  # twice is harmless
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == []


def test_timer_handle_cancel(loop):
    ran = []
    h = loop.call_later(0.005, ran.append, 1)
    assert not h.cancelled()
    h.cancel()
    assert h.cancelled()
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert ran == []


def test_handle_cancel_from_earlier_callback(loop):
    ran = []
    h2 = None

    def first():
        ran.append(1)
        h2.cancel()
    loop.call_soon(first)
    h2 = loop.call_soon(ran.append, 2)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == [1]


@pytest.mark.skipif(not hasattr(asyncio.Handle, "get_context"),
                    reason="Handle.get_context() is new in Python 3.12")
def test_handle_get_context(loop):
    ctx = contextvars.copy_context()
    h = loop.call_soon(lambda: None, context=ctx)
    assert h.get_context() is ctx
    th = loop.call_later(10, lambda: None, context=ctx)
    assert th.get_context() is ctx
    th.cancel()
    default = loop.call_soon(lambda: None).get_context()
    assert isinstance(default, contextvars.Context)


def test_handle_repr_names_callback(loop):
    def my_distinct_callback():
        pass
    h = loop.call_soon(my_distinct_callback)
    assert "my_distinct_callback" in repr(h)
    h.cancel()
    assert "cancelled" in repr(h)
    th = loop.call_later(10, my_distinct_callback)
    assert "my_distinct_callback" in repr(th)
    th.cancel()


def test_cancelled_timer_handle_still_has_when(loop):
    th = loop.call_later(5, lambda: None)
    when = th.when()
    th.cancel()
    assert th.when() == when


# -- call_soon_threadsafe ----------------------------------------------------------

def test_call_soon_threadsafe_wakes_waiting_loop(loop):
    # The loop has nothing to do but a timer an hour away; a call from another thread
    # must end its wait at once, not when the timer fires.
    loop.call_later(3600, lambda: None)
    woken = loop.create_future()
    sent = []

    def other_thread():
        time.sleep(0.05)  # let the loop block in its wait; the result holds either way
        sent.append(time.monotonic())
        loop.call_soon_threadsafe(lambda: woken.set_result(time.monotonic()))
    t = threading.Thread(target=other_thread)
    t.start()
    try:
        arrived = run(loop, woken)
    finally:
        t.join()
    assert arrived - sent[0] < 5.0  # vs an hour; generous for a loaded machine


def test_call_soon_threadsafe_many_threads(loop):
    n_threads, per_thread = 4, 500
    total = n_threads * per_thread
    count = [0]
    done = loop.create_future()

    def bump():
        count[0] += 1
        if count[0] == total:
            done.set_result(None)

    def spam():
        for _ in range(per_thread):
            loop.call_soon_threadsafe(bump)
    threads = [threading.Thread(target=spam) for _ in range(n_threads)]
    for t in threads:
        t.start()
    try:
        run(loop, done)
    finally:
        for t in threads:
            t.join()
    assert count[0] == total


def test_call_soon_threadsafe_ping_pong_never_loses_a_wake(loop):
    # Threads that each schedule a callback and wait for it to run before the
    # next (run_in_executor's pattern): the loop is waiting in nearly every one,
    # and goloop wakes it only then (the thread writes the wake-up itself). A wake
    # lost in the race between the loop starting to wait and a thread scheduling
    # would leave that thread waiting for good.
    n_threads, rounds = 4, 2000
    done = loop.create_future()
    finished = []

    def worker():
        ran = threading.Event()
        for i in range(rounds):
            ran.clear()
            loop.call_soon_threadsafe(ran.set)
            if not ran.wait(10):
                finished.append(f"round {i}: the callback never ran")
                break
        finished.append("ok")
        if len(finished) == n_threads:
            loop.call_soon_threadsafe(done.set_result, None)

    threads = [threading.Thread(target=worker) for _ in range(n_threads)]
    for t in threads:
        t.start()
    try:
        run(loop, done, timeout=60)
    finally:
        for t in threads:
            t.join()
    assert finished == ["ok"] * n_threads


def test_call_soon_threadsafe_context_and_args(loop):
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "threaded")
    got = loop.create_future()
    threading.Thread(target=lambda: loop.call_soon_threadsafe(
        lambda a: got.set_result((a, var.get())), "arg", context=ctx)).start()
    assert run(loop, got) == ("arg", "threaded")


def test_call_soon_threadsafe_returns_cancellable_handle(loop):
    ran = []
    h = loop.call_soon_threadsafe(ran.append, 1)
    h.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == []


# -- futures and tasks -------------------------------------------------------------

def test_create_future(loop):
    fut = loop.create_future()
    assert asyncio.isfuture(fut)
    assert fut.get_loop() is loop
    loop.call_soon(fut.set_result, 7)
    assert loop.run_until_complete(fut) == 7


def test_create_task_name(loop):
    async def work():
        return asyncio.current_task().get_name()
    task = loop.create_task(work(), name="my-task")
    assert task.get_name() == "my-task"
    assert loop.run_until_complete(task) == "my-task"
    unnamed = loop.create_task(work())
    assert loop.run_until_complete(unnamed).startswith("Task-")


def test_create_task_context(loop):
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "task ctx")

    async def read():
        var.set("changed inside")
        return var.get()
    task = loop.create_task(read(), context=ctx)
    assert loop.run_until_complete(task) == "changed inside"
    assert ctx[var] == "changed inside"
    assert var.get() == "default"


def test_create_task_rejects_non_coroutine(loop):
    with pytest.raises(TypeError):
        loop.create_task(lambda: None)


def test_task_factory(loop):
    made = []

    def factory(lp, coro, **kwargs):
        made.append(kwargs)
        return asyncio.Task(coro, loop=lp, **kwargs)
    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def work():
        return 5
    assert loop.run_until_complete(loop.create_task(work())) == 5
    ctx = contextvars.copy_context()
    assert loop.run_until_complete(loop.create_task(work(), context=ctx)) == 5
    assert len(made) == 2
    assert made[1].get("context") is ctx
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    assert loop.run_until_complete(loop.create_task(work())) == 5
    assert len(made) == 2


def test_task_factory_must_be_callable(loop):
    with pytest.raises(TypeError):
        loop.set_task_factory(42)


def test_gather_many_tasks(loop):
    async def child(i):
        await asyncio.sleep(0)
        return i

    async def parent():
        return await asyncio.gather(*(child(i) for i in range(500)))
    assert run(loop, parent()) == list(range(500))


# -- exception handler -------------------------------------------------------------

def test_exception_handler_default_is_none(loop):
    assert loop.get_exception_handler() is None


def test_exception_in_callback_reaches_handler(loop):
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append((lp, ctx)))

    exc = ValueError("from callback")

    def bad():
        raise exc
    loop.call_soon(bad)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(seen) == 1
    lp, ctx = seen[0]
    assert lp is loop
    assert ctx["exception"] is exc
    assert "message" in ctx


def test_loop_continues_after_callback_exception(loop):
    loop.set_exception_handler(lambda lp, ctx: None)
    ran = []
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(ran.append, "after")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == ["after"]


def test_call_exception_handler_custom(loop):
    seen = []

    def handler(lp, ctx):
        seen.append(ctx)
    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.call_exception_handler({"message": "hello", "extra": 1})
    assert seen == [{"message": "hello", "extra": 1}]
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_call_exception_handler_default_logs(loop, caplog):
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler(
            {"message": "distinctive message", "exception": KeyError("k")})
    assert "distinctive message" in caplog.text


def test_default_exception_handler_logs(loop, caplog):
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.default_exception_handler({"message": "via default handler"})
    assert "via default handler" in caplog.text


def test_exception_handler_must_be_callable(loop):
    with pytest.raises(TypeError):
        loop.set_exception_handler("not callable")


def test_failing_exception_handler_is_logged(loop, caplog):
    def handler(lp, ctx):
        raise RuntimeError("handler broke")
    loop.set_exception_handler(handler)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(lambda: 1 / 0)
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert "handler broke" in caplog.text


# -- debug mode --------------------------------------------------------------------

def test_debug_flag(loop):
    loop.set_debug(True)
    assert loop.get_debug()
    loop.set_debug(False)
    assert not loop.get_debug()


def test_debug_slow_callback_warning(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01

    def slow_distinct_callback():
        end = time.monotonic() + 0.05
        while time.monotonic() < end:
            pass
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(slow_distinct_callback)
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert "slow_distinct_callback" in caplog.text
    assert "took" in caplog.text


def test_debug_call_soon_from_other_thread_raises(loop):
    loop.set_debug(True)

    def from_thread():
        loop.call_soon(lambda: None)

    async def go():
        with pytest.raises(RuntimeError):
            await loop.run_in_executor(None, from_thread)
    run(loop, go())
    run(loop, loop.shutdown_default_executor())


def test_debug_call_soon_threadsafe_from_thread_is_fine(loop):
    loop.set_debug(True)
    got = loop.create_future()
    t = threading.Thread(target=loop.call_soon_threadsafe, args=(got.set_result, 1))
    t.start()
    assert run(loop, got) == 1
    t.join()


# -- async generators --------------------------------------------------------------

def test_shutdown_asyncgens_finalizes(loop):
    finalized = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            finalized.append(True)

    async def start():
        g = agen()
        assert await g.__anext__() == 1
        return g
    g = loop.run_until_complete(start())
    assert finalized == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert finalized == [True]
    del g


def test_asyncgen_finalized_when_collected(loop):
    finalized = loop.create_future()

    async def agen():
        try:
            yield 1
        finally:
            finalized.set_result(True)

    async def go():
        g = agen()
        await g.__anext__()
        del g  # the loop's finalizer hook schedules aclose()
        return await finalized
    assert run(loop, go()) is True


# -- executors ---------------------------------------------------------------------

def test_run_in_executor_default(loop):
    main = threading.get_ident()

    def work(a, b):
        return a + b, threading.get_ident()

    async def go():
        return await loop.run_in_executor(None, work, 2, 3)
    total, ident = run(loop, go())
    assert total == 5
    assert ident != main
    run(loop, loop.shutdown_default_executor())


def test_run_in_executor_propagates_exception(loop):
    def boom():
        raise KeyError("from thread")

    async def go():
        with pytest.raises(KeyError):
            await loop.run_in_executor(None, boom)
    run(loop, go())
    run(loop, loop.shutdown_default_executor())


def test_run_in_executor_explicit_executor(loop):
    with concurrent.futures.ThreadPoolExecutor(
            thread_name_prefix="explicit-pool") as pool:
        async def go():
            return await loop.run_in_executor(
                pool, lambda: threading.current_thread().name)
        assert run(loop, go()).startswith("explicit-pool")


def test_set_default_executor(loop):
    pool = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="default-pool")
    loop.set_default_executor(pool)

    async def go():
        return await loop.run_in_executor(
            None, lambda: threading.current_thread().name)
    try:
        assert run(loop, go()).startswith("default-pool")
    finally:
        run(loop, loop.shutdown_default_executor())
        pool.shutdown(wait=True)


@pytest.mark.xfail_loop("uvloop", reason="uvloop 0.17 accepts any Executor "
                        "(asyncio 3.11 raises TypeError)")
def test_set_default_executor_requires_thread_pool(loop):
    class NotAPool(concurrent.futures.Executor):
        pass
    with pytest.raises(TypeError):
        loop.set_default_executor(NotAPool())


def test_shutdown_default_executor_joins_threads(loop):
    started = []

    def work():
        started.append(threading.current_thread())
        return 1

    async def go():
        await loop.run_in_executor(None, work)
        await loop.shutdown_default_executor()
    run(loop, go())
    assert started and not started[0].is_alive()


def test_run_in_executor_after_shutdown_raises(loop):
    async def go():
        await loop.shutdown_default_executor()
        with pytest.raises(RuntimeError):
            loop.run_in_executor(None, lambda: None)
    run(loop, go())


def test_shutdown_default_executor_without_executor(loop):
    run(loop, loop.shutdown_default_executor())


def test_run_until_complete_foreign_future(loop):
    other = asyncio.SelectorEventLoop()
    try:
        fut = other.create_future()
        with pytest.raises(ValueError):
            loop.run_until_complete(fut)
    finally:
        other.close()


def test_exception_in_coroutine_task_reaches_handler_when_never_retrieved(loop):
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx))

    async def fail():
        raise KeyError("never retrieved")

    async def go():
        t = loop.create_task(fail())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert t.done()
    run(loop, go())
    import gc
    gc.collect()
    run(loop, asyncio.sleep(0))
    assert any(isinstance(ctx.get("exception"), KeyError) for ctx in seen), seen


def test_call_soon_threadsafe_keeps_per_thread_order(loop):
    got = []
    done = loop.create_future()
    n = 2000

    def add(i):
        got.append(i)
        if i == n - 1:
            done.set_result(None)

    def producer():
        for i in range(n):
            loop.call_soon_threadsafe(add, i)
    t = threading.Thread(target=producer)
    t.start()
    try:
        run(loop, done)
    finally:
        t.join()
    assert got == list(range(n))

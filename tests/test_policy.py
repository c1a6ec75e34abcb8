"""goloop's package-level API: new_event_loop, Loop, EventLoopPolicy, install, run.

This is goloop's own API, so most tests are goloop-only; where uvloop offers the same
entry point (new_event_loop, Loop, EventLoopPolicy, install) the test runs on uvloop
too, as the reference for what "drop-in like uvloop" means. goloop.run() is tested on
goloop only: uvloop 0.17 has no run() (its later run() is the model for goloop's)."""

import asyncio
import gc
import sys
import threading
import warnings

import pytest

import loops


@pytest.fixture(autouse=True)
def restore_policy():
    saved = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(saved)
    asyncio.set_event_loop(None)


def _module_params():
    params = []
    for name in ("goloop", "uvloop"):
        if name not in loops.SELECTED:
            continue
        why = loops.unavailable(name)
        params.append(pytest.param(name, id=name,
                                   marks=[pytest.mark.skip(reason=why)] if why else []))
    return params


@pytest.fixture(params=_module_params())
def mod(request):
    return getattr(loops, request.param)


def test_new_event_loop_makes_loop_instances(mod):
    lp = mod.new_event_loop()
    try:
        assert isinstance(lp, mod.Loop)
        assert isinstance(lp, asyncio.AbstractEventLoop)
        assert lp.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
    finally:
        lp.close()
    other = mod.new_event_loop()
    assert other is not lp
    other.close()


def test_loop_class_constructible(mod):
    lp = mod.Loop()
    try:
        assert lp.run_until_complete(asyncio.sleep(0, 1)) == 1
    finally:
        lp.close()


def test_goloop_loop_is_base_event_loop(goloop):
    # goloop.Loop extends asyncio.BaseEventLoop, so code checking for it works.
    lp = goloop.new_event_loop()
    try:
        assert isinstance(lp, asyncio.BaseEventLoop)
    finally:
        lp.close()


def test_policy_new_event_loop(mod):
    policy = mod.EventLoopPolicy()
    assert isinstance(policy, asyncio.AbstractEventLoopPolicy)
    lp = policy.new_event_loop()
    try:
        assert isinstance(lp, mod.Loop)
    finally:
        lp.close()


def test_policy_drives_asyncio_run(mod):
    asyncio.set_event_loop_policy(mod.EventLoopPolicy())

    async def main():
        return type(asyncio.get_running_loop())
    assert issubclass(asyncio.run(main()), mod.Loop)


def test_install_sets_policy(mod):
    if mod is loops.uvloop and not hasattr(mod, "install"):
        pytest.skip("this uvloop has no install()")
    mod.install()
    assert isinstance(asyncio.get_event_loop_policy(), mod.EventLoopPolicy)

    async def main():
        return asyncio.get_running_loop()
    assert isinstance(asyncio.run(main()), mod.Loop)


def test_policy_in_other_thread(goloop):
    asyncio.set_event_loop_policy(goloop.EventLoopPolicy())
    result = []

    def worker():
        result.append(asyncio.run(asyncio.sleep(0, "thread ok")))
    t = threading.Thread(target=worker)
    t.start()
    t.join(30)
    assert result == ["thread ok"]


# -- goloop.run --------------------------------------------------------------------

def test_run_returns_result_on_goloop(goloop):
    async def main():
        return type(asyncio.get_running_loop()), 42
    cls, value = goloop.run(main())
    assert value == 42
    assert issubclass(cls, goloop.Loop)


def test_run_leaves_policy_and_current_loop_alone(goloop):
    before = asyncio.get_event_loop_policy()
    goloop.run(asyncio.sleep(0))
    assert asyncio.get_event_loop_policy() is before
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_run_propagates_exception(goloop):
    async def main():
        raise LookupError("from main")
    with pytest.raises(LookupError):
        goloop.run(main())


@pytest.mark.parametrize("debug", [True, False])
def test_run_debug_flag(goloop, debug):
    async def main():
        return asyncio.get_running_loop().get_debug()
    assert goloop.run(main(), debug=debug) is debug


def test_run_debug_default(goloop, monkeypatch):
    monkeypatch.delenv("PYTHONASYNCIODEBUG", raising=False)

    async def main():
        return asyncio.get_running_loop().get_debug()
    expected = sys.flags.dev_mode
    assert goloop.run(main(), debug=None) is expected


def test_run_rejects_non_coroutine(goloop):
    # asyncio.run raises ValueError here.
    with pytest.raises(ValueError):
        goloop.run(lambda: None)


def test_run_inside_running_loop_raises(goloop):
    async def outer():
        coro = asyncio.sleep(0)
        try:
            with pytest.raises(RuntimeError):
                goloop.run(coro)
        finally:
            coro.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        goloop.run(outer())
        gc.collect()
    # Refusing must not leave half-started work behind (asyncio.run refuses first).
    assert [str(w.message) for w in caught
            if issubclass(w.category, RuntimeWarning)] == []


def test_run_cleans_up_like_asyncio_run(goloop):
    # asyncio.run cancels leftover tasks, finalizes async generators and shuts down
    # the default executor before closing the loop.
    state = {}

    async def leftover():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            state["agen_closed"] = True

    async def main():
        loop = asyncio.get_running_loop()
        asyncio.ensure_future(leftover())
        g = agen()
        await g.__anext__()
        state["g"] = g
        state["worker"] = await loop.run_in_executor(None, threading.current_thread)
        state["loop"] = loop
    goloop.run(main())
    assert state.get("cancelled")
    assert state.get("agen_closed")
    assert not state["worker"].is_alive()
    assert state["loop"].is_closed()

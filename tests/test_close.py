"""close(): it releases every fd the loop owns (and none the user owns), drops
pending callbacks without running them, and a closed loop refuses work with
RuntimeError, as asyncio's does."""

import asyncio
import gc
import os
import socket

import pytest

import loops
from bounded import run
from peers import Recorder


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


def _fds_after(before):
    gc.collect()
    after = loops.open_fds()
    return {fd: what for fd, what in after.items()
            if fd not in before or before[fd] != what}


def test_many_loops_leak_nothing(loop_name):
    factory = loops.factory(loop_name)
    # One loop first: process-wide fds opened once (libuv, a Go runtime) are not leaks.
    factory().close()
    before = loops.open_fds()
    for _ in range(20):
        lp = factory()
        lp.run_until_complete(asyncio.sleep(0))
        lp.close()
    assert _fds_after(before) == {}


def test_loops_never_run_leak_nothing(loop_name):
    factory = loops.factory(loop_name)
    factory().close()
    before = loops.open_fds()
    for _ in range(20):
        factory().close()
    assert _fds_after(before) == {}


def test_servers_and_connections_leak_nothing(loop_name, tmp_path):
    factory = loops.factory(loop_name)
    factory().close()
    before = loops.open_fds()
    lp = factory()

    async def go():
        tcp = await lp.create_server(Echo, "127.0.0.1", 0)
        unix = await lp.create_unix_server(Echo, str(tmp_path / "s"))
        for _ in range(5):
            tr, pr = await lp.create_connection(
                lambda: Recorder(lp), *tcp.sockets[0].getsockname())
            tr.write(b"x" * 100000)
            await pr.received(100000)
            tr.close()
            await pr.lost
            tr, pr = await lp.create_unix_connection(
                lambda: Recorder(lp), str(tmp_path / "s"))
            tr.write(b"y")
            await pr.received(1)
            tr.abort()
            await pr.lost
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        await lp.sock_sendall(a, b"z")
        await lp.sock_recv(b, 1)
        a.close()
        b.close()
        for srv in (tcp, unix):
            srv.close()
            await srv.wait_closed()
        # Let server-side transports see the EOF/RST and close.
        await asyncio.sleep(0.05)
    try:
        run(lp, go())
        run(lp, lp.shutdown_default_executor())
    finally:
        lp.close()
    assert _fds_after(before) == {}


def test_close_keeps_user_fds_open(loop):
    # Watching an fd does not make the loop its owner.
    a, b = socket.socketpair()
    with a, b:
        loop.add_reader(a, lambda: None)
        loop.add_writer(b, lambda: None)
        loop.close()
        os.fstat(a.fileno())
        os.fstat(b.fileno())
        b.send(b"still usable")
        assert a.recv(20) == b"still usable"


def test_remove_after_close_is_false(loop):
    a, b = socket.socketpair()
    with a, b:
        loop.add_reader(a, lambda: None)
        loop.close()
        assert not loop.remove_reader(a)
        assert not loop.remove_writer(a)


def test_close_drops_pending_callbacks(loop):
    ran = []
    loop.call_soon(ran.append, "soon")
    loop.call_later(0.001, ran.append, "later")
    loop.call_soon_threadsafe(ran.append, "threadsafe")
    loop.close()
    assert ran == []
    assert loop.is_closed()


def test_close_with_pending_task(loop):
    async def forever():
        await asyncio.sleep(3600)
    task = loop.create_task(forever())
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    assert not task.done()
    task._log_destroy_pending = False  # we know; keep the test output quiet


def test_close_after_stop_inside_run(loop):
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.close()
    assert loop.is_closed()


@pytest.mark.parametrize("call", [
    "run_forever", "run_until_complete", "call_soon", "call_later", "call_at",
    "call_soon_threadsafe", "create_task", "run_in_executor", "add_reader",
    "add_writer",
])
def test_closed_loop_raises_runtime_error(loop, call):
    loop.close()
    coro = asyncio.sleep(0)
    a, b = socket.socketpair()
    try:
        with pytest.raises(RuntimeError):
            if call == "run_forever":
                loop.run_forever()
            elif call == "run_until_complete":
                loop.run_until_complete(coro)
            elif call == "call_soon":
                loop.call_soon(lambda: None)
            elif call == "call_later":
                loop.call_later(1, lambda: None)
            elif call == "call_at":
                loop.call_at(loop.time() + 1, lambda: None)
            elif call == "call_soon_threadsafe":
                loop.call_soon_threadsafe(lambda: None)
            elif call == "create_task":
                loop.create_task(coro)
            elif call == "run_in_executor":
                loop.run_in_executor(None, lambda: None)
            elif call == "add_reader":
                loop.add_reader(a, lambda: None)
            elif call == "add_writer":
                loop.add_writer(a, lambda: None)
    finally:
        coro.close()
        a.close()
        b.close()


def test_closed_loop_still_answers_queries(loop):
    loop.close()
    assert loop.is_closed()
    assert not loop.is_running()
    assert isinstance(loop.time(), float)
    loop.set_debug(True)
    assert loop.get_debug()


def test_close_shuts_down_default_executor(loop):
    import threading
    workers = []
    loop.run_until_complete(loop.run_in_executor(
        None, lambda: workers.append(threading.current_thread())))
    loop.close()
    workers[0].join(10)
    assert not workers[0].is_alive()

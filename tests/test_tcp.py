"""TCP servers and clients: create_server's options, the Server object,
create_connection's options, connect_accepted_socket, and asyncio's streams on top."""

import asyncio
import errno
import os
import socket
import subprocess

import pytest

import loops
from bounded import run
from peers import Echo, Recorder, full_listener, listener


async def echo_roundtrip(loop, host, port, payload=b"ping", **kwargs):
    tr, pr = await loop.create_connection(lambda: Recorder(loop), host, port, **kwargs)
    try:
        tr.write(payload)
        return await pr.received(len(payload))
    finally:
        tr.close()
        await pr.lost


def _has_ipv6():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback")


# -- create_server -----------------------------------------------------------------

def test_create_server_echo(loop):
    async def go():
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        async with srv:
            assert srv.is_serving()
            assert srv.get_loop() is loop
            (sock,) = srv.sockets
            assert sock.family == socket.AF_INET
            host, port = sock.getsockname()
            assert await echo_roundtrip(loop, host, port) == b"ping"
        assert not srv.is_serving()
    run(loop, go())


@needs_ipv6
def test_create_server_several_hosts(loop):
    async def go():
        srv = await loop.create_server(Echo, ["127.0.0.1", "::1"], 0)
        try:
            families = sorted(s.family for s in srv.sockets)
            assert families == sorted([socket.AF_INET, socket.AF_INET6])
            for s in srv.sockets:
                addr = s.getsockname()
                assert await echo_roundtrip(loop, addr[0], addr[1]) == b"ping"
        finally:
            srv.close()
            await srv.wait_closed()
    run(loop, go())


@needs_ipv6
def test_create_server_ipv6_only_flag(loop):
    # asyncio sets IPV6_V6ONLY on AF_INET6 listeners so dual binds do not clash.
    async def go():
        srv = await loop.create_server(Echo, "::1", 0)
        try:
            (s,) = srv.sockets
            assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        finally:
            srv.close()
            await srv.wait_closed()
    run(loop, go())


def test_create_server_all_interfaces(loop):
    async def go():
        srv = await loop.create_server(Echo, None, 0)
        try:
            # One listener per address family, each on its own ephemeral port.
            (v4,) = [s for s in srv.sockets if s.family == socket.AF_INET]
            assert v4.getsockname()[0] == "0.0.0.0"
            port = v4.getsockname()[1]
            assert await echo_roundtrip(loop, "127.0.0.1", port) == b"ping"
        finally:
            srv.close()
            await srv.wait_closed()
    run(loop, go())


def test_create_server_reuse_address(loop):
    async def go():
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        assert srv.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        srv.close()
        await srv.wait_closed()
        srv = await loop.create_server(Echo, "127.0.0.1", 0, reuse_address=False)
        assert not srv.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        srv.close()
        await srv.wait_closed()
    run(loop, go())


def test_create_server_reuse_port(loop):
    async def go():
        srv1 = await loop.create_server(Echo, "127.0.0.1", 0, reuse_port=True)
        port = srv1.sockets[0].getsockname()[1]
        assert srv1.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        srv2 = await loop.create_server(Echo, "127.0.0.1", port, reuse_port=True)
        try:
            assert srv2.sockets[0].getsockname()[1] == port
            assert await echo_roundtrip(loop, "127.0.0.1", port) == b"ping"
        finally:
            for s in (srv1, srv2):
                s.close()
                await s.wait_closed()
    run(loop, go())


def test_create_server_address_in_use(loop):
    async def go():
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        try:
            with pytest.raises(OSError) as info:
                await loop.create_server(Echo, "127.0.0.1", port)
            assert info.value.errno == errno.EADDRINUSE
        finally:
            srv.close()
            await srv.wait_closed()
    run(loop, go())


def _listen_backlog(port):
    # For a listening socket `ss` shows the backlog in the Send-Q column.
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                         text=True, timeout=10).stdout.split()
    return int(out[2])


@pytest.mark.skipif(subprocess.run(["which", "ss"], capture_output=True).returncode,
                    reason="needs ss (iproute2)")
def test_create_server_backlog(loop):
    async def go():
        srv = await loop.create_server(Echo, "127.0.0.1", 0, backlog=7)
        try:
            assert _listen_backlog(srv.sockets[0].getsockname()[1]) == 7
        finally:
            srv.close()
            await srv.wait_closed()
    run(loop, go())


def test_create_server_sock(loop):
    async def go():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        addr = sock.getsockname()
        srv = await loop.create_server(Echo, sock=sock)
        try:
            (s,) = srv.sockets
            assert s.fileno() == sock.fileno()
            assert s.getsockname() == addr
            assert await echo_roundtrip(loop, *addr) == b"ping"
        finally:
            srv.close()
            await srv.wait_closed()
        assert sock.fileno() == -1  # the server owned and closed it
    run(loop, go())


def test_create_server_bad_arguments(loop):
    async def go():
        with socket.socket() as sock:
            with pytest.raises(ValueError):
                await loop.create_server(Echo, "127.0.0.1", 0, sock=sock)
        with pytest.raises(ValueError):
            await loop.create_server(Echo)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            with pytest.raises(ValueError):
                await loop.create_server(Echo, sock=udp)
    run(loop, go())


def test_create_server_start_serving_false(loop):
    async def go():
        srv = await loop.create_server(Echo, "127.0.0.1", 0, start_serving=False)
        try:
            assert not srv.is_serving()
            addr = srv.sockets[0].getsockname()
            # Not listening yet: the kernel refuses the connection.
            with pytest.raises(ConnectionRefusedError):
                await loop.create_connection(asyncio.Protocol, *addr)
            await srv.start_serving()
            assert srv.is_serving()
            assert await echo_roundtrip(loop, *addr) == b"ping"
        finally:
            srv.close()
            await srv.wait_closed()
    run(loop, go())


def test_start_serving_later(loop):
    async def go():
        srv = await loop.create_server(Echo, "127.0.0.1", 0, start_serving=False)
        try:
            await srv.start_serving()
            await srv.start_serving()  # a second call is harmless
            assert srv.is_serving()
            assert await echo_roundtrip(loop, *srv.sockets[0].getsockname()) == b"ping"
        finally:
            srv.close()
            await srv.wait_closed()
    run(loop, go())


# -- Server ------------------------------------------------------------------------

def test_server_close_and_wait_closed(loop):
    async def go():
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        addr = srv.sockets[0].getsockname()
        srv.close()
        assert not srv.is_serving()
        await srv.wait_closed()
        assert not srv.sockets
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, *addr)
        srv.close()  # twice is fine
    run(loop, go())


def test_server_close_keeps_connections(loop):
    # asyncio: Server.close() stops listening; accepted connections stay open.
    async def go():
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        addr = srv.sockets[0].getsockname()
        tr, pr = await loop.create_connection(lambda: Recorder(loop), *addr)
        try:
            tr.write(b"one")
            await pr.received(3)
            srv.close()
            tr.write(b"two")
            assert await pr.received(6) == b"onetwo"
        finally:
            tr.close()
            await pr.lost
            await srv.wait_closed()
    run(loop, go())


def test_serve_forever(loop):
    async def go():
        srv = await loop.create_server(Echo, "127.0.0.1", 0, start_serving=False)
        addr = srv.sockets[0].getsockname()
        task = loop.create_task(srv.serve_forever())
        await asyncio.sleep(0)
        assert srv.is_serving()
        with pytest.raises(RuntimeError):
            await srv.serve_forever()  # already being served
        assert await echo_roundtrip(loop, *addr) == b"ping"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Cancelling serve_forever closes the server.
        assert not srv.is_serving()
        await srv.wait_closed()
        with pytest.raises(RuntimeError):
            await srv.serve_forever()  # closed
    run(loop, go())


def test_server_async_with(loop):
    async def go():
        async with await loop.create_server(Echo, "127.0.0.1", 0) as srv:
            addr = srv.sockets[0].getsockname()
            assert srv.is_serving()
            assert await echo_roundtrip(loop, *addr) == b"ping"
        assert not srv.is_serving()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, *addr)
    run(loop, go())


def test_server_many_connections(loop):
    async def go():
        srv = await loop.create_server(Echo, "127.0.0.1", 0, backlog=200)
        addr = srv.sockets[0].getsockname()
        try:
            results = await asyncio.gather(*(
                echo_roundtrip(loop, *addr, payload=f"client {i}".encode())
                for i in range(100)))
            assert results == [f"client {i}".encode() for i in range(100)]
        finally:
            srv.close()
            await srv.wait_closed()
    run(loop, go(), timeout=30)


# -- create_connection -------------------------------------------------------------

def test_create_connection_local_addr(loop):
    async def go():
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                local_port = probe.getsockname()[1]
            tr, pr = await loop.create_connection(
                lambda: Recorder(loop), *srv.sockets[0].getsockname(),
                local_addr=("127.0.0.1", local_port))
            assert tr.get_extra_info("sockname") == ("127.0.0.1", local_port)
            tr.close()
            await pr.lost
        finally:
            srv.close()
            await srv.wait_closed()
    run(loop, go())


def test_create_connection_local_addr_in_use(loop):
    async def go():
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        taken = srv.sockets[0].getsockname()
        try:
            with pytest.raises(OSError) as info:
                await loop.create_connection(asyncio.Protocol, *taken, local_addr=taken)
            assert info.value.errno == errno.EADDRINUSE
        finally:
            srv.close()
            await srv.wait_closed()
    run(loop, go())


def test_create_connection_sock(loop):
    async def go():
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        try:
            sock = socket.socket()
            sock.connect(srv.sockets[0].getsockname())
            sock.setblocking(False)
            tr, pr = await loop.create_connection(lambda: Recorder(loop), sock=sock)
            assert tr.get_extra_info("socket").fileno() == sock.fileno()
            tr.write(b"via sock")
            assert await pr.received(8) == b"via sock"
            tr.close()
            await pr.lost
            assert sock.fileno() == -1  # the transport closed it
        finally:
            srv.close()
            await srv.wait_closed()
    run(loop, go())


def test_create_connection_bad_arguments(loop):
    async def go():
        with socket.socket() as sock:
            with pytest.raises(ValueError):
                await loop.create_connection(asyncio.Protocol, "127.0.0.1", 1, sock=sock)
        with pytest.raises(ValueError):
            await loop.create_connection(asyncio.Protocol)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            with pytest.raises(ValueError):
                await loop.create_connection(asyncio.Protocol, sock=udp)
        with pytest.raises(ValueError):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", 1,
                                         ssl_handshake_timeout=1)
    run(loop, go())


def test_create_connection_refused(loop):
    async def go():
        with listener() as l:
            addr = l.getsockname()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, *addr)
    run(loop, go())


def test_create_connection_refused_error_is_sock_connects(loop, loop_name):
    async def go():
        with listener() as l:
            addr = l.getsockname()
        with pytest.raises(ConnectionRefusedError) as info:
            await loop.create_connection(asyncio.Protocol, *addr)
        assert info.value.errno == errno.ECONNREFUSED
        if loop_name != "uvloop":  # uvloop words it as libuv does
            assert str(info.value) == f"[Errno 111] Connect call failed {addr}"
    run(loop, go())


_RESOLVES_ITSELF = ("uvloop resolves names in libuv, not through loop.getaddrinfo, "
                    "so it never sees the test's addresses")


def _fake_addresses(loop, infos):
    async def fake_getaddrinfo(host, port, **kw):
        return infos
    loop.getaddrinfo = fake_getaddrinfo


@pytest.mark.parametrize("family,proto", [(0, 0), (socket.AF_INET, 0),
                                          (socket.AF_INET, socket.IPPROTO_TCP)])
def test_create_connection_family_and_proto(loop, family, proto):
    async def go():
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        try:
            port = srv.sockets[0].getsockname()[1]
            got = await echo_roundtrip(loop, "127.0.0.1", port, family=family, proto=proto)
            assert got == b"ping"
        finally:
            srv.close()
            await srv.wait_closed()
    run(loop, go())


@pytest.mark.xfail_loop("uvloop", reason=_RESOLVES_ITSELF)
def test_create_connection_tries_addresses_in_turn(loop):
    # Addresses from loop.getaddrinfo (no DNS): the first refuses, the
    # second listens; the connection is to the second.
    async def go():
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        with listener() as l:
            refused = l.getsockname()
        _fake_addresses(loop, [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", refused),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ])
        try:
            tr, pr = await loop.create_connection(lambda: Recorder(loop), "two.example", port)
            assert tr.get_extra_info("peername") == ("127.0.0.1", port)
            tr.close()
            await pr.lost
        finally:
            del loop.getaddrinfo
            srv.close()
            await srv.wait_closed()
    run(loop, go())


@pytest.mark.xfail_loop("uvloop", reason=_RESOLVES_ITSELF)
def test_create_connection_all_addresses_refused(loop):
    # Two refusals with different words: asyncio names both.
    async def go():
        addrs = []
        for _ in range(2):
            with listener() as l:
                addrs.append(l.getsockname())
        _fake_addresses(loop, [(socket.AF_INET, socket.SOCK_STREAM, 6, "", a) for a in addrs])
        try:
            with pytest.raises(OSError) as info:
                await loop.create_connection(asyncio.Protocol, "two.example", 1)
            assert str(info.value) == ("Multiple exceptions: "
                                       f"[Errno 111] Connect call failed {addrs[0]}, "
                                       f"[Errno 111] Connect call failed {addrs[1]}")
        finally:
            del loop.getaddrinfo
    run(loop, go())


def test_cancelled_create_connection_closes_its_socket(loop):
    # The connect waits (the listener's accept queue is full) and is
    # cancelled: the socket is closed (the fixture checks no fd is left),
    # and the next connection works.
    async def go():
        full, fillers = full_listener()
        try:
            for _ in range(3):
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(
                        loop.create_connection(asyncio.Protocol, *full.getsockname()), 0.05)
            srv = await loop.create_server(Echo, "127.0.0.1", 0)
            try:
                port = srv.sockets[0].getsockname()[1]
                assert await echo_roundtrip(loop, "127.0.0.1", port) == b"ping"
            finally:
                srv.close()
                await srv.wait_closed()
        finally:
            for f in fillers:
                f.close()
            full.close()
    run(loop, go())


@pytest.mark.xfail_loop("uvloop", reason="uvloop 0.17's create_connection has no "
                        "happy_eyeballs_delay or interleave")
@pytest.mark.parametrize("delay,interleave", [(0.25, None), (0.1, 1), (None, 2)])
def test_create_connection_happy_eyeballs(loop, delay, interleave):
    async def go():
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        try:
            port = srv.sockets[0].getsockname()[1]
            got = await echo_roundtrip(loop, "localhost", port,
                                       happy_eyeballs_delay=delay,
                                       interleave=interleave)
            assert got == b"ping"
        finally:
            srv.close()
            await srv.wait_closed()
    run(loop, go())


@needs_ipv6
@pytest.mark.xfail_loop("uvloop", reason="uvloop 0.17's create_connection has no "
                        "happy_eyeballs_delay")
def test_happy_eyeballs_falls_back_to_second_family(loop):
    # Addresses come from loop.getaddrinfo (overridden here, no DNS involved): the
    # first, ::1, refuses; the second, 127.0.0.1, listens.
    async def go():
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", port if port else 0))
        infos = [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]

        async def fake_getaddrinfo(host, port_, **kw):
            return infos
        loop.getaddrinfo = fake_getaddrinfo
        try:
            got = await echo_roundtrip(loop, "dual.example", port,
                                       happy_eyeballs_delay=0.05)
            assert got == b"ping"
        finally:
            del loop.getaddrinfo
            srv.close()
            await srv.wait_closed()
    run(loop, go())


# -- connect_accepted_socket -------------------------------------------------------

def test_connect_accepted_socket(loop):
    async def go():
        with listener() as lsock:
            tr_c, pr_c = await loop.create_connection(
                lambda: Recorder(loop), *lsock.getsockname())
            accepted, _ = lsock.accept()
        accepted.setblocking(False)
        tr_s, pr_s = await loop.connect_accepted_socket(lambda: Recorder(loop), accepted)
        try:
            assert pr_s.transport is tr_s
            tr_c.write(b"to server")
            assert await pr_s.received(9) == b"to server"
            tr_s.write(b"to client")
            assert await pr_c.received(9) == b"to client"
            assert tr_s.get_extra_info("peername") == tr_c.get_extra_info("sockname")
        finally:
            tr_c.close()
            tr_s.close()
            await pr_c.lost
            await pr_s.lost
    run(loop, go())


def test_connect_accepted_socket_rejects_udp(loop):
    async def go():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            with pytest.raises(ValueError):
                await loop.connect_accepted_socket(asyncio.Protocol, udp)
    run(loop, go())


# -- streams -----------------------------------------------------------------------

def test_streams_echo(loop):
    async def handle(reader, writer):
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def client(addr, n):
        reader, writer = await asyncio.open_connection(*addr)
        lines = [f"client {n} line {i}\n".encode() for i in range(20)]
        for line in lines:
            writer.write(line)
        await writer.drain()
        writer.write_eof()
        got = [await reader.readline() for _ in lines]
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        return got == [l.upper() for l in lines]

    async def go():
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        addr = srv.sockets[0].getsockname()
        async with srv:
            results = await asyncio.gather(*(client(addr, n) for n in range(20)))
        assert all(results)
    run(loop, go(), timeout=30)


def test_streams_large_payload(loop):
    payload = bytes(range(256)) * 16384  # 4 MiB

    async def handle(reader, writer):
        data = await reader.readexactly(len(payload))
        writer.write(data)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def go():
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with srv:
            reader, writer = await asyncio.open_connection(*srv.sockets[0].getsockname())
            writer.write(payload)
            await writer.drain()
            got = await reader.readexactly(len(payload))
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
        assert got == payload
    run(loop, go(), timeout=30)


def test_listeners_sharing_a_socket_share_its_connections(loop_name):
    # A pre-fork server (gunicorn, uvicorn workers) has one listening socket
    # in several processes, each with its own loop: while one worker is busy,
    # the others must get the connections. io_uring's multishot accept kept
    # its place at the head of the socket's wait queue, so the first loop to
    # arm it took every connection, busy or not (400 of 400 measured with two
    # gunicorn workers). Two loops in two threads share the wait queue the
    # same way two processes do; loop 0 is kept busy (blocked in a callback)
    # while the connections arrive, and all of them must be served by loop 1.
    import threading
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    counts = [0, 0]
    ready = threading.Barrier(3)
    busy = threading.Event()
    release = threading.Event()
    stops = []

    def worker(i):
        lp = loops.factory(loop_name)()
        stop = lp.create_future()
        stops.append((lp, stop))

        class Hello(asyncio.Protocol):
            def connection_made(self, tr):
                counts[i] += 1
                tr.write(b"%d" % i)
                tr.close()

        def block():
            busy.set()
            release.wait(30)

        async def serve():
            srv = await lp.create_server(Hello, sock=socket.socket(fileno=os.dup(lsock.fileno())))
            ready.wait()
            if i == 0:
                lp.call_soon(block)
            await stop
            srv.close()
            await srv.wait_closed()
        lp.run_until_complete(serve())
        lp.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        ready.wait(timeout=10)
        assert busy.wait(10)
        for _ in range(50):
            with socket.create_connection(lsock.getsockname(), timeout=10) as c:
                assert c.recv(1) == b"1"
    finally:
        release.set()
        for lp, stop in stops:
            lp.call_soon_threadsafe(stop.set_result, None)
        for t in threads:
            t.join(10)
        lsock.close()
    assert counts == [0, 50]


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"),
                                         pytest.param(socket.AF_INET6, "::1", marks=needs_ipv6)],
                         ids=["ipv4", "ipv6"])
def test_create_connection_transport_addresses(loop, family, host):
    """create_connection's transport knows its sockname and peername as the
    socket says them, before and after close (goloop takes IPv4 ones from
    Go's connect instead of asking the socket: docs/architecture.md)."""

    async def go():
        srv = await loop.create_server(Echo, host, 0, family=family)
        async with srv:
            addr = srv.sockets[0].getsockname()
            tr, pr = await loop.create_connection(lambda: Recorder(loop), host, addr[1])
            sock = tr.get_extra_info("socket")
            want = {"sockname": sock.getsockname(), "peername": sock.getpeername()}
            seen = {k: tr.get_extra_info(k) for k in want}
            tr.close()
            await pr.lost
            after = {k: tr.get_extra_info(k) for k in want}
            return want, seen, after, addr

    want, seen, after, addr = run(loop, go())
    assert want["peername"][:2] == addr[:2]
    assert seen == want
    assert after == want

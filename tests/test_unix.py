"""Unix stream sockets: create_unix_server, create_unix_connection, sock=, abstract
names, stale socket files, errors, and asyncio's Unix streams."""

import asyncio
import os
import socket
import tempfile

import pytest

from bounded import run
from peers import Echo, Recorder


@pytest.fixture
def sock_path():
    with tempfile.TemporaryDirectory(prefix="goloop-test-") as d:
        yield os.path.join(d, "sock")


async def roundtrip(loop, path=None, payload=b"unix ping", **kwargs):
    tr, pr = await loop.create_unix_connection(lambda: Recorder(loop), path, **kwargs)
    try:
        tr.write(payload)
        return await pr.received(len(payload))
    finally:
        tr.close()
        await pr.lost


def test_unix_server_and_connection(loop, sock_path):
    async def go():
        srv = await loop.create_unix_server(Echo, sock_path)
        async with srv:
            assert srv.is_serving()
            (s,) = srv.sockets
            assert s.family == socket.AF_UNIX
            assert s.getsockname() == sock_path
            assert await roundtrip(loop, sock_path) == b"unix ping"
    run(loop, go())


def test_unix_transport_extra_info(loop, sock_path):
    async def go():
        srv = await loop.create_unix_server(Echo, sock_path)
        async with srv:
            tr, pr = await loop.create_unix_connection(lambda: Recorder(loop), sock_path)
            try:
                assert tr.get_extra_info("peername") == sock_path
                sock = tr.get_extra_info("socket")
                assert sock.family == socket.AF_UNIX
                assert tr.can_write_eof()
            finally:
                tr.close()
                await pr.lost
    run(loop, go())


def test_unix_half_close(loop, sock_path):
    async def go():
        srv = await loop.create_unix_server(Echo, sock_path)
        async with srv:
            tr, pr = await loop.create_unix_connection(lambda: Recorder(loop), sock_path)
            tr.write(b"bye")
            tr.write_eof()
            # Echo answers, then closes on our EOF: we see data, EOF, then loss.
            assert await pr.lost is None
            assert bytes(pr.data) == b"bye"
            assert pr.compact_events() == ["made", "data", "eof", "lost"]
    run(loop, go())


def test_unix_server_sock(loop, sock_path):
    async def go():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(sock_path)
        srv = await loop.create_unix_server(Echo, sock=sock)
        try:
            assert srv.sockets[0].fileno() == sock.fileno()
            assert await roundtrip(loop, sock_path) == b"unix ping"
        finally:
            srv.close()
            await srv.wait_closed()
    run(loop, go())


def test_unix_connection_sock(loop, sock_path):
    async def go():
        srv = await loop.create_unix_server(Echo, sock_path)
        async with srv:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(sock_path)
            sock.setblocking(False)
            assert await roundtrip(loop, sock=sock) == b"unix ping"
            assert sock.fileno() == -1
    run(loop, go())


@pytest.mark.xfail_loop("uvloop", reason="uvloop 0.17 mishandles abstract socket "
                        "names (leading NUL): the connection is refused")
def test_unix_abstract_name(loop):
    name = f"\0goloop-test-{os.getpid()}-{id(loop)}"

    async def go():
        srv = await loop.create_unix_server(Echo, name)
        async with srv:
            assert await roundtrip(loop, name) == b"unix ping"
    run(loop, go())


def test_unix_server_replaces_stale_socket_file(loop, sock_path):
    async def go():
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(sock_path)
        stale.close()  # leaves the socket file behind, nobody listening
        srv = await loop.create_unix_server(Echo, sock_path)
        async with srv:
            assert await roundtrip(loop, sock_path) == b"unix ping"
    run(loop, go())


def test_unix_server_path_is_a_regular_file(loop, sock_path):
    async def go():
        with open(sock_path, "w") as f:
            f.write("not a socket")
        with pytest.raises(OSError):
            await loop.create_unix_server(Echo, sock_path)
        with open(sock_path) as f:
            assert f.read() == "not a socket"
    run(loop, go())


def test_unix_server_accepts_pathlike(loop, sock_path):
    import pathlib

    async def go():
        srv = await loop.create_unix_server(Echo, pathlib.Path(sock_path))
        async with srv:
            assert await roundtrip(loop, pathlib.Path(sock_path)) == b"unix ping"
    run(loop, go())


def test_unix_connection_missing_path(loop, sock_path):
    async def go():
        with pytest.raises(FileNotFoundError):
            await loop.create_unix_connection(asyncio.Protocol, sock_path)
    run(loop, go())


def test_unix_connection_refused(loop, sock_path):
    async def go():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(sock_path)  # a socket file nobody listens on
        try:
            with pytest.raises(ConnectionRefusedError):
                await loop.create_unix_connection(asyncio.Protocol, sock_path)
        finally:
            s.close()
    run(loop, go())


def test_unix_bad_arguments(loop, sock_path):
    async def go():
        with pytest.raises(ValueError):
            await loop.create_unix_connection(asyncio.Protocol)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            with pytest.raises(ValueError):
                await loop.create_unix_connection(asyncio.Protocol, sock_path, sock=s)
            with pytest.raises(ValueError):
                await loop.create_unix_server(asyncio.Protocol, sock_path, sock=s)
        with pytest.raises(ValueError):
            await loop.create_unix_server(asyncio.Protocol)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            with pytest.raises(ValueError):
                await loop.create_unix_server(asyncio.Protocol, sock=tcp)
    run(loop, go())


def test_unix_server_close_refuses(loop, sock_path):
    async def go():
        srv = await loop.create_unix_server(Echo, sock_path)
        srv.close()
        await srv.wait_closed()
        assert not srv.is_serving()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_unix_connection(asyncio.Protocol, sock_path)
    run(loop, go())


def test_unix_streams(loop, sock_path):
    async def handle(reader, writer):
        data = await reader.read()
        writer.write(data[::-1])
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def client():
        reader, writer = await asyncio.open_unix_connection(sock_path)
        writer.write(b"0123456789" * 10000)
        writer.write_eof()
        got = await reader.read()
        writer.close()
        await writer.wait_closed()
        return got

    async def go():
        srv = await asyncio.start_unix_server(handle, sock_path)
        async with srv:
            results = await asyncio.gather(*(client() for _ in range(10)))
        assert all(r == (b"0123456789" * 10000)[::-1] for r in results)
    run(loop, go(), timeout=30)

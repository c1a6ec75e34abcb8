"""A protocol that records what a transport does to it, and the far end of a
connection as a plain blocking socket driven from a thread.

The peer side deliberately uses no loop API beyond run_in_executor, so a transport
test fails only because of the transport under test."""

import asyncio
import contextlib
import select
import socket

import pytest

PEER_TIMEOUT = 10.0


class Echo(asyncio.Protocol):
    """Server side of the echo tests: sends back what arrives, closes on EOF."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        self.transport.close()


class Recorder(asyncio.Protocol):
    """Records every protocol callback in order; lets a test await bytes, EOF and
    connection loss."""

    def __init__(self, loop, eof_result=None):
        self.loop = loop
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.eof_result = eof_result
        self.made = loop.create_future()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self._byte_waiters = []
        self.pauses = 0
        self.resumes = 0
        self.resumed = None

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport
        self.made.set_result(transport)

    def data_received(self, data):
        assert isinstance(data, bytes), type(data)
        assert data, "data_received(b'')"
        self.events.append("data")
        self.data += data
        self._wake()

    def eof_received(self):
        self.events.append("eof")
        self.eof.set_result(None)
        return self.eof_result

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)
        self._wake()

    def pause_writing(self):
        self.events.append("pause_writing")
        self.pauses += 1
        self.resumed = self.loop.create_future()

    def resume_writing(self):
        self.events.append("resume_writing")
        self.resumes += 1
        self.resumed.set_result(None)

    def _wake(self):
        for n, fut in list(self._byte_waiters):
            if (len(self.data) >= n or self.lost.done()) and not fut.done():
                fut.set_result(None)
                self._byte_waiters.remove((n, fut))

    async def received(self, n):
        """Wait until at least n bytes arrived (or the connection was lost)."""
        if len(self.data) < n and not self.lost.done():
            fut = self.loop.create_future()
            self._byte_waiters.append((n, fut))
            await fut
        return bytes(self.data)

    def compact_events(self):
        """events with runs of "data" folded into one."""
        out = []
        for e in self.events:
            if not (e == "data" and out and out[-1] == "data"):
                out.append(e)
        return out


def listener(family=socket.AF_INET, addr=None):
    if addr is None:
        addr = ("127.0.0.1", 0) if family == socket.AF_INET else ("::1", 0)
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family != socket.AF_UNIX:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(addr)
    sock.listen(8)
    return sock


async def connect_to_peer(loop, protocol_factory, **kwargs):
    """(transport, protocol, peer): a client transport over real TCP and the accepted
    blocking socket at the other end."""
    with listener() as lsock:
        transport, protocol = await loop.create_connection(
            protocol_factory, *lsock.getsockname(), **kwargs)
        # The handshake completed in the kernel, so accept() returns at once.
        lsock.settimeout(PEER_TIMEOUT)
        peer, _ = lsock.accept()
    peer.settimeout(PEER_TIMEOUT)
    return transport, protocol, peer


@contextlib.asynccontextmanager
async def peer_connection(loop, protocol_factory, **kwargs):
    """connect_to_peer as a context manager: on the way out the transport is
    closed, its connection_lost awaited (protocol.lost) and the peer closed."""
    transport, protocol, peer = await connect_to_peer(loop, protocol_factory, **kwargs)
    try:
        yield transport, protocol, peer
    finally:
        transport.close()
        try:
            await protocol.lost
        finally:
            peer.close()


def recv_until_eof(sock, limit=None):
    chunks = []
    total = 0
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if limit is not None and total >= limit:
            break
    return b"".join(chunks)


def recv_exactly(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def in_thread(loop, fn, *args):
    """Start fn(*args) in the default executor now; await the result later."""
    return loop.run_in_executor(None, fn, *args)


def full_listener():
    """A listener whose accept queue is full, and the sockets filling it:
    a connect to it waits (its SYNs are dropped) until given up."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers = []
    for _ in range(8):
        c = socket.socket()
        c.setblocking(False)
        fillers.append(c)
        try:
            c.connect(lsock.getsockname())
        except BlockingIOError:
            _, w, _ = select.select([], [c], [], 0.05)
            if not w:
                return lsock, fillers
    pytest.skip("could not fill a listener's accept queue")

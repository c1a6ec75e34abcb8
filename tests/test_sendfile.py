"""loop.sendfile and loop.sock_sendfile: asyncio's semantics (offset and count, the
file position afterwards, the fallback to reads and writes, the errors), bytes in
order with the writes around a sendfile, and what close, abort and loop close do
to a sendfile under way (docs/sendfile.md).

The far end is a blocking socket read from a thread (peers.py), so what it gets is
what the loop under test sent."""

import asyncio
import contextlib
import hashlib
import io
import os
import socket
import ssl
import tempfile

import pytest

from bounded import run
from peers import PEER_TIMEOUT, Recorder, in_thread, listener, recv_until_eof

NO_UVLOOP = pytest.mark.xfail_loop(
    "uvloop", reason="uvloop 0.17 has no loop.sendfile/sock_sendfile (NotImplementedError)")

DATA = os.urandom((4 << 20) + 4321)  # 4 MiB and an odd tail


@pytest.fixture
def datafile():
    with tempfile.TemporaryFile() as f:
        f.write(DATA)
        f.seek(0)
        yield f


def digest(b):
    return hashlib.sha256(b).hexdigest()


@contextlib.asynccontextmanager
async def to_peer(loop, family="tcp", **kwargs):
    """(transport, protocol, received): a client transport of the loop under test and
    a future for everything its peer (a thread) reads until EOF. On the way out the
    transport is closed and the peer's socket too."""
    with contextlib.ExitStack() as stack:
        if family == "tcp":
            lsock = stack.enter_context(listener())
            tr, pr = await loop.create_connection(lambda: Recorder(loop), *lsock.getsockname(), **kwargs)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            path = os.path.join(tmp, "s")
            lsock = stack.enter_context(listener(socket.AF_UNIX, path))
            tr, pr = await loop.create_unix_connection(lambda: Recorder(loop), path, **kwargs)
        lsock.settimeout(PEER_TIMEOUT)
        peer, _ = lsock.accept()
        stack.enter_context(peer)
        peer.settimeout(PEER_TIMEOUT)
        received = in_thread(loop, recv_until_eof, peer)
        try:
            yield tr, pr, received
        finally:
            tr.close()
            await pr.lost
            await received


# -- the native path ----------------------------------------------------------------

@NO_UVLOOP
@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_sendfile_whole_file(loop, datafile, family):
    async def go():
        async with to_peer(loop, family) as (tr, pr, received):
            assert await loop.sendfile(tr, datafile) == len(DATA)
            assert datafile.tell() == len(DATA)  # the position is after what was sent
            tr.write_eof()
            assert digest(await received) == digest(DATA)
    run(loop, go())


@NO_UVLOOP
def test_sendfile_offset_and_count(loop, datafile):
    async def go():
        async with to_peer(loop) as (tr, pr, received):
            assert await loop.sendfile(tr, datafile, 1000, 300_000) == 300_000
            assert datafile.tell() == 301_000
            # count past the end of the file: what there is
            assert await loop.sendfile(tr, datafile, len(DATA) - 10, 1 << 20) == 10
            assert datafile.tell() == len(DATA)
            # offset at the end: nothing, and the position stays
            datafile.seek(5)
            assert await loop.sendfile(tr, datafile, len(DATA)) == 0
            assert datafile.tell() == 5
            tr.write_eof()
            assert await received == DATA[1000:301_000] + DATA[-10:]
    run(loop, go())


@NO_UVLOOP
def test_sendfile_empty_file(loop):
    async def go():
        with tempfile.TemporaryFile() as empty:
            async with to_peer(loop) as (tr, pr, received):
                assert await loop.sendfile(tr, empty) == 0
                assert empty.tell() == 0
                tr.write(b"after")
                tr.write_eof()
                assert await received == b"after"
    run(loop, go())


@NO_UVLOOP
def test_sendfile_in_order_with_writes(loop, datafile):
    """Writes made before a sendfile go out before the file (on goloop they may
    still be queued when the sendfile is asked for), writes after it after; a write
    while it runs is refused, as asyncio's transports refuse it."""
    head = os.urandom(3 << 20)

    async def go():
        async with to_peer(loop) as (tr, pr, received):
            tr.write(head)
            tr.write(b"|")
            task = loop.create_task(loop.sendfile(tr, datafile))
            await asyncio.sleep(0)  # the sendfile has started
            assert not task.done()
            with pytest.raises(RuntimeError, match="sendfile is in progress"):
                tr.write(b"in the middle")
            with pytest.raises(RuntimeError, match="sendfile is in progress"):
                tr.writelines([b"in the middle"])
            assert await task == len(DATA)
            tr.write(b"|tail")
            tr.write_eof()
            assert digest(await received) == digest(head + b"|" + DATA + b"|tail")
    run(loop, go())


@NO_UVLOOP
def test_sendfile_keeps_reading_state(loop, datafile):
    """Reading pauses during a sendfile (as asyncio's native path pauses it) and
    comes back after it, unless the program had paused it itself."""
    async def go():
        async with to_peer(loop) as (tr, pr, received):
            assert tr.is_reading()
            await loop.sendfile(tr, datafile, 0, 1000)
            assert tr.is_reading()
            tr.pause_reading()
            await loop.sendfile(tr, datafile, 0, 1000)
            assert not tr.is_reading()
            tr.resume_reading()
            tr.write_eof()
            assert await received == DATA[:1000] * 2
    run(loop, go())


# -- the fallback: reads and writes -------------------------------------------------

@NO_UVLOOP
def test_sendfile_fallback_for_a_file_without_fd(loop):
    async def go():
        buf = io.BytesIO(DATA)
        async with to_peer(loop) as (tr, pr, received):
            with pytest.raises(asyncio.SendfileNotAvailableError):
                await loop.sendfile(tr, buf, fallback=False)
            assert await loop.sendfile(tr, buf, 10, 1 << 20) == 1 << 20
            assert buf.tell() == 10 + (1 << 20)
            assert tr.get_protocol() is pr  # the program's protocol is back
            assert tr.is_reading()
            tr.write(b"|")
            tr.write_eof()
            assert await received == DATA[10:10 + (1 << 20)] + b"|"
    run(loop, go())


@NO_UVLOOP
def test_sendfile_fallback_keeps_flow_control(loop, datafile):
    """The fallback writes through the transport: with a tiny high-water mark it
    waits for each chunk to drain, and the program's protocol sees no pause or
    resume that was not its own."""
    async def go():
        async with to_peer(loop) as (tr, pr, received):
            tr.set_write_buffer_limits(high=1024)
            n = await loop.sendfile(tr, io.BytesIO(DATA))
            assert n == len(DATA)
            assert pr.pauses == pr.resumes
            tr.write_eof()
            assert digest(await received) == digest(DATA)
    run(loop, go())


@NO_UVLOOP
def test_sendfile_over_tls_falls_back(loop, datafile):
    import test as cpython_test
    certs = os.path.dirname(cpython_test.__file__)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(os.path.join(certs, "keycert3.pem"))
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(os.path.join(certs, "pycacert.pem"))

    async def go():
        got = loop.create_future()

        class Sink(asyncio.Protocol):
            def __init__(self):
                self.data = bytearray()

            def data_received(self, data):
                self.data += data

            def eof_received(self):
                got.set_result(bytes(self.data))

        srv = await loop.create_server(Sink, "127.0.0.1", 0, ssl=sctx)
        async with srv:
            tr, pr = await loop.create_connection(lambda: Recorder(loop), *srv.sockets[0].getsockname(),
                                                  ssl=cctx, server_hostname="localhost")
            try:
                with pytest.raises(RuntimeError, match="fallback is disabled"):
                    await loop.sendfile(tr, datafile, fallback=False)
                assert await loop.sendfile(tr, datafile, 7, 500_000) == 500_000
                assert datafile.tell() == 500_007
                tr.close()  # close_notify: the server's protocol sees its end
                assert (await got) == DATA[7:500_007]
            finally:
                tr.close()
                await pr.lost
    run(loop, go())


# -- errors: asyncio's types and messages -------------------------------------------

@NO_UVLOOP
@pytest.mark.parametrize("args,exc,match", [
    ((-1, None), ValueError, "offset must be a non-negative integer"),
    (("0", None), TypeError, "offset must be a non-negative integer"),
    ((0, 0), ValueError, "count must be a positive integer"),
    ((0, -5), ValueError, "count must be a positive integer"),
    ((0, 1.5), TypeError, "count must be a positive integer"),
], ids=["offset-negative", "offset-str", "count-zero", "count-negative", "count-float"])
def test_sendfile_bad_arguments(loop, datafile, args, exc, match):
    async def go():
        async with to_peer(loop) as (tr, pr, received):
            with pytest.raises(exc, match=match):
                await loop.sendfile(tr, datafile, *args)
            assert datafile.tell() == 0
            tr.write(b"still fine")
            tr.write_eof()
            assert await received == b"still fine"
    run(loop, go())


@NO_UVLOOP
def test_sendfile_text_file(loop):
    async def go():
        with tempfile.TemporaryFile("w+") as f:
            f.write("text")
            f.seek(0)
            async with to_peer(loop) as (tr, pr, received):
                with pytest.raises(ValueError, match="file should be opened in binary mode"):
                    await loop.sendfile(tr, f)
    run(loop, go())


@NO_UVLOOP
def test_sendfile_closing_transport(loop, datafile):
    async def go():
        async with to_peer(loop) as (tr, pr, received):
            tr.close()
            with pytest.raises(RuntimeError, match="Transport is closing"):
                await loop.sendfile(tr, datafile)
            assert datafile.tell() == 0
    run(loop, go())


# -- close, abort and loop close while a sendfile runs (goloop's own) ---------------

@pytest.fixture
def big_file():
    with tempfile.TemporaryFile() as f:
        f.truncate(64 << 20)  # sparse: more than any socket buffer takes
        yield f


@contextlib.asynccontextmanager
async def stalled_sendfile(loop, big_file):
    """A sendfile to a peer that does not read yet: (transport, protocol, task, peer)."""
    with listener() as lsock:
        tr, pr = await loop.create_connection(lambda: Recorder(loop), *lsock.getsockname())
        lsock.settimeout(PEER_TIMEOUT)
        peer, _ = lsock.accept()
    with peer:
        peer.settimeout(PEER_TIMEOUT)
        task = loop.create_task(loop.sendfile(tr, big_file))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not task.done()
        yield tr, pr, task, peer


@pytest.mark.skip_loop("uvloop", reason="no loop.sendfile")
@pytest.mark.skip_loop("asyncio", reason="asyncio's close() during a sendfile closes the "
                       "socket under it; goloop's close waits for the file, as for writes")
def test_close_during_sendfile_sends_the_file_first(loop, big_file):
    async def go():
        async with stalled_sendfile(loop, big_file) as (tr, pr, task, peer):
            tr.close()
            assert not pr.lost.done()
            got = await in_thread(loop, recv_until_eof, peer)
            assert len(got) == 64 << 20
            assert await task == 64 << 20
            assert await pr.lost is None
    run(loop, go(), timeout=30)


@pytest.mark.skip_loop("uvloop", reason="no loop.sendfile")
@pytest.mark.skip_loop("asyncio", reason="asyncio's abort() during a sendfile removes the "
                       "sendfile's writer: the sendfile never completes")
def test_abort_during_sendfile(loop, big_file):
    async def go():
        async with stalled_sendfile(loop, big_file) as (tr, pr, task, peer):
            tr.abort()
            with pytest.raises(ConnectionError):
                await task
            assert 0 < big_file.tell() < 64 << 20  # the position says how far it got
            assert await pr.lost is None
    run(loop, go())


@pytest.mark.skip_loop("uvloop", reason="no loop.sendfile")
@pytest.mark.skip_loop("asyncio", reason="asyncio's abort() during a sendfile removes the "
                       "sendfile's writer: the sendfile never completes")
def test_cancelled_sendfile_keeps_order(loop, big_file):
    """A cancelled sendfile goes on in Go (its bytes are partly on the wire): a write
    after it queues behind the rest of the file, and the file's fd stays ours until
    Go is done, even if the program closes its file."""
    async def go():
        async with stalled_sendfile(loop, big_file) as (tr, pr, task, peer):
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            big_file.close()  # the transport holds its own duplicate
            tr.write(b"tail")
            tr.write_eof()
            got = await in_thread(loop, recv_until_eof, peer)
            assert len(got) == (64 << 20) + 4 and got.endswith(b"tail")
            assert got[:-4].count(0) == 64 << 20
            tr.close()
            await pr.lost
    run(loop, go(), timeout=30)


@pytest.mark.skip_loop("uvloop", reason="no loop.sendfile")
@pytest.mark.skip_loop("asyncio", reason="asyncio's loop.close() leaves a running sendfile "
                       "pending; this checks goloop's release of the file's duplicate")
def test_loop_close_during_sendfile(loop, big_file):
    """Closing the loop aborts the transport; Go gives the file's fd back and the
    transport closes its duplicate: the fixture's fd check sees nothing left open."""
    state = {}

    async def go():
        cm = stalled_sendfile(loop, big_file)
        tr, pr, task, peer = await cm.__aenter__()
        state.update(cm=cm, task=task, peer=peer)
    run(loop, go())
    loop.close()
    state["peer"].close()


# -- sock_sendfile ------------------------------------------------------------------

@NO_UVLOOP
def test_sock_sendfile(loop, datafile):
    async def go():
        with listener() as lsock:
            client = socket.socket()
            client.setblocking(False)
            with client:
                await loop.sock_connect(client, lsock.getsockname())
                lsock.settimeout(PEER_TIMEOUT)
                peer, _ = lsock.accept()
                with peer:
                    peer.settimeout(PEER_TIMEOUT)
                    received = in_thread(loop, recv_until_eof, peer)
                    await loop.sock_sendall(client, b"head|")
                    assert await loop.sock_sendfile(client, datafile, 100, 2 << 20) == 2 << 20
                    assert datafile.tell() == 100 + (2 << 20)
                    assert await loop.sock_sendfile(client, io.BytesIO(b"fallback")) == 8
                    with pytest.raises(asyncio.SendfileNotAvailableError):
                        await loop.sock_sendfile(client, io.BytesIO(b"x"), fallback=False)
                    client.shutdown(socket.SHUT_WR)
                    assert await received == b"head|" + DATA[100:100 + (2 << 20)] + b"fallback"
    run(loop, go())

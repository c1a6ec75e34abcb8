"""loop.sock_sendfile: asyncio's semantics (offset and count, the file position
afterwards, the fallback and its errors, argument checks), large files to slow
peers, cancellation and loop close while a sendfile waits (docs/sockops.md,
"sock_sendfile").

uvloop 0.17 has no sock_sendfile (AbstractEventLoop's NotImplementedError): every
test here is an expected failure there."""

import asyncio
import errno
import gc
import hashlib
import io
import os
import select
import socket
import ssl
import tempfile
import threading

import pytest

from bounded import run
from peers import PEER_TIMEOUT, in_thread, listener, recv_until_eof

NO_UVLOOP = pytest.mark.xfail_loop(
    "uvloop", reason="uvloop 0.17 has no loop.sock_sendfile (NotImplementedError)")

SMALL = os.urandom(100_000 + 7)
BIG = os.urandom((8 << 20) + 13)  # 8 MiB and an odd tail


def is_goloop(loop):
    return type(loop).__module__.startswith("goloop")


def datafile(data):
    f = tempfile.TemporaryFile()
    f.write(data)
    f.seek(0)
    return f


def nb_pair():
    """A connected pair: the loop's end non-blocking, the peer's blocking with a
    timeout (read from a thread or after the fact)."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.settimeout(PEER_TIMEOUT)
    return a, b


def read_available(sock):
    """Everything the peer can read now, without waiting."""
    out = bytearray()
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except BlockingIOError:
                return bytes(out)
            if not chunk:
                return bytes(out)
            out += chunk
    finally:
        sock.settimeout(timeout)


def tcp_pair():
    with listener() as lsock:
        client = socket.socket()
        client.connect(lsock.getsockname())
        client.setblocking(False)
        lsock.settimeout(PEER_TIMEOUT)
        peer, _ = lsock.accept()
    peer.settimeout(PEER_TIMEOUT)
    return client, peer


async def send_and_receive(loop, data, *args, **kwargs):
    """(result, received, position): sock_sendfile of data's file with *args to
    a peer that reads (in a thread) until EOF."""
    a, b = nb_pair()
    with a, b, datafile(data) as f:
        received = in_thread(loop, recv_until_eof, b)
        n = await loop.sock_sendfile(a, f, *args, **kwargs)
        a.shutdown(socket.SHUT_WR)
        return n, await received, f.tell()


# -- what is sent, and the position after ------------------------------------------

@NO_UVLOOP
def test_whole_file(loop):
    n, got, pos = run(loop, send_and_receive(loop, SMALL))
    assert (n, got, pos) == (len(SMALL), SMALL, len(SMALL))


@NO_UVLOOP
def test_offset(loop):
    n, got, pos = run(loop, send_and_receive(loop, SMALL, 1000))
    assert (n, got, pos) == (len(SMALL) - 1000, SMALL[1000:], len(SMALL))


@NO_UVLOOP
def test_count(loop):
    n, got, pos = run(loop, send_and_receive(loop, SMALL, 0, 5000))
    assert (n, got, pos) == (5000, SMALL[:5000], 5000)


@NO_UVLOOP
def test_offset_and_count(loop):
    n, got, pos = run(loop, send_and_receive(loop, SMALL, 333, 4444))
    assert (n, got, pos) == (4444, SMALL[333:333 + 4444], 333 + 4444)


@NO_UVLOOP
def test_offset_and_count_past_the_end(loop):
    n, got, pos = run(loop, send_and_receive(loop, SMALL, len(SMALL) - 10, 1000))
    assert (n, got, pos) == (10, SMALL[-10:], len(SMALL))


@NO_UVLOOP
def test_offset_at_or_past_the_end_sends_nothing_and_leaves_the_position(loop):
    async def go():
        a, b = nb_pair()
        with a, b, datafile(SMALL) as f:
            f.seek(5)
            assert await loop.sock_sendfile(a, f, len(SMALL)) == 0
            assert await loop.sock_sendfile(a, f, len(SMALL) + 100, 10) == 0
            assert f.tell() == 5
            assert read_available(b) == b""
    run(loop, go())


@NO_UVLOOP
def test_empty_file(loop):
    async def go():
        a, b = nb_pair()
        with a, b, datafile(b"") as f:
            assert await loop.sock_sendfile(a, f) == 0
            assert await loop.sock_sendfile(a, f, 0, 100) == 0
            assert f.tell() == 0
    run(loop, go())


@NO_UVLOOP
def test_in_order_with_sendall(loop):
    async def go():
        a, b = nb_pair()
        with a, b, datafile(SMALL) as f:
            received = in_thread(loop, recv_until_eof, b)
            await loop.sock_sendall(a, b"head|")
            assert await loop.sock_sendfile(a, f, 10, 20000) == 20000
            await loop.sock_sendall(a, b"|tail")
            a.shutdown(socket.SHUT_WR)
            assert await received == b"head|" + SMALL[10:20010] + b"|tail"
    run(loop, go())


@NO_UVLOOP
def test_large_file_to_a_slow_reader_over_tcp(loop):
    # 8 MiB through a small send buffer to a peer that reads 64 KiB at a
    # time with pauses: the sendfile waits for writability many times.
    def slow_reader(sock):
        h = hashlib.sha256()
        total = 0
        while True:
            chunk = sock.recv(64 << 10)
            if not chunk:
                return total, h.hexdigest()
            h.update(chunk)
            total += len(chunk)
            if total % (1 << 20) < len(chunk):
                threading.Event().wait(0.002)  # pacing, not synchronisation

    async def go():
        client, peer = tcp_pair()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        with client, peer, datafile(BIG) as f:
            got = in_thread(loop, slow_reader, peer)
            assert await loop.sock_sendfile(client, f) == len(BIG)
            assert f.tell() == len(BIG)
            client.shutdown(socket.SHUT_WR)
            assert await got == (len(BIG), hashlib.sha256(BIG).hexdigest())
    run(loop, go(), timeout=30)


# -- cancellation ------------------------------------------------------------------

async def started_and_stuck(loop, a, b, f, *args):
    """A sendfile task that has sent its first bytes and now waits for a peer
    that does not read."""
    task = loop.create_task(loop.sock_sendfile(a, f, *args))
    await asyncio.sleep(0)
    if task.done():
        task.result()  # failed at once (uvloop: NotImplementedError)
    r, _, _ = await loop.run_in_executor(None, select.select, [b], [], [], PEER_TIMEOUT)
    assert r, "nothing sent"
    assert not task.done()
    return task


@NO_UVLOOP
def test_cancel_midway_sends_no_more_and_sets_the_position(loop):
    async def go():
        a, b = nb_pair()
        with a, b, datafile(BIG) as f:
            task = await started_and_stuck(loop, a, b, f, 100)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            a.close()  # the program may close the socket right after
            got = recv_until_eof(b)
            assert 0 < len(got) < len(BIG) - 100
            assert got == BIG[100:100 + len(got)]
            if is_goloop(loop):
                # asyncio documents "the file position is always updated, even
                # when this method raises"; its 3.11 selector loop removes its
                # writer on cancellation before its callback can seek, so the
                # position stays where it was there.
                assert f.tell() == 100 + len(got)
    run(loop, go())


@NO_UVLOOP
def test_cancel_then_close_the_file_at_once(loop):
    # The program closes its file right after the cancel, before the task
    # has even run its cancellation: nothing reads from the closed fd (nor
    # from another file that takes its number).
    async def go():
        a, b = nb_pair()
        with a, b:
            f = datafile(BIG)
            task = await started_and_stuck(loop, a, b, f)
            task.cancel()
            f.close()
            other = datafile(b"X" * len(BIG))  # may take the closed file's number
            with other:
                with pytest.raises(asyncio.CancelledError):
                    await task
                a.close()
                got = recv_until_eof(b)
                assert got == BIG[:len(got)]
    run(loop, go())


@NO_UVLOOP
def test_cancel_in_the_batch_the_result_comes_in(loop):
    # The rest of a sendfile fits once the peer has read, and a callback
    # that was ready before the poll that finishes it cancels the task. On
    # goloop the result reaches the future in that poll: the cancel is
    # honoured all the same, and the position counts what the finished op
    # sent. Everywhere the peer gets a prefix of the file.
    async def go():
        a, b = nb_pair()
        with a, b, datafile(BIG) as f:
            # How much one sendfile(2) puts in this socket at once.
            probe = await started_and_stuck(loop, a, b, f)
            probe.cancel()
            with pytest.raises(asyncio.CancelledError):
                await probe
            once = len(read_available(b))
            for count in (once + once // 4, once + once // 2):
                f.seek(0)
                task = await started_and_stuck(loop, a, b, f, 0, count)
                first = read_available(b)
                loop.call_soon(task.cancel)
                try:
                    assert await task == count
                except asyncio.CancelledError:
                    pass
                got = first + read_available(b)
                assert got == BIG[:len(got)]
                if is_goloop(loop):
                    assert task.cancelled()
                    assert (len(got), f.tell()) == (count, count)
    run(loop, go())


def test_cancel_before_it_starts(loop):
    # (uvloop passes: the cancel comes before its NotImplementedError)
    async def go():
        a, b = nb_pair()
        with a, b, datafile(SMALL) as f:
            task = loop.create_task(loop.sock_sendfile(a, f))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert f.tell() == 0
            assert read_available(b) == b""
    run(loop, go())


# -- errors ------------------------------------------------------------------------

@NO_UVLOOP
def test_peer_reset_midway(loop):
    async def go():
        client, peer = tcp_pair()
        with client, peer, datafile(BIG) as f:
            task = await started_and_stuck(loop, client, peer, f)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            peer.close()  # a reset
            with pytest.raises(ConnectionError):
                await task
            assert 0 < f.tell() < len(BIG)
    run(loop, go())


@NO_UVLOOP
def test_peer_gone_before(loop):
    # Nothing sent: the native path's SendfileNotAvailableError, then the
    # fallback's own error (a ConnectionError); without the fallback, the
    # SendfileNotAvailableError itself.
    async def go():
        a, b = nb_pair()
        b.close()
        with a, datafile(SMALL) as f:
            with pytest.raises(asyncio.SendfileNotAvailableError):
                await loop.sock_sendfile(a, f, fallback=False)
            assert f.tell() == 0
            with pytest.raises(ConnectionError):
                await loop.sock_sendfile(a, f)
    run(loop, go())


@NO_UVLOOP
@pytest.mark.parametrize("kind", ["bytesio", "pipe", "pipe-count"])
def test_not_a_regular_file(loop, kind):
    # asyncio's answers: a file without a fileno is SendfileNotAvailableError
    # (the fallback reads it); a pipe has a size of 0, so without a count it
    # is an "empty file" (0), with one sendfile(2) refuses it (ESPIPE, then
    # the fallback reads and sends it, and fails to seek it after: asyncio's
    # OSError ESPIPE).
    async def go():
        a, b = nb_pair()
        with a, b:
            if kind == "bytesio":
                src, w = io.BytesIO(b"fallback data"), None
            else:
                r, w = os.pipe()
                os.write(w, b"fallback data")
                os.close(w)
                src = open(r, "rb", buffering=0)
            count = 13 if kind == "pipe-count" else None
            with src:
                if kind == "bytesio" or count:
                    with pytest.raises(asyncio.SendfileNotAvailableError):
                        await loop.sock_sendfile(a, src, 0, count, fallback=False)
                    if kind == "bytesio":
                        assert await loop.sock_sendfile(a, src, 0, count) == 13
                    else:
                        with pytest.raises(OSError) as e:
                            await loop.sock_sendfile(a, src, 0, count)
                        assert e.value.errno == errno.ESPIPE
                    assert read_available(b) == b"fallback data"
                else:
                    assert await loop.sock_sendfile(a, src, 0, count, fallback=False) == 0
                    assert await loop.sock_sendfile(a, src, 0, count) == 0
    run(loop, go())


@NO_UVLOOP
@pytest.mark.parametrize("offset,count,exc", [
    (-1, None, ValueError),
    ("1", None, TypeError),
    (1.5, None, TypeError),
    (0, 0, ValueError),
    (0, -1, ValueError),
    (0, 1.0, TypeError),
])
def test_bad_offset_or_count(loop, offset, count, exc):
    async def go():
        a, b = nb_pair()
        with a, b, datafile(SMALL) as f:
            with pytest.raises(exc):
                await loop.sock_sendfile(a, f, offset, count)
            assert f.tell() == 0
    run(loop, go())


@NO_UVLOOP
def test_text_file(loop, tmp_path):
    async def go():
        a, b = nb_pair()
        p = tmp_path / "t"
        p.write_text("text")
        with a, b, open(p) as f:
            with pytest.raises(ValueError, match="binary mode"):
                await loop.sock_sendfile(a, f)
    run(loop, go())


@NO_UVLOOP
def test_udp_socket(loop):
    async def go():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, datafile(SMALL) as f:
            s.setblocking(False)
            with pytest.raises(ValueError, match="SOCK_STREAM"):
                await loop.sock_sendfile(s, f)
    run(loop, go())


@NO_UVLOOP
def test_blocking_socket_in_debug_mode(loop):
    async def go():
        a, b = socket.socketpair()
        with a, b, datafile(SMALL) as f:
            loop.set_debug(True)
            try:
                with pytest.raises(ValueError, match="non-blocking"):
                    await loop.sock_sendfile(a, f)
            finally:
                loop.set_debug(False)
    run(loop, go())


@NO_UVLOOP
def test_ssl_socket(loop):
    async def go():
        ctx = ssl.create_default_context()
        with ctx.wrap_socket(socket.socket(), server_hostname="localhost",
                             do_handshake_on_connect=False) as s, datafile(SMALL) as f:
            with pytest.raises(TypeError, match="SSLSocket"):
                await loop.sock_sendfile(s, f)
    run(loop, go())


@NO_UVLOOP
def test_transport_socket(loop):
    # A socket a transport holds: asyncio's RuntimeError (goloop says so
    # before sending: Go never writes a transport's fd).
    async def go():
        client, peer = tcp_pair()
        with peer, datafile(BIG) as f:
            tr, _ = await loop.create_connection(asyncio.Protocol, sock=client)
            try:
                with pytest.raises(RuntimeError, match="is used by transport"):
                    await asyncio.wait_for(loop.sock_sendfile(client, f), PEER_TIMEOUT)
            finally:
                tr.close()
    run(loop, go())


# -- loop close --------------------------------------------------------------------

@NO_UVLOOP
def test_loop_close_with_a_sendfile_pending(loop):
    # Closing the loop while a sendfile waits: nothing crashes, no fd is
    # left open (the conftest compares /proc/self/fd), the socket and the
    # file stay the program's.
    a, b = nb_pair()
    with a, b, datafile(BIG) as f:
        task = loop.run_until_complete(started_and_stuck(loop, a, b, f))
        task._log_destroy_pending = False
        loop.close()
        del task
        gc.collect()
        got = recv_until_eof_nowait(b)
        assert got == BIG[:len(got)]
        assert os.fstat(f.fileno()).st_size == len(BIG)
        b.send(b"still usable")
        assert a.recv(100) == b"still usable"


def recv_until_eof_nowait(sock):
    return read_available(sock)


@pytest.mark.skip_loop("uvloop", reason="goloop only: its ops' size limit")
@pytest.mark.skip_loop("asyncio", reason="goloop only: its ops' size limit")
@pytest.mark.parametrize("count", [None, 50_001, 100_000 + 7])
def test_one_call_in_several_ops(loop, monkeypatch, count):
    # goloop only: Go takes at most 1 GiB per op, so a larger count (or "to
    # the end" of a larger file) is several ops in turn; with the limit made
    # small, a 100 KB file shows the bytes, the result and the position.
    import goloop.loop
    monkeypatch.setattr(goloop.loop, "_SENDFILE_MAX", 4096)
    n, got, pos = run(loop, send_and_receive(loop, SMALL, 3, count))
    want = SMALL[3:] if count is None else SMALL[3:3 + count]
    assert (n, got, pos) == (len(want), want, 3 + len(want))

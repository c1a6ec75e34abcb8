"""Kernel TLS under goloop's TLS over Python ssl contexts (docs/ktls.md).

goloop does the handshake in OpenSSL with the transport reading one TLS record at a
time, then hands the secrets to Go, which installs them in the kernel; from then on the
connection's records are the kernel's and the data passes through in plaintext. Where
the kernel has no tls module (this machine), nothing changes for the program: the
handshake falls back to OpenSSL before the first application byte.

These tests run everywhere. On this machine they run with GOLOOP_KTLS=force, which offers
kernel TLS although the kernel refuses it, so the record-at-a-time handshake and the
fallback are what is tested. `make test-ktls` runs them in ../shared/vm's kernel with
GOLOOP_KTLS_REQUIRED=1, where each goloop connection must be the kernel's, and
/proc/net/tls_stat must show it. The peers are blocking Python ssl sockets in a thread,
so each direction's records are checked by an independent TLS implementation. The data
checks run on every loop; what is asserted about kernel TLS (get_extra_info('ktls'),
tls_stat) only goloop can pass: the other loops have no kernel TLS."""

import asyncio
import hashlib
import os
import socket
import ssl

import pytest

from bounded import run
from peers import PEER_TIMEOUT, Recorder, in_thread, listener
from test_tls import HOST, certs, wrap_peer  # noqa: F401  (certs is a fixture)

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _offer_ktls(monkeypatch):
    # Offer it even where the kernel will say no: then the fallback is under test.
    if "GOLOOP_KTLS" not in os.environ:
        monkeypatch.setenv("GOLOOP_KTLS", "force")


def kernel_has_ktls(loop):
    return loop._go_call_quick("ktls.available", b"") == b""


def expected_ktls(loop, loop_name):
    """What get_extra_info('ktls') must say on this loop and kernel."""
    if loop_name != "goloop":
        return None
    if os.environ.get("GOLOOP_KTLS", "").lower() in ("0", "off", "soft"):
        return False   # soft: Go's record layer does them (docs/softtls.md)
    has = kernel_has_ktls(loop)
    if os.environ.get("GOLOOP_KTLS_REQUIRED") == "1":
        assert has, "GOLOOP_KTLS_REQUIRED=1 but the kernel takes no TLS keys"
    return has


def tls_stat():
    try:
        with open("/proc/net/tls_stat") as f:
            return {k: int(v) for k, v in (line.split() for line in f)}
    except OSError:
        return {}


CASES = [
    pytest.param(ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256", id="tls1.2-aes128gcm"),
    pytest.param(ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES256-GCM-SHA384", id="tls1.2-aes256gcm"),
    pytest.param(ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-CHACHA20-POLY1305", id="tls1.2-chacha20"),
    # Python cannot choose a TLS 1.3 suite; OpenSSL's servers pick AES-256-GCM.
    pytest.param(ssl.TLSVersion.TLSv1_3, None, id="tls1.3"),
]


def _ctx(ctx, version, cipher):
    ctx.minimum_version = ctx.maximum_version = version
    if cipher:
        ctx.set_ciphers(cipher)
    return ctx


def _echo_peer(ctx, server_side, sock, size, trace=None):
    """Blocking peer: sends size random bytes while echoing what comes, checks the
    echo, then ends with close_notify. Returns the sha256 of what it sent. trace, a
    dict, follows where it got to, for the message of a test that stalls; each of
    its socket operations gives up after PEER_TIMEOUT."""
    trace = {} if trace is None else trace
    trace["at"] = "handshake"
    tls = wrap_peer(ctx, sock, server_side)
    payload = os.urandom(size)
    got = bytearray()
    tls.settimeout(PEER_TIMEOUT)
    trace["at"] = "sendall"
    tls.sendall(payload)
    trace["at"] = "reading the echo"
    while len(got) < size:
        chunk = tls.recv(256 * 1024)
        assert chunk, "EOF before the whole echo"
        got += chunk
        trace["echoed"] = len(got)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    trace["at"] = "unwrap"
    tls.unwrap()   # our close_notify, and the loop's answer to it
    trace["at"] = "done"
    sock.close()
    return hashlib.sha256(payload).hexdigest()


async def _both_ends(served, trace, protos):
    """Waits for the peer, then for the loop's end to be lost; a failure or a stall
    of either says where each end was (a rare stall in CI's VM said only
    TimeoutError at `await in_thread(...)`): the peer stuck at some step, or done
    with its result never reaching the loop (a lost wake-up)."""
    def where():
        pr = protos[0] if protos else None
        tr = pr and pr.transport
        state = tr and dict(write_buffer=tr.get_write_buffer_size(), reading=tr.is_reading(),
                            closing=tr.is_closing(), ktls=tr.get_extra_info("ktls"))
        return (f"peer {trace}; the loop's protocol: "
                f"{pr and (len(pr.data), pr.compact_events())}, transport {state}")
    try:
        await asyncio.wait_for(asyncio.shield(served), 3 * PEER_TIMEOUT)
    except Exception as e:
        if not served.done():   # (its "at" says whether the peer itself finished)
            raise AssertionError(f"the peer's result never reached the loop: {where()}") from None
        raise AssertionError(f"the peer failed: {where()}") from e
    try:
        return await asyncio.wait_for(protos[0].lost, PEER_TIMEOUT)
    except asyncio.TimeoutError:
        raise AssertionError(f"connection_lost never came: {where()}") from None


class EchoBack(Recorder):
    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)


@pytest.mark.parametrize("version,cipher", CASES)
def test_ktls_client_echoes_python_server(loop, loop_name, certs, version, cipher):
    """The loop is the client: a 1 MiB echo both ways through a Python ssl server,
    TLS 1.3 session tickets arriving first, then the peer's close_notify."""
    stat0 = tls_stat()

    trace = {}

    def peer(lsock):
        conn, _ = lsock.accept()
        conn.settimeout(PEER_TIMEOUT)
        return _echo_peer(_ctx(certs.server(), version, cipher), True, conn, MiB, trace)

    async def go():
        expect = expected_ktls(loop, loop_name)
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            served = in_thread(loop, peer, lsock)
            tr, pr = await loop.create_connection(
                lambda: EchoBack(loop), *lsock.getsockname(),
                ssl=_ctx(certs.client(), version, cipher), server_hostname=HOST)
            assert tr.get_extra_info("ktls") is expect
            assert await _both_ends(served, trace, [pr]) is None
            assert len(pr.data) == MiB
            flow = ("pause_writing", "resume_writing")
            seen = [e for e in pr.compact_events() if e not in flow]
            assert [e for i, e in enumerate(seen) if i == 0 or seen[i - 1] != e] == \
                ["made", "data", "eof", "lost"]
            return expect

    # (The peer's own timeouts end a stall first, and _both_ends says where.)
    if run(loop, go(), timeout=4 * PEER_TIMEOUT):
        stat = tls_stat()
        assert stat["TlsTxSw"] > stat0.get("TlsTxSw", 0)
        assert stat["TlsRxSw"] > stat0.get("TlsRxSw", 0)


@pytest.mark.parametrize("version,cipher", CASES)
def test_ktls_server_echoes_python_client(loop, loop_name, certs, version, cipher):
    """The loop is the server (after TLS 1.3 it has sent its session tickets, so its
    first record under the kernel is not record 0), a Python client sends 1 MiB."""
    async def go():
        expect = expected_ktls(loop, loop_name)
        protos = []

        def factory():
            protos.append(EchoBack(loop))
            return protos[-1]

        srv = await loop.create_server(factory, "127.0.0.1", 0,
                                       ssl=_ctx(certs.server(), version, cipher))
        try:
            addr = srv.sockets[0].getsockname()

            trace = {}

            def peer():
                sock = socket.create_connection(addr, timeout=PEER_TIMEOUT)
                return _echo_peer(_ctx(certs.client(), version, cipher), False, sock, MiB, trace)

            assert await _both_ends(in_thread(loop, peer), trace, protos) is None
            pr = protos[0]
            assert pr.transport.get_extra_info("ktls") is expect
            assert len(pr.data) == MiB
        finally:
            srv.close()
            await srv.wait_closed()

    run(loop, go(), timeout=4 * PEER_TIMEOUT)


@pytest.mark.parametrize("buffered", [False, True], ids=["Protocol", "BufferedProtocol"])
def test_ktls_loop_to_loop(loop, loop_name, certs, buffered):
    """Both ends on the loop (each end's kernel TLS talks to the other's), the app
    writing in connection_made (before the keys are in), pausing its reading, and
    closing first."""
    class SinkBase:
        def __init__(self):
            self.data = bytearray()
            self.done = loop.create_future()
            self.lost = loop.create_future()

        def connection_made(self, transport):
            self.transport = transport
            transport.write(b"hello from the server")

        def _got(self, data):
            self.data += data
            if len(self.data) >= 300_000 and not self.done.done():
                self.done.set_result(None)

        def eof_received(self):
            return None

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    class PlainSink(SinkBase, asyncio.Protocol):
        def data_received(self, data):
            self._got(data)

    class BufferedSink(SinkBase, asyncio.BufferedProtocol):
        buf = bytearray(4096)

        def get_buffer(self, n):
            return self.buf

        def buffer_updated(self, n):
            self._got(self.buf[:n])

    Sink = BufferedSink if buffered else PlainSink

    async def go():
        expect = expected_ktls(loop, loop_name)
        sinks = []

        def factory():
            sinks.append(Sink())
            return sinks[-1]

        srv = await loop.create_server(factory, "127.0.0.1", 0, ssl=certs.server())
        try:
            tr, pr = await loop.create_connection(
                lambda: Recorder(loop), *srv.sockets[0].getsockname(),
                ssl=certs.client(), server_hostname=HOST)
            assert await pr.received(21) == b"hello from the server"
            assert tr.get_extra_info("ktls") is expect
            payload = os.urandom(300_000)
            sinks[0].transport.pause_reading()
            tr.write(payload)
            await asyncio.sleep(0.05)   # a paused reader gets nothing meanwhile
            assert len(sinks[0].data) == 0
            sinks[0].transport.resume_reading()
            await sinks[0].done
            assert bytes(sinks[0].data) == payload
            tr.close()
            assert await pr.lost is None
            assert await sinks[0].lost is None
            assert sinks[0].transport.get_extra_info("ktls") is expect
            if loop_name == "goloop":   # the loop-level count of who does the records
                who = ("kernel" if expect else
                       "go" if os.environ.get("GOLOOP_KTLS") == "soft" else "openssl")
                assert loop.tls_stats() == dict({"kernel": 0, "openssl": 0, "go": 0}, **{who: 2})
        finally:
            srv.close()
            await srv.wait_closed()

    run(loop, go())


def test_ktls_off_switch(loop, loop_name, certs, monkeypatch):
    """GOLOOP_KTLS=0: OpenSSL keeps the records, and says so."""
    monkeypatch.setenv("GOLOOP_KTLS", "0")

    def peer(lsock):
        conn, _ = lsock.accept()
        conn.settimeout(PEER_TIMEOUT)
        return _echo_peer(certs.server(), True, conn, 1000)

    async def go():
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            served = in_thread(loop, peer, lsock)
            tr, pr = await loop.create_connection(
                lambda: EchoBack(loop), *lsock.getsockname(),
                ssl=certs.client(), server_hostname=HOST)
            assert tr.get_extra_info("ktls") is (False if loop_name == "goloop" else None)
            await served
            assert await pr.lost is None

    run(loop, go())


@pytest.mark.skip_loop("uvloop", reason="uvloop 0.17 has no loop.sendfile")
def test_ktls_sendfile(loop, loop_name, certs, tmp_path):
    """loop.sendfile over TLS: under kernel TLS goloop gives the socket itself to
    sendfile(2) (the kernel encrypts the file's pages); elsewhere asyncio's fallback
    reads and writes. Either way the peer decrypts exactly the file, after the bytes
    written before it and before the ones written after it."""
    path = tmp_path / "blob"
    blob = os.urandom(3 * MiB + 12345)
    path.write_bytes(blob)
    want = b"head" + blob[1000:] + b"tail"

    def peer(lsock):
        conn, _ = lsock.accept()
        conn.settimeout(PEER_TIMEOUT)
        tls = wrap_peer(certs.server(), conn, True)
        got = bytearray()
        while chunk := tls.recv(256 * 1024):
            got += chunk
        tls.unwrap()
        conn.close()
        return bytes(got)

    async def go():
        expect = expected_ktls(loop, loop_name)
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            served = in_thread(loop, peer, lsock)
            tr, pr = await loop.create_connection(
                lambda: Recorder(loop), *lsock.getsockname(),
                ssl=certs.client(), server_hostname=HOST)
            assert tr.get_extra_info("ktls") is expect
            if expect:   # the native path: sendfile(2) on the kTLS socket
                assert tr._sendfile_compatible is asyncio.constants._SendfileMode.TRY_NATIVE
            tr.write(b"head")
            with open(path, "rb") as f:
                sent = await loop.sendfile(tr, f, offset=1000)
                assert sent == len(blob) - 1000
                assert f.tell() == len(blob)
            tr.write(b"tail")
            tr.close()
            assert await served == want
            assert await pr.lost is None

    run(loop, go())


def test_ktls_100mib(loop, loop_name, certs):
    """100 MiB from a Python client into the loop's server, hashed as it arrives
    (a BufferedProtocol: under kernel TLS the plaintext lands in its buffer)."""
    class Hasher(asyncio.BufferedProtocol):
        def __init__(self):
            # A memoryview: asyncio 3.11's SSL protocol loses bytes when
            # get_buffer() returns a bytearray (docs/tls.md).
            self.buf = memoryview(bytearray(256 * 1024))
            self.h = hashlib.sha256()
            self.n = 0
            self.lost = loop.create_future()

        def connection_made(self, transport):
            self.transport = transport

        def get_buffer(self, n):
            return self.buf

        def buffer_updated(self, n):
            self.h.update(self.buf[:n])
            self.n += n
            if self.n == 100 * MiB:
                self.transport.write(self.h.digest())

        def eof_received(self):
            return None

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def go():
        expect = expected_ktls(loop, loop_name)
        protos = []

        def factory():
            protos.append(Hasher())
            return protos[-1]

        srv = await loop.create_server(factory, "127.0.0.1", 0, ssl=certs.server())
        try:
            addr = srv.sockets[0].getsockname()

            def peer():
                with socket.create_connection(addr, timeout=60) as sock:
                    tls = wrap_peer(certs.client(), sock, False)
                    h = hashlib.sha256()
                    block = os.urandom(MiB)
                    for i in range(100):
                        chunk = bytes([i]) + block[1:]
                        h.update(chunk)
                        tls.sendall(chunk)
                    digest = tls.recv(32)
                    tls.unwrap()
                    return digest == h.digest()

            assert await in_thread(loop, peer)
            assert await protos[0].lost is None
            assert protos[0].transport.get_extra_info("ktls") is expect
        finally:
            srv.close()
            await srv.wait_closed()

    # A hang guard, not a speed bound: in the kernel-TLS VM (emulated CPU) the
    # transfer takes 7-10 s on the epoll backend, against the default 10 s.
    run(loop, go(), timeout=120)


def test_ktls_keeps_the_programs_key_log(loop, loop_name, certs, tmp_path):
    """goloop reads TLS 1.3 secrets through OpenSSL's key log callback, chained in
    front of CPython's: a program's SSLContext.keylog_filename still gets every line,
    whether it was set before goloop's callback went on the context or after."""
    log = tmp_path / "keys.log"
    ctx = certs.client(version=ssl.TLSVersion.TLSv1_3)

    def peer(lsock, n):
        for _ in range(n):
            conn, _ = lsock.accept()
            conn.settimeout(PEER_TIMEOUT)
            _echo_peer(certs.server(), True, conn, 100)

    async def one(addr):
        tr, pr = await loop.create_connection(lambda: EchoBack(loop), *addr,
                                              ssl=ctx, server_hostname=HOST)
        assert await pr.lost is None

    async def go():
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            served = in_thread(loop, peer, lsock, 3)
            await one(lsock.getsockname())          # goloop's callback goes on first
            ctx.keylog_filename = str(log)           # CPython's replaces it...
            await one(lsock.getsockname())
            await one(lsock.getsockname())           # ...and goloop chains in front again
            await served
        lines = log.read_text().splitlines()
        for label in ("CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"):
            assert sum(line.startswith(label + " ") for line in lines) == 2

    run(loop, go())

"""goloop.TLSContext: handshakes on Go's crypto/tls in goroutines, then the records
in the kernel (kernel TLS) or in Go's own record layer (docs/gotls.md).

TLSContext is goloop's own API: uvloop and asyncio have nothing to take it, so every
test here runs on goloop only (this module's `loop_name` has no other loop). What keeps the
tests honest is the other end: a Python ssl socket in a thread, or asyncio's protocol
with an ssl.SSLContext, so each direction's records are checked by OpenSSL. On this
machine (no tls module) the records are Go's; `make test-ktls` runs this file in the
VM, where they are the kernel's unless GOLOOP_KTLS=0."""

import asyncio
import hashlib
import os
import socket
import ssl

import pytest

import conftest
from bounded import run
from peers import PEER_TIMEOUT, Recorder, in_thread, listener
from test_ktls import _echo_peer
from test_tls import HOST, EchoServer, certs, check_truncation_after_handshake  # noqa: F401  (certs is a fixture)

MiB = 1 << 20

VERSIONS = [pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2"),
            pytest.param(ssl.TLSVersion.TLSv1_3, id="tls1.3")]


@pytest.fixture(params=[p for p in conftest._loop_params() if p.id == "goloop"])
def loop_name(request):
    """goloop only (this module's loop_name overrides conftest's)."""
    return request.param


@pytest.fixture
def gl(loop):
    return loop


def records_by(loop):
    """Who must do the records of a TLSContext connection here: 'kernel' or 'go'."""
    if os.environ.get("GOLOOP_KTLS", "").lower() in ("0", "off", "no", "false"):
        return "go"
    return "kernel" if loop._go_call_quick("ktls.available", b"") == b"" else "go"


def server_ctx(certs, version=None, *, alpn=None, client_ca=None, name="server"):
    import goloop
    ctx = goloop.TLSContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.path(f"{name}.pem"), certs.path(f"{name}.key"))
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if client_ca is not None:
        ctx.verify_mode = client_ca
        ctx.load_verify_locations(certs.path("ca.pem"))
    return ctx


def client_ctx(certs, version=None, *, alpn=None, cert=False):
    import goloop
    ctx = goloop.TLSContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(certs.path("ca.pem"))
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if cert:
        ctx.load_cert_chain(certs.path("client.pem"), certs.path("client.key"))
    return ctx


class EchoBack(Recorder):
    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)


def _check_conn(loop, tr, version):
    obj = tr.get_extra_info("ssl_object")
    assert obj.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    cipher = tr.get_extra_info("cipher")
    assert cipher == obj.cipher() and cipher[1] == obj.version() and cipher[2] in (128, 256)
    assert tr.get_extra_info("compression") is None
    assert tr.get_extra_info("ktls") is (records_by(loop) == "kernel")


@pytest.mark.parametrize("version", VERSIONS)
def test_client_echoes_python_server(gl, certs, version):
    """TLSContext client against a Python ssl server: 1 MiB both ways, the peer's
    tickets (TLS 1.3) and close_notify; the server's certificate as ssl shows it."""
    def peer(lsock):
        conn, _ = lsock.accept()
        conn.settimeout(PEER_TIMEOUT)
        return _echo_peer(certs.server(version=version), True, conn, MiB)

    async def go():
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            served = in_thread(gl, peer, lsock)
            tr, pr = await gl.create_connection(
                lambda: EchoBack(gl), *lsock.getsockname(),
                ssl=client_ctx(certs, version), server_hostname=HOST)
            _check_conn(gl, tr, version)
            peercert = tr.get_extra_info("peercert")
            assert dict(x[0] for x in peercert["subject"])["commonName"] == HOST
            assert ("DNS", "localhost") in peercert["subjectAltName"]
            der = tr.get_extra_info("ssl_object").getpeercert(True)
            with open(certs.path("server.pem")) as f:
                assert der == ssl.PEM_cert_to_DER_cert(f.read())
            assert await served   # the peer checked the echo
            assert await pr.lost is None
            assert len(pr.data) == MiB
            seen = [e for e in pr.events if "writing" not in e]   # flow control aside
            assert [e for i, e in enumerate(seen) if i == 0 or seen[i - 1] != e] == \
                ["made", "data", "eof", "lost"]
            assert gl.tls_stats()[records_by(gl)] == 1

    run(gl, go())


@pytest.mark.parametrize("version", VERSIONS)
def test_server_echoes_python_client(gl, certs, version):
    """TLSContext server, Python ssl client: 1 MiB both ways; the server's TLS 1.3
    tickets went out under the right sequence numbers (the client reads after them)."""
    def peer(addr):
        with socket.create_connection(addr, timeout=PEER_TIMEOUT) as s:
            return _echo_peer(certs.client(version=version), False, s, MiB)

    async def go():
        protos = []

        def factory():
            protos.append(EchoBack(gl))
            return protos[-1]

        srv = await gl.create_server(factory, "127.0.0.1", 0, ssl=server_ctx(certs, version))
        async with srv:
            assert await in_thread(gl, peer, srv.sockets[0].getsockname())
            pr = protos[0]
            assert await pr.lost is None
            assert len(pr.data) == MiB
            _check_conn(gl, pr.transport, version)
            assert pr.transport.get_extra_info("peercert") is None   # no client certificate

    run(gl, go())


@pytest.mark.parametrize("version", VERSIONS)
def test_loop_to_loop_streams(gl, certs, version):
    """Streams both ways on one loop: a TLSContext server and an ssl.SSLContext
    client, then TLSContext at both ends, with writes before the first read."""
    async def handle(reader, writer):
        writer.write(b"hello ")
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def one(client):
        srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx(certs, version))
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client, server_hostname=HOST)
            payload = os.urandom(300_000)
            writer.write(payload)
            writer.write_eof() if writer.can_write_eof() else None
            got = await reader.readexactly(6 + len(payload))
            assert got == b"hello " + payload
            writer.close()
            await writer.wait_closed()

    run(gl, one(certs.client(version=version)))
    run(gl, one(client_ctx(certs, version)))


def test_alpn(gl, certs):
    async def go():
        srv = await gl.create_server(lambda: EchoServer(gl), "127.0.0.1", 0,
                                     ssl=server_ctx(certs, alpn=["h2", "http/1.1"]))
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            for client in (client_ctx(certs, alpn=["http/1.1"]), certs.client(alpn=["http/1.1"])):
                tr, pr = await gl.create_connection(lambda: Recorder(gl), "127.0.0.1", port,
                                                    ssl=client, server_hostname=HOST)
                assert tr.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
                tr.close()
                await pr.lost

    run(gl, go())


@pytest.mark.parametrize("mode", ["required", "optional"])
def test_client_certificates(gl, certs, mode):
    """A server that asks for client certificates: with one it sees the client's
    subject; without one, CERT_REQUIRED fails the handshake and CERT_OPTIONAL does not."""
    verify = ssl.CERT_REQUIRED if mode == "required" else ssl.CERT_OPTIONAL

    async def go():
        protos = []

        def factory():
            protos.append(EchoServer(gl))
            return protos[-1]

        errors = []
        gl.set_exception_handler(lambda _l, ctx: errors.append(ctx.get("exception")))
        srv = await gl.create_server(factory, "127.0.0.1", 0,
                                     ssl=server_ctx(certs, client_ca=verify))
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            tr, pr = await gl.create_connection(lambda: Recorder(gl), "127.0.0.1", port,
                                                ssl=certs.client(cert=True), server_hostname=HOST)
            await protos[0].made
            cert = protos[0].transport.get_extra_info("peercert")
            assert dict(x[0] for x in cert["subject"])["commonName"] == "goloop client"
            tr.close()
            await pr.lost
            if mode == "required":
                # TLS 1.2, so that the client hears of the refusal in its
                # handshake (under 1.3 it comes after, as an alert on a read).
                with pytest.raises((ssl.SSLError, ConnectionResetError)):
                    tr, pr = await gl.create_connection(
                        lambda: Recorder(gl), "127.0.0.1", port,
                        ssl=certs.client(version=ssl.TLSVersion.TLSv1_2), server_hostname=HOST)
                # The app's protocol was made at accept, but never connected.
                assert len(protos) == 2 and not protos[1].made.done()
            else:
                tr, pr = await gl.create_connection(lambda: Recorder(gl), "127.0.0.1", port,
                                                    ssl=certs.client(), server_hostname=HOST)
                await protos[1].made
                assert protos[1].transport.get_extra_info("peercert") is None
                tr.close()
                await pr.lost

    run(gl, go())


@pytest.mark.parametrize("case,code", [("other", 62), ("self", 18), ("expired", 10)])
def test_verify_failures(gl, certs, case, code):
    """What ssl raises, with OpenSSL's verify codes: a name the certificate does not
    carry, a self-signed certificate, an expired one."""
    async def go():
        srv = await gl.create_server(lambda: EchoServer(gl), "127.0.0.1", 0,
                                     ssl=certs.server(case))
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            with pytest.raises(ssl.SSLCertVerificationError) as e:
                await gl.create_connection(lambda: Recorder(gl), "127.0.0.1", port,
                                           ssl=client_ctx(certs), server_hostname=HOST)
            assert e.value.verify_code == code, e.value.verify_message
            assert e.value.reason == "CERTIFICATE_VERIFY_FAILED"

    run(gl, go())


def test_python_client_rejects_go_server(gl, certs):
    """The other way round: the server's certificate does not name the host the
    Python client asks for, and the TLSContext server sees the client's alert."""
    async def go():
        srv = await gl.create_server(lambda: EchoServer(gl), "127.0.0.1", 0,
                                     ssl=server_ctx(certs, name="other"))
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            with pytest.raises(ssl.SSLCertVerificationError):
                await gl.create_connection(lambda: Recorder(gl), "127.0.0.1", port,
                                           ssl=certs.client(), server_hostname=HOST)

    run(gl, go())


def test_handshake_timeout_and_peer_silence(gl, certs):
    """A server that never answers: the handshake timeout aborts it as asyncio does,
    and Go's duplicate of the fd is closed (the loop fixture checks every fd)."""
    async def go():
        with listener() as lsock:
            with pytest.raises(ConnectionAbortedError):
                await gl.create_connection(lambda: Recorder(gl), *lsock.getsockname(),
                                           ssl=client_ctx(certs), server_hostname=HOST,
                                           ssl_handshake_timeout=0.2)

    run(gl, go())


def test_peer_closes_mid_handshake(gl, certs):
    def peer(lsock):
        conn, _ = lsock.accept()
        conn.recv(1)   # the ClientHello has begun: go away
        conn.close()

    async def go():
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            done = in_thread(gl, peer, lsock)
            with pytest.raises(ConnectionResetError):
                await gl.create_connection(lambda: Recorder(gl), *lsock.getsockname(),
                                           ssl=client_ctx(certs), server_hostname=HOST)
            await done

    run(gl, go())


def test_cancel_during_handshake(gl, certs):
    """Cancelling create_connection while Go's handshake waits for the server: the
    socket is closed (the peer reads EOF, so Go's duplicate is gone too) and no fd
    is left (the loop fixture checks)."""
    def peer(lsock, started):
        conn, _ = lsock.accept()
        conn.settimeout(PEER_TIMEOUT)
        with conn:
            assert conn.recv(1)   # the ClientHello: Go's handshake is under way
            gl.call_soon_threadsafe(started.set_result, None)
            while conn.recv(65536):
                pass
        return True

    async def go():
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            started = gl.create_future()
            closed = in_thread(gl, peer, lsock, started)
            task = asyncio.ensure_future(gl.create_connection(
                lambda: Recorder(gl), *lsock.getsockname(), ssl=client_ctx(certs),
                server_hostname=HOST))
            await started
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await closed

    run(gl, go())


def test_many_concurrent_handshakes(gl, certs):
    """64 connections at once through one TLSContext server, each checked by digest:
    handshakes run in parallel goroutines and every connection gets its own keys."""
    n = 64

    async def go():
        srv = await asyncio.start_server(_echo_handler, "127.0.0.1", 0, ssl=server_ctx(certs))
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            client = client_ctx(certs)

            async def one(i):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=client, server_hostname=HOST)
                payload = os.urandom(20_000 + i)
                writer.write(payload)
                got = await reader.readexactly(len(payload))
                writer.close()
                await writer.wait_closed()
                return hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()

            assert all(await asyncio.gather(*(one(i) for i in range(n))))

    run(gl, go())


async def _echo_handler(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def test_records_by_go_when_kernel_off(gl, certs, monkeypatch):
    """GOLOOP_KTLS=0 puts the records in Go's layer even where the kernel has TLS."""
    monkeypatch.setenv("GOLOOP_KTLS", "0")

    async def go():
        srv = await gl.create_server(lambda: EchoServer(gl), "127.0.0.1", 0, ssl=server_ctx(certs))
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            tr, pr = await gl.create_connection(lambda: Recorder(gl), "127.0.0.1", port,
                                                ssl=client_ctx(certs), server_hostname=HOST)
            tr.write(b"x" * 1000)
            assert await pr.received(1000) == b"x" * 1000
            assert tr.get_extra_info("ktls") is False
            tr.close()
            await pr.lost
            assert gl.tls_stats()["go"] == 2

    run(gl, go())


def test_bad_arguments(gl, certs, tmp_path):
    import goloop
    with pytest.raises(ValueError):
        goloop.TLSContext(ssl.PROTOCOL_TLS)
    ctx = goloop.TLSContext(ssl.PROTOCOL_TLS_CLIENT)
    with pytest.raises(FileNotFoundError):
        ctx.load_cert_chain(str(tmp_path / "missing.pem"))
    with pytest.raises(TypeError):
        ctx.load_verify_locations()
    with pytest.raises(ValueError):
        ctx.set_alpn_protocols([""])
    with pytest.raises(ValueError):
        ctx.verify_mode = ssl.CERT_NONE   # check_hostname is on, as ssl's
    with pytest.raises(ValueError):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    assert ctx.verify_mode == ssl.CERT_NONE
    with pytest.raises(TypeError):
        ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    srv_ctx = goloop.TLSContext(ssl.PROTOCOL_TLS_SERVER)
    srv_ctx.load_cert_chain(str(bad))

    async def go():
        with pytest.raises(ssl.SSLError):
            await gl.create_server(lambda: EchoServer(gl), "127.0.0.1", 0, ssl=srv_ctx)
        with pytest.raises(ValueError):   # a client that checks names needs one
            with listener() as lsock:
                await gl.create_connection(lambda: Recorder(gl), *lsock.getsockname(),
                                           ssl=client_ctx(certs), server_hostname="")
        with pytest.raises(TypeError):    # start_tls takes ssl.SSLContext only, for now
            with listener() as lsock:
                tr, _ = await gl.create_connection(asyncio.Protocol, *lsock.getsockname())
                try:
                    await gl.start_tls(tr, asyncio.Protocol(), client_ctx(certs))
                finally:
                    tr.close()

    run(gl, go())


def test_truncation_after_handshake(gl, certs):
    """The peer closes TCP without close_notify once the handshake is done: what came
    is delivered, then the end, as asyncio 3.11 does with OpenSSL (test_tls.py). In
    the VM the peer's FIN may come before the keys, which the kernel then refuses
    (-ENOTCONN): Go's record layer must take over."""
    check_truncation_after_handshake(gl, certs, client_ctx(certs))


def test_server_handshake_timeout(gl, certs):
    """A client that connects and never speaks is dropped after ssl_handshake_timeout
    while Go's handshake waits for its ClientHello; the app never sees the connection."""
    protos = []

    def client(addr):
        with socket.create_connection(addr, timeout=PEER_TIMEOUT) as s:
            return s.recv(100)     # EOF when the server gives up

    async def go():
        srv = await gl.create_server(lambda: protos.append(EchoServer(gl)) or protos[-1],
                                     "127.0.0.1", 0, ssl=server_ctx(certs),
                                     ssl_handshake_timeout=0.3)
        async with srv:
            t0 = gl.time()
            assert await in_thread(gl, client, srv.sockets[0].getsockname()) == b""
            assert gl.time() - t0 < 5
        assert all(not p.made.done() for p in protos)

    run(gl, go())


def test_loop_close_during_handshakes(gl, certs):
    """The loop closes while Go's handshakes wait on silent clients (server side) and
    a silent server (client side): close() returns, and every fd, the Go duplicates
    included, is closed (the loop fixture checks)."""
    socks = []

    async def go():
        srv = await gl.create_server(lambda: EchoServer(gl), "127.0.0.1", 0, ssl=server_ctx(certs))
        port = srv.sockets[0].getsockname()[1]
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", port), timeout=PEER_TIMEOUT)
            socks.append(s)
        lsock = listener()
        lsock.setblocking(False)   # the loop's sock_* methods want non-blocking sockets
        socks.append(lsock)
        task = asyncio.ensure_future(gl.create_connection(
            lambda: Recorder(gl), *lsock.getsockname(), ssl=client_ctx(certs),
            server_hostname=HOST))
        conn, _ = await gl.sock_accept(lsock)
        socks.append(conn)
        # The ClientHello arriving means the client's handshake is in Go's hands.
        assert await gl.sock_recv(conn, 1)
        srv.close()   # the listener only: the accepted connections stay in their handshakes
        return task

    task = run(gl, go())
    gl.close()
    try:
        for s in socks[:4]:       # the server side closed the silent clients
            s.settimeout(PEER_TIMEOUT)
            assert s.recv(100) == b""
        socks[-1].settimeout(PEER_TIMEOUT)
        while socks[-1].recv(65536):   # the client side closed its socket too
            pass
    finally:
        for s in socks:
            s.close()

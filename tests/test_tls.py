"""TLS over any ssl.SSLContext (create_connection, create_server, streams, start_tls),
over TCP and Unix sockets, on goloop, uvloop and asyncio's own loop.

asyncio 3.11's SSLProtocol (asyncio/sslproto.py) is the specification: the same
handshake and shutdown timeouts with the same exceptions, close_notify on close, the
same eof_received/connection_lost order, ssl errors raised where asyncio raises them,
and flow control in both directions. goloop runs that state machine in C
(_core/tls.c); GOLOOP_TLS=python switches back to asyncio's own, and a goloop-only
test proves that the C path runs no Python frame of asyncio's or goloop's per record.

Certificates are made once per session with Debian's `openssl` command: a CA, a
server certificate for localhost/127.0.0.1 and one for another name, a client
certificate, and a self-signed one. Peers that must misbehave (never speak, close
without close_notify, never answer close_notify) are blocking sockets in a thread
(peers.py), so a failure points at the loop under test."""

import asyncio
import gc
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading

import pytest

from bounded import run
from peers import PEER_TIMEOUT, Recorder, in_thread, listener

if shutil.which("openssl") is None:  # pragma: no cover
    pytest.skip("the openssl command is needed to make test certificates", allow_module_level=True)

HOST = "localhost"
MiB = 1 << 20


# -- certificates ------------------------------------------------------------------------

def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(d, name, cn, ext, ca="ca"):
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    with open(os.path.join(d, f"{name}.ext"), "w") as f:
        f.write(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
             cwd=d)


def _expired(d):
    """expired.pem/.key: signed by the CA for localhost, valid only in 2020 (the
    openssl command cannot set dates in the past; Debian's python3-cryptography can)."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    with open(os.path.join(d, "ca.pem"), "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    with open(os.path.join(d, "ca.key"), "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime(2020, 1, 1))
            .not_valid_after(datetime.datetime(2020, 1, 2))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(HOST), x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    with open(os.path.join(d, "expired.pem"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(os.path.join(d, "expired.key"), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tls-certs"))
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=goloop test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _issue(d, "server", HOST, "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
           "extendedKeyUsage=serverAuth\n")
    _issue(d, "other", "other.example", "subjectAltName=DNS:other.example\n"
           "extendedKeyUsage=serverAuth\n")
    _issue(d, "client", "goloop client", "extendedKeyUsage=clientAuth\n")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", "self.key", "-out", "self.pem", "-days", "2",
             "-subj", f"/CN={HOST}", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             cwd=d)
    _expired(d)

    class Certs:
        dir = d

        def path(self, name):
            return os.path.join(d, name)

        def server(self, name="server", *, version=None, alpn=None, client_ca=False):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.path(f"{name}.pem"), self.path(f"{name}.key"))
            _pin(ctx, version)
            if alpn:
                ctx.set_alpn_protocols(alpn)
            if client_ca:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(self.path("ca.pem"))
            return ctx

        def client(self, *, version=None, alpn=None, cert=False):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and name
            ctx.load_verify_locations(self.path("ca.pem"))
            _pin(ctx, version)
            if alpn:
                ctx.set_alpn_protocols(alpn)
            if cert:
                ctx.load_cert_chain(self.path("client.pem"), self.path("client.key"))
            return ctx

    return Certs()


def _pin(ctx, version):
    if version is not None:
        ctx.minimum_version = version
        ctx.maximum_version = version


VERSIONS = [pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2"),
            pytest.param(ssl.TLSVersion.TLSv1_3, id="tls1.3")]


# -- helpers -----------------------------------------------------------------------------

class EchoServer(asyncio.Protocol):
    """Echoes; records what it saw."""

    def __init__(self, loop):
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.n = 0
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.made.set_result(transport)

    def data_received(self, data):
        self.n += len(data)
        self.transport.write(data)

    def eof_received(self):
        return None

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


async def serve(loop, factory, ctx, family, tmp_path, **kw):
    """A TLS server on the loop; (server, address args for create_connection)."""
    if family == "unix":
        path = str(tmp_path / "tls.sock")
        srv = await loop.create_unix_server(factory, path, ssl=ctx, **kw)
        return srv, {"path": path}
    srv = await loop.create_server(factory, "127.0.0.1", 0, ssl=ctx, **kw)
    host, port = srv.sockets[0].getsockname()[:2]
    return srv, {"host": host, "port": port}


async def connect(loop, factory, addr, ctx, **kw):
    kw.setdefault("server_hostname", HOST)
    if "path" in addr:
        return await loop.create_unix_connection(factory, addr["path"], ssl=ctx, **kw)
    return await loop.create_connection(factory, addr["host"], addr["port"], ssl=ctx, **kw)


def wrap_peer(ctx, conn, server_side):
    # A ragged EOF (no close_notify) raises SSLEOFError instead of reading as b"".
    return ctx.wrap_socket(conn, server_side=server_side, suppress_ragged_eofs=False,
                           server_hostname=None if server_side else HOST)


def raw_close(tls):
    """Close the TCP connection under a TLS socket without close_notify."""
    fd = tls.detach()
    s = socket.socket(fileno=fd)
    s.shutdown(socket.SHUT_RDWR)
    s.close()


# -- handshake, versions, data ----------------------------------------------------------

@pytest.mark.parametrize("family", ["tcp", "unix"])
@pytest.mark.parametrize("version", VERSIONS)
def test_echo_client_and_server(loop, certs, family, version, tmp_path):
    async def go():
        server_proto = []

        def factory():
            server_proto.append(EchoServer(loop))
            return server_proto[-1]

        srv, addr = await serve(loop, factory, certs.server(version=version), family, tmp_path)
        try:
            tr, pr = await connect(loop, lambda: Recorder(loop), addr, certs.client())
            sobj = tr.get_extra_info("ssl_object")
            assert sobj.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                      ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
            payload = os.urandom(100_000)
            tr.write(payload[:1])
            tr.writelines([payload[1:500], memoryview(payload)[500:70_000],
                           bytearray(payload[70_000:])])
            assert await pr.received(len(payload)) == payload
            tr.close()
            assert tr.is_closing()
            assert await pr.lost is None
            assert await server_proto[0].lost is None
            assert pr.compact_events()[:2] == ["made", "data"]
        finally:
            srv.close()
            await srv.wait_closed()

    run(loop, go())


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_streams(loop, certs, family, tmp_path):
    async def go():
        async def handle(reader, writer):
            assert writer.get_extra_info("ssl_object") is not None
            while line := await reader.readline():
                writer.write(line.upper())
                await writer.drain()
            writer.close()
            await writer.wait_closed()

        if family == "unix":
            path = str(tmp_path / "s.sock")
            srv = await asyncio.start_unix_server(handle, path, ssl=certs.server())
            r, w = await asyncio.open_unix_connection(path, ssl=certs.client(),
                                                      server_hostname=HOST)
        else:
            srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=certs.server())
            port = srv.sockets[0].getsockname()[1]
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=certs.client(),
                                                 server_hostname=HOST)
        async with srv:
            for i in range(50):
                w.write(b"line %d\n" % i)
                assert await r.readline() == b"LINE %d\n" % i
            w.close()
            await w.wait_closed()

    run(loop, go())


def test_alpn(loop, certs, tmp_path):
    async def go():
        got = []

        class P(EchoServer):
            def connection_made(self, transport):
                got.append(transport.get_extra_info("ssl_object").selected_alpn_protocol())
                super().connection_made(transport)

        srv, addr = await serve(loop, lambda: P(loop), certs.server(alpn=["h2", "http/1.1"]),
                                "tcp", tmp_path)
        async with srv:
            tr, pr = await connect(loop, lambda: Recorder(loop), addr,
                                   certs.client(alpn=["foo", "http/1.1"]))
            assert tr.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
            tr.close()
            await pr.lost
        assert got == ["http/1.1"]

    run(loop, go())


def test_extra_info(loop, loop_name, certs, tmp_path):
    async def go():
        srv, addr = await serve(loop, lambda: EchoServer(loop), certs.server(), "tcp", tmp_path)
        async with srv:
            ctx = certs.client()
            tr, pr = await connect(loop, lambda: Recorder(loop), addr, ctx)
            if loop_name != "uvloop":  # uvloop's SSL transport is not an asyncio.Transport
                assert isinstance(tr, asyncio.Transport)
            assert isinstance(tr.get_extra_info("ssl_object"), ssl.SSLObject)
            assert tr.get_extra_info("sslcontext") is ctx
            cert = tr.get_extra_info("peercert")
            assert dict(x[0] for x in cert["subject"])["commonName"] == HOST
            name, proto, bits = tr.get_extra_info("cipher")
            assert isinstance(name, str) and proto.startswith("TLSv") and bits >= 128
            assert tr.get_extra_info("compression") is None
            sock = tr.get_extra_info("socket")
            assert sock.getpeername() == (addr["host"], addr["port"])
            assert tr.get_extra_info("peername") == (addr["host"], addr["port"])
            assert tr.get_extra_info("sockname") == sock.getsockname()
            assert tr.get_extra_info("no such key", "dflt") == "dflt"
            assert tr.get_protocol() is pr
            assert tr.can_write_eof() is False
            with pytest.raises(NotImplementedError):
                tr.write_eof()
            with pytest.raises(TypeError, match="data: expecting a bytes-like instance, got str"):
                tr.write("text")
            assert tr.is_reading()
            tr.close()
            await pr.lost

    run(loop, go())


def test_server_side_extra_info(loop, loop_name, certs, tmp_path):
    """The server's TLS transport for an accepted connection: its addresses are
    the client's, its socket is the connection with TCP_NODELAY, as asyncio sets
    it on every TCP transport. goloop makes
    that transport in C from Go's accept record (no socket object until asked),
    as it does without TLS."""
    async def go():
        made = []

        def factory():
            made.append(EchoServer(loop))
            return made[-1]

        srv, addr = await serve(loop, factory, certs.server(), "tcp", tmp_path)
        async with srv:
            tr, pr = await connect(loop, lambda: Recorder(loop), addr, certs.client())
            client = tr.get_extra_info("socket")
            want = {"sockname": client.getpeername(), "peername": client.getsockname()}
            str_ = await made[0].made
            seen = {k: str_.get_extra_info(k) for k in want}
            sock = str_.get_extra_info("socket")
            kind = (sock.family, sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0)
            assert str_.get_extra_info("peercert") is None  # no client certificate asked
            tr.close()
            await pr.lost
            await made[0].lost
            after = {k: str_.get_extra_info(k) for k in want}
            return want, seen, kind, after

    want, seen, kind, after = run(loop, go())
    assert seen == want
    assert kind == (socket.AF_INET, True)
    # asyncio's TLS transport answers from the connection under it, which it
    # lets go of once the connection is lost.
    assert after == {"sockname": None, "peername": None}


@pytest.mark.skip_loop("uvloop", "uvloop reports a factory error to the exception handler outside "
                       "debug mode too, then accepts nothing more on that server")
def test_server_factory_error_closes_connection_and_serving_goes_on(loop, loop_name, certs,
                                                                    tmp_path):
    """A TLS server's protocol factory raises for the first connection: that
    connection is closed, the next is served, and only debug mode reports the
    error (asyncio's message), as without TLS."""
    async def go():
        errors = []
        loop.set_exception_handler(lambda lp, ctx: errors.append(
            (ctx.get("message"), type(ctx.get("exception")))))
        loop.set_debug(True)
        calls = []

        def factory():
            calls.append(1)
            if len(calls) == 1:
                raise ZeroDivisionError("factory")
            return EchoServer(loop)

        try:
            srv, addr = await serve(loop, factory, certs.server(), "tcp", tmp_path)
            async with srv:
                first = socket.socket()
                first.setblocking(False)
                try:
                    await loop.sock_connect(first, (addr["host"], addr["port"]))
                    if loop_name == "goloop":  # asyncio leaves the socket to the collector
                        assert await loop.sock_recv(first, 10) == b""
                    tr, pr = await connect(loop, lambda: Recorder(loop), addr, certs.client())
                    tr.write(b"ping")
                    assert await pr.received(4) == b"ping"
                    tr.close()
                    await pr.lost
                finally:
                    first.close()
        finally:
            loop.set_debug(False)
            loop.set_exception_handler(None)
        return errors, len(calls)

    errors, calls = run(loop, go())
    assert calls == 2
    assert errors == [("Error on transport creation for incoming connection", ZeroDivisionError)]
    gc.collect()


# -- certificates and errors -------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_client_certificate_required(loop, certs, version, tmp_path):
    async def go():
        seen = []

        class P(EchoServer):
            def connection_made(self, transport):
                seen.append(transport.get_extra_info("peercert"))
                super().connection_made(transport)

        srv, addr = await serve(loop, lambda: P(loop),
                                certs.server(version=version, client_ca=True), "tcp", tmp_path)
        async with srv:
            tr, pr = await connect(loop, lambda: Recorder(loop), addr, certs.client(cert=True))
            tr.write(b"ping")
            assert await pr.received(4) == b"ping"
            tr.close()
            await pr.lost
            assert dict(x[0] for x in seen[0]["subject"])["commonName"] == "goloop client"

            # Without a certificate: the server refuses. Under TLS 1.2 the client's
            # handshake fails; under 1.3 the client finishes first and then reads the
            # server's alert, so the connection ends with an error or a reset.
            try:
                tr, pr = await connect(loop, lambda: Recorder(loop), addr, certs.client())
            except (ssl.SSLError, ConnectionResetError):
                assert version == ssl.TLSVersion.TLSv1_2
            else:
                exc = await pr.lost
                assert exc is None or isinstance(exc, (ssl.SSLError, ConnectionResetError))
                assert pr.data == b""
            assert len(seen) == 1

    run(loop, go())


def test_hostname_mismatch(loop, certs, tmp_path):
    async def go():
        srv, addr = await serve(loop, lambda: EchoServer(loop), certs.server("other"),
                                "tcp", tmp_path)
        async with srv:
            with pytest.raises(ssl.SSLCertVerificationError) as info:
                await connect(loop, lambda: Recorder(loop), addr, certs.client())
            assert "Hostname mismatch" in str(info.value) or "match" in str(info.value)

    run(loop, go())


def test_self_signed_rejected(loop, certs, tmp_path):
    async def go():
        srv, addr = await serve(loop, lambda: EchoServer(loop), certs.server("self"),
                                "tcp", tmp_path)
        async with srv:
            with pytest.raises(ssl.SSLCertVerificationError) as info:
                await connect(loop, lambda: Recorder(loop), addr, certs.client())
            assert info.value.verify_code in (18, 19, 20, 21)  # self-signed / unknown issuer

    run(loop, go())


def test_expired_certificate_rejected(loop, certs, tmp_path):
    async def go():
        srv, addr = await serve(loop, lambda: EchoServer(loop), certs.server("expired"),
                                "tcp", tmp_path)
        async with srv:
            with pytest.raises(ssl.SSLCertVerificationError) as info:
                await connect(loop, lambda: Recorder(loop), addr, certs.client())
            assert info.value.verify_code == 10   # X509_V_ERR_CERT_HAS_EXPIRED
            assert "expired" in str(info.value)

    run(loop, go())


@pytest.mark.parametrize("version", VERSIONS)
def test_session_resumption(loop, certs, version, tmp_path):
    """A Python client resumes its session with the loop's server (TLS 1.2 session
    tickets, TLS 1.3 tickets sent after the handshake), and the loop's client offers a
    session asyncio's API cannot pass, so only the server side is asked of it."""
    ctx_server = certs.server(version=version)

    async def go():
        srv, addr = await serve(loop, lambda: EchoServer(loop), ctx_server, "tcp", tmp_path)
        async with srv:
            def client():
                ctx = certs.client(version=version)
                session = None
                reused = []
                for _ in range(2):
                    with socket.create_connection((addr["host"], addr["port"]),
                                                  timeout=PEER_TIMEOUT) as sock:
                        with ctx.wrap_socket(sock, server_hostname=HOST, session=session) as tls:
                            tls.sendall(b"ping")
                            assert tls.recv(4) == b"ping"   # a 1.3 ticket is read on the way
                            reused.append(tls.session_reused)
                            session = tls.session
                            tls.unwrap()
                return reused

            assert await in_thread(loop, client) == [False, True]

    run(loop, go())


def test_version_mismatch_ssl_error(loop, certs):
    """The server speaks only TLS 1.2, the client only 1.3: the server's alert comes
    back as ssl.SSLError from create_connection."""
    def peer(lsock):
        conn, _ = lsock.accept()
        conn.settimeout(PEER_TIMEOUT)
        with pytest.raises(ssl.SSLError):
            wrap_peer(certs.server(version=ssl.TLSVersion.TLSv1_2), conn, True)
        conn.close()

    async def go():
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            served = in_thread(loop, peer, lsock)
            with pytest.raises(ssl.SSLError):
                await loop.create_connection(lambda: Recorder(loop), *lsock.getsockname(),
                                             ssl=certs.client(version=ssl.TLSVersion.TLSv1_3),
                                             server_hostname=HOST)
            await served

    run(loop, go())


# -- endings: close_notify, truncation, abort --------------------------------------------

def test_close_sends_close_notify(loop, certs):
    def peer(lsock):
        conn, _ = lsock.accept()
        conn.settimeout(PEER_TIMEOUT)
        tls = wrap_peer(certs.server(), conn, True)
        data = tls.recv(100)
        tls.unwrap()          # succeeds only on the loop's close_notify, and answers it
        conn.close()
        return data

    async def go():
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            served = in_thread(loop, peer, lsock)
            tr, pr = await loop.create_connection(lambda: Recorder(loop), *lsock.getsockname(),
                                                  ssl=certs.client(), server_hostname=HOST)
            tr.write(b"bye")
            await asyncio.sleep(0)
            tr.close()
            assert await served == b"bye"
            assert await pr.lost is None
            # asyncio calls eof_received when the shutdown completes, whoever began it.
            assert pr.events == ["made", "eof", "lost"]

    run(loop, go())


def test_peer_close_notify(loop, certs):
    """The peer ends with close_notify: eof_received, then connection_lost(None), and the
    peer's unwrap() gets the loop's close_notify back."""
    def peer(lsock):
        conn, _ = lsock.accept()
        conn.settimeout(PEER_TIMEOUT)
        tls = wrap_peer(certs.server(), conn, True)
        tls.sendall(b"last words")
        tls.unwrap()
        conn.close()

    async def go():
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            served = in_thread(loop, peer, lsock)
            tr, pr = await loop.create_connection(lambda: Recorder(loop), *lsock.getsockname(),
                                                  ssl=certs.client(), server_hostname=HOST)
            assert await pr.lost is None
            await served
            assert bytes(pr.data) == b"last words"
            assert pr.compact_events() == ["made", "data", "eof", "lost"]

    run(loop, go())


def check_truncation_after_handshake(loop, certs, client_ssl):
    """A peer that sends, then closes TCP without close_notify: what came is
    delivered, then the end, without an error other than ConnectionResetError.
    Also test_gotls.py's, with a goloop.TLSContext as client_ssl."""
    def peer(lsock):
        conn, _ = lsock.accept()
        conn.settimeout(PEER_TIMEOUT)
        tls = wrap_peer(certs.server(), conn, True)
        tls.sendall(b"partial")
        raw_close(tls)

    async def go():
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            served = in_thread(loop, peer, lsock)
            tr, pr = await loop.create_connection(lambda: Recorder(loop), *lsock.getsockname(),
                                                  ssl=client_ssl, server_hostname=HOST)
            await served
            exc = await pr.lost
            assert exc is None or isinstance(exc, ConnectionResetError)
            assert bytes(pr.data) == b"partial"

    run(loop, go())


def test_truncation_after_handshake(loop, certs):
    """The peer closes TCP without close_notify: asyncio 3.11 delivers what came, then
    eof_received and connection_lost(None) (it does not report the truncation)."""
    check_truncation_after_handshake(loop, certs, certs.client())


def test_truncation_during_handshake(loop, certs):
    """The peer closes in the middle of the handshake: ConnectionResetError."""
    def peer(lsock):
        conn, _ = lsock.accept()
        conn.settimeout(PEER_TIMEOUT)
        conn.recv(1)          # the ClientHello has started
        conn.shutdown(socket.SHUT_RDWR)
        conn.close()

    async def go():
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            served = in_thread(loop, peer, lsock)
            with pytest.raises(ConnectionResetError):
                await loop.create_connection(lambda: Recorder(loop), *lsock.getsockname(),
                                             ssl=certs.client(), server_hostname=HOST)
            await served

    run(loop, go())


def test_abort(loop, certs):
    """abort(): connection_lost(None), the peer sees the end of the stream."""
    def peer(lsock):
        conn, _ = lsock.accept()
        conn.settimeout(PEER_TIMEOUT)
        tls = wrap_peer(certs.server(), conn, True)
        tls.sendall(b"x")
        try:
            data = tls.recv(100)
        except (ssl.SSLEOFError, ConnectionResetError):
            data = "eof-without-close-notify"
        conn.close()
        return data

    async def go():
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            served = in_thread(loop, peer, lsock)
            tr, pr = await loop.create_connection(lambda: Recorder(loop), *lsock.getsockname(),
                                                  ssl=certs.client(), server_hostname=HOST)
            await pr.received(1)
            tr.abort()
            assert tr.is_closing()
            assert await pr.lost is None
            # (Python's ssl reads an EOF right after a TLS 1.3 session ticket
            # exchange as b"", whether or not close_notify came.)
            assert await served in (b"", "eof-without-close-notify")

    run(loop, go())


# -- timeouts ----------------------------------------------------------------------------

def test_handshake_timeout_client(loop, certs):
    async def go():
        with listener() as lsock:  # accepts in the kernel, never speaks
            with pytest.raises(ConnectionAbortedError,
                               match="SSL handshake is taking longer than 0.3 seconds"):
                await loop.create_connection(lambda: Recorder(loop), *lsock.getsockname(),
                                             ssl=certs.client(), server_hostname=HOST,
                                             ssl_handshake_timeout=0.3)

    run(loop, go())


def test_handshake_timeout_server(loop, certs, tmp_path):
    """A client that connects and never speaks is dropped after ssl_handshake_timeout;
    the protocol factory's protocol never sees connection_made."""
    made = []

    def client(addr):
        with socket.create_connection((addr["host"], addr["port"]), timeout=PEER_TIMEOUT) as s:
            return s.recv(100)     # EOF when the server gives up

    async def go():
        srv, addr = await serve(loop, lambda: made.append(1) or EchoServer(loop),
                                certs.server(), "tcp", tmp_path, ssl_handshake_timeout=0.3)
        async with srv:
            t0 = loop.time()
            assert await in_thread(loop, client, addr) == b""
            assert loop.time() - t0 < 5
        assert made == [1] or made == []  # asyncio makes the protocol before the handshake

    run(loop, go())


def test_shutdown_timeout(loop, certs):
    """The peer never answers close_notify (it stops reading): after
    ssl_shutdown_timeout the connection is aborted, connection_lost(TimeoutError)."""
    release = threading.Event()

    def peer(lsock):
        conn, _ = lsock.accept()
        conn.settimeout(PEER_TIMEOUT)
        tls = wrap_peer(certs.server(), conn, True)
        tls.sendall(b"hi")
        release.wait(PEER_TIMEOUT)
        conn.close()

    async def go():
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            served = in_thread(loop, peer, lsock)
            try:
                tr, pr = await loop.create_connection(
                    lambda: Recorder(loop), *lsock.getsockname(), ssl=certs.client(),
                    server_hostname=HOST, ssl_shutdown_timeout=0.3)
                await pr.received(2)
                t0 = loop.time()
                tr.close()
                exc = await pr.lost
                assert isinstance(exc, TimeoutError), exc
                assert str(exc) == "SSL shutdown timed out"
                assert 0.25 < loop.time() - t0 < 5
            finally:
                release.set()
                await served

    run(loop, go())


def test_bad_timeouts(loop, certs):
    async def go():
        with listener() as lsock:
            for kw, msg in ((dict(ssl_handshake_timeout=0), "ssl_handshake_timeout"),
                            (dict(ssl_shutdown_timeout=-1), "ssl_shutdown_timeout")):
                with pytest.raises(ValueError, match=msg):
                    await loop.create_connection(lambda: Recorder(loop), *lsock.getsockname(),
                                                 ssl=certs.client(), server_hostname=HOST, **kw)

    run(loop, go())


# -- volume and flow control -------------------------------------------------------------

class DigestSink(asyncio.Protocol):
    def __init__(self, loop, n):
        self.h = hashlib.sha256()
        self.n = n
        self.got = 0
        self.done = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.h.update(data)
        self.got += len(data)
        if self.got >= self.n and not self.done.done():
            self.done.set_result(self.h.hexdigest())

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


class Pusher(DigestSink):
    """Writes a payload in chunks of `step`, honouring pause_writing/resume_writing,
    while hashing what it receives."""

    def __init__(self, loop, payload, step, n_in):
        super().__init__(loop, n_in)
        self.payload = payload
        self.step = step
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.pauses = self.resumes = 0

    def pause_writing(self):
        self.pauses += 1
        self.can_write.clear()

    def resume_writing(self):
        self.resumes += 1
        self.can_write.set()

    async def push(self):
        mv = memoryview(self.payload)
        for i in range(0, len(mv), self.step):
            await self.can_write.wait()
            self.transport.write(bytes(mv[i:i + self.step]))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("step", [pytest.param(16 * 1024 - 7, id="small"),
                                  pytest.param(MiB + 3, id="large")])
def test_16mib_both_ways(loop, certs, step, tmp_path):
    """16 MiB each way at once between a client and a server on the loop, checked by
    SHA-256, with write flow control on both sides."""
    n = 16 * MiB
    up, down = os.urandom(n), os.urandom(n)

    async def go():
        servers = []

        def factory():
            servers.append(Pusher(loop, down, step, n))
            return servers[-1]

        srv, addr = await serve(loop, factory, certs.server(), "tcp", tmp_path)
        async with srv:
            tr, cl = await connect(loop, lambda: Pusher(loop, up, step, n), addr, certs.client())
            while not servers or not hasattr(servers[0], "transport"):
                await asyncio.sleep(0)
            sv = servers[0]
            await asyncio.gather(cl.push(), sv.push())
            assert await sv.done == hashlib.sha256(up).hexdigest()
            assert await cl.done == hashlib.sha256(down).hexdigest()
            assert cl.pauses == cl.resumes and sv.pauses == sv.resumes
            tr.close()
            await cl.lost

    run(loop, go(), timeout=50)


def test_write_flow_control(loop, certs):
    """The app transport pauses its protocol above the high-water mark (what is not yet
    sent: the backlog plus OpenSSL's output not yet taken by the transport) and resumes
    it when the peer reads, in pairs."""
    total = 8 * MiB
    go_read = threading.Event()

    def peer(lsock):
        conn, _ = lsock.accept()
        conn.settimeout(PEER_TIMEOUT)
        tls = wrap_peer(certs.server(), conn, True)
        tls.sendall(b"!")
        go_read.wait(PEER_TIMEOUT)
        h, got = hashlib.sha256(), 0
        while got < total:
            chunk = tls.recv(1 << 16)
            if not chunk:
                break
            h.update(chunk)
            got += len(chunk)
        tls.close()
        return h.hexdigest()

    async def go():
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            served = in_thread(loop, peer, lsock)
            tr, pr = await loop.create_connection(lambda: Recorder(loop), *lsock.getsockname(),
                                                  ssl=certs.client(), server_hostname=HOST)
            await pr.received(1)
            tr.set_write_buffer_limits(high=256 * 1024)
            assert tr.get_write_buffer_limits() == (64 * 1024, 256 * 1024)
            payload = os.urandom(total)
            for i in range(0, total, 64 * 1024):
                tr.write(payload[i:i + 64 * 1024])
            assert pr.pauses == 1
            assert tr.get_write_buffer_size() > 256 * 1024
            go_read.set()
            assert await served == hashlib.sha256(payload).hexdigest()
            await pr.resumed
            assert pr.resumes == 1
            tr.close()
            await pr.lost

    run(loop, go(), timeout=30)


def test_pause_reading(loop, certs):
    """pause_reading on the app transport: no data_received until resume_reading, and
    the TLS protocol stops reading the connection once its buffer is full (the
    peer's send blocks), so what waits is bounded."""
    total = 16 * MiB
    payload = os.urandom(total)

    def peer(lsock):
        conn, _ = lsock.accept()
        conn.settimeout(PEER_TIMEOUT)
        tls = wrap_peer(certs.server(), conn, True)
        tls.sendall(b"!")
        tls.sendall(payload)
        tls.recv(1)
        tls.close()

    async def go():
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            served = in_thread(loop, peer, lsock)
            tr, pr = await loop.create_connection(lambda: Recorder(loop), *lsock.getsockname(),
                                                  ssl=certs.client(), server_hostname=HOST)
            await pr.received(1)
            tr.pause_reading()
            assert not tr.is_reading()
            seen = len(pr.data)
            # Nothing to wait for: this checks that nothing happens while paused.
            await asyncio.sleep(0.3)
            assert len(pr.data) == seen
            # The TLS layer's read buffer stops growing at its limit (256 KiB) plus
            # what one receive brings: the connection is paused under it.
            if hasattr(tr, "get_read_buffer_size"):
                assert tr.get_read_buffer_size() < 4 * MiB
            tr.resume_reading()
            assert tr.is_reading()
            data = await pr.received(1 + total)
            assert hashlib.sha256(data[1:]).digest() == hashlib.sha256(payload).digest()
            tr.write(b".")
            await served
            tr.close()
            await pr.lost

    run(loop, go(), timeout=30)


def test_peer_ends_while_app_paused(loop, certs):
    """Data and close_notify arrive while the app transport is paused: nothing is
    delivered until resume_reading, then the data, eof_received and
    connection_lost(None), in that order."""
    sent = loop.create_future()

    def peer(lsock):
        conn, _ = lsock.accept()
        conn.settimeout(PEER_TIMEOUT)
        tls = wrap_peer(certs.server(), conn, True)
        tls.sendall(b"!")
        assert tls.recv(1) == b"p"      # the app has paused
        tls.sendall(b"held back")
        # close_notify out, then wait for the loop's (which follows resume_reading)
        loop.call_soon_threadsafe(sent.set_result, None)
        tls.unwrap()
        conn.close()

    async def go():
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            served = in_thread(loop, peer, lsock)
            tr, pr = await loop.create_connection(lambda: Recorder(loop), *lsock.getsockname(),
                                                  ssl=certs.client(), server_hostname=HOST)
            await pr.received(1)
            tr.pause_reading()
            tr.write(b"p")
            await sent
            # Nothing to wait for: this checks that nothing is delivered while paused
            # (the peer's data and close_notify arrive meanwhile).
            await asyncio.sleep(0.3)
            assert bytes(pr.data) == b"!" and not pr.eof.done()
            tr.resume_reading()
            assert await pr.lost is None
            await served
            assert bytes(pr.data) == b"!held back"
            assert pr.compact_events() == ["made", "data", "eof", "lost"]

    run(loop, go())


class BufferedEcho(asyncio.BufferedProtocol):
    """A BufferedProtocol app with a small buffer: many buffer_updated per record."""

    def __init__(self, loop, n, kind):
        self.buf = bytearray(1000)
        self.view = self.buf if kind == "bytearray" else memoryview(self.buf)
        self.h = hashlib.sha256()
        self.n = n
        self.got = 0
        self.done = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, hint):
        return self.view

    def buffer_updated(self, k):
        data = bytes(self.buf[:k])
        self.h.update(data)
        self.got += k
        self.transport.write(data)
        if self.got >= self.n and not self.done.done():
            self.done.set_result(self.h.hexdigest())

    def eof_received(self):
        return None

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


@pytest.mark.parametrize("kind", [
    "memoryview",
    pytest.param("bytearray", marks=pytest.mark.xfail_loop(
        "asyncio", reason="asyncio 3.11 reads the rest of a record into buf[offset:], a "
        "copy when get_buffer() returns a bytearray: those bytes are lost")),
])
@pytest.mark.no_fd_check("asyncio", reason="the bytearray case fails on asyncio with fds open")
def test_buffered_protocol(loop, certs, kind, tmp_path):
    n = 3 * MiB + 1

    async def go():
        servers = []

        def factory():
            servers.append(BufferedEcho(loop, n, kind))
            return servers[-1]

        srv, addr = await serve(loop, factory, certs.server(), "tcp", tmp_path)
        async with srv:
            tr, pr = await connect(loop, lambda: DigestSink(loop, n), addr, certs.client())
            payload = os.urandom(n)
            tr.write(payload)
            digest = hashlib.sha256(payload).hexdigest()
            assert await pr.done == digest
            assert await servers[0].done == digest
            tr.close()
            await pr.lost

    run(loop, go(), timeout=30)


# -- start_tls, loop close ---------------------------------------------------------------

def test_start_tls_both_sides(loop, certs):
    async def go():
        async def handle(reader, writer):
            assert await reader.readline() == b"STARTTLS\n"
            writer.write(b"OK\n")
            await writer.drain()
            await writer.start_tls(certs.server())
            while data := await reader.read(65536):
                writer.write(data)
            writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with srv:
            r, w = await asyncio.open_connection(*srv.sockets[0].getsockname())
            w.write(b"STARTTLS\n")
            assert await r.readline() == b"OK\n"
            await w.start_tls(certs.client(), server_hostname=HOST)
            assert w.get_extra_info("ssl_object") is not None
            payload = os.urandom(MiB)
            w.write(payload)
            assert await r.readexactly(len(payload)) == payload
            w.close()
            await w.wait_closed()

    run(loop, go())


@pytest.mark.no_fd_check("uvloop", reason="uvloop leaves the TLS server's fds to GC")
def test_loop_close_with_tls_open(loop, certs, tmp_path):
    """loop.close() with TLS connections open (client and server side) releases every
    fd (the loop fixture checks /proc/self/fd)."""
    async def go():
        srv, addr = await serve(loop, lambda: EchoServer(loop), certs.server(), "tcp", tmp_path)
        conns = []
        for _ in range(3):
            tr, pr = await connect(loop, lambda: Recorder(loop), addr, certs.client())
            tr.write(b"x")
            await pr.received(1)
            conns.append(tr)
        srv.close()
        return conns

    conns = run(loop, go())
    loop.close()
    for tr in conns:
        tr.abort() if not loop.is_closed() else None
    del conns


# -- goloop only -------------------------------------------------------------------------

def _goloop_only(loop_name):
    if loop_name != "goloop":
        pytest.skip("goloop's own switch and path")


def test_goloop_c_path_and_python_switch(loop, loop_name, certs, tmp_path, monkeypatch):
    """goloop's TLS transport is the C one; GOLOOP_TLS=python gives asyncio's."""
    _goloop_only(loop_name)
    from asyncio import sslproto

    async def one():
        srv, addr = await serve(loop, lambda: EchoServer(loop), certs.server(), "tcp", tmp_path)
        async with srv:
            tr, pr = await connect(loop, lambda: Recorder(loop), addr, certs.client())
            tr.write(b"abc")
            await pr.received(3)
            kind = type(tr)
            tr.close()
            await pr.lost
            return kind

    monkeypatch.delenv("GOLOOP_TLS", raising=False)
    assert type(run(loop, one())).__name__ != "_SSLProtocolTransport"
    assert run(loop, one()).__module__ == "goloop._core"
    monkeypatch.setenv("GOLOOP_TLS", "python")
    assert run(loop, one()) is sslproto._SSLProtocolTransport


def test_goloop_no_python_frames_per_record(loop, loop_name, certs, tmp_path, monkeypatch):
    """Once connected, an echo over TLS runs no Python function of asyncio or goloop:
    every record goes from Go's buffer through _ssl's C methods to the app protocol
    (whose own methods are the only Python frames)."""
    _goloop_only(loop_name)
    monkeypatch.delenv("GOLOOP_TLS", raising=False)
    import asyncio as _asyncio
    watched = (os.path.dirname(_asyncio.__file__), os.path.dirname(os.path.dirname(
        os.path.abspath(sys.modules["goloop"].__file__))))

    class Ping(asyncio.Protocol):
        def __init__(self):
            self.left = 200
            self.done = loop.create_future()

        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.left -= 1
            if self.left:
                self.transport.write(b"p" * 1024)
            else:
                self.done.set_result(None)

    class Pong(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    async def go():
        srv, addr = await serve(loop, Pong, certs.server(), "tcp", tmp_path)
        async with srv:
            tr, pr = await connect(loop, Ping, addr, certs.client())
            tr.write(b"warm")
            calls = []

            def prof(frame, event, arg):
                if event == "call" and frame.f_code.co_filename.startswith(watched):
                    calls.append(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")

            # The measured part runs inside the loop's own iterations: no await of ours.
            sys.setprofile(prof)
            try:
                await pr.done
            finally:
                sys.setprofile(None)
            tr.close()
            # Awaiting a future resumes this task through asyncio's Task/Future code
            # (in C); what is left may only be the callbacks around that wake-up.
            return calls

    calls = run(loop, go())
    per_record = [c for c in calls if "sslproto" in c or "/goloop/" in c]
    assert len(per_record) < 5, per_record[:20]

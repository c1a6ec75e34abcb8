"""loop.start_tls and StreamWriter.start_tls: upgrading a plain connection to TLS in
place (STARTTLS), client side and server side, over TCP and Unix sockets.

What matters for a loop: every byte that arrived before or while the transport was
paused for the upgrade reaches the new (TLS) protocol, in order; the handshake and
shutdown timeouts apply; a failed handshake raises the ssl error and closes the
connection. The far end is either the loop under test itself or a blocking socket
driven from a thread (peers.py), so a failure points at the loop under test."""

import asyncio
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time

import pytest

from bounded import run
from peers import PEER_TIMEOUT, Recorder, in_thread, listener

try:
    import test as _cpython_test  # Debian's libpython3.11-testsuite: its test certificates
    _CERTS = os.path.dirname(_cpython_test.__file__)
except ImportError:  # pragma: no cover
    _CERTS = None
if _CERTS is None or not os.path.exists(os.path.join(_CERTS, "keycert3.pem")):
    pytest.skip("CPython's test certificates (libpython3.11-testsuite) are missing",
                allow_module_level=True)

SIGNED = os.path.join(_CERTS, "keycert3.pem")      # key + certificate for 'localhost'
CA = os.path.join(_CERTS, "pycacert.pem")          # the CA that signed it
SELF_SIGNED_CERT = os.path.join(_CERTS, "ssl_cert.pem")
SELF_SIGNED_KEY = os.path.join(_CERTS, "ssl_key.pem")
HOST = "localhost"
PAYLOAD = os.urandom((1 << 20) + 12345)  # 1 MiB and an odd tail
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


def server_ctx(certfile=SIGNED, keyfile=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


def client_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the name
    ctx.load_verify_locations(CA)
    return ctx


def read_line(sock):
    """One line from a plain socket, a byte at a time: what follows the line (a TLS
    handshake) must stay in the kernel for the ssl module."""
    line = bytearray()
    while not line.endswith(b"\n"):
        b = sock.recv(1)
        if not b:
            raise EOFError(f"EOF after {bytes(line)!r}")
        line += b
    return bytes(line)


def tls_echo(tls, nbytes):
    """Echo nbytes on a blocking TLS socket; the digest of what came."""
    h = hashlib.sha256()
    n = 0
    while n < nbytes:
        chunk = tls.recv(1 << 16)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
        tls.sendall(chunk)
    return h.hexdigest()


def tls_send_then_read(tls, payload):
    """Send payload on a blocking TLS socket, then read its echo; the echo's digest.
    The loop under test buffers the echo meanwhile (its transport never blocks)."""
    tls.sendall(payload)
    h = hashlib.sha256()
    n = 0
    while n < len(payload):
        chunk = tls.recv(1 << 16)
        if not chunk:
            raise EOFError(f"EOF after {n} of {len(payload)} echoed bytes")
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest()


def close_quietly(tls):
    try:
        tls.unwrap()
    except (OSError, ssl.SSLError, ValueError):
        pass
    tls.close()


class Line(asyncio.BufferedProtocol):
    """The plain phase of a STARTTLS server: reads exactly one line ending in b"\\n"
    (its buffer never reaches past it, so whatever follows stays for the TLS
    protocol, as it would stay in the kernel for asyncio's recv_into) and pauses
    reading when the line is complete."""

    def __init__(self, loop, size):
        self.buf = bytearray(size)
        self.n = 0
        self.line = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, hint):
        return memoryview(self.buf)[self.n:self.n + 1]

    def buffer_updated(self, k):
        self.n += k
        if self.buf[self.n - 1:self.n] == b"\n" or self.n == len(self.buf):
            self.transport.pause_reading()
            self.line.set_result(bytes(self.buf[:self.n]))

    def eof_received(self):
        if not self.line.done():
            self.line.set_exception(EOFError())

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


class EchoDigest(asyncio.Protocol):
    """The TLS phase of a server: echoes, and hashes what it echoed."""

    def __init__(self, loop, nbytes):
        self.h = hashlib.sha256()
        self.n = 0
        self.nbytes = nbytes
        self.done = loop.create_future()
        self.lost = loop.create_future()

        self.transport = None
        self.early = []

    def connection_made(self, transport):  # start_tls does not call it
        raise AssertionError("start_tls called connection_made on the app protocol")

    def attach(self, transport):
        """start_tls returned its transport. TLS data may have come before that
        (in the chunk that finished the handshake): it is echoed now."""
        self.transport = transport
        for data in self.early:
            transport.write(data)
        self.early = None

    def data_received(self, data):
        self.h.update(data)
        self.n += len(data)
        if self.transport is None:
            self.early.append(data)
        else:
            self.transport.write(data)
        if self.n >= self.nbytes and not self.done.done():
            self.done.set_result(self.h.hexdigest())

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


# -- client side: loop.start_tls on a connection the loop made -------------------------

def test_client_upgrade(loop):
    def peer(lsock):
        conn, _ = lsock.accept()
        conn.settimeout(PEER_TIMEOUT)
        assert read_line(conn) == b"STARTTLS\n"
        conn.sendall(b"OK\n")
        tls = server_ctx().wrap_socket(conn, server_side=True)
        try:
            return tls_echo(tls, len(PAYLOAD))
        finally:
            close_quietly(tls)

    async def go():
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            served = in_thread(loop, peer, lsock)
            tr, pr = await loop.create_connection(lambda: Recorder(loop), *lsock.getsockname())
            tr.write(b"STARTTLS\n")
            assert await pr.received(3) == b"OK\n"
            app = Recorder(loop)
            tls_tr = await loop.start_tls(tr, app, client_ctx(), server_hostname=HOST)
            assert app.events == []  # start_tls does not call connection_made
            assert tls_tr.get_extra_info("sslcontext") is not None
            assert tls_tr.get_extra_info("peercert")["subject"]
            assert tls_tr.get_protocol() is app
            assert tr.get_protocol() is not pr  # the raw transport now feeds TLS
            tls_tr.write(PAYLOAD)
            echoed = await app.received(len(PAYLOAD))
            assert hashlib.sha256(echoed[:len(PAYLOAD)]).hexdigest() == DIGEST
            assert await served == DIGEST
            tls_tr.close()
            await app.lost
            assert tr.is_closing()
            assert pr.compact_events() == ["made", "data"]  # the plain protocol saw only b"OK\n"
            assert pr.data == b"OK\n"
    run(loop, go())


def test_client_upgrade_with_reply_right_behind(loop):
    """The server sends its first TLS bytes in the same segment as its plain reply
    (a ServerHello cannot come first, so here the client is the TLS server: the
    roles of the plain phase and of TLS need not match). Whatever came with the
    reply must reach the TLS protocol."""
    def peer(lsock):
        conn, _ = lsock.accept()
        conn.settimeout(PEER_TIMEOUT)
        assert read_line(conn) == b"STARTTLS\n"
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = client_ctx().wrap_bio(inc, out, server_hostname=HOST)
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        conn.sendall(b"OK\n" + out.read())  # reply and ClientHello in one segment
        return drive_bio(conn, obj, inc, out, PAYLOAD)

    async def go():
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            served = in_thread(loop, peer, lsock)
            line = Line(loop, 3)
            tr, _ = await loop.create_connection(lambda: line, *lsock.getsockname())
            tr.write(b"STARTTLS\n")
            assert await line.line == b"OK\n"
            app = EchoDigest(loop, len(PAYLOAD))
            tls_tr = await loop.start_tls(tr, app, server_ctx(), server_side=True)
            app.attach(tls_tr)
            assert await app.done == DIGEST
            assert await served == DIGEST
            tls_tr.close()
            await app.lost
    run(loop, go())


def drive_bio(sock, obj, inc, out, payload):
    """A TLS endpoint on a memory BIO over a blocking socket: finish the handshake,
    send payload and read its echo; the digest of the echo. Lets a test put plain
    bytes and TLS bytes in one segment."""
    def flush():
        data = out.read()
        if data:
            sock.sendall(data)

    def feed():
        data = sock.recv(1 << 16)
        if not data:
            raise EOFError("EOF during the TLS exchange")
        inc.write(data)

    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            flush()
            feed()
    flush()
    obj.write(payload)
    flush()
    h = hashlib.sha256()
    n = 0
    while n < len(payload):
        try:
            chunk = obj.read(1 << 16)
        except ssl.SSLWantReadError:
            feed()
            continue
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    try:
        obj.unwrap()
    except ssl.SSLError:
        pass
    flush()
    sock.close()
    return h.hexdigest()


def test_client_handshake_timeout(loop):
    done = threading.Event()

    def peer(lsock):
        conn, _ = lsock.accept()
        conn.settimeout(PEER_TIMEOUT)
        try:
            assert read_line(conn) == b"STARTTLS\n"
            conn.sendall(b"OK\n")
            # Never answers the ClientHello; reads until the client gives up.
            while conn.recv(1 << 16):
                pass
        except ConnectionResetError:
            pass
        finally:
            conn.close()
            done.set()

    async def go():
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            served = in_thread(loop, peer, lsock)
            tr, pr = await loop.create_connection(lambda: Recorder(loop), *lsock.getsockname())
            tr.write(b"STARTTLS\n")
            await pr.received(3)
            t0 = time.monotonic()
            with pytest.raises(ConnectionAbortedError, match="SSL handshake is taking longer than 0.3 seconds"):
                await loop.start_tls(tr, Recorder(loop), client_ctx(), server_hostname=HOST,
                                     ssl_handshake_timeout=0.3)
            assert 0.25 < time.monotonic() - t0 < 5
            assert tr.is_closing()
            await served  # the peer saw the connection end
    run(loop, go())


def test_client_bad_certificate(loop):
    """A certificate the client cannot verify: start_tls raises
    ssl.SSLCertVerificationError and the connection is closed."""
    def peer(lsock):
        conn, _ = lsock.accept()
        conn.settimeout(PEER_TIMEOUT)
        assert read_line(conn) == b"STARTTLS\n"
        conn.sendall(b"OK\n")
        try:
            tls = server_ctx(SELF_SIGNED_CERT, SELF_SIGNED_KEY).wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            conn.close()
            return "refused"
        tls.close()
        return "accepted"

    async def go():
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            served = in_thread(loop, peer, lsock)
            tr, pr = await loop.create_connection(lambda: Recorder(loop), *lsock.getsockname())
            tr.write(b"STARTTLS\n")
            await pr.received(3)
            with pytest.raises(ssl.SSLCertVerificationError):
                await loop.start_tls(tr, Recorder(loop), client_ctx(), server_hostname=HOST)
            assert tr.is_closing()
            assert await served == "refused"
    run(loop, go())


def test_client_shutdown_timeout(loop):
    """A peer that never answers close_notify: the TLS close gives up after
    ssl_shutdown_timeout (not the 30 s default) and the connection is lost with
    asyncio's TimeoutError."""
    release = threading.Event()

    def peer(lsock):
        conn, _ = lsock.accept()
        conn.settimeout(PEER_TIMEOUT)
        assert read_line(conn) == b"STARTTLS\n"
        conn.sendall(b"OK\n")
        tls = server_ctx().wrap_socket(conn, server_side=True)
        tls.sendall(b"hi")
        release.wait(PEER_TIMEOUT)  # silent: no close_notify back
        tls.close()

    async def go():
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            served = in_thread(loop, peer, lsock)
            try:
                tr, pr = await loop.create_connection(lambda: Recorder(loop), *lsock.getsockname())
                tr.write(b"STARTTLS\n")
                await pr.received(3)
                app = Recorder(loop)
                tls_tr = await loop.start_tls(tr, app, client_ctx(), server_hostname=HOST,
                                              ssl_shutdown_timeout=0.3)
                assert await app.received(2) == b"hi"
                t0 = time.monotonic()
                tls_tr.close()
                exc = await app.lost
                assert isinstance(exc, asyncio.TimeoutError), exc
                assert 0.25 < time.monotonic() - t0 < 5
                assert tr.is_closing()
            finally:
                release.set()
                await served
    run(loop, go())


# -- server side: loop.start_tls on an accepted connection ---------------------------

async def _serve_upgrade(loop, accepted, reply):
    """The loop's half of a server upgrade: wait for the STARTTLS line, answer, start
    TLS as the server, echo PAYLOAD back; the digest of what was echoed."""
    line = await accepted
    assert await line.line == b"STARTTLS\n"
    tr = line.transport
    if reply:
        tr.write(b"OK\n")
    app = EchoDigest(loop, len(PAYLOAD))
    tls_tr = await loop.start_tls(tr, app, server_ctx(), server_side=True)
    app.attach(tls_tr)
    digest = await app.done
    await app.lost  # the client ends TLS and the connection
    return digest


async def _line_server(loop):
    accepted = loop.create_future()

    def factory():
        p = Line(loop, 64)
        if not accepted.done():
            accepted.set_result(p)
        return p
    srv = await loop.create_server(factory, "127.0.0.1", 0)
    return srv, accepted


def test_server_upgrade(loop):
    def client(addr):
        with socket.create_connection(addr, timeout=PEER_TIMEOUT) as conn:
            conn.sendall(b"STARTTLS\n")
            assert read_line(conn) == b"OK\n"
            tls = client_ctx().wrap_socket(conn, server_hostname=HOST)
            try:
                return tls_send_then_read(tls, PAYLOAD)
            finally:
                close_quietly(tls)

    async def go():
        srv, accepted = await _line_server(loop)
        async with srv:
            sent = in_thread(loop, client, srv.sockets[0].getsockname())
            assert await _serve_upgrade(loop, accepted, reply=True) == DIGEST
            assert await sent == DIGEST
    run(loop, go())


def test_server_upgrade_handshake_pipelined(loop):
    """The client does not wait for a reply: its ClientHello (and nothing else) is in
    the same segment as the STARTTLS line, so the server reads the line and part of
    the handshake in one receive. The rest of that chunk must go to the TLS
    protocol that start_tls puts in, after the pause, in order."""
    def client(addr):
        conn = socket.create_connection(addr, timeout=PEER_TIMEOUT)
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = client_ctx().wrap_bio(inc, out, server_hostname=HOST)
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        conn.sendall(b"STARTTLS\n" + out.read())
        return drive_bio(conn, obj, inc, out, PAYLOAD)

    async def go():
        srv, accepted = await _line_server(loop)
        async with srv:
            sent = in_thread(loop, client, srv.sockets[0].getsockname())
            assert await _serve_upgrade(loop, accepted, reply=False) == DIGEST
            assert await sent == DIGEST
    run(loop, go())


def test_server_handshake_timeout(loop):
    """A client that never starts its handshake: the server's start_tls gives up."""
    release = threading.Event()

    def client(addr):
        with socket.create_connection(addr, timeout=PEER_TIMEOUT) as conn:
            conn.sendall(b"STARTTLS\n")
            release.wait(PEER_TIMEOUT)

    async def go():
        srv, accepted = await _line_server(loop)
        async with srv:
            sent = in_thread(loop, client, srv.sockets[0].getsockname())
            try:
                line = await accepted
                assert await line.line == b"STARTTLS\n"
                with pytest.raises(ConnectionAbortedError, match="SSL handshake is taking longer"):
                    await loop.start_tls(line.transport, Recorder(loop), server_ctx(),
                                         server_side=True, ssl_handshake_timeout=0.3)
                assert line.transport.is_closing()
            finally:
                release.set()
                await sent
    run(loop, go())


# -- the transport underneath: a protocol switch keeps what was held -------------------

class Prefix(asyncio.BufferedProtocol):
    """Takes exactly n bytes (a buffer never longer than what is left), then pauses."""

    def __init__(self, loop, n):
        self.buf = bytearray(n)
        self.n = 0
        self.full = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, hint):
        return memoryview(self.buf)[self.n:]

    def buffer_updated(self, k):
        self.n += k
        if self.n == len(self.buf):
            self.transport.pause_reading()
            self.full.set_result(bytes(self.buf))

    def eof_received(self):
        pass

    def connection_lost(self, exc):
        pass


@pytest.mark.parametrize("then_eof", [False, True], ids=["open", "eof"])
def test_switch_keeps_held_bytes_in_order(loop, then_eof):
    """What a paused transport already received (the rest of a chunk, chunks after
    it, an end of stream) goes to the protocol that is there when reading resumes,
    in order, exactly as asyncio leaves it in the kernel for the next reader."""
    async def go():
        with listener() as lsock:
            lsock.settimeout(PEER_TIMEOUT)
            first = Prefix(loop, 5)
            tr, _ = await loop.create_connection(lambda: first, *lsock.getsockname())
            peer, _ = lsock.accept()
        with peer:
            blob = b"HELLO" + os.urandom(300_000)

            def send():
                peer.sendall(blob)
                if then_eof:
                    peer.shutdown(socket.SHUT_WR)
            sent = in_thread(loop, send)
            assert await first.full == b"HELLO"
            # Let the rest reach the loop while paused (what arrives is held).
            for _ in range(3):
                await asyncio.sleep(0)
            second = Recorder(loop)
            tr.set_protocol(second)
            tr.resume_reading()
            got = await second.received(len(blob) - 5)
            assert got == blob[5:]
            await sent
            if then_eof:
                await second.eof
                assert second.compact_events()[:2] == ["data", "eof"]
            tr.close()
            await second.lost
    run(loop, go())


# -- StreamWriter.start_tls (3.11), TCP and Unix sockets -------------------------------

@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_streams_start_tls_both_sides(loop, family):
    async def handler(reader, writer):
        try:
            assert await reader.readline() == b"STARTTLS\n"
            writer.write(b"OK\n")
            await writer.drain()
            await writer.start_tls(server_ctx())
            assert writer.get_extra_info("sslcontext") is not None
            h = hashlib.sha256()
            n = 0
            while n < len(PAYLOAD):
                chunk = await reader.read(1 << 16)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
                writer.write(chunk)
                await writer.drain()
            served.set_result(h.hexdigest())
        except BaseException as exc:
            served.set_exception(exc)
        finally:
            writer.close()

    async def go():
        nonlocal served
        served = loop.create_future()
        with tempfile.TemporaryDirectory() as tmp:
            if family == "tcp":
                srv = await asyncio.start_server(handler, "127.0.0.1", 0)
                connect = asyncio.open_connection(*srv.sockets[0].getsockname()[:2])
            else:
                path = os.path.join(tmp, "s")
                srv = await asyncio.start_unix_server(handler, path)
                connect = asyncio.open_unix_connection(path)
            async with srv:
                reader, writer = await connect
                writer.write(b"STARTTLS\n")
                assert await reader.readline() == b"OK\n"
                await writer.start_tls(client_ctx(), server_hostname=HOST)
                assert writer.get_extra_info("peercert")["subject"]
                writer.write(PAYLOAD)
                echoed = await reader.readexactly(len(PAYLOAD))
                assert hashlib.sha256(echoed).hexdigest() == DIGEST
                assert await served == DIGEST
                assert await reader.read() == b""  # the server closed TLS cleanly
                writer.close()
                await writer.wait_closed()
    served = None
    run(loop, go())


def test_start_tls_wrong_arguments(loop):
    async def go():
        with pytest.raises(TypeError, match="SSLContext, got"):
            await loop.start_tls(None, None, None)
        with listener() as lsock:
            tr, pr = await loop.create_connection(lambda: Recorder(loop), *lsock.getsockname())
            try:
                with pytest.raises(TypeError, match="SSLContext, got"):
                    await loop.start_tls(tr, pr, object())
            finally:
                tr.close()
                await pr.lost
    run(loop, go())


# -- a real STARTTLS client: asyncpg against PostgreSQL with ssl=on --------------------

def _pg_bin():
    root = "/usr/lib/postgresql"
    if not os.path.isdir(root):
        return None
    for v in sorted(os.listdir(root), reverse=True):
        b = os.path.join(root, v, "bin")
        if os.path.exists(os.path.join(b, "postgres")):
            return b
    return None


def _split_pem(path):
    text = open(path).read()
    key = text[text.index("-----BEGIN PRIVATE KEY-----"):text.index("-----END PRIVATE KEY-----") + 25]
    cert = text[text.index("-----BEGIN CERTIFICATE-----"):]
    return key + "\n", cert


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server with ssl=on on a loopback port, in a temporary directory,
    for the module; stopped by its pid at the end."""
    pytest.importorskip("asyncpg")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL's binaries are not installed (Debian's postgresql)")
    as_user = {}
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        import pwd
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user")
        # The server itself, not a wrapper, is our child: its pid gets the signal.
        as_user = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
    # The server is not under test: no sanitizer runtime preloaded into it
    # (make test-asan preloads libasan for the suite and what it starts).
    env = {k: v for k, v in os.environ.items()
           if k != "LD_PRELOAD" and not k.startswith(("ASAN_", "UBSAN_"))}
    tmp = tempfile.mkdtemp(prefix="goloop-pg-")
    proc = None
    try:
        os.chmod(tmp, 0o755)
        data = os.path.join(tmp, "data")
        key, cert = _split_pem(SIGNED)
        keyfile, certfile = os.path.join(tmp, "server.key"), os.path.join(tmp, "server.crt")
        with open(keyfile, "w") as f:
            f.write(key)
        with open(certfile, "w") as f:
            f.write(cert)
        os.chmod(keyfile, 0o600)
        if as_user:
            shutil.chown(tmp, "postgres")
            shutil.chown(keyfile, "postgres")
            shutil.chown(certfile, "postgres")
        # Each in a session of its own: on a timeout the whole group goes,
        # initdb's own children too.
        init = subprocess.Popen([os.path.join(bindir, "initdb"), "-D", data, "-A", "trust",
                                 "-U", "postgres", "--no-sync"], cwd=tmp, env=env, **as_user,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            if init.wait(60) != 0:
                pytest.fail("initdb failed")
        except subprocess.TimeoutExpired:
            os.killpg(init.pid, 9)
            init.wait()
            pytest.fail("initdb did not finish in 60 s")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = open(os.path.join(tmp, "log"), "w")
        proc = subprocess.Popen(
            [os.path.join(bindir, "postgres"), "-D", data, "-p", str(port),
                       "-h", "127.0.0.1", "-k", tmp, "-c", "ssl=on",
                       "-c", f"ssl_cert_file={certfile}", "-c", f"ssl_key_file={keyfile}",
                       "-c", "fsync=off"],
            stdout=subprocess.DEVNULL, stderr=log, cwd=tmp, env=env, start_new_session=True,
            **as_user)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            r = subprocess.run([os.path.join(bindir, "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            if r.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("PostgreSQL did not start: " + open(os.path.join(tmp, "log")).read())
            time.sleep(0.1)  # polling a process we do not control: no event to wait on
        yield port
    finally:
        if proc is not None:
            proc.send_signal(2)  # fast shutdown
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def test_asyncpg_ssl_prefer(loop, postgres):
    """asyncpg's default sslmode (prefer) sends PostgreSQL's SSLRequest, reads 'S'
    and calls loop.start_tls on its connection: a real STARTTLS client."""
    import asyncpg

    async def go():
        conn = await asyncpg.connect(host="127.0.0.1", port=postgres, user="postgres",
                                     database="postgres")
        try:
            on_tls = await conn.fetchval(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert on_tls is True
            blob = os.urandom(300_000).hex()
            assert await conn.fetchval("SELECT md5($1::text)", blob) == hashlib.md5(blob.encode()).hexdigest()
            rows = await conn.fetch("SELECT g, repeat('x', 1000) FROM generate_series(1, 2000) g")
            assert len(rows) == 2000 and rows[-1][0] == 2000
        finally:
            await conn.close()
    run(loop, go(), timeout=30)

"""TLS for any ssl.SSLContext: the C protocol (_core.TLSProtocol, _core/tls.c)
that runs asyncio 3.11's SSLProtocol state machine without Python frames per
record, and the switch back to asyncio's own pure-Python SSLProtocol
(GOLOOP_TLS=python, read when each connection is made).

What is here runs once per connection: asyncio's argument checks and the
public construction of the memory BIOs and the ssl.SSLObject
(context.wrap_bio), whose _ssl._SSLSocket the C protocol then drives."""
import _ssl
import ssl

from asyncio import constants, exceptions, sslproto
from asyncio.log import logger

from . import _core, _tlscontext

_core._tls_setup(ssl.SSLWantReadError, ssl.SSLSyscallError, ssl.SSLError,
                 ssl.CertificateError, exceptions.CancelledError, logger, _ssl._SSLSocket,
                 _tlscontext.go_start)
# What asyncio's _SSLProtocolTransport says of itself: another start_tls may
# wrap it (TLS in TLS), and loop.sendfile() falls back to reads and writes.
_core.SSLProtocolTransport._start_tls_compatible = True
# Under kernel TLS, sendfile(2) on the socket is TLS: the native path
# (loop._sendfile_native takes the stream transport under it).
_core.SSLProtocolTransport._sendfile_compatible = property(
    lambda t: constants._SendfileMode.TRY_NATIVE if t._ktls_raw is not None
    else constants._SendfileMode.FALLBACK)


# Kernel TLS (docs/ktls.md): whether OpenSSL's secrets can be had at all
# (CPython 3.11's _ssl, reached from C), and, once per process, whether
# this kernel takes keys. GOLOOP_KTLS=0 turns it off; GOLOOP_KTLS=force
# offers it even where the kernel has no tls module (tests: the handshake
# then runs record by record and falls back before the first byte);
# GOLOOP_KTLS=soft gives the records to Go's own record layer instead of
# the kernel's (docs/softtls.md).
_KTLS_OPENSSL = _core._ktls_init(_ssl.__file__)
_ktls_kernel = None


def _setting(name):
    # Read per connection, so a change to os.environ counts from the next
    # one (the tests make such changes); _core.getenv is the fast read.
    return (_core.getenv(name) or '').strip().lower()


def _ktls_off(setting=None):
    if setting is None:
        setting = _setting('GOLOOP_KTLS')
    return setting in ('0', 'off', 'no', 'false')


def ktls_wanted(loop):
    setting = _setting('GOLOOP_KTLS')
    if _ktls_off(setting) or not _KTLS_OPENSSL:
        return False
    if setting == 'force':
        return True
    if setting == 'soft':
        return 2   # Go's record layer after OpenSSL's handshake (docs/softtls.md)
    global _ktls_kernel
    if _ktls_kernel is None:
        why = loop._go_call_quick("ktls.available", b"")
        if why is None:
            return False   # not answered at once: ask again next time
        _ktls_kernel = why == b""
    return _ktls_kernel


def c_enabled():
    """False when GOLOOP_TLS=python asks for asyncio's SSLProtocol."""
    return _setting('GOLOOP_TLS') != 'python'


def ssl_protocol(loop, app_protocol, sslcontext, waiter, server_side=False,
                 server_hostname=None, call_connection_made=True,
                 ssl_handshake_timeout=None, ssl_shutdown_timeout=None):
    """An SSL protocol with asyncio's SSLProtocol constructor and behaviour:
    goloop's C one, or asyncio's own under GOLOOP_TLS=python. Its app
    transport is `._app_transport`. With a goloop.TLSContext, the same C
    protocol with Go's handshake (docs/gotls.md)."""
    go = isinstance(sslcontext, _tlscontext.TLSContext)
    if not c_enabled() and not go:
        return sslproto.SSLProtocol(
            loop, app_protocol, sslcontext, waiter, server_side, server_hostname,
            call_connection_made=call_connection_made,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)
    if ssl_handshake_timeout is None:
        ssl_handshake_timeout = constants.SSL_HANDSHAKE_TIMEOUT
    elif ssl_handshake_timeout <= 0:
        raise ValueError(
            f"ssl_handshake_timeout should be a positive number, "
            f"got {ssl_handshake_timeout}")
    if ssl_shutdown_timeout is None:
        ssl_shutdown_timeout = constants.SSL_SHUTDOWN_TIMEOUT
    elif ssl_shutdown_timeout <= 0:
        raise ValueError(
            f"ssl_shutdown_timeout should be a positive number, "
            f"got {ssl_shutdown_timeout}")
    if not sslcontext:
        sslcontext = sslproto._create_transport_context(server_side, server_hostname)
    if not server_hostname or server_side:
        server_hostname = None
    if go:
        if not server_side and sslcontext.check_hostname and not server_hostname:
            raise ValueError("check_hostname requires server_hostname")
        # Go's handshake needs no OpenSSL object: the BIOs stay empty, and
        # the TLSObject answers ssl.SSLObject's questions once it is done.
        # GOLOOP_KTLS=0: Go's record layer even where the kernel has TLS.
        return _core.TLSProtocol(loop, app_protocol, sslcontext, waiter, server_side,
                                 call_connection_made, ssl_handshake_timeout,
                                 ssl_shutdown_timeout, ssl.MemoryBIO(), ssl.MemoryBIO(),
                                 _tlscontext.TLSObject(sslcontext, server_side, server_hostname),
                                 False, 2 if _ktls_off() else 1)
    incoming = ssl.MemoryBIO()
    outgoing = ssl.MemoryBIO()
    sslobject = sslcontext.wrap_bio(incoming, outgoing, server_side=server_side,
                                    server_hostname=server_hostname)
    return _core.TLSProtocol(loop, app_protocol, sslcontext, waiter, server_side,
                             call_connection_made, ssl_handshake_timeout,
                             ssl_shutdown_timeout, incoming, outgoing, sslobject,
                             int(ktls_wanted(loop)))

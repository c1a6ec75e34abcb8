"""Stream transports and servers: the hooks asyncio's BaseEventLoop calls
(_make_socket_transport, _make_ssl_transport, _start_serving, _stop_serving),
answered with goloop's C transport and Go's multishot accept."""
import _socket
import errno
import functools
import os
import socket
import weakref
from asyncio import base_events, constants, exceptions, futures, sslproto, trsock, unix_events

from . import _core

_SOCK_NONBLOCK = getattr(socket, 'SOCK_NONBLOCK', 0)
# A socket's family, type and proto as plain ints: socket.socket's own
# properties build an enum member on every read (a few per connection).
_raw_family = _socket.socket.family.__get__
_raw_type = _socket.socket.type.__get__
_raw_proto = _socket.socket.proto.__get__
_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_IPPROTO_TCP, _TCP_NODELAY = socket.IPPROTO_TCP, socket.TCP_NODELAY
_STREAM_NONBLOCK = int(socket.SOCK_STREAM) | _SOCK_NONBLOCK
_Unix = unix_events._UnixSelectorEventLoop


def _build_tls_context(loop, ssl):
    if ssl is None or ssl is False:
        return
    from ._tlscontext import TLSContext
    if isinstance(ssl, TLSContext):
        ssl._go_id(loop)


# create_connection's numeric hosts, as asyncio's _ipaddr_info parses them
# (a pure function of its arguments): a client that connects to one address
# over and over parses it once.
_ipaddr_cache = {}


def _ipaddr_info(host, port, family, proto):
    key = (host, port, family, proto)
    try:
        return _ipaddr_cache[key]
    except KeyError:
        pass
    except TypeError:  # unhashable: asyncio's own error, if any, comes later
        return base_events._ipaddr_info(host, port, family, socket.SOCK_STREAM, proto)
    info = base_events._ipaddr_info(host, port, family, socket.SOCK_STREAM, proto)
    if info is not None:
        if len(_ipaddr_cache) >= 256:
            _ipaddr_cache.clear()
        _ipaddr_cache[key] = info
    return info


def _kind(sock):
    """(family, type, proto) of sock as ints."""
    try:
        return _raw_family(sock), _raw_type(sock), _raw_proto(sock)
    except TypeError:  # socket-like, not a _socket.socket (gunicorn's listener wrapper)
        return int(sock.family), int(sock.type), int(sock.proto)


class _GoOwnedSocket(socket.socket):
    """The socket object of a transport whose fd the Go core owns.

    The program may keep and use it as with asyncio (fileno, getsockopt,
    getpeername, ...), but closing it does not close the fd: only Go closes
    an fd it was handed, when the transport closes, and the object is
    detached when Go reports that close. Two owners of one fd number is how
    a loop ends up closing a file the program opened later. In a child
    forked after Go started, Go is gone and the child's copy of the fd is
    the object's own to close."""
    __slots__ = ()

    def _real_close(self):
        if _core._forked():
            super()._real_close()

    def dup(self):
        # A duplicate is a new fd, the program's own: a plain socket.
        return socket.socket(self.family, self.type, self.proto, fileno=os.dup(self.fileno()))


class _TransportSocket(trsock.TransportSocket):
    """asyncio's TransportSocket, whose family and type are read without
    its frame and socket.socket's around the socket module's conversion:
    the enum member for each value is looked up, made once. Programs read
    them at every connection (aiohttp's tcp_nodelay)."""
    __slots__ = ()

    @property
    def family(self):
        return _enum_of(_FAMILIES, _raw_family(self._sock), self._sock, 'family')

    @property
    def type(self):
        return _enum_of(_KINDS, _raw_type(self._sock), self._sock, 'type')


# The socket module's answers (an enum member, or the int it does not know)
# per value: a pure function of the value.
_FAMILIES = {}
_KINDS = {}


def _enum_of(table, value, sock, name):
    try:
        return table[value]
    except KeyError:
        v = table[value] = getattr(sock, name)
        return v


# Transports made over a bare fd make these objects in C when first asked
# (_core/sockobj.c), setting what socket.socket.__init__ and
# TransportSocket.__init__ set, and detach them as socket.socket.detach
# does. Where those differ from the ones read here, loop._lazy_socket makes
# them in Python and their own detach runs.
if (socket.socket.__slots__ == ['__weakref__', '_io_refs', '_closed']
        and socket.socket.__init__.__code__.co_names
        == ('AF_INET', 'SOCK_STREAM', '_socket', 'socket', '__init__', '_io_refs', '_closed')
        and socket.socket.detach.__code__.co_names == ('_closed', 'super', 'detach')
        and trsock.TransportSocket.__slots__ == ('_sock',)
        and trsock.TransportSocket.__init__.__code__.co_names == ('_sock',)):
    _core._sockobj_setup(_GoOwnedSocket, _socket.socket, _TransportSocket)


def _go_owned(sock):
    """sock, made a _GoOwnedSocket: the same object when it is a plain
    socket.socket (so the program's reference keeps working), else a new
    object for the same fd (the program's object is detached)."""
    if isinstance(sock, _GoOwnedSocket):
        return sock
    if type(sock) is socket.socket:
        sock.__class__ = _GoOwnedSocket
        return sock
    family, type_, proto = sock.family, sock.type, sock.proto
    return _GoOwnedSocket(family, type_, proto, fileno=sock.detach())


def _set_nodelay(sock):
    # asyncio sets TCP_NODELAY on every TCP transport; so do we.
    family, type_, proto = _kind(sock)
    if family in _TCP_FAMILIES and type_ == socket.SOCK_STREAM and proto == socket.IPPROTO_TCP:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def socket_extra(sock, extra):
    """A transport's extra info as asyncio's _SelectorTransport fills it:
    the given extra, with sockname and peername (None when unknown)."""
    extra = dict(extra) if extra else {}
    for key, get in (('sockname', sock.getsockname), ('peername', sock.getpeername)):
        if key not in extra:
            try:
                extra[key] = get()
            except OSError:
                extra[key] = None
    return extra


class StreamsMixin:
    async def create_connection(
            self, protocol_factory, host=None, port=None,
            *, ssl=None, family=0, proto=0, flags=0, sock=None,
            local_addr=None, server_hostname=None,
            ssl_handshake_timeout=None, ssl_shutdown_timeout=None,
            happy_eyeballs_delay=None, interleave=None):
        # The commonest call (plain TCP to a host and port, addresses tried
        # in turn) by a short road: asyncio's steps, results and errors,
        # without its generic machinery around each (a second resolution in
        # sock_connect, setblocking calls). Everything else is asyncio's.
        _build_tls_context(self, ssl)
        if (ssl or sock is not None or local_addr is not None or host is None or port is None
                or server_hostname is not None or ssl_handshake_timeout is not None
                or ssl_shutdown_timeout is not None or happy_eyeballs_delay is not None
                or interleave is not None or self._debug):
            return await super().create_connection(
                protocol_factory, host, port, ssl=ssl, family=family, proto=proto,
                flags=flags, sock=sock, local_addr=local_addr, server_hostname=server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
                happy_eyeballs_delay=happy_eyeballs_delay, interleave=interleave)
        info = _ipaddr_info(host, port, family, proto)
        if info is not None:
            infos = (info,)
        else:
            infos = await self._ensure_resolved(
                (host, port), family=family, type=socket.SOCK_STREAM, proto=proto,
                flags=flags, loop=self)
            if not infos:
                raise OSError('getaddrinfo() returned empty list')
        errors = []
        for af, type_, proto_, _, address in infos:
            tcp = proto_ == _IPPROTO_TCP  # what asyncio's _set_nodelay asks of it too
            sock = None
            try:
                # _socket's own object: nothing but this road ever sees it
                # (the transport takes its bare fd), and it skips
                # socket.socket's Python __init__.
                sock = _socket.socket(af, type_ | _SOCK_NONBLOCK, proto_)
                addrs = await self._connect_resolved(sock, address)
                break
            except OSError as exc:
                errors.append(exc)
                if sock is not None:
                    sock.close()
                sock = None
            except BaseException:
                if sock is not None:
                    sock.close()
                raise
        if sock is None:
            try:
                if len(errors) == 1 or all(str(e) == str(errors[0]) for e in errors):
                    raise errors[0]
                raise OSError('Multiple exceptions: {}'.format(
                    ', '.join(str(exc) for exc in errors)))
            finally:
                errors = None
        # asyncio's _create_connection_transport for a plain socket, less
        # its setblocking (the socket was born non-blocking) and with the
        # addresses Go's connect brought (addrs, packed: no getsockname or
        # getpeername).
        protocol = protocol_factory()
        waiter = self.create_future()
        if tcp:
            transport = self._tcp_transport(sock, af, protocol, waiter, addrs)
        else:
            transport = self._make_socket_transport(sock, protocol, waiter)
        try:
            await waiter
        except:  # noqa: E722 (asyncio's: the transport goes with any exception)
            transport.close()
            raise
        return transport, protocol

    def _tcp_transport(self, sock, family, protocol, waiter, addrs):
        # _make_socket_transport for create_connection's own socket (a
        # plain non-blocking socket of family AF_INET or AF_INET6, type
        # SOCK_STREAM and proto IPPROTO_TCP): the same steps with nothing
        # left to decide. Nothing else holds that socket, so the transport
        # takes the bare fd (Go's from here on) and makes a socket object
        # only if the program asks (get_extra_info 'socket', which also
        # registers it in _transports), as a server's accepted transports
        # do (transport.c); its addresses too when Go's connect brought
        # them (addrs, packed: connect.c), else they are asked now.
        try:
            sock.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
        except OSError:
            pass
        if addrs:
            extra, kind = None, (family, _STREAM_NONBLOCK, _IPPROTO_TCP, addrs)
        else:
            extra, kind = socket_extra(sock, None), (family, _STREAM_NONBLOCK, _IPPROTO_TCP)
        # A protocol without connection_made fails here, as asyncio's
        # transport constructor does, while the socket is still Python's.
        connection_made = protocol.connection_made
        fd = sock.detach()
        try:
            transport = _core.Transport(self, fd, protocol, extra, None, kind)
        except BaseException:
            os.close(fd)  # no transport: the fd was still ours
            raise
        self._announce(transport, connection_made, waiter)
        return transport

    def _announce(self, transport, connection_made, waiter):
        # The end of asyncio's transport constructor: connection_made, then
        # reading, then the waiter, in that order. If scheduling fails the
        # transport goes (Go closes the fd).
        try:
            self.call_soon(connection_made, transport)
            self.call_soon(transport._start_reading)
            if waiter is not None:
                self.call_soon(futures._set_result_unless_cancelled, waiter, None)
        except BaseException:
            transport.abort()
            raise

    def _make_socket_transport(self, sock, protocol, waiter=None, *,
                               extra=None, server=None):
        if sock.gettimeout() != 0:  # 0: non-blocking already, as Python made it
            sock.setblocking(False)
        try:
            _set_nodelay(sock)
        except OSError:
            pass
        extra = socket_extra(sock, extra)
        # A protocol without connection_made fails here, as asyncio's
        # transport constructor does, while the socket is still Python's.
        connection_made = protocol.connection_made
        # From here on the fd is the transport's, and so Go's: the
        # socket object can no longer close it (one owner per fd).
        owned = _go_owned(sock)
        extra['socket'] = _TransportSocket(owned)
        try:
            transport = _core.Transport(self, owned, protocol, extra, server)
        except BaseException:
            # No transport: the fd is still Python's to close.
            owned.__class__ = socket.socket
            if owned is not sock:
                owned.close()
            raise
        try:
            self._transports[owned.fileno()] = weakref.ref(transport)
            if server is not None:
                server._attach()
        except BaseException:
            transport.abort()  # Go closes the fd
            raise
        self._announce(transport, connection_made, waiter)
        return transport

    def _make_ssl_transport(
            self, rawsock, protocol, sslcontext, waiter=None,
            *, server_side=False, server_hostname=None,
            extra=None, server=None,
            ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
            ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
            call_connection_made=True):
        # TLS through any ssl.SSLContext: asyncio's memory-BIO SSL protocol
        # (OpenSSL in userspace) over our transport, in C (_tls.py, tls.c;
        # GOLOOP_TLS=python: asyncio's own).
        from . import _tls
        ssl_protocol = _tls.ssl_protocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
            call_connection_made=call_connection_made)
        self._make_socket_transport(rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    # goloop.TLSContext: a certificate or CA file that cannot be loaded
    # raises from the call that was given it, as ssl's would have at load
    # time, not from each connection's handshake.
    async def create_server(self, protocol_factory, host=None, port=None, *, ssl=None, **kwargs):
        _build_tls_context(self, ssl)
        return await super().create_server(protocol_factory, host, port, ssl=ssl, **kwargs)

    async def create_unix_server(self, protocol_factory, path=None, *, ssl=None, **kwargs):
        _build_tls_context(self, ssl)
        return await _Unix.create_unix_server(self, protocol_factory, path, ssl=ssl, **kwargs)

    async def create_unix_connection(self, protocol_factory, path=None, *, ssl=None, **kwargs):
        _build_tls_context(self, ssl)
        return await _Unix.create_unix_connection(self, protocol_factory, path, ssl=ssl, **kwargs)

    def _start_serving(self, protocol_factory, sock,
                       sslcontext=None, server=None, backlog=100,
                       ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
                       ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT):
        fd = sock.fileno()
        old = self._listeners.get(fd)
        if old is not None and not old.closed:
            old.start()  # serving again after a pause (accept errors)
            return

        # Go accepts non-blocking: the socket objects say so (no ioctl).
        family, type_, proto = _kind(sock)
        type_ |= _SOCK_NONBLOCK

        def on_accept(res):
            if res < 0:
                self._accept_error(-res, sock, protocol_factory, sslcontext, server, backlog,
                                   ssl_handshake_timeout, ssl_shutdown_timeout)
                return
            try:
                conn = socket.socket(family, type_, proto, fileno=res)
            except OSError:
                return
            self._accept_connection_fd(protocol_factory, conn, sslcontext, server,
                                       ssl_handshake_timeout, ssl_shutdown_timeout)

        listener = _core.Listener(self, fd, on_accept)
        # IPv4 connections become transports in C, straight from Go's
        # EvAccept (transport.c transport_accept), with no socket object
        # until the program asks for one; on_accept gets the rest. Accepted
        # sockets inherit TCP_NODELAY from the listening one (Linux copies
        # it), so set it here once where asyncio sets it on every transport.
        try:
            _set_nodelay(sock)
        except OSError:
            pass
        if not sslcontext:
            listener.serve(protocol_factory, server, family, type_, proto)
        else:
            # Over TLS, the transport C makes carries the TLS protocol.
            def tls_protocol():
                return self._server_ssl_protocol(protocol_factory(), sslcontext,
                                                 ssl_handshake_timeout, ssl_shutdown_timeout)
            listener.serve(tls_protocol, server, family, type_, proto)
        self._listeners[fd] = listener
        listener.start()

    def _accept_error(self, err, sock, *serving):
        if err in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            # Out of fds or memory: say so, stop accepting for a while (the
            # backlog keeps the clients), then try again, as asyncio does.
            self.call_exception_handler({
                'message': 'socket.accept() out of system resource',
                'exception': OSError(err, errno.errorcode.get(err, str(err))),
                'socket': trsock.TransportSocket(sock),
            })
            listener = self._listeners.get(sock.fileno())
            if listener is not None:
                listener.stop()
            self.call_later(constants.ACCEPT_RETRY_DELAY, self._restart_serving, sock, *serving)
        # Anything else (a client that gave up: ECONNABORTED) is not an error
        # of the server.

    def _restart_serving(self, sock, *serving):
        if sock.fileno() >= 0 and not self.is_closed():
            self._start_serving(serving[0], sock, *serving[1:])

    def _accept_connection_fd(self, protocol_factory, conn, sslcontext, server,
                              ssl_handshake_timeout, ssl_shutdown_timeout):
        protocol = transport = None
        try:
            protocol = protocol_factory()
            if sslcontext:
                ssl_protocol = self._server_ssl_protocol(protocol, sslcontext,
                                                         ssl_handshake_timeout, ssl_shutdown_timeout)
                self._make_socket_transport(conn, ssl_protocol, server=server)
                transport = ssl_protocol._app_transport
            else:
                transport = self._make_socket_transport(conn, protocol, server=server)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if transport is None:
                conn.close()
            else:
                transport.close()
            if self._debug:
                self._report_accept_failure(exc, protocol, transport)

    def _server_ssl_protocol(self, protocol, sslcontext, ssl_handshake_timeout,
                             ssl_shutdown_timeout):
        # A server connection's TLS protocol over the application's, whose
        # handshake failure closes it (_handshake_done), as asyncio's
        # _accept_connection2 does; the caller makes the transport under it.
        from . import _tls
        waiter = self.create_future()
        ssl_protocol = _tls.ssl_protocol(
            self, protocol, sslcontext, waiter, server_side=True,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)
        waiter.add_done_callback(functools.partial(
            self._handshake_done, ssl_protocol._app_transport, protocol))
        return ssl_protocol

    def _accept_failed(self, exc, protocol, transport):
        # transport_accept's failure: the connection is closed already.
        if self._debug:
            self._report_accept_failure(exc, protocol, transport)

    def _lazy_socket(self, transport, family, type_, proto, fd, is_open):
        # The socket object of a transport made over a bare fd (accepted in
        # C, or create_connection's own), made when the program first asks
        # (get_extra_info('socket')). socket.socket checks the fd with one
        # getsockname; family, type and proto given, it asks nothing else.
        if is_open:
            owned = _GoOwnedSocket(family, type_, proto, fileno=fd)
            self._transports[fd] = weakref.ref(transport)  # sock_* on it are refused, as asyncio refuses them
        else:
            # Go closed the fd: asyncio's answer is its socket, closed. Not
            # made over the fd number (socket.socket checks it with
            # getsockname: EBADF, or another file that took the number
            # since), but as a socket of its own, closed at once.
            try:
                owned = socket.socket(family, type_, proto)
                owned.close()
            except OSError:  # out of fds: a bare closed socket object
                owned = socket.socket.__new__(socket.socket)
                owned._io_refs, owned._closed = 0, True
        return owned, _TransportSocket(owned)

    # What asyncio's _accept_connection2 does after `await waiter`, as the
    # waiter's done callback rather than a task per TLS connection: a loop
    # closed during handshakes then has no pending tasks to warn about (the
    # rate of new TLS connections did not measurably change: bench/ab.py
    # --churn, 354 against 354 µs of server CPU per connection).
    def _handshake_done(self, transport, protocol, waiter):
        exc = exceptions.CancelledError() if waiter.cancelled() else waiter.exception()
        if exc is None:
            return
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            raise exc
        transport.close()
        if self._debug:
            self._report_accept_failure(exc, protocol, transport)

    def _report_accept_failure(self, exc, protocol, transport):
        context = {
            'message': 'Error on transport creation for incoming connection',
            'exception': exc,
        }
        if protocol is not None:
            context['protocol'] = protocol
        if transport is not None:
            context['transport'] = transport
        self.call_exception_handler(context)

    def _stop_serving(self, sock):
        # The listener hands the fd to Go, which stops accepting and closes it
        # at once (asyncio refuses a connect right after server.close()), in
        # order; connections accepted meanwhile are closed, never handed on.
        # Their completions only join the end of the batch being dispatched,
        # so a server may be closed from inside any callback, mid-batch.
        listener = self._listeners.pop(sock.fileno(), None)
        if listener is not None and listener.close():
            sock.detach()
        else:
            sock.close()

"""Datagram endpoints: the hook asyncio's BaseEventLoop.create_datagram_endpoint
calls (_make_datagram_transport). asyncio's argument handling makes the socket;
the transport is goloop's C DatagramTransport over Go's datagram ops
(docs/datagrams.md)."""
import asyncio
import operator
import os
import socket
import struct
import weakref
from asyncio import futures, selector_events

from . import _core
from ._streams import _TransportSocket, _go_owned, socket_extra

_NATIVE_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
_SUN_PATH = 108  # sizeof(struct sockaddr_un.sun_path) on Linux


def _resolve(family, host):
    # What socket.sendto does with a host (CPython's setipaddr): '' is the
    # any address, '<broadcast>' the IPv4 broadcast, anything else goes
    # through getaddrinfo, blocking, as socket.sendto in asyncio's transport.
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode('idna')
    if host == '':
        return ('0.0.0.0' if family == socket.AF_INET else '::'), 0
    if host in ('<broadcast>', '255.255.255.255'):
        if family != socket.AF_INET:
            raise socket.gaierror(socket.EAI_FAMILY, 'address family mismatched')
        return '255.255.255.255', 0
    info = socket.getaddrinfo(host, None, family, socket.SOCK_DGRAM)
    sa = info[0][4]
    return sa[0].split('%', 1)[0], (sa[3] if family == socket.AF_INET6 else 0)


def _sockaddr(family, addr):
    """The sockaddr socket.sendto would build for addr, with its errors: for
    what the C fast path leaves (host names, subclasses, bad input)."""
    if family == socket.AF_UNIX:
        if isinstance(addr, str):
            path = os.fsencode(addr)
        else:
            try:
                path = bytes(memoryview(addr))
            except TypeError:
                raise TypeError(f"a bytes-like object is required, not "
                                f"'{type(addr).__name__}'") from None
        abstract = path[:1] == b'\0'
        if len(path) + (not abstract) > _SUN_PATH:
            raise OSError('AF_UNIX path too long')
        return struct.pack('=H', socket.AF_UNIX) + path + (b'' if abstract else b'\0')
    name = 'AF_INET' if family == socket.AF_INET else 'AF_INET6'
    if not isinstance(addr, tuple):
        raise TypeError(f'sendto(): {name} address must be tuple, not {type(addr).__name__}')
    if family == socket.AF_INET:
        if len(addr) != 2:
            raise TypeError('AF_INET address must be a pair (host, port)')
        host, port = addr
        flowinfo = scope_id = 0
    else:
        if not 2 <= len(addr) <= 4:
            raise TypeError('AF_INET6 address must be a tuple (host, port[, flowinfo[, scopeid]])')
        host, port, flowinfo, scope_id = (tuple(addr) + (0, 0))[:4]
    if not isinstance(host, (str, bytes, bytearray)):
        raise TypeError(f'str, bytes or bytearray expected, not {type(host).__name__}')
    port = operator.index(port)
    ip, scope = _resolve(family, host)
    if not 0 <= port <= 0xffff:
        raise OverflowError('sendto(): port must be 0-65535.')
    if family == socket.AF_INET:
        return (struct.pack('=H', socket.AF_INET) + struct.pack('!H', port) +
                socket.inet_pton(socket.AF_INET, ip) + bytes(8))
    flowinfo, scope_id = operator.index(flowinfo), operator.index(scope_id)
    if not 0 <= flowinfo <= 0xfffff:
        raise OverflowError('sendto(): flowinfo must be 0-1048575.')
    return (struct.pack('=H', socket.AF_INET6) + struct.pack('!HI', port, flowinfo) +
            socket.inet_pton(socket.AF_INET6, ip) + struct.pack('=I', scope_id or scope))


def _address(family, raw):
    """The address object socket.recvfrom gives for the sockaddr raw, for
    what C leaves: a scoped IPv6 address (getnameinfo names the interface)."""
    fam = struct.unpack_from('=H', raw)[0]
    if fam == socket.AF_INET6 and len(raw) >= 28:
        port, flowinfo = struct.unpack_from('!HI', raw, 2)
        scope_id = struct.unpack_from('=I', raw, 24)[0]
        host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        host = socket.getnameinfo((host, port, flowinfo, scope_id),
                                  socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)[0]
        return host, port, flowinfo, scope_id
    return raw


class DatagramTransport(_core.DatagramTransport):
    """goloop's datagram transport: an asyncio.DatagramTransport (and an
    asyncio.Transport, as asyncio's own is) whose socket Go owns."""
    __slots__ = ()
    _sockaddr = staticmethod(_sockaddr)
    _address_of = staticmethod(_address)


class _ReadinessDatagramTransport(selector_events._SelectorDatagramTransport,
                                  asyncio.DatagramTransport):
    """asyncio's selector datagram transport on Go's readiness watchers, for
    the socket families Go's datagram ops do not speak (AF_PACKET...)."""

    def __repr__(self):
        # asyncio's repr asks the selector, which this loop does not have.
        state = 'closed' if self._sock is None else (
            'closing' if self._closing else 'open')
        return f'<{type(self).__name__} fd={self._sock_fd} {state}>'


class DatagramMixin:
    def _make_datagram_transport(self, sock, protocol, address=None,
                                 waiter=None, extra=None):
        if sock.family not in _NATIVE_FAMILIES:
            return _ReadinessDatagramTransport(self, sock, protocol, address, waiter, extra)
        sock.setblocking(False)
        extra = socket_extra(sock, extra)
        # A protocol without connection_made fails here, as asyncio's
        # transport constructor does, while the socket is still Python's.
        connection_made = protocol.connection_made
        family = sock.family
        # From here on the fd is the transport's, and so Go's.
        owned = _go_owned(sock)
        extra['socket'] = _TransportSocket(owned)
        try:
            transport = DatagramTransport(self, owned, protocol, address, extra, family)
        except BaseException:
            owned.__class__ = socket.socket
            if owned is not sock:
                owned.close()
            raise
        try:
            self._transports[owned.fileno()] = weakref.ref(transport)
            self.call_soon(connection_made, transport)
            self.call_soon(transport._start_reading)
            if waiter is not None:
                self.call_soon(futures._set_result_unless_cancelled, waiter, None)
        except BaseException:
            transport.abort()
            raise
        return transport

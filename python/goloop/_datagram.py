"""Datagram endpoints: the hook asyncio's BaseEventLoop.create_datagram_endpoint
calls (_make_datagram_transport). asyncio's argument handling makes the socket;
only the transport is ours."""
import asyncio
from asyncio import selector_events


class _ReadinessDatagramTransport(selector_events._SelectorDatagramTransport,
                                  asyncio.DatagramTransport):
    """asyncio's selector datagram transport, its readiness from Go's watchers
    (_add_reader/_add_writer). The socket stays Python's. Also an
    asyncio.DatagramTransport, which asyncio 3.11's own class is not."""

    def __repr__(self):
        # asyncio's repr asks the selector, which this loop does not have.
        state = 'closed' if self._sock is None else (
            'closing' if self._closing else 'open')
        return f'<{type(self).__name__} fd={self._sock_fd} {state}>'


class DatagramMixin:
    def _make_datagram_transport(self, sock, protocol, address=None,
                                 waiter=None, extra=None):
        return _ReadinessDatagramTransport(self, sock, protocol, address, waiter, extra)

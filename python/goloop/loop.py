"""goloop.Loop: asyncio's event loop API over the C core and Go.

The hot path (call_soon, timers, the run loop, transports, completion
dispatch) is the C base class `_core.LoopCore`. This module holds what is
off the hot path: setup and teardown around the run loop, readers and
writers, signals, and the glue that lets asyncio's own argument handling
(create_connection, create_server, the sock_* methods) drive our core.
"""
import asyncio
import errno
import io
import os
import select
import signal
import socket
import stat
import sys
import threading
import weakref
from asyncio import base_events, constants, events, exceptions, selector_events, unix_events
from asyncio.log import logger

from . import _core, _datagram, _dns, _hooks, _pipes
from ._datagram import DatagramMixin
from ._streams import _SOCK_NONBLOCK, StreamsMixin, _raw_family, _raw_proto, _raw_type

_core._set_hooks(
    format_handle=_hooks.format_handle,
    fatal_error=_hooks.fatal_error,
    slow_callback=_hooks.slow_callback,
    extract_stack=_hooks.extract_stack,
    check_call=_hooks.check_call,
)

# asyncio's start_tls() accepts a transport that says it can be upgraded:
# ours switches protocols keeping every byte that arrived (docs/tls.md).
_core.Transport._start_tls_compatible = True
# asyncio's sendfile() tries the transport's native path first: ours queues a
# sendfile(2) in Go behind earlier writes (docs/sendfile.md).
_core.Transport._sendfile_compatible = constants._SendfileMode.TRY_NATIVE
# A child forked after Go started has no Go: what Go held for its loops
# (pins on transports, connections accepted but not dispatched) is let go
# there (docs/architecture.md, "Fork").
os.register_at_fork(after_in_child=_core._after_fork_child)

_Selector = selector_events.BaseSelectorEventLoop
_Unix = unix_events._UnixSelectorEventLoop


class GoCallError(Exception):
    """A method of the Go core (a DNS lookup, ...) failed; the text is Go's."""


_dns.setup_fast_path(GoCallError)


def _fileobj_to_fd(fileobj):
    # The rule selectors applies: an int, or an object with fileno().
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


def _check_pollable(fd):
    """Refuse an fd as asyncio's selector does when it registers one with
    epoll: OSError EBADF for an fd that is not open, PermissionError EPERM
    for one that cannot be polled (regular files, directories, /dev/null).
    io_uring would poll those without complaint (always ready). Sockets and
    pipes, the usual case, cost one fstat; anything else asks epoll itself."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode):
        return
    ep = select.epoll()
    try:
        ep.register(fd, select.EPOLLIN)
    finally:
        ep.close()


_AF_UNIX = getattr(socket, "AF_UNIX", None)
_AF_INET6 = getattr(socket, "AF_INET6", None)


def _sockaddr(family, address):
    """address as a struct sockaddr for Go (the one sendto builds, which is
    what socket.connect builds too), or None for anything it refuses: that
    then takes asyncio's path and gets socket.connect's own error."""
    if family not in (socket.AF_INET, _AF_INET6, _AF_UNIX):
        return None
    try:
        return _datagram._sockaddr(family, address)
    except Exception:
        return None


_SENDFILE_MAX = 1 << 30  # GL_SENDFILE_MAX: the most one Go sendfile takes
_FALLBACK_CHUNK = 1 << 16


class _FallbackProtocol(base_events._SendfileFallbackProtocol):
    """asyncio's protocol for a sendfile done with writes, on goloop's transport.

    It stands in for the program's protocol while the file is written, and
    gives writes back-pressure through pause_writing/resume_writing. The
    difference: asyncio carries a write pause across set_protocol and lets
    this protocol resume the program's at the end; goloop's transport resumes
    the paused protocol at the switch itself (transport.c, set_protocol), so
    nothing is owed to it afterwards and this protocol starts unpaused (the
    transport pauses it at its first write above the high-water mark)."""

    def __init__(self, transp):
        self._transport = transp
        self._proto = transp.get_protocol()
        self._should_resume_reading = transp.is_reading()
        self._should_resume_writing = False
        self._write_ready_fut = None
        transp.pause_reading()
        transp.set_protocol(self)



class _SockFuture(asyncio.Future):
    """The future of a sock op in Go: cancelling it stops the op in Go at once
    (before cancel() returns), so Go reads or writes nothing more for it and
    the program may close the socket right after (_core/sockops.c)."""
    __slots__ = ('_sk', '_sent')   # _sent: how far a stopped sock_sendfile got (sockops.c)

    def cancel(self, msg=None):
        if not self.done():
            self._loop._sock_stop(self._sk)
        return super().cancel(msg=msg)


_ACCEPT_FAMILIES = frozenset(f for f in (socket.AF_INET, _AF_INET6, _AF_UNIX) if f is not None)


def _peer_address(family, raw):
    # What socket.accept() gives for the peer's sockaddr.
    if family == socket.AF_INET:
        return socket.inet_ntop(family, raw[4:8]), int.from_bytes(raw[2:4], 'big')
    if family == _AF_INET6:
        if int.from_bytes(raw[24:28], sys.byteorder):  # scoped: named as getnameinfo names it
            return _datagram._address(family, raw)
        return (socket.inet_ntop(family, raw[8:24]), int.from_bytes(raw[2:4], 'big'),
                int.from_bytes(raw[4:8], 'big'), 0)
    path = raw[2:]
    if path[:1] == b'\0':
        return path  # Linux's abstract namespace
    return os.fsdecode(path.split(b'\0', 1)[0])


def _sock_accepted(lsock, fd, raw):
    # Called from C as soon as Go reports the fd, so a socket object owns
    # it before anything else runs. Go accepted it non-blocking: the object
    # says so (no ioctl), as asyncio's conn.setblocking(False) leaves it.
    # The address first: once the socket object exists it owns the fd, and
    # C closes the fd itself only when this raises before that.
    family = _raw_family(lsock)
    address = _peer_address(family, raw)
    return socket.socket(family, _raw_type(lsock) | _SOCK_NONBLOCK, _raw_proto(lsock), fileno=fd), address


def _sock_address(sock, raw):
    # What socket.recvfrom() gives for a datagram's source: None for none.
    return _peer_address(_raw_family(sock), raw) if raw else None


_core._sockops_setup(_SockFuture, _sock_accepted, _sock_address)


def _sock_came_in(fut):
    """Whether a sock op's result reached its future before its task was
    cancelled: Go's result is settled right after the poll that produced
    it, before any callback runs, so a callback of that same batch that
    cancels the task comes too late to stop the op, and the bytes were read
    (or sent, or the connection accepted). The cancel is honoured all the
    same, as asyncio honours a cancel that comes after a result; what was
    received is kept for the next sock_* call on that socket (Loop._sock_keep)
    rather than lost."""
    return fut.done() and not fut.cancelled() and fut.exception() is None


def _sendfile_sent(fut):
    # How far a sock_sendfile op got whose task was cancelled: its result if
    # that came in first, else what Go's stop said (sockops.c sets _sent).
    if _sock_came_in(fut):
        res, sent = fut.result()
        return res if res >= 0 else sent
    return getattr(fut, '_sent', 0)


def _sendfile_error(e, total):
    # asyncio's: nothing sent yet is SendfileNotAvailableError (its fallback
    # may still do it), else the OSError, ENOTCONN as ConnectionError.
    if not total:
        return exceptions.SendfileNotAvailableError("os.sendfile call failed")
    if e == errno.ENOTCONN:
        return ConnectionError("socket is not connected", errno.ENOTCONN)
    return OSError(e, os.strerror(e))


def _buffer_bytes(buf, n):
    with memoryview(buf) as m, m.cast('B') as b:
        return bytes(b[:n])


class Loop(StreamsMixin, DatagramMixin, _core.LoopCore, base_events.BaseEventLoop):
    """A drop-in asyncio event loop whose I/O core is goloop's Go library."""

    def __init__(self, *, backend=None):
        # backend= (or GOLOOP_BACKEND in os.environ now) was taken by
        # LoopCore.__new__, which made the Go loop.
        base_events.BaseEventLoop.__init__(self)
        self._backend = self._backend_name()
        # fd -> weakref.ref(transport) of transports whose fd the program
        # can name (its socket object was made): what _ensure_fd_no_transport
        # refuses, as asyncio's selector loop refuses it. A plain dict, not
        # asyncio's WeakValueDictionary (whose Python KeyedRef costs a new
        # connection about 2 us, made and collected); an entry whose
        # transport is gone or closing refuses nothing, and the fd's next
        # registration replaces it.
        self._transports = {}
        self._watchers = {}
        self._listeners = {}
        self._signal_handlers = {}
        self._ssock = self._csock = None
        self._sig_watch = False
        self._old_wakeup = None
        self._subprocesses = set()  # SubprocessTransports watching a pidfd

    def __repr__(self):
        return (f'<{type(self).__name__} backend={self._backend} '
                f'running={self.is_running()} closed={self.is_closed()} '
                f'debug={self.get_debug()}>')

    @property
    def backend(self):
        """'io_uring' or 'epoll': the Go backend this loop runs on."""
        return self._backend

    # ---- running ----

    def run_forever(self):
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        old_agen_hooks = sys.get_asyncgen_hooks()
        try:
            self._thread_id = threading.get_ident()
            sys.set_asyncgen_hooks(firstiter=self._asyncgen_firstiter_hook,
                                   finalizer=self._asyncgen_finalizer_hook)
            events._set_running_loop(self)
            self._wakeup_on_signals(True)
            self._run()
        finally:
            self._wakeup_on_signals(False)
            self._stopping = False
            self._thread_id = None
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)

    def _run_once(self):
        _core.LoopCore._run_once(self)

    def close(self):
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self._closed:
            return
        if self._debug:
            logger.debug("Close %r", self)
        for sig in list(self._signal_handlers):
            self.remove_signal_handler(sig)
        self._close_subprocesses()
        self._close_core()
        # Go's calls and connects end with the loop. Their futures are
        # cancelled while the loop is still open, so that the done callbacks
        # cancel() schedules (a waiting task, a TLS handshake's) can be
        # queued; the queue is then dropped, as asyncio drops what is ready
        # at close. Cancelled once closed, call_soon would raise.
        for fut in (*self._calls.values(), *(c[0] for c in self._connects.values())):
            if not fut.done():
                fut.cancel()
        self._calls.clear()
        self._connects.clear()
        self._closed = True
        self._clear_queues()
        for w in self._watchers.values():
            for h in (w.reader, w.writer):
                if h is not None:
                    h.cancel()
        self._watchers.clear()
        self._listeners.clear()
        for kept in list((self._sock_kept or {}).values()):
            for kind, value in kept:
                if kind == 'accept':
                    value[0].close()
        self._sock_kept = None
        self._close_self_pipe()
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)

    def _timer_handle_cancelled(self, handle):
        pass  # the C heap counts cancelled timers itself

    # ---- readers and writers ----

    def _watcher(self, fd):
        w = self._watchers.get(fd)
        if w is None:
            _check_pollable(fd)
            w = self._watchers[fd] = _core.Watcher(self, fd)
        return w

    def _add_reader(self, fd, callback, *args):
        self._check_closed()
        fd = _fileobj_to_fd(fd)
        handle = self._make_handle(callback, args, None)
        w = self._watcher(fd)
        old = w.reader
        w.set(handle, ...)
        if old is not None:
            old.cancel()
        return handle

    def _add_writer(self, fd, callback, *args):
        self._check_closed()
        fd = _fileobj_to_fd(fd)
        handle = self._make_handle(callback, args, None)
        w = self._watcher(fd)
        old = w.writer
        w.set(..., handle)
        if old is not None:
            old.cancel()
        return handle

    def _remove_reader(self, fd):
        if self.is_closed():
            return False
        fd = _fileobj_to_fd(fd)
        w = self._watchers.get(fd)
        if w is None or w.reader is None:
            return False
        old = w.reader
        w.set(None, ...)
        old.cancel()
        return True

    def _remove_writer(self, fd):
        if self.is_closed():
            return False
        fd = _fileobj_to_fd(fd)
        w = self._watchers.get(fd)
        if w is None or w.writer is None:
            return False
        old = w.writer
        w.set(..., None)
        old.cancel()
        return True

    # asyncio's selector loop implements the public reader/writer API and the
    # sock_* coroutines on top of _add_reader/_remove_reader/...; using its
    # functions on our loop gives the same argument checks, errors and
    # cancellation behaviour, with readiness coming from Go.
    def _ensure_fd_no_transport(self, fd):
        # asyncio's check and errors, over the dict above
        fileno = fd
        if not isinstance(fileno, int):
            try:
                fileno = int(fileno.fileno())
            except (AttributeError, TypeError, ValueError):
                # This code matches selectors._fileobj_to_fd function.
                raise ValueError(f"Invalid file object: {fd!r}") from None
        ref = self._transports.get(fileno)
        transport = ref() if ref is not None else None
        if transport is not None and not transport.is_closing():
            raise RuntimeError(
                f'File descriptor {fd!r} is used by transport '
                f'{transport!r}')

    add_reader = _Selector.add_reader
    remove_reader = _Selector.remove_reader
    add_writer = _Selector.add_writer
    remove_writer = _Selector.remove_writer
    # sock_recv, sock_recv_into and sock_sendall complete in Go (_core/sockops.c,
    # docs/sockops.md): Go makes the syscall, at once when the socket can
    # serve it (then no future, no iteration), else on readiness. What Go
    # does not take (a closed socket, odd sizes, a non-buffer) goes the
    # asyncio way, with socket's own errors.
    _sock_recv = _Selector._sock_recv
    _sock_recv_into = _Selector._sock_recv_into
    _sock_sendall = _Selector._sock_sendall

    def _sock_fd(self, sock):
        # asyncio's checks: an SSL socket refused, a blocking one refused in
        # debug mode (a plain socket.socket outside debug mode passes both).
        # Then the transport check, which asyncio makes after a first recv:
        # Go must never read or write a transport's fd at all.
        if type(sock) is not socket.socket or self._debug:
            base_events._check_ssl_socket(sock)
            if self._debug and sock.gettimeout() != 0:
                raise ValueError("the socket must be non-blocking")
            if type(sock) is not socket.socket:
                # asyncio's way for anything else (a subclass may override
                # recv or send; a mock or a non-socket gets asyncio's errors)
                return -1
        fd = sock.fileno()
        if fd in self._transports:
            self._ensure_fd_no_transport(fd)
        return fd

    # What a sock op took for a task cancelled in the same batch (see
    # _sock_came_in), per socket object, oldest first: the next sock_* call
    # of that kind on that socket gets it before anything Go reads. A
    # program that reads the socket itself instead never sees it (as on
    # asyncio, where the cancelled call's bytes are lost).
    _sock_kept = None

    def _sock_keep(self, sock, kind, value):
        if kind != 'accept' and not (value[0] if kind == 'dgram' else value):
            return  # an EOF or an empty datagram: nothing to keep
        if self._sock_kept is None:
            self._sock_kept = weakref.WeakKeyDictionary()
        self._sock_kept.setdefault(sock, []).append((kind, value))

    def _sock_take(self, sock, kind, n=0):
        kept = self._sock_kept[sock]
        k, value = kept.pop(0)
        if kind == 'stream' and k == 'stream' and len(value) > n:
            kept.insert(0, (k, value[n:]))
            value = value[:n]
        elif kind == 'stream' and k == 'dgram':
            value = value[0][:n]
        elif kind == 'dgram' and k == 'stream':
            value = (value, None)
        if not kept:
            del self._sock_kept[sock]
        return value

    async def sock_recv(self, sock, n):
        fd = self._sock_fd(sock)
        if self._sock_kept and type(n) is int and n > 0 and sock in self._sock_kept:
            return self._sock_take(sock, 'stream', n)
        r = self._sock_recv_go(fd, n)
        if type(r) is not _SockFuture:
            if r is NotImplemented:
                return await _Selector.sock_recv(self, sock, n)
            return r
        try:
            return await r
        except exceptions.CancelledError:
            if _sock_came_in(r):
                self._sock_keep(sock, 'stream', r.result())
            raise

    async def sock_recv_into(self, sock, buf):
        fd = self._sock_fd(sock)
        if self._sock_kept and sock in self._sock_kept:
            with memoryview(buf) as m, m.cast('B') as b:
                if len(b):
                    data = self._sock_take(sock, 'stream', len(b))
                    b[:len(data)] = data
                    return len(data)
        r = self._sock_recv_into_go(fd, buf)
        if type(r) is not _SockFuture:
            if r is NotImplemented:
                return await _Selector.sock_recv_into(self, sock, buf)
            return r
        try:
            return await r
        except exceptions.CancelledError:
            if _sock_came_in(r):
                self._sock_keep(sock, 'stream', _buffer_bytes(buf, r.result()))
            raise

    async def sock_sendall(self, sock, data):
        r = self._sock_sendall_go(self._sock_fd(sock), data)
        if type(r) is not _SockFuture:
            if r is NotImplemented:
                return await _Selector.sock_sendall(self, sock, data)
            return r
        try:
            return await r
        except exceptions.CancelledError:
            if _sock_came_in(r):
                pass  # sent: as a cancelled sendall on asyncio, what left is gone
            raise

    async def sock_connect(self, sock, address):
        """asyncio's sock_connect, with the connect done by Go (docs/architecture.md,
        "Connects"): no connect, poll or SO_ERROR call from Python."""
        base_events._check_ssl_socket(sock)
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        if sock.family != _AF_UNIX:
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type, proto=sock.proto, loop=self)
            _, _, _, _, address = resolved[0]
        if sock.fileno() >= 0:
            self._ensure_fd_no_transport(sock.fileno())
        await self._connect_resolved(sock, address)

    async def _connect_resolved(self, sock, address):
        # The connect itself, for an address already resolved (what
        # create_connection's addresses are). Returns the addresses Go's
        # answer carried, packed for the transport (IPv4: connect.c's
        # connected_addrs), else None.
        fd = sock.fileno()
        raw = None
        if fd >= 0:
            try:
                family = _raw_family(sock)  # an int: sock.family builds an enum member
            except TypeError:
                family = sock.family
            raw = _core._sockaddr_fast(family, address) or _sockaddr(family, address)
        if raw is None:
            # What only the socket module understands (or refuses, with its
            # own error): asyncio's way, over Go's readiness.
            fut = self.create_future()
            self._sock_connect(fut, sock, address)
            return await fut
        token, fut = self._connect_start(fd, raw, address)
        try:
            return await fut
        except exceptions.CancelledError:
            self._connect_stop(fd, token)  # Go lets go of the fd before the caller closes it
            raise

    _sock_connect = _Selector._sock_connect
    _sock_connect_cb = _Selector._sock_connect_cb
    _sock_accept = _Selector._sock_accept

    async def sock_accept(self, sock):
        # Accepted in Go (accept4, non-blocking): the connection and its
        # peer's address, as asyncio's sock.accept() gives them.
        fd = self._sock_fd(sock)
        if self._sock_kept and sock in self._sock_kept:
            return self._sock_take(sock, 'accept')
        r = NotImplemented
        # A listener in blocking mode would block accept4 (asyncio's accept
        # blocks there too): asyncio's way.
        if fd >= 0 and _raw_family(sock) in _ACCEPT_FAMILIES and sock.gettimeout() is not None:
            r = self._sock_accept_go(fd, sock)
        if type(r) is not _SockFuture:
            if r is NotImplemented:
                return await _Selector.sock_accept(self, sock)
            return r
        try:
            return await r
        except exceptions.CancelledError:
            if _sock_came_in(r):
                self._sock_keep(sock, 'accept', r.result())
            raise

    async def _sock_sendfile_native(self, sock, file, offset, count):
        # asyncio's sock_sendfile (BaseEventLoop) has checked the arguments
        # and calls this, then its fallback on SendfileNotAvailableError.
        # What asyncio's native path refuses, it refuses alike
        # (unix_events), and an empty file is 0 at once.
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation):
            raise exceptions.SendfileNotAvailableError("not a regular file")
        try:
            fsize = os.fstat(fileno).st_size
        except OSError:
            raise exceptions.SendfileNotAvailableError("not a regular file")
        if not (count or fsize):
            return 0  # empty file
        fd = self._sock_fd(sock)
        if fd < 0:
            return await _Unix._sock_sendfile_native(self, sock, file, offset, count)
        # (A socket left in blocking mode blocks in sendfile(2), which has no
        # MSG_DONTWAIT, as asyncio's os.sendfile blocks there.)
        # Go reads a duplicate of the file's fd, which this coroutine owns
        # and closes once Go has answered (or been stopped): the program may
        # close its own file at any moment, even while the op waits, and Go
        # never reads from a number that may by then name another file. The
        # duplicate shares the file's position, which is set through it.
        own = os.dup(fileno)
        total = 0
        try:
            while True:
                # Go takes at most 1 GiB per op; "to the end" is ops in turn
                # until one stops short, as asyncio's calls until sendfile says 0.
                want = _SENDFILE_MAX if count is None else min(count - total, _SENDFILE_MAX)
                if want <= 0:
                    return total
                r = _core._sock_sendfile_go(self, fd, own, offset + total, want)
                if type(r) is _SockFuture:
                    try:
                        r = await r
                    except exceptions.CancelledError:
                        total += _sendfile_sent(r)
                        raise
                elif r is NotImplemented:  # an offset Go cannot take: asyncio's errors
                    os.close(own)
                    own = -1
                    return await _Unix._sock_sendfile_native(self, sock, file, offset, count)
                res, sent = r
                if res < 0:
                    total += sent
                    raise _sendfile_error(-res, total)
                total += res
                if res < want:
                    return total  # the end of the file
        finally:
            # asyncio's position after, also after an error or a cancel
            # (only when something was sent, as asyncio's).
            if own >= 0:
                try:
                    if total:
                        os.lseek(own, offset + total, os.SEEK_SET)
                finally:
                    os.close(own)

    _sock_read_done = _Selector._sock_read_done
    _sock_write_done = _Selector._sock_write_done
    _sock_recvfrom = _Selector._sock_recvfrom
    _sock_recvfrom_into = _Selector._sock_recvfrom_into
    _sock_sendto = _Selector._sock_sendto

    # Datagrams one at a time, in Go as sock_recv (docs/sockops.md).
    async def sock_recvfrom(self, sock, bufsize):
        fd = self._sock_fd(sock)
        if self._sock_kept and type(bufsize) is int and bufsize > 0 and sock in self._sock_kept:
            data, addr = self._sock_take(sock, 'dgram')
            return data[:bufsize], addr
        r = NotImplemented
        if fd >= 0 and _raw_family(sock) in _ACCEPT_FAMILIES:
            r = self._sock_recvfrom_go(fd, sock, bufsize)
        if type(r) is not _SockFuture:
            if r is NotImplemented:
                return await _Selector.sock_recvfrom(self, sock, bufsize)
            return r
        try:
            return await r
        except exceptions.CancelledError:
            if _sock_came_in(r):
                self._sock_keep(sock, 'dgram', r.result())
            raise

    async def sock_recvfrom_into(self, sock, buf, nbytes=0):
        fd = self._sock_fd(sock)
        if self._sock_kept and sock in self._sock_kept:
            with memoryview(buf) as m, m.cast('B') as b:
                room = min(nbytes, len(b)) if nbytes else len(b)
                if room > 0:
                    data, addr = self._sock_take(sock, 'dgram')
                    data = data[:room]
                    b[:len(data)] = data
                    return len(data), addr
        r = NotImplemented
        if fd >= 0 and _raw_family(sock) in _ACCEPT_FAMILIES:
            r = self._sock_recvfrom_into_go(fd, sock, buf, nbytes)
        if type(r) is not _SockFuture:
            if r is NotImplemented:
                return await _Selector.sock_recvfrom_into(self, sock, buf, nbytes)
            return r
        try:
            return await r
        except exceptions.CancelledError:
            if _sock_came_in(r):
                n, addr = r.result()
                self._sock_keep(sock, 'dgram', (_buffer_bytes(buf, n), addr))
            raise

    async def sock_sendto(self, sock, data, address):
        fd = self._sock_fd(sock)
        r = NotImplemented
        if fd >= 0:
            # The sockaddr sendto would build; what only the socket module
            # understands (a host name to resolve, a bad shape) goes its way.
            family = _raw_family(sock)
            raw = _core._sockaddr_fast(family, address) or _sockaddr(family, address)
            if raw is not None:
                r = self._sock_sendto_go(fd, data, raw)
        if type(r) is not _SockFuture:
            if r is NotImplemented:
                return await _Selector.sock_sendto(self, sock, data, address)
            return r
        try:
            return await r
        except exceptions.CancelledError:
            if _sock_came_in(r):
                pass  # sent
            raise

    # Unix sockets: asyncio's argument handling, our transports
    # (StreamsMixin's create_unix_*, which build a goloop.TLSContext first).

    # ---- signals ----

    def _make_self_pipe(self):
        if self._ssock is None:
            self._ssock, self._csock = socket.socketpair()
            self._ssock.setblocking(False)
            self._csock.setblocking(False)
            self._internal_fds += 1
            self._add_reader(self._ssock.fileno(), self._read_from_self)

    def _close_self_pipe(self):
        if self._ssock is not None:
            self._ssock.close()
            self._csock.close()
            self._ssock = self._csock = None
            self._internal_fds -= 1

    def _read_from_self(self):
        while True:
            try:
                data = self._ssock.recv(4096)
                if not data:
                    break
                for signum in data:
                    if signum:
                        self._handle_signal(signum)
            except InterruptedError:
                continue
            except BlockingIOError:
                break

    def _wakeup_on_signals(self, on):
        # While the loop runs in the main thread, a signal must end Go's wait
        # at once (so Ctrl-C raises KeyboardInterrupt without delay): Python's
        # C-level handler writes to the wakeup fd, which Go watches.
        if threading.current_thread() is not threading.main_thread():
            return
        if on:
            self._make_self_pipe()
            try:
                self._old_wakeup = signal.set_wakeup_fd(self._csock.fileno(), warn_on_full_buffer=False)
            except (ValueError, OSError):
                self._old_wakeup = None
                return
            self._sig_watch = True
        elif self._sig_watch:
            self._sig_watch = False
            if self._signal_handlers:
                return  # add_signal_handler keeps the wakeup fd, as asyncio does
            try:
                signal.set_wakeup_fd(self._old_wakeup if self._old_wakeup is not None else -1)
            except (ValueError, OSError):
                pass

    def add_signal_handler(self, sig, callback, *args):
        if not self._closed:  # a closed loop: asyncio's checks raise below
            self._make_self_pipe()
        return _Unix.add_signal_handler(self, sig, callback, *args)

    remove_signal_handler = _Unix.remove_signal_handler
    _handle_signal = _Unix._handle_signal
    _check_signal = _Unix._check_signal

    def _add_callback_signalsafe(self, handle):
        self._add_callback(handle)

    def _add_callback(self, handle):
        # asyncio's signal code makes asyncio Handles; ours run directly.
        if handle._cancelled:
            return
        if isinstance(handle, _core.Handle):
            self._push_handle(handle)
        else:
            self.call_soon(handle._run)

    def _write_to_self(self):
        csock = self._csock
        if csock is not None:
            try:
                csock.send(b'\0')
            except OSError:
                pass

    # ---- sendfile (docs/sendfile.md) ----
    # loop.sendfile is asyncio's BaseEventLoop.sendfile (argument checks,
    # native first, then the fallback), calling the two hooks below.
    # sock_sendfile is asyncio's too (argument checks, native first, then the
    # fallback), with a native path in Go (_sock_sendfile_native above).

    # (sock_sendfile's native path is Go's, in the sock_* block above; a
    # socket Go does not take goes asyncio's way, with these.)
    _sock_sendfile_native_impl = _Unix._sock_sendfile_native_impl
    _sock_sendfile_update_filepos = _Unix._sock_sendfile_update_filepos
    _sock_add_cancellation_callback = _Unix._sock_add_cancellation_callback

    def tls_stats(self):
        """TLS connections this loop made (handshake done), by who does their
        records: {'kernel': n, 'openssl': m, 'go': k} (docs/tls.md: kernel
        TLS; 'go' is Go's record layer after a goloop.TLSContext handshake
        where the kernel has no TLS, docs/gotls.md)."""
        return {'kernel': self._tls_kernel, 'openssl': self._tls_user,
                'go': self._tls_go}

    async def _sendfile_native(self, transp, file, offset, count):
        if not isinstance(transp, _core.Transport):
            # A TLS transport whose records the kernel makes: sendfile(2)
            # on its socket sends the file encrypted, with no copy
            # (docs/ktls.md). Any other: asyncio's fallback.
            raw = getattr(transp, '_ktls_raw', None)
            if raw is None:
                raise exceptions.SendfileNotAvailableError(
                    f"native sendfile is not supported for transport {transp!r}")
            transp = raw
        # What asyncio's selector loop checks here (through sock_sendfile):
        # the same errors for the same arguments.
        self._check_sendfile_params(transp.get_extra_info('socket'), file, offset, count)
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation):
            raise exceptions.SendfileNotAvailableError("not a regular file")
        try:
            st = os.fstat(fileno)
        except OSError:
            raise exceptions.SendfileNotAvailableError("not a regular file")
        if not stat.S_ISREG(st.st_mode):
            raise exceptions.SendfileNotAvailableError("not a regular file")
        if not (count or st.st_size):
            return 0  # an empty file, as asyncio answers it
        if transp._sendfile_active:  # asyncio: "Empty waiter is already set"
            raise RuntimeError("sendfile is in progress")
        # Reading pauses meanwhile, as on asyncio, whose transport could not
        # take a write until the sendfile is done (nor can ours).
        resume = transp.is_reading()
        transp.pause_reading()
        # Until this coroutine is done (not only until Go is), write() raises
        # as asyncio's transport does while its sendfile runs.
        transp._sendfile_active = True
        total = 0
        try:
            while True:
                want = _SENDFILE_MAX if count is None else min(count - total, _SENDFILE_MAX)
                if want <= 0:
                    return total
                # Go reads a dup of the fd, which the transport keeps open
                # until Go is done with it (even if this coroutine is
                # cancelled, or the program closes its file meanwhile).
                own = io.FileIO(os.dup(fileno), 'rb')
                try:
                    fut = self.create_future()
                    transp._sendfile(own, offset + total, want, fut)
                except BaseException:
                    own.close()
                    raise
                del own
                sent, err = await fut
                total += sent
                if err:
                    if total == 0:  # asyncio's rule: the fallback may do better
                        raise exceptions.SendfileNotAvailableError("os.sendfile call failed")
                    if err == errno.ECANCELED:
                        raise ConnectionAbortedError(
                            errno.ECONNABORTED, "the transport was aborted during sendfile")
                    raise OSError(err, os.strerror(err))
                if sent < want:
                    return total  # the end of the file
        finally:
            transp._sendfile_active = False
            if total > 0:
                file.seek(offset + total)
            if resume and not transp.is_closing():
                transp.resume_reading()

    async def _sendfile_fallback(self, transp, file, offset, count):
        if not isinstance(transp, _core.Transport):
            # TLS transports are asyncio's own: asyncio's fallback fits them.
            return await base_events.BaseEventLoop._sendfile_fallback(
                self, transp, file, offset, count)
        # asyncio's fallback protocol refuses a transport that is not its own
        # _FlowControlMixin; _FallbackProtocol is the same protocol for ours.
        # Reads run in the executor; bytes go to write() uncopied.
        if offset:
            file.seek(offset)
        proto = _FallbackProtocol(transp)
        total = 0
        try:
            while count is None or total < count:
                n = _FALLBACK_CHUNK if count is None else min(count - total, _FALLBACK_CHUNK)
                data = await self.run_in_executor(None, file.read, n)
                if not data:
                    break
                await proto.drain()
                transp.write(data)
                total += len(data)
            return total
        finally:
            if total > 0 and hasattr(file, 'seek'):
                file.seek(offset + total)
            await proto.restore()

    # ---- pipes, terminals and subprocesses (_pipes.py, docs/subprocess.md) ----

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return _pipes.make_read_pipe_transport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return _pipes.make_write_pipe_transport(self, pipe, protocol, waiter, extra)

    async def _make_subprocess_transport(self, protocol, args, shell, stdin, stdout,
                                         stderr, bufsize, extra=None, **kwargs):
        # No child watcher is consulted: the transport watches its child's pidfd.
        return await _pipes.make_subprocess_transport(
            self, protocol, args, shell, stdin, stdout, stderr, bufsize,
            extra=extra, **kwargs)

    def _close_subprocesses(self):
        # Before the core closes: the pidfds leave Go's watch while it is there.
        for transp in list(self._subprocesses):
            transp._loop_closing()
        self._subprocesses.clear()

    # ---- names: goloop's resolver in Go (docs/dns.md) ----

    async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):
        # The common case (a str name, arguments seen accepted before) goes
        # from the C fast path straight to Go, and the tuples are built in
        # C when the answer arrives; anything else takes _dns's Python path.
        call = None
        if _dns.use_go_resolver():
            call = self._gai_start(host, port, family, type, proto, flags)
        if call is None:
            return await _dns.getaddrinfo(self, host, port, family, type, proto, flags)
        token, fut = call
        try:
            return await fut
        except exceptions.CancelledError:
            self._go_call_cancel(token)  # the lookup stops in Go too
            raise

    async def getnameinfo(self, sockaddr, flags=0):
        return await _dns.getnameinfo(self, sockaddr, flags)

    # ---- Go calls (DNS, ...) ----

    async def _runtime_stats(self, collect=False):
        """The Go runtime's heap and goroutine counts (for leak tests); with
        collect=True after a Go garbage collection that returns freed memory
        to the OS."""
        import json
        return json.loads(await self._go_call("runtime.stats", b"gc" if collect else b""))

    def _go_call(self, method, req):
        """Run a registered Go method in a goroutine; a future for its bytes
        (GoCallError with Go's text when it fails)."""
        self._check_closed()
        token, fut = self._go_call_start(method, req)

        def cancel_go(f):
            if f.cancelled():
                self._go_call_cancel(token)
        fut.add_done_callback(cancel_go)
        return fut

    # ---- start_tls: asyncio's steps, with goloop's SSL protocol (_tls.py) ----

    async def start_tls(self, transport, protocol, sslcontext, *,
                        server_side=False,
                        server_hostname=None,
                        ssl_handshake_timeout=None,
                        ssl_shutdown_timeout=None):
        """Upgrade transport to TLS (asyncio's BaseEventLoop.start_tls, with
        the SSL protocol in C unless GOLOOP_TLS=python)."""
        import ssl
        from . import _tls
        if not isinstance(sslcontext, ssl.SSLContext):
            raise TypeError(
                f'sslcontext is expected to be an instance of ssl.SSLContext, '
                f'got {sslcontext!r}')
        if not getattr(transport, '_start_tls_compatible', False):
            raise TypeError(
                f'transport {transport!r} is not supported by start_tls()')
        waiter = self.create_future()
        ssl_protocol = _tls.ssl_protocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
            call_connection_made=False)
        # Paused first, so no data reaches the SSL protocol before its
        # connection_made (docs/tls.md: what the transport holds meanwhile).
        transport.pause_reading()
        transport.set_protocol(ssl_protocol)
        conmade_cb = self.call_soon(ssl_protocol.connection_made, transport)
        resume_cb = self.call_soon(transport.resume_reading)
        try:
            await waiter
        except BaseException:
            transport.close()
            conmade_cb.cancel()
            resume_cb.cancel()
            raise
        return ssl_protocol._app_transport

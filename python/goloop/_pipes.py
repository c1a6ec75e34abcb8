"""Pipes, terminals and subprocesses on a goloop loop (docs/subprocess.md).

Pipe transports are goloop's C transport in pipe mode (_core.ReadPipeTransport
and _core.WritePipeTransport, transport.c): the Go core owns a duplicate of
the pipe's fd from the moment the transport is made, reads into its buffers
and writes from the program's bytes objects, with asyncio's pipe semantics
kept exactly: which files are accepted (pipes, sockets and character
devices), EOF, flow control, errors, and the way a closed reader is noticed
on a write pipe (Go polls its write end). The program's pipe object stays
the program's until connection_lost, when the transport closes it, as
asyncio's does.

Subprocesses are started by subprocess.Popen (fork+exec in C, so no Go
code ever runs in the child) and their exit is watched through a pidfd:
Go watches the pidfd's readiness like any other fd, and when it turns
readable the transport reaps its own child through its Popen object
(waitpid on that pid, WNOHANG). There is no SIGCHLD handler and no asyncio
child watcher, so it works from a loop in any thread and never reaps a
process it did not start.
"""
import errno
import os
import stat
import threading
import warnings
from asyncio import futures, unix_events
from asyncio.log import logger

from . import _core


class _GoOwnedFd:
    """The Go core's own duplicate of a pipe transport's fd.

    Go closes it when the transport closes (or is collected, or its loop
    closes) and the transport then detaches this object, so nothing here
    closes a number Go may already have closed. Only in a child forked after
    Go started, where Go is gone, is the child's copy closed here."""
    __slots__ = ('_fd',)

    def __init__(self, fd):
        self._fd = fd

    def fileno(self):
        return self._fd

    def detach(self):
        fd, self._fd = self._fd, -1
        return fd

    def _close_here(self):
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self):
        if self._fd >= 0 and _core._forked():
            self._close_here()


class ReadPipeTransport(_core.ReadPipeTransport):
    """The read end of a pipe, a socket or a character device (a PTY)."""

    def _fatal_error(self, exc, message='Fatal error on pipe transport'):
        # asyncio's: a PTY whose slave closed reads EIO, an ordinary end
        # logged only in debug mode; anything else goes to the handler.
        loop = self._loop
        if isinstance(exc, OSError) and exc.errno == errno.EIO:
            if loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            loop.call_exception_handler({
                'message': message,
                'exception': exc,
                'transport': self,
                'protocol': self._protocol,
            })
        self._force_close(exc)


class WritePipeTransport(_core.WritePipeTransport):
    """The write end of a pipe, a socket or a character device (a PTY)."""

    def _fatal_error(self, exc, message='Fatal error on pipe transport'):
        # asyncio's: an OSError (EPIPE: the reader went away) is an ordinary
        # end, logged only in debug mode.
        loop = self._loop
        if isinstance(exc, OSError):
            if loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            loop.call_exception_handler({
                'message': message,
                'exception': exc,
                'transport': self,
                'protocol': self._protocol,
            })
        self._force_close(exc)


def _pipe_transport(loop, cls, pipe, protocol, extra, mode):
    """A pipe transport over a duplicate of pipe's fd that Go owns from
    here on; the program's pipe object is closed by the transport when
    it is done (asyncio's rule)."""
    owned = _GoOwnedFd(os.dup(pipe.fileno()))
    try:
        return cls(loop, owned, pipe, protocol, extra, stat.S_ISSOCK(mode))
    except BaseException:
        owned._close_here()  # no transport: Go never had it
        raise


def make_read_pipe_transport(loop, pipe, protocol, waiter=None, extra=None):
    """loop._make_read_pipe_transport: asyncio's checks and order of calls."""
    fd = pipe.fileno()
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
        raise ValueError("Pipe transport is for pipes/sockets only.")
    os.set_blocking(fd, False)
    extra = extra or {}
    extra['pipe'] = pipe
    # A protocol without connection_made fails here, before Go has the fd.
    connection_made = protocol.connection_made
    transport = _pipe_transport(loop, ReadPipeTransport, pipe, protocol, extra, mode)
    try:
        loop.call_soon(connection_made, transport)
        # only start reading when connection_made() has been called
        loop.call_soon(transport._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)
    except BaseException:
        # The pipe object stays the caller's; Go's duplicate is closed
        # through Go when the transport is collected (nothing pins it yet).
        transport._pipe = None
        raise
    return transport


def make_write_pipe_transport(loop, pipe, protocol, waiter=None, extra=None):
    """loop._make_write_pipe_transport: asyncio's checks and order of calls."""
    fd = pipe.fileno()
    mode = os.fstat(fd).st_mode
    is_fifo, is_sock = stat.S_ISFIFO(mode), stat.S_ISSOCK(mode)
    if not (stat.S_ISCHR(mode) or is_fifo or is_sock):
        raise ValueError("Pipe transport is only for "
                         "pipes, sockets and character devices")
    os.set_blocking(fd, False)
    extra = extra or {}
    extra['pipe'] = pipe
    connection_made = protocol.connection_made
    transport = _pipe_transport(loop, WritePipeTransport, pipe, protocol, extra, mode)
    try:
        loop.call_soon(connection_made, transport)
        # The reader going away shows as readiness on a pipe's write end (and
        # a socket's); asyncio does not watch a character device.
        if is_fifo or is_sock:
            loop.call_soon(transport._start_hup_watch)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)
    except BaseException:
        transport._pipe = None  # see make_read_pipe_transport
        raise
    return transport


def _reap_in_background(proc):
    """The loop that watched this child is closing while the child still
    runs: a thread waits for it (on this pid only, through its Popen) so it
    does not stay a zombie. asyncio's ThreadedChildWatcher does the same
    with a child whose loop has gone."""
    t = threading.Thread(target=_wait_quietly, args=(proc,),
                         name=f"goloop-reap-{proc.pid}", daemon=True)
    t.start()


def _wait_quietly(proc):
    try:
        proc.wait()
    except Exception:  # pragma: no cover - ECHILD is already handled by Popen
        pass


class SubprocessTransport(unix_events._UnixSubprocessTransport):
    """asyncio's subprocess transport (base_subprocess semantics), its child
    watched through a pidfd instead of a child watcher."""

    _pidfd = -1          # watched by the loop until the child is reaped
    _pidfd_closing = -1  # no longer watched; closed on the next iteration

    def _start(self, args, shell, stdin, stdout, stderr, bufsize, **kwargs):
        super()._start(args, shell, stdin, stdout, stderr, bufsize, **kwargs)
        # The child is ours and not reaped yet (only its Popen reaps it), so
        # its pid still names it: the pidfd opened now is that process's.
        try:
            self._pidfd = os.pidfd_open(self._proc.pid)
            self._loop._add_reader(self._pidfd, self._pidfd_ready)
        except BaseException:
            # No pidfd (Linux < 5.3) or no watch on it: nothing would see
            # the child exit, so kill and reap it now rather than leave it
            # running unseen or a zombie, and let the caller see why.
            if self._pidfd >= 0:
                os.close(self._pidfd)
                self._pidfd = -1
            proc = self._proc
            proc.kill()
            proc.wait()
            for f in (proc.stdin, proc.stdout, proc.stderr):
                if f is not None:
                    f.close()
            raise
        self._loop._subprocesses.add(self)

    def _pidfd_ready(self):
        proc = self._proc
        if proc is None:
            return
        # Popen.poll: waitpid(pid, WNOHANG) under Popen's own lock, so a
        # Popen.wait() elsewhere and this never both reap. None means not
        # yet (another thread is inside Popen.wait, or the wake-up came
        # before the kernel made the child waitable): the pidfd stays
        # readable, so the watcher calls again.
        returncode = proc.poll()
        if returncode is None:
            return
        self._stop_watching()
        # asyncio's child watchers report the exit one iteration later
        # (call_soon_threadsafe); keep that order against the pipes' events.
        self._loop.call_soon(self._process_exited, returncode)

    def _stop_watching(self):
        fd, self._pidfd = self._pidfd, -1
        if fd < 0:
            return
        loop = self._loop
        loop._remove_reader(fd)
        # The pidfd is closed one iteration later, once the stop has reached
        # Go: epoll forgets a watch on a closed fd only when no other process
        # holds the same file (a child forked meanwhile does), and a stale
        # watch on a readable pidfd would wake the loop for ever.
        self._pidfd_closing = fd
        loop.call_soon(self._close_pidfd, loop)

    def _close_pidfd(self, loop):
        fd, self._pidfd_closing = self._pidfd_closing, -1
        if fd >= 0:
            os.close(fd)
        loop._subprocesses.discard(self)

    def _loop_closing(self):
        """The loop closes (Go's watches go with it). A child not seen to
        exit is handed to a thread that reaps it; the transport itself stays
        as it is (asyncio does not kill a child when its loop closes), and
        closing it later still kills the child."""
        for name in ("_pidfd", "_pidfd_closing"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                if name == "_pidfd":
                    self._loop._remove_reader(fd)
                os.close(fd)  # Go's epoll instance or ring goes next
                if name == "_pidfd":
                    self._reap_orphan()

    def _reap_orphan(self):
        proc = self._proc
        if proc is not None and proc.returncode is None:
            if self._loop.get_debug():
                logger.warning("Loop %r closing while pid %s runs: "
                               "reaped in a thread", self._loop, proc.pid)
            _reap_in_background(proc)

    def __del__(self, _warn=warnings.warn):
        super().__del__(_warn)
        # Only reachable with a pidfd open if the loop itself was collected
        # without close(): the pidfd is still ours to close.
        for name in ("_pidfd", "_pidfd_closing"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                os.close(fd)


async def make_subprocess_transport(loop, protocol, args, shell, stdin, stdout,
                                    stderr, bufsize, extra=None, **kwargs):
    """loop._make_subprocess_transport: asyncio's steps, without a child watcher."""
    waiter = loop.create_future()
    transp = SubprocessTransport(loop, protocol, args, shell, stdin, stdout,
                                 stderr, bufsize, waiter=waiter, extra=extra,
                                 **kwargs)
    try:
        await waiter
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        transp.close()
        await transp._wait()
        raise
    return transp

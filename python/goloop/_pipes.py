"""Pipes, terminals and subprocesses on a goloop loop (docs/subprocess.md).

Pipe transports are asyncio's own Unix pipe transports: they touch the loop
only through call_soon, _add_reader/_remove_reader, _add_writer/
_remove_writer, get_debug and call_exception_handler, which goloop serves
with Go poll watchers. So their checks (pipes, sockets and character
devices only), EOF handling, flow control and the way a closed reader is
noticed on a write pipe are asyncio's exactly.

Subprocesses are started by subprocess.Popen (fork+exec in C, so no Go
code ever runs in the child) and their exit is watched through a pidfd:
Go watches the pidfd's readiness like any other fd, and when it turns
readable the transport reaps its own child through its Popen object
(waitpid on that pid, WNOHANG). There is no SIGCHLD handler and no asyncio
child watcher, so it works from a loop in any thread and never reaps a
process it did not start.
"""
import os
import threading
import warnings
from asyncio import unix_events
from asyncio.log import logger


class ReadPipeTransport(unix_events._UnixReadPipeTransport):
    """The read end of a pipe, a socket or a character device (a PTY)."""


class WritePipeTransport(unix_events._UnixWritePipeTransport):
    """The write end of a pipe, a socket or a character device (a PTY)."""


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

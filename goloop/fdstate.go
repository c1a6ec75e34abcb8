package goloop

import (
	"golang.org/x/sys/unix"
)

// What both backends share about an fd: its close state, its ordered
// output queue (sends, shutdowns and a graceful close, with the abort and
// upgrade rules), shutdown itself and which accept errors a listener
// survives. The backends differ only in how they do the I/O.

// closeState is how far an fd is in its close, on either backend.
type closeState uint8

const (
	fdOpen    closeState = iota // work may be submitted
	fdClosing                   // OpClose applied: nothing new starts; waiting for what is in flight (io_uring)
	fdClosed                    // closed and EvClosed reported: the number is no longer ours to touch
)

// queued is one entry of an fd's ordered output queue: a send, a shutdown
// or a graceful close, which must happen in the order C asked for them.
type queued struct {
	op    uint8 // OpSend, OpSendTo, OpShutdown or OpClose
	token uint64
	ptr   uintptr
	n     int // bytes to send
	off   int // bytes already sent
}

// outQueue is an fd's output queue, oldest first.
type outQueue []queued

func (q *outQueue) push(s *Sub) {
	*q = append(*q, queued{op: s.Op, token: s.Token, ptr: s.Ptr, n: int(s.Len)})
}

// pop drops the head. The last entry is dropped by truncating, not by
// slicing past it, so the array stays for the next write: one write per
// request must not cost one allocation per request.
func (q *outQueue) pop() { *q = popOut(*q) }

// upgradable reports whether an abort with CloseUpgrade and this token
// applies: only while that token's graceful close still waits in the
// queue. Once the close ran (or is running) the upgrade does nothing, and
// completes nothing: the fd number may by then belong to someone else.
func (q outQueue) upgradable(token uint64) bool { return hasGraceful(q, token) }

// cancel ends every queued send and shutdown with -ECANCELED, in order,
// and forgets the queue (a graceful close in it is superseded by the
// abort that cancels it).
func (q *outQueue) cancel(complete func(Comp)) { q.fail(-int32(unix.ECANCELED), false, complete) }

// fail ends every queued entry with res; with closes, a queued graceful
// close is answered too (EvClosed with res), for an fd the backend cannot
// serve at all.
func (q *outQueue) fail(res int32, closes bool, complete func(Comp)) {
	for _, e := range *q {
		switch e.op {
		case OpSend, OpSendTo:
			complete(Comp{Token: e.token, Kind: EvSend, Res: res})
		case OpShutdown:
			complete(Comp{Token: e.token, Kind: EvShutdown, Res: res})
		case OpClose:
			if closes {
				complete(Comp{Token: e.token, Kind: EvClosed, Res: res})
			}
		}
	}
	*q = nil
}

// shutdownWrite is OpShutdown's I/O, the same on both backends: the queue
// reached it, so every earlier send is out.
func shutdownWrite(fd int32) int32 {
	if err := unix.Shutdown(int(fd), unix.SHUT_WR); err != nil {
		return errnoOf(err)
	}
	return 0
}

// acceptTransient lists the accept errors after which a listener still
// works: the listener reports them (FlagMore) and goes on accepting.
func acceptTransient(e unix.Errno) bool {
	switch e {
	case unix.ECONNABORTED, unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM, unix.EPROTO, unix.EPERM:
		return true
	}
	return false
}

// sendSome writes from q until done or the socket would block. It reports
// done=true with err=0 when q is fully sent.
func sendSome(fd int32, q *queued, notSock *bool) (done bool, errno unix.Errno) {
	for q.off < q.n {
		p := q.ptr + uintptr(q.off)
		n := q.n - q.off
		var r uintptr
		var e unix.Errno
		if !*notSock {
			// MSG_NOSIGNAL: a peer that went away must be an EPIPE for the
			// transport, never a SIGPIPE for the process.
			r, _, e = unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), p, uintptr(n), unix.MSG_NOSIGNAL, 0, 0)
			if f := faultAt(faultSend); f != 0 && e == 0 {
				e = f // as if nothing was sent
				r = 0
			}
			if e == unix.ENOTSOCK {
				*notSock = true
				continue
			}
		} else {
			r, _, e = unix.Syscall(unix.SYS_WRITE, uintptr(fd), p, uintptr(n))
		}
		switch e {
		case 0:
			q.off += int(r)
		case unix.EINTR:
		case unix.EAGAIN:
			return false, 0
		default:
			return true, e
		}
	}
	return true, 0
}

// connectRaw starts a connect with a sockaddr that C built; the bytes are
// passed through untouched, so any address family works.
func connectRaw(fd int32, sa uintptr, salen uint32) unix.Errno {
	for {
		_, _, e := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), sa, uintptr(salen))
		if e != unix.EINTR {
			return e
		}
	}
}

func errnoOf(err error) int32 {
	if e, ok := err.(unix.Errno); ok {
		return -int32(e)
	}
	return -int32(unix.EIO)
}

// popOut drops the head of an output queue. The last entry is dropped by
// truncating, not by slicing past it, so the array stays for the next
// write: one write per request must not cost one allocation per request.
func popOut(out []queued) []queued {
	if len(out) == 1 {
		out[0] = queued{}
		return out[:0]
	}
	return out[1:]
}

package goloop

import (
	"golang.org/x/sys/unix"
)

// queued is one entry of an fd's ordered output queue: a send, a shutdown
// or a graceful close, which must happen in the order C asked for them.
type queued struct {
	op    uint8 // OpSend, OpShutdown or OpClose
	token uint64
	ptr   uintptr
	n     int // bytes to send
	off   int // bytes already sent
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

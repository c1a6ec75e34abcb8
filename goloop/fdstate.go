package goloop

import (
	"unsafe"

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
	op      uint8 // OpSend, OpSendTo, OpShutdown, OpClose, OpSendfile or OpKTLS
	rectype uint8 // OpSend: a record of this type through kernel TLS (ArgRecType), 0: plain bytes
	token   uint64
	ptr     uintptr // OpSendfile: the file offset; OpKTLS: the KTLSParams
	n       int     // bytes to send
	off     int     // bytes already sent
	file    int32   // OpSendfile: the file's fd (lent by C)
}

// queuedOf is the queue entry for a submission.
func queuedOf(s *Sub) queued {
	q := queued{op: s.Op, token: s.Token, ptr: s.Ptr, n: int(s.Len)}
	if s.Op == OpSendfile {
		q.file = int32(s.Arg)
		if q.n > SendfileMax {
			q.n = SendfileMax
		}
	}
	if s.Op == OpSend {
		q.rectype = uint8((s.Arg & argRecTypeMask) >> 8)
	}
	return q
}

// result is the completion that ends a send or a sendfile with res: the
// bytes sent, or -errno (a sendfile then also says how far it got).
func (q *queued) result(res int32) Comp {
	if q.op == OpKTLS {
		return Comp{Token: q.token, Kind: EvKTLS, Res: res}
	}
	if q.op == OpSendfile {
		c := Comp{Token: q.token, Kind: EvSendfile, Res: res}
		if res < 0 {
			c.Aux = uint32(q.off)
		}
		return c
	}
	return Comp{Token: q.token, Kind: EvSend, Res: res}
}

// outQueue is an fd's output queue, oldest first.
type outQueue []queued

func (q *outQueue) push(s *Sub) {
	*q = append(*q, queuedOf(s))
}

// pop drops the head (drop(1)).
func (q *outQueue) pop() { q.drop(1) }

// drop drops the first k entries, moving the rest down to the start of the
// array rather than slicing past them: a queue that slid along its array
// would reach the end of it every cap entries and reallocate, a new array
// (zeroed, and garbage for the collector) per so many writes, where the
// moved-down queue keeps its array for good. Sends leave in gathers of up
// to maxGather entries, so the move is once per sendmsg, not per entry.
func (q *outQueue) drop(k int) {
	n := copy(*q, (*q)[k:])
	clear((*q)[n:])
	*q = (*q)[:n]
}

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
	for i := range *q {
		e := &(*q)[i]
		switch e.op {
		case OpSend, OpSendTo, OpSendfile, OpKTLS:
			complete(e.result(res))
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

// gatherSends writes the raw iovec words (address, length) of the plain
// sends at the head of out, at most maxGather, into iov and says how many:
// both backends send them with one sendmsg. The bytes are C's memory,
// never a Go pointer.
func gatherSends(out outQueue, iov *[2 * maxGather]uint64) int {
	n := 0
	for i := range out {
		e := &out[i]
		if !gatherable(e) || n == maxGather {
			break
		}
		iov[2*n] = uint64(e.ptr + uintptr(e.off))
		iov[2*n+1] = uint64(e.n - e.off)
		n++
	}
	return n
}

// gatherable: a plain send (not a record of its own type), which may leave
// in one sendmsg with its neighbours.
func gatherable(q *queued) bool { return q.op == OpSend && q.rectype == 0 }

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

// sendfileSome makes one sendfile(2) call for q that moves bytes (or
// finds the end of the file, or an error): asyncio's selector loop makes
// one per writability event, and so does goloop. Looping until EAGAIN
// would let a peer that drains as fast as it is fed (an io_uring receive
// in this same process) take a whole file before any other callback ran,
// where asyncio lets the peer's protocol see the first bytes (and perhaps
// close) in between. It reports done=true with err=0 when q is finished
// (q.off < q.n then means the file ended early); done=false when q waits
// for writability. sendfile(2) has no MSG_NOSIGNAL; a vanished peer is
// still EPIPE, since Python ignores SIGPIPE and Go's handler ignores it on
// its own threads.
func sendfileSome(fd int32, q *queued) (done bool, errno unix.Errno) {
	for q.off < q.n {
		off := int64(q.ptr) + int64(q.off)
		n, err := unix.Sendfile(int(fd), int(q.file), &off, q.n-q.off)
		if f := faultAt(faultSend); f != 0 && err == nil {
			err, n = f, 0 // as if nothing was sent
		}
		switch err {
		case nil:
			if n == 0 {
				return true, 0 // end of file
			}
			q.off += n
			if q.off < q.n {
				return false, 0 // the rest at the next writability
			}
		case unix.EINTR:
		case unix.EAGAIN:
			return false, 0
		default:
			e, ok := err.(unix.Errno)
			if !ok || e == 0 {
				e = unix.EIO
			}
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

// acceptScratch is a backend's room for accept4's and getsockname's
// sockaddrs: one per backend (its loop goroutine alone accepts), so taking
// a connection allocates nothing (x/sys/unix's Accept4 decodes the peer
// into new heap objects per connection).
type acceptScratch struct {
	sa  unix.RawSockaddrInet6 // an IPv4 sockaddr fits; a longer one is truncated and not used
	len uint32
}

// Listener-local address states (epFd/urFd.accLocal): not asked yet, or
// asked every connection (a wildcard or non-IPv4 listener). Any other
// value is the listener's own packed address with accLocalKnown set.
const (
	accLocalUnknown = 0
	accLocalPerConn = 1
	accLocalKnown   = 1 << 63
)

// accept4 takes one connection, with its peer's sockaddr in sc. A
// non-blocking call, so a raw syscall.
func accept4(fd int32, sc *acceptScratch) (int, error) {
	sc.len = uint32(unsafe.Sizeof(sc.sa))
	nfd, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), uintptr(unsafe.Pointer(&sc.sa)),
		uintptr(unsafe.Pointer(&sc.len)), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(nfd), nil
}

// getsockname4 fills sc with fd's own address; false unless it is AF_INET.
func getsockname4(fd int32, sc *acceptScratch) bool {
	sc.len = uint32(unsafe.Sizeof(sc.sa))
	_, _, e := unix.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(&sc.sa)),
		uintptr(unsafe.Pointer(&sc.len)))
	return e == 0 && sc.isInet4()
}

func (sc *acceptScratch) isInet4() bool {
	return sc.sa.Family == unix.AF_INET && sc.len == unix.SizeofSockaddrInet4
}

// packInet4 packs the AF_INET sockaddr in sc as record.go's EvAccept
// carries it: the address's four bytes as they lie in memory in the low 32
// bits, the port's two (network order, as they lie) in bits 32-47.
func (sc *acceptScratch) packInet4() uint64 {
	sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sc.sa))
	return uint64(*(*uint32)(unsafe.Pointer(&sa.Addr))) | uint64(sa.Port)<<32
}

// acceptAddrs puts an IPv4 connection's two addresses into its EvAccept
// (record.go), so the transport's peername and sockname cost Python no
// syscall: the peer's came with accept4; the local one is the listener's
// own unless that is a wildcard, then one getsockname. *local caches what
// the listener's address is. Other families are left to C (Aux 0).
func acceptAddrs(c *Comp, lfd int32, nfd int, local *uint64, sc *acceptScratch) {
	if !sc.isInet4() {
		return
	}
	peer := sc.packInet4()
	if *local == accLocalUnknown {
		*local = accLocalPerConn
		if getsockname4(lfd, sc) && sc.packInet4()&0xffffffff != 0 {
			*local = sc.packInet4() | accLocalKnown
		}
	}
	mine := *local &^ accLocalKnown
	if *local == accLocalPerConn {
		if !getsockname4(int32(nfd), sc) {
			return
		}
		mine = sc.packInet4()
	}
	c.Ptr = uintptr(peer)
	c.Buf = uint32(mine)
	c.Aux = unix.AF_INET | uint32(mine>>32)<<16
}

// connectedAddrs puts an IPv4 socket's local address into its successful
// EvConnect (record.go), as acceptAddrs does for an accepted connection:
// C knows the peer (it gave the sockaddr), so the transport's sockname and
// peername cost Python no syscall.
func connectedAddrs(c *Comp, fd int32, sc *acceptScratch) {
	if c.Res == 0 && getsockname4(fd, sc) {
		mine := sc.packInet4()
		c.Buf = uint32(mine)
		c.Aux = unix.AF_INET | uint32(mine>>32)<<16
	}
}

// acceptSome accepts up to 64 connections from a readable listener, the same
// on both backends: a readiness wait, then accept4 in a loop. (io_uring's
// own multishot accept keeps its place at the head of the listening
// socket's wait queue: with several processes on one listener, a pre-fork
// server's, the first worker to arm it got every connection.) Bounded, so
// one busy listener cannot starve every other fd. It reports whether the
// listener still accepts: false after an error it cannot survive.
func acceptSome(fd int32, token uint64, local *uint64, sc *acceptScratch, complete func(Comp)) bool {
	for i := 0; i < 64; i++ {
		nfd, err := accept4(fd, sc)
		if e := faultAt(faultAccept); e != 0 && err == nil {
			unix.Close(nfd)
			err = e
		}
		switch err {
		case nil:
			c := Comp{Token: token, Kind: EvAccept, Res: int32(nfd), Flags: FlagMore}
			acceptAddrs(&c, fd, nfd, local, sc)
			complete(c)
			continue
		case unix.EAGAIN, unix.EINTR:
			return true
		}
		if e, _ := err.(unix.Errno); acceptTransient(e) {
			complete(Comp{Token: token, Kind: EvAccept, Res: errnoOf(err), Flags: FlagMore})
			return true
		}
		complete(Comp{Token: token, Kind: EvAccept, Res: errnoOf(err)})
		return false
	}
	return true
}

package goloop

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Socket operations on fds their owner keeps (loop.sock_recv,
// sock_recv_into, sock_sendall): what both backends share.
//
// They are readiness-based on both backends: Go makes the recv/send
// syscall itself, inside Poll, and only for an op that is still live. The
// io_uring backend waits with a POLL_ADD, never with an IORING_OP_RECV: a
// recv in the kernel can complete (and consume bytes) after C has given
// the op up, and asyncio never loses bytes to a cancelled sock_recv. Since
// OpSockStop is applied before Go waits or reads, a stopped op reads and
// writes nothing more.
//
// Like asyncio's one reader and one writer per fd, an fd has at most one
// live receive and one live send: a second one replaces the first, which
// is answered at once with -ECANCELED.

// sockOp is one live OpSock* op.
type sockOp struct {
	op    uint8
	token uint64
	ptr   uintptr // C memory: the destination, or the data; OpSockSendfile: the file offset
	n     int     // its length
	off   int     // send, sendfile: bytes sent so far
	file  int32   // OpSockSendfile: the file's fd (lent by C, used only while live)
	live  bool
}

// isSockOp reports whether op is one of the sock ops (sockops.go serves it).
func isSockOp(op uint8) bool {
	switch op {
	case OpSockRecv, OpSockSend, OpSockAccept, OpSockRecvFrom, OpSockSendTo, OpSockSendfile:
		return true
	}
	return false
}

// sockSends reports whether op takes the fd's send slot (and waits for
// writability) rather than its receive slot.
func sockSends(op uint8) bool {
	return op == OpSockSend || op == OpSockSendTo || op == OpSockSendfile
}

// sockOpOf is the live op for a submission.
func sockOpOf(s *Sub) sockOp {
	o := sockOp{op: s.Op, token: s.Token, ptr: s.Ptr, n: int(s.Len), live: true}
	if s.Op == OpSockSendfile {
		o.file = int32(s.Arg)
		if o.n > SendfileMax {
			o.n = SendfileMax
		}
	}
	return o
}

// sockOps is an fd's live socket operations. A backend's fd state holds
// it by pointer, nil until the fd's first sock op that has to wait: a
// transport's fd never has one, and a held connection's state is smaller
// by its size (docs/counts.md). Every method but adopt and start takes a
// nil *sockOps as "no live op"; those two are called on opsOf's answer.
type sockOps struct {
	recv, send sockOp
}

// opsOf is *p, made if there is none yet.
func opsOf(p **sockOps) *sockOps {
	if *p == nil {
		*p = new(sockOps)
	}
	return *p
}

func (s *sockOps) live() bool { return s != nil && (s.recv.live || s.send.live) }

func (s *sockOps) recvLive() bool { return s != nil && s.recv.live }

func (s *sockOps) sendLive() bool { return s != nil && s.send.live }

func (s *sockOps) of(op uint8) *sockOp {
	if sockSends(op) {
		return &s.send
	}
	return &s.recv
}

// tryFresh serves an op on an fd the backend keeps no state for (the
// common case: nothing else waits on it), without making any: it reports
// whether the op is over; if not, the op (with what a send has sent
// already) is for adopt, on the fd's new state.
func tryFresh(s *Sub, complete func(Comp)) (sockOp, bool) {
	o := sockOpOf(s)
	return o, o.try(s.Fd, complete)
}

// adopt makes o, which tryFresh could not finish, the fd's live op.
func (s *sockOps) adopt(op uint8, o sockOp) { *s.of(op) = o }

// start makes sub the fd's live op of its kind, replacing (answering with
// -ECANCELED) the one that was.
func (s *sockOps) start(sub *Sub, complete func(Comp)) *sockOp {
	o := s.of(sub.Op)
	if o.live {
		o.end(-int32(unix.ECANCELED), complete)
	}
	*o = sockOpOf(sub)
	return o
}

// stop gives up the live op named token: -ECANCELED at once. It reports
// which slot it stopped (OpSockRecv for the receive slot, which an accept
// takes too, or OpSockSend), or OpNop when the op had already been
// answered.
func (s *sockOps) stop(token uint64, complete func(Comp)) uint8 {
	switch {
	case s == nil:
	case s.recv.live && s.recv.token == token:
		s.recv.end(-int32(unix.ECANCELED), complete)
		return OpSockRecv
	case s.send.live && s.send.token == token:
		s.send.end(-int32(unix.ECANCELED), complete)
		return OpSockSend
	}
	return OpNop
}

// fail answers every live op with res (the fd is being closed, or the
// backend cannot watch it).
func (s *sockOps) fail(res int32, complete func(Comp)) {
	if s == nil {
		return
	}
	if s.recv.live {
		s.recv.end(res, complete)
	}
	if s.send.live {
		s.send.end(res, complete)
	}
}

// end answers the op: res is the result, or -errno (with the bytes sent
// before it in Aux).
func (o *sockOp) end(res int32, complete func(Comp)) {
	c := Comp{Token: o.token, Kind: EvSock, Res: res}
	if res < 0 {
		c.Aux = uint32(o.off)
	}
	o.live = false
	complete(c)
}

// try does o's I/O on fd as far as the socket allows, and answers it when
// it is over. It reports whether o is over; false means wait for
// readiness (readable for a receive or an accept, writable for a send).
func (o *sockOp) try(fd int32, complete func(Comp)) bool {
	switch o.op {
	case OpSockSend:
		return o.trySend(fd, complete)
	case OpSockAccept:
		return o.tryAccept(fd, complete)
	case OpSockRecvFrom:
		return o.tryRecvFrom(fd, complete)
	case OpSockSendTo:
		return o.trySendTo(fd, complete)
	case OpSockSendfile:
		return o.trySendfile(fd, complete)
	}
	return o.tryRecv(fd, complete)
}

// nonblocking makes one socket call that must not block, again after
// EINTR.
func nonblocking(trap, a1, a2, a3, a4, a5, a6 uintptr) (uintptr, unix.Errno) {
	for {
		r, _, e := unix.Syscall6(trap, a1, a2, a3, a4, a5, a6)
		if e != unix.EINTR {
			return r, e
		}
	}
}

// failed answers o with e, unless e says the socket would block: it
// reports whether o is over (false: wait for readiness).
func (o *sockOp) failed(e unix.Errno, complete func(Comp)) bool {
	if e == unix.EAGAIN {
		return false
	}
	o.end(-int32(e), complete)
	return true
}

func (o *sockOp) tryRecvFrom(fd int32, complete func(Comp)) bool {
	blk := sendtoAt(o.ptr)
	blk.namelen = DgramNameCap
	r, e := nonblocking(unix.SYS_RECVFROM, uintptr(fd), blk.data, uintptr(blk.len), unix.MSG_DONTWAIT,
		uintptr(unsafe.Pointer(&blk.name[0])), uintptr(unsafe.Pointer(&blk.namelen)))
	if e != 0 {
		return o.failed(e, complete)
	}
	if blk.namelen > DgramNameCap {
		blk.namelen = DgramNameCap
	}
	o.live = false
	complete(Comp{Token: o.token, Kind: EvSock, Res: int32(r), Aux: blk.namelen})
	return true
}

func (o *sockOp) trySendTo(fd int32, complete func(Comp)) bool {
	blk := sendtoAt(o.ptr)
	name, namelen := blk.sendtoName()
	r, e := nonblocking(unix.SYS_SENDTO, uintptr(fd), blk.data, uintptr(blk.len),
		unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT, name, uintptr(namelen))
	if e != 0 {
		return o.failed(e, complete)
	}
	o.end(int32(r), complete)
	return true
}

func (o *sockOp) tryAccept(fd int32, complete func(Comp)) bool {
	alen := uint32(o.n)
	r, e := nonblocking(unix.SYS_ACCEPT4, uintptr(fd), o.ptr, uintptr(unsafe.Pointer(&alen)),
		unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return o.failed(e, complete)
	}
	if alen > uint32(o.n) {
		alen = uint32(o.n) // cut, as accept(2) cuts it
	}
	o.live = false
	complete(Comp{Token: o.token, Kind: EvSock, Res: int32(r), Aux: alen})
	return true
}

// MSG_DONTWAIT: a socket left in blocking mode must not block the loop's
// thread (asyncio's loop would block in its recv; goloop waits for
// readiness instead).
func (o *sockOp) tryRecv(fd int32, complete func(Comp)) bool {
	r, e := nonblocking(unix.SYS_RECVFROM, uintptr(fd), o.ptr, uintptr(o.n), unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return o.failed(e, complete)
	}
	o.end(int32(r), complete)
	return true
}

func (o *sockOp) trySend(fd int32, complete func(Comp)) bool {
	for o.off < o.n {
		// MSG_NOSIGNAL: a vanished peer is EPIPE, never SIGPIPE.
		r, e := nonblocking(unix.SYS_SENDTO, uintptr(fd), o.ptr+uintptr(o.off), uintptr(o.n-o.off),
			unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT, 0, 0)
		if e != 0 {
			return o.failed(e, complete)
		}
		o.off += int(r)
	}
	o.end(int32(o.n), complete)
	return true
}

// trySendfile makes OpSockSendfile's sendfile(2) call, the transport's own
// (sendfileSome, fdstate.go): one call that moves bytes per readiness, so a
// peer that drains at once cannot take the whole file before any callback
// runs, as with asyncio's one os.sendfile per writability event.
func (o *sockOp) trySendfile(fd int32, complete func(Comp)) bool {
	q := queued{op: OpSendfile, ptr: o.ptr, n: o.n, off: o.off, file: o.file}
	done, e := sendfileSome(fd, &q)
	o.off = q.off
	switch {
	case !done:
		return false
	case e != 0:
		o.end(-int32(e), complete)
	default:
		o.end(int32(o.off), complete)
	}
	return true
}

package goloop

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// urFd is what the io_uring backend knows about one fd: what C wants
// (recvOn, accOn, pollMask, the output queue) and what is in flight in the
// kernel (the *Armed flags, sending, inflight). The two differ while a
// cancellation or a re-arm is on its way; CQEs are judged against what C
// wants now, not against what it wanted when the request went out.
type urFd struct {
	// The fields are in size order, not by concern (each says which it
	// belongs to): a held connection is one urFd, and packed it is a
	// 256-byte allocation instead of a 416-byte one (TestFdStateSize).

	// 8 bytes and more.
	inflight int // requests on this fd whose last CQE has not come back
	recvTok  uint64
	accTok   uint64
	accLocal uint64 // the listener's own address for EvAccept (acceptAddrs)
	pollTok  uint64
	connTok  uint64
	// The sockaddr of a connect asked for while a stopped one is still in
	// the kernel: submitted when that one's CQE is back (with connLen).
	connPtr  uintptr
	closeTok uint64
	// held keeps what arrived while receiving was stopped (a multishot
	// recv cannot be stopped between two chunks); RecvStart delivers it.
	held []Comp
	out  outQueue // sends, shutdowns and a graceful close, in order
	// The sendmsg in flight: the queue's consecutive sends as one request,
	// so writes made in one iteration leave in one call (in the kernel's
	// order), not one request per iteration. Its iovec and msghdr are
	// taken from the backend for the one request and given back at its
	// CQE (the kernel reads them until then): an idle connection carries
	// none of it (a kilobyte each, at 10,000 connections docs/counts.md).
	gather *sendGather
	// sock_recv/sock_sendall on an fd its owner keeps (sockops.go): the
	// live ops (nil until one has to wait), and the readiness polls they
	// wait with (a POLL_ADD, never a recv in the kernel, so a stopped
	// receive consumes nothing: skRecvP, skSendP, skRecvIdx, skSendIdx).
	sk *sockOps
	// OpRecvRecord and kernel TLS (recvrecord.go): the record read waits
	// with a POLL_ADD too (recP, recIdx), so only Go's reads take bytes
	// from the socket.
	kt ktlsFd

	// 4 bytes.
	fd                      int32
	slot                    uint32
	gen                     uint32
	recvIdx, accIdx         uint32 // SQ index of the arming SQE
	pollMask, pollArmedMask uint32 // what C wants watched, what the armed poll watches
	connLen                 uint32
	skRecvIdx, skSendIdx    uint32
	recIdx                  uint32

	// 1 byte.
	notSock bool
	recvOn  bool     // C wants to receive
	recv    armState // the receive in the kernel: unarmed, armed, cancelling or starved
	// A non-socket (pipe, tty) cannot take a multishot recv, and a read of
	// an O_NONBLOCK file fails with EAGAIN instead of waiting: it is
	// received with a poll, then one read, in turn.
	recvKind uint8 // kRecv or kRecvPoll: what is armed
	recvRead bool  // the poll said readable: read next
	// A pipe is read with one multishot read where the kernel has it;
	// a file that refuses it (a tty) falls back to poll and read for good.
	recvMulti, noMulti bool
	recvOnce           bool // ArgOnce: a single-shot receive per chunk
	// eofHeld: the receive ended (0) while a send was in the kernel, in this
	// Poll call. A peer's reset is reported once, to whichever request
	// sees it first; when that was the send, the receive reads a plain end
	// of stream. A reset is no EOF (asyncio's read sees ECONNRESET), so the
	// EOF waits for the send's completion in the same call: if the send
	// failed with EPIPE or ECONNRESET, C gets the reset instead.
	eofHeld bool
	accOn   bool     // C wants to accept
	acc     armState // the accept in the kernel: unarmed, armed or cancelling
	// poll: unarmed, armed, cancelling (a removal in flight) or queued
	poll     armState
	connOn   bool     // C wants a connect: the one in the kernel, or the next
	conn     armState // the connect in the kernel: unarmed, armed or cancelling
	sending  bool     // the head of out (and the sends gathered with it) is in the kernel
	pumpDue  bool     // in b.pumps: pumped once the batch is applied
	state    closeState
	aborting bool // the close under way is an abort: the send in flight ends the queue
	dgram    bool // the receive is a datagram receive (dgram_uring.go)
	skRecvP  armState
	skSendP  armState
	recP     armState
	// noWaitAll: the socket refused MSG_WAITALL (kernel TLS TX takes only
	// MSG_MORE, MSG_DONTWAIT and MSG_NOSIGNAL, EOPNOTSUPP before sending
	// anything): sends go without it, a short send is pumped on.
	noWaitAll bool
}

func (f *urFd) closing() bool { return f.state != fdOpen }

// armState is where one kind of an fd's requests stands in the kernel.
// What C wants (recvOn, accOn, pollMask) is kept apart from it: the two
// differ while a cancellation or a re-arm is on its way, and completions
// are judged against what C wants now.
type armState uint8

const (
	reqNone       armState = iota // nothing in the kernel
	reqArmed                      // a request is in the kernel
	reqCancelling                 // armed, and its cancellation (or poll removal) is in flight
	reqStarved                    // receive only: not armed, the buffer ring is empty; re-armed when buffers come back
	reqQueued                     // poll only: delivered in this call, re-armed at the next
)

// inKernel reports whether a request of this kind may still complete.
func (s armState) inKernel() bool { return s == reqArmed || s == reqCancelling }

func (b *uringBackend) state(fd int32) *urFd {
	if f := b.fds[fd]; f != nil {
		return f
	}
	var slot uint32
	if n := len(b.free); n > 0 {
		slot = b.free[n-1]
		b.free = b.free[:n-1]
	} else {
		slot = uint32(len(b.slots))
		b.slots = append(b.slots, nil)
		b.gens = append(b.gens, 0)
	}
	f := &urFd{fd: fd, slot: slot, gen: b.gens[slot]}
	b.slots[slot] = f
	b.fds[fd] = f
	return f
}

// forget drops f; bumping the slot's generation makes any CQE still naming
// it an orphan.
func (b *uringBackend) forget(f *urFd) {
	if b.fds[f.fd] == f {
		delete(b.fds, f.fd)
	}
	if b.slots[f.slot] == f {
		b.slots[f.slot] = nil
		b.gens[f.slot]++
		b.free = append(b.free, f.slot)
	}
}

func (f *urFd) idle() bool {
	return !f.recvOn && !f.recv.inKernel() && !f.accOn && !f.acc.inKernel() && f.pollMask == 0 && !f.poll.inKernel() &&
		!f.connOn && !f.conn.inKernel() && len(f.out) == 0 && f.inflight == 0 && len(f.held) == 0 && !f.eofHeld && f.state == fdOpen &&
		!f.sk.live() && !f.skRecvP.inKernel() && !f.skSendP.inKernel() && !f.kt.rec.held() && !f.recP.inKernel() && f.kt.soft == nil
}

// settle finishes a close whose cancellations have all come back, and
// forgets an fd nothing is pending on.
func (b *uringBackend) settle(f *urFd) {
	if f.state == fdClosing {
		if f.inflight == 0 {
			b.finishClose(f)
		}
		return
	}
	if f.idle() {
		b.forget(f)
	}
}

// fdSQE starts a request on f.
func (b *uringBackend) fdSQE(f *urFd, op, kind uint8) *uringSQE {
	s := b.sqe(op, f.fd, b.ud(f, kind))
	f.inflight++
	return s
}

// cancel asks the kernel to stop f's request of the given kind.
func (b *uringBackend) cancel(f *urFd, kind uint8) {
	s := b.fdSQE(f, iouOpAsyncCancel, kCancel)
	s.fd = -1
	s.addr = b.ud(f, kind)
}

func (b *uringBackend) apply(s *Sub) {
	switch s.Op {
	case OpBufReturn:
		if s.Arg&DgramBufBit != 0 {
			b.dgramBufReturn(s.Arg)
			return
		}
		if s.Arg&RecordBufBit != 0 {
			b.recs.put(s.Arg)
			return
		}
		if s.Ptr != 0 && !(b.pbuf.isOut(s.Arg) && b.pool.lend(s.Arg, s.Ptr, s.Len)) {
			// A lend Go cannot take: C may have handed the buffer's old
			// memory to the program, so the buffer leaves circulation
			// rather than be received into again.
			return
		}
		if b.pbuf.give(s.Arg) && len(b.starved) > 0 {
			st := b.starved
			b.starved = nil
			for _, f := range st {
				if f.recv == reqStarved {
					f.recv = reqNone
				}
				if b.slots[f.slot] == f {
					b.armRecv(f)
				}
			}
		}
		return
	case OpNop:
		return
	}
	if s.Op >= opCount {
		return
	}
	if s.Op == OpClose && s.Arg&CloseUpgrade != 0 {
		if f := b.fds[s.Fd]; f == nil || f.closing() || !f.out.upgradable(s.Token) {
			return
		}
	}
	if isSockOp(s.Op) && b.fds[s.Fd] == nil {
		// Tried at once, as asyncio's sock_recv/sock_sendall call the
		// socket first; only an op the socket cannot serve now gets state
		// and a readiness poll.
		o, done := tryFresh(s, b.complete)
		if done {
			return
		}
		f := b.state(s.Fd)
		opsOf(&f.sk).adopt(s.Op, o)
		b.sockWait(f, sockSends(s.Op))
		return
	}
	f := b.state(s.Fd)
	if f.closing() {
		b.refuse(s)
		return
	}
	if (s.Op == OpRecvStart || s.Op == OpSend) && s.Arg&ArgNotSock != 0 {
		f.notSock = true
	}
	switch s.Op {
	case OpRecvStart:
		f.recvOnce = s.Arg&ArgOnce != 0
		f.kt.rec.takeOver(s.Token, &b.recs, b.complete)
		b.sockUnwait(f, &f.recP, f.recIdx, kRecordPoll)
		f.recvTok, f.recvOn = s.Token, true
		for _, c := range f.held {
			c.Token = f.recvTok
			b.complete(c)
			if c.Res <= 0 {
				f.recvOn = false
			} else {
				b.heldChunks--
			}
		}
		f.held = nil
		if f.recvOn && f.kt.softEnded(s.Token, b.complete) {
			f.recvOn = false
		}
		b.armRecv(f)
	case OpRecvRecord:
		if f.recvOn || f.kt.rec.live || f.kt.soft != nil { // a soft fd's records are Go's to read
			b.complete(Comp{Token: s.Token, Kind: EvRecv, Res: -int32(unix.EBUSY)})
			break
		}
		f.kt.rec.live, f.kt.rec.token = true, s.Token
		b.heldToRecord(f)
		b.recordPump(f)
	case OpRecvStop:
		f.recvOn = false
		if f.kt.rec.live {
			f.kt.rec.live = false
			b.sockUnwait(f, &f.recP, f.recIdx, kRecordPoll)
		}
		if f.recv == reqArmed {
			if b.unarm(f, f.recvIdx) {
				f.recv = reqNone
			} else {
				b.cancel(f, f.recvKind)
				f.recv = reqCancelling
			}
		}
	case OpAcceptStart:
		f.accTok, f.accOn, f.accLocal = s.Token, true, accLocalUnknown
		b.armAccept(f)
	case OpAcceptStop:
		f.accOn = false
		if f.acc == reqArmed {
			if b.unarm(f, f.accIdx) {
				f.acc = reqNone
			} else {
				b.cancel(f, kAcceptPoll)
				f.acc = reqCancelling
			}
		}
	case OpPollStart, OpPollStop:
		f.pollMask = 0
		if s.Op == OpPollStart {
			f.pollTok, f.pollMask = s.Token, s.Arg&(PollIn|PollOut)
		}
		if !f.poll.inKernel() {
			b.armPoll(f)
		} else if f.pollArmedMask != f.pollMask && f.poll == reqArmed {
			// The CQE of the removed poll re-arms with the new mask.
			r := b.fdSQE(f, iouOpPollRemove, kPollRemove)
			r.fd = -1
			r.addr = b.ud(f, kPoll)
			f.poll = reqCancelling
		}
	case OpConnect:
		f.connOn, f.connTok, f.connPtr, f.connLen = true, s.Token, s.Ptr, s.Len
		b.armConnect(f)
	case OpConnectStop:
		if f.connOn && f.connTok == s.Token {
			f.connOn = false
			b.complete(Comp{Token: s.Token, Kind: EvConnect, Res: -int32(unix.ECANCELED)})
			if f.conn == reqArmed {
				b.cancel(f, kConnect)
				f.conn = reqCancelling
			}
		}
	case OpDgramRecvStart:
		b.dgramRecvStart(f, s)
	case OpSockRecv, OpSockSend, OpSockAccept, OpSockRecvFrom, OpSockSendTo, OpSockSendfile:
		opsOf(&f.sk).start(s, b.complete)
		b.sockPump(f, sockSends(s.Op))
	case OpSockStop:
		switch f.sk.stop(s.Token, b.complete) {
		case OpSockRecv:
			b.sockUnwait(f, &f.skRecvP, f.skRecvIdx, kSockRecvPoll)
		case OpSockSend:
			b.sockUnwait(f, &f.skSendP, f.skSendIdx, kSockSendPoll)
		}
	case OpSend, OpSendTo, OpShutdown, OpSendfile, OpKTLS:
		f.out = append(f.out, queuedOf(s))
		b.pumpLater(f)
	case OpClose:
		if s.Arg&CloseAbort != 0 {
			b.startClose(f, s.Token, true)
		} else {
			f.out = append(f.out, queued{op: OpClose, token: s.Token})
			b.pumpLater(f)
		}
	}
	b.settle(f)
}

// unarm takes back an arming SQE the kernel has not seen yet (a start and
// a stop in one batch), turning it into a NOP whose CQE means nothing.
// Cancelling it after submission instead would let a multishot recv take
// data that is already waiting, which C asked not to read.
func (b *uringBackend) unarm(f *urFd, idx uint32) bool {
	if int32(idx-atomic.LoadUint32(b.r.sqHead)) < 0 {
		return false
	}
	s := b.r.sqeAt(idx)
	*s = uringSQE{opcode: iouOpNop, fd: -1, userData: b.ud(f, kCancel)}
	return true
}

// armConnect starts the connect C wants, unless a stopped one is still in
// the kernel: its CQE must not be taken for the new one's.
func (b *uringBackend) armConnect(f *urFd) {
	if !f.connOn || f.conn != reqNone {
		return
	}
	c := b.fdSQE(f, iouOpConnect, kConnect)
	c.addr = uint64(f.connPtr) // the kernel copies the sockaddr at submission
	c.off = uint64(f.connLen)
	f.conn = reqArmed
}

func (b *uringBackend) onConnect(f *urFd, c *uringCQE) {
	stopped := f.conn == reqCancelling
	f.conn = reqNone
	if stopped {
		b.armConnect(f) // one asked for since the stop, if any
		return
	}
	if f.connOn {
		f.connOn = false
		done := Comp{Token: f.connTok, Kind: EvConnect, Res: c.res}
		connectedAddrs(&done, f.fd, &b.accSc)
		b.complete(done)
	}
}

// refuse answers an operation on an fd that is being closed, as the
// syscalls would on a closed fd. A second OpClose gets nothing: the close
// under way reports EvClosed, and only once.
func (b *uringBackend) refuse(s *Sub) {
	kind := map[uint8]uint8{OpSend: EvSend, OpShutdown: EvShutdown, OpConnect: EvConnect, OpSockRecv: EvSock, OpSockSend: EvSock, OpSockAccept: EvSock,
		OpSockRecvFrom: EvSock, OpSockSendTo: EvSock, OpSockSendfile: EvSock,
		OpRecvStart: EvRecv, OpAcceptStart: EvAccept, OpPollStart: EvPoll,
		OpSendTo: EvSend, OpDgramRecvStart: EvDgram, OpSendfile: EvSendfile,
		OpRecvRecord: EvRecv, OpKTLS: EvKTLS}[s.Op]
	if kind != EvNone {
		b.complete(Comp{Token: s.Token, Kind: kind, Res: -int32(unix.EBADF)})
	}
}

func (b *uringBackend) armRecv(f *urFd) {
	if f.dgram {
		b.armRecvMsg(f)
		return
	}
	if !f.recvOn || f.recv != reqNone || f.closing() {
		return
	}
	if f.kt.soft != nil {
		// Soft TLS reads in Go on readiness (softtls.go): no buffer from
		// the ring, and a stopped receive leaves the bytes in the socket.
		f.recvIdx = b.r.sqLocal
		s := b.fdSQE(f, iouOpPollAdd, kRecvPoll)
		s.opFlags = PollIn
		f.recvKind, f.recv = kRecvPoll, reqArmed
		return
	}
	if !b.pbuf.available() {
		// A recv armed now would end at once with ENOBUFS.
		b.pbuf.starved()
		f.recv = reqStarved
		b.starved = append(b.starved, f)
		b.releaseHeld()
		return
	}
	f.recvIdx = b.r.sqLocal
	f.recvMulti = false
	switch {
	case f.notSock && b.readMulti && !f.noMulti:
		// addr and len 0: each chunk takes a whole ring buffer.
		s := b.fdSQE(f, iouOpReadMulti, kRecv)
		s.flags = iosqeBufferSelect
		s.bufIndex = pbufGroup
		s.off = ^uint64(0)
		f.recvKind, f.recvMulti = kRecv, true
	case !f.notSock:
		s := b.fdSQE(f, iouOpRecv, kRecv)
		if !f.recvOnce {
			s.ioprio = iouRecvMultishot
		}
		s.flags = iosqeBufferSelect
		s.bufIndex = pbufGroup
		f.recvKind = kRecv
	case f.recvRead:
		s := b.fdSQE(f, iouOpRead, kRecv)
		s.flags = iosqeBufferSelect
		s.bufIndex = pbufGroup
		s.off = ^uint64(0) // the file's own position (pipes have none)
		f.recvKind = kRecv
	default:
		s := b.fdSQE(f, iouOpPollAdd, kRecvPoll)
		s.opFlags = PollIn
		f.recvKind = kRecvPoll
	}
	f.recv = reqArmed
}

// releaseHeld hands C the chunks paused fds hold, when the pool has run
// dry: otherwise enough paused connections could keep every buffer and
// starve the active ones for good. The contract lets chunks arrive after
// OpRecvStop (C holds them); an end of stream stays held, after them.
func (b *uringBackend) releaseHeld() {
	if b.heldChunks == 0 {
		return
	}
	b.heldChunks = 0
	for _, f := range b.fds {
		if len(f.held) == 0 {
			continue
		}
		keep := f.held[:0]
		for _, c := range f.held {
			switch {
			case c.Res > 0 && f.closing():
				b.pbuf.give(c.Buf) // nobody will read it
			case c.Res > 0:
				c.Token = f.recvTok
				b.complete(c)
			default:
				keep = append(keep, c)
			}
		}
		f.held = keep
	}
}

func (b *uringBackend) onRecvPoll(f *urFd, c *uringCQE) {
	f.recv = reqNone
	switch {
	case f.closing():
	case c.res > 0 && f.kt.soft != nil:
		if f.recvOn && f.kt.soft.recv(f.fd, &f.kt, &b.recs, f.recvTok, b.complete) {
			f.recvOn = false
		}
	case c.res > 0:
		f.recvRead = true // readable, or an error or hangup the read reports
	case c.res < 0 && c.res != -int32(unix.ECANCELED) && f.recvOn:
		b.complete(Comp{Token: f.recvTok, Kind: EvRecv, Res: c.res})
		f.recvOn = false
	}
	b.armRecv(f)
}

func (b *uringBackend) onRecv(f *urFd, c *uringCQE) {
	more := c.flags&cqeFMore != 0
	if !more {
		f.recv, f.recvRead = reqNone, false
	}
	hasBuf := c.flags&cqeFBuffer != 0
	if f.recvMulti && !more && !f.closing() {
		switch c.res {
		case -int32(unix.EAGAIN), -int32(unix.EBADFD), -int32(unix.EINVAL), -int32(unix.EOPNOTSUPP):
			// A file the multishot read does not serve (one that cannot
			// wait without blocking, a tty): poll, then read, from now on.
			f.noMulti = true
			c.res = -int32(unix.EAGAIN)
		}
	}
	if hasBuf && (f.closing() || c.res <= 0) {
		// A read may report end of file with a buffer picked: unused.
		b.pbuf.recycle(uint16(c.flags >> 16))
		hasBuf = false
	}
	switch {
	case c.res == -int32(unix.ENOTSOCK) && !f.notSock:
		f.notSock = true // a pipe or a tty: poll, then read
	case hasBuf:
		bid := uint16(c.flags >> 16)
		b.pbuf.taken(bid)
		ch := Comp{Token: f.recvTok, Kind: EvRecv, Res: c.res, Ptr: b.pool.addr(uint32(bid)), Buf: uint32(bid),
			Flags: FlagMore, Aux: uint32(b.pool.size)}
		switch {
		case f.recvOn:
			b.complete(ch)
		case f.kt.rec.live:
			// Reading again, through OpRecvRecord: the stopped receive's
			// late chunk goes first (FlagMore tells it from the answer).
			ch.Token = f.kt.rec.token
			b.complete(ch)
		default:
			f.held = append(f.held, ch)
			b.heldChunks++
		}
	case f.closing():
	case c.res == -int32(unix.ENOBUFS), c.res == -int32(unix.ECANCELED),
		c.res == -int32(unix.EINTR), c.res == -int32(unix.EAGAIN):
		// Ours to handle: the re-arm below (or starving until buffers
		// come back) is all C would have wanted.
		if c.res == -int32(unix.ENOBUFS) {
			b.pbuf.starved()
		}
	case c.res == 0 && f.recvOn && f.sending:
		f.recvOn, f.eofHeld = false, true
		b.eofHeld = append(b.eofHeld, f)
	case c.res == -int32(unix.EIO) && f.recvOn && !f.notSock && b.ktlsEIO(f):
		// Kernel TLS RX met a record that is not data: read and judged
		// (recvrecord.go); the re-arm below goes on unless it ended.
	case c.res == -int32(unix.EIO) && !f.recvOn && !f.notSock && (f.kt.rx || ktlsULP(f.fd)):
		// The same, met by a receive C stopped (paused reading): the
		// record stays in the socket, and the next receive meets it. Held
		// as an end, it would reach C as a read error.
	default:
		// End of stream or an error: receiving is over.
		end := Comp{Token: f.recvTok, Kind: EvRecv, Res: c.res}
		switch {
		case f.recvOn:
			b.complete(end)
			f.recvOn = false
		case f.kt.rec.live:
			f.kt.rec.fail(c.res, &b.recs, b.complete) // the record read's answer: nothing more comes
		default:
			f.held = append(f.held, end)
		}
	}
	if !more {
		b.armRecv(f)
		b.recordPump(f) // one waiting for this stopped receive to leave the kernel
	}
}

func (b *uringBackend) armAccept(f *urFd) {
	if !f.accOn || f.acc != reqNone || f.closing() {
		return
	}
	f.accIdx = b.r.sqLocal
	s := b.fdSQE(f, iouOpPollAdd, kAcceptPoll)
	s.opFlags = PollIn
	f.acc = reqArmed
}

// onAcceptPoll: the listener is readable (or the wait ended). Connections
// are accepted only while C wants them: a stopped listener leaves them in
// the kernel's backlog, as asyncio's does.
func (b *uringBackend) onAcceptPoll(f *urFd, c *uringCQE) {
	f.acc = reqNone
	if f.closing() || !f.accOn {
		return
	}
	if c.res < 0 && c.res != -int32(unix.ECANCELED) && c.res != -int32(unix.EINTR) {
		f.accOn = false
		b.complete(Comp{Token: f.accTok, Kind: EvAccept, Res: c.res})
		return
	}
	if c.res > 0 && !acceptSome(f.fd, f.accTok, &f.accLocal, &b.accSc, b.complete) {
		f.accOn = false
		return
	}
	b.armAccept(f)
}

func (b *uringBackend) armPoll(f *urFd) {
	if f.pollMask == 0 || f.poll != reqNone || f.closing() {
		return
	}
	s := b.fdSQE(f, iouOpPollAdd, kPoll)
	s.opFlags = f.pollMask // poll32_events: one-shot, level
	f.poll, f.pollArmedMask = reqArmed, f.pollMask
}

// armPolls re-arms the polls delivered by the previous call. Re-arming
// them at once would complete them again at once (level triggered), so
// they wait for the next call: one EvPoll per Poll call while ready.
func (b *uringBackend) armPolls() {
	for _, f := range b.rearm {
		if f.poll == reqQueued {
			f.poll = reqNone
		}
		if b.slots[f.slot] == f {
			b.armPoll(f)
		}
	}
	b.rearm = b.rearm[:0]
}

func (b *uringBackend) onPoll(f *urFd, c *uringCQE) {
	f.poll = reqNone
	if f.closing() || f.pollMask == 0 {
		return
	}
	if c.res > 0 {
		mask := uint32(c.res) & (PollIn | PollOut | PollErr | PollHup) & (f.pollMask | PollErr | PollHup)
		if mask != 0 {
			b.complete(Comp{Token: f.pollTok, Kind: EvPoll, Aux: mask, Flags: FlagMore})
			f.poll = reqQueued
			b.rearm = append(b.rearm, f)
			return
		}
	} else if c.res < 0 && c.res != -int32(unix.ECANCELED) {
		b.complete(Comp{Token: f.pollTok, Kind: EvPoll, Res: c.res})
		f.pollMask = 0
		return
	}
	b.armPoll(f)
}

// pumpLater pumps f once the whole batch is applied, so that the sends
// one iteration queued on an fd leave together in one sendmsg.
func (b *uringBackend) pumpLater(f *urFd) {
	if !f.pumpDue {
		f.pumpDue = true
		b.pumps = append(b.pumps, f)
	}
}

// pumpDue runs the pumps pumpLater put off.
func (b *uringBackend) pumpDue() {
	for _, f := range b.pumps {
		f.pumpDue = false
		if b.slots[f.slot] == f {
			b.pump(f)
			b.settle(f)
		}
	}
	b.pumps = b.pumps[:0]
}

// pump works through f's output queue: one send in the kernel at a time
// keeps the bytes in order; shutdown and a graceful close wait their turn.
func (b *uringBackend) pump(f *urFd) {
	for len(f.out) > 0 && !f.sending && !f.closing() {
		q := &f.out[0]
		if f.kt.soft != nil && (q.op == OpSend || q.op == OpSendfile) {
			if !b.softSend(f) {
				return
			}
			continue
		}
		switch q.op {
		case OpSend:
			if q.rectype != 0 {
				if !b.sendNow(f, q, sendRecordSome) {
					return
				}
				break
			}
			if q.off < q.n {
				b.submitSend(f, q)
				return
			}
			b.complete(Comp{Token: q.token, Kind: EvSend, Res: int32(q.n)})
		case OpSendTo:
			if !b.sendNow(f, q, sendDgram) {
				return // the socket is full: wait for POLLOUT
			}
		case OpSendfile:
			if !b.sendNow(f, q, sendfileSome) {
				return
			}
		case OpShutdown:
			b.complete(Comp{Token: q.token, Kind: EvShutdown, Res: shutdownWrite(f.fd)})
		case OpKTLS:
			b.complete(f.kt.run(f.fd, q.token, q.ptr, &b.recs))
		case OpClose:
			tok := q.token
			f.out.pop()
			b.startClose(f, tok, false)
			return
		}
		f.out.pop()
	}
}

// softSend does a soft TLS fd's sends at the head of the queue (sealed
// into records and written by Go, softtls.go), then waits for writability
// with a poll in the kernel if the socket is full; false: waiting.
// OpSendfile answers -EOPNOTSUPP: the file's bytes would need sealing.
func (b *uringBackend) softSend(f *urFd) bool {
	if q := &f.out[0]; q.op == OpSendfile {
		b.complete(q.result(-int32(unix.EOPNOTSUPP)))
		f.out.pop()
		return true
	}
	n, blocked := f.kt.soft.send(f.fd, f.out, b.complete)
	f.out.drop(n)
	if blocked {
		p := b.fdSQE(f, iouOpPollAdd, kSendPoll)
		p.opFlags = PollOut
		f.sending = true
		return false
	}
	return true
}

// ktlsEIO handles a receive's EIO on a kernel-TLS socket; false: not one.
func (b *uringBackend) ktlsEIO(f *urFd) bool {
	handled, over := ktlsRecvEIO(f.fd, &f.kt, &b.recs, f.recvTok, b.complete)
	if handled && over {
		f.recvOn = false
	}
	return handled
}

// heldToRecord hands what a stopped receive took after its stop to a new
// OpRecvRecord, before it reads: the chunks as late chunks (FlagMore), and
// an end of stream or error as the record read's answer.
func (b *uringBackend) heldToRecord(f *urFd) {
	for _, c := range f.held {
		if c.Res > 0 {
			c.Token = f.kt.rec.token
			b.complete(c)
			b.heldChunks--
		} else if f.kt.rec.live {
			f.kt.rec.fail(c.Res, &b.recs, b.complete)
		}
	}
	f.held = nil
}

// recordPump reads the live OpRecvRecord as far as the socket allows, and
// waits for readability with a POLL_ADD when it must. While a stopped
// receive is still in the kernel it reads nothing: that receive may still
// take bytes (delivered as late chunks), and the record starts after them.
func (b *uringBackend) recordPump(f *urFd) {
	if !f.kt.rec.live || f.closing() || f.recv.inKernel() || f.kt.rec.pump(f.fd, &b.recs, b.complete) {
		return
	}
	if f.recP == reqNone {
		f.recIdx = b.r.sqLocal
		p := b.fdSQE(f, iouOpPollAdd, kRecordPoll)
		p.opFlags = PollIn
		f.recP = reqArmed
	}
}

func (b *uringBackend) onRecordPoll(f *urFd, c *uringCQE) {
	f.recP = reqNone
	if c.res < 0 && c.res != -int32(unix.ECANCELED) && c.res != -int32(unix.EINTR) && f.kt.rec.live && !f.closing() {
		f.kt.rec.fail(c.res, &b.recs, b.complete)
		return
	}
	b.recordPump(f)
}

// maxGather bounds how many queued sends one sendmsg carries.
const maxGather = 64

// sendGather is the iovec and msghdr of one gathered sendmsg.
type sendGather struct {
	iov [2 * maxGather]uint64
	msg [7]uint64
}

// takeGather lends a sendGather until its send's CQE (onSend gives it
// back); at most one per fd sending, so the free list stays as long as the
// most fds that ever sent gathered at once.
func (b *uringBackend) takeGather() *sendGather {
	if n := len(b.gathers); n > 0 {
		g := b.gathers[n-1]
		b.gathers = b.gathers[:n-1]
		return g
	}
	return new(sendGather)
}

// sendNow does the I/O of the queue's head that the kernel's ring does not
// (some: a sendfile(2), a datagram's sendto, a record-typed sendmsg) while
// the socket takes it, then waits for writability with a poll in the kernel
// (the head stays "sending", so later entries keep their place). It reports
// whether the entry is finished (and completed).
func (b *uringBackend) sendNow(f *urFd, q *queued, some func(int32, *queued) (bool, unix.Errno)) bool {
	done, e := some(f.fd, q)
	if !done {
		p := b.fdSQE(f, iouOpPollAdd, kSendPoll)
		p.opFlags = PollOut
		f.sending = true
		return false
	}
	res := int32(q.n)
	if q.op == OpSendfile {
		res = int32(q.off) // less than asked at the end of the file
	}
	if e != 0 {
		res = -int32(e)
	}
	b.complete(q.result(res))
	return true
}

func (b *uringBackend) submitSend(f *urFd, q *queued) {
	if q.op == OpSendTo {
		b.pump(f) // writable again (onSendPoll): send the datagrams now
		return
	}
	if f.notSock {
		s := b.fdSQE(f, iouOpWrite, kSend)
		s.addr = uint64(q.ptr + uintptr(q.off))
		s.len = uint32(q.n - q.off)
		s.off = ^uint64(0) // the file's own position (pipes have none)
		f.sending = true
		return
	}
	// q is the head, an OpSend: at least it goes. One send needs no iovec.
	var s *uringSQE
	if len(f.out) == 1 || !gatherable(&f.out[1]) {
		s = b.fdSQE(f, iouOpSend, kSend)
		s.addr = uint64(q.ptr + uintptr(q.off))
		s.len = uint32(q.n - q.off)
	} else {
		g := b.takeGather()
		f.gather = g
		n := gatherSends(f.out, &g.iov)
		// struct msghdr: name, namelen, iov, iovlen, control, controllen, flags
		g.msg = [7]uint64{2: uint64(uintptr(unsafe.Pointer(&g.iov[0]))), 3: uint64(n)}
		s = b.fdSQE(f, iouOpSendmsg, kSend)
		s.addr = uint64(uintptr(unsafe.Pointer(&g.msg[0])))
		s.len = 1
	}
	// MSG_NOSIGNAL: a vanished peer is EPIPE, never SIGPIPE.
	// MSG_WAITALL: the kernel itself retries a short send.
	s.opFlags = unix.MSG_NOSIGNAL | unix.MSG_WAITALL
	if f.noWaitAll || f.kt.tx {
		s.opFlags = unix.MSG_NOSIGNAL
	}
	f.sending = true
}

// sent completes the queued sends n bytes cover, in order, and advances
// the one they end in.
func (b *uringBackend) sent(f *urFd, n int) {
	done := 0
	for n > 0 && done < len(f.out) && gatherable(&f.out[done]) {
		q := &f.out[done]
		if k := q.n - q.off; n < k {
			q.off += n
			break
		} else {
			n -= k
		}
		b.complete(Comp{Token: q.token, Kind: EvSend, Res: int32(q.n)})
		done++
	}
	f.out.drop(done)
}

func (b *uringBackend) onSend(f *urFd, c *uringCQE) {
	f.sending = false
	if f.gather != nil { // the kernel is done reading it
		b.gathers = append(b.gathers, f.gather)
		f.gather = nil
	}
	if f.eofHeld && (c.res == -int32(unix.EPIPE) || c.res == -int32(unix.ECONNRESET)) && !f.closing() {
		f.eofHeld = false
		b.complete(Comp{Token: f.recvTok, Kind: EvRecv, Res: -int32(unix.ECONNRESET)})
	}
	if len(f.out) == 0 {
		return
	}
	res := c.res
	if res > 0 {
		b.sent(f, int(res)) // whatever went out whole is done, abort or not
	}
	if f.aborting {
		f.out.cancel(b.complete)
		return
	}
	switch {
	case res >= 0:
		// Done, or a short send: pump sends the rest.
	case res == -int32(unix.ENOTSOCK) && !f.notSock:
		f.notSock = true
		b.submitSend(f, &f.out[0])
		return
	case res == -int32(unix.EAGAIN) && f.notSock:
		// A full O_NONBLOCK pipe: wait until it drains, then write on.
		p := b.fdSQE(f, iouOpPollAdd, kSendPoll)
		p.opFlags = PollOut
		f.sending = true
		return
	case res == -int32(unix.EINTR), res == -int32(unix.EAGAIN):
		b.submitSend(f, &f.out[0])
		return
	case res == -int32(unix.EOPNOTSUPP) && !f.noWaitAll && !f.notSock:
		// Kernel TLS TX (installed by OpKTLS before this fd's state was
		// made again, or by someone else): no MSG_WAITALL.
		f.noWaitAll = true
		b.submitSend(f, &f.out[0])
		return
	default:
		b.complete(Comp{Token: f.out[0].token, Kind: EvSend, Res: res})
		f.out.pop()
	}
	b.pump(f)
}

func (b *uringBackend) onSendPoll(f *urFd, c *uringCQE) {
	f.sending = false
	if len(f.out) == 0 {
		return
	}
	q := &f.out[0]
	switch {
	case f.aborting:
		b.complete(q.result(-int32(unix.ECANCELED)))
		f.out.pop()
		f.out.cancel(b.complete)
	case c.res < 0:
		if f.kt.soft != nil {
			f.kt.soft.failTX(unix.Errno(-c.res)) // the sends sealed end with the error, in pump
			b.pump(f)
			return
		}
		b.complete(q.result(c.res))
		f.out.pop()
		b.pump(f)
	default:
		b.pump(f) // the head goes on as its kind does: send, sendto or sendfile
	}
}

// startClose cancels everything on f; finishClose closes the fd once the
// last cancelled CQE is back, so EvClosed is the fd's last completion.
func (b *uringBackend) startClose(f *urFd, token uint64, abort bool) {
	f.state, f.closeTok = fdClosing, token
	f.recvOn, f.accOn, f.pollMask = false, false, 0
	f.kt.rec.live = false
	f.sk.fail(-int32(unix.ECANCELED), b.complete)
	f.aborting = abort
	if !f.sending {
		f.out.cancel(b.complete)
	} // else the in-flight send's CQE ends the queue, in order
	if f.inflight > 0 {
		s := b.fdSQE(f, iouOpAsyncCancel, kCancel)
		s.opFlags = iouCancelFd | iouCancelAll
	}
}

func (b *uringBackend) finishClose(f *urFd) {
	f.state = fdClosed
	f.dropHeld(b)
	f.kt.rec.drop(&b.recs) // no answer after a close, as for OpRecvStart
	f.kt.freeSoft()
	var res int32
	if err := unix.Close(int(f.fd)); err != nil {
		res = errnoOf(err)
	}
	b.complete(Comp{Token: f.closeTok, Kind: EvClosed, Res: res})
	b.forget(f)
}

// releaseEOFs hands C the ends of stream held in this call whose send did
// not turn out to be a reset (see eofHeld).
func (b *uringBackend) releaseEOFs() {
	for _, f := range b.eofHeld {
		if f.eofHeld && b.slots[f.slot] == f && !f.closing() {
			b.complete(Comp{Token: f.recvTok, Kind: EvRecv})
		}
		f.eofHeld = false
	}
	b.eofHeld = b.eofHeld[:0]
}

// dropHeld gives back what was received for C but will never reach it.
func (f *urFd) dropHeld(b *uringBackend) {
	for _, c := range f.held {
		if c.Res > 0 && b.pbuf != nil {
			b.pbuf.give(c.Buf)
			b.heldChunks--
		}
	}
	f.held = nil
}

// sockPump does the live sock op's I/O now if the socket allows it (as
// asyncio's sock_recv/sock_sendall call the socket first), else waits for
// readiness with a one-shot POLL_ADD. A poll still in the kernel (one being
// cancelled, for a stopped op) is waited for: its CQE pumps again.
func (b *uringBackend) sockPump(f *urFd, send bool) {
	if f.sk == nil {
		return
	}
	o := &f.sk.recv
	if send {
		o = &f.sk.send
	}
	if o.live && !f.closing() && !o.try(f.fd, b.complete) {
		b.sockWait(f, send)
	}
}

// sockWait arms the readiness poll of f's live op, unless one is in the
// kernel already.
func (b *uringBackend) sockWait(f *urFd, send bool) {
	st, idx, kind, mask := &f.skRecvP, &f.skRecvIdx, kSockRecvPoll, PollIn
	if send {
		st, idx, kind, mask = &f.skSendP, &f.skSendIdx, kSockSendPoll, PollOut
	}
	if *st != reqNone {
		return
	}
	*idx = b.r.sqLocal
	p := b.fdSQE(f, iouOpPollAdd, kind)
	p.opFlags = mask
	*st = reqArmed
}

// sockUnwait takes back the poll of a stopped sock op: the poll holds a
// reference to the file, and the owner may close the socket now.
func (b *uringBackend) sockUnwait(f *urFd, st *armState, idx uint32, kind uint8) {
	if *st != reqArmed {
		return
	}
	if b.unarm(f, idx) {
		*st = reqNone
		return
	}
	b.cancel(f, kind)
	*st = reqCancelling
}

// onSockPoll: the socket is ready (or the poll ended). Only a live op
// does I/O; a stopped one has been answered already.
func (b *uringBackend) onSockPoll(f *urFd, c *uringCQE, send bool) {
	if send {
		f.skSendP = reqNone
	} else {
		f.skRecvP = reqNone
	}
	b.sockPump(f, send)
}

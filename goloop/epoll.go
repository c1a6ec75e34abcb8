package goloop

import (
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// epollBackend is the readiness-based backend: it performs the operations
// itself when epoll says an fd is ready, and reports them with the same
// completion records io_uring produces. Level-triggered, like libuv and
// Go's own poller before edge mode: an fd keeps reporting while its work
// is not done, so nothing is lost when a Poll call returns early.
type epollBackend struct {
	epfd    int
	accSc   acceptScratch // accept4's sockaddrs (acceptSome)
	wk      waker
	pool    *bufPool
	fds     map[int32]*epFd
	ready   []Comp
	events  []unix.EpollEvent
	dirty   []*epFd
	starved []*epFd
	dg      *bufPool // datagram buffers (dgram_epoll.go), made on first use
	recs    recPool  // record buffers (recvrecord.go), made on first use
}

type epFd struct {
	fd         int32
	registered uint32 // mask epoll knows, 0: not added
	isDirty    bool
	notSock    bool
	state      closeState // epoll closes at once: fdOpen or fdClosed

	recvOn   bool
	starved  bool
	recvTok  uint64
	acceptOn bool
	accTok   uint64
	accLocal uint64 // the listener's own address for EvAccept (acceptAddrs)
	pollMask uint32
	pollTok  uint64
	connTok  uint64
	connOn   bool
	connPtr  uintptr // the sockaddr C holds until our EvConnect
	connLen  uint32
	dgram    bool     // the receive is a datagram receive (OpDgramRecvStart)
	sk       *sockOps // sock_recv/sock_sendall on an fd its owner keeps (sockops.go), nil: none yet
	kt       ktlsFd   // OpRecvRecord, kernel TLS (recvrecord.go)

	out outQueue // sends, shutdowns and a graceful close, in order
	// blocked is set while the head of out waits for EPOLLOUT.
	blocked bool
	// flushDue: out was empty when this batch queued to it; sync flushes.
	flushDue bool
}

func newEpoll(opt Options) (Backend, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, err
	}
	pool, err := newBufPool(opt.BufSize, opt.BufCount)
	if err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, err
	}
	return &epollBackend{
		epfd: epfd, wk: waker{fd: evfd}, pool: pool,
		fds:    make(map[int32]*epFd),
		events: make([]unix.EpollEvent, 256),
	}, nil
}

func (b *epollBackend) Name() string  { return "epoll" }
func (b *epollBackend) Pending() bool { return len(b.ready) > 0 }

func (b *epollBackend) Wake() error { return b.wk.wake() }

func (b *epollBackend) WakeFd() int { return b.wk.fd }

func (b *epollBackend) Close() error {
	for fd, f := range b.fds {
		if f.state == fdOpen {
			unix.EpollCtl(b.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
		}
		f.kt.freeSoft()
	}
	b.fds = nil
	b.wk.close()
	b.pool.close()
	b.recs.close()
	b.dgramClose()
	return unix.Close(b.epfd)
}

func (b *epollBackend) state(fd int32) *epFd {
	f := b.fds[fd]
	if f == nil {
		f = &epFd{fd: fd}
		b.fds[fd] = f
	}
	return f
}

func (b *epollBackend) complete(c Comp) { b.ready = append(b.ready, c) }

func (b *epollBackend) markDirty(f *epFd) {
	if !f.isDirty {
		f.isDirty = true
		b.dirty = append(b.dirty, f)
	}
}

func (b *epollBackend) Poll(subs []Sub, out []Comp, timeout time.Duration) (int, error) {
	for i := range subs {
		b.apply(&subs[i])
	}
	b.sync()
	if timeout == ApplyOnly {
		return b.take(out), nil
	}
	if len(b.ready) > 0 {
		timeout = 0
	}
	ms := -1
	if timeout >= 0 {
		// Round up: a timer must never fire early.
		ms = int((timeout + time.Millisecond - 1) / time.Millisecond)
	}
	n, err := b.wait(ms)
	if err != nil && err != unix.EINTR {
		return 0, err
	}
	for i := 0; i < n; i++ {
		b.handle(&b.events[i])
	}
	b.sync()
	return b.take(out), nil
}

// take moves queued completions into out.
func (b *epollBackend) take(out []Comp) int {
	k := copy(out, b.ready)
	rest := copy(b.ready, b.ready[k:])
	b.ready = b.ready[:rest]
	return k
}

// wait waits for events with Go's preemption signal blocked (see
// waitSigmask): otherwise SIGURG ends timed waits early with EINTR, and
// asyncio's timers would be checked before they are due. A timed wait
// goes through ppoll on the epoll fd: epoll_wait fails with EINTR on mere
// task work (an io_uring ring torn down in the process interrupts every
// thread that used it), while ppoll restarts by itself unless a signal
// handler really ran, and only then must the wait end early.
func (b *epollBackend) wait(ms int) (int, error) {
	if ms == 0 {
		return unix.EpollWait(b.epfd, b.events, 0)
	}
	var mask unix.Sigset_t
	waitSigmask(&mask)
	if ms > 0 {
		ts := unix.NsecToTimespec(int64(ms) * int64(time.Millisecond))
		fds := []unix.PollFd{{Fd: int32(b.epfd), Events: unix.POLLIN}}
		n, _, e := unix.Syscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&fds[0])), 1,
			uintptr(unsafe.Pointer(&ts)), uintptr(unsafe.Pointer(&mask)), sigsetSize, 0)
		if e != 0 || n == 0 {
			if e != 0 {
				return 0, e
			}
			return 0, nil
		}
		return unix.EpollWait(b.epfd, b.events, 0)
	}
	n, _, e := unix.Syscall6(unix.SYS_EPOLL_PWAIT, uintptr(b.epfd), uintptr(unsafe.Pointer(&b.events[0])),
		uintptr(len(b.events)), uintptr(ms), uintptr(unsafe.Pointer(&mask)), sigsetSize)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func (b *epollBackend) apply(s *Sub) {
	if s.Op == OpBufReturn {
		if s.Arg&DgramBufBit == 0 && s.Arg&RecordBufBit != 0 {
			b.recs.put(s.Arg)
			return
		}
		if !b.dgramBufReturn(s.Arg) {
			if s.Ptr != 0 && !b.pool.lend(s.Arg, s.Ptr, s.Len) {
				return // refused: out of circulation (see the io_uring backend)
			}
			b.pool.put(s.Arg)
		}
		for _, f := range b.starved {
			f.starved = false
			b.markDirty(f)
		}
		b.starved = b.starved[:0]
		return
	}
	if s.Op == OpClose && s.Arg&CloseUpgrade != 0 {
		if f := b.fds[s.Fd]; f == nil || !f.out.upgradable(s.Token) {
			return
		}
	}
	if isSockOp(s.Op) && b.fds[s.Fd] == nil {
		// Tried at once, as asyncio's sock_recv/sock_sendall call the
		// socket first; only an op the socket cannot serve now waits.
		o, done := tryFresh(s, b.complete)
		if done {
			return
		}
		f := b.state(s.Fd)
		opsOf(&f.sk).adopt(s.Op, o)
		b.markDirty(f)
		return
	}
	f := b.state(s.Fd)
	if (s.Op == OpRecvStart || s.Op == OpSend) && s.Arg&ArgNotSock != 0 {
		f.notSock = true
	}
	switch s.Op {
	case OpRecvStart:
		f.kt.rec.takeOver(s.Token, &b.recs, b.complete)
		f.recvOn, f.recvTok = !f.kt.softEnded(s.Token, b.complete), s.Token
	case OpRecvRecord:
		if f.recvOn || f.kt.rec.live || f.kt.soft != nil { // a soft fd's records are Go's to read
			b.complete(Comp{Token: s.Token, Kind: EvRecv, Res: -int32(unix.EBUSY)})
			break
		}
		f.kt.rec.live, f.kt.rec.token = true, s.Token
		if f.kt.rec.pump(f.fd, &b.recs, b.complete) {
			b.forgetIfIdle(f)
		}
	case OpDgramRecvStart:
		b.dgramRecvStart(f, s)
	case OpRecvStop:
		f.recvOn = false
		f.kt.rec.live = false
		b.forgetIfIdle(f)
	case OpAcceptStart:
		f.acceptOn, f.accTok, f.accLocal = true, s.Token, accLocalUnknown
	case OpAcceptStop:
		f.acceptOn = false
		b.forgetIfIdle(f)
	case OpPollStart:
		f.pollMask, f.pollTok = s.Arg&(PollIn|PollOut), s.Token
	case OpPollStop:
		f.pollMask = 0
		b.forgetIfIdle(f)
	case OpConnect:
		switch e := connectRaw(f.fd, s.Ptr, s.Len); e {
		case 0:
			c := Comp{Token: s.Token, Kind: EvConnect}
			connectedAddrs(&c, f.fd, &b.accSc)
			b.complete(c)
		case unix.EINPROGRESS, unix.EAGAIN:
			f.connOn, f.connTok = true, s.Token
			f.connPtr, f.connLen = s.Ptr, s.Len
		default:
			b.complete(Comp{Token: s.Token, Kind: EvConnect, Res: -int32(e)})
		}
	case OpConnectStop:
		if f.connOn && f.connTok == s.Token {
			f.connOn = false
			b.complete(Comp{Token: s.Token, Kind: EvConnect, Res: -int32(unix.ECANCELED)})
		}
		b.forgetIfIdle(f)
	case OpSockRecv, OpSockSend, OpSockAccept, OpSockRecvFrom, OpSockSendTo, OpSockSendfile:
		o := opsOf(&f.sk).start(s, b.complete) // replaces a live one of its kind
		if o.try(f.fd, b.complete) {
			b.forgetIfIdle(f)
		}
	case OpSockStop:
		f.sk.stop(s.Token, b.complete)
		b.forgetIfIdle(f) // now: the owner may close the fd before the next Poll
	case OpSend, OpSendTo, OpShutdown, OpClose, OpSendfile, OpKTLS:
		if s.Op == OpClose && s.Arg&CloseAbort != 0 {
			b.abort(f)
			b.closeFd(f, s.Token)
			return
		}
		f.out.push(s)
		if len(f.out) == 1 {
			// An idle socket sends without waiting for readiness, once the
			// batch is applied (sync): what the same iteration queued
			// behind it then leaves in the same sendmsg.
			f.flushDue = true
		}
	}
	if f.state == fdOpen {
		b.markDirty(f)
	}
}

// forgetIfIdle drops an fd nothing waits on any more, at once rather than
// at the next sync: its owner (a Python socket) may close it, and the
// number may come back as a new fd, before this batch's sync runs. A stale
// registration for a closed file would otherwise hide the new one.
func (b *epollBackend) forgetIfIdle(f *epFd) {
	if len(f.out) > 0 || f.recvOn || f.acceptOn || f.pollMask != 0 || f.connOn || f.sk.live() || f.kt.rec.held() || f.kt.soft != nil {
		return
	}
	if f.registered != 0 {
		unix.EpollCtl(b.epfd, unix.EPOLL_CTL_DEL, int(f.fd), nil) // EBADF/ENOENT: already gone
	}
	f.registered = 0
	f.state = fdClosed // a pending dirty entry must not resurrect it
	delete(b.fds, f.fd)
}

// flush works through f's output queue until it blocks or empties. The
// queue keeps its array: a connection that writes once per request must
// not allocate once per request.
func (b *epollBackend) flush(f *epFd) {
	f.blocked = false
	i := 0
	defer func() {
		if f.state == fdOpen {
			n := copy(f.out, f.out[i:])
			f.out = f.out[:n]
		}
	}()
	for ; i < len(f.out); i++ {
		q := &f.out[i]
		switch q.op {
		case OpSend, OpSendTo:
			var done bool
			var e unix.Errno
			if q.op == OpSend && f.kt.soft != nil {
				// Soft TLS: sealed into records, answered as they are
				// written (softtls.go).
				n, blocked := f.kt.soft.send(f.fd, f.out[i:], b.complete)
				if i += n; blocked {
					f.blocked = true
					return
				}
				i--
				continue
			}
			if q.op == OpSend && q.rectype == 0 && !f.notSock && i+1 < len(f.out) && gatherable(&f.out[i+1]) {
				var blocked bool
				if i, blocked = b.sendGathered(f, i); blocked {
					f.blocked = true
					return
				}
				i-- // the loop's i++ lands on the first entry not sent
				continue
			}
			if q.op == OpSendTo {
				done, e = sendDgram(f.fd, q)
			} else if q.rectype != 0 {
				done, e = sendRecordSome(f.fd, q)
			} else {
				done, e = sendSome(f.fd, q, &f.notSock)
			}
			if !done {
				f.blocked = true
				return
			}
			res := int32(q.n)
			if e != 0 {
				res = -int32(e)
			}
			b.complete(Comp{Token: q.token, Kind: EvSend, Res: res})
		case OpSendfile:
			if f.kt.soft != nil {
				b.complete(q.result(-int32(unix.EOPNOTSUPP))) // the file's bytes would need sealing
				continue
			}
			done, e := sendfileSome(f.fd, q)
			if !done {
				f.blocked = true
				return
			}
			res := int32(q.off)
			if e != 0 {
				res = -int32(e)
			}
			b.complete(q.result(res))
		case OpShutdown:
			b.complete(Comp{Token: q.token, Kind: EvShutdown, Res: shutdownWrite(f.fd)})
		case OpKTLS:
			b.complete(f.kt.run(f.fd, q.token, q.ptr, &b.recs))
		case OpClose:
			tok := q.token
			f.out = f.out[i+1:]
			i = 0
			b.abort(f)
			b.closeFd(f, tok)
			return
		}
	}
}

// sendGathered sends the consecutive plain sends from out[i] on with one
// sendmsg per call (as the io_uring backend does), so writes one iteration
// made (an HTTP response's head and body) cost one syscall, not one each.
// It completes what went out whole and returns the index of the first
// entry not done; blocked: the socket is full. An error ends the entry at
// the head, as sendSome's does, and the rest go on in flush.
func (b *epollBackend) sendGathered(f *epFd, i int) (int, bool) {
	for i < len(f.out) && gatherable(&f.out[i]) {
		var iov [2 * maxGather]uint64
		n := gatherSends(f.out[i:], &iov)
		// struct msghdr: name, namelen, iov, iovlen, control, controllen, flags
		msg := [7]uint64{2: uint64(uintptr(unsafe.Pointer(&iov[0]))), 3: uint64(n)}
		r, _, e := unix.Syscall(unix.SYS_SENDMSG, uintptr(f.fd), uintptr(unsafe.Pointer(&msg[0])), unix.MSG_NOSIGNAL)
		if ft := faultAt(faultSend); ft != 0 && e == 0 {
			e, r = ft, 0 // as if nothing was sent
		}
		switch e {
		case 0:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return i, true
		case unix.ENOTSOCK:
			f.notSock = true // a pipe C did not say was one: flush writes it
			return i, false
		default:
			q := &f.out[i]
			b.complete(Comp{Token: q.token, Kind: EvSend, Res: -int32(e)})
			return i + 1, false
		}
		sent := int(r)
		for i < len(f.out) && gatherable(&f.out[i]) {
			q := &f.out[i]
			if k := q.n - q.off; sent < k {
				q.off += sent
				break
			}
			sent -= q.n - q.off
			q.off = q.n
			b.complete(Comp{Token: q.token, Kind: EvSend, Res: int32(q.n)})
			i++
		}
	}
	return i, false
}

// abort ends every operation still pending on f with -ECANCELED.
func (b *epollBackend) abort(f *epFd) {
	f.out.cancel(b.complete)
	f.sk.fail(-int32(unix.ECANCELED), b.complete)
	if f.connOn {
		f.connOn = false
		b.complete(Comp{Token: f.connTok, Kind: EvConnect, Res: -int32(unix.ECANCELED)})
	}
}

func (b *epollBackend) closeFd(f *epFd, token uint64) {
	if f.registered != 0 {
		unix.EpollCtl(b.epfd, unix.EPOLL_CTL_DEL, int(f.fd), nil)
	}
	f.kt.rec.drop(&b.recs) // no answer after a close, as for OpRecvStart
	f.kt.freeSoft()
	var res int32
	if err := unix.Close(int(f.fd)); err != nil {
		res = errnoOf(err)
	}
	f.state = fdClosed
	delete(b.fds, f.fd)
	b.complete(Comp{Token: token, Kind: EvClosed, Res: res})
}

// sync tells epoll what each changed fd now waits for.
func (b *epollBackend) sync() {
	for _, f := range b.dirty {
		f.isDirty = false
		if f.flushDue && f.state == fdOpen {
			f.flushDue = false
			b.flush(f)
		}
		if f.state != fdOpen {
			continue
		}
		var want uint32
		if (f.recvOn && !f.starved) || f.acceptOn || f.pollMask&PollIn != 0 || f.sk.recvLive() || f.kt.rec.live {
			want |= unix.EPOLLIN
		}
		if f.blocked || f.connOn || f.pollMask&PollOut != 0 || f.sk.sendLive() {
			want |= unix.EPOLLOUT
		}
		idle := want == 0 && len(f.out) == 0 && !f.recvOn && !f.acceptOn && f.pollMask == 0 && !f.starved && !f.sk.live() &&
			!f.kt.rec.held() && f.kt.soft == nil
		if want == f.registered {
			if idle {
				delete(b.fds, f.fd) // nothing left to remember about this fd
			}
			continue
		}
		ev := unix.EpollEvent{Events: want, Fd: f.fd}
		var err error
		switch {
		case f.registered == 0:
			err = unix.EpollCtl(b.epfd, unix.EPOLL_CTL_ADD, int(f.fd), &ev)
		case want == 0:
			err = unix.EpollCtl(b.epfd, unix.EPOLL_CTL_DEL, int(f.fd), nil)
		default:
			err = unix.EpollCtl(b.epfd, unix.EPOLL_CTL_MOD, int(f.fd), &ev)
			if err == unix.ENOENT {
				// The file was closed and the number reused behind our back.
				err = unix.EpollCtl(b.epfd, unix.EPOLL_CTL_ADD, int(f.fd), &ev)
			}
		}
		if err != nil && want == 0 {
			err = nil // removing an fd that is already gone
		}
		if err != nil {
			b.failFd(f, errnoOf(err))
			continue
		}
		f.registered = want
		if idle {
			delete(b.fds, f.fd)
		}
	}
	b.dirty = b.dirty[:0]
}

// failFd reports an fd epoll refuses (a regular file, a closed fd) to every
// operation waiting on it, so nothing waits forever.
func (b *epollBackend) failFd(f *epFd, res int32) {
	if f.recvOn {
		f.recvOn = false
		kind := EvRecv
		if f.dgram {
			kind = EvDgram
		}
		b.complete(Comp{Token: f.recvTok, Kind: kind, Res: res})
	}
	if f.acceptOn {
		f.acceptOn = false
		b.complete(Comp{Token: f.accTok, Kind: EvAccept, Res: res})
	}
	if f.pollMask != 0 {
		f.pollMask = 0
		b.complete(Comp{Token: f.pollTok, Kind: EvPoll, Res: res})
	}
	if f.connOn {
		f.connOn = false
		b.complete(Comp{Token: f.connTok, Kind: EvConnect, Res: res})
	}
	if f.kt.rec.live {
		f.kt.rec.fail(res, &b.recs, b.complete)
	}
	if f.kt.soft != nil {
		f.kt.soft.failTX(unix.Errno(-res))
	}
	f.out.fail(res, true, b.complete)
	f.sk.fail(res, b.complete)
	f.blocked = false
}

func (b *epollBackend) handle(ev *unix.EpollEvent) {
	if ev.Fd == int32(b.wk.fd) {
		var buf [8]byte
		unix.Read(b.wk.fd, buf[:])
		return
	}
	f := b.fds[ev.Fd]
	if f == nil || f.state != fdOpen {
		return
	}
	in := ev.Events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR|unix.EPOLLRDHUP) != 0
	outReady := ev.Events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0
	if f.pollMask != 0 {
		mask := ev.Events & (PollIn | PollOut | PollErr | PollHup)
		// Report only what was asked for, plus errors/hangups, which a
		// select()-style reader or writer must see to find out.
		mask &= f.pollMask | PollErr | PollHup
		if mask != 0 {
			b.complete(Comp{Token: f.pollTok, Kind: EvPoll, Aux: mask, Flags: FlagMore})
		}
	}
	if in && f.acceptOn {
		b.acceptSome(f)
	}
	if in && f.recvOn && !f.starved {
		b.recvOne(f)
	}
	if in && f.kt.rec.live && f.kt.rec.pump(f.fd, &b.recs, b.complete) {
		b.markDirty(f)
	}
	if outReady && f.connOn {
		b.settleConnect(f)
	}
	if in && f.sk.recvLive() && f.sk.recv.try(f.fd, b.complete) {
		b.markDirty(f)
	}
	if outReady && f.sk.sendLive() && f.sk.send.try(f.fd, b.complete) {
		b.markDirty(f)
	}
	if outReady && f.blocked {
		b.flush(f)
		b.markDirty(f)
	}
}

// settleConnect learns a connect's outcome by connecting again, as
// IORING_OP_CONNECT does, rather than by reading SO_ERROR: a failed
// connect then leaves the socket unconnected for the next try, on both
// backends alike. Reading SO_ERROR would consume the error and leave the
// socket half-connecting, so a program retrying after a cancelled connect
// got ECONNABORTED where asyncio's retry gets the refusal, then connects.
func (b *epollBackend) settleConnect(f *epFd) {
	var res int32
	switch e := connectRaw(f.fd, f.connPtr, f.connLen); e {
	case 0, unix.EISCONN:
	case unix.EINPROGRESS, unix.EALREADY:
		return // woken early: still connecting
	default:
		res = -int32(e)
	}
	f.connOn = false
	c := Comp{Token: f.connTok, Kind: EvConnect, Res: res}
	connectedAddrs(&c, f.fd, &b.accSc)
	b.complete(c)
	b.markDirty(f)
}

func (b *epollBackend) acceptSome(f *epFd) {
	if !acceptSome(f.fd, f.accTok, &f.accLocal, &b.accSc, b.complete) {
		f.acceptOn = false
		b.markDirty(f)
	}
}

func (b *epollBackend) recvOne(f *epFd) {
	if f.dgram {
		b.recvDgram(f)
		return
	}
	if f.kt.soft != nil {
		if f.kt.soft.recv(f.fd, &f.kt, &b.recs, f.recvTok, b.complete) {
			f.recvOn = false
			b.markDirty(f)
		}
		return
	}
	id, ok := b.pool.get()
	if !ok {
		f.starved = true
		b.starved = append(b.starved, f)
		b.markDirty(f)
		return
	}
	for {
		n, err := unix.Read(int(f.fd), b.pool.buf(id))
		if e := faultAt(faultRecv); e != 0 && err == nil {
			err = e
		}
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			b.pool.put(id)
		case err == unix.EIO && !f.notSock:
			// Kernel TLS RX: a record that is not data (recvrecord.go).
			b.pool.put(id)
			handled, over := ktlsRecvEIO(f.fd, &f.kt, &b.recs, f.recvTok, b.complete)
			if !handled {
				f.recvOn = false
				b.complete(Comp{Token: f.recvTok, Kind: EvRecv, Res: errnoOf(err)})
			} else if over {
				f.recvOn = false
			}
			b.markDirty(f)
		case err != nil:
			b.pool.put(id)
			f.recvOn = false
			b.complete(Comp{Token: f.recvTok, Kind: EvRecv, Res: errnoOf(err)})
			b.markDirty(f)
		case n == 0:
			b.pool.put(id)
			f.recvOn = false
			b.complete(Comp{Token: f.recvTok, Kind: EvRecv})
			b.markDirty(f)
		default:
			b.complete(Comp{Token: f.recvTok, Kind: EvRecv, Res: int32(n), Ptr: b.pool.addr(id), Buf: id,
				Flags: FlagMore, Aux: uint32(b.pool.size)})
		}
		return
	}
}

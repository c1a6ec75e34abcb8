package goloop

import (
	"errors"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// uringBackend is the completion-based backend: each operation C submits
// becomes one or more SQEs (multishot recv and accept, one send in flight
// per fd, one-shot polls re-armed each Poll call), and every CQE is turned
// into the completion record the epoll backend would have produced, or
// swallowed when it is the backend's own business (cancellations,
// re-arming, buffer exhaustion).
//
// Poll it from one OS thread, as the Python loop does through cgo: the
// kernel runs a request's completion work (a multishot recv's copy, for
// one) on the thread that submitted it, so a goroutine that moved to
// another thread waits for the first one to be woken, which costs several
// times the latency of a round trip. Any thread still works correctly.
type uringBackend struct {
	r     *ring
	accSc acceptScratch // accept4's sockaddrs (acceptSome)
	pool  *bufPool
	pbuf  *pbufRing
	wk    waker

	fds   map[int32]*urFd
	slots []*urFd  // user_data names a slot; slot 0 is the backend's own
	gens  []uint32 // generation of each slot, bumped when it is freed
	free  []uint32

	ready      []Comp
	starved    []*urFd // recvs ended by ENOBUFS, re-armed when buffers return
	rearm      []*urFd // polls delivered this call, re-armed at the next
	pumps      []*urFd // output queues to pump once the batch is applied
	eofHeld    []*urFd // ends of stream held until this call's send completions (releaseEOFs)
	inflight   int     // requests whose last CQE has not come back
	heldChunks int     // chunks (buffers) held for paused fds

	gathers []*sendGather // free iovec/msghdr blocks for gathered sends (takeGather)

	dg   *urDgram // datagram buffers and their ring (dgram_uring.go), made on first use
	recs recPool  // record buffers (recvrecord.go), made on first use

	wakeArmed bool
	woken     bool
	closed    bool

	pinned  bool // ring bound to one thread (SINGLE_ISSUER|DEFER_TASKRUN)
	enabled bool
	// readMulti: the kernel has IORING_OP_READ_MULTISHOT, so a pipe is
	// read like a socket, one armed request for every chunk (uring_fd.go).
	readMulti bool
}

// Kinds of request, in the low byte of user_data. Above it: the slot
// (24 bits) and the slot's generation (32 bits), so a CQE that outlives
// its fd state can never be taken for a newer fd's.
const (
	kWake uint8 = iota + 1
	kCancelAll
	kRecv
	kPoll
	kPollRemove
	kConnect
	kSend
	kCancel
	kRecvPoll     // readiness wait before a read of a non-socket
	kSendPoll     // readiness wait before a write to a full non-socket
	kRecvMsg      // multishot recvmsg of datagrams (dgram_uring.go)
	kAcceptPoll   // readiness wait of a listener: accept4 follows (acceptSome)
	kSockRecvPoll // readiness wait of a sock_recv: recv follows (sockops.go)
	kSockSendPoll // readiness wait of a sock_sendall: send follows
	kRecordPoll   // readiness wait of an OpRecvRecord: reads follow (recvrecord.go)
)

// UringPinned makes io_uring backends created afterwards bind their ring to
// the first OS thread that polls it, which lets the kernel defer its work
// to that thread (IORING_SETUP_DEFER_TASKRUN). Only a caller that always
// polls from one thread (the Python loop's thread through cgo) may set it.
var UringPinned bool

// noReadMulti keeps backends made afterwards from using the multishot read
// (tests: the poll-then-read path that ttys and older kernels take).
var noReadMulti bool

func newUring(opt Options) (Backend, error) {
	if opt.BufCount > 1<<15 {
		return nil, errors.New("goloop: io_uring buffer ring holds at most 32768 buffers")
	}
	r, err := newRing(uint32(opt.Entries), UringPinned)
	if err != nil {
		return nil, err
	}
	b := &uringBackend{r: r, wk: waker{fd: -1}, fds: make(map[int32]*urFd), slots: []*urFd{nil}, gens: []uint32{0}}
	b.pinned = r.flags&iouSetupDeferTaskrun != 0
	fail := func(err error) (Backend, error) {
		b.release()
		return nil, err
	}
	// SEND_ZC dates from 6.0, like multishot recv, which a probe cannot see.
	if err := r.probe(iouOpPollAdd, iouOpPollRemove, iouOpAccept, iouOpAsyncCancel, iouOpConnect,
		iouOpRead, iouOpWrite, iouOpSend, iouOpRecv, iouOpSendZC); err != nil {
		return fail(err)
	}
	b.readMulti = r.has(iouOpReadMulti) && !noReadMulti
	if b.pool, err = newBufPool(opt.BufSize, opt.BufCount); err != nil {
		return fail(err)
	}
	if b.pbuf, err = newPbufRing(r.fd, b.pool); err != nil {
		return fail(err)
	}
	// Blocking: io_uring answers a read of an O_NONBLOCK file with EAGAIN
	// instead of waiting. Wake's write cannot block (the counter would
	// have to near 2^64).
	if b.wk.fd, err = unix.Eventfd(0, unix.EFD_CLOEXEC); err != nil {
		return fail(err)
	}
	return b, nil
}

func (b *uringBackend) Name() string { return "io_uring" }

func (b *uringBackend) Pending() bool {
	return len(b.ready) > 0 || b.r.cqReady() || b.r.taskrunPending()
}

func (b *uringBackend) Wake() error { return b.wk.wake() }

func (b *uringBackend) WakeFd() int { return b.wk.fd }

func (b *uringBackend) complete(c Comp) { b.ready = append(b.ready, c) }

func (b *uringBackend) ud(f *urFd, kind uint8) uint64 {
	return uint64(f.gen)<<32 | uint64(f.slot)<<8 | uint64(kind)
}

// sqe hands out an SQE whose CQE will be counted back in handle.
func (b *uringBackend) sqe(op uint8, fd int32, ud uint64) *uringSQE {
	s := b.r.sqe()
	s.opcode, s.fd, s.userData = op, fd, ud
	b.inflight++
	return s
}

// armWake keeps one read of the eventfd in flight, so a Wake from any
// goroutine completes it and ends the wait.
func (b *uringBackend) armWake() {
	s := b.sqe(iouOpRead, int32(b.wk.fd), uint64(kWake))
	s.addr = uint64(uintptr(unsafe.Pointer(&b.r.scratch[64])))
	s.len = 8
	b.wakeArmed = true
}

func (b *uringBackend) Poll(subs []Sub, out []Comp, timeout time.Duration) (int, error) {
	if b.pinned {
		// The ring belongs to one thread; hold it for the whole call.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := b.checkOwner(); err != nil {
			return 0, err
		}
	}
	if timeout == ApplyOnly {
		timeout = 0 // reaping is a read of the ring: nothing to save
	}
	for i := range subs {
		b.apply(&subs[i])
	}
	b.pumpDue()
	b.armPolls()
	b.woken = false
	if !b.wakeArmed {
		b.armWake()
	}
	var start time.Time
	if timeout > 0 {
		start = time.Now()
	}
	entered := false
	for {
		b.reap()
		wait := len(b.ready) == 0 && !b.woken && timeout != 0
		rem := time.Duration(-1)
		if wait && timeout > 0 {
			// The kernel's timer does not fire early, but a wait may end
			// on internal completions: what is left is measured again.
			if rem = timeout - time.Since(start); rem <= 0 {
				wait = false
			}
		}
		if !wait {
			// Sends and re-arms produced by this call's completions go out
			// with the next call's wait, not in a second syscall now.
			if !entered && (b.r.unsubmitted() > 0 || b.r.taskrunPending()) {
				if err := b.r.enter(0, -1); err != nil && !transient(err) {
					return 0, err
				}
				b.reap()
			}
			break
		}
		err := b.r.enter(1, rem)
		entered = true
		if err == unix.EINTR {
			// A signal: Python must get the chance to run its handlers.
			b.reap()
			break
		}
		if err != nil && err != unix.ETIME && !transient(err) {
			return 0, err
		}
	}
	b.releaseEOFs()
	k := copy(out, b.ready)
	rest := copy(b.ready, b.ready[k:])
	b.ready = b.ready[:rest]
	return k, nil
}

func transient(err error) bool {
	return err == unix.EINTR || err == unix.EAGAIN || err == unix.EBUSY || err == unix.ETIME
}

// checkOwner enables a pinned ring on the first thread that polls it.
// The kernel refuses any other thread afterwards (EEXIST from enter).
func (b *uringBackend) checkOwner() error {
	if !b.enabled {
		if err := ioUringRegister(b.r.fd, iouRegisterEnableRings, nil, 0); err != nil {
			return err
		}
		b.enabled = true
		// The thread is this one for good: its signal mask is read once.
		b.r.fixedMask = true
	}
	return nil
}

// reap turns every CQE in the ring into completions (or nothing).
func (b *uringBackend) reap() {
	for reaped := false; ; reaped = true {
		head := *b.r.cqHead
		tail := atomic.LoadUint32(b.r.cqTail)
		if head == tail {
			if reaped {
				b.pbuf.reaped()
			}
			return
		}
		for ; head != tail; head++ {
			c := b.r.cqe(head)
			// Hand the slot back before acting: acting may submit, and the
			// kernel needs room to post.
			atomic.StoreUint32(b.r.cqHead, head+1)
			b.handle(&c)
		}
	}
}

func (b *uringBackend) handle(c *uringCQE) {
	if c.flags&cqeFMore == 0 {
		b.inflight--
	}
	kind := uint8(c.userData)
	slot := uint32(c.userData>>8) & 0xffffff
	if slot == 0 {
		if kind == kWake {
			b.wakeArmed = false
			b.woken = c.res > 0
		}
		return
	}
	var f *urFd
	if int(slot) < len(b.slots) {
		f = b.slots[slot]
	}
	if f == nil || f.gen != uint32(c.userData>>32) || b.closed {
		b.orphan(kind, c)
		return
	}
	if c.flags&cqeFMore == 0 {
		f.inflight--
	}
	c.res = faultCQE(kind, c.res)
	switch kind {
	case kRecv:
		b.onRecv(f, c)
	case kAcceptPoll:
		b.onAcceptPoll(f, c)
	case kPoll:
		b.onPoll(f, c)
	case kConnect:
		b.onConnect(f, c)
	case kSend:
		b.onSend(f, c)
	case kRecvPoll:
		b.onRecvPoll(f, c)
	case kSendPoll:
		b.onSendPoll(f, c)
	case kRecvMsg:
		b.onRecvMsg(f, c)
	case kSockRecvPoll:
		b.onSockPoll(f, c, false)
	case kSockSendPoll:
		b.onSockPoll(f, c, true)
	case kRecordPoll:
		b.onRecordPoll(f, c)
	case kCancel, kPollRemove:
	}
	b.settle(f)
}

// orphan disposes of a CQE nobody waits for any more without leaking what
// it carries: a buffer goes back to the ring, an accepted fd is closed.
func (b *uringBackend) orphan(kind uint8, c *uringCQE) {
	if kind == kRecvMsg {
		b.dgramOrphan(c)
		return
	}
	if c.flags&cqeFBuffer != 0 && b.pbuf != nil {
		b.pbuf.recycle(uint16(c.flags >> 16))
	}
}

func (b *uringBackend) Close() error {
	if b.r == nil {
		return nil
	}
	if b.pinned {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
	}
	// Cancel everything and wait for it, so no request outlives the
	// memory it points into (the buffer pool above all).
	b.closed = true
	s := b.r.sqe()
	s.opcode, s.fd, s.userData = iouOpAsyncCancel, -1, uint64(kCancelAll)
	s.opFlags = iouCancelAny | iouCancelAll
	b.inflight++
	deadline := time.Now().Add(time.Second)
	for b.inflight > 0 && time.Now().Before(deadline) {
		if err := b.r.enter(1, 10*time.Millisecond); err != nil && !transient(err) {
			break
		}
		b.reap()
	}
	for _, f := range b.fds {
		f.dropHeld(b)
		f.kt.freeSoft()
	}
	b.fds = nil
	b.release()
	return nil
}

func (b *uringBackend) release() {
	b.dgramRelease()
	if b.pbuf != nil {
		b.pbuf.close()
		b.pbuf = nil
	}
	if b.r != nil {
		b.r.close()
		b.r = nil
	}
	b.wk.close()
	b.recs.close()
	if b.pool != nil {
		b.pool.close()
		b.pool = nil
	}
}

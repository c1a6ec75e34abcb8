package goloop

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The io_uring ABI (include/uapi/linux/io_uring.h), written out here because
// golang.org/x/sys/unix carries only the syscall numbers.

const (
	iouSetupCQSize       = 1 << 3
	iouSetupClamp        = 1 << 4
	iouSetupRDisabled    = 1 << 6
	iouSetupSubmitAll    = 1 << 7
	iouSetupCoopTaskrun  = 1 << 8
	iouSetupTaskrunFlag  = 1 << 9
	iouSetupSingleIssuer = 1 << 12
	iouSetupDeferTaskrun = 1 << 13

	iouFeatSingleMmap = 1 << 0
	iouFeatNodrop     = 1 << 1
	iouFeatExtArg     = 1 << 8

	iouOffSQRing = 0
	iouOffCQRing = 0x8000000
	iouOffSQEs   = 0x10000000

	iouEnterGetevents = 1 << 0
	iouEnterExtArg    = 1 << 3

	iouSQCQOverflow = 1 << 1 // in the SQ ring's flags word
	iouSQTaskrun    = 1 << 2

	iouRegisterProbe       = 8
	iouRegisterEnableRings = 12
	iouRegisterPbufRing    = 22
	iouUnregisterPbufRing  = 23

	iosqeBufferSelect = 1 << 5

	cqeFBuffer = 1 << 0
	cqeFMore   = 1 << 1

	iouAcceptMultishot = 1 << 0
	iouRecvMultishot   = 1 << 1

	iouCancelAll = 1 << 0
	iouCancelFd  = 1 << 1
	iouCancelAny = 1 << 2
)

// Opcodes used here.
const (
	iouOpNop         = 0
	iouOpPollAdd     = 6
	iouOpPollRemove  = 7
	iouOpSendmsg     = 9
	iouOpAccept      = 13
	iouOpAsyncCancel = 14
	iouOpConnect     = 16
	iouOpRead        = 22
	iouOpWrite       = 23
	iouOpSend        = 26
	iouOpRecv        = 27
	iouOpRecvmsg     = 10
	iouOpSendZC      = 47 // not used; its presence marks a 6.0+ kernel (multishot recv)
	iouOpReadMulti   = 49 // IORING_OP_READ_MULTISHOT (6.7): continuous read of a pipe
)

type sqringOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqringOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqringOffsets
	cqOff                                                                  cqringOffsets
}

type uringSQE struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	opFlags     uint32
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFdIn  int32
	addr3       uint64
	_           uint64
}

type uringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

type getEventsArg struct {
	sigmask   uint64
	sigmaskSz uint32
	minWait   uint32
	ts        uint64
}

var _ [64 - unsafe.Sizeof(uringSQE{})]byte
var _ [unsafe.Sizeof(uringSQE{}) - 64]byte
var _ [120 - unsafe.Sizeof(uringParams{})]byte
var _ [unsafe.Sizeof(uringParams{}) - 120]byte

// ring is one io_uring instance with its shared rings mapped.
type ring struct {
	fd       int
	flags    uint32 // setup flags the kernel accepted
	features uint32

	sqMem, cqMem, sqeMem []byte

	sqHead, sqTail, sqFlags *uint32
	sqMask, sqEntries       uint32
	sqLocal                 uint32 // our tail: SQEs written, published or not

	cqHead, cqTail *uint32
	cqMask         uint32
	cqesOff        uint32

	fixedMask, maskRead bool // one thread polls: its wait mask is kept

	// scratch is one mmap'd page for what the kernel reads through a
	// pointer during a wait (the timeout), so no Go memory is involved.
	scratch []byte
}

func ioUringSetup(entries uint32, p *uringParams) (int, error) {
	fd, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(p)), 0)
	if e != 0 {
		return -1, e
	}
	return int(fd), nil
}

func ioUringRegister(fd int, op uint32, arg unsafe.Pointer, nr uint32) error {
	_, _, e := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(fd), uintptr(op), uintptr(arg), uintptr(nr), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// newRing sets a ring up, trying the cheapest task-running mode first and
// dropping flags the kernel refuses (older kernels answer EINVAL).
func newRing(entries uint32, pinned bool) (*ring, error) {
	if b, err := os.ReadFile("/proc/sys/kernel/io_uring_disabled"); err == nil && strings.TrimSpace(string(b)) == "2" {
		return nil, errors.New("goloop: io_uring disabled by kernel.io_uring_disabled")
	}
	base := uint32(iouSetupCQSize | iouSetupClamp)
	tries := []uint32{
		base | iouSetupSubmitAll | iouSetupCoopTaskrun | iouSetupTaskrunFlag,
		base | iouSetupSubmitAll,
		base,
	}
	if pinned {
		// DEFER_TASKRUN binds the ring to one thread; R_DISABLED lets the
		// thread that first polls become that thread.
		tries = append([]uint32{base | iouSetupSubmitAll | iouSetupCoopTaskrun | iouSetupTaskrunFlag |
			iouSetupSingleIssuer | iouSetupDeferTaskrun | iouSetupRDisabled}, tries...)
	}
	var p uringParams
	fd := -1
	var err error
	for _, fl := range tries {
		p = uringParams{flags: fl, cqEntries: entries * 4}
		fd, err = ioUringSetup(entries, &p)
		if err == nil {
			break
		}
		if err != unix.EINVAL {
			return nil, fmt.Errorf("goloop: io_uring_setup: %w", err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("goloop: io_uring_setup: %w", err)
	}
	r := &ring{fd: fd, flags: p.flags, features: p.features}
	if err := r.mapRings(&p); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

func (r *ring) mapRings(p *uringParams) error {
	const need = iouFeatNodrop | iouFeatExtArg
	if p.features&need != need {
		return errors.New("goloop: io_uring lacks NODROP/EXT_ARG (kernel too old)")
	}
	sqSize := int(p.sqOff.array + p.sqEntries*4)
	cqSize := int(p.cqOff.cqes + p.cqEntries*uint32(unsafe.Sizeof(uringCQE{})))
	prot := unix.PROT_READ | unix.PROT_WRITE
	flags := unix.MAP_SHARED | unix.MAP_POPULATE
	if p.features&iouFeatSingleMmap != 0 {
		sqSize = max(sqSize, cqSize)
	}
	var err error
	r.sqMem, err = unix.Mmap(r.fd, iouOffSQRing, sqSize, prot, flags)
	if err != nil {
		return fmt.Errorf("goloop: mmap SQ ring: %w", err)
	}
	if p.features&iouFeatSingleMmap != 0 {
		r.cqMem = r.sqMem
	} else if r.cqMem, err = unix.Mmap(r.fd, iouOffCQRing, cqSize, prot, flags); err != nil {
		return fmt.Errorf("goloop: mmap CQ ring: %w", err)
	}
	r.sqeMem, err = unix.Mmap(r.fd, iouOffSQEs, int(p.sqEntries)*64, prot, flags)
	if err != nil {
		return fmt.Errorf("goloop: mmap SQEs: %w", err)
	}
	r.scratch, err = unix.Mmap(-1, 0, os.Getpagesize(), prot, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("goloop: mmap scratch: %w", err)
	}
	u32 := func(mem []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&mem[off])) }
	r.sqHead = u32(r.sqMem, p.sqOff.head)
	r.sqTail = u32(r.sqMem, p.sqOff.tail)
	r.sqFlags = u32(r.sqMem, p.sqOff.flags)
	r.sqMask = *u32(r.sqMem, p.sqOff.ringMask)
	r.sqEntries = *u32(r.sqMem, p.sqOff.ringEntries)
	// The indirection array is the identity: SQE i sits in slot i.
	for i := uint32(0); i < r.sqEntries; i++ {
		*u32(r.sqMem, p.sqOff.array+4*i) = i
	}
	r.sqLocal = atomic.LoadUint32(r.sqTail)
	r.cqHead = u32(r.cqMem, p.cqOff.head)
	r.cqTail = u32(r.cqMem, p.cqOff.tail)
	r.cqMask = *u32(r.cqMem, p.cqOff.ringMask)
	r.cqesOff = p.cqOff.cqes
	return nil
}

func (r *ring) close() {
	single := len(r.cqMem) > 0 && len(r.sqMem) > 0 && &r.cqMem[0] == &r.sqMem[0]
	if r.sqeMem != nil {
		unix.Munmap(r.sqeMem)
	}
	if r.cqMem != nil && !single {
		unix.Munmap(r.cqMem)
	}
	if r.sqMem != nil {
		unix.Munmap(r.sqMem)
	}
	if r.scratch != nil {
		unix.Munmap(r.scratch)
	}
	r.sqeMem, r.cqMem, r.sqMem, r.scratch = nil, nil, nil, nil
	if r.fd >= 0 {
		unix.Close(r.fd)
		r.fd = -1
	}
}

// probe reports which of ops this kernel implements.
// has reports whether the kernel knows op (an optional one).
func (r *ring) has(op uint8) bool {
	const n = 256
	buf := make([]byte, 16+8*n)
	if err := ioUringRegister(r.fd, iouRegisterProbe, unsafe.Pointer(&buf[0]), n); err != nil {
		return false
	}
	return op <= buf[0] && buf[16+8*int(op)+2]&1 != 0
}

func (r *ring) probe(ops ...uint8) error {
	const n = 256
	buf := make([]byte, 16+8*n)
	if err := ioUringRegister(r.fd, iouRegisterProbe, unsafe.Pointer(&buf[0]), n); err != nil {
		return fmt.Errorf("goloop: io_uring probe: %w", err)
	}
	last := buf[0]
	for _, op := range ops {
		entry := buf[16+8*int(op):]
		if op > last || entry[2]&1 == 0 { // IO_URING_OP_SUPPORTED in flags
			return fmt.Errorf("goloop: io_uring opcode %d not supported", op)
		}
	}
	return nil
}

// unsubmitted counts SQEs written but not yet taken by the kernel.
func (r *ring) unsubmitted() uint32 { return r.sqLocal - atomic.LoadUint32(r.sqHead) }

// sqe hands out the next free SQE, zeroed; a full queue is submitted first.
func (r *ring) sqe() *uringSQE {
	for r.unsubmitted() >= r.sqEntries {
		if err := r.enter(0, -1); err != nil && err != unix.EINTR && err != unix.EBUSY && err != unix.EAGAIN {
			panic(fmt.Sprintf("goloop: io_uring submit: %v", err))
		}
	}
	s := r.sqeAt(r.sqLocal)
	*s = uringSQE{}
	r.sqLocal++
	return s
}

func (r *ring) sqeAt(idx uint32) *uringSQE {
	return (*uringSQE)(unsafe.Pointer(&r.sqeMem[(idx&r.sqMask)*64]))
}

// taskrunPending reports completions the kernel holds back until the
// ring is entered: task work not yet run (TASKRUN_FLAG), or CQEs that
// overflowed a full CQ ring (NODROP keeps them aside).
func (r *ring) taskrunPending() bool {
	return atomic.LoadUint32(r.sqFlags)&(iouSQTaskrun|iouSQCQOverflow) != 0
}

func (r *ring) cqReady() bool { return atomic.LoadUint32(r.cqTail) != atomic.LoadUint32(r.cqHead) }

// waitSigmask fills m with the mask a wait should run under: the thread's
// own mask plus SIGURG. The Go runtime sends SIGURG to preempt goroutines,
// and one landing on a thread that waits in the kernel would end the wait
// early with EINTR; blocked for the wait's length (like ppoll's mask), it is
// delivered right after, while every other signal (Python's SIGINT)
// still interrupts the wait at once.
func waitSigmask(m *unix.Sigset_t) {
	*m = unix.Sigset_t{}
	unix.PthreadSigmask(unix.SIG_BLOCK, nil, m)
	urg := uint(unix.SIGURG) - 1
	m.Val[urg/64] |= 1 << (urg % 64)
}

// sigsetSize is the kernel's sigset_t size (_NSIG/8), not glibc's.
const sigsetSize = 8

// enter submits what is queued and, with minComplete 1, waits for a
// completion, at most wait long (wait < 0: no limit).
func (r *ring) enter(minComplete uint32, wait time.Duration) error {
	atomic.StoreUint32(r.sqTail, r.sqLocal)
	toSubmit := r.unsubmitted()
	flags := uintptr(iouEnterGetevents)
	var argp, argsz uintptr
	if minComplete > 0 {
		arg := (*getEventsArg)(unsafe.Pointer(&r.scratch[0]))
		mask := (*unix.Sigset_t)(unsafe.Pointer(&r.scratch[128]))
		if !r.fixedMask || !r.maskRead {
			waitSigmask(mask)
			r.maskRead = true
		}
		*arg = getEventsArg{sigmask: uint64(uintptr(unsafe.Pointer(mask))), sigmaskSz: sigsetSize}
		if wait >= 0 {
			ts := (*unix.Timespec)(unsafe.Pointer(&r.scratch[32]))
			*ts = unix.NsecToTimespec(int64(wait))
			arg.ts = uint64(uintptr(unsafe.Pointer(ts)))
		}
		argp, argsz = uintptr(unsafe.Pointer(arg)), unsafe.Sizeof(*arg)
		flags |= iouEnterExtArg
	}
	_, _, e := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(toSubmit), uintptr(minComplete), flags, argp, argsz)
	if e != 0 {
		return e
	}
	return nil
}

// cqe returns the completion at index i of the CQ ring.
func (r *ring) cqe(i uint32) uringCQE {
	return *(*uringCQE)(unsafe.Pointer(&r.cqMem[r.cqesOff+(i&r.cqMask)*16]))
}

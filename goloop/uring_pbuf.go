package goloop

import (
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// pbufGroup is the buffer group id of the one provided-buffer ring.
const pbufGroup = 0

// pbufRing hands the bufPool's buffers to the kernel through a
// provided-buffer ring: a multishot recv takes the next buffer itself, and
// C gives it back with OpBufReturn.
//
// The kernel takes buffers first in, first out, so a ring holding the whole
// pool would have every receive land in the buffer given back longest ago:
// with 256 buffers of 64 KiB, 16 MiB cycled through, out of cache by the
// time each is written again (the kernel's copy into user memory cost 2.4x
// uvloop's, which reads into one buffer it reuses). So the ring holds only
// depth buffers; the rest wait in spare, and the ring is topped up from
// spare's end, where the buffers given back last are: the few a steady
// stream needs go round while still warm. depth doubles when receives find
// the ring empty (once per reap, however many did), and halves again after
// a window of reaps in which never more than a quarter of it was taken
// between two reaps, so that the halved ring still has twice what the load
// took.
type pbufRing struct {
	ringFd int
	bgid   uint16 // its buffer group
	mem    []byte // the ring: count entries of struct io_uring_buf
	pool   *bufPool
	mask   uint16
	tail   uint16
	// bid0 mirrors entry 0's bid: it shares a 32-bit word with the tail,
	// which is published with one atomic store of that word.
	bid0   uint16
	inRing int    // buffers the kernel can still pick
	out    []bool // buffer is with C (or held for it)

	depth, minDepth int      // buffers the ring is kept at; the floor depth shrinks to
	spare           []uint16 // free buffers not in the ring; the last given back last
	low, reaps      int      // fewest buffers left in the ring at a reap, this window; reaps in it
	grown           bool     // depth doubled since the last reap
}

// pbufWindow is how many reaps the ring must go with three quarters of its
// depth unused before depth halves: at a busy loop's rate a fraction of a second.
const pbufWindow = 8192

type uringBuf struct {
	addr uint64
	len  uint32
	bid  uint16
	resv uint16 // the ring's tail, in entry 0
}

type uringBufReg struct {
	ringAddr    uint64
	ringEntries uint32
	bgid        uint16
	flags       uint16
	resv        [3]uint64
}

// pbufMinDepth is where a stream ring's depth starts and the lowest it goes.
const pbufMinDepth = 16

func newPbufRing(ringFd int, pool *bufPool) (*pbufRing, error) {
	return newPbufRingGroup(ringFd, pool, pbufGroup, pbufMinDepth)
}

// newPbufRingGroup registers a ring for pool's buffers as group bgid, kept
// at minDepth buffers or more (pool.count: the whole pool, always).
func newPbufRingGroup(ringFd int, pool *bufPool, bgid uint16, minDepth int) (*pbufRing, error) {
	size := pool.count * int(unsafe.Sizeof(uringBuf{}))
	page := os.Getpagesize()
	size = (size + page - 1) &^ (page - 1)
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("goloop: mmap buffer ring: %w", err)
	}
	reg := uringBufReg{
		ringAddr:    uint64(uintptr(unsafe.Pointer(&mem[0]))),
		ringEntries: uint32(pool.count),
		bgid:        bgid,
	}
	if err := ioUringRegister(ringFd, iouRegisterPbufRing, unsafe.Pointer(&reg), 1); err != nil {
		unix.Munmap(mem)
		return nil, fmt.Errorf("goloop: register buffer ring: %w", err)
	}
	minDepth = min(max(minDepth, 1), pool.count)
	p := &pbufRing{ringFd: ringFd, bgid: bgid, mem: mem, pool: pool, mask: uint16(pool.count - 1),
		out: make([]bool, pool.count), depth: minDepth, minDepth: minDepth, low: minDepth,
		spare: make([]uint16, 0, pool.count)}
	for i := pool.count - 1; i >= 0; i-- {
		p.spare = append(p.spare, uint16(i))
	}
	p.fill()
	return p, nil
}

// fill tops the ring up to depth from spare's end and publishes.
func (p *pbufRing) fill() {
	n := len(p.spare)
	if p.inRing >= p.depth || n == 0 {
		return
	}
	for p.inRing < p.depth && n > 0 {
		n--
		p.push(p.spare[n])
	}
	p.spare = p.spare[:n]
	p.publish()
}

// available reports whether a receive armed now can get a buffer.
func (p *pbufRing) available() bool {
	p.fill()
	return p.inRing > 0
}

// starved: a receive found the ring empty (ENOBUFS) or could not be armed
// for want of a buffer. The ring is too shallow for this load: twice as
// deep, at once.
func (p *pbufRing) starved() {
	if p.depth < p.pool.count && !p.grown {
		p.grown = true
		p.depth = min(2*p.depth, p.pool.count)
		p.low, p.reaps = p.depth, 0
	}
	p.fill()
}

// reaped is called once the completions ready are handled: it notes how
// low the ring ran, halves depth after a window in which no more than a
// quarter of it was taken, and refills.
func (p *pbufRing) reaped() {
	p.grown = false
	p.low = min(p.low, p.inRing)
	if p.reaps++; p.reaps >= pbufWindow {
		if p.depth-p.low <= p.depth/4 && p.depth > p.minDepth {
			p.depth = max(p.depth/2, p.minDepth)
		}
		p.low, p.reaps = p.depth, 0
	}
	p.fill()
}

func (p *pbufRing) entry(i uint16) *uringBuf {
	return (*uringBuf)(unsafe.Pointer(&p.mem[int(i)*int(unsafe.Sizeof(uringBuf{}))]))
}

func (p *pbufRing) push(bid uint16) {
	idx := p.tail & p.mask
	e := p.entry(idx)
	e.addr = uint64(p.pool.addr(uint32(bid)))
	e.len = uint32(p.pool.size)
	if idx == 0 {
		p.bid0 = bid // written with the tail in publish
	} else {
		e.bid = bid
	}
	p.tail++
	p.inRing++
}

// publish makes pushed entries visible: the store is a release, so the
// kernel, which loads the tail with acquire, sees the entries before it.
func (p *pbufRing) publish() {
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&p.mem[12])), uint32(p.bid0)|uint32(p.tail)<<16)
}

// taken records that the kernel used buffer bid for a completion.
func (p *pbufRing) taken(bid uint16) {
	p.inRing--
	p.out[bid] = true
}

// isOut reports whether buffer bid is with C (not in the ring, not spare).
func (p *pbufRing) isOut(bid uint32) bool { return int(bid) < len(p.out) && p.out[bid] }

// give takes back a buffer C returned, the next to go into the ring; ids
// that are not out (a double return, garbage) are ignored rather than
// corrupting the ring.
func (p *pbufRing) give(bid uint32) bool {
	if int(bid) >= len(p.out) || !p.out[bid] {
		return false
	}
	p.out[bid] = false
	p.spare = append(p.spare, uint16(bid))
	p.fill()
	return true
}

// recycle returns a buffer the kernel filled but nobody will read (a
// chunk for an fd being closed).
func (p *pbufRing) recycle(bid uint16) {
	p.inRing--
	p.out[bid] = true
	p.give(uint32(bid))
}

func (p *pbufRing) close() {
	reg := uringBufReg{bgid: p.bgid}
	if p.ringFd >= 0 {
		ioUringRegister(p.ringFd, iouUnregisterPbufRing, unsafe.Pointer(&reg), 1)
	}
	unix.Munmap(p.mem)
	p.mem = nil
}

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
// C gives it back with OpBufReturn, which puts it at the ring's tail again.
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
}

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

func newPbufRing(ringFd int, pool *bufPool) (*pbufRing, error) {
	return newPbufRingGroup(ringFd, pool, pbufGroup)
}

func newPbufRingGroup(ringFd int, pool *bufPool, bgid uint16) (*pbufRing, error) {
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
	p := &pbufRing{ringFd: ringFd, bgid: bgid, mem: mem, pool: pool, mask: uint16(pool.count - 1), out: make([]bool, pool.count)}
	for i := 0; i < pool.count; i++ {
		p.push(uint16(i))
	}
	p.publish()
	return p, nil
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

// give puts a buffer C returned back in the ring; ids that are not out
// (a double return, garbage) are ignored rather than corrupting the ring.
func (p *pbufRing) give(bid uint32) bool {
	if int(bid) >= len(p.out) || !p.out[bid] {
		return false
	}
	p.out[bid] = false
	p.push(uint16(bid))
	p.publish()
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

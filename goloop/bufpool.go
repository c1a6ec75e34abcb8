package goloop

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// bufPool is the receive memory: one mmap'd region cut into equal buffers.
// It lives outside the Go heap, so C may read a buffer after Poll returns
// without Go's pointer rules getting in the way, and io_uring can own
// buffers through a provided-buffer ring.
type bufPool struct {
	mem   []byte
	size  int
	count int
	free  []uint32 // used by backends that pick buffers themselves (epoll)
}

func newBufPool(size, count int) (*bufPool, error) {
	if count <= 0 || count&(count-1) != 0 || count > 1<<15 {
		return nil, fmt.Errorf("goloop: buffer count %d is not a power of two <= 32768", count)
	}
	mem, err := unix.Mmap(-1, 0, size*count, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("goloop: mmap receive buffers: %w", err)
	}
	p := &bufPool{mem: mem, size: size, count: count, free: make([]uint32, 0, count)}
	for i := count - 1; i >= 0; i-- {
		p.free = append(p.free, uint32(i))
	}
	return p, nil
}

func (p *bufPool) buf(id uint32) []byte {
	off := int(id) * p.size
	return p.mem[off : off+p.size : off+p.size]
}

func (p *bufPool) addr(id uint32) uintptr {
	return uintptr(unsafe.Pointer(&p.mem[int(id)*p.size]))
}

func (p *bufPool) get() (uint32, bool) {
	n := len(p.free)
	if n == 0 {
		return 0, false
	}
	id := p.free[n-1]
	p.free = p.free[:n-1]
	return id, true
}

func (p *bufPool) put(id uint32) {
	if int(id) < p.count {
		p.free = append(p.free, id)
	}
}

func (p *bufPool) close() {
	if p.mem != nil {
		unix.Munmap(p.mem)
		p.mem = nil
	}
}

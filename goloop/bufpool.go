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
//
// A buffer may instead be backed by memory C lent (lend): C then hands the
// bytes the kernel wrote straight to the program, with no copy out, and
// gives the buffer back backed by fresh memory of its own. Lent memory is
// C's to keep alive and leave alone until the loop is closed or it lends
// that buffer other memory (docs/architecture.md, "Receive buffers").
type bufPool struct {
	mem   []byte
	size  int
	count int
	free  []uint32  // used by backends that pick buffers themselves (epoll)
	over  []uintptr // lent memory per buffer, 0: the pool's own (nil until a lend)
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
	if p.over != nil && p.over[id] != 0 {
		return unsafe.Slice((*byte)(unsafe.Pointer(p.over[id])), p.size)
	}
	off := int(id) * p.size
	return p.mem[off : off+p.size : off+p.size]
}

func (p *bufPool) addr(id uint32) uintptr {
	if p.over != nil && p.over[id] != 0 {
		return p.over[id]
	}
	return uintptr(unsafe.Pointer(&p.mem[int(id)*p.size]))
}

// lend backs buffer id with n bytes of C memory at ptr from now on. The
// buffer must be out of the kernel's and Go's hands (with C): the caller
// checks. A lend of any other size is refused: every buffer is size long.
func (p *bufPool) lend(id uint32, ptr uintptr, n uint32) bool {
	if int(id) >= p.count || ptr == 0 || int(n) != p.size {
		return false
	}
	if p.over == nil {
		p.over = make([]uintptr, p.count)
	}
	if p.over[id] == 0 {
		// The pool's own pages for this buffer are not used again: give
		// them back rather than keep them resident beside C's.
		off := int(id) * p.size
		unix.Madvise(p.mem[off:off+p.size], unix.MADV_DONTNEED)
	}
	p.over[id] = ptr
	return true
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

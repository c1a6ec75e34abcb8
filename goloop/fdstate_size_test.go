package goloop

import (
	"testing"
	"unsafe"
)

// TestFdStateSize: a held connection costs one fd state in Go's heap, and
// the memory target (RSS per idle connection no worse than
// uvloop's, docs/counts.md) was missed by about what these lost when urFd
// was packed and the sock ops moved behind a pointer. A field that pushes a
// state into the next size class has to be paid for somewhere else.
func TestFdStateSize(t *testing.T) {
	if n := unsafe.Sizeof(urFd{}); n > 256 {
		t.Errorf("urFd is %d bytes, over its 256-byte size class (fields are in size order: a new one goes with its size)", n)
	}
	if n := unsafe.Sizeof(epFd{}); n > 192 {
		t.Errorf("epFd is %d bytes, over its 192-byte size class", n)
	}
}

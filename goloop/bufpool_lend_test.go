package goloop

import (
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A stream buffer given back with memory of C's own (OpBufReturn with Ptr)
// is backed by that memory from then on: a later receive that takes the
// buffer lands there, with every byte of the stream in order, on both
// backends. A lend of the wrong size is refused and the buffer keeps its
// memory. The lent memory is mmap'd here, as C's would be outside Go's heap.
func TestBufReturnLendsMemory(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(c))
		lent := make(map[uint32][]byte) // buffer id -> the memory it was given
		var regions [][]byte
		defer func() {
			for _, r := range regions {
				unix.Munmap(r)
			}
		}()
		subs := []Sub{{Op: OpRecvStart, Fd: a, Token: 1}}
		out := make([]Comp, 64)
		next := 0   // next byte value the stream should carry
		landed := 0 // receives that came in lent memory
		size := uint32(0)
		for round := 0; round < 200 && landed < 8; round++ {
			msg := make([]byte, 1000)
			for i := range msg {
				msg[i] = byte((next + i) % 251)
			}
			if _, err := unix.Write(int(c), msg); err != nil {
				t.Fatal(err)
			}
			want := next + len(msg)
			for next < want {
				n, err := b.Poll(subs, out, 50*time.Millisecond)
				if err != nil {
					t.Fatal(err)
				}
				subs = nil
				for _, cp := range out[:n] {
					if cp.Kind != EvRecv || cp.Token != 1 || cp.Res <= 0 {
						t.Fatalf("unexpected completion %+v", cp)
					}
					if size == 0 {
						size = cp.Aux
					}
					if cp.Aux != size || size == 0 {
						t.Fatalf("EvRecv's Aux is %d, want the buffer size (%d)", cp.Aux, size)
					}
					if mem, ok := lent[cp.Buf]; ok {
						if cp.Ptr != uintptr(unsafe.Pointer(&mem[0])) {
							t.Fatalf("buffer %d received at %#x, not in the memory lent for it", cp.Buf, cp.Ptr)
						}
						landed++
					}
					chunk := unsafe.Slice((*byte)(unsafe.Pointer(cp.Ptr)), cp.Res)
					for i, v := range chunk {
						if v != byte((next+i)%251) {
							t.Fatalf("byte %d is %d, want %d", next+i, v, (next+i)%251)
						}
					}
					next += int(cp.Res)
					// Every buffer goes back with fresh memory: the one it
					// had is the program's now (C's bytes object).
					mem, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
					if err != nil {
						t.Fatal(err)
					}
					regions = append(regions, mem)
					lent[cp.Buf] = mem
					subs = append(subs, Sub{Op: OpBufReturn, Arg: cp.Buf, Ptr: uintptr(unsafe.Pointer(&mem[0])), Len: size})
				}
			}
		}
		if landed < 8 {
			t.Fatalf("only %d receives landed in lent memory", landed)
		}
		// A lend of the wrong size is refused, and that buffer leaves
		// circulation (its old memory may be the program's now): no later
		// receive lands in it.
		var held Comp
		for held.Res == 0 {
			if _, err := unix.Write(int(c), make([]byte, 100)); err != nil {
				t.Fatal(err)
			}
			got := collect(t, b, subs, hasKind(EvRecv, 1))
			subs = nil
			for _, cp := range got {
				if held.Res == 0 {
					held = cp
				} else {
					subs = append(subs, Sub{Op: OpBufReturn, Arg: cp.Buf})
				}
			}
		}
		bad := Sub{Op: OpBufReturn, Arg: held.Buf, Ptr: held.Ptr, Len: size + 1}
		subs = append(subs, bad)
		for i := 0; i < 64; i++ {
			if _, err := unix.Write(int(c), make([]byte, 100)); err != nil {
				t.Fatal(err)
			}
			got := collect(t, b, subs, hasKind(EvRecv, 1))
			subs = nil
			for _, cp := range got {
				if cp.Buf == held.Buf {
					t.Fatalf("buffer %d came back after a refused lend", held.Buf)
				}
				subs = append(subs, Sub{Op: OpBufReturn, Arg: cp.Buf})
			}
		}
		collect(t, b, append(subs, Sub{Op: OpClose, Fd: a, Token: 2}), hasKind(EvClosed, 2))
	})
}

package goloop

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// With ArgOnce, a receive takes one chunk per Poll on both backends, however
// much the socket holds, and an OpRecvStop in the next batch leaves the rest
// in the socket: a reader that pauses holds its peer back by the kernel's
// buffers, not by the loop's memory.
func TestRecvOnceTakesOneChunkPerPoll(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(c))
		if err := unix.SetsockoptInt(int(c), unix.SOL_SOCKET, unix.SO_SNDBUF, 1<<20); err != nil {
			t.Fatal(err)
		}
		msg := make([]byte, 512<<10)
		n, err := unix.Write(int(c), msg)
		if err != nil || n < 256<<10 {
			t.Fatalf("peer wrote %d, %v", n, err)
		}
		out := make([]Comp, 64)
		subs := []Sub{{Op: OpRecvStart, Fd: a, Token: 1, Arg: ArgOnce}}
		got := 0
		for poll := 0; poll < 3; poll++ {
			deadline := time.Now().Add(5 * time.Second)
			chunks := 0
			for chunks == 0 && time.Now().Before(deadline) {
				k, err := b.Poll(subs, out, 50*time.Millisecond)
				if err != nil {
					t.Fatal(err)
				}
				subs = nil
				for _, cp := range out[:k] {
					if cp.Kind != EvRecv || cp.Token != 1 || cp.Res <= 0 {
						t.Fatalf("unexpected completion %+v", cp)
					}
					chunks++
					got += int(cp.Res)
					subs = append(subs, Sub{Op: OpBufReturn, Arg: cp.Buf})
				}
			}
			if chunks != 1 {
				t.Fatalf("poll %d: %d chunks, want one", poll, chunks)
			}
		}
		// Stopped now: what the socket still holds stays there.
		collect(t, b, append(subs, Sub{Op: OpRecvStop, Fd: a, Token: 1}), func([]Comp) bool { return true })
		var left int
		if left, err = unix.IoctlGetInt(int(a), unix.SIOCINQ); err != nil {
			t.Fatal(err)
		}
		// (One more chunk may have left the socket before the stop: Go
		// holds it for the next OpRecvStart.)
		if left > n-got || left < n-got-(64<<10) {
			t.Fatalf("received %d, %d left in the socket, of %d sent", got, left, n)
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: a, Token: 2}}, hasKind(EvClosed, 2))
	})
}

package goloop

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// countKind polls until idle for a while and counts completions of kind for tok.
func drainCount(t *testing.T, b Backend, subs []Sub, kind uint8, tok uint64, settle time.Duration) (int, []Comp) {
	t.Helper()
	out := make([]Comp, 64)
	var all []Comp
	quiet := time.Now().Add(settle)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(quiet) && time.Now().Before(deadline) {
		n, err := b.Poll(subs, out, 5*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		subs = nil
		if n > 0 {
			quiet = time.Now().Add(settle)
		}
		all = append(all, out[:n]...)
	}
	c := 0
	for _, x := range all {
		if x.Kind == kind && x.Token == tok {
			c++
		}
	}
	return c, all
}

// A graceful close stuck behind a send the peer never reads becomes an
// abort: the send is cancelled and EvClosed comes once.
func TestCloseUpgradeStuck(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(c))
		big := make([]byte, 8<<20)
		subs := []Sub{
			{Op: OpSend, Fd: a, Token: 7, Ptr: ptrOf(big), Len: uint32(len(big))},
			{Op: OpClose, Fd: a, Token: 7},
		}
		n, _ := drainCount(t, b, subs, EvClosed, 7, 30*time.Millisecond)
		if n != 0 {
			t.Fatalf("graceful close finished with the peer not reading")
		}
		n, all := drainCount(t, b, []Sub{{Op: OpClose, Fd: a, Token: 7, Arg: CloseAbort | CloseUpgrade}}, EvClosed, 7, 30*time.Millisecond)
		if n != 1 {
			t.Fatalf("%d EvClosed after the upgrade: %+v", n, all)
		}
		for _, x := range all {
			if x.Kind == EvSend && x.Res != -int32(unix.ECANCELED) {
				t.Fatalf("send completion %+v", x)
			}
		}
	})
}

// An upgrade that comes after the graceful close ran does nothing, even
// when the fd number already belongs to a new socket.
func TestCloseUpgradeAfterDone(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(c))
		n, _ := drainCount(t, b, []Sub{{Op: OpClose, Fd: a, Token: 7}}, EvClosed, 7, 20*time.Millisecond)
		if n != 1 {
			t.Fatalf("%d EvClosed for the graceful close", n)
		}
		// Take the number again, as a new connection would.
		x, y := socketpair(t)
		defer unix.Close(int(y))
		defer unix.Close(int(x))
		if x != a && y != a {
			t.Skip("the fd number was not reused")
		}
		reused := x
		if y == a {
			reused = y
		}
		n, all := drainCount(t, b, []Sub{{Op: OpClose, Fd: reused, Token: 7, Arg: CloseAbort | CloseUpgrade}}, EvClosed, 7, 20*time.Millisecond)
		if n != 0 || len(all) != 0 {
			t.Fatalf("the upgrade acted: %+v", all)
		}
		if _, err := unix.Write(int(reused), []byte("x")); err != nil {
			t.Fatalf("the new socket was closed: %v", err)
		}
	})
}

// A graceful close that is under way (its cancellations in flight) when the
// upgrade arrives in the same batch still reports EvClosed exactly once.
func TestCloseUpgradeUnderWay(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(c))
		subs := []Sub{
			{Op: OpRecvStart, Fd: a, Token: 7},
			{Op: OpPollStart, Fd: c, Token: 8, Arg: PollIn},
		}
		drainCount(t, b, subs, EvClosed, 7, 10*time.Millisecond)
		subs = []Sub{
			{Op: OpRecvStop, Fd: a, Token: 7},
			{Op: OpClose, Fd: a, Token: 7},
			{Op: OpClose, Fd: a, Token: 7, Arg: CloseAbort | CloseUpgrade},
		}
		n, all := drainCount(t, b, subs, EvClosed, 7, 30*time.Millisecond)
		if n != 1 {
			t.Fatalf("%d EvClosed: %+v", n, all)
		}
		drainCount(t, b, []Sub{{Op: OpPollStop, Fd: c, Token: 8}}, EvClosed, 8, 5*time.Millisecond)
	})
}

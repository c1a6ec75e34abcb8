package goloop

import (
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// Faults the kernel will not produce on demand, injected where each backend
// learns a result (faults.go), must end the same way on both: a transient
// accept error leaves the listener serving, a failed send answers that send
// and the queue goes on, a failed receive ends receiving with the error.

// withFaults injects the errnos in plan, in order, at site; every other
// result is left alone. It returns how many were injected.
func withFaults(t *testing.T, site faultSite, plan ...unix.Errno) func() int {
	var mu sync.Mutex
	used := 0
	injectFault = func(s faultSite) unix.Errno {
		mu.Lock()
		defer mu.Unlock()
		if s != site || used >= len(plan) {
			return 0
		}
		used++
		return plan[used-1]
	}
	t.Cleanup(func() { injectFault = nil })
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return used
	}
}

func TestFaultAcceptTransientKeepsServing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		lfd, port := listenLoopback(t, 16)
		injected := withFaults(t, faultAccept, unix.EMFILE, unix.ENOMEM, unix.ENOBUFS)
		var clients []int
		for i := 0; i < 4; i++ {
			c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := unix.Connect(c, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
				t.Fatal(err)
			}
			clients = append(clients, c)
		}
		defer func() {
			for _, c := range clients {
				unix.Close(c)
			}
		}()
		subs := []Sub{{Op: OpAcceptStart, Fd: lfd, Token: 1}}
		var errs []int32
		accepted := 0
		collect(t, b, subs, func(cs []Comp) bool {
			errs, accepted = errs[:0], 0
			for _, x := range cs {
				if x.Kind != EvAccept {
					continue
				}
				if x.Flags&FlagMore == 0 {
					t.Fatalf("a transient error disarmed the listener: %+v", x)
				}
				if x.Res < 0 {
					errs = append(errs, x.Res)
				} else {
					accepted++
				}
			}
			return accepted >= 1 && len(errs) == 3
		})
		if injected() != 3 {
			t.Fatalf("injected %d faults", injected())
		}
		want := []int32{-int32(unix.EMFILE), -int32(unix.ENOMEM), -int32(unix.ENOBUFS)}
		for i := range want {
			if errs[i] != want[i] {
				t.Fatalf("errors %v, want %v", errs, want)
			}
		}
		// Every client is still accepted (the kernel's queue kept them, or
		// an injected fault closed the real fd: the client sees its end).
		got := collect(t, b, nil, func(cs []Comp) bool { return true })
		for _, x := range got {
			if x.Kind == EvAccept && x.Res >= 0 {
				unix.Close(int(x.Res))
			}
		}
		collect(t, b, []Sub{{Op: OpAcceptStop, Fd: lfd}, {Op: OpClose, Fd: lfd, Token: 2, Arg: CloseAbort}},
			hasKind(EvClosed, 2))
	})
}

func TestFaultSendAnswersThatSendAndGoesOn(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(c))
		withFaults(t, faultSend, unix.ENOBUFS)
		one, two := []byte("first"), []byte("second")
		subs := []Sub{
			{Op: OpSend, Fd: a, Token: 1, Ptr: ptrOf(one), Len: uint32(len(one))},
			{Op: OpSend, Fd: a, Token: 2, Ptr: ptrOf(two), Len: uint32(len(two))},
		}
		got := collect(t, b, subs, func(cs []Comp) bool { return hasKind(EvSend, 1)(cs) && hasKind(EvSend, 2)(cs) })
		res := map[uint64]int32{}
		for _, x := range got {
			if x.Kind == EvSend {
				res[x.Token] = x.Res
			}
		}
		if res[1] != -int32(unix.ENOBUFS) || res[2] != int32(len(two)) {
			t.Fatalf("send results %v: want ENOBUFS for the first, all of the second", res)
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: a, Token: 3}}, hasKind(EvClosed, 3))
	})
}

func TestFaultRecvEndsReceivingWithTheError(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(c))
		withFaults(t, faultRecv, unix.ENOMEM)
		unix.Write(int(c), []byte("data"))
		got := collect(t, b, []Sub{{Op: OpRecvStart, Fd: a, Token: 1}}, hasKind(EvRecv, 1))
		var last Comp
		var bufs []Sub
		for _, x := range got {
			if x.Kind == EvRecv {
				last = x
				if x.Res > 0 {
					bufs = append(bufs, Sub{Op: OpBufReturn, Arg: x.Buf})
				}
			}
		}
		if last.Res != -int32(unix.ENOMEM) || last.Flags&FlagMore != 0 {
			t.Fatalf("last receive %+v: want ENOMEM, disarmed", last)
		}
		collect(t, b, append(bufs, Sub{Op: OpClose, Fd: a, Token: 2}), hasKind(EvClosed, 2))
	})
}

// A provided-buffer ring running dry (ENOBUFS on io_uring) is not injected here: a
// fault replacing a completed receive would consume real bytes, which a dry ring
// never does. tests/test_reliability.py::test_receive_buffers_run_dry_and_recover
// makes the ring run dry for real.

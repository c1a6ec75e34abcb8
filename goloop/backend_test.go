package goloop

import (
	"bytes"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Every backend test runs on every backend this kernel offers: both must
// produce the same completions for the same submissions.
func forEachBackend(t *testing.T, fn func(t *testing.T, b Backend)) {
	for _, kind := range []string{"epoll", "io_uring"} {
		t.Run(kind, func(t *testing.T) {
			b, err := NewBackend(kind, Options{BufSize: 4096, BufCount: 16, Entries: 64})
			if err != nil {
				if kind == "io_uring" {
					t.Skipf("io_uring unavailable: %v", err)
				}
				t.Fatal(err)
			}
			defer b.Close()
			fn(t, b)
		})
	}
}

// collect polls until pred is satisfied by the completions gathered so far.
func collect(t *testing.T, b Backend, subs []Sub, pred func([]Comp) bool) []Comp {
	t.Helper()
	var got []Comp
	out := make([]Comp, 64)
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := b.Poll(subs, out, 50*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		subs = nil
		got = append(got, out[:n]...)
		if pred(got) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out; got %+v", got)
		}
	}
}

func socketpair(t *testing.T) (int32, int32) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return int32(fds[0]), int32(fds[1])
}

func hasKind(kind uint8, tok uint64) func([]Comp) bool {
	return func(cs []Comp) bool {
		for _, c := range cs {
			if c.Kind == kind && c.Token == tok {
				return true
			}
		}
		return false
	}
}

func ptrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

func TestRecvSendEOF(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(c))
		msg := []byte("hello goloop")
		subs := []Sub{
			{Op: OpRecvStart, Fd: a, Token: 1},
			{Op: OpSend, Fd: c, Token: 2, Ptr: ptrOf(msg), Len: uint32(len(msg))},
		}
		var data []byte
		var bufs []Sub
		got := collect(t, b, subs, func(cs []Comp) bool {
			data = data[:0]
			for _, x := range cs {
				if x.Kind == EvRecv && x.Res > 0 {
					data = append(data, unsafe.Slice((*byte)(unsafe.Pointer(x.Ptr)), x.Res)...)
				}
			}
			return len(data) >= len(msg)
		})
		if !bytes.Equal(data, msg) {
			t.Fatalf("got %q", data)
		}
		for _, x := range got {
			if x.Kind == EvRecv && x.Res > 0 {
				bufs = append(bufs, Sub{Op: OpBufReturn, Arg: x.Buf})
			}
		}
		if !hasKind(EvSend, 2)(got) {
			got = collect(t, b, nil, hasKind(EvSend, 2))
		}
		// The peer's close is end of stream: one EvRecv with Res 0.
		unix.Close(int(c))
		got = collect(t, b, bufs, func(cs []Comp) bool {
			for _, x := range cs {
				if x.Kind == EvRecv && x.Res == 0 {
					return true
				}
			}
			return false
		})
		collect(t, b, []Sub{{Op: OpClose, Fd: a, Token: 9}}, hasKind(EvClosed, 9))
	})
}

// A large send arrives whole and in order even though the socket buffer
// fills many times over, and exactly one EvSend answers each OpSend.
func TestLargeSendOrdered(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(c))
		big := make([]byte, 4<<20)
		for i := range big {
			big[i] = byte(i * 7)
		}
		half := len(big) / 2
		subs := []Sub{
			{Op: OpSend, Fd: a, Token: 1, Ptr: ptrOf(big), Len: uint32(half)},
			{Op: OpSend, Fd: a, Token: 2, Ptr: ptrOf(big[half:]), Len: uint32(len(big) - half)},
		}
		var recv []byte
		buf := make([]byte, 1<<16)
		sends := 0
		out := make([]Comp, 64)
		deadline := time.Now().Add(10 * time.Second)
		for sends < 2 || len(recv) < len(big) {
			n, err := b.Poll(subs, out, time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			subs = nil
			for _, x := range out[:n] {
				if x.Kind == EvSend {
					sends++
					if want := int32(half); x.Res != want {
						t.Fatalf("send %d: res %d want %d", x.Token, x.Res, want)
					}
					if uint64(sends) != x.Token {
						t.Fatalf("send %d completed out of order", x.Token)
					}
				}
			}
			for {
				m, err := unix.Read(int(c), buf)
				if m <= 0 || err != nil {
					break
				}
				recv = append(recv, buf[:m]...)
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out: %d sends, %d bytes", sends, len(recv))
			}
		}
		if !bytes.Equal(recv, big) {
			t.Fatal("data corrupted")
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: a, Token: 9}}, hasKind(EvClosed, 9))
	})
}

// An abort cancels the sends that have not gone out, then reports the close.
func TestAbortCancelsSends(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(c))
		big := make([]byte, 8<<20) // far more than the socket buffer holds
		subs := []Sub{
			{Op: OpSend, Fd: a, Token: 1, Ptr: ptrOf(big), Len: uint32(len(big))},
			{Op: OpClose, Fd: a, Token: 2, Arg: CloseAbort},
		}
		got := collect(t, b, subs, hasKind(EvClosed, 2))
		var send *Comp
		for i := range got {
			if got[i].Kind == EvSend {
				send = &got[i]
			}
			if got[i].Kind == EvClosed && send == nil {
				t.Fatal("EvClosed came before the cancelled send")
			}
		}
		if send == nil || send.Res != -int32(unix.ECANCELED) {
			t.Fatalf("send completion %+v", send)
		}
	})
}

func TestAcceptConnect(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			t.Fatal(err)
		}
		unix.Listen(lfd, 16)
		sa, _ := unix.Getsockname(lfd)
		port := sa.(*unix.SockaddrInet4).Port
		cfd, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		// struct sockaddr_in, built by hand as C builds it.
		raw := make([]byte, 16)
		raw[0] = unix.AF_INET
		raw[2], raw[3] = byte(port>>8), byte(port)
		raw[4], raw[5], raw[6], raw[7] = 127, 0, 0, 1
		subs := []Sub{
			{Op: OpAcceptStart, Fd: int32(lfd), Token: 1},
			{Op: OpConnect, Fd: int32(cfd), Token: 2, Ptr: ptrOf(raw), Len: 16},
		}
		got := collect(t, b, subs, func(cs []Comp) bool {
			return hasKind(EvAccept, 1)(cs) && hasKind(EvConnect, 2)(cs)
		})
		for _, x := range got {
			if x.Kind == EvConnect && x.Res != 0 {
				t.Fatalf("connect: %d", x.Res)
			}
			if x.Kind == EvAccept {
				if x.Res < 0 {
					t.Fatalf("accept: %d", x.Res)
				}
				unix.Close(int(x.Res))
			}
		}
		collect(t, b, []Sub{{Op: OpAcceptStop, Fd: int32(lfd)}, {Op: OpClose, Fd: int32(lfd), Token: 3}, {Op: OpClose, Fd: int32(cfd), Token: 4}},
			func(cs []Comp) bool { return hasKind(EvClosed, 3)(cs) && hasKind(EvClosed, 4)(cs) })
	})
}

func TestPollLevelTriggered(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(a))
		defer unix.Close(int(c))
		unix.Write(int(c), []byte("x"))
		subs := []Sub{{Op: OpPollStart, Fd: a, Token: 5, Arg: PollIn}}
		for round := 0; round < 3; round++ {
			got := collect(t, b, subs, hasKind(EvPoll, 5))
			subs = nil
			for _, x := range got {
				if x.Kind == EvPoll && x.Aux&PollIn == 0 {
					t.Fatalf("mask %x", x.Aux)
				}
			}
		}
		// After stop, nothing more for this token.
		out := make([]Comp, 8)
		b.Poll([]Sub{{Op: OpPollStop, Fd: a, Token: 5}}, out, 0)
		n, _ := b.Poll(nil, out, 20*time.Millisecond)
		for _, x := range out[:n] {
			if x.Token == 5 {
				t.Fatalf("EvPoll after stop: %+v", x)
			}
		}
	})
}

func TestWakeEndsWait(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		go func() {
			time.Sleep(20 * time.Millisecond)
			b.Wake()
		}()
		start := time.Now()
		out := make([]Comp, 8)
		if _, err := b.Poll(nil, out, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("wake did not end the wait (%v)", d)
		}
	})
}

// A timed wait never returns early: asyncio timers must not fire early.
func TestTimeoutNotEarly(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		out := make([]Comp, 8)
		start := time.Now()
		b.Poll(nil, out, 15*time.Millisecond+300*time.Microsecond)
		if d := time.Since(start); d < 15*time.Millisecond+300*time.Microsecond {
			t.Fatalf("returned after %v", d)
		}
	})
}

// Running out of receive buffers pauses receiving; giving them back resumes it.
func TestBufferExhaustion(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(c))
		total := 0
		chunk := make([]byte, 4096)
		var held []uint32
		subs := []Sub{{Op: OpRecvStart, Fd: a, Token: 1}}
		out := make([]Comp, 64)
		deadline := time.Now().Add(10 * time.Second)
		sent := 0
		for total < 64*4096 {
			if sent < 64*4096 {
				if n, _ := unix.Write(int(c), chunk); n > 0 {
					sent += n
				}
			}
			n, err := b.Poll(subs, out, time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			subs = nil
			for _, x := range out[:n] {
				if x.Kind == EvRecv {
					if x.Res <= 0 {
						t.Fatalf("recv ended: %d", x.Res)
					}
					total += int(x.Res)
					held = append(held, x.Buf)
				}
			}
			if len(held) > 16 {
				t.Fatalf("%d buffers out of a pool of 16", len(held))
			}
			if len(held) == 16 || (sent == 64*4096 && len(held) > 0) {
				for _, id := range held {
					subs = append(subs, Sub{Op: OpBufReturn, Arg: id})
				}
				held = held[:0]
			}
			if time.Now().After(deadline) {
				t.Fatalf("stalled at %d bytes", total)
			}
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: a, Token: 9}}, hasKind(EvClosed, 9))
	})
}

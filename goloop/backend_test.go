package goloop

import (
	"bytes"
	"math/rand"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Every backend test runs on every backend this kernel offers: both must
// produce the same completions for the same submissions.
func forEachBackend(t *testing.T, fn func(t *testing.T, b Backend)) {
	for _, kind := range []string{"epoll", "io_uring", "io_uring-pinned"} {
		t.Run(kind, func(t *testing.T) {
			if kind == "io_uring-pinned" {
				// io_uring bound to the one thread that polls it, as the
				// Python loop drives it (DEFER_TASKRUN where the kernel has it).
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				UringPinned = true
				kind = "io_uring"
			}
			b, err := NewBackend(kind, Options{BufSize: 4096, BufCount: 16, Entries: 64})
			UringPinned = false
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

// listenLoopback makes a listening TCP socket on 127.0.0.1 and returns it
// with its port.
func listenLoopback(t testing.TB, backlog int) (int32, int) {
	t.Helper()
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(lfd, backlog); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(lfd)
	return int32(lfd), sa.(*unix.SockaddrInet4).Port
}

// sockaddrIn builds struct sockaddr_in for 127.0.0.1:port as C would, in
// heap memory that outlives the submission.
func sockaddrIn(port int) []byte {
	raw := make([]byte, 16, 16+len(heapSink))
	raw[0] = unix.AF_INET
	raw[2], raw[3] = byte(port>>8), byte(port)
	raw[4], raw[5], raw[6], raw[7] = 127, 0, 0, 1
	heapSink = raw
	return raw
}

var heapSink []byte // makes test buffers escape: the kernel reads them later

func countKind(cs []Comp, kind uint8, tok uint64) int {
	n := 0
	for _, c := range cs {
		if c.Kind == kind && c.Token == tok {
			n++
		}
	}
	return n
}

// pollFor gathers what arrives during d (for asserting that nothing does).
func pollFor(t *testing.T, b Backend, subs []Sub, d time.Duration) []Comp {
	t.Helper()
	var got []Comp
	out := make([]Comp, 64)
	end := time.Now().Add(d)
	for {
		left := time.Until(end)
		if left < 0 {
			left = 0
		}
		n, err := b.Poll(subs, out, left)
		if err != nil {
			t.Fatal(err)
		}
		subs = nil
		got = append(got, out[:n]...)
		if left == 0 {
			return got
		}
	}
}

// Many connections queued on a listener all come out of one armed accept,
// each a distinct non-blocking close-on-exec fd, the accept still armed.
func TestMultishotAcceptMany(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		lfd, port := listenLoopback(t, 256)
		const n = 64
		for i := 0; i < n; i++ {
			c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(c)
			if err := unix.Connect(c, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil && err != unix.EINPROGRESS {
				t.Fatal(err)
			}
		}
		got := collect(t, b, []Sub{{Op: OpAcceptStart, Fd: lfd, Token: 7}}, func(cs []Comp) bool {
			return countKind(cs, EvAccept, 7) >= n
		})
		seen := map[int32]bool{}
		for _, c := range got {
			if c.Kind != EvAccept {
				continue
			}
			if c.Res < 0 || c.Flags&FlagMore == 0 || seen[c.Res] {
				t.Fatalf("accept %+v", c)
			}
			seen[c.Res] = true
			fl, _ := unix.FcntlInt(uintptr(c.Res), unix.F_GETFL, 0)
			fdfl, _ := unix.FcntlInt(uintptr(c.Res), unix.F_GETFD, 0)
			if fl&unix.O_NONBLOCK == 0 || fdfl&unix.FD_CLOEXEC == 0 {
				t.Fatalf("accepted fd flags %x %x", fl, fdfl)
			}
			unix.Close(int(c.Res))
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: lfd, Token: 7}}, hasKind(EvClosed, 7))
	})
}

// Closing an fd with receive, accept and poll armed ends with EvClosed, and
// nothing names its token afterwards, whatever happens to the peer.
func TestCloseWhileArmed(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(c))
		p, q := socketpair(t)
		defer unix.Close(int(q))
		lfd, port := listenLoopback(t, 16)
		unix.Write(int(c), []byte("early"))
		subs := []Sub{
			{Op: OpRecvStart, Fd: a, Token: 1},
			{Op: OpAcceptStart, Fd: lfd, Token: 2},
			{Op: OpPollStart, Fd: p, Token: 3, Arg: PollIn},
		}
		got := pollFor(t, b, subs, 10*time.Millisecond)
		var ret []Sub
		for _, x := range got {
			if x.Kind == EvRecv && x.Res > 0 {
				ret = append(ret, Sub{Op: OpBufReturn, Arg: x.Buf})
			}
		}
		unix.Write(int(c), []byte("late"))
		subs = append(ret,
			Sub{Op: OpClose, Fd: a, Token: 1},
			Sub{Op: OpClose, Fd: lfd, Token: 2, Arg: CloseAbort},
			Sub{Op: OpClose, Fd: p, Token: 3})
		got = collect(t, b, subs, func(cs []Comp) bool {
			return hasKind(EvClosed, 1)(cs) && hasKind(EvClosed, 2)(cs) && hasKind(EvClosed, 3)(cs)
		})
		// The peers keep going: data, a connection attempt, readability.
		unix.Write(int(c), []byte("after"))
		unix.Write(int(q), []byte("after"))
		cfd, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		defer unix.Close(cfd)
		unix.Connect(cfd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
		got = append(got, pollFor(t, b, nil, 30*time.Millisecond)...)
		closed := map[uint64]bool{}
		for _, x := range got {
			if closed[x.Token] {
				t.Fatalf("completion after EvClosed: %+v", x)
			}
			if x.Kind == EvClosed {
				if x.Res != 0 {
					t.Fatalf("close: %+v", x)
				}
				closed[x.Token] = true
			}
		}
	})
}

// A closed fd whose number comes back as a new socket starts afresh:
// nothing armed on the old one reaches the new one's token.
func TestStaleFdReuse(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(c))
		subs := []Sub{
			{Op: OpRecvStart, Fd: a, Token: 1},
			{Op: OpPollStart, Fd: a, Token: 2, Arg: PollIn | PollOut},
		}
		pollFor(t, b, subs, 5*time.Millisecond)
		unix.Write(int(c), []byte("old"))
		collect(t, b, []Sub{{Op: OpPollStop, Fd: a}, {Op: OpClose, Fd: a, Token: 3, Arg: CloseAbort}}, hasKind(EvClosed, 3))
		x, y := socketpair(t)
		defer unix.Close(int(y))
		// Put the new socket on the old number (the kernel usually has).
		if x != a {
			if err := unix.Dup3(int(x), int(a), unix.O_CLOEXEC); err != nil {
				t.Fatal(err)
			}
			unix.Close(int(x))
		}
		defer unix.Close(int(a))
		unix.Write(int(c), []byte("stale"))
		unix.Write(int(y), []byte("new"))
		var data []byte
		got := collect(t, b, []Sub{{Op: OpRecvStart, Fd: a, Token: 4}}, func(cs []Comp) bool {
			data = data[:0]
			for _, x := range cs {
				if x.Kind == EvRecv && x.Res > 0 {
					data = append(data, unsafe.Slice((*byte)(unsafe.Pointer(x.Ptr)), x.Res)...)
				}
			}
			return len(data) >= 3
		})
		got = append(got, pollFor(t, b, nil, 10*time.Millisecond)...)
		for _, x := range got {
			if x.Token != 4 {
				t.Fatalf("stale completion %+v", x)
			}
		}
		if string(data) != "new" {
			t.Fatalf("got %q", data)
		}
	})
}

func TestConnectRefused(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		// A bound socket that does not listen: connecting to it is refused.
		s, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(s)
		unix.Bind(s, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
		sa, _ := unix.Getsockname(s)
		raw := sockaddrIn(sa.(*unix.SockaddrInet4).Port)
		cfd, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		got := collect(t, b, []Sub{{Op: OpConnect, Fd: int32(cfd), Token: 1, Ptr: ptrOf(raw), Len: 16}}, hasKind(EvConnect, 1))
		for _, x := range got {
			if x.Kind == EvConnect && x.Res != -int32(unix.ECONNREFUSED) {
				t.Fatalf("connect: %d", x.Res)
			}
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: int32(cfd), Token: 2}}, hasKind(EvClosed, 2))
	})
}

// Wakes from many goroutines at once are never lost: each burst ends the
// wait it lands in, and the last one is seen however they interleave.
func TestWakeManyGoroutines(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		const workers, each = 16, 200
		var done atomic.Int32
		var wg sync.WaitGroup
		for i := 0; i < workers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := 0; j < each; j++ {
					if err := b.Wake(); err != nil {
						t.Error(err)
						return
					}
				}
				done.Add(1)
				b.Wake() // after the count: the loop below sees it
			}()
		}
		out := make([]Comp, 8)
		start := time.Now()
		for done.Load() < workers {
			if _, err := b.Poll(nil, out, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			if time.Since(start) > 5*time.Second {
				t.Fatal("a wake was lost")
			}
		}
		wg.Wait()
	})
}

// A second OpPollStart replaces the mask: no bit of the old mask is
// reported after it, and OpPollStop silences the fd.
func TestPollMaskChange(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(a))
		defer unix.Close(int(c))
		// Writable, not readable: a PollIn watch stays quiet.
		if got := pollFor(t, b, []Sub{{Op: OpPollStart, Fd: a, Token: 5, Arg: PollIn}}, 20*time.Millisecond); len(got) != 0 {
			t.Fatalf("EvPoll for an fd that is not readable: %+v", got)
		}
		got := collect(t, b, []Sub{{Op: OpPollStart, Fd: a, Token: 5, Arg: PollOut}}, hasKind(EvPoll, 5))
		for _, x := range got {
			if x.Aux != PollOut {
				t.Fatalf("mask %x, want PollOut", x.Aux)
			}
		}
		unix.Write(int(c), []byte("x"))
		got = collect(t, b, []Sub{{Op: OpPollStart, Fd: a, Token: 6, Arg: PollIn}}, hasKind(EvPoll, 6))
		got = append(got, pollFor(t, b, nil, 10*time.Millisecond)...)
		for _, x := range got {
			if x.Token != 6 || x.Aux != PollIn {
				t.Fatalf("after the mask change: %+v", x)
			}
		}
		if got := pollFor(t, b, []Sub{{Op: OpPollStop, Fd: a}}, 20*time.Millisecond); len(got) != 0 {
			t.Fatalf("EvPoll after stop: %+v", got)
		}
	})
}

// A signal that a handler catches ends an untimed wait, so Python can run
// its signal handlers.
func TestSignalEndsWait(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, unix.SIGUSR1)
		defer signal.Stop(sig)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid := unix.Gettid()
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			// Until the wait ends: one of these lands while it waits.
			tick := time.NewTicker(5 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					unix.Tgkill(unix.Getpid(), tid, unix.SIGUSR1)
				}
			}
		}()
		out := make([]Comp, 8)
		start := time.Now()
		if _, err := b.Poll(nil, out, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("signal did not end the wait (%v)", d)
		}
	})
}

// Chunks that arrive after OpRecvStop are not reported while stopped, and
// come first, in order, when receiving starts again.
func TestRecvStopStart(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(c))
		unix.Write(int(c), []byte("one"))
		got := collect(t, b, []Sub{{Op: OpRecvStart, Fd: a, Token: 1}}, hasKind(EvRecv, 1))
		var subs []Sub
		for _, x := range got {
			subs = append(subs, Sub{Op: OpBufReturn, Arg: x.Buf})
		}
		subs = append(subs, Sub{Op: OpRecvStop, Fd: a, Token: 1})
		pollFor(t, b, subs, 5*time.Millisecond)
		unix.Write(int(c), []byte("two"))
		if got := pollFor(t, b, nil, 20*time.Millisecond); len(got) != 0 {
			t.Fatalf("received while stopped: %+v", got)
		}
		unix.Write(int(c), []byte("three"))
		var data []byte
		collect(t, b, []Sub{{Op: OpRecvStart, Fd: a, Token: 2}}, func(cs []Comp) bool {
			data = data[:0]
			for _, x := range cs {
				if x.Kind != EvRecv || x.Token != 2 || x.Res <= 0 {
					t.Fatalf("unexpected %+v", x)
				}
				data = append(data, unsafe.Slice((*byte)(unsafe.Pointer(x.Ptr)), x.Res)...)
			}
			return len(data) >= len("twothree")
		})
		if string(data) != "twothree" {
			t.Fatalf("got %q", data)
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: a, Token: 9}}, hasKind(EvClosed, 9))
	})
}

// A stream far larger than the pool arrives whole and in order while C
// holds every buffer it gets for a while: receiving pauses when the pool
// runs dry and resumes when buffers come back, without an error.
func TestLargeStreamThroughSmallPool(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		const total = 2 << 20
		src := make([]byte, total)
		for i := range src {
			src[i] = byte(i*31 + i>>11)
		}
		writerDone := make(chan error, 1)
		go func() {
			defer unix.Close(int(c))
			for off := 0; off < total; {
				n, err := unix.Write(int(c), src[off:])
				if err == unix.EAGAIN {
					unix.Poll([]unix.PollFd{{Fd: c, Events: unix.POLLOUT}}, 1000)
					continue
				}
				if err != nil {
					writerDone <- err
					return
				}
				off += n
			}
			writerDone <- nil
		}()
		var recv []byte
		var held []uint32
		subs := []Sub{{Op: OpRecvStart, Fd: a, Token: 1}}
		out := make([]Comp, 64)
		deadline := time.Now().Add(20 * time.Second)
		eof := false
		for !eof {
			n, err := b.Poll(subs, out, 10*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			subs = nil
			for _, x := range out[:n] {
				if x.Kind != EvRecv {
					continue
				}
				if x.Res < 0 {
					t.Fatalf("recv error %d after %d bytes", x.Res, len(recv))
				}
				if x.Res == 0 {
					eof = true
					continue
				}
				recv = append(recv, unsafe.Slice((*byte)(unsafe.Pointer(x.Ptr)), x.Res)...)
				held = append(held, x.Buf)
			}
			// Hold buffers until the pool is dry, then give them all back.
			if len(held) == 16 || (n == 0 && len(held) > 0) {
				for _, id := range held {
					subs = append(subs, Sub{Op: OpBufReturn, Arg: id})
				}
				held = held[:0]
			}
			if time.Now().After(deadline) {
				t.Fatalf("stalled at %d bytes", len(recv))
			}
		}
		if err := <-writerDone; err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(recv, src) {
			t.Fatalf("stream corrupted (%d of %d bytes)", len(recv), total)
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: a, Token: 9}}, hasKind(EvClosed, 9))
	})
}

// A start and a stop in one batch read nothing: data already waiting stays
// in the socket and a pending connection stays in the backlog, where a
// select()-style reader (or the next start) finds them.
func TestStartStopSameBatch(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(a))
		defer unix.Close(int(c))
		unix.Write(int(c), []byte("waiting"))
		lfd, port := listenLoopback(t, 4)
		defer unix.Close(int(lfd))
		cfd, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		defer unix.Close(cfd)
		unix.Connect(cfd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
		unix.Poll([]unix.PollFd{{Fd: lfd, Events: unix.POLLIN}}, 5000)
		subs := []Sub{
			{Op: OpRecvStart, Fd: a, Token: 1},
			{Op: OpAcceptStart, Fd: lfd, Token: 2},
			{Op: OpRecvStop, Fd: a, Token: 1},
			{Op: OpAcceptStop, Fd: lfd, Token: 2},
		}
		if got := pollFor(t, b, subs, 20*time.Millisecond); len(got) != 0 {
			t.Fatalf("completions for stopped operations: %+v", got)
		}
		buf := make([]byte, 16)
		if n, err := unix.Read(int(a), buf); err != nil || string(buf[:n]) != "waiting" {
			t.Fatalf("socket lost its data: %q %v", buf[:n], err)
		}
		nfd, _, err := unix.Accept4(int(lfd), unix.SOCK_CLOEXEC)
		if err != nil {
			t.Fatalf("backlog lost its connection: %v", err)
		}
		unix.Close(nfd)
	})
}

// Pipes work like sockets: a send larger than the pipe completes whole
// once the reader drains it, chunks arrive in order, and the writer's
// close is end of stream for the reader.
func TestPipe(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		r, w := int32(p[0]), int32(p[1])
		src := make([]byte, 1<<20)
		for i := range src {
			src[i] = byte(i*13 + i>>9)
		}
		subs := []Sub{
			{Op: OpRecvStart, Fd: r, Token: 1},
			{Op: OpSend, Fd: w, Token: 2, Ptr: ptrOf(src), Len: uint32(len(src))},
			{Op: OpClose, Fd: w, Token: 3},
		}
		var recv []byte
		sent, closed, eof := false, false, false
		out := make([]Comp, 64)
		deadline := time.Now().Add(10 * time.Second)
		for !eof {
			n, err := b.Poll(subs, out, 10*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			subs = nil
			for _, x := range out[:n] {
				switch {
				case x.Kind == EvSend:
					if x.Res != int32(len(src)) || closed {
						t.Fatalf("send %+v (closed %v)", x, closed)
					}
					sent = true
				case x.Kind == EvClosed:
					if !sent || x.Res != 0 {
						t.Fatalf("close %+v (sent %v)", x, sent)
					}
					closed = true
				case x.Kind == EvRecv && x.Res > 0:
					recv = append(recv, unsafe.Slice((*byte)(unsafe.Pointer(x.Ptr)), x.Res)...)
					subs = append(subs, Sub{Op: OpBufReturn, Arg: x.Buf})
				case x.Kind == EvRecv:
					if x.Res < 0 {
						t.Fatalf("recv error %d", x.Res)
					}
					eof = true
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("stalled: %d bytes, sent %v closed %v", len(recv), sent, closed)
			}
		}
		if !closed || !bytes.Equal(recv, src) {
			t.Fatalf("closed %v, %d of %d bytes, equal %v", closed, len(recv), len(src), bytes.Equal(recv, src))
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: r, Token: 4}}, hasKind(EvClosed, 4))
	})
}

// Close gives back every fd and mapping the backend made, even with
// operations still armed and data received but not returned.
func TestCloseReleases(t *testing.T) {
	for _, kind := range []string{"epoll", "io_uring"} {
		t.Run(kind, func(t *testing.T) {
			a, c := socketpair(t)
			defer unix.Close(int(a))
			defer unix.Close(int(c))
			lfd, _ := listenLoopback(t, 4)
			defer unix.Close(int(lfd))
			count := func(dir string) int {
				ents, err := os.ReadDir(dir)
				if err != nil {
					t.Fatal(err)
				}
				return len(ents)
			}
			maps := func() int {
				b, err := os.ReadFile("/proc/self/maps")
				if err != nil {
					t.Fatal(err)
				}
				return bytes.Count(b, []byte("\n"))
			}
			fds0, maps0 := count("/proc/self/fd"), maps()
			b, err := NewBackend(kind, Options{BufSize: 4096, BufCount: 16, Entries: 64})
			if err != nil {
				t.Skip(err)
			}
			unix.Write(int(c), []byte("unread"))
			collect(t, b, []Sub{
				{Op: OpRecvStart, Fd: a, Token: 1},
				{Op: OpAcceptStart, Fd: lfd, Token: 2},
				{Op: OpPollStart, Fd: c, Token: 3, Arg: PollOut},
			}, hasKind(EvRecv, 1))
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			if fds, m := count("/proc/self/fd"), maps(); fds != fds0 || m > maps0 {
				t.Fatalf("fds %d -> %d, mappings %d -> %d", fds0, fds, maps0, m)
			}
		})
	}
}

// More completions than the CQ ring and the caller's array hold at once
// are all delivered, a few per call (a burst of connections on a backend
// with a 4-entry queue, read 3 at a time).
func TestCompletionBurst(t *testing.T) {
	for _, kind := range []string{"epoll", "io_uring"} {
		t.Run(kind, func(t *testing.T) {
			b, err := NewBackend(kind, Options{BufSize: 4096, BufCount: 16, Entries: 4})
			if err != nil {
				t.Skip(err)
			}
			defer b.Close()
			lfd, port := listenLoopback(t, 256)
			const n = 100
			for i := 0; i < n; i++ {
				c, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
				defer unix.Close(c)
				unix.Connect(c, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
			}
			subs := []Sub{{Op: OpAcceptStart, Fd: lfd, Token: 1}}
			out := make([]Comp, 3)
			seen := map[int32]bool{}
			deadline := time.Now().Add(10 * time.Second)
			for len(seen) < n {
				k, err := b.Poll(subs, out, 10*time.Millisecond)
				if err != nil {
					t.Fatal(err)
				}
				subs = nil
				for _, x := range out[:k] {
					if x.Kind != EvAccept || x.Res < 0 || seen[x.Res] {
						t.Fatalf("%+v", x)
					}
					seen[x.Res] = true // kept open: a closed number comes back
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d of %d accepted", len(seen), n)
				}
			}
			for fd := range seen {
				unix.Close(int(fd))
			}
			collect(t, b, []Sub{{Op: OpClose, Fd: lfd, Token: 2}}, hasKind(EvClosed, 2))
		})
	}
}

// A pinned ring belongs to the thread that polled it first: a Poll from
// another thread fails cleanly instead of racing it.
func TestPinnedSecondThread(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	UringPinned = true
	b, err := NewBackend("io_uring", Options{BufSize: 4096, BufCount: 16, Entries: 64})
	UringPinned = false
	if err != nil {
		t.Skip(err)
	}
	defer b.Close()
	if u := b.(*uringBackend); !u.pinned {
		t.Skip("kernel refused SINGLE_ISSUER|DEFER_TASKRUN")
	}
	out := make([]Comp, 8)
	if _, err := b.Poll(nil, out, 0); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error)
	go func() {
		runtime.LockOSThread() // a thread other than the test's, which is locked
		defer runtime.UnlockOSThread()
		a, c := socketpair(t)
		defer unix.Close(int(a))
		defer unix.Close(int(c))
		_, err := b.Poll([]Sub{{Op: OpRecvStart, Fd: a, Token: 1}}, out, 0)
		errc <- err
	}()
	if err := <-errc; err == nil {
		t.Fatal("Poll from a second thread succeeded")
	}
	if _, err := b.Poll(nil, out, 0); err != nil {
		t.Fatalf("owner thread after the refusal: %v", err)
	}
}

// A seeded random mix of operations on several connections at once
// (sends of every size, peer writes, receive paused and resumed, buffers
// held back and returned late, graceful and aborting closes) keeps the
// contract on both backends: every send answered once and in order, the
// bytes in order both ways, nothing after EvClosed.
func TestRandomOps(t *testing.T) {
	for seed := int64(1); seed <= 4; seed++ {
		forEachBackend(t, func(t *testing.T, b Backend) { randomOps(t, b, seed) })
	}
}

func randomOps(t *testing.T, b Backend, seed int64) {
	rng := rand.New(rand.NewSource(seed))
	pattern := make([]byte, 256<<10)
	rng.Read(pattern)
	type pair struct {
		a, c      int32
		tok       uint64
		recvOn    bool
		closing   bool
		aborted   bool
		sends     []uint32 // lengths of sends not yet answered, in order
		sentOff   int      // pattern offset of the next send
		wantOut   []byte   // what the peer must read, in order
		gotOut    []byte
		peerOff   int // pattern offset of the peer's next write
		wantIn    []byte
		gotIn     []byte
		peerShut  bool
		eof       bool
		closedTok map[uint64]bool
	}
	const npairs = 6
	nextTok := uint64(100)
	open := func() *pair {
		a, c := socketpair(t)
		nextTok++
		return &pair{a: a, c: c, tok: nextTok}
	}
	pairs := make([]*pair, npairs)
	var subs []Sub
	for i := range pairs {
		pairs[i] = open()
		pairs[i].recvOn = true
		subs = append(subs, Sub{Op: OpRecvStart, Fd: pairs[i].a, Token: pairs[i].tok})
	}
	closed := map[uint64]bool{}
	byTok := map[uint64]*pair{}
	for _, p := range pairs {
		byTok[p.tok] = p
	}
	var held []uint32
	// Large enough that no completion is left queued inside the backend
	// when a pause is submitted (C never pauses with completions unread).
	out := make([]Comp, 1024)
	buf := make([]byte, 64<<10)
	var nsend, nrecv, naborts, nbytes int
	deadline := time.Now().Add(20 * time.Second)
	finished := 0
	for round := 0; finished < 40; round++ {
		if time.Now().After(deadline) {
			t.Fatalf("seed %d: stuck after %d rounds, %d connections finished", seed, round, finished)
		}
		for i, p := range pairs {
			if p.closing {
				continue
			}
			switch r := rng.Intn(20); {
			case r < 5 && len(p.sends) < 8: // a send of any size
				n := 1 + rng.Intn(48<<10)
				if rng.Intn(4) == 0 {
					n = 1 + rng.Intn(64)
				}
				off := p.sentOff % (len(pattern) - n)
				subs = append(subs, Sub{Op: OpSend, Fd: p.a, Token: p.tok, Ptr: ptrOf(pattern[off:]), Len: uint32(n)})
				p.sends = append(p.sends, uint32(n))
				p.wantOut = append(p.wantOut, pattern[off:off+n]...)
				p.sentOff += n
			case r < 8 && !p.peerShut: // the peer writes
				n := 1 + rng.Intn(8<<10)
				off := p.peerOff % (len(pattern) - n)
				if m, _ := unix.Write(int(p.c), pattern[off:off+n]); m > 0 {
					p.wantIn = append(p.wantIn, pattern[off:off+m]...)
					p.peerOff += m
				}
			case r < 10: // pause or resume reading
				if p.recvOn {
					subs = append(subs, Sub{Op: OpRecvStop, Fd: p.a, Token: p.tok})
				} else if !p.eof {
					subs = append(subs, Sub{Op: OpRecvStart, Fd: p.a, Token: p.tok})
				}
				p.recvOn = !p.recvOn && !p.eof
			case r == 10 && rng.Intn(3) == 0 && !p.peerShut: // the peer ends its side
				unix.Shutdown(int(p.c), unix.SHUT_WR)
				p.peerShut = true
			case r == 11 && rng.Intn(2) == 0: // close, graceful or not
				p.closing = true
				p.aborted = rng.Intn(2) == 0
				arg := uint32(0)
				if p.aborted {
					arg = CloseAbort
				}
				subs = append(subs, Sub{Op: OpClose, Fd: p.a, Token: p.tok, Arg: arg})
			}
			_ = i
		}
		// Buffers go back late, in random order.
		if len(held) > 0 && (len(held) >= 12 || rng.Intn(3) == 0) {
			rng.Shuffle(len(held), func(i, j int) { held[i], held[j] = held[j], held[i] })
			k := 1 + rng.Intn(len(held))
			for _, id := range held[:k] {
				subs = append(subs, Sub{Op: OpBufReturn, Arg: id})
			}
			held = append(held[:0], held[k:]...)
		}
		n, err := b.Poll(subs, out, time.Duration(rng.Intn(2))*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		subs = subs[:0]
		for _, x := range out[:n] {
			if closed[x.Token] {
				t.Fatalf("seed %d: completion after EvClosed: %+v", seed, x)
			}
			p := byTok[x.Token]
			if p == nil {
				t.Fatalf("seed %d: unknown token: %+v", seed, x)
			}
			switch x.Kind {
			case EvSend:
				if len(p.sends) == 0 {
					t.Fatalf("seed %d: EvSend with no send pending: %+v", seed, x)
				}
				want := int32(p.sends[0])
				p.sends = p.sends[1:]
				nsend++
				nbytes += int(x.Res)
				if x.Res != want && !(p.aborted && x.Res == -int32(unix.ECANCELED)) {
					t.Fatalf("seed %d: send answered %d, want %d (aborted %v)", seed, x.Res, want, p.aborted)
				}
			case EvRecv:
				// A chunk may come after OpRecvStop (the contract allows
				// it: io_uring hands over held chunks when the pool runs
				// dry); it must still be the next bytes of the stream.
				switch {
				case x.Res > 0:
					nrecv++
					p.gotIn = append(p.gotIn, unsafe.Slice((*byte)(unsafe.Pointer(x.Ptr)), x.Res)...)
					held = append(held, x.Buf)
				case x.Res == 0:
					p.eof, p.recvOn = true, false
				default:
					t.Fatalf("seed %d: recv error %+v", seed, x)
				}
				if !bytes.Equal(p.gotIn, p.wantIn[:min(len(p.gotIn), len(p.wantIn))]) || len(p.gotIn) > len(p.wantIn) {
					t.Fatalf("seed %d: received bytes differ from what the peer wrote", seed)
				}
				if p.eof && (!p.peerShut || len(p.gotIn) != len(p.wantIn)) {
					t.Fatalf("seed %d: EOF after %d of %d bytes (peer shut %v)", seed, len(p.gotIn), len(p.wantIn), p.peerShut)
				}
			case EvClosed:
				if len(p.sends) != 0 || x.Res != 0 {
					t.Fatalf("seed %d: EvClosed %+v with %d sends unanswered", seed, x, len(p.sends))
				}
				closed[x.Token] = true
				// Everything sent reached the peer, in order (all of it
				// unless the close aborted).
				for {
					m, err := unix.Read(int(p.c), buf)
					if m <= 0 || err != nil {
						break
					}
					p.gotOut = append(p.gotOut, buf[:m]...)
				}
				if !bytes.Equal(p.gotOut, p.wantOut[:min(len(p.gotOut), len(p.wantOut))]) ||
					(!p.aborted && len(p.gotOut) != len(p.wantOut)) {
					t.Fatalf("seed %d: peer read %d bytes of %d, equal prefix %v (aborted %v)", seed,
						len(p.gotOut), len(p.wantOut), bytes.Equal(p.gotOut, p.wantOut[:min(len(p.gotOut), len(p.wantOut))]), p.aborted)
				}
				unix.Close(int(p.c))
				finished++
				if p.aborted {
					naborts++
				}
				np := open()
				np.recvOn = true
				byTok[np.tok] = np
				subs = append(subs, Sub{Op: OpRecvStart, Fd: np.a, Token: np.tok})
				for i := range pairs {
					if pairs[i] == p {
						pairs[i] = np
					}
				}
			}
		}
		// The peers read what arrived, so sends keep moving.
		for _, p := range pairs {
			for {
				m, err := unix.Read(int(p.c), buf)
				if m <= 0 || err != nil {
					break
				}
				p.gotOut = append(p.gotOut, buf[:m]...)
			}
		}
	}
	t.Logf("seed %d: %d sends (%d bytes), %d chunks received, %d closes (%d aborted)", seed, nsend, nbytes, nrecv, finished, naborts)
	var closing []Sub
	for _, p := range pairs {
		if !p.closing {
			closing = append(closing, Sub{Op: OpClose, Fd: p.a, Token: p.tok, Arg: CloseAbort})
		}
	}
	for _, id := range held {
		closing = append(closing, Sub{Op: OpBufReturn, Arg: id})
	}
	collect(t, b, closing, func(cs []Comp) bool {
		for _, p := range pairs {
			if !closed[p.tok] && !hasKind(EvClosed, p.tok)(cs) {
				return false
			}
		}
		return true
	})
	for _, p := range pairs {
		unix.Close(int(p.c))
	}
}

// A Wake after Close (a goroutine posting a late result) fails instead of
// writing into whatever file took the eventfd's number.
func TestWakeAfterClose(t *testing.T) {
	for _, kind := range []string{"epoll", "io_uring"} {
		t.Run(kind, func(t *testing.T) {
			b, err := NewBackend(kind, Options{BufSize: 4096, BufCount: 16, Entries: 64})
			if err != nil {
				t.Skip(err)
			}
			var evfd int
			switch x := b.(type) {
			case *epollBackend:
				evfd = x.wk.fd
			case *uringBackend:
				evfd = x.wk.fd
			}
			b.Close()
			var p [2]int
			if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
				t.Fatal(err)
			}
			// Another file now has the number: the pipe's write end.
			if p[0] == evfd {
				r, err := unix.Dup(p[0])
				if err != nil {
					t.Fatal(err)
				}
				unix.Close(p[0])
				p[0] = r
			}
			if p[1] != evfd {
				if err := unix.Dup3(p[1], evfd, unix.O_CLOEXEC); err != nil {
					t.Fatal(err)
				}
				defer unix.Close(evfd)
			}
			defer unix.Close(p[0])
			defer unix.Close(p[1])
			if err := b.Wake(); err == nil {
				t.Error("Wake after Close succeeded")
			}
			if n, _ := unix.Read(p[0], make([]byte, 16)); n > 0 {
				t.Fatalf("Wake after Close wrote %d bytes into another file", n)
			}
		})
	}
}

// Chunks that paused connections hold do not keep the pool from an active
// one: when it runs dry, they go to C (which may get chunks after
// OpRecvStop and holds them), and their buffers come back.
func TestUringHeldChunksDoNotStarve(t *testing.T) {
	be, err := NewBackend("io_uring", Options{BufSize: 4096, BufCount: 16, Entries: 64})
	if err != nil {
		t.Skip(err)
	}
	defer be.Close()
	b := be.(*uringBackend)
	type conn struct{ a, c int32 }
	var paused []conn
	defer func() {
		for _, p := range paused {
			unix.Close(int(p.a))
			unix.Close(int(p.c))
		}
	}()
	// Sixteen connections each got a chunk just as they paused: the backend
	// holds it, and with it a buffer of the pool.
	for i := 0; i < 16; i++ {
		a, c := socketpair(t)
		paused = append(paused, conn{a, c})
		unix.Write(int(c), []byte{byte('a' + i)})
		tok := uint64(10 + i)
		got := collect(t, b, []Sub{{Op: OpRecvStart, Fd: a, Token: tok}}, hasKind(EvRecv, tok))
		pollFor(t, b, []Sub{{Op: OpRecvStop, Fd: a, Token: tok}}, time.Millisecond)
		f := b.state(a)
		f.recvTok = tok
		for _, x := range got {
			// As onRecv keeps a chunk that raced the stop.
			f.held = append(f.held, x)
			b.heldChunks++
		}
	}
	if b.pbuf.inRing != 0 {
		t.Fatalf("%d buffers still in the ring", b.pbuf.inRing)
	}
	// An active connection must still receive.
	a, c := socketpair(t)
	defer unix.Close(int(a))
	defer unix.Close(int(c))
	unix.Write(int(c), []byte("active"))
	subs := []Sub{{Op: OpRecvStart, Fd: a, Token: 1}}
	released := 0
	collect(t, b, subs, func(cs []Comp) bool {
		subs = subs[:0]
		for _, x := range cs[released:] {
			if x.Kind == EvRecv && x.Token != 1 {
				released++
				be.Poll([]Sub{{Op: OpBufReturn, Arg: x.Buf}}, nil, 0)
			}
		}
		return hasKind(EvRecv, 1)(cs)
	})
	if released != 16 {
		t.Fatalf("%d held chunks released, want 16", released)
	}
}

// A connect given up with OpConnectStop answers at once with -ECANCELED and
// nothing else; its owner closes the fd, and a new socket that gets the same
// number connects on its own (under io_uring the stopped connect's CQE may
// still be on its way, and must not be taken for the new one's).
func TestConnectStop(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		// A listener whose accept queue is full drops SYNs: a connect to it waits.
		l, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(l)
		unix.Bind(l, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
		unix.Listen(l, 0)
		sa, _ := unix.Getsockname(l)
		full := sockaddrIn(sa.(*unix.SockaddrInet4).Port)
		var fillers []int
		defer func() {
			for _, f := range fillers {
				unix.Close(f)
			}
		}()
		pending := -1
		for i := 0; i < 8 && pending < 0; i++ {
			fd, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			err := unix.Connect(fd, sa)
			if err == unix.EINPROGRESS {
				// Is it really stuck? Give the handshake a moment.
				var pfd = []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
				if n, _ := unix.Poll(pfd, 50); n == 0 {
					unix.Close(fd)
					pending = i
					break
				}
			}
			fillers = append(fillers, fd)
		}
		if pending < 0 {
			t.Skip("could not fill the listener's accept queue")
		}
		cfd, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if _, err := b.Poll([]Sub{{Op: OpConnect, Fd: int32(cfd), Token: 1, Ptr: ptrOf(full), Len: 16}}, make([]Comp, 8), 0); err != nil {
			t.Fatal(err)
		}
		got := collect(t, b, []Sub{{Op: OpConnectStop, Fd: int32(cfd), Token: 1}}, hasKind(EvConnect, 1))
		for _, x := range got {
			if x.Token == 1 && x.Res != -int32(unix.ECANCELED) {
				t.Fatalf("stopped connect: %d", x.Res)
			}
		}
		unix.Close(cfd)

		// The same number again, connecting to a listener that accepts.
		nfd, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if nfd != cfd {
			t.Fatalf("fd number not reused (%d, %d)", cfd, nfd)
		}
		ok, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		defer unix.Close(ok)
		unix.Bind(ok, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
		unix.Listen(ok, 8)
		sa2, _ := unix.Getsockname(ok)
		good := sockaddrIn(sa2.(*unix.SockaddrInet4).Port)
		got = collect(t, b, []Sub{{Op: OpConnect, Fd: int32(nfd), Token: 2, Ptr: ptrOf(good), Len: 16}}, hasKind(EvConnect, 2))
		for _, x := range got {
			if x.Token == 1 {
				t.Fatalf("a completion for the stopped connect after its EvConnect: %+v", x)
			}
			if x.Token == 2 && x.Kind == EvConnect && x.Res != 0 {
				t.Fatalf("new connect: %d", x.Res)
			}
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: int32(nfd), Token: 3}}, hasKind(EvClosed, 3))
	})
}

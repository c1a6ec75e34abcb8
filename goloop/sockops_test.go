package goloop

import (
	"bytes"
	"crypto/sha256"
	"math/rand"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// heapBuf is memory that stays put while the kernel or Go writes into it
// through a uintptr: a small make() the compiler could keep on the
// goroutine's stack, which moves when the stack grows.
var heapBufs [][]byte

func heapBuf(n int) []byte {
	b := make([]byte, n)
	heapBufs = append(heapBufs, b)
	return b
}

func sockComp(cs []Comp, tok uint64) (Comp, bool) {
	for _, c := range cs {
		if c.Kind == EvSock && c.Token == tok {
			return c, true
		}
	}
	return Comp{}, false
}

// A receive the socket can serve is answered in the Poll call that carries
// it, without waiting (loop.sock_recv's "try at once").
func TestSockRecvAtOnceThenOnReadiness(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(a))
		defer unix.Close(int(c))
		unix.Write(int(c), []byte("now"))
		buf := heapBuf(16)
		out := make([]Comp, 8)
		n, err := b.Poll([]Sub{{Op: OpSockRecv, Fd: a, Token: 1, Ptr: ptrOf(buf), Len: 16}}, out, 0)
		if err != nil || n != 1 || out[0].Kind != EvSock || out[0].Res != 3 || string(buf[:3]) != "now" {
			t.Fatalf("at once: %d %v %+v", n, err, out[:n])
		}
		n, _ = b.Poll([]Sub{{Op: OpSockRecv, Fd: a, Token: 2, Ptr: ptrOf(buf), Len: 16}}, out, 0)
		if n != 0 {
			t.Fatalf("nothing to read yet: %+v", out[:n])
		}
		unix.Write(int(c), []byte("later"))
		cs := collect(t, b, nil, hasKind(EvSock, 2))
		if r, _ := sockComp(cs, 2); r.Res != 5 || string(buf[:5]) != "later" {
			t.Fatalf("later: %+v %q", cs, buf)
		}
		unix.Close(int(c))
		cs = collect(t, b, []Sub{{Op: OpSockRecv, Fd: a, Token: 3, Ptr: ptrOf(buf), Len: 16}}, hasKind(EvSock, 3))
		if r, _ := sockComp(cs, 3); r.Res != 0 {
			t.Fatalf("end of stream: %+v", cs)
		}
		runtime.KeepAlive(buf)
	})
}

// A stop that arrives in the same batch as the data (the data is already
// in the socket when Poll runs, and an armed readiness wait would report
// it) reads nothing: the bytes stay in the socket for the next reader.
func TestSockRecvStopReadsNothing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(a))
		defer unix.Close(int(c))
		buf := heapBuf(16)
		out := make([]Comp, 8)
		if n, _ := b.Poll([]Sub{{Op: OpSockRecv, Fd: a, Token: 1, Ptr: ptrOf(buf), Len: 16}}, out, 0); n != 0 {
			t.Fatalf("%+v", out[:n])
		}
		unix.Write(int(c), []byte("keep"))
		time.Sleep(10 * time.Millisecond) // let an armed poll complete in the kernel
		n, _ := b.Poll([]Sub{{Op: OpSockStop, Fd: a, Token: 1}}, out, 0)
		if n != 1 || out[0].Kind != EvSock || out[0].Token != 1 || out[0].Res != -int32(unix.ECANCELED) {
			t.Fatalf("stop: %+v", out[:n])
		}
		// Nothing more comes for it, and nothing was read.
		n, _ = b.Poll(nil, out, 20*time.Millisecond)
		if n != 0 {
			t.Fatalf("after stop: %+v", out[:n])
		}
		got := heapBuf(16)
		k, err := unix.Read(int(a), got)
		if err != nil || string(got[:k]) != "keep" || buf[0] != 0 {
			t.Fatalf("left in the socket: %q %v; written: %q", got[:k], err, buf)
		}
		// A second stop for the same token is a no-op.
		if n, _ := b.Poll([]Sub{{Op: OpSockStop, Fd: a, Token: 1}}, out, 0); n != 0 {
			t.Fatalf("second stop: %+v", out[:n])
		}
	})
}

// One receive per fd, as asyncio's one reader per fd: a second replaces
// the first, which is answered with -ECANCELED and reads nothing.
func TestSockRecvReplaced(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(a))
		defer unix.Close(int(c))
		b1, b2 := heapBuf(8), heapBuf(8)
		out := make([]Comp, 8)
		b.Poll([]Sub{{Op: OpSockRecv, Fd: a, Token: 1, Ptr: ptrOf(b1), Len: 8}}, out, 0)
		n, _ := b.Poll([]Sub{{Op: OpSockRecv, Fd: a, Token: 2, Ptr: ptrOf(b2), Len: 8}}, out, 0)
		if n != 1 || out[0].Token != 1 || out[0].Res != -int32(unix.ECANCELED) {
			t.Fatalf("replaced: %+v", out[:n])
		}
		unix.Write(int(c), []byte("two"))
		cs := collect(t, b, nil, hasKind(EvSock, 2))
		if r, _ := sockComp(cs, 2); r.Res != 3 || string(b2[:3]) != "two" || b1[0] != 0 {
			t.Fatalf("%+v %q %q", cs, b1, b2)
		}
	})
}

func bigPair(t *testing.T) (int32, int32) {
	a, c := socketpair(t)
	for _, fd := range []int32{a, c} {
		unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 4096)
		unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4096)
	}
	return a, c
}

// A send larger than the socket takes goes on as the peer reads, slowly,
// and every byte arrives in order.
func TestSockSendLargeSlowPeer(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := bigPair(t)
		defer unix.Close(int(a))
		defer unix.Close(int(c))
		data := heapBuf(3 << 20)
		rand.New(rand.NewSource(1)).Read(data)
		want := sha256.Sum256(data)
		done := make(chan [32]byte)
		go func() {
			h := sha256.New()
			buf := heapBuf(64 << 10)
			total := 0
			for total < len(data) {
				n, err := unix.Read(int(c), buf)
				if err == unix.EAGAIN {
					time.Sleep(100 * time.Microsecond)
					continue
				}
				if err != nil || n == 0 {
					break
				}
				h.Write(buf[:n])
				total += n
			}
			var s [32]byte
			copy(s[:], h.Sum(nil))
			done <- s
		}()
		cs := collect(t, b, []Sub{{Op: OpSockSend, Fd: a, Token: 7, Ptr: ptrOf(data), Len: uint32(len(data))}},
			hasKind(EvSock, 7))
		if r, _ := sockComp(cs, 7); r.Res != int32(len(data)) {
			t.Fatalf("%+v", cs)
		}
		if got := <-done; got != want {
			t.Fatal("checksum differs")
		}
		runtime.KeepAlive(data)
	})
}

// A send stopped midway says how far it got (Aux) and sends nothing more.
func TestSockSendStopMidway(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := bigPair(t)
		defer unix.Close(int(a))
		defer unix.Close(int(c))
		data := bytes.Repeat([]byte("x"), 1<<20)
		out := make([]Comp, 8)
		if n, _ := b.Poll([]Sub{{Op: OpSockSend, Fd: a, Token: 3, Ptr: ptrOf(data), Len: uint32(len(data))}}, out, 0); n != 0 {
			t.Fatalf("%+v", out[:n])
		}
		n, _ := b.Poll([]Sub{{Op: OpSockStop, Fd: a, Token: 3}}, out, 0)
		if n != 1 || out[0].Res != -int32(unix.ECANCELED) || out[0].Aux == 0 || out[0].Aux >= uint32(len(data)) {
			t.Fatalf("stop: %+v", out[:n])
		}
		sent := int(out[0].Aux)
		total := 0
		buf := heapBuf(64 << 10)
		for i := 0; i < 100; i++ {
			b.Poll(nil, out, time.Millisecond)
			for {
				k, err := unix.Read(int(c), buf)
				if k <= 0 || err != nil {
					break
				}
				total += k
			}
		}
		if total != sent {
			t.Fatalf("peer read %d, stop said %d", total, sent)
		}
		runtime.KeepAlive(data)
	})
}

// A peer's reset is the receive's -ECONNRESET; a send to a closed peer
// -EPIPE, never SIGPIPE.
func TestSockErrors(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		lfd, port := listenLoopback(t, 4)
		defer unix.Close(int(lfd))
		cfd, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
		unix.Connect(cfd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
		var sfd int
		for i := 0; i < 100; i++ {
			var err error
			if sfd, _, err = unix.Accept(int(lfd)); err == nil {
				break
			}
			time.Sleep(time.Millisecond)
		}
		unix.SetNonblock(sfd, true)
		defer unix.Close(sfd)
		buf := heapBuf(8)
		out := make([]Comp, 8)
		b.Poll([]Sub{{Op: OpSockRecv, Fd: int32(sfd), Token: 1, Ptr: ptrOf(buf), Len: 8}}, out, 0)
		unix.SetsockoptLinger(cfd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		unix.Close(cfd)
		cs := collect(t, b, nil, hasKind(EvSock, 1))
		if r, _ := sockComp(cs, 1); r.Res != -int32(unix.ECONNRESET) {
			t.Fatalf("reset: %+v", cs)
		}
		x, y := socketpair(t)
		defer unix.Close(int(x))
		unix.Close(int(y))
		cs = collect(t, b, []Sub{{Op: OpSockSend, Fd: x, Token: 2, Ptr: ptrOf(buf), Len: 8}}, hasKind(EvSock, 2))
		if r, _ := sockComp(cs, 2); r.Res != -int32(unix.EPIPE) {
			t.Fatalf("epipe: %+v", cs)
		}
		runtime.KeepAlive(buf)
	})
}

// An accept waits for a connection, takes it with the peer's address, and
// a stopped one leaves the next connection in the backlog.
func TestSockAccept(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		lfd, port := listenLoopback(t, 8)
		defer unix.Close(int(lfd))
		name := heapBuf(128)
		out := make([]Comp, 8)
		if n, _ := b.Poll([]Sub{{Op: OpSockAccept, Fd: lfd, Token: 1, Ptr: ptrOf(name), Len: 128}}, out, 0); n != 0 {
			t.Fatalf("nothing to accept yet: %+v", out[:n])
		}
		c1, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		defer unix.Close(c1)
		if err := unix.Connect(c1, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			t.Fatal(err)
		}
		cs := collect(t, b, nil, hasKind(EvSock, 1))
		r, _ := sockComp(cs, 1)
		if r.Res <= 0 || r.Aux != 16 {
			t.Fatalf("accept: %+v", cs)
		}
		sa, _ := unix.Getsockname(c1)
		if port := int(name[2])<<8 | int(name[3]); port != sa.(*unix.SockaddrInet4).Port {
			t.Fatalf("peer port %d, want %d (%v)", port, sa.(*unix.SockaddrInet4).Port, name[:16])
		}
		if fl, _ := unix.FcntlInt(uintptr(r.Res), unix.F_GETFL, 0); fl&unix.O_NONBLOCK == 0 {
			t.Fatal("accepted fd is blocking")
		}
		unix.Close(int(r.Res))

		b.Poll([]Sub{{Op: OpSockAccept, Fd: lfd, Token: 2, Ptr: ptrOf(name), Len: 128}}, out, 0)
		n, _ := b.Poll([]Sub{{Op: OpSockStop, Fd: lfd, Token: 2}}, out, 0)
		if n != 1 || out[0].Res != -int32(unix.ECANCELED) {
			t.Fatalf("stop: %+v", out[:n])
		}
		c2, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		defer unix.Close(c2)
		unix.Connect(c2, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
		if n, _ := b.Poll(nil, out, 20*time.Millisecond); n != 0 {
			t.Fatalf("after stop: %+v", out[:n])
		}
		nfd, _, err := unix.Accept(int(lfd))
		if err != nil {
			t.Fatalf("the connection should wait in the backlog: %v", err)
		}
		unix.Close(nfd)
		runtime.KeepAlive(name)
	})
}

// A datagram and its source address, and one sent to an address.
func TestSockRecvFromSendTo(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		udp := func() (int32, *unix.SockaddrInet4) {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK, 0)
			if err != nil {
				t.Fatal(err)
			}
			unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
			sa, _ := unix.Getsockname(fd)
			return int32(fd), sa.(*unix.SockaddrInet4)
		}
		a, aAddr := udp()
		c, cAddr := udp()
		defer unix.Close(int(a))
		defer unix.Close(int(c))
		data := heapBuf(64)
		_, rblk := sendtoSub(a, 0, data, 0) // a block in C-like memory
		rblk.len = 64
		out := make([]Comp, 8)
		if n, _ := b.Poll([]Sub{{Op: OpSockRecvFrom, Fd: a, Token: 1, Ptr: uintptr(unsafe.Pointer(rblk))}}, out, 0); n != 0 {
			t.Fatalf("nothing yet: %+v", out[:n])
		}
		msg := heapBuf(5)
		copy(msg, "hello")
		_, sblk := sendtoSub(c, 0, msg, aAddr.Port)
		cs := collect(t, b, []Sub{{Op: OpSockSendTo, Fd: c, Token: 2, Ptr: uintptr(unsafe.Pointer(sblk))}},
			func(cs []Comp) bool { return hasKind(EvSock, 1)(cs) && hasKind(EvSock, 2)(cs) })
		if r, _ := sockComp(cs, 2); r.Res != 5 {
			t.Fatalf("sendto: %+v", cs)
		}
		r, _ := sockComp(cs, 1)
		port := int(rblk.name[2])<<8 | int(rblk.name[3])
		if r.Res != 5 || r.Aux != 16 || string(data[:5]) != "hello" || port != cAddr.Port {
			t.Fatalf("recvfrom: %+v %q port %d want %d", cs, data[:5], port, cAddr.Port)
		}
	})
}

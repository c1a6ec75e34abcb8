package goloop

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Datagram receive and sendto (dgram.go) on every backend: the same records
// for the same datagrams.

func udpSocket(t *testing.T) (int32, int) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	return int32(fd), sa.(*unix.SockaddrInet4).Port
}

// dgramOf reads an EvDgram's payload and source port (AF_INET).
func dgramOf(t *testing.T, c Comp) ([]byte, int) {
	t.Helper()
	if c.Buf&DgramBufBit == 0 {
		t.Fatalf("datagram buffer id without DgramBufBit: %+v", c)
	}
	data := append([]byte{}, unsafe.Slice((*byte)(unsafe.Pointer(c.Ptr)), c.Res)...)
	port := 0
	if c.Aux >= 4 {
		name := unsafe.Slice((*byte)(unsafe.Pointer(c.Ptr-DgramNameCap)), c.Aux)
		if fam := binary.NativeEndian.Uint16(name); fam == unix.AF_INET {
			port = int(name[2])<<8 | int(name[3])
		}
	}
	return data, port
}

// cMemory stands for C memory: gl_sendto blocks live outside Go's heap.
var cMemory []byte

// sendto builds a gl_sendto block as C would, outside the Go heap; the data
// must stay alive until its EvSend.
func sendtoSub(fd int32, tok uint64, data []byte, port int) (Sub, *sendtoBlock) {
	size := int(unsafe.Sizeof(sendtoBlock{}))
	if len(cMemory) < size {
		m, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			panic(err)
		}
		cMemory = m
	}
	blk := (*sendtoBlock)(unsafe.Pointer(&cMemory[0]))
	cMemory = cMemory[size:]
	*blk = sendtoBlock{len: uint32(len(data))}
	if len(data) > 0 {
		blk.data = ptrOf(data)
	}
	if port > 0 {
		copy(blk.name[:], sockaddrIn(port))
		blk.namelen = 16
	}
	return Sub{Op: OpSendTo, Fd: fd, Token: tok, Ptr: uintptr(unsafe.Pointer(blk)), Len: uint32(len(data)), Arg: blk.namelen}, blk
}

func dgrams(cs []Comp, tok uint64) []Comp {
	var out []Comp
	for _, c := range cs {
		if c.Kind == EvDgram && c.Token == tok {
			out = append(out, c)
		}
	}
	return out
}

func returns(cs []Comp) []Sub {
	var subs []Sub
	for _, c := range cs {
		if c.Kind == EvDgram && c.Res >= 0 {
			subs = append(subs, Sub{Op: OpBufReturn, Arg: c.Buf})
		}
	}
	return subs
}

// Datagrams arrive whole with their source address: an empty one, a small
// one, and one of 65507 bytes (larger than a stream buffer); sendto reaches
// the address it names.
func TestDgramRecvAndSendTo(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, aport := udpSocket(t)
		peer, pport := udpSocket(t)
		defer unix.Close(int(peer))
		big := bytes.Repeat([]byte("0123456789abcdef"), 65507/16+1)[:65507]
		to := &unix.SockaddrInet4{Port: aport, Addr: [4]byte{127, 0, 0, 1}}
		collect(t, b, []Sub{{Op: OpDgramRecvStart, Fd: a, Token: 1}}, func([]Comp) bool { return true })
		for _, m := range [][]byte{{}, []byte("hello"), big} {
			if err := unix.Sendto(int(peer), m, 0, to); err != nil {
				t.Fatal(err)
			}
		}
		got := collect(t, b, nil, func(cs []Comp) bool { return len(dgrams(cs, 1)) >= 3 })
		ds := dgrams(got, 1)
		for i, want := range [][]byte{{}, []byte("hello"), big} {
			data, port := dgramOf(t, ds[i])
			if !bytes.Equal(data, want) || port != pport || ds[i].Flags&FlagMore == 0 {
				t.Fatalf("datagram %d: %d bytes from port %d (want %d from %d), flags %x",
					i, len(data), port, len(want), pport, ds[i].Flags)
			}
		}
		msg := []byte("reply")
		sub, blk := sendtoSub(a, 2, msg, pport)
		subs := append(returns(got), sub)
		got = collect(t, b, subs, hasKind(EvSend, 2))
		runtime.KeepAlive(blk)
		if s := got[len(got)-1]; s.Res != int32(len(msg)) {
			t.Fatalf("sendto: %+v", s)
		}
		buf := make([]byte, 100)
		unix.SetNonblock(int(peer), false)
		n, from, err := unix.Recvfrom(int(peer), buf, 0)
		if err != nil || string(buf[:n]) != "reply" || from.(*unix.SockaddrInet4).Port != aport {
			t.Fatalf("peer got %q from %v: %v", buf[:n], from, err)
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: a, Token: 1}}, hasKind(EvClosed, 1))
	})
}

// A connected UDP socket learns of an ICMP port unreachable as ECONNREFUSED:
// an EvDgram error with FlagMore, and the receive goes on.
func TestDgramConnectedRefused(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, aport := udpSocket(t)
		gone, port := udpSocket(t)
		unix.Close(int(gone))
		if err := unix.Connect(int(a), &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			t.Fatal(err)
		}
		sub, blk := sendtoSub(a, 1, []byte("anyone?"), 0)
		got := collect(t, b, []Sub{{Op: OpDgramRecvStart, Fd: a, Token: 1}, sub}, func(cs []Comp) bool {
			for _, c := range dgrams(cs, 1) {
				if c.Res == -int32(unix.ECONNREFUSED) {
					return true
				}
			}
			return false
		})
		runtime.KeepAlive(blk)
		for _, c := range got {
			if c.Kind == EvSend && c.Res != 7 && c.Res != -int32(unix.ECONNREFUSED) {
				t.Fatalf("send: %+v", c)
			}
			if c.Kind == EvDgram && c.Flags&FlagMore == 0 {
				t.Fatalf("receive ended: %+v", c)
			}
		}
		// Still receiving: a socket on the refused port can now answer.
		back, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(back)
		if err := unix.Bind(back, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			t.Skipf("port %d taken meanwhile: %v", port, err)
		}
		unix.Sendto(back, []byte("here"), 0, &unix.SockaddrInet4{Port: aport, Addr: [4]byte{127, 0, 0, 1}})
		got = collect(t, b, nil, func(cs []Comp) bool { return len(dgrams(cs, 1)) > 0 })
		if data, p := dgramOf(t, dgrams(got, 1)[0]); string(data) != "here" || p != port {
			t.Fatalf("got %q from %d", data, p)
		}
		collect(t, b, append(returns(got), Sub{Op: OpClose, Fd: a, Token: 1}), hasKind(EvClosed, 1))
	})
}

// A datagram the kernel refuses fails alone: the sends queued after it go out.
func TestDgramSendToErrorGoesOn(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, _ := udpSocket(t)
		peer, pport := udpSocket(t)
		defer unix.Close(int(peer))
		bad, blk1 := sendtoSub(a, 1, []byte("x"), 9)
		bcast := [4]byte{255, 255, 255, 255}
		copy(blk1.name[4:8], bcast[:]) // broadcast without SO_BROADCAST: EACCES
		good, blk2 := sendtoSub(a, 1, []byte("y"), pport)
		got := collect(t, b, []Sub{bad, good}, func(cs []Comp) bool { return countKind(cs, EvSend, 1) == 2 })
		runtime.KeepAlive(blk1)
		runtime.KeepAlive(blk2)
		var res []int32
		for _, c := range got {
			if c.Kind == EvSend {
				res = append(res, c.Res)
			}
		}
		if res[0] != -int32(unix.EACCES) || res[1] != 1 {
			t.Fatalf("sends: %v", res)
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: a, Token: 1}}, hasKind(EvClosed, 1))
	})
}

// The datagram pool runs dry when C keeps every buffer: receiving pauses
// without losing anything (a Unix datagram sender waits) and resumes when
// buffers come back; the datagrams arrive in order.
func TestDgramPoolExhaustion(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		a, peer := int32(fds[0]), fds[1]
		defer unix.Close(peer)
		unix.SetNonblock(peer, false)
		const total = dgramBufCount*2 + 10
		done := make(chan error, 1)
		go func() {
			var m [4]byte
			for i := 0; i < total; i++ {
				binary.BigEndian.PutUint32(m[:], uint32(i))
				if _, err := unix.Write(peer, m[:]); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
		got := collect(t, b, []Sub{{Op: OpDgramRecvStart, Fd: a, Token: 1}}, func(cs []Comp) bool {
			return len(dgrams(cs, 1)) >= dgramBufCount
		})
		got = append(got, pollFor(t, b, nil, 100*time.Millisecond)...)
		if n := len(dgrams(got, 1)); n != dgramBufCount {
			t.Fatalf("%d datagrams delivered with every buffer out, want %d", n, dgramBufCount)
		}
		// Read each payload before its buffer goes back.
		var all [][]byte
		for _, c := range dgrams(got, 1) {
			data, _ := dgramOf(t, c)
			all = append(all, data)
		}
		subs := returns(got)
		for len(all) < total {
			more := collect(t, b, subs, func(cs []Comp) bool { return len(dgrams(cs, 1)) > 0 })
			for _, c := range dgrams(more, 1) {
				data, _ := dgramOf(t, c)
				all = append(all, data)
			}
			subs = returns(more)
		}
		for i, data := range all {
			if len(data) != 4 || binary.BigEndian.Uint32(data) != uint32(i) {
				t.Fatalf("datagram %d is %x", i, data)
			}
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		collect(t, b, append(subs, Sub{Op: OpClose, Fd: a, Token: 1}), hasKind(EvClosed, 1))
	})
}

// Closing a datagram socket with its receive armed and datagrams queued to
// send: an abort cancels the sends, EvClosed comes last, and the buffers of
// datagrams nobody will read go back to the pool (receiving on a new socket
// still gets every buffer).
func TestDgramAbortAndReuse(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		a, peer := int32(fds[0]), fds[1]
		defer unix.Close(peer)
		var subs []Sub
		var blks []*sendtoBlock
		msg := make([]byte, 1000)
		for i := 0; i < 2000; i++ { // more than the peer's queue takes
			s, blk := sendtoSub(a, 1, msg, 0)
			subs = append(subs, s)
			blks = append(blks, blk)
		}
		for i := 0; i < 10; i++ {
			unix.Write(peer, []byte("in"))
		}
		subs = append([]Sub{{Op: OpDgramRecvStart, Fd: a, Token: 1}}, subs...)
		subs = append(subs, Sub{Op: OpClose, Fd: a, Token: 1, Arg: CloseAbort})
		got := collect(t, b, subs, hasKind(EvClosed, 1))
		runtime.KeepAlive(blks)
		if got[len(got)-1].Kind != EvClosed {
			t.Fatalf("EvClosed is not last: %+v", got[len(got)-1])
		}
		if n := countKind(got, EvSend, 1); n != 2000 {
			t.Fatalf("%d sends answered, want 2000", n)
		}
		// Whatever was delivered goes back; then a new socket gets the whole pool.
		fds2, _ := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		defer unix.Close(fds2[1])
		for i := 0; i < dgramBufCount+5; i++ {
			unix.Write(fds2[1], []byte("z"))
		}
		subs = append(returns(got), Sub{Op: OpDgramRecvStart, Fd: int32(fds2[0]), Token: 2})
		got = collect(t, b, subs, func(cs []Comp) bool { return len(dgrams(cs, 2)) >= dgramBufCount })
		collect(t, b, append(returns(got), Sub{Op: OpClose, Fd: int32(fds2[0]), Token: 2}), hasKind(EvClosed, 2))
	})
}

// Datagrams that wait for a full Unix datagram peer go out whole, once each,
// in order, when it reads: no empty datagram, nothing twice.
func TestDgramSendBlockedInOrder(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		// A peer that is not connected back takes net.unix.max_dgram_qlen
		// datagrams, then its sender waits (a socketpair's is bounded by bytes).
		peer, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(peer)
		name := &unix.SockaddrUnix{Name: fmt.Sprintf("@goloop-dgram-test-%d-%d", os.Getpid(), time.Now().UnixNano())}
		if err := unix.Bind(peer, name); err != nil {
			t.Fatal(err)
		}
		afd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Connect(afd, name); err != nil {
			t.Fatal(err)
		}
		a := int32(afd)
		const total = 60 // several times the peer's queue
		var subs []Sub
		var msgs [][]byte
		for i := 0; i < total; i++ {
			m := bytes.Repeat([]byte{byte(i)}, 100+i)
			msgs = append(msgs, m)
			s, _ := sendtoSub(a, 1, m, 0)
			subs = append(subs, s)
		}
		got := pollFor(t, b, subs, 50*time.Millisecond)
		if n := countKind(got, EvSend, 1); n >= total {
			t.Fatalf("all %d sends done with the peer not reading: %+v", n, got[len(got)-3:])
		}
		recvd := make(chan [][]byte, 1)
		go func() {
			var out [][]byte
			buf := make([]byte, 1000)
			unix.SetNonblock(peer, false)
			for len(out) < total {
				n, err := unix.Read(peer, buf)
				if err != nil {
					break
				}
				out = append(out, append([]byte{}, buf[:n]...))
			}
			recvd <- out
		}()
		collect(t, b, nil, func(cs []Comp) bool { return countKind(got, EvSend, 1)+countKind(cs, EvSend, 1) == total })
		runtime.KeepAlive(msgs)
		out := <-recvd
		for i, m := range out {
			if !bytes.Equal(m, msgs[i]) {
				t.Fatalf("datagram %d: %d bytes, want %d", i, len(m), len(msgs[i]))
			}
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: a, Token: 1}}, hasKind(EvClosed, 1))
	})
}

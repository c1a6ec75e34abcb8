package goloop

import (
	"bytes"
	"os"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FuzzContract drives both backends with random interleavings of what the C
// side may submit for a few connections (receive start/stop, sends,
// sendfiles, shutdowns, graceful closes, aborts and upgrades) and of what their peers
// do (write, close, reset), following C's rules (nothing for a token after
// its close but an upgrade), and checks the contract record.go promises:
//
// OpRecvRecord (the peer writes TLS record frames now and then) and OpKTLS
// (refused on these Unix sockets, in its place in the queue) take part too.
//
//   - every OpSend, OpSendfile, OpShutdown and OpKTLS is answered exactly once, every OpClose by
//     exactly one EvClosed, and nothing names a token after its EvClosed;
//   - a receive buffer is never lent twice without being given back;
//   - each connection receives a prefix of what its own peer wrote, in
//     order, and its peer receives a prefix of what was sent on it: no byte
//     reaches another connection, none is duplicated or reordered;
//   - a connection still receiving whose peer went away is told so (an
//     EvRecv with Res <= 0): an end of stream is never lost.
func FuzzContract(f *testing.F) {
	f.Add([]byte{0, 6, 2, 40, 9, 4, 8, 6, 7})
	f.Add([]byte{0, 8, 16, 6, 14, 22, 2, 200, 10, 250, 18, 100, 4, 13, 21})
	f.Add([]byte{0, 6, 1, 6, 0, 2, 255, 2, 255, 5, 4, 12, 20})
	f.Add([]byte{8, 14, 9, 14, 8, 10, 3, 11, 7, 15, 12, 13})
	f.Add([]byte{6, 0x85, 0, 0x81, 2, 40, 3, 0x81, 6, 0x83, 1, 0, 0, 0x81, 7, 1})
	f.Fuzz(func(t *testing.T, script []byte) {
		fuzzBackends(t, script, 256, runContract)
	})
}

// fuzzBackends runs one fuzz input on both backends, each with a small
// pool and ring (so buffers run out and queues fill), the io_uring one on a
// locked thread as the loop's.
func fuzzBackends(t *testing.T, script []byte, max int, run func(*testing.T, string, Backend, []byte)) {
	if len(script) > max {
		script = script[:max]
	}
	for _, kind := range []string{"epoll", "io_uring"} {
		func() {
			if kind == "io_uring" {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
			}
			b, err := NewBackend(kind, Options{BufSize: 512, BufCount: 8, Entries: 64})
			if err != nil {
				if kind == "io_uring" {
					t.Skipf("io_uring unavailable: %v", err)
				}
				t.Fatal(err)
			}
			defer b.Close()
			run(t, kind, b, script)
		}()
	}
}

const contractConns = 3

type contractConn struct {
	fd, peer        int32
	tok             uint64
	recvOn          bool
	recvEnded       bool // an EvRecv with Res <= 0 arrived
	closeSent       bool
	gracefulSent    bool
	closed          bool // EvClosed seen
	peerGone        bool
	sent, peerWrote []byte // what C sent on fd, what the peer wrote
	got, peerGot    []byte // what arrived on fd, what arrived at the peer
	sendsOut        int    // OpSend/OpSendfile/OpShutdown/OpKTLS not yet answered
	bufs            [][]byte
	recPending      bool // an OpRecvRecord waits for its answer
	lossy           bool // an OpRecvRecord refused a header (-EBADMSG): those 5 bytes are gone
}

func runContract(t *testing.T, kind string, b Backend, script []byte) {
	conns := make([]*contractConn, contractConns)
	for i := range conns {
		a, c := socketpair(t)
		conns[i] = &contractConn{fd: a, peer: c, tok: uint64(i+1) << 8}
	}
	defer func() {
		for _, c := range conns {
			if !c.peerGone {
				unix.Close(int(c.peer))
			}
		}
	}()
	// The file sendfiles read from: lent to Go until the run's end.
	fileData := make([]byte, 1<<16)
	for i := range fileData {
		fileData[i] = byte(i*7 + i>>8)
	}
	file, err := os.CreateTemp(t.TempDir(), "contract")
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	if _, err := file.Write(fileData); err != nil {
		t.Fatal(err)
	}
	lent := map[uint32]bool{}
	params := testParams() // OpKTLS's gl_ktls, in stand-in C memory
	var subs []Sub
	out := make([]Comp, 64)
	pattern := byte(1)

	handle := func(comps []Comp) {
		for _, x := range comps {
			i := int(x.Token>>8) - 1
			if i < 0 || i >= len(conns) {
				t.Fatalf("%s: completion for an unknown token: %+v", kind, x)
			}
			c := conns[i]
			if c.closed {
				t.Fatalf("%s: conn %d: completion after EvClosed: %+v", kind, i, x)
			}
			switch x.Kind {
			case EvRecv:
				if c.recPending {
					// OpRecvRecord's one answer.
					c.recPending = false
					if x.Res == -int32(unix.EBADMSG) {
						c.lossy = true
					}
					if x.Res <= 0 {
						continue
					}
				}
				if x.Res > 0 {
					if lent[x.Buf] {
						t.Fatalf("%s: buffer %d lent twice", kind, x.Buf)
					}
					lent[x.Buf] = true
					c.got = append(c.got, unsafe.Slice((*byte)(unsafe.Pointer(x.Ptr)), x.Res)...)
					subs = append(subs, Sub{Op: OpBufReturn, Arg: x.Buf})
				} else {
					c.recvOn, c.recvEnded = false, true
				}
			case EvSend, EvShutdown, EvSendfile, EvKTLS:
				c.sendsOut--
				if c.sendsOut < 0 {
					t.Fatalf("%s: conn %d: more send/shutdown answers than requests", kind, i)
				}
			case EvClosed:
				if c.sendsOut != 0 {
					t.Fatalf("%s: conn %d: EvClosed with %d sends unanswered", kind, i, c.sendsOut)
				}
				c.closed = true
			default:
				t.Fatalf("%s: unexpected completion %+v", kind, x)
			}
		}
	}
	poll := func(timeout time.Duration) {
		for buf := range lent {
			delete(lent, buf) // returned in this batch (appended by handle)
		}
		n, err := b.Poll(subs, out, timeout)
		if err != nil {
			t.Fatal(err)
		}
		subs = subs[:0]
		handle(out[:n])
	}
	drainPeer := func(c *contractConn) {
		if c.peerGone {
			return
		}
		var buf [4096]byte
		for {
			n, err := unix.Read(int(c.peer), buf[:])
			if n <= 0 || err != nil {
				return
			}
			c.peerGot = append(c.peerGot, buf[:n]...)
		}
	}

	for k := 0; k < len(script); k++ {
		op, c := script[k]%8, conns[int(script[k]/8)%len(conns)]
		arg := byte(0)
		if k+1 < len(script) {
			arg = script[k+1]
		}
		switch {
		case op == 0 && !c.closeSent && !c.recvOn && !c.recPending && arg&0x80 != 0:
			subs = append(subs, Sub{Op: OpRecvRecord, Fd: c.fd, Token: c.tok})
			c.recPending = true
		case op == 0 && !c.closeSent && !c.recvOn && !c.recPending:
			subs = append(subs, Sub{Op: OpRecvStart, Fd: c.fd, Token: c.tok})
			c.recvOn = true
		case op == 1 && !c.closeSent && (c.recvOn || c.recPending):
			subs = append(subs, Sub{Op: OpRecvStop, Fd: c.fd, Token: c.tok})
			c.recvOn, c.recPending = false, false
		case op == 2 && !c.closeSent && arg&0x80 != 0:
			off, n := int(arg)*97, int(arg&0x7f)*53+1
			c.sent = append(c.sent, fileData[off:off+n]...)
			subs = append(subs, Sub{Op: OpSendfile, Fd: c.fd, Token: c.tok, Ptr: uintptr(off), Len: uint32(n), Arg: uint32(file.Fd())})
			c.sendsOut++
		case op == 2 && !c.closeSent:
			n := int(arg)*37 + 1
			data := bytes.Repeat([]byte{pattern}, n)
			pattern++
			c.bufs = append(c.bufs, data) // alive until answered
			c.sent = append(c.sent, data...)
			subs = append(subs, Sub{Op: OpSend, Fd: c.fd, Token: c.tok, Ptr: ptrOf(data), Len: uint32(n)})
			c.sendsOut++
		case op == 3 && !c.closeSent && arg&0x80 != 0:
			subs = append(subs, Sub{Op: OpKTLS, Fd: c.fd, Token: c.tok, Ptr: paramsPtr(params)})
			c.sendsOut++
		case op == 3 && !c.closeSent:
			subs = append(subs, Sub{Op: OpShutdown, Fd: c.fd, Token: c.tok})
			c.sendsOut++
		case op == 4 && !c.closeSent:
			subs = append(subs, Sub{Op: OpClose, Fd: c.fd, Token: c.tok})
			c.closeSent, c.gracefulSent, c.recvOn, c.recPending = true, true, false, false
		case op == 5 && (!c.closeSent || c.gracefulSent):
			arg := CloseAbort
			if c.gracefulSent {
				arg |= CloseUpgrade
			}
			subs = append(subs, Sub{Op: OpClose, Fd: c.fd, Token: c.tok, Arg: arg})
			c.closeSent, c.gracefulSent, c.recvOn, c.recPending = true, false, false, false
		case op == 6 && !c.peerGone:
			data := bytes.Repeat([]byte{pattern}, int(arg)*11+1)
			if arg&0x80 != 0 {
				data = tlsRecord(23, data[:int(arg&0x7f)*13])
			}
			pattern++
			if n, err := unix.Write(int(c.peer), data); err == nil && n > 0 {
				c.peerWrote = append(c.peerWrote, data[:n]...)
			}
		case op == 7 && !c.peerGone:
			drainPeer(c)
			unix.Close(int(c.peer))
			c.peerGone = true
		}
		if arg&1 == 1 || k == len(script)-1 {
			poll(0)
			for _, c := range conns {
				drainPeer(c)
			}
		}
	}
	// A connection still receiving from a peer that went away must hear of it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		waiting := -1
		for i, c := range conns {
			if (c.recvOn && !c.recvEnded || c.recPending) && c.peerGone && !c.closeSent {
				waiting = i
			}
		}
		if waiting < 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: conn %d: its peer is gone but no end of stream arrived", kind, waiting)
		}
		poll(10 * time.Millisecond)
	}
	// Close whatever is still open and wait for every answer.
	for _, c := range conns {
		if !c.closeSent {
			subs = append(subs, Sub{Op: OpClose, Fd: c.fd, Token: c.tok, Arg: CloseAbort})
			c.closeSent = true
		}
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		done := true
		for _, c := range conns {
			drainPeer(c)
			done = done && c.closed
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not every close was answered", kind)
		}
		poll(10 * time.Millisecond)
	}
	for i, c := range conns {
		if !c.lossy && !bytes.HasPrefix(c.peerWrote, c.got) {
			t.Fatalf("%s: conn %d received %d bytes that are not its peer's (peer wrote %d)", kind, i, len(c.got), len(c.peerWrote))
		}
		if !bytes.HasPrefix(c.sent, c.peerGot) {
			t.Fatalf("%s: conn %d's peer received %d bytes that were not sent on it (%d sent)", kind, i, len(c.peerGot), len(c.sent))
		}
	}
}

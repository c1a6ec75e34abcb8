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
// When the script's first byte has bit 0x40, connection 0 is a soft TLS fd
// (softtls.go, installed with KTLSSoftOnly before the script; the suite
// chosen by the script's length): its peer seals what it writes and opens
// what it reads with the peer's keys, so the same prefix checks hold for
// the plaintext, and a record that does not open at the peer is a failure.
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
	// Soft TLS on connection 0.
	f.Add([]byte{0x40, 6, 0x85, 2, 200, 6, 9, 1, 3, 0, 0x81, 2, 0x81, 4, 1})
	f.Add([]byte{0x40, 2, 255, 2, 254, 2, 253, 5, 1, 6, 3, 7, 1})
	f.Add([]byte{0x40, 6, 0xff, 0, 1, 6, 0x87, 1, 1, 0, 3, 3, 0x81, 2, 9, 6, 5, 7, 3})
	f.Add([]byte{0x40, 6, 0xff, 0, 0, 2, 255, 2, 255, 4, 1, 6, 0xc1, 7, 1, 6, 8})
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
	// Soft TLS (connection 0 when asked): the peer's record layer, its
	// ciphertext not yet opened, and whether a record went out in part
	// (the peer's socket was full): nothing more can follow it.
	soft           bool
	peerTX, peerRX *recordCipher
	peerRaw        []byte
	peerStuck      bool
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
	// A soft fd's sends are read through raw pointers, as C memory is: they
	// come from memory Go does not manage, unmapped once all is answered.
	var cmem []byte
	if len(script) > 0 && script[0]&0x40 != 0 {
		m, err := unix.Mmap(-1, 0, 4<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Munmap(m)
		cmem = m
		contractSoft(t, kind, b, conns[0], len(script))
	}
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
			if c.soft && x.Kind == EvSend && x.Res < 0 && x.Res != -int32(unix.ECANCELED) && x.Res != -int32(unix.EPIPE) &&
				x.Res != -int32(unix.ECONNRESET) {
				t.Fatalf("%s: soft conn: %+v", kind, x)
			}
			switch x.Kind {
			case EvRecv:
				if c.recPending && x.Flags&FlagMore == 0 {
					// OpRecvRecord's one answer; chunks with FlagMore
					// before it are what a stopped receive took in flight.
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
			if !c.soft {
				c.peerGot = append(c.peerGot, buf[:n]...)
				continue
			}
			c.peerRaw = append(c.peerRaw, buf[:n]...)
			for len(c.peerRaw) >= 5 && len(c.peerRaw) >= 5+(int(c.peerRaw[3])<<8|int(c.peerRaw[4])) {
				rec := c.peerRaw[:5+(int(c.peerRaw[3])<<8|int(c.peerRaw[4]))]
				typ, plain, err := c.peerRX.open(nil, rec)
				if err != nil || typ != RecordApplicationData {
					t.Fatalf("%s: soft conn: a record the peer cannot open (type %d): %v", kind, typ, err)
				}
				c.peerGot = append(c.peerGot, plain...)
				c.peerRaw = c.peerRaw[len(rec):]
			}
		}
	}

	for k := 0; k < len(script); k++ {
		op, c := script[k]%8, conns[int(script[k]/8)%len(conns)]
		arg := byte(0)
		if k+1 < len(script) {
			arg = script[k+1]
		}
		switch {
		case op == 0 && !c.closeSent && !c.recvOn && !c.recPending && arg&0x80 != 0 && !c.soft:
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
			if !c.soft { // a soft fd answers -EOPNOTSUPP
				c.sent = append(c.sent, fileData[off:off+n]...)
			}
			subs = append(subs, Sub{Op: OpSendfile, Fd: c.fd, Token: c.tok, Ptr: uintptr(off), Len: uint32(n), Arg: uint32(file.Fd())})
			c.sendsOut++
		case op == 2 && !c.closeSent:
			n := int(arg)*37 + 1
			data := bytes.Repeat([]byte{pattern}, n)
			if c.soft {
				if len(cmem) < n {
					break
				}
				copy(cmem, data)
				data, cmem = cmem[:n:n], cmem[n:]
			}
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
		case op == 6 && !c.peerGone && c.soft:
			if c.peerStuck {
				break
			}
			data := bytes.Repeat([]byte{pattern}, int(arg)*11+1)
			pattern++
			rec, err := c.peerTX.seal(nil, RecordApplicationData, data)
			if err != nil {
				t.Fatal(err)
			}
			parts := [][]byte{rec}
			if arg&0x80 != 0 { // a record cut in two writes, Go polled between
				parts = [][]byte{rec[:len(rec)/3], rec[len(rec)/3:]}
			}
			for pi, part := range parts {
				if n, err := unix.Write(int(c.peer), part); err != nil || n < len(part) {
					c.peerStuck = true
					break
				}
				if pi == 0 && len(parts) > 1 {
					poll(0)
				}
			}
			if !c.peerStuck {
				c.peerWrote = append(c.peerWrote, data...)
			}
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

// contractSoft makes c a soft TLS fd (KTLSSoftOnly) before the script
// runs, with one of the six suites, and gives its peer the other end's
// record layer.
func contractSoft(t *testing.T, kind string, b Backend, c *contractConn, pick int) {
	p := newParams()
	kc := ktlsCases[pick%len(ktlsCases)]
	*p = KTLSParams{Version: kc.version, Suite: kc.suite, RX: 1, Flags: KTLSSoftOnly, TXSeq: uint64(pick), RXSeq: 7}
	suite, _ := KTLSSuiteFor(kc.version, kc.suite)
	p.SecretLen = uint8(suite.Hash.Size())
	for i := range p.Master {
		p.Master[i], p.ClientRandom[i%32], p.ServerRandom[i%32] = byte(i*13+pick), byte(i), byte(i*3)
	}
	for i := range p.ClientSecret {
		p.ClientSecret[i], p.ServerSecret[i] = byte(i*5+pick), byte(i*11)
	}
	cfg, _, e := p.config()
	if e != 0 {
		t.Fatalf("params: %v", e)
	}
	var err error
	if c.peerTX, err = newRecordCipher(cfg.Version, cfg.Cipher, cfg.RX); err != nil {
		t.Fatal(err)
	}
	if c.peerRX, err = newRecordCipher(cfg.Version, cfg.Cipher, cfg.TX); err != nil {
		t.Fatal(err)
	}
	cs := collectN(t, b, []Sub{{Op: OpKTLS, Fd: c.fd, Token: c.tok, Ptr: paramsPtr(p)}}, EvKTLS)
	if cs.Res != 0 || cs.Aux != KTLSTX|KTLSRX|KTLSSoftware {
		t.Fatalf("%s: soft install: %+v", kind, cs)
	}
	c.soft = true
}

// collectN polls until a completion of kind comes, and returns it.
func collectN(t *testing.T, b Backend, subs []Sub, kind uint8) Comp {
	out := make([]Comp, 8)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		n, err := b.Poll(subs, out, 10*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		subs = nil
		for _, x := range out[:n] {
			if x.Kind == kind {
				return x
			}
		}
	}
	t.Fatal("timed out")
	return Comp{}
}

package goloop

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// OpRecvRecord and OpKTLS where the kernel has no tls module (this host):
// the record framing, what stays in the socket, stops, closes; OpKTLS's
// place in the output queue and its refusals. The kernel-TLS paths proper
// are in ktls_ops_test.go (the VM).

// tlsRecord frames body as a TLS record of type typ.
func tlsRecord(typ uint8, body []byte) []byte {
	r := make([]byte, 5, 5+len(body))
	r[0], r[1], r[2] = typ, 3, 3
	binary.BigEndian.PutUint16(r[3:], uint16(len(body)))
	return append(r, body...)
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// recsOf is the backend's record pool, to check no buffer leaks.
func recsOf(b Backend) *recPool {
	switch x := b.(type) {
	case *epollBackend:
		return &x.recs
	case *uringBackend:
		return &x.recs
	}
	return nil
}

func recsOut(b Backend) int {
	p := recsOf(b)
	n := 0
	for _, o := range p.out {
		if o {
			n++
		}
	}
	return n
}

// recvRecord asks for one record and returns its answer with a copy of its
// bytes, giving the buffer back in the next batch (*ret).
func recvRecord(t *testing.T, b Backend, fd int32, tok uint64, ret *[]Sub) (Comp, []byte) {
	t.Helper()
	subs := append(*ret, Sub{Op: OpRecvRecord, Fd: fd, Token: tok})
	*ret = nil
	got := collect(t, b, subs, hasKind(EvRecv, tok))
	return oneRecv(t, b, got, tok, ret)
}

func oneRecv(t *testing.T, b Backend, got []Comp, tok uint64, ret *[]Sub) (Comp, []byte) {
	t.Helper()
	var c Comp
	n := 0
	for _, x := range got {
		if x.Kind == EvRecv && x.Token == tok {
			c = x
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d EvRecv for one OpRecvRecord: %+v", n, got)
	}
	if c.Flags&FlagMore != 0 {
		t.Fatalf("OpRecvRecord's answer has FlagMore: %+v", c)
	}
	if c.Res <= 0 {
		return c, nil
	}
	if c.Buf&RecordBufBit == 0 {
		t.Fatalf("record in buffer %#x, not a record buffer", c.Buf)
	}
	data := append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(c.Ptr)), c.Res)...)
	*ret = append(*ret, Sub{Op: OpBufReturn, Arg: c.Buf})
	return c, data
}

func writeAll(t *testing.T, fd int32, p []byte) {
	t.Helper()
	for len(p) > 0 {
		n, err := unix.Write(int(fd), p)
		if err == unix.EAGAIN {
			time.Sleep(time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
}

// Each answer is exactly one record, whatever the writes looked like, and
// the bytes after the last one are still in the socket.
func TestRecvRecordFraming(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(c))
		for _, fd := range []int32{a, c} {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 1<<20)
		}
		r1 := tlsRecord(22, randBytes(100))
		r2 := tlsRecord(23, randBytes(3000))
		r3 := tlsRecord(23, randBytes(16384+256))
		r4 := tlsRecord(21, []byte{1, 0})
		r5 := tlsRecord(20, nil) // an empty body is framing all the same
		rmax := tlsRecord(23, randBytes(RecordMaxBody))
		trailing := []byte("bytes after the last record")
		var ret []Sub
		// Two records and a piece of the third in one write.
		writeAll(t, c, append(append(append([]byte{}, r1...), r2...), r3[:3]...))
		if _, got := recvRecord(t, b, a, 1, &ret); !bytes.Equal(got, r1) {
			t.Fatalf("first record: %d bytes, want %d", len(got), len(r1))
		}
		if _, got := recvRecord(t, b, a, 1, &ret); !bytes.Equal(got, r2) {
			t.Fatalf("second record: %d bytes", len(got))
		}
		// The third is split inside its header and its body, with pauses:
		// no answer until it is whole.
		subs := append(ret, Sub{Op: OpRecvRecord, Fd: a, Token: 1})
		ret = nil
		if got := pollFor(t, b, subs, 20*time.Millisecond); countKind(got, EvRecv, 1) != 0 {
			t.Fatalf("answered with 3 bytes of a record: %+v", got)
		}
		writeAll(t, c, r3[3:1000])
		if got := pollFor(t, b, nil, 20*time.Millisecond); countKind(got, EvRecv, 1) != 0 {
			t.Fatalf("answered with part of a record: %+v", got)
		}
		writeAll(t, c, append(append(append(append(append([]byte{}, r3[1000:]...), r4...), r5...), rmax...), trailing...))
		got3 := collect(t, b, nil, hasKind(EvRecv, 1))
		if _, got := oneRecv(t, b, got3, 1, &ret); !bytes.Equal(got, r3) {
			t.Fatalf("split record: %d bytes, want %d", len(got), len(r3))
		}
		for i, want := range [][]byte{r4, r5, rmax} {
			if _, got := recvRecord(t, b, a, 1, &ret); !bytes.Equal(got, want) {
				t.Fatalf("record %d: % x, want % x", 4+i, got[:min(8, len(got))], want[:min(8, len(want))])
			}
		}
		collect(t, b, ret, func([]Comp) bool { return true })
		// Nothing pending: the trailing bytes are the socket's.
		buf := make([]byte, 100)
		n, err := unix.Read(int(a), buf)
		if err != nil || !bytes.Equal(buf[:n], trailing) {
			t.Fatalf("after the records the socket has %q (%v), want %q", buf[:n], err, trailing)
		}
		if n := recsOut(b); n != 0 {
			t.Fatalf("%d record buffers not back", n)
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: a, Token: 9}}, hasKind(EvClosed, 9))
	})
}

// A stop in the middle of a record keeps what was read: the next
// OpRecvRecord finishes that record, and an OpRecvStart gets the bytes as
// its first chunk. Nothing is read after the stop.
func TestRecvRecordStopResume(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(c))
		r1 := tlsRecord(22, randBytes(500))
		r2 := tlsRecord(22, randBytes(700))
		writeAll(t, c, r1[:200])
		got := pollFor(t, b, []Sub{{Op: OpRecvRecord, Fd: a, Token: 1}}, 20*time.Millisecond)
		if countKind(got, EvRecv, 1) != 0 {
			t.Fatalf("answered early: %+v", got)
		}
		if got := pollFor(t, b, []Sub{{Op: OpRecvStop, Fd: a, Token: 1}}, 10*time.Millisecond); len(got) != 0 {
			t.Fatalf("stop answered: %+v", got)
		}
		writeAll(t, c, r1[200:])
		writeAll(t, c, r2[:10])
		if got := pollFor(t, b, nil, 20*time.Millisecond); len(got) != 0 {
			t.Fatalf("completions after the stop: %+v", got)
		}
		var ret []Sub
		if _, got := recvRecord(t, b, a, 1, &ret); !bytes.Equal(got, r1) {
			t.Fatalf("resumed record: %d bytes", len(got))
		}
		// Now stop inside r2 and switch to a plain receive.
		got = pollFor(t, b, append(ret, Sub{Op: OpRecvRecord, Fd: a, Token: 1}), 20*time.Millisecond)
		ret = nil
		if countKind(got, EvRecv, 1) != 0 {
			t.Fatalf("answered early: %+v", got)
		}
		writeAll(t, c, r2[10:])
		rest := []byte("and then plain bytes")
		writeAll(t, c, rest)
		var data []byte
		var bufs []Sub
		collect(t, b, []Sub{{Op: OpRecvStop, Fd: a, Token: 1}, {Op: OpRecvStart, Fd: a, Token: 1}}, func(cs []Comp) bool {
			data, bufs = data[:0], bufs[:0]
			for _, x := range cs {
				if x.Kind == EvRecv && x.Res > 0 {
					data = append(data, unsafe.Slice((*byte)(unsafe.Pointer(x.Ptr)), x.Res)...)
					bufs = append(bufs, Sub{Op: OpBufReturn, Arg: x.Buf})
				} else if x.Kind == EvRecv {
					t.Fatalf("receive ended: %+v", x)
				}
			}
			return len(data) >= len(r2)+len(rest)
		})
		if want := append(append([]byte{}, r2...), rest...); !bytes.Equal(data, want) {
			t.Fatalf("plain receive after a stopped record: %d bytes, want %d", len(data), len(want))
		}
		collect(t, b, append(bufs, Sub{Op: OpClose, Fd: a, Token: 9}), hasKind(EvClosed, 9))
		if n := recsOut(b); n != 0 {
			t.Fatalf("%d record buffers not back", n)
		}
	})
}

// A header that is no TLS record's is -EBADMSG; a second OpRecvRecord or
// one under an armed receive is -EBUSY; end of stream inside a record
// delivers the part, then 0.
func TestRecvRecordErrors(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		for _, hdr := range [][]byte{
			{19, 3, 3, 0, 1, 0},
			{25, 3, 3, 0, 1, 0},
			{23, 3, 3, (RecordMaxBody + 1) >> 8, (RecordMaxBody + 1) & 0xff},
		} {
			a, c := socketpair(t)
			writeAll(t, c, hdr)
			var ret []Sub
			if r, _ := recvRecord(t, b, a, 1, &ret); r.Res != -int32(unix.EBADMSG) {
				t.Fatalf("header % x: %+v, want -EBADMSG", hdr, r)
			}
			collect(t, b, []Sub{{Op: OpClose, Fd: a, Token: 9}}, hasKind(EvClosed, 9))
			unix.Close(int(c))
		}

		a, c := socketpair(t)
		r := tlsRecord(22, randBytes(50))
		writeAll(t, c, r[:15])
		got := pollFor(t, b, []Sub{{Op: OpRecvRecord, Fd: a, Token: 1}, {Op: OpRecvRecord, Fd: a, Token: 2}}, 20*time.Millisecond)
		if countKind(got, EvRecv, 1) != 0 || len(got) != 1 || got[0].Token != 2 || got[0].Res != -int32(unix.EBUSY) {
			t.Fatalf("second OpRecvRecord: %+v, want -EBUSY for it alone", got)
		}
		unix.Close(int(c))
		got = collect(t, b, nil, hasKind(EvRecv, 1))
		var ret []Sub
		if rr, part := oneRecv(t, b, got, 1, &ret); rr.Res != 15 || !bytes.Equal(part, r[:15]) {
			t.Fatalf("end of stream mid-record: %+v % x", rr, part)
		}
		if rr, _ := recvRecord(t, b, a, 1, &ret); rr.Res != 0 {
			t.Fatalf("after a cut record: %+v, want 0", rr)
		}
		// Under an armed receive.
		got = pollFor(t, b, append(ret, Sub{Op: OpRecvStart, Fd: a, Token: 3}, Sub{Op: OpRecvRecord, Fd: a, Token: 4}), 20*time.Millisecond)
		if countKind(got, EvRecv, 4) != 1 {
			t.Fatalf("OpRecvRecord under OpRecvStart: %+v", got)
		}
		for _, x := range got {
			if x.Token == 4 && x.Res != -int32(unix.EBUSY) {
				t.Fatalf("OpRecvRecord under OpRecvStart: %+v, want -EBUSY", x)
			}
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: a, Token: 9}}, hasKind(EvClosed, 9))
		if n := recsOut(b); n != 0 {
			t.Fatalf("%d record buffers not back", n)
		}
	})
}

// A close or an abort with an OpRecvRecord pending (part of its record
// read) answers nothing for it but EvClosed, and gives its buffer back.
func TestRecvRecordClosePending(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		for _, arg := range []uint32{0, CloseAbort} {
			a, c := socketpair(t)
			writeAll(t, c, tlsRecord(22, randBytes(100))[:40])
			pollFor(t, b, []Sub{{Op: OpRecvRecord, Fd: a, Token: 5}}, 20*time.Millisecond)
			n, all := drainCount(t, b, []Sub{{Op: OpClose, Fd: a, Token: 5, Arg: arg}}, EvClosed, 5, 30*time.Millisecond)
			if n != 1 || len(all) != 1 {
				t.Fatalf("close (arg %d) with a record pending: %+v", arg, all)
			}
			if n := recsOut(b); n != 0 {
				t.Fatalf("%d record buffers not back", n)
			}
			unix.Close(int(c))
		}
	})
}

func skipIfKTLS(t *testing.T) {
	if KTLSAvailable() == nil {
		t.Skip("this kernel has kernel TLS: the VM tests (ktls_ops_test.go) cover OpKTLS here")
	}
}

// cAlloc is n bytes of stand-in C memory (outside Go's heap, which
// checkptr would not let Go code read through a uintptr).
func cAlloc(size int) []byte {
	n := (size + 7) &^ 7
	if len(cMemory) < n {
		m, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			panic(err)
		}
		cMemory = m
	}
	b := cMemory[:size:size]
	cMemory = cMemory[n:]
	return b
}

func newParams() *KTLSParams {
	return (*KTLSParams)(unsafe.Pointer(&cAlloc(int(unsafe.Sizeof(KTLSParams{})))[0]))
}

func testParams() *KTLSParams {
	p := newParams()
	*p = KTLSParams{Version: TLS13, Suite: 0x1301, SecretLen: 32, RX: 1}
	rand.Read(p.ClientSecret[:])
	rand.Read(p.ServerSecret[:])
	return p
}

func paramsPtr(p *KTLSParams) uintptr { return uintptr(unsafe.Pointer(p)) }

// OpKTLS waits for the sends before it and holds back those after it;
// without a tls module it answers -ENOENT, Aux 0, and the socket goes on
// unchanged.
func TestOpKtlsOrderedNoModule(t *testing.T) {
	skipIfKTLS(t)
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := tcpPair(t)
		defer unix.Close(int(c))
		big := randBytes(4 << 20)
		after := []byte("sent after OpKTLS")
		// A record-typed send on a socket without kernel TX: sendmsg's
		// SOL_TLS control message means nothing to plain TCP, and the
		// bytes go out as they are (C sends one only after TX went in).
		alert := cAlloc(2)
		alert[0], alert[1] = 1, 0
		p := testParams()
		failed := ktlsStats.failed.Load()
		subs := []Sub{
			{Op: OpSend, Fd: a, Token: 1, Ptr: ptrOf(big), Len: uint32(len(big))},
			{Op: OpKTLS, Fd: a, Token: 1, Ptr: paramsPtr(p)},
			{Op: OpSend, Fd: a, Token: 1, Ptr: ptrOf(after), Len: uint32(len(after))},
			{Op: OpSend, Fd: a, Token: 1, Ptr: ptrOf(alert), Len: 2, Arg: ArgRecType(RecordAlert)},
		}
		recvd := drain(t, c)
		got := collect(t, b, subs, func(cs []Comp) bool { return len(cs) == 4 })
		want := []Comp{{Token: 1, Kind: EvSend, Res: int32(len(big))}, {Token: 1, Kind: EvKTLS, Res: -int32(unix.ENOENT)},
			{Token: 1, Kind: EvSend, Res: int32(len(after))}, {Token: 1, Kind: EvSend, Res: 2}}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("completion %d: %+v, want %+v (all %+v)", i, got[i], want[i], got)
			}
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: a, Token: 1}}, hasKind(EvClosed, 1))
		if data := <-recvd; !bytes.Equal(data, append(append(append([]byte{}, big...), after...), 1, 0)) {
			t.Fatalf("peer got %d bytes, want %d", len(data), len(big)+len(after)+2)
		}
		if ktlsStats.failed.Load() <= failed {
			t.Fatal("ktls_failed did not count the refusal")
		}
		runtime.KeepAlive(p)
	})
}

// Bad params are -EINVAL with nothing done (no ULP even); an abort cancels
// a queued OpKTLS.
func TestOpKtlsBadParamsAndAbort(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := tcpPair(t)
		defer unix.Close(int(c))
		bad := []*KTLSParams{testParams(), testParams(), testParams(), testParams(), testParams(), testParams()}
		bad[0].Version = 0x0302
		bad[1].Suite = 0x002f // TLS_RSA_WITH_AES_128_CBC_SHA: kernel TLS has no CBC
		bad[2].SecretLen = 48 // AES-128-GCM's hash is SHA-256
		bad[3].Server = 2
		bad[4].RX = 7
		bad[5].Version, bad[5].Suite = TLS12, 0x1301
		var subs []Sub
		for i, p := range bad {
			subs = append(subs, Sub{Op: OpKTLS, Fd: a, Token: uint64(10 + i), Ptr: paramsPtr(p)})
		}
		subs = append(subs, Sub{Op: OpKTLS, Fd: a, Token: 20})
		got := collect(t, b, subs, func(cs []Comp) bool { return len(cs) == len(subs) })
		for _, x := range got {
			if x.Kind != EvKTLS || x.Res != -int32(unix.EINVAL) || x.Aux != 0 {
				t.Fatalf("bad params: %+v, want EvKTLS -EINVAL", x)
			}
		}
		if ktlsULP(a) {
			t.Fatal("bad params attached the tls ULP")
		}
		// Behind a send the peer does not read, then aborted.
		big := make([]byte, 16<<20)
		p := testParams()
		got = pollFor(t, b, []Sub{
			{Op: OpSend, Fd: a, Token: 1, Ptr: ptrOf(big), Len: uint32(len(big))},
			{Op: OpKTLS, Fd: a, Token: 1, Ptr: paramsPtr(p)},
		}, 20*time.Millisecond)
		if len(got) != 0 {
			t.Fatalf("ran before the send was out: %+v", got)
		}
		got = collect(t, b, []Sub{{Op: OpClose, Fd: a, Token: 1, Arg: CloseAbort}}, hasKind(EvClosed, 1))
		want := []Comp{{Token: 1, Kind: EvSend, Res: -int32(unix.ECANCELED)}, {Token: 1, Kind: EvKTLS, Res: -int32(unix.ECANCELED)},
			{Token: 1, Kind: EvClosed}}
		if len(got) != len(want) {
			t.Fatalf("abort: %+v, want %+v", got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("abort: %+v, want %+v", got, want)
			}
		}
		runtime.KeepAlive(p)
		runtime.KeepAlive(bad)
	})
}

// KTLSParams is gl_ktls field for field.
func TestKtlsParamsLayout(t *testing.T) {
	var p KTLSParams
	for _, f := range []struct {
		name string
		off  uintptr
		want uintptr
	}{
		{"suite", unsafe.Offsetof(p.Suite), 2}, {"server", unsafe.Offsetof(p.Server), 4},
		{"rx", unsafe.Offsetof(p.RX), 5}, {"secret_len", unsafe.Offsetof(p.SecretLen), 6},
		{"tx_seq", unsafe.Offsetof(p.TXSeq), 8}, {"rx_seq", unsafe.Offsetof(p.RXSeq), 16},
		{"client_random", unsafe.Offsetof(p.ClientRandom), 24}, {"server_random", unsafe.Offsetof(p.ServerRandom), 56},
		{"master", unsafe.Offsetof(p.Master), 88}, {"client_secret", unsafe.Offsetof(p.ClientSecret), 136},
		{"server_secret", unsafe.Offsetof(p.ServerSecret), 184},
	} {
		if f.off != f.want {
			t.Errorf("%s at %d, gl_ktls has it at %d", f.name, f.off, f.want)
		}
	}
}

// What a kernel-TLS receive makes of each record that is not data.
func TestKtlsControlRecords(t *testing.T) {
	eproto := -int32(unix.EPROTO)
	for _, c := range []struct {
		typ  uint8
		body []byte
		res  int32
		aux  uint32
	}{
		{21, []byte{1, 0}, 0, 0},
		{21, []byte{2, 0}, 0, 0},
		{21, []byte{2, 40}, eproto, 21<<8 | 40},
		{21, []byte{1, 90}, eproto, 21<<8 | 90},
		{21, []byte{2}, eproto, 21<<8 | 0xff},
		{22, []byte{4, 0, 0, 2, 9, 9}, 1, 0},
		{22, []byte{4, 0, 0, 1, 9, 4, 0, 0, 0}, 1, 0},
		{22, []byte{24, 0, 0, 1, 0}, eproto, 22<<8 | 24},
		{22, []byte{0, 0, 0, 0}, eproto, 22 << 8},
		{22, []byte{4, 0, 0, 1, 9, 24, 0, 0, 1, 1}, eproto, 22<<8 | 24},
		{22, []byte{4, 0}, eproto, 22<<8 | 0xff},
		{22, nil, eproto, 22<<8 | 0xff},
		{20, []byte{1}, eproto, 20 << 8},
		{24, []byte{1, 2, 3}, eproto, 24 << 8},
	} {
		var k ktlsFd
		if res, aux := k.control(c.typ, c.body); res != c.res || aux != c.aux {
			t.Errorf("record %d % x: %d %#x, want %d %#x", c.typ, c.body, res, aux, c.res, c.aux)
		}
	}
	// A ticket longer than its record: the rest opens the next one.
	var k ktlsFd
	if res, _ := k.control(22, []byte{4, 0, 0, 10, 1, 2, 3}); res != 1 || k.skip != 7 {
		t.Fatalf("long ticket: %d, skip %d", res, k.skip)
	}
	if res, _ := k.control(22, []byte{4, 5, 6, 7, 8, 9, 10, 4, 0, 0, 0}); res != 1 || k.skip != 0 {
		t.Fatalf("its rest and one more: %d, skip %d", res, k.skip)
	}
}

// The record pool grows a chunk at a time up to its bound, then says no;
// a double or foreign return changes nothing.
func TestRecvRecordPoolBound(t *testing.T) {
	var p recPool
	defer p.close()
	ids := map[uint32]bool{}
	for i := 0; i < recordChunk*recordMaxChunks; i++ {
		id, ok := p.get()
		if !ok || ids[id] || id&RecordBufBit == 0 {
			t.Fatalf("buffer %d: id %#x ok %v", i, id, ok)
		}
		ids[id] = true
		p.buf(id)[recordBufSize-1] = 1 // the whole buffer is there
	}
	if _, ok := p.get(); ok {
		t.Fatal("the pool grew past its bound")
	}
	var one uint32
	for id := range ids {
		one = id
		break
	}
	p.put(one)
	p.put(one)
	p.put(one &^ RecordBufBit)
	p.put(RecordBufBit | 1<<20)
	if len(p.free) != 1 {
		t.Fatalf("%d free after one return (and three bad ones)", len(p.free))
	}
	if id, ok := p.get(); !ok || id != one {
		t.Fatalf("got %#x %v back, want %#x", id, ok, one)
	}
}

// STARTTLS: a receive stopped just before an OpRecvRecord. Whatever the
// stopped receive still took (io_uring cannot take back a recv in flight)
// comes as late chunks with FlagMore; the record read starts after it; no
// byte is lost or read twice.
func TestRecvRecordAfterRecvStop(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		for i := 0; i < 20; i++ {
			a, c := socketpair(t)
			pollFor(t, b, []Sub{{Op: OpRecvStart, Fd: a, Token: 1}}, 0)
			r := tlsRecord(22, randBytes(300))
			go func() { writeAll(t, c, r) }()
			var late, answer []byte
			answered := false
			var ret []Sub
			subs := []Sub{{Op: OpRecvStop, Fd: a, Token: 1}, {Op: OpRecvRecord, Fd: a, Token: 1}}
			deadline := time.Now().Add(5 * time.Second)
			for !answered && len(late) < len(r) && time.Now().Before(deadline) {
				for _, x := range pollFor(t, b, append(subs, ret...), 5*time.Millisecond) {
					if x.Kind != EvRecv || x.Token != 1 {
						t.Fatalf("unexpected %+v", x)
					}
					var p []byte
					if x.Res > 0 {
						p = unsafe.Slice((*byte)(unsafe.Pointer(x.Ptr)), x.Res)
						ret = append(ret, Sub{Op: OpBufReturn, Arg: x.Buf})
					}
					if x.Flags&FlagMore != 0 {
						late = append(late, p...)
					} else {
						answered, answer = true, append(answer, p...)
					}
				}
				subs = nil
			}
			if got := append(late, answer...); !bytes.Equal(got, r) {
				t.Fatalf("late %d + answer %d bytes, not the record's %d (answered %v)", len(late), len(answer), len(r), answered)
			}
			if len(late) == 0 && !answered {
				t.Fatal("no answer")
			}
			collect(t, b, append(ret, Sub{Op: OpClose, Fd: a, Token: 9}), hasKind(EvClosed, 9))
			unix.Close(int(c))
		}
		if n := recsOut(b); n != 0 {
			t.Fatalf("%d record buffers not back", n)
		}
	})
}

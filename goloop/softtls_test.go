package goloop

import (
	"bytes"
	"crypto/sha256"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Soft TLS (softtls.go) through the backends' ops, on any kernel: the
// harness of ktls_handshake_test.go (crypto/tls handshakes over loopback
// TCP, the key log becomes the KTLSParams C would hand over), OpKTLS with
// KTLSSoftOnly, then the same ops and answers as kernel TLS gives, with
// crypto/tls as the peer.

var softBackends = []string{"epoll", "io_uring"}

// softSetup handshakes (our end the server if server; a TLS 1.3 client
// gets session tickets if tickets), hands a dup of our end to a new
// backend and installs soft TLS with OpKTLS.
func softSetup(t testing.TB, kind string, c ktlsCase, server, tickets bool) (*ktlsEnd, *ktlsDriver, int32) {
	tt := t.(*testing.T)
	k := ktlsHandshake(tt, c, server, tickets)
	dfd, err := dupConnFd(k.tcp)
	if err != nil {
		t.Fatal(err)
	}
	fd := int32(dfd)
	b, err := NewBackend(kind, Options{BufSize: 16 << 10, BufCount: 64, Entries: 256})
	if err != nil {
		unix.Close(dfd)
		t.Skip(err)
	}
	t.Cleanup(func() { b.Close() })
	d := &ktlsDriver{t: tt, b: b}
	p := ktlsParamsFrom(tt, c, k)
	p.Flags = KTLSSoftOnly
	soft0, tx0 := ktlsStats.soft.Load(), ktlsStats.tx.Load()
	d.run([]Sub{{Op: OpKTLS, Fd: fd, Token: 1, Ptr: paramsPtr(p)}}, d.has(EvKTLS, 1))
	*p = KTLSParams{}
	if r, _ := d.last(EvKTLS, 1); r.Res != 0 || r.Aux != KTLSTX|KTLSRX|KTLSSoftware {
		t.Fatalf("EvKTLS %+v, want Res 0 Aux TX|RX|SOFTWARE", r)
	}
	if ktlsStats.soft.Load() != soft0+1 || ktlsStats.tx.Load() != tx0 {
		t.Fatal("ktls_soft did not count the install (or ktls_tx did)")
	}
	return k, d, fd
}

// peerRaw is the peer's TCP connection under crypto/tls, and a record
// layer with the peer's keys (our RX keys), to write records crypto/tls
// would not: split byte by byte, tickets, KeyUpdate, corrupted, too long.
func peerRaw(t *testing.T, k *ktlsEnd) (net.Conn, *recordCipher) {
	rk := *k.cfg.RX
	rc, err := newRecordCipher(k.cfg.Version, k.cfg.Cipher, &rk)
	if err != nil {
		t.Fatal(err)
	}
	return k.peer.NetConn(), rc
}

// cBytes is n random bytes in memory Go does not manage, as C's buffers
// are (the record layer reads sends through raw pointers).
func cBytes(t testing.TB, n int) []byte {
	m, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(m) })
	copy(m, randBytes(n))
	return m
}

// TestSoftTLSOps: on both backends, TLS 1.2 and 1.3 with each AEAD suite
// (our end a TLS 1.2 server, a TLS 1.3 client that gets session tickets):
// data each way checked by hash (16 MiB for AES-128-GCM), the tickets
// dropped, our close_notify as a record-typed OpSend ends the peer's
// reads, the peer's close_notify while paused ends our resumed receive
// with 0, and no record buffer stays out.
func TestSoftTLSOps(t *testing.T) {
	for _, kind := range softBackends {
		for _, c := range ktlsCases {
			t.Run(kind+"/"+c.name, func(t *testing.T) {
				server := c.version == TLS12
				tickets0 := ktlsStats.tickets.Load()
				k, d, fd := softSetup(t, kind, c, server, c.version == TLS13)
				size := 1 << 20
				if c.name == "tls1.3/aes-128-gcm" || c.name == "tls1.2/aes-128-gcm" {
					size = 16 << 20
				}
				in := randBytes(size)
				werr := make(chan error, 1)
				go func() { _, err := k.peer.Write(in); werr <- err }()
				d.run([]Sub{{Op: OpRecvStart, Fd: fd, Token: 1}}, func() bool { return len(d.data) >= len(in) || d.recvEnded(1)() })
				if err := <-werr; err != nil {
					t.Fatalf("peer write: %v", err)
				}
				if sha256.Sum256(d.data) != sha256.Sum256(in) {
					t.Fatalf("received %d bytes, not the %d the peer sent", len(d.data), len(in))
				}
				if c.version == TLS13 && ktlsStats.tickets.Load() == tickets0 {
					t.Fatal("no session ticket dropped before the data")
				}

				out := cBytes(t, size)
				rc := make(chan []byte, 1)
				go func() {
					buf := make([]byte, len(out))
					n, _ := io.ReadFull(k.peer, buf)
					rc <- buf[:n]
				}()
				// Sends of several sizes in one batch, as C gathers them.
				var subs []Sub
				for off, i := 0, 0; off < len(out); i++ {
					n := min(len(out)-off, []int{1, 100, 70000, 16384, 5000}[i%5])
					subs = append(subs, Sub{Op: OpSend, Fd: fd, Token: uint64(100 + i), Ptr: ptrOf(out[off:]), Len: uint32(n)})
					off += n
				}
				last := subs[len(subs)-1].Token
				d.run(subs, d.has(EvSend, last))
				for _, s := range subs {
					if r, _ := d.last(EvSend, s.Token); r.Res != int32(s.Len) {
						t.Fatalf("EvSend %+v for %d bytes", r, s.Len)
					}
				}
				if got := <-rc; sha256.Sum256(got) != sha256.Sum256(out) {
					t.Fatalf("peer got %d bytes, not the %d sent", len(got), len(out))
				}

				alert := cAlloc(2)
				alert[0], alert[1] = 1, 0
				eof := make(chan error, 1)
				go func() { _, err := k.peer.Read(make([]byte, 16)); eof <- err }()
				d.run([]Sub{{Op: OpSend, Fd: fd, Token: 2, Ptr: ptrOf(alert), Len: 2, Arg: ArgRecType(RecordAlert)}}, d.has(EvSend, 2))
				if r, _ := d.last(EvSend, 2); r.Res != 2 {
					t.Fatalf("close_notify's EvSend %+v", r)
				}
				if err := <-eof; err != io.EOF {
					t.Fatalf("peer read after our close_notify: %v, want io.EOF", err)
				}

				d.step([]Sub{{Op: OpRecvStop, Fd: fd, Token: 1}}, 0)
				if err := k.peer.Close(); err != nil {
					t.Fatalf("peer close: %v", err)
				}
				time.Sleep(20 * time.Millisecond)
				d.step(nil, 20*time.Millisecond)
				if r, ok := d.last(EvRecv, 1); ok && r.Res <= 0 {
					t.Fatalf("receive ended after its stop: %+v", r)
				}
				d.run([]Sub{{Op: OpRecvStart, Fd: fd, Token: 3}}, d.recvEnded(3))
				if r, _ := d.last(EvRecv, 3); r.Res != 0 || r.Aux != 0 {
					t.Fatalf("after the peer's close_notify: %+v, want EvRecv 0", r)
				}
				// Ended for good: a receive started again ends the same way.
				d.run([]Sub{{Op: OpRecvStart, Fd: fd, Token: 4}}, d.recvEnded(4))
				d.run([]Sub{{Op: OpClose, Fd: fd, Token: 1}}, d.has(EvClosed, 1))
				if n := recsOut(d.b); n != 0 {
					t.Fatalf("%d record buffers not back", n)
				}
			})
		}
	}
}

// TestSoftTLSRecordsSplit: records written one byte per write (each read
// finds a piece of a record), a session ticket whose message spans two
// records, then a KeyUpdate: the data arrives whole, the ticket is
// dropped, the KeyUpdate ends the receive with -EPROTO and Aux 22 << 8 |
// 24.
func TestSoftTLSRecordsSplit(t *testing.T) {
	c := ktlsCases[5] // TLS 1.3 ChaCha20-Poly1305
	for _, kind := range softBackends {
		t.Run(kind, func(t *testing.T) {
			k, d, fd := softSetup(t, kind, c, false, false)
			raw, pc := peerRaw(t, k)
			msg := []byte("split into single bytes, across many reads")
			var stream []byte
			stream, _ = pc.seal(stream, RecordApplicationData, msg)
			// A NewSessionTicket (type 4) of 40 bytes, cut after 10.
			ticket := append([]byte{4, 0, 0, 40}, bytes.Repeat([]byte{7}, 40)...)
			stream, _ = pc.seal(stream, RecordHandshake, ticket[:10])
			stream, _ = pc.seal(stream, RecordHandshake, ticket[10:])
			stream, _ = pc.seal(stream, RecordApplicationData, msg)
			stream, _ = pc.seal(stream, RecordHandshake, []byte{24, 0, 0, 1, 0}) // KeyUpdate
			tickets0 := ktlsStats.tickets.Load()
			go func() {
				for i := range stream {
					raw.Write(stream[i : i+1])
					time.Sleep(50 * time.Microsecond)
				}
			}()
			d.run([]Sub{{Op: OpRecvStart, Fd: fd, Token: 1}}, d.recvEnded(1))
			if want := append(append([]byte(nil), msg...), msg...); !bytes.Equal(d.data, want) {
				t.Fatalf("got %q", d.data)
			}
			if r, _ := d.last(EvRecv, 1); r.Res != -int32(unix.EPROTO) || r.Aux != 22<<8|24 {
				t.Fatalf("after KeyUpdate: %+v, want -EPROTO Aux %#x", r, 22<<8|24)
			}
			if ktlsStats.tickets.Load() != tickets0+2 {
				t.Fatalf("tickets dropped: %d, want 2", ktlsStats.tickets.Load()-tickets0)
			}
			d.run([]Sub{{Op: OpClose, Fd: fd, Token: 1, Arg: CloseAbort}}, d.has(EvClosed, 1))
			if n := recsOut(d.b); n != 0 {
				t.Fatalf("%d record buffers not back", n)
			}
		})
	}
}

// TestSoftTLSBadRecords: what ends a soft receive that the kernel's would
// end too: a record that does not authenticate (-EBADMSG), one longer
// than 2^14 + 256 (-EMSGSIZE), the end of stream inside a record
// (-ECONNRESET, not a silent truncation), a fatal alert (-EPROTO, Aux 21
// << 8 | description); the data before each arrives.
func TestSoftTLSBadRecords(t *testing.T) {
	cases := []struct {
		name string
		tail func(pc *recordCipher) []byte
		res  int32
		aux  uint32
	}{
		{"corrupted", func(pc *recordCipher) []byte {
			r, _ := pc.seal(nil, RecordApplicationData, []byte("tampered"))
			r[len(r)-3] ^= 1
			return r
		}, -int32(unix.EBADMSG), 0},
		{"too long", func(pc *recordCipher) []byte {
			return append([]byte{23, 3, 3, 0x41, 0x01}, make([]byte, 100)...)
		}, -int32(unix.EMSGSIZE), 0},
		{"truncated", func(pc *recordCipher) []byte {
			r, _ := pc.seal(nil, RecordApplicationData, []byte("cut short"))
			return r[:len(r)-4]
		}, -int32(unix.ECONNRESET), 0},
		{"alert", func(pc *recordCipher) []byte {
			r, _ := pc.seal(nil, RecordAlert, []byte{2, 40})
			return r
		}, -int32(unix.EPROTO), 21<<8 | 40},
	}
	for _, kind := range softBackends {
		for _, cc := range cases {
			for _, c := range []ktlsCase{ktlsCases[0], ktlsCases[3]} {
				t.Run(kind+"/"+cc.name+"/"+c.name, func(t *testing.T) {
					k, d, fd := softSetup(t, kind, c, true, false)
					raw, pc := peerRaw(t, k)
					stream, _ := pc.seal(nil, RecordApplicationData, []byte("before"))
					stream = append(stream, cc.tail(pc)...)
					raw.Write(stream)
					raw.(*net.TCPConn).CloseWrite()
					d.run([]Sub{{Op: OpRecvStart, Fd: fd, Token: 1}}, d.recvEnded(1))
					if string(d.data) != "before" {
						t.Fatalf("data %q", d.data)
					}
					if r, _ := d.last(EvRecv, 1); r.Res != cc.res || r.Aux != cc.aux {
						t.Fatalf("%+v, want Res %d Aux %#x", r, cc.res, cc.aux)
					}
					d.run([]Sub{{Op: OpClose, Fd: fd, Token: 1}}, d.has(EvClosed, 1))
					if n := recsOut(d.b); n != 0 {
						t.Fatalf("%d record buffers not back", n)
					}
				})
			}
		}
	}
}

// TestSoftTLSCloseWithSends: sends queued behind a peer that does not read
// yet. A graceful close waits for them: the peer reads all of it, and
// every EvSend comes before EvClosed. An abort answers what is not written
// with -ECANCELED, and EvClosed comes; nothing stays lent.
func TestSoftTLSCloseWithSends(t *testing.T) {
	c := ktlsCases[4] // TLS 1.3 AES-256-GCM
	for _, kind := range softBackends {
		for _, abort := range []bool{false, true} {
			name := kind + "/graceful"
			if abort {
				name = kind + "/abort"
			}
			t.Run(name, func(t *testing.T) {
				k, d, fd := softSetup(t, kind, c, true, false)
				data := cBytes(t, 8<<20)
				var subs []Sub
				for i := 0; i < 8; i++ {
					subs = append(subs, Sub{Op: OpSend, Fd: fd, Token: uint64(10 + i), Ptr: ptrOf(data[i<<20:]), Len: 1 << 20})
				}
				d.step(subs, 0)
				d.step(nil, 10*time.Millisecond)
				arg := uint32(0)
				if abort {
					arg = CloseAbort
				}
				got := make(chan []byte, 1)
				if !abort {
					go func() {
						b := make([]byte, len(data))
						n, _ := io.ReadFull(k.peer, b)
						got <- b[:n]
					}()
				}
				d.run([]Sub{{Op: OpClose, Fd: fd, Token: 1, Arg: arg}}, d.has(EvClosed, 1))
				sends := 0
				closedAt := -1
				for i, x := range d.comps {
					if x.Kind == EvSend {
						sends++
						if closedAt >= 0 {
							t.Fatal("EvSend after EvClosed")
						}
						if !abort && x.Res != 1<<20 {
							t.Fatalf("graceful close: %+v", x)
						}
						if abort && x.Res != 1<<20 && x.Res != -int32(unix.ECANCELED) {
							t.Fatalf("abort: %+v", x)
						}
					}
					if x.Kind == EvClosed {
						closedAt = i
					}
				}
				if sends != 8 {
					t.Fatalf("%d EvSend for 8 sends", sends)
				}
				if !abort {
					if b := <-got; sha256.Sum256(b) != sha256.Sum256(data) {
						t.Fatalf("peer got %d bytes of %d", len(b), len(data))
					}
				}
			})
		}
	}
}

// TestSoftTLSInstall: the params' checks, the fallback and its limits. On
// a Unix socket (not TCP) KTLSSoft goes soft without asking the kernel;
// KTLSSoft without RX, unknown flags and a second install are refused;
// without a flag the kernel's answer stands; OpSendfile on a soft fd
// answers -EOPNOTSUPP.
func TestSoftTLSInstall(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, peer := socketpair(t)
		defer unix.Close(int(peer))
		try := func(tok uint64, mod func(p *KTLSParams)) Comp {
			p := testParams()
			mod(p)
			cs := collect(t, b, []Sub{{Op: OpKTLS, Fd: a, Token: tok, Ptr: paramsPtr(p)}}, hasKind(EvKTLS, tok))
			return cs[len(cs)-1]
		}
		if r := try(1, func(p *KTLSParams) { p.Flags = KTLSSoft; p.RX = 0 }); r.Res != -int32(unix.EINVAL) {
			t.Fatalf("soft without RX: %+v", r)
		}
		if r := try(2, func(p *KTLSParams) { p.Flags = 8 }); r.Res != -int32(unix.EINVAL) {
			t.Fatalf("unknown flag: %+v", r)
		}
		if r := try(3, func(p *KTLSParams) {}); r.Res >= 0 || r.Aux != 0 {
			t.Fatalf("kernel only on a Unix socket: %+v", r)
		}
		if r := try(4, func(p *KTLSParams) { p.Flags = KTLSSoft }); r.Res != 0 || r.Aux != KTLSTX|KTLSRX|KTLSSoftware {
			t.Fatalf("soft fallback on a Unix socket: %+v", r)
		}
		if r := try(5, func(p *KTLSParams) { p.Flags = KTLSSoftOnly }); r.Res != -int32(unix.EBUSY) {
			t.Fatalf("second install: %+v", r)
		}
		cs := collect(t, b, []Sub{{Op: OpSendfile, Fd: a, Token: 6, Arg: uint32(a), Len: 10}}, hasKind(EvSendfile, 6))
		if r := cs[len(cs)-1]; r.Res != -int32(unix.EOPNOTSUPP) {
			t.Fatalf("sendfile on a soft fd: %+v", r)
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: a, Token: 7}}, hasKind(EvClosed, 7))

		// A TCP socket with GL_KTLS_SOFT: the kernel is asked first; where
		// it has no tls module (-ENOENT) Go's record layer takes over.
		tc, tpeer := tcpPair(t)
		defer unix.Close(int(tpeer))
		p := testParams()
		p.Flags = KTLSSoft
		cs = collect(t, b, []Sub{{Op: OpKTLS, Fd: tc, Token: 8, Ptr: paramsPtr(p)}}, hasKind(EvKTLS, 8))
		want := KTLSTX | KTLSRX | KTLSSoftware
		if KTLSAvailable() == nil {
			want = KTLSTX | KTLSRX
		}
		if r := cs[len(cs)-1]; r.Res != 0 || r.Aux != want {
			t.Fatalf("GL_KTLS_SOFT on TCP: %+v, want Aux %d", r, want)
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: tc, Token: 9}}, hasKind(EvClosed, 9))

		// The peer's FIN came before the keys (it sent its last record and
		// closed right after the handshake): a kernel with a tls module
		// refuses the socket (-ENOTCONN, it takes only ESTABLISHED ones)
		// before any direction went in, so Go's record layer takes over
		// there too, and the fd still reads to its end.
		fc, fpeer := tcpPair(t)
		unix.Close(int(fpeer))
		pfd := []unix.PollFd{{Fd: fc, Events: unix.POLLRDHUP}}
		if n, err := unix.Poll(pfd, 10000); n != 1 || err != nil {
			t.Fatalf("the peer's FIN did not arrive: %d %v", n, err)
		}
		p = testParams()
		p.Flags = KTLSSoft
		cs = collect(t, b, []Sub{{Op: OpKTLS, Fd: fc, Token: 10, Ptr: paramsPtr(p)}}, hasKind(EvKTLS, 10))
		if r := cs[len(cs)-1]; r.Res != 0 || r.Aux != KTLSTX|KTLSRX|KTLSSoftware {
			t.Fatalf("GL_KTLS_SOFT on TCP after the peer's FIN: %+v, want soft", r)
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: fc, Token: 11}}, hasKind(EvClosed, 11))
	})
}

// TestSoftTLSPauseResume: the peer writes while our receive is stopped and
// started again many times; every byte arrives once, in order.
func TestSoftTLSPauseResume(t *testing.T) {
	c := ktlsCases[2] // TLS 1.2 ChaCha20-Poly1305
	for _, kind := range softBackends {
		t.Run(kind, func(t *testing.T) {
			k, d, fd := softSetup(t, kind, c, true, false)
			in := randBytes(4 << 20)
			go func() {
				for off := 0; off < len(in); off += 3000 {
					k.peer.Write(in[off:min(off+3000, len(in))])
				}
			}()
			tok := uint64(1)
			deadline := time.Now().Add(30 * time.Second)
			for len(d.data) < len(in) && time.Now().Before(deadline) {
				d.step([]Sub{{Op: OpRecvStart, Fd: fd, Token: tok}}, 5*time.Millisecond)
				d.step([]Sub{{Op: OpRecvStop, Fd: fd, Token: tok}}, 0)
				d.step(nil, time.Millisecond)
				if r, ok := d.last(EvRecv, tok); ok && r.Res <= 0 {
					t.Fatalf("receive ended: %+v", r)
				}
				tok++
			}
			if !bytes.Equal(d.data, in) {
				t.Fatalf("got %d bytes of %d, or not in order", len(d.data), len(in))
			}
			d.run([]Sub{{Op: OpClose, Fd: fd, Token: 1, Arg: CloseAbort}}, d.has(EvClosed, 1))
		})
	}
}

// TestRecordCipherCross: recordCipher against the record layer written
// from the RFCs for the tests (ktls_record_test.go), for every suite, at a
// sequence number past 2^32, for each record type, both ways; a TLS 1.3
// record with padding opens to its content; a flipped bit is errRecordAuth;
// the last sequence number is refused.
func TestRecordCipherCross(t *testing.T) {
	for _, c := range ktlsCases {
		t.Run(c.name, func(t *testing.T) {
			suite, _ := KTLSSuiteFor(c.version, c.suite)
			k := &KTLSKeys{Key: randBytes(suite.Cipher.KeyLen()), IV: randBytes(suite.Cipher.IVLen(c.version)), Seq: 1<<32 + 5}
			ours, err := newRecordCipher(c.version, suite.Cipher, k)
			if err != nil {
				t.Fatal(err)
			}
			ref, _ := newTestRecordLayer(c.version, suite.Cipher, k)
			ours2, _ := newRecordCipher(c.version, suite.Cipher, k)
			ref2, _ := newTestRecordLayer(c.version, suite.Cipher, k)
			for _, typ := range []uint8{RecordApplicationData, RecordAlert, RecordHandshake} {
				for _, n := range []int{0, 1, 1000, recordMaxPlain} {
					plain := randBytes(n)
					rec, err := ours.seal(nil, typ, plain)
					if err != nil {
						t.Fatal(err)
					}
					gt, gp, err := ref.open(rec)
					if err != nil || gt != typ || !bytes.Equal(gp, plain) {
						t.Fatalf("ours -> ref: type %d %d bytes: %v", gt, len(gp), err)
					}
					rec = ref2.seal(typ, plain)
					gt, gp, err = ours2.open(rec[ours2.headerLen():ours2.headerLen()], rec)
					if err != nil || gt != typ || !bytes.Equal(gp, plain) {
						t.Fatalf("ref -> ours: type %d %d bytes: %v", gt, len(gp), err)
					}
				}
			}
			if c.version == TLS13 {
				padded := ref2.seal(0, append([]byte("padded"), RecordApplicationData, 0, 0, 0))
				if gt, gp, err := ours2.open(nil, padded); err != nil || gt != RecordApplicationData || string(gp) != "padded" {
					t.Fatalf("padded: %d %q %v", gt, gp, err)
				}
			}
			rec, _ := ours.seal(nil, RecordApplicationData, []byte("x"))
			rec[6] ^= 0x10
			if _, _, err := ours2.open(nil, rec); err != errRecordAuth {
				t.Fatalf("flipped bit: %v", err)
			}
			ours.seq = ^uint64(0)
			if _, err := ours.seal(nil, RecordApplicationData, []byte("x")); err != errRecordSeq {
				t.Fatalf("last sequence number: %v", err)
			}
		})
	}
}

// TestSoftTLSSeqExhausted: sequence numbers start where the params say,
// and never wrap: the record at 2^64 - 2 goes out, every send after it
// ends with -EOVERFLOW; a receive at 2^64 - 1 ends with -EOVERFLOW.
func TestSoftTLSSeqExhausted(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, peer := socketpair(t)
		defer unix.Close(int(peer))
		p := testParams()
		p.Flags, p.TXSeq, p.RXSeq = KTLSSoftOnly, ^uint64(0)-1, ^uint64(0)
		cfg, _, _ := p.config()
		peerRX, _ := newRecordCipher(cfg.Version, cfg.Cipher, cfg.TX)
		peerTX, _ := newRecordCipher(cfg.Version, cfg.Cipher, &KTLSKeys{Key: cfg.RX.Key, IV: cfg.RX.IV, Seq: 0})
		collect(t, b, []Sub{{Op: OpKTLS, Fd: a, Token: 1, Ptr: paramsPtr(p)}}, hasKind(EvKTLS, 1))
		msg := cBytes(t, 100)
		// One batch's sends share records: one batch, one record.
		cs := collect(t, b, []Sub{{Op: OpSend, Fd: a, Token: 2, Ptr: ptrOf(msg), Len: 100}}, hasKind(EvSend, 2))
		cs = append(cs, collect(t, b, []Sub{{Op: OpSend, Fd: a, Token: 3, Ptr: ptrOf(msg), Len: 100}}, hasKind(EvSend, 3))...)
		cs = append(cs, collect(t, b, []Sub{{Op: OpSend, Fd: a, Token: 4, Ptr: ptrOf(msg), Len: 100}}, hasKind(EvSend, 4))...)
		want := map[uint64]int32{2: 100, 3: -int32(unix.EOVERFLOW), 4: -int32(unix.EOVERFLOW)}
		for _, c := range cs {
			if c.Kind == EvSend && c.Res != want[c.Token] {
				t.Fatalf("%+v, want Res %d", c, want[c.Token])
			}
		}
		buf := make([]byte, 1000)
		n, _ := unix.Read(int(peer), buf)
		if typ, plain, err := peerRX.open(nil, buf[:n]); err != nil || typ != RecordApplicationData || !bytes.Equal(plain, msg) {
			t.Fatalf("peer: %d bytes, type %d: %v", len(plain), typ, err)
		}
		rec, _ := peerTX.seal(nil, RecordApplicationData, []byte("late"))
		unix.Write(int(peer), rec)
		cs = collect(t, b, []Sub{{Op: OpRecvStart, Fd: a, Token: 5}}, hasKind(EvRecv, 5))
		if c := cs[len(cs)-1]; c.Res != -int32(unix.EOVERFLOW) {
			t.Fatalf("receive at the last sequence number: %+v", c)
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: a, Token: 6}}, hasKind(EvClosed, 6))
	})
}

// TestSoftTLSLoopClose: a loop closed with soft fds in every state (a
// partial record held, sealed output waiting on a full socket, receives
// armed) frees them without touching anything after: the race detector
// and the fd table would see it.
func TestSoftTLSLoopClose(t *testing.T) {
	for _, kind := range softBackends {
		t.Run(kind, func(t *testing.T) {
			b, err := NewBackend(kind, Options{BufSize: 4096, BufCount: 16, Entries: 64})
			if err != nil {
				t.Skip(err)
			}
			data := cBytes(t, 4<<20)
			var peers []int32
			for i := 0; i < 3; i++ {
				a, peer := socketpair(t)
				peers = append(peers, peer, a) // the loop's close leaves fds to their owner
				p := testParams()
				p.Flags = KTLSSoftOnly
				collect(t, b, []Sub{{Op: OpKTLS, Fd: a, Token: 1, Ptr: paramsPtr(p)}}, hasKind(EvKTLS, 1))
				unix.Write(int(peer), []byte{23, 3, 3, 0x10, 0}) // a record's header: the rest never comes
				b.Poll([]Sub{
					{Op: OpRecvStart, Fd: a, Token: 2},
					{Op: OpSend, Fd: a, Token: 3, Ptr: ptrOf(data), Len: uint32(len(data))},
				}, make([]Comp, 16), 10*time.Millisecond)
			}
			b.Poll(nil, make([]Comp, 16), 10*time.Millisecond)
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			for _, p := range peers {
				unix.Close(int(p))
			}
		})
	}
}

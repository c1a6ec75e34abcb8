package goloop

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"io"
	"net"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kernel TLS through the backends' ops (the VM; `make test-ktls`): a
// crypto/tls handshake whose key log becomes the KTLSParams C would hand
// over, then OpKTLS, OpRecvStart and OpSend (plain and record-typed) on a
// dup of the kernel-TLS end, with crypto/tls as the peer. The handshake's
// own records through OpRecvRecord are TestKTLSRecvRecordHandshake's.

// ktlsDriver polls a backend for a test: every EvRecv chunk's bytes are
// copied into data and its buffer given back at the next poll; every
// completion is kept in comps for the test's checks.
type ktlsDriver struct {
	t     *testing.T
	b     Backend
	ret   []Sub
	data  []byte
	comps []Comp
}

func (d *ktlsDriver) run(subs []Sub, done func() bool) {
	d.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !done() {
		if time.Now().After(deadline) {
			d.t.Fatalf("timed out; completions %+v, %d bytes received", d.comps, len(d.data))
		}
		d.step(subs, 20*time.Millisecond)
		subs = nil
	}
}

// step is one Poll.
func (d *ktlsDriver) step(subs []Sub, timeout time.Duration) {
	d.t.Helper()
	var out [64]Comp
	subs = append(subs, d.ret...)
	d.ret = nil
	n, err := d.b.Poll(subs, out[:], timeout)
	if err != nil {
		d.t.Fatal(err)
	}
	for _, c := range out[:n] {
		if c.Kind == EvRecv && c.Res > 0 {
			d.data = append(d.data, unsafe.Slice((*byte)(unsafe.Pointer(c.Ptr)), c.Res)...)
			d.ret = append(d.ret, Sub{Op: OpBufReturn, Arg: c.Buf})
		}
		d.comps = append(d.comps, c)
	}
}

// last is the latest completion of kind for tok.
func (d *ktlsDriver) last(kind uint8, tok uint64) (Comp, bool) {
	for i := len(d.comps) - 1; i >= 0; i-- {
		if c := d.comps[i]; c.Kind == kind && c.Token == tok {
			return c, true
		}
	}
	return Comp{}, false
}

func (d *ktlsDriver) has(kind uint8, tok uint64) func() bool {
	n := len(d.comps)
	return func() bool {
		for _, c := range d.comps[n:] {
			if c.Kind == kind && c.Token == tok {
				return true
			}
		}
		return false
	}
}

// recvEnded is true once a receive ended (EvRecv Res <= 0) after now.
func (d *ktlsDriver) recvEnded(tok uint64) func() bool {
	n := len(d.comps)
	return func() bool {
		for _, c := range d.comps[n:] {
			if c.Kind == EvRecv && c.Token == tok && c.Res <= 0 {
				return true
			}
		}
		return false
	}
}

// ktlsParamsFrom is what C hands over after its handshake, from the key
// log and the hello randoms, in stand-in C memory.
func ktlsParamsFrom(t testing.TB, c ktlsCase, k *ktlsEnd) *KTLSParams {
	t.Helper()
	p := newParams()
	*p = KTLSParams{Version: c.version, Suite: c.suite, RX: 1}
	if k.server {
		p.Server = 1
	}
	secrets := map[string][]byte{}
	for _, line := range strings.Split(k.keylog, "\n") {
		if f := strings.Fields(line); len(f) == 3 {
			secrets[f[0]], _ = hex.DecodeString(f[2])
		}
	}
	if c.version == TLS13 {
		cs, ss := secrets["CLIENT_TRAFFIC_SECRET_0"], secrets["SERVER_TRAFFIC_SECRET_0"]
		p.SecretLen = uint8(len(cs))
		copy(p.ClientSecret[:], cs)
		copy(p.ServerSecret[:], ss)
		return p
	}
	clientOut, serverOut := k.rec.out, k.rec.in
	if k.server {
		clientOut, serverOut = k.rec.in, k.rec.out
	}
	cr, err := helloRandom(clientOut, 1)
	if err != nil {
		t.Fatal(err)
	}
	sr, err := helloRandom(serverOut, 2)
	if err != nil {
		t.Fatal(err)
	}
	copy(p.ClientRandom[:], cr)
	copy(p.ServerRandom[:], sr)
	copy(p.Master[:], secrets["CLIENT_RANDOM"])
	p.TXSeq, p.RXSeq = 1, 1
	return p
}

// ktlsOpsSetup handshakes, hands a dup of the kernel-TLS end to a new
// backend and installs TX and RX with OpKTLS.
func ktlsOpsSetup(t *testing.T, kind string, c ktlsCase, server bool) (*ktlsEnd, *ktlsDriver, int32) {
	t.Helper()
	k := ktlsHandshake(t, c, server, c.version == TLS13 && !server)
	dfd, err := dupConnFd(k.tcp)
	if err != nil {
		t.Fatal(err)
	}
	fd := int32(dfd)
	b, err := NewBackend(kind, Options{BufSize: 16 << 10, BufCount: 64, Entries: 256})
	if err != nil {
		unix.Close(dfd)
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	d := &ktlsDriver{t: t, b: b}
	p := ktlsParamsFrom(t, c, k)
	tx0, rx0 := ktlsStats.tx.Load(), ktlsStats.rx.Load()
	d.run([]Sub{{Op: OpKTLS, Fd: fd, Token: 1, Ptr: paramsPtr(p)}}, d.has(EvKTLS, 1))
	*p = KTLSParams{} // C wipes its copy once answered
	if r, _ := d.last(EvKTLS, 1); r.Res != 0 || r.Aux != KTLSTX|KTLSRX {
		t.Fatalf("EvKTLS %+v, want Res 0 Aux TX|RX", r)
	}
	if ktlsStats.tx.Load() != tx0+1 || ktlsStats.rx.Load() != rx0+1 {
		t.Fatal("ktls_tx/ktls_rx did not count the install")
	}
	return k, d, fd
}

// TestKTLSBackendOps: on both backends, for TLS 1.2 and 1.3 with each
// AEAD suite (the kernel-TLS end a TLS 1.2 server, a TLS 1.3 client that
// gets a session ticket): 1 MiB each way, the ticket dropped, our
// close_notify as a record-typed OpSend ends the peer's reads, the peer's
// close_notify ends our receive with 0.
func TestKTLSBackendOps(t *testing.T) {
	requireKTLS(t)
	for _, kind := range []string{"epoll", "io_uring"} {
		for _, c := range ktlsCases {
			t.Run(kind+"/"+c.name, func(t *testing.T) {
				server := c.version == TLS12
				before := tlsStat(t)
				tickets0 := ktlsStats.tickets.Load()
				k, d, fd := ktlsOpsSetup(t, kind, c, server)

				in := randBytes(1 << 20)
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

				out := randBytes(1 << 20)
				rc := make(chan []byte, 1)
				rerr := make(chan error, 1)
				go func() {
					buf := make([]byte, len(out))
					n, err := io.ReadFull(k.peer, buf)
					rerr <- err
					rc <- buf[:n]
				}()
				d.run([]Sub{{Op: OpSend, Fd: fd, Token: 1, Ptr: ptrOf(out), Len: uint32(len(out))}}, d.has(EvSend, 1))
				if r, _ := d.last(EvSend, 1); r.Res != int32(len(out)) {
					t.Fatalf("EvSend %+v", r)
				}
				if err := <-rerr; err != nil {
					t.Fatalf("peer read: %v", err)
				}
				if got := <-rc; sha256.Sum256(got) != sha256.Sum256(out) {
					t.Fatalf("peer got %d bytes, not the %d sent", len(got), len(out))
				}

				// Our close_notify: the peer's Read says io.EOF.
				alert := cAlloc(2)
				alert[0], alert[1] = 1, 0
				eof := make(chan error, 1)
				go func() { _, err := k.peer.Read(make([]byte, 16)); eof <- err }()
				d.run([]Sub{{Op: OpSend, Fd: fd, Token: 1, Ptr: ptrOf(alert), Len: 2, Arg: ArgRecType(RecordAlert)}}, d.has(EvSend, 1))
				if r, _ := d.last(EvSend, 1); r.Res != 2 {
					t.Fatalf("close_notify's EvSend %+v", r)
				}
				if err := <-eof; err != io.EOF {
					t.Fatalf("peer read after our close_notify: %v, want io.EOF", err)
				}

				// The peer's close_notify: end of stream. It comes while C
				// has stopped reading (paused): on io_uring the stopped
				// multishot recv meets it (EIO) after the stop; that must
				// leave it in the socket for the next receive, not become a
				// read error.
				if err := k.peer.Close(); err != nil {
					t.Fatalf("peer close: %v", err)
				}
				time.Sleep(50 * time.Millisecond)
				d.step([]Sub{{Op: OpRecvStop, Fd: fd, Token: 1}}, 0)
				d.step(nil, 20*time.Millisecond)
				if r, ok := d.last(EvRecv, 1); ok && r.Res <= 0 {
					t.Fatalf("receive ended after its stop: %+v", r)
				}
				d.run([]Sub{{Op: OpRecvStart, Fd: fd, Token: 1}}, d.recvEnded(1))
				if r, _ := d.last(EvRecv, 1); r.Res != 0 || r.Aux != 0 {
					t.Fatalf("after the peer's close_notify: %+v, want EvRecv 0", r)
				}
				d.run([]Sub{{Op: OpClose, Fd: fd, Token: 1}}, d.has(EvClosed, 1))
				after := tlsStat(t)
				if after["TlsTxSw"] <= before["TlsTxSw"] || after["TlsRxSw"] <= before["TlsRxSw"] {
					t.Fatalf("kernel TLS counters did not grow: %v -> %v", before, after)
				}
				if after["TlsDecryptError"] != before["TlsDecryptError"] {
					t.Fatalf("decrypt errors: %v -> %v", before["TlsDecryptError"], after["TlsDecryptError"])
				}
				if n := recsOut(d.b); n != 0 {
					t.Fatalf("%d record buffers not back", n)
				}
			})
		}
	}
}

// TestKTLSBackendFatalAlert: a record of a type crypto/tls does not know
// (24, sent with ArgRecType) makes it answer with a fatal
// unexpected_message alert, which ends our receive with -EPROTO and Aux =
// 21 << 8 | 10. The roles are the other way round from
// TestKTLSBackendOps (a TLS 1.2 client, a TLS 1.3 server without tickets).
func TestKTLSBackendFatalAlert(t *testing.T) {
	requireKTLS(t)
	for _, kind := range []string{"epoll", "io_uring"} {
		for _, c := range ktlsCases {
			t.Run(kind+"/"+c.name, func(t *testing.T) {
				k, d, fd := ktlsOpsSetup(t, kind, c, c.version == TLS13)
				perr := make(chan error, 1)
				go func() { _, err := k.peer.Read(make([]byte, 16)); perr <- err }()
				odd := cAlloc(1)
				odd[0] = 1
				d.run([]Sub{
					{Op: OpRecvStart, Fd: fd, Token: 1},
					{Op: OpSend, Fd: fd, Token: 1, Ptr: ptrOf(odd), Len: 1, Arg: ArgRecType(24)},
				}, d.recvEnded(1))
				if r, _ := d.last(EvSend, 1); r.Res != 1 {
					t.Fatalf("EvSend %+v", r)
				}
				if r, _ := d.last(EvRecv, 1); r.Res != -int32(unix.EPROTO) || r.Aux != 21<<8|10 {
					t.Fatalf("after the peer's fatal alert: %+v, want -EPROTO Aux %#x", r, 21<<8|10)
				}
				if err := <-perr; err == nil || !strings.Contains(err.Error(), "unexpected message") {
					t.Fatalf("peer read: %v, want its unexpected message error", err)
				}
				d.run([]Sub{{Op: OpClose, Fd: fd, Token: 1, Arg: CloseAbort}}, d.has(EvClosed, 1))
				if len(d.data) != 0 {
					t.Fatalf("%d bytes of data from nowhere", len(d.data))
				}
			})
		}
	}
}

// backendConn is the kernel-TLS end's transport for a crypto/tls handshake
// driven through a backend, as C drives OpenSSL through memory BIOs: each
// Read that needs bytes asks the test's loop for one OpRecvRecord and gets
// that one record; each Write becomes an OpSend. It keeps the first bytes
// each way, for the hello randoms (as recordConn does).
type backendConn struct {
	net.Conn // addresses only; no I/O goes through it
	want     chan struct{}
	recs     chan []byte
	writes   chan []byte
	buf      []byte
	in, out  []byte
}

func (c *backendConn) Read(p []byte) (int, error) {
	if len(c.buf) == 0 {
		c.want <- struct{}{}
		r, ok := <-c.recs
		if !ok {
			return 0, io.EOF
		}
		c.buf = r
		c.in = keep(c.in, r)
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

func (c *backendConn) Write(p []byte) (int, error) {
	c.out = keep(c.out, p)
	c.writes <- append([]byte(nil), p...)
	return len(p), nil
}

// TestKTLSRecvRecordHandshake: the whole way C will take. The kernel-TLS
// end's crypto/tls handshakes over OpRecvRecord (each record read alone,
// never a byte past it) and OpSend; then OpKTLS and OpRecvStart in one
// batch; data both ways, a TLS 1.3 client's ticket (left in the socket
// behind the handshake) dropped, the peer's close_notify is end of stream.
func TestKTLSRecvRecordHandshake(t *testing.T) {
	requireKTLS(t)
	for _, kind := range []string{"epoll", "io_uring"} {
		for _, c := range ktlsCases {
			t.Run(kind+"/"+c.name, func(t *testing.T) {
				server := c.version == TLS12
				tickets := !server
				if c.version == TLS13 {
					saved, savedNoAES := tls13DefaultSuites, tls13DefaultSuitesNoAES
					tls13DefaultSuites, tls13DefaultSuitesNoAES = []uint16{c.suite}, []uint16{c.suite}
					t.Cleanup(func() { tls13DefaultSuites, tls13DefaultSuitesNoAES = saved, savedNoAES })
				}
				ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
				if err != nil {
					t.Fatal(err)
				}
				cli, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
				if err != nil {
					t.Fatal(err)
				}
				srv, err := ln.AcceptTCP()
				ln.Close()
				if err != nil {
					t.Fatal(err)
				}
				mine, theirs := cli, srv
				if server {
					mine, theirs = srv, cli
				}
				dfd, err := dupConnFd(mine)
				if err != nil {
					t.Fatal(err)
				}
				fd := int32(dfd)
				t.Cleanup(func() { cli.Close(); srv.Close() })
				theirs.SetDeadline(time.Now().Add(60 * time.Second))

				cert, pool := ktlsTestCert(t)
				var keylog bytes.Buffer
				scfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: c.version, MaxVersion: c.version,
					SessionTicketsDisabled: !tickets}
				ccfg := &tls.Config{RootCAs: pool, ServerName: "ktls.test", MinVersion: c.version, MaxVersion: c.version}
				if tickets {
					ccfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
				}
				if c.version == TLS12 {
					scfg.CipherSuites, ccfg.CipherSuites = []uint16{c.suite}, []uint16{c.suite}
				}
				bc := &backendConn{Conn: mine, want: make(chan struct{}), recs: make(chan []byte, 1), writes: make(chan []byte)}
				var me, peer *tls.Conn
				if server {
					scfg.KeyLogWriter = &keylog
					me, peer = tls.Server(bc, scfg), tls.Client(theirs, ccfg)
				} else {
					ccfg.KeyLogWriter = &keylog
					me, peer = tls.Client(bc, ccfg), tls.Server(theirs, scfg)
				}
				perr := make(chan error, 1)
				go func() { perr <- peer.Handshake() }()
				herr := make(chan error, 1)
				go func() { herr <- me.Handshake() }()

				b, err := NewBackend(kind, Options{BufSize: 16 << 10, BufCount: 64, Entries: 256})
				if err != nil {
					t.Fatal(err)
				}
				defer b.Close()
				d := &ktlsDriver{t: t, b: b}
				var subs []Sub
				sends, records := 0, 0
				handshaken := false
				deadline := time.Now().Add(60 * time.Second)
				for !handshaken || sends > 0 {
					select {
					case <-bc.want:
						subs = append(subs, Sub{Op: OpRecvRecord, Fd: fd, Token: 1})
					case p := <-bc.writes:
						m := cAlloc(len(p))
						copy(m, p)
						subs = append(subs, Sub{Op: OpSend, Fd: fd, Token: 1, Ptr: ptrOf(m), Len: uint32(len(m))})
						sends++
					case err := <-herr:
						if err != nil {
							t.Fatalf("handshake through the backend: %v", err)
						}
						handshaken = true
					default:
						n := len(d.comps)
						d.data = d.data[:0]
						d.step(subs, 2*time.Millisecond)
						subs = nil
						for _, x := range d.comps[n:] {
							switch {
							case x.Kind == EvSend && x.Res < 0:
								t.Fatalf("handshake send: %+v", x)
							case x.Kind == EvSend:
								sends--
							case x.Kind == EvRecv && x.Res <= 0:
								t.Fatalf("handshake record: %+v", x)
							case x.Kind == EvRecv:
								records++
								if int(x.Res) != 5+int(binary.BigEndian.Uint16(d.data[3:5])) {
									t.Fatalf("OpRecvRecord gave %d bytes: % x...", x.Res, d.data[:5])
								}
								bc.recs <- append([]byte(nil), d.data...)
							}
						}
						if time.Now().After(deadline) {
							t.Fatal("handshake timed out")
						}
					}
				}
				if err := <-perr; err != nil {
					t.Fatalf("peer handshake: %v", err)
				}
				if st := me.ConnectionState(); st.Version != c.version || st.CipherSuite != c.suite {
					t.Fatalf("negotiated %#04x/%#04x", st.Version, st.CipherSuite)
				}
				if records == 0 {
					t.Fatal("no record came through OpRecvRecord")
				}

				k := &ktlsEnd{server: server, keylog: keylog.String(), rec: &recordConn{in: bc.in, out: bc.out}}
				p := ktlsParamsFrom(t, c, k)
				tickets0 := ktlsStats.tickets.Load()
				d.data = nil
				d.run([]Sub{{Op: OpKTLS, Fd: fd, Token: 1, Ptr: paramsPtr(p)}, {Op: OpRecvStart, Fd: fd, Token: 1}}, d.has(EvKTLS, 1))
				if r, _ := d.last(EvKTLS, 1); r.Res != 0 || r.Aux != KTLSTX|KTLSRX {
					t.Fatalf("EvKTLS %+v", r)
				}
				in := randBytes(64 << 10)
				werr := make(chan error, 1)
				go func() { _, err := peer.Write(in); werr <- err }()
				d.run(nil, func() bool { return len(d.data) >= len(in) || d.recvEnded(1)() })
				if err := <-werr; err != nil || !bytes.Equal(d.data, in) {
					t.Fatalf("peer wrote %d bytes (%v), %d arrived", len(in), err, len(d.data))
				}
				if tickets && c.version == TLS13 && ktlsStats.tickets.Load() == tickets0 {
					t.Fatal("no session ticket dropped")
				}
				out := randBytes(64 << 10)
				rerr := make(chan error, 1)
				got := make([]byte, len(out))
				go func() { _, err := io.ReadFull(peer, got); rerr <- err }()
				d.run([]Sub{{Op: OpSend, Fd: fd, Token: 1, Ptr: ptrOf(out), Len: uint32(len(out))}}, d.has(EvSend, 1))
				if err := <-rerr; err != nil || !bytes.Equal(got, out) {
					t.Fatalf("peer read: %v", err)
				}
				go peer.Close()
				d.run(nil, d.recvEnded(1))
				if r, _ := d.last(EvRecv, 1); r.Res != 0 {
					t.Fatalf("after the peer's close_notify: %+v", r)
				}
				d.run([]Sub{{Op: OpClose, Fd: fd, Token: 1}}, d.has(EvClosed, 1))
				if n := recsOut(b); n != 0 {
					t.Fatalf("%d record buffers not back", n)
				}
			})
		}
	}
}

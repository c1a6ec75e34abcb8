package goloop

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
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
	out := make([]Comp, 64)
	deadline := time.Now().Add(60 * time.Second)
	for !done() {
		if time.Now().After(deadline) {
			d.t.Fatalf("timed out; completions %+v, %d bytes received", d.comps, len(d.data))
		}
		subs = append(subs, d.ret...)
		d.ret = nil
		n, err := d.b.Poll(subs, out, 20*time.Millisecond)
		if err != nil {
			d.t.Fatal(err)
		}
		subs = nil
		for _, c := range out[:n] {
			if c.Kind == EvRecv && c.Res > 0 {
				d.data = append(d.data, unsafe.Slice((*byte)(unsafe.Pointer(c.Ptr)), c.Res)...)
				d.ret = append(d.ret, Sub{Op: OpBufReturn, Arg: c.Buf})
			}
			d.comps = append(d.comps, c)
		}
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
func ktlsParamsFrom(t *testing.T, c ktlsCase, k *ktlsEnd) *KTLSParams {
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

				// The peer's close_notify: end of stream.
				go k.peer.Close()
				d.run(nil, d.recvEnded(1))
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

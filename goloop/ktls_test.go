package goloop

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The keys and sequence numbers derived from crypto/tls's key log are the
// ones its record layer uses, checked without the kernel (runs everywhere):
// the first record the user-space end sends opens with the kernel-TLS end's
// RX keys at its RX sequence number, and a record sealed with the TX keys at
// the TX sequence number is read by crypto/tls as application data.
func TestKTLSKeysMatchCryptoTLS(t *testing.T) {
	for _, c := range ktlsCases {
		for _, server := range []bool{false, true} {
			t.Run(c.name+"/"+sideName(server), func(t *testing.T) {
				k := ktlsHandshake(t, c, server, false)
				msg := []byte("from user space")
				go k.peer.Write(msg)
				rec, err := readRawRecord(k.tcp)
				if err != nil {
					t.Fatal(err)
				}
				rx, err := newTestRecordLayer(c.version, k.cfg.Cipher, k.cfg.RX)
				if err != nil {
					t.Fatal(err)
				}
				typ, plain, err := rx.open(rec)
				if err != nil || typ != RecordApplicationData || !bytes.Equal(plain, msg) {
					t.Fatalf("opening the peer's record with the derived RX keys (seq %d): type %d %q %v",
						k.cfg.RX.Seq, typ, plain, err)
				}
				tx, err := newTestRecordLayer(c.version, k.cfg.Cipher, k.cfg.TX)
				if err != nil {
					t.Fatal(err)
				}
				reply := []byte("sealed with the derived TX keys")
				if _, err := k.tcp.Write(tx.seal(RecordApplicationData, reply)); err != nil {
					t.Fatal(err)
				}
				got := make([]byte, len(reply))
				if _, err := io.ReadFull(k.peer, got); err != nil || !bytes.Equal(got, reply) {
					t.Fatalf("crypto/tls read %q, %v", got, err)
				}
			})
		}
	}
}

func sideName(server bool) string {
	if server {
		return "ktls-server"
	}
	return "ktls-client"
}

var ktlsSizes = []int{1, 1000, 16384, 16385, 100003, 1 << 20}

// Kernel TLS against crypto/tls, each version and cipher, the kernel on
// either end: plaintext both ways at sizes around the 16 KiB record limit
// up to 1 MiB (SHA-256 compared), the kernel's counters, and the non-data
// records: a TLS 1.3 server's session tickets reach the kernel-TLS client
// as handshake records before the data; the peer's close_notify arrives as
// an alert record (read(2) fails with EIO on it rather than passing it off
// as data); a close_notify sent through the kernel ends crypto/tls's read
// cleanly.
func TestKTLSCryptoTLSPeer(t *testing.T) {
	requireKTLS(t)
	for _, c := range ktlsCases {
		for _, server := range []bool{false, true} {
			t.Run(c.name+"/"+sideName(server), func(t *testing.T) {
				tickets := !(server && c.version == TLS13)
				before := tlsStat(t)
				k := ktlsHandshake(t, c, server, tickets)
				k.install(t, true, true)
				after := tlsStat(t)
				if d := after["TlsTxSw"] + after["TlsTxDevice"] - before["TlsTxSw"] - before["TlsTxDevice"]; d != 1 {
					t.Errorf("TX kernel TLS sockets went up by %d, want 1", d)
				}
				if d := after["TlsRxSw"] + after["TlsRxDevice"] - before["TlsRxSw"] - before["TlsRxDevice"]; d != 1 {
					t.Errorf("RX kernel TLS sockets went up by %d, want 1", d)
				}
				k.tcp.SetDeadline(time.Now().Add(2 * time.Minute))
				if c.version == TLS13 && !server {
					// The ticket crypto/tls's server sent behind its Finished,
					// the first record under the application keys (seq 0), read
					// in two pieces: a record longer than the buffer is returned
					// piecewise, each piece with its type.
					hdr := make([]byte, 4)
					n, typ, err := k.recv(hdr)
					if err != nil || n != 4 || typ != RecordHandshake || hdr[0] != 4 { // new_session_ticket
						t.Fatalf("first record: %d bytes, type %d, % x, %v; want a NewSessionTicket", n, typ, hdr[:n], err)
					}
					body := make([]byte, 64<<10)
					n, typ, err = k.recv(body)
					if want := int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3]); err != nil || n != want || typ != RecordHandshake {
						t.Fatalf("NewSessionTicket body: %d bytes of type %d, %v; want %d of type 22", n, typ, err, want)
					}
					t.Logf("a %d-byte NewSessionTicket came as a handshake record", 4+n)
				}
				rng := rand.New(rand.NewPCG(uint64(len(c.name)), 1))
				for _, n := range ktlsSizes {
					for _, r := range exchange(t, k, rng, n) {
						t.Errorf("%d bytes: unexpected non-data record: %v", n, r)
					}
				}

				// The peer's close_notify: read(2) refuses it, RecvRecord gives it.
				if err := k.peer.CloseWrite(); err != nil {
					t.Fatal(err)
				}
				if n, err := k.readPlain(make([]byte, 100)); err != unix.EIO {
					t.Fatalf("read(2) of an alert record: %d, %v; want EIO", n, err)
				}
				buf := make([]byte, 100)
				n, typ, err := k.recv(buf)
				if err != nil || typ != RecordAlert || !bytes.Equal(buf[:n], []byte{1, 0}) {
					t.Fatalf("close_notify: type %d % x %v; want alert 01 00", typ, buf[:n], err)
				}
				// Ours, sent through the kernel.
				if err := k.send(RecordAlert, []byte{1, 0}); err != nil {
					t.Fatal(err)
				}
				k.peer.SetReadDeadline(time.Now().Add(time.Minute))
				if n, err := k.peer.Read(buf); n != 0 || err != io.EOF {
					t.Fatalf("crypto/tls after our close_notify: %d, %v; want EOF", n, err)
				}
				end := tlsStat(t)
				if end["TlsDecryptError"] != before["TlsDecryptError"] {
					t.Errorf("TlsDecryptError went from %d to %d", before["TlsDecryptError"], end["TlsDecryptError"])
				}
				t.Logf("tls_stat after: TlsTxSw=%d TlsRxSw=%d TlsCurrTxSw=%d TlsCurrRxSw=%d TlsDecryptError=%d",
					end["TlsTxSw"], end["TlsRxSw"], end["TlsCurrTxSw"], end["TlsCurrRxSw"], end["TlsDecryptError"])
			})
		}
	}
}

// exchange sends n random bytes each way at once and checks them; it
// returns the non-data records the kernel-TLS end received meanwhile.
func exchange(t *testing.T, k *ktlsEnd, rng *rand.Rand, n int) []ctrlRecord {
	t.Helper()
	toK, fromK := make([]byte, n), make([]byte, n)
	for i := range toK {
		toK[i], fromK[i] = byte(rng.Uint32()), byte(rng.Uint32())
	}
	errc := make(chan error, 3)
	go func() { _, err := k.peer.Write(toK); errc <- err }()
	go func() { _, err := k.tcp.Write(fromK); errc <- err }()
	go func() {
		got := make([]byte, n)
		_, err := io.ReadFull(k.peer, got)
		if err == nil && sha256.Sum256(got) != sha256.Sum256(fromK) {
			err = errors.New("crypto/tls received other bytes than the kernel was given")
		}
		errc <- err
	}()
	got, ctrl, err := k.recvData(n)
	if err != nil {
		t.Fatalf("%d bytes: kernel-TLS end: %v", n, err)
	}
	if sha256.Sum256(got) != sha256.Sum256(toK) {
		t.Fatalf("%d bytes: the kernel decrypted other bytes than crypto/tls sent", n)
	}
	for i := 0; i < 3; i++ {
		if err := <-errc; err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
	}
	return ctrl
}

// A KeyUpdate reaches a kernel-TLS socket as a handshake record. crypto/tls
// has no API to send one, but it answers one: the kernel-TLS end sends a
// KeyUpdate with update_requested, crypto/tls replies with its own (under
// the old keys) and switches keys. The reply is reported as a handshake
// record of type key_update; what crypto/tls sends after it is under keys
// this kernel (6.1, no rekey) does not have, and reading it is an error,
// never corrupted data. (Our end never sends again after its KeyUpdate, so
// its not switching TX keys goes unnoticed.)
func TestKTLSKeyUpdate(t *testing.T) {
	requireKTLS(t)
	for _, c := range ktlsCases {
		if c.version != TLS13 {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			k := ktlsHandshake(t, c, false, false)
			k.install(t, true, true)
			k.tcp.SetDeadline(time.Now().Add(time.Minute))
			k.peer.SetDeadline(time.Now().Add(time.Minute))
			exchange(t, k, rand.New(rand.NewPCG(7, 7)), 1000)
			peerRead := make(chan error, 1)
			go func() { _, err := k.peer.Read(make([]byte, 10)); peerRead <- err }() // processes the KeyUpdate
			if err := k.send(RecordHandshake, []byte{24, 0, 0, 1, 1}); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 100)
			n, typ, err := k.recv(buf)
			if err != nil || typ != RecordHandshake || !bytes.Equal(buf[:n], []byte{24, 0, 0, 1, 0}) {
				t.Fatalf("peer's KeyUpdate: type %d % x %v; want handshake 18 00 00 01 00", typ, buf[:n], err)
			}
			before := tlsStat(t)
			if _, err := k.peer.Write([]byte("under the next keys")); err != nil {
				t.Fatal(err)
			}
			n, typ, err = k.recv(buf)
			if err == nil {
				t.Fatalf("a record under the updated keys read as type %d % x", typ, buf[:n])
			}
			t.Logf("after the peer's KeyUpdate the kernel reports: %v (TlsDecryptError %d -> %d)",
				err, before["TlsDecryptError"], tlsStat(t)["TlsDecryptError"])
			k.tcp.Close()
			<-peerRead
		})
	}
}

// Where the kernel has TLS, goloop.features reports it, and the kernel this
// is tested on (Debian's 6.1) takes every version and cipher both ways.
func TestKTLSFeatures(t *testing.T) {
	requireKTLS(t)
	f := probeKTLSFeatures()
	if !f.Usable || f.Error != "" || len(f.Stat) == 0 {
		t.Fatalf("%+v", f)
	}
	for _, c := range ktlsCases {
		if d := f.Ciphers[c.name]; !d.TX || !d.RX {
			t.Errorf("%s: %+v", c.name, d)
		}
	}
	t.Logf("%+v", f)
}

// TX only, RX left to user space (OpenSSL 3.0's way with TLS 1.3): the
// kernel encrypts, crypto/tls's records are read raw and decrypted here.
func TestKTLSTXOnly(t *testing.T) {
	requireKTLS(t)
	for _, c := range ktlsCases {
		t.Run(c.name, func(t *testing.T) {
			k := ktlsHandshake(t, c, true, false)
			k.install(t, true, false)
			k.tcp.SetDeadline(time.Now().Add(time.Minute))
			msg := bytes.Repeat([]byte("kernel-encrypted "), 2000)
			go k.tcp.Write(msg)
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(k.peer, got); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("crypto/tls read %d bytes, %v", len(got), err)
			}
			go k.peer.Write([]byte("user-space RX"))
			rec, err := readRawRecord(k.tcp)
			if err != nil {
				t.Fatal(err)
			}
			rx, _ := newTestRecordLayer(c.version, k.cfg.Cipher, k.cfg.RX)
			typ, plain, err := rx.open(rec)
			if err != nil || typ != RecordApplicationData || string(plain) != "user-space RX" {
				t.Fatalf("user-space RX: %d %q %v", typ, plain, err)
			}
		})
	}
}

// sendfile(2) on a kernel-TLS socket: the kernel reads the file's pages and
// encrypts them into records, no user-space copy (what loop.sendfile on a
// kTLS connection will use).
func TestKTLSSendfile(t *testing.T) {
	requireKTLS(t)
	data := make([]byte, 3<<20|123)
	rand.NewChaCha8([32]byte{3}).Read(data)
	f, err := os.CreateTemp("", "ktls-sendfile")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	for _, c := range ktlsCases {
		t.Run(c.name, func(t *testing.T) {
			k := ktlsHandshake(t, c, true, false)
			k.install(t, true, true)
			k.tcp.SetDeadline(time.Now().Add(time.Minute))
			got := make(chan []byte, 1)
			go func() {
				b := make([]byte, len(data))
				n, _ := io.ReadFull(k.peer, b)
				got <- b[:n]
			}()
			off := int64(0)
			for off < int64(len(data)) {
				var n int
				var serr error
				werr := k.rc.Write(func(fd uintptr) bool {
					n, serr = unix.Sendfile(int(fd), int(f.Fd()), &off, len(data)-int(off))
					return serr != unix.EAGAIN
				})
				if werr != nil || serr != nil || n == 0 {
					t.Fatalf("sendfile at %d: %d, %v %v", off, n, werr, serr)
				}
			}
			if b := <-got; sha256.Sum256(b) != sha256.Sum256(data) {
				t.Fatalf("crypto/tls received %d other bytes", len(b))
			}
		})
	}
}

// readRawRecord reads one whole TLS record off the wire.
func readRawRecord(r io.Reader) ([]byte, error) {
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, err
	}
	rec := append(hdr, make([]byte, int(hdr[3])<<8|int(hdr[4]))...)
	_, err := io.ReadFull(r, rec[5:])
	return rec, err
}

// What the kernel refuses, and how InstallKTLS reports it: a direction
// installed twice (no rekey on 6.1: EBUSY), and a cipher the kernel does not
// know (EINVAL, the ErrKTLSUnsupported class a caller falls back on).
func TestKTLSKernelRefusals(t *testing.T) {
	requireKTLS(t)
	a, b, err := loopbackPair()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(a)
	defer unix.Close(b)
	k := &KTLSKeys{Key: make([]byte, 16), IV: make([]byte, 12)}
	cfg := KTLSConfig{Version: TLS13, Cipher: KTLSAES128GCM, TX: k}
	if tx, _, err := InstallKTLS(a, cfg); !tx || err != nil {
		t.Fatalf("first TX: %v %v", tx, err)
	}
	tx, rx, err := InstallKTLS(a, cfg)
	var ke *KTLSError
	if tx || rx || !errors.As(err, &ke) || ke.Step != "TLS_TX" || ke.Err != unix.EBUSY {
		t.Fatalf("second TX: %v %v %v; want TLS_TX EBUSY", tx, rx, err)
	}
	t.Logf("second TX: %v", err)
	ci := tls12CryptoInfoAESGCM128{info: tlsCryptoInfo{version: TLS13, cipherType: 99}}
	if err := setULP(b); err != nil {
		t.Fatal(err)
	}
	serr := setsockoptPtr(b, solTLS, tlsTX, unsafe.Pointer(&ci), unsafe.Sizeof(ci))
	err = &KTLSError{Step: "TLS_TX", Err: serr}
	if !errors.Is(err, ErrKTLSUnsupported) {
		t.Fatalf("unknown cipher: %v; want ErrKTLSUnsupported", err)
	}
	t.Logf("unknown cipher: %v", err)
}

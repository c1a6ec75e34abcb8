package goloop

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/big"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	_ "unsafe" // go:linkname

	"golang.org/x/sys/unix"
)

// The test harness for kernel TLS: Go's crypto/tls runs the handshake over a
// real loopback TCP pair, KeyLogWriter hands over the secrets (NSS key log
// lines, what OpenSSL's keylog callback gives too), and the record keys and
// sequence numbers derived from them are installed on one end, while the
// other end goes on with crypto/tls in user space.

// crypto/tls has no setting for TLS 1.3 cipher suites: a client offers all
// three, AES first where the CPU has AES-GCM instructions, and a server takes
// its own preference. These two package variables are that order; quic-go
// reaches them the same way, which is why the standard library keeps them
// linkable (go.dev/issue/67401). A test that sets them to one suite makes
// both ends negotiate it. Tests here do not run in parallel.
//
//go:linkname tls13DefaultSuites crypto/tls.defaultCipherSuitesTLS13
var tls13DefaultSuites []uint16

//go:linkname tls13DefaultSuitesNoAES crypto/tls.defaultCipherSuitesTLS13NoAES
var tls13DefaultSuitesNoAES []uint16

type ktlsCase struct {
	name    string
	version uint16
	suite   uint16
}

var ktlsCases = []ktlsCase{
	{"tls1.2/aes-128-gcm", TLS12, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
	{"tls1.2/aes-256-gcm", TLS12, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384},
	{"tls1.2/chacha20-poly1305", TLS12, tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256},
	{"tls1.3/aes-128-gcm", TLS13, tls.TLS_AES_128_GCM_SHA256},
	{"tls1.3/aes-256-gcm", TLS13, tls.TLS_AES_256_GCM_SHA384},
	{"tls1.3/chacha20-poly1305", TLS13, tls.TLS_CHACHA20_POLY1305_SHA256},
}

// requireKTLS skips where the kernel has no TLS ULP, unless the run says
// kernel TLS must be there (make test-ktls sets GOLOOP_KTLS_REQUIRED=1 in
// the VM, so a kernel that lost it fails instead of passing silently).
func requireKTLS(t *testing.T) {
	t.Helper()
	if err := KTLSAvailable(); err != nil {
		if os.Getenv("GOLOOP_KTLS_REQUIRED") == "1" {
			t.Fatalf("GOLOOP_KTLS_REQUIRED=1 but %v", err)
		}
		t.Skipf("SKIP: kernel TLS unavailable here (%v); `make test-ktls` runs this in a VM whose kernel has it", err)
	}
}

var (
	testCertOnce sync.Once
	testCert     tls.Certificate
	testCertPool *x509.CertPool
)

func ktlsTestCert(t testing.TB) (tls.Certificate, *x509.CertPool) {
	testCertOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ktls.test"},
			DNSNames: []string{"ktls.test"}, NotBefore: time.Now().Add(-time.Hour),
			NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			panic(err)
		}
		leaf, _ := x509.ParseCertificate(der)
		testCert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
		testCertPool = x509.NewCertPool()
		testCertPool.AddCert(leaf)
	})
	return testCert, testCertPool
}

// recordConn is the kernel-TLS end's transport during the handshake. It
// never reads past the end of the TLS record being read, so when the
// handshake returns, every byte after the last handshake record is still in
// the socket for the kernel (crypto/tls reads ahead otherwise, and a TLS 1.3
// server's session tickets come right behind its Finished). It also keeps
// the first bytes of each direction, for the hello randoms.
type recordConn struct {
	net.Conn
	hdr     [5]byte
	hdrN    int
	left    int
	in, out []byte
}

const recordConnKeep = 4096

func (c *recordConn) Read(p []byte) (int, error) {
	if c.left == 0 {
		if want := 5 - c.hdrN; len(p) > want {
			p = p[:want]
		}
		n, err := c.Conn.Read(p)
		copy(c.hdr[c.hdrN:], p[:n])
		if c.hdrN += n; c.hdrN == 5 {
			c.left, c.hdrN = int(binary.BigEndian.Uint16(c.hdr[3:5])), 0
		}
		c.in = keep(c.in, p[:n])
		return n, err
	}
	if len(p) > c.left {
		p = p[:c.left]
	}
	n, err := c.Conn.Read(p)
	c.left -= n
	c.in = keep(c.in, p[:n])
	return n, err
}

func (c *recordConn) Write(p []byte) (int, error) {
	c.out = keep(c.out, p)
	return c.Conn.Write(p)
}

func keep(dst, p []byte) []byte {
	if room := recordConnKeep - len(dst); room > 0 {
		dst = append(dst, p[:min(room, len(p))]...)
	}
	return dst
}

// helloRandom is the random of the hello message (1 ClientHello,
// 2 ServerHello) that starts a direction's byte stream.
func helloRandom(stream []byte, msgType byte) ([]byte, error) {
	if len(stream) < 43 || stream[0] != RecordHandshake || stream[5] != msgType {
		return nil, fmt.Errorf("stream does not start with hello %d: % x", msgType, stream[:min(len(stream), 12)])
	}
	return stream[11:43], nil
}

// ktlsEnd is the end of a handshaken connection that gets kernel TLS.
type ktlsEnd struct {
	tcp    *net.TCPConn
	rc     syscall.RawConn
	peer   *tls.Conn // the other end, user-space crypto/tls
	cfg    KTLSConfig
	server bool
	state  tls.ConnectionState
	keylog string      // the kernel-TLS end's NSS key log (ktls_ops_test.go builds a KTLSParams from it)
	rec    *recordConn // its handshake transport, with the hello randoms
}

// ktlsHandshake connects, handshakes with crypto/tls on both ends and
// derives the kernel-TLS end's keys and sequence numbers from its key log.
// tickets lets a TLS 1.3 server send session tickets; they are records
// under the application keys, so they may only be on when the kernel-TLS end
// is the client (it receives them as handshake records through RecvRecord).
func ktlsHandshake(t testing.TB, c ktlsCase, ktlsServer, tickets bool) *ktlsEnd {
	t.Helper()
	if c.version == TLS13 {
		if tickets && ktlsServer {
			t.Fatal("a TLS 1.3 kernel-TLS server with tickets: its sequence numbers would depend on the ticket count")
		}
		saved, savedNoAES := tls13DefaultSuites, tls13DefaultSuitesNoAES
		tls13DefaultSuites, tls13DefaultSuitesNoAES = []uint16{c.suite}, []uint16{c.suite}
		t.Cleanup(func() { tls13DefaultSuites, tls13DefaultSuitesNoAES = saved, savedNoAES })
	}
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	cert, pool := ktlsTestCert(t)
	var keylog bytes.Buffer
	scfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: c.version, MaxVersion: c.version,
		SessionTicketsDisabled: !tickets}
	ccfg := &tls.Config{RootCAs: pool, ServerName: "ktls.test", MinVersion: c.version, MaxVersion: c.version}
	if tickets {
		// Without a cache the client asks for no tickets (no psk_key_exchange_modes).
		ccfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
	}
	if c.version == TLS12 {
		scfg.CipherSuites, ccfg.CipherSuites = []uint16{c.suite}, []uint16{c.suite}
	}
	k := &ktlsEnd{server: ktlsServer}
	var kt *tls.Conn
	rec := &recordConn{}
	if ktlsServer {
		k.tcp, rec.Conn = srv, srv
		scfg.KeyLogWriter = &keylog
		kt, k.peer = tls.Server(rec, scfg), tls.Client(cli, ccfg)
	} else {
		k.tcp, rec.Conn = cli, cli
		ccfg.KeyLogWriter = &keylog
		kt, k.peer = tls.Client(rec, ccfg), tls.Server(srv, scfg)
	}
	t.Cleanup(func() { cli.Close(); srv.Close() })
	deadline := time.Now().Add(30 * time.Second)
	cli.SetDeadline(deadline)
	srv.SetDeadline(deadline)
	errc := make(chan error, 1)
	go func() { errc <- k.peer.Handshake() }()
	if err := kt.Handshake(); err != nil {
		t.Fatalf("handshake: %v (peer: %v)", err, <-errc)
	}
	if err := <-errc; err != nil {
		t.Fatalf("peer handshake: %v", err)
	}
	k.state = kt.ConnectionState()
	if k.state.Version != c.version || k.state.CipherSuite != c.suite {
		t.Fatalf("negotiated %#04x/%#04x, want %#04x/%#04x", k.state.Version, k.state.CipherSuite, c.version, c.suite)
	}
	if k.rc, err = k.tcp.SyscallConn(); err != nil {
		t.Fatal(err)
	}
	k.keylog, k.rec = keylog.String(), rec
	k.cfg = deriveFromKeyLog(t, c, k.keylog, rec, ktlsServer)
	return k
}

// deriveFromKeyLog turns the kernel-TLS end's key log into its KTLSConfig.
// Sequence numbers: TLS 1.2 counts from the ChangeCipherSpec, and each
// side's Finished was record 0 under the new keys, so application data
// starts at 1 both ways. TLS 1.3 application traffic keys have protected
// nothing yet when the handshake returns (tickets excepted, see
// ktlsHandshake), so both start at 0.
func deriveFromKeyLog(t testing.TB, c ktlsCase, keylog string, rec *recordConn, server bool) KTLSConfig {
	t.Helper()
	suite, ok := KTLSSuiteFor(c.version, c.suite)
	if !ok {
		t.Fatalf("suite %#04x not known to KTLSSuiteFor", c.suite)
	}
	secrets := map[string][]byte{}
	for _, line := range strings.Split(keylog, "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		b, err := hex.DecodeString(f[2])
		if err != nil {
			t.Fatalf("key log line %q: %v", line, err)
		}
		secrets[f[0]] = b
		secrets[f[0]+"/random"], _ = hex.DecodeString(f[1])
	}
	var clientOut, serverOut []byte // the streams each side wrote
	if server {
		clientOut, serverOut = rec.in, rec.out
	} else {
		clientOut, serverOut = rec.out, rec.in
	}
	cr, err := helloRandom(clientOut, 1)
	if err != nil {
		t.Fatal(err)
	}
	var ck, civ, sk, siv []byte
	var seq uint64
	if c.version == TLS13 {
		cs, ss := secrets["CLIENT_TRAFFIC_SECRET_0"], secrets["SERVER_TRAFFIC_SECRET_0"]
		if cs == nil || ss == nil {
			t.Fatalf("no TLS 1.3 traffic secrets in the key log:\n%s", keylog)
		}
		if !bytes.Equal(secrets["CLIENT_TRAFFIC_SECRET_0/random"], cr) {
			t.Fatal("key log's client random is not the ClientHello's")
		}
		if ck, civ, err = TLS13TrafficKeys(suite, cs); err == nil {
			sk, siv, err = TLS13TrafficKeys(suite, ss)
		}
	} else {
		master := secrets["CLIENT_RANDOM"]
		if master == nil {
			t.Fatalf("no CLIENT_RANDOM in the key log:\n%s", keylog)
		}
		if !bytes.Equal(secrets["CLIENT_RANDOM/random"], cr) {
			t.Fatal("key log's client random is not the ClientHello's")
		}
		var sr []byte
		if sr, err = helloRandom(serverOut, 2); err != nil {
			t.Fatal(err)
		}
		ck, civ, sk, siv, err = TLS12KeyBlock(suite, master, cr, sr)
		seq = 1
	}
	if err != nil {
		t.Fatal(err)
	}
	cli, srv := &KTLSKeys{Key: ck, IV: civ, Seq: seq}, &KTLSKeys{Key: sk, IV: siv, Seq: seq}
	if server {
		return KTLSConfig{Version: c.version, Cipher: suite.Cipher, TX: srv, RX: cli}
	}
	return KTLSConfig{Version: c.version, Cipher: suite.Cipher, TX: cli, RX: srv}
}

// install puts the derived keys on the socket (both directions unless told).
func (k *ktlsEnd) install(t *testing.T, tx, rx bool) {
	t.Helper()
	cfg := k.cfg
	if !tx {
		cfg.TX = nil
	}
	if !rx {
		cfg.RX = nil
	}
	var gotTX, gotRX bool
	var err error
	if cerr := k.rc.Control(func(fd uintptr) { gotTX, gotRX, err = InstallKTLS(int(fd), cfg) }); cerr != nil {
		t.Fatal(cerr)
	}
	if err != nil || gotTX != tx || gotRX != rx {
		t.Fatalf("InstallKTLS: tx %v rx %v: %v", gotTX, gotRX, err)
	}
}

// recv is RecvRecord through the net package's poller (the fd is
// non-blocking; EAGAIN waits for readability).
func (k *ktlsEnd) recv(p []byte) (n int, typ uint8, err error) {
	rerr := k.rc.Read(func(fd uintptr) bool {
		n, typ, err = RecvRecord(int(fd), p, 0)
		return err != unix.EAGAIN
	})
	if rerr != nil {
		return 0, 0, rerr
	}
	return n, typ, err
}

func (k *ktlsEnd) send(typ uint8, p []byte) error {
	var err error
	werr := k.rc.Write(func(fd uintptr) bool {
		_, err = SendRecord(int(fd), typ, p, 0)
		return err != unix.EAGAIN
	})
	if werr != nil {
		return werr
	}
	return err
}

// readPlain reads with read(2), as a transport that knows nothing of
// record types would.
func (k *ktlsEnd) readPlain(p []byte) (n int, err error) {
	rerr := k.rc.Read(func(fd uintptr) bool {
		n, err = unix.Read(int(fd), p)
		return err != unix.EAGAIN
	})
	if rerr != nil {
		return 0, rerr
	}
	return n, err
}

type ctrlRecord struct {
	typ  uint8
	body []byte
}

func (r ctrlRecord) String() string { return fmt.Sprintf("type %d % x", r.typ, r.body) }

// recvData reads n bytes of application data (the peer sends no more
// before it is told to), collecting the non-data records that come first
// or in between. The buffer is always large enough for a whole record.
func (k *ktlsEnd) recvData(n int) ([]byte, []ctrlRecord, error) {
	out := make([]byte, 0, n)
	var ctrl []ctrlRecord
	buf := make([]byte, 64<<10)
	for len(out) < n {
		m, typ, err := k.recv(buf)
		if err != nil {
			return out, ctrl, err
		}
		switch {
		case m == 0 && typ == 0:
			return out, ctrl, fmt.Errorf("EOF after %d of %d bytes", len(out), n)
		case typ == RecordApplicationData:
			if len(out)+m > n {
				return out, ctrl, fmt.Errorf("%d bytes of data, more than the %d sent", len(out)+m, n)
			}
			out = append(out, buf[:m]...)
		default:
			ctrl = append(ctrl, ctrlRecord{typ, append([]byte(nil), buf[:m]...)})
		}
	}
	return out, ctrl, nil
}

func tlsStat(t *testing.T) map[string]uint64 {
	t.Helper()
	m, err := ReadTLSStat()
	if err != nil {
		t.Fatalf("kernel TLS usable but no /proc/net/tls_stat: %v", err)
	}
	return m
}

package goloop

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Tests for "tls.context" and "tls.handshake": the methods are called as
// Python calls them (a context from JSON, a dup of a connected socket's fd
// handed over), against crypto/tls peers over loopback TCP. Every
// successful handshake is followed by a record each way sealed/opened with
// the keys derived from the result (the test record layer,
// ktls_record_test.go), which checks the secrets and sequence numbers.

// testPKI is a CA and leaves made for a test, written as PEM files.
type testPKI struct {
	dir    string
	caCert *x509.Certificate
	caKey  crypto.Signer
	caFile string
}

var serial int64 = 100

func newKey(t testing.TB, rsaKey bool) crypto.Signer {
	t.Helper()
	if rsaKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newPKI(t testing.TB) *testPKI {
	t.Helper()
	p := &testPKI{dir: t.TempDir(), caKey: newKey(t, false)}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "goloop test CA", Organization: []string{"goloop"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, p.caKey.Public(), p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	p.caCert, _ = x509.ParseCertificate(der)
	p.caFile = filepath.Join(p.dir, "ca.pem")
	os.WriteFile(p.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	return p
}

type leafOpts struct {
	name      string // file name stem
	dns       []string
	ips       []net.IP
	rsa       bool
	notBefore time.Time
	notAfter  time.Time
	self      bool // self-signed instead of CA-signed
	client    bool // ExtKeyUsageClientAuth as well
}

// leaf writes name.pem (certificate, then key) and returns its path.
func (p *testPKI) leaf(t testing.TB, o leafOpts) string {
	t.Helper()
	key := newKey(t, o.rsa)
	if o.notBefore.IsZero() {
		o.notBefore = time.Now().Add(-time.Hour)
	}
	if o.notAfter.IsZero() {
		o.notAfter = time.Now().Add(24 * time.Hour)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: o.name, Country: []string{"XY"}},
		DNSNames: o.dns, IPAddresses: o.ips, NotBefore: o.notBefore, NotAfter: o.notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	parent, signer := p.caCert, p.caKey
	if o.self {
		parent, signer = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(p.dir, o.name+".pem")
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	b = append(b, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})...)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func loadPair(t testing.TB, path string) tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(path, path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (p *testPKI) pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.caCert)
	return pool
}

// callQuick calls a quick method as Loop.Call does.
func callQuick(t testing.TB, name string, req []byte) ([]byte, error) {
	t.Helper()
	methodsMu.RLock()
	q := quicks[name]
	methodsMu.RUnlock()
	out, err, ok := q(req)
	if !ok {
		t.Fatalf("%s did not answer at once", name)
	}
	return out, err
}

// ctxReq is a "tls.context" request (the fields Python sends).
type ctxReq map[string]any

func newCtx(t testing.TB, r ctxReq) uint64 {
	t.Helper()
	b, _ := json.Marshal(r)
	out, err := callQuick(t, "tls.context", b)
	if err != nil {
		t.Fatalf("tls.context: %v", err)
	}
	var id uint64
	fmt.Sscan(string(out), &id)
	t.Cleanup(func() { callQuick(t, "tls.context.free", out) })
	return id
}

func tlsTCPPair(t testing.TB) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err = net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	if b, err = ln.AcceptTCP(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// dupFD is what Python hands over: a dup of the transport's socket.
func dupFD(t testing.TB, c *net.TCPConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	rc.Control(func(s uintptr) { fd, err = unix.Dup(int(s)) })
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

func handshakeReq(ctxID uint64, fd int, server bool, host string) []byte {
	req := binary.LittleEndian.AppendUint64(nil, ctxID)
	req = binary.LittleEndian.AppendUint32(req, uint32(int32(fd)))
	s := byte(0)
	if server {
		s = 1
	}
	return append(append(req, s), host...)
}

func callHandshake(ctx context.Context, ctxID uint64, fd int, server bool, host string) ([]byte, error) {
	methodsMu.RLock()
	m := methods["tls.handshake"]
	methodsMu.RUnlock()
	return m(ctx, handshakeReq(ctxID, fd, server, host))
}

// fdClosed says the dup's number is closed (tests here open no fds
// concurrently with the check).
func dupClosed(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return errors.Is(err, unix.EBADF)
}

type hsResult struct {
	p    KTLSParams
	info struct {
		Version  string          `json:"version"`
		Cipher   []any           `json:"cipher"`
		ALPN     *string         `json:"alpn"`
		PeerDER  *string         `json:"peer_der"`
		PeerCert json.RawMessage `json:"peercert"`
		Resumed  bool            `json:"resumed"`
	}
}

func parseResult(t testing.TB, out []byte) *hsResult {
	t.Helper()
	if len(out) < ktlsParamsLen {
		t.Fatalf("result %d bytes", len(out))
	}
	r := &hsResult{}
	// The bytes are gl_ktls as C reads it: copy them over the Go struct.
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&r.p)), ktlsParamsLen), out)
	if err := json.Unmarshal(out[ktlsParamsLen:], &r.info); err != nil {
		t.Fatalf("result JSON %q: %v", out[ktlsParamsLen:], err)
	}
	return r
}

// layers derives this end's TX and RX record layers from the result.
func (r *hsResult) layers(t testing.TB) (tx, rx *testRecordLayer) {
	t.Helper()
	p := &r.p
	suite, ok := KTLSSuiteFor(p.Version, p.Suite)
	if !ok {
		t.Fatalf("suite %#04x", p.Suite)
	}
	var ck, civ, sk, siv []byte
	var err error
	if p.Version == TLS13 {
		if ck, civ, err = TLS13TrafficKeys(suite, p.ClientSecret[:p.SecretLen]); err == nil {
			sk, siv, err = TLS13TrafficKeys(suite, p.ServerSecret[:p.SecretLen])
		}
	} else {
		ck, civ, sk, siv, err = TLS12KeyBlock(suite, p.Master[:], p.ClientRandom[:], p.ServerRandom[:])
	}
	if err != nil {
		t.Fatal(err)
	}
	mine, peer := &KTLSKeys{Key: ck, IV: civ, Seq: p.TXSeq}, &KTLSKeys{Key: sk, IV: siv, Seq: p.RXSeq}
	if p.Server == 1 {
		mine, peer = &KTLSKeys{Key: sk, IV: siv, Seq: p.TXSeq}, &KTLSKeys{Key: ck, IV: civ, Seq: p.RXSeq}
	}
	if tx, err = newTestRecordLayer(p.Version, suite.Cipher, mine); err == nil {
		rx, err = newTestRecordLayer(p.Version, suite.Cipher, peer)
	}
	if err != nil {
		t.Fatal(err)
	}
	return tx, rx
}

// exchangeData checks the result's keys and sequence numbers on the wire:
// the first application record the peer sends opens (after any TLS 1.3
// session tickets, which the record layer drops), and a record sealed with
// them is accepted by the peer.
func exchangeData(t testing.TB, r *hsResult, mine net.Conn, peer *tls.Conn) {
	t.Helper()
	tx, rx := r.layers(t)
	mine.SetDeadline(time.Now().Add(10 * time.Second))
	peer.SetDeadline(time.Now().Add(10 * time.Second))
	go peer.Write([]byte("from the peer"))
	for {
		rec, err := readRawRecord(mine)
		if err != nil {
			t.Fatalf("reading the peer's record: %v", err)
		}
		typ, plain, err := rx.open(rec)
		if err != nil {
			t.Fatalf("opening the peer's record (seq %d): %v", rx.seq-1, err)
		}
		if typ == RecordHandshake && len(plain) > 0 && plain[0] == 4 {
			continue // NewSessionTicket
		}
		if typ != RecordApplicationData || string(plain) != "from the peer" {
			t.Fatalf("peer's record: type %d %q", typ, plain)
		}
		break
	}
	if _, err := mine.Write(tx.seal(RecordApplicationData, []byte("from goloop"))); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := peer.Read(buf)
	if err != nil || string(buf[:n]) != "from goloop" {
		t.Fatalf("peer read %q, %v", buf[:n], err)
	}
}

// hsCase runs one handshake: the method on one end of a TCP pair, a
// crypto/tls peer on the other. It returns the method's result and error
// and the peer's handshake error; the dup must be closed either way.
type hsCase struct {
	ctx        uint64
	server     bool // the method's side
	host       string
	peerCfg    *tls.Config
	cancelAt   time.Duration
	peerAction func(peerConn *net.TCPConn) // instead of a TLS peer
}

type hsOutcome struct {
	res     *hsResult
	err     error
	peerErr error
	mine    *net.TCPConn
	peer    *tls.Conn
	state   tls.ConnectionState
}

func runCase(t testing.TB, c hsCase) *hsOutcome {
	t.Helper()
	a, b := tlsTCPPair(t)
	mine, peerTCP := a, b
	if c.server {
		mine, peerTCP = b, a
	}
	o := &hsOutcome{mine: mine}
	peerDone := make(chan struct{})
	if c.peerAction != nil {
		go func() { defer close(peerDone); c.peerAction(peerTCP) }()
	} else {
		if c.server {
			o.peer = tls.Client(peerTCP, c.peerCfg)
		} else {
			o.peer = tls.Server(peerTCP, c.peerCfg)
		}
		go func() {
			defer close(peerDone)
			peerTCP.SetDeadline(time.Now().Add(20 * time.Second))
			o.peerErr = o.peer.Handshake()
			if o.peerErr != nil {
				peerTCP.Close()
			}
			o.state = o.peer.ConnectionState()
			peerTCP.SetDeadline(time.Time{})
		}()
	}
	fd := dupFD(t, mine)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if c.cancelAt > 0 {
		time.AfterFunc(c.cancelAt, cancel)
	}
	out, err := callHandshake(ctx, c.ctx, fd, c.server, c.host)
	if !dupClosed(fd) {
		t.Errorf("fd %d still open after tls.handshake returned", fd)
		unix.Close(fd)
	}
	if err != nil {
		o.err = err
		if c.peerAction == nil {
			// Let the peer see the end of it.
			mine.Close()
		}
	} else {
		o.res = parseResult(t, out)
	}
	<-peerDone
	return o
}

func must(t testing.TB, o *hsOutcome) *hsResult {
	t.Helper()
	if o.err != nil || o.peerErr != nil {
		t.Fatalf("handshake: %v; peer: %v", o.err, o.peerErr)
	}
	return o.res
}

func errPrefix(t testing.TB, err error, prefix string) {
	t.Helper()
	if err == nil || !strings.HasPrefix(err.Error(), prefix) {
		t.Fatalf("error %v, want prefix %q", err, prefix)
	}
}

// setTLS13Suite makes both in-process ends negotiate suite (crypto/tls has
// no setting for TLS 1.3 suites; ktls_handshake_test.go explains).
func setTLS13Suite(t testing.TB, suite uint16) {
	saved, savedNoAES := tls13DefaultSuites, tls13DefaultSuitesNoAES
	tls13DefaultSuites, tls13DefaultSuitesNoAES = []uint16{suite}, []uint16{suite}
	t.Cleanup(func() { tls13DefaultSuites, tls13DefaultSuitesNoAES = saved, savedNoAES })
}

var allSuiteCases = []struct {
	name    string
	version uint16
	suite   uint16
	rsa     bool
}{
	{"1.2/ecdsa-aes128", TLS12, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, false},
	{"1.2/ecdsa-aes256", TLS12, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, false},
	{"1.2/ecdsa-chacha", TLS12, tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, false},
	{"1.2/rsa-aes128", TLS12, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, true},
	{"1.2/rsa-aes256", TLS12, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, true},
	{"1.2/rsa-chacha", TLS12, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, true},
	{"1.3/aes128", TLS13, tls.TLS_AES_128_GCM_SHA256, false},
	{"1.3/aes256", TLS13, tls.TLS_AES_256_GCM_SHA384, false},
	{"1.3/chacha", TLS13, tls.TLS_CHACHA20_POLY1305_SHA256, false},
}

var (
	sharedPKIOnce sync.Once
	sharedPKI     *testPKI
	sharedECDSA   string
	sharedRSA     string
)

// pki is one CA and two server leaves ("localhost", 127.0.0.1) for the
// whole run (RSA keys are slow to make).
func pki(t testing.TB) *testPKI {
	sharedPKIOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gotls")
		if err != nil {
			t.Fatal(err)
		}
		tt := &tempT{TB: t, dir: dir}
		sharedPKI = newPKI(tt)
		sharedECDSA = sharedPKI.leaf(tt, leafOpts{name: "ecdsa", dns: []string{"localhost"}, ips: []net.IP{net.IPv4(127, 0, 0, 1)}})
		sharedRSA = sharedPKI.leaf(tt, leafOpts{name: "rsa", dns: []string{"localhost"}, ips: []net.IP{net.IPv4(127, 0, 0, 1)}, rsa: true})
	})
	return sharedPKI
}

// tempT gives the shared PKI a directory that outlives the first test.
type tempT struct {
	testing.TB
	dir string
}

func (t *tempT) TempDir() string { return t.dir }

func TestTLSHandshakeSuites(t *testing.T) {
	p := pki(t)
	for _, sc := range allSuiteCases {
		for _, server := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/%s", sc.name, sideName(server)), func(t *testing.T) {
				if sc.version == TLS13 {
					setTLS13Suite(t, sc.suite)
				}
				leaf := sharedECDSA
				if sc.rsa {
					leaf = sharedRSA
				}
				v := fmt.Sprint(sc.version)
				_ = v
				var c hsCase
				c.server = server
				if server {
					c.ctx = newCtx(t, ctxReq{"server": true, "cert_chain": []any{map[string]any{"certfile": leaf}},
						"min_version": sc.version, "max_version": sc.version})
					c.peerCfg = &tls.Config{RootCAs: p.pool(), ServerName: "localhost", CipherSuites: []uint16{sc.suite},
						ClientSessionCache: tls.NewLRUClientSessionCache(4)}
				} else {
					c.ctx = newCtx(t, ctxReq{"server": false, "cafiles": []string{p.caFile}, "verify_mode": 2,
						"check_hostname": true, "min_version": sc.version, "max_version": sc.version})
					c.host = "localhost"
					c.peerCfg = &tls.Config{Certificates: []tls.Certificate{loadPair(t, leaf)}, CipherSuites: []uint16{sc.suite}}
				}
				o := runCase(t, c)
				r := must(t, o)
				if r.p.Version != sc.version || r.p.Suite != sc.suite || r.p.RX != 1 || (r.p.Server == 1) != server {
					t.Fatalf("params %+v", r.p)
				}
				wantSeq := uint64(1)
				if sc.version == TLS13 {
					wantSeq = 0
					if server {
						wantSeq = 1 // one ticket: the peer has a session cache
					}
				}
				if r.p.TXSeq != wantSeq {
					t.Errorf("tx seq %d, want %d", r.p.TXSeq, wantSeq)
				}
				ver := map[uint16]string{TLS12: "TLSv1.2", TLS13: "TLSv1.3"}[sc.version]
				if r.info.Version != ver || r.info.Cipher[0] != opensslCiphers[sc.suite].name || r.info.Cipher[1] != ver {
					t.Errorf("info %+v", r.info)
				}
				if server {
					if string(r.info.PeerCert) != "null" || r.info.PeerDER != nil {
						t.Errorf("server without client auth has peer cert %s", r.info.PeerCert)
					}
				} else if !bytes.Contains(r.info.PeerCert, []byte(`"subject"`)) || r.info.PeerDER == nil {
					t.Errorf("client peercert %s", r.info.PeerCert)
				}
				exchangeData(t, r, o.mine, o.peer)
			})
		}
	}
}

// A TLS 1.3 server sends as many tickets as the peer lets it: none without
// a client session cache (no psk_key_exchange_modes), none with tickets
// off; its first sequence number follows.
func TestTLSHandshakeTicketCount(t *testing.T) {
	p := pki(t)
	for _, tc := range []struct {
		name    string
		tickets bool
		cache   bool
		want    uint64
	}{{"cache", true, true, 1}, {"no-cache", true, false, 0}, {"tickets-off", false, true, 0}} {
		t.Run(tc.name, func(t *testing.T) {
			id := newCtx(t, ctxReq{"server": true, "cert_chain": []any{map[string]any{"certfile": sharedECDSA}}, "session_tickets": tc.tickets})
			cfg := &tls.Config{RootCAs: p.pool(), ServerName: "localhost"}
			if tc.cache {
				cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
			}
			o := runCase(t, hsCase{ctx: id, server: true, peerCfg: cfg})
			r := must(t, o)
			if r.p.Version != TLS13 || r.p.TXSeq != tc.want {
				t.Fatalf("version %#x tx seq %d, want %d", r.p.Version, r.p.TXSeq, tc.want)
			}
			exchangeData(t, r, o.mine, o.peer)
		})
	}
}

func TestTLSHandshakeResumption(t *testing.T) {
	p := pki(t)
	for _, v := range []uint16{TLS12, TLS13} {
		t.Run(fmt.Sprintf("server/%#x", v), func(t *testing.T) {
			id := newCtx(t, ctxReq{"server": true, "cert_chain": []any{map[string]any{"certfile": sharedECDSA}}, "max_version": v})
			cache := tls.NewLRUClientSessionCache(4)
			for i := 0; i < 3; i++ {
				cfg := &tls.Config{RootCAs: p.pool(), ServerName: "localhost", ClientSessionCache: cache}
				o := runCase(t, hsCase{ctx: id, server: true, peerCfg: cfg})
				r := must(t, o)
				if r.info.Resumed != (i > 0) || o.state.DidResume != (i > 0) {
					t.Fatalf("handshake %d: resumed %v (peer %v)", i, r.info.Resumed, o.state.DidResume)
				}
				exchangeData(t, r, o.mine, o.peer)
			}
		})
	}
	// A client resumes TLS 1.2 sessions (the ticket comes within the
	// handshake); TLS 1.3 tickets arrive after it, in the record layer.
	t.Run("client/0x303", func(t *testing.T) {
		id := newCtx(t, ctxReq{"cafiles": []string{p.caFile}, "verify_mode": 2, "check_hostname": true, "max_version": TLS12})
		scfg := &tls.Config{Certificates: []tls.Certificate{loadPair(t, sharedECDSA)}}
		for i := 0; i < 3; i++ {
			o := runCase(t, hsCase{ctx: id, host: "localhost", peerCfg: scfg})
			r := must(t, o)
			if r.info.Resumed != (i > 0) {
				t.Fatalf("handshake %d: resumed %v", i, r.info.Resumed)
			}
			if !bytes.Contains(r.info.PeerCert, []byte("localhost")) {
				t.Fatalf("resumed peercert %s", r.info.PeerCert)
			}
			exchangeData(t, r, o.mine, o.peer)
		}
	})
}

func TestTLSHandshakeALPN(t *testing.T) {
	p := pki(t)
	id := newCtx(t, ctxReq{"server": true, "cert_chain": []any{map[string]any{"certfile": sharedECDSA}}, "alpn": []string{"h2", "http/1.1"}})
	o := runCase(t, hsCase{ctx: id, server: true, peerCfg: &tls.Config{RootCAs: p.pool(), ServerName: "localhost", NextProtos: []string{"http/1.1"}}})
	r := must(t, o)
	if r.info.ALPN == nil || *r.info.ALPN != "http/1.1" {
		t.Fatalf("alpn %v", r.info.ALPN)
	}
	// No protocol in common: ssl's server goes on without ALPN.
	o = runCase(t, hsCase{ctx: id, server: true, peerCfg: &tls.Config{RootCAs: p.pool(), ServerName: "localhost", NextProtos: []string{"spdy/3"}}})
	if r = must(t, o); r.info.ALPN != nil {
		t.Fatalf("alpn %v without a common protocol", *r.info.ALPN)
	}
	exchangeData(t, r, o.mine, o.peer)
	cid := newCtx(t, ctxReq{"cafiles": []string{p.caFile}, "verify_mode": 2, "alpn": []string{"h2"}})
	o = runCase(t, hsCase{ctx: cid, host: "localhost", peerCfg: &tls.Config{Certificates: []tls.Certificate{loadPair(t, sharedECDSA)}}})
	if r = must(t, o); r.info.ALPN != nil {
		t.Fatalf("alpn %v with a peer without ALPN", *r.info.ALPN)
	}
	exchangeData(t, r, o.mine, o.peer)
}

func TestTLSHandshakeClientCerts(t *testing.T) {
	p := pki(t)
	clientCert := loadPair(t, p.leaf(t, leafOpts{name: "client"}))
	other := newPKI(t)
	strangerCert := loadPair(t, other.leaf(t, leafOpts{name: "stranger"}))
	for _, v := range []uint16{TLS12, TLS13} {
		for _, tc := range []struct {
			name string
			mode int
			cert *tls.Certificate
			want string // error prefix; "" success
			dict bool
		}{
			{"required/given", 2, &clientCert, "", true},
			{"required/absent", 2, nil, "ssl:[SSL: PEER_DID_NOT_RETURN_A_CERTIFICATE] peer did not return a certificate", false},
			{"required/unknown-ca", 2, &strangerCert, "verify:20:", false},
			{"optional/given", 1, &clientCert, "", true},
			{"optional/absent", 1, nil, "", false},
			{"none/given", 0, &clientCert, "", false},
		} {
			t.Run(fmt.Sprintf("%#x/%s", v, tc.name), func(t *testing.T) {
				id := newCtx(t, ctxReq{"server": true, "cert_chain": []any{map[string]any{"certfile": sharedECDSA}},
					"cafiles": []string{p.caFile}, "verify_mode": tc.mode, "max_version": v})
				cfg := &tls.Config{RootCAs: p.pool(), ServerName: "localhost"}
				if tc.cert != nil {
					cfg.Certificates = []tls.Certificate{*tc.cert}
				}
				o := runCase(t, hsCase{ctx: id, server: true, peerCfg: cfg})
				if tc.want != "" {
					errPrefix(t, o.err, tc.want)
					return
				}
				r := must(t, o)
				got := string(r.info.PeerCert)
				if tc.dict != strings.Contains(got, `"commonName","client"`) {
					t.Fatalf("peercert %s", got)
				}
				if !tc.dict && got != "null" {
					t.Fatalf("peercert %s, want null", got)
				}
				exchangeData(t, r, o.mine, o.peer)
			})
		}
	}
}

// Client-side verification failures carry OpenSSL's verify codes.
func TestTLSHandshakeVerifyErrors(t *testing.T) {
	p := pki(t)
	expired := p.leaf(t, leafOpts{name: "expired", dns: []string{"localhost"}, notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-24 * time.Hour)})
	future := p.leaf(t, leafOpts{name: "future", dns: []string{"localhost"}, notBefore: time.Now().Add(24 * time.Hour), notAfter: time.Now().Add(48 * time.Hour)})
	self := p.leaf(t, leafOpts{name: "self", dns: []string{"localhost"}, self: true})
	other := newPKI(t)
	stranger := other.leaf(t, leafOpts{name: "stranger", dns: []string{"localhost"}})
	// A chain that ends in its (untrusted) self-signed root.
	strangerChain := filepath.Join(other.dir, "chain.pem")
	b, _ := os.ReadFile(stranger)
	ca, _ := os.ReadFile(other.caFile)
	os.WriteFile(strangerChain, append(ca, b...), 0o600) // key and certs in any order: leaf first below
	leafPEM, _ := pem.Decode(b)
	rest := b[len(pem.EncodeToMemory(leafPEM)):]
	os.WriteFile(strangerChain, append(append(pem.EncodeToMemory(leafPEM), ca...), rest...), 0o600)

	for _, tc := range []struct {
		name, leaf, host string
		check            bool
		mode             int
		want             string
	}{
		{"hostname", sharedECDSA, "example.org", true, 2, "verify:62:Hostname mismatch, certificate is not valid for 'example.org'."},
		{"ip", sharedECDSA, "127.0.0.2", true, 2, "verify:64:IP address mismatch, certificate is not valid for '127.0.0.2'."},
		{"ip-ok", sharedECDSA, "127.0.0.1", true, 2, ""},
		{"no-check-hostname", sharedECDSA, "example.org", false, 2, ""},
		{"unknown-ca", stranger, "localhost", true, 2, "verify:20:unable to get local issuer certificate"},
		{"self-signed-in-chain", strangerChain, "localhost", true, 2, "verify:19:self-signed certificate in certificate chain"},
		{"self-signed", self, "localhost", true, 2, "verify:18:self-signed certificate"},
		{"expired", expired, "localhost", true, 2, "verify:10:certificate has expired"},
		{"not-yet-valid", future, "localhost", true, 2, "verify:9:certificate is not yet valid"},
		{"cert-none", stranger, "example.org", false, 0, ""},
		{"optional-is-required", stranger, "localhost", false, 1, "verify:20:"},
	} {
		for _, v := range []uint16{TLS12, TLS13} {
			t.Run(fmt.Sprintf("%s/%#x", tc.name, v), func(t *testing.T) {
				id := newCtx(t, ctxReq{"cafiles": []string{p.caFile}, "verify_mode": tc.mode, "check_hostname": tc.check, "max_version": v})
				o := runCase(t, hsCase{ctx: id, host: tc.host, peerCfg: &tls.Config{Certificates: []tls.Certificate{loadPair(t, tc.leaf)}}})
				if tc.want != "" {
					errPrefix(t, o.err, tc.want)
					if o.peerErr == nil {
						t.Fatal("the peer finished a handshake the client refused")
					}
					return
				}
				r := must(t, o)
				if tc.mode == 0 && string(r.info.PeerCert) != "{}" {
					t.Fatalf("CERT_NONE peercert %s, want {}", r.info.PeerCert)
				}
				exchangeData(t, r, o.mine, o.peer)
			})
		}
	}
}

// An alert from the peer: a client that does not trust the server's
// certificate (crypto/tls sends bad_certificate, 42).
func TestTLSHandshakeAlert(t *testing.T) {
	other := newPKI(t)
	for _, v := range []uint16{TLS12, TLS13} {
		t.Run(fmt.Sprintf("%#x", v), func(t *testing.T) {
			id := newCtx(t, ctxReq{"server": true, "cert_chain": []any{map[string]any{"certfile": sharedECDSA}}, "max_version": v})
			o := runCase(t, hsCase{ctx: id, server: true, peerCfg: &tls.Config{RootCAs: other.pool(), ServerName: "localhost"}})
			errPrefix(t, o.err, "alert:42:")
		})
	}
}

// The peer closes mid-handshake: after reading the ClientHello (the
// method is the client), or after sending half a ClientHello (server).
func TestTLSHandshakePeerCloses(t *testing.T) {
	pki(t)
	t.Run("client", func(t *testing.T) {
		id := newCtx(t, ctxReq{"verify_mode": 0})
		o := runCase(t, hsCase{ctx: id, host: "localhost", peerAction: func(c *net.TCPConn) {
			readRawRecord(c)
			c.CloseWrite()
		}})
		errPrefix(t, o.err, "eof:")
	})
	t.Run("server", func(t *testing.T) {
		id := newCtx(t, ctxReq{"server": true, "cert_chain": []any{map[string]any{"certfile": sharedECDSA}}})
		o := runCase(t, hsCase{ctx: id, server: true, peerAction: func(c *net.TCPConn) {
			c.Write([]byte{22, 3, 1, 0, 200, 1, 0})
			c.CloseWrite()
		}})
		errPrefix(t, o.err, "eof:")
	})
}

// Cancelling the call (Python: timeout, transport closed, loop closed)
// ends the handshake with "cancelled:" and closes the dup once; the
// transport's own socket is untouched.
func TestTLSHandshakeCancel(t *testing.T) {
	pki(t)
	for _, server := range []bool{true, false} {
		t.Run(sideName(server), func(t *testing.T) {
			req := ctxReq{"verify_mode": 0, "server": server}
			if server {
				req["cert_chain"] = []any{map[string]any{"certfile": sharedECDSA}}
			}
			id := newCtx(t, req)
			hold := make(chan struct{})
			var peer *net.TCPConn
			o := runCase(t, hsCase{ctx: id, server: server, cancelAt: 100 * time.Millisecond, peerAction: func(c *net.TCPConn) {
				peer = c
				close(hold)
			}})
			errPrefix(t, o.err, "cancelled:")
			<-hold
			// The transport's fd still works both ways.
			o.mine.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := peer.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			if _, err := o.mine.Write([]byte("y")); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Already cancelled before it starts: the fd is closed all the same, and
// a request naming no context closes it too.
func TestTLSHandshakeFDOwnership(t *testing.T) {
	pki(t)
	id := newCtx(t, ctxReq{"verify_mode": 0})
	a, _ := tlsTCPPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	fd := dupFD(t, a)
	_, err := callHandshake(ctx, id, fd, false, "")
	errPrefix(t, err, "cancelled:")
	if !dupClosed(fd) {
		t.Fatal("fd open after a cancelled call")
	}
	fd = dupFD(t, a)
	_, err = callHandshake(context.Background(), 1<<60, fd, false, "")
	errPrefix(t, err, "value:")
	if !dupClosed(fd) {
		t.Fatal("fd open after an unknown context")
	}
	fd = dupFD(t, a)
	_, err = callHandshake(context.Background(), id, fd, true, "")
	errPrefix(t, err, "value:")
	if !dupClosed(fd) {
		t.Fatal("fd open after a side mismatch")
	}
}

// Many handshakes at once, each in its own goroutine.
func TestTLSHandshakeParallel(t *testing.T) {
	p := pki(t)
	id := newCtx(t, ctxReq{"server": true, "cert_chain": []any{map[string]any{"certfile": sharedECDSA}}})
	cid := newCtx(t, ctxReq{"cafiles": []string{p.caFile}, "verify_mode": 2, "check_hostname": true})
	const n = 32
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			a, b := tlsTCPPair(t)
			fa, fb := dupFD(t, a), dupFD(t, b)
			var wg sync.WaitGroup
			var outS, outC []byte
			var errS, errC error
			wg.Add(2)
			go func() { defer wg.Done(); outS, errS = callHandshake(context.Background(), id, fb, true, "") }()
			go func() { defer wg.Done(); outC, errC = callHandshake(context.Background(), cid, fa, false, "localhost") }()
			wg.Wait()
			if errS != nil || errC != nil {
				errs <- fmt.Errorf("server %v client %v", errS, errC)
				return
			}
			// Both ends' secrets agree.
			var ps, pc KTLSParams
			copy(unsafe.Slice((*byte)(unsafe.Pointer(&ps)), ktlsParamsLen), outS)
			copy(unsafe.Slice((*byte)(unsafe.Pointer(&pc)), ktlsParamsLen), outC)
			if ps.ClientSecret != pc.ClientSecret || ps.ServerSecret != pc.ServerSecret || ps.Server != 1 || pc.Server != 0 {
				errs <- errors.New("the two ends' params differ")
				return
			}
			errs <- nil
		}()
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func TestTLSParamsLayout(t *testing.T) {
	p := KTLSParams{Version: TLS13, Suite: 0x1302, Server: 1, RX: 1, SecretLen: 48, TXSeq: 7, RXSeq: 9}
	for i := range p.ClientRandom {
		p.ClientRandom[i], p.ServerRandom[i] = byte(i), byte(100+i)
	}
	for i := range p.Master {
		p.Master[i], p.ClientSecret[i], p.ServerSecret[i] = byte(1+i), byte(2+i), byte(3+i)
	}
	b := make([]byte, ktlsParamsLen)
	p.encode(b)
	mem := unsafe.Slice((*byte)(unsafe.Pointer(&p)), unsafe.Sizeof(p))
	if !bytes.Equal(b, mem) {
		t.Fatalf("encode differs from the in-memory gl_ktls:\n% x\n% x", b, mem)
	}
	_ = base64.StdEncoding
}

// A HelloRetryRequest (the server wants a group the client sent no share
// for) adds a round trip and a second ClientHello; the secrets and numbers
// are still those of the final handshake.
func TestTLSHandshakeHelloRetry(t *testing.T) {
	p := pki(t)
	id := newCtx(t, ctxReq{"cafiles": []string{p.caFile}, "verify_mode": 2, "check_hostname": true})
	scfg := &tls.Config{Certificates: []tls.Certificate{loadPair(t, sharedECDSA)}, CurvePreferences: []tls.CurveID{tls.CurveP384}}
	o := runCase(t, hsCase{ctx: id, host: "localhost", peerCfg: scfg})
	r := must(t, o)
	if o.state.CurveID != tls.CurveP384 || !o.state.HelloRetryRequest {
		t.Fatalf("curve %v, HRR %v", o.state.CurveID, o.state.HelloRetryRequest)
	}
	exchangeData(t, r, o.mine, o.peer)
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("SKIP: no /proc/self/fd")
	}
	return len(ents)
}

// Every path closes the dup: after successes, failures and cancels (each
// in a subtest whose cleanup closes its TCP pair) the process has as many
// fds open as before.
func TestTLSHandshakeNoFDLeak(t *testing.T) {
	p := pki(t)
	srv := newCtx(t, ctxReq{"server": true, "cert_chain": []any{map[string]any{"certfile": sharedECDSA}}})
	cli := newCtx(t, ctxReq{"cafiles": []string{p.caFile}, "verify_mode": 2, "check_hostname": true})
	peerSrv := &tls.Config{Certificates: []tls.Certificate{loadPair(t, sharedECDSA)}}
	runtime.GC()
	before := openFDs(t)
	for i := 0; i < 5; i++ {
		t.Run("ok", func(t *testing.T) {
			must(t, runCase(t, hsCase{ctx: srv, server: true, peerCfg: &tls.Config{RootCAs: p.pool(), ServerName: "localhost"}}))
		})
		t.Run("verify", func(t *testing.T) {
			errPrefix(t, runCase(t, hsCase{ctx: cli, host: "example.org", peerCfg: peerSrv}).err, "verify:62:")
		})
		t.Run("eof", func(t *testing.T) {
			errPrefix(t, runCase(t, hsCase{ctx: cli, host: "localhost", peerAction: func(c *net.TCPConn) { c.CloseWrite() }}).err, "eof:")
		})
		t.Run("cancel", func(t *testing.T) {
			errPrefix(t, runCase(t, hsCase{ctx: srv, server: true, cancelAt: 20 * time.Millisecond, peerAction: func(*net.TCPConn) {}}).err, "cancelled:")
		})
	}
	if after := openFDs(t); after != before {
		t.Fatalf("%d fds open before, %d after", before, after)
	}
}

// What the context refuses to negotiate: a TLS 1.2 peer with only suites
// the record layer cannot carry, a TLS 1.1 peer, a plain-text peer. The
// errors read as ssl's.
func TestTLSHandshakeRefusals(t *testing.T) {
	p := pki(t)
	srv := newCtx(t, ctxReq{"server": true, "cert_chain": []any{map[string]any{"certfile": sharedECDSA}}})
	o := runCase(t, hsCase{ctx: srv, server: true, peerCfg: &tls.Config{RootCAs: p.pool(), ServerName: "localhost", MaxVersion: TLS12,
		CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}}})
	errPrefix(t, o.err, "ssl:[SSL: NO_SHARED_CIPHER] no shared cipher")
	o = runCase(t, hsCase{ctx: srv, server: true, peerCfg: &tls.Config{RootCAs: p.pool(), ServerName: "localhost", MaxVersion: tls.VersionTLS11, MinVersion: tls.VersionTLS10}})
	errPrefix(t, o.err, "ssl:[SSL: UNSUPPORTED_PROTOCOL] unsupported protocol")
	o = runCase(t, hsCase{ctx: srv, server: true, peerAction: func(c *net.TCPConn) { c.Write([]byte("GET / HTTP/1.0\r\n\r\n")) }})
	errPrefix(t, o.err, "ssl:[SSL: WRONG_VERSION_NUMBER] wrong version number")
	// A server whose context has no certificate: ssl says no shared cipher.
	bare := newCtx(t, ctxReq{"server": true})
	o = runCase(t, hsCase{ctx: bare, server: true, peerCfg: &tls.Config{RootCAs: p.pool(), ServerName: "localhost"}})
	errPrefix(t, o.err, "ssl:[SSL: NO_SHARED_CIPHER] no shared cipher")
	// A client the server answers with TLS 1.2 when it wants 1.3 only.
	cli := newCtx(t, ctxReq{"cafiles": []string{p.caFile}, "verify_mode": 2, "min_version": TLS13})
	o = runCase(t, hsCase{ctx: cli, host: "localhost", peerCfg: &tls.Config{Certificates: []tls.Certificate{loadPair(t, sharedECDSA)}, MaxVersion: TLS12}})
	if o.err == nil || o.peerErr == nil {
		t.Fatalf("a 1.3-only client against a 1.2-only server: %v / %v", o.err, o.peerErr)
	}
}

// A server with an ECDSA and an RSA certificate serves each client the one
// its suites can use.
func TestTLSHandshakeTwoCertificates(t *testing.T) {
	p := pki(t)
	id := newCtx(t, ctxReq{"server": true, "cert_chain": []any{map[string]any{"certfile": sharedECDSA}, map[string]any{"certfile": sharedRSA}}, "max_version": TLS12})
	for _, suite := range []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256} {
		o := runCase(t, hsCase{ctx: id, server: true, peerCfg: &tls.Config{RootCAs: p.pool(), ServerName: "localhost", CipherSuites: []uint16{suite}}})
		r := must(t, o)
		if r.p.Suite != suite {
			t.Fatalf("suite %#x, want %#x", r.p.Suite, suite)
		}
		exchangeData(t, r, o.mine, o.peer)
	}
}

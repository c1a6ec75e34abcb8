package goloop

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// "tls.handshake" runs one TLS handshake on crypto/tls in its own goroutine
// and hands back what the record layer (kernel TLS or goloop's own) needs
// to go on: the negotiated suite, the traffic secrets and the sequence
// numbers as a gl_ktls, and what ssl's SSLObject reports (version, cipher,
// ALPN, peer certificate). docs/gotls.md has the formats.
//
// The request is fixed binary so that the fd in it can always be found,
// even in a request that is otherwise wrong (Go must close it):
//
//	0  uint64 LE  context id ("tls.context")
//	8  int32  LE  fd: a dup Python made for this call; Go owns it from the
//	              moment the call starts and closes it exactly once
//	12 uint8      1: this end is the server
//	13 ...        server_hostname (UTF-8; empty: none)
const tlsHandshakeReqLen = 13

func init() {
	RegisterMethod("tls.handshake", tlsHandshakeMethod)
}

func tlsHandshakeMethod(ctx context.Context, req []byte) ([]byte, error) {
	if len(req) < tlsHandshakeReqLen {
		// No fd can be read from it, so Go owns none (docs/gotls.md).
		return nil, errors.New("value:tls.handshake: request too short")
	}
	id := binary.LittleEndian.Uint64(req[0:8])
	fd := int(int32(binary.LittleEndian.Uint32(req[8:12])))
	server := req[12] == 1
	hostname := string(req[13:])
	conn, err := newHSConn(fd)
	if err != nil {
		return nil, err
	}
	defer conn.Close() // the only close of fd; a second Close (HandshakeContext's on cancel) is a no-op
	c := lookupTLSContext(id)
	if c == nil {
		return nil, errors.New("value:tls.handshake: unknown TLS context")
	}
	if server != c.server {
		return nil, errors.New("value:tls.handshake: server side does not match the context")
	}
	return c.handshake(ctx, conn, server, hostname)
}

// hsConn is the handshake's transport: the dup'ed socket in Go's
// netpoller (os.NewFile on a non-blocking fd polls without another dup).
// It never reads past the end of the TLS record being read, so when the
// handshake returns every later byte (a TLS 1.3 server's tickets, the
// peer's first application data) is still in the socket for the record
// layer. It keeps the first bytes of each direction for the hello randoms,
// and collects this connection's key log and ticket count.
type hsConn struct {
	f       *os.File
	hdr     [5]byte
	hdrN    int
	left    int
	in, out []byte
	keylog  []byte
	tickets int
	// The session a TLS 1.2 handshake resumed: crypto/tls logs no
	// CLIENT_RANDOM line then, and the master secret is the session's.
	session *tls.SessionState
	// set by VerifyConnection
	verified bool
}

// The hellos come first in each direction. A ServerHello is small; a
// ClientHello is usually 0.5-2 KiB (a post-quantum key share is 1.2 KiB)
// but may span records up to the 64 KiB a hello's 16-bit extensions
// length allows.
const hsKeep = 1 << 16

func newHSConn(fd int) (*hsConn, error) {
	if fd < 0 {
		return nil, errors.New("value:tls.handshake: bad fd")
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		var errno syscall.Errno
		errors.As(err, &errno)
		return nil, fmt.Errorf("os:%d:%v", int(errno), err)
	}
	f := os.NewFile(uintptr(fd), "tls")
	if f == nil {
		unix.Close(fd)
		return nil, errors.New("value:tls.handshake: bad fd")
	}
	return &hsConn{f: f}, nil
}

func (c *hsConn) Read(p []byte) (int, error) {
	if c.left == 0 {
		p = p[:min(len(p), 5-c.hdrN)]
		n, err := c.f.Read(p)
		copy(c.hdr[c.hdrN:], p[:n])
		if c.hdrN += n; c.hdrN == 5 {
			c.left, c.hdrN = int(binary.BigEndian.Uint16(c.hdr[3:5])), 0
		}
		c.in = hsKeepBytes(c.in, p[:n])
		return n, err
	}
	n, err := c.f.Read(p[:min(len(p), c.left)])
	c.left -= n
	c.in = hsKeepBytes(c.in, p[:n])
	return n, err
}

func (c *hsConn) Write(p []byte) (int, error) {
	c.out = hsKeepBytes(c.out, p)
	return c.f.Write(p)
}

func hsKeepBytes(dst, p []byte) []byte {
	if room := hsKeep - len(dst); room > 0 {
		dst = append(dst, p[:min(room, len(p))]...)
	}
	return dst
}

// Close closes the dup (never shutdown(2): the socket goes on under the
// transport's own fd). os.File closes the number once however often it is
// called, and only after a Read or Write under way has returned.
func (c *hsConn) Close() error                       { return c.f.Close() }
func (c *hsConn) LocalAddr() net.Addr                { return sockAddr(c.f, unix.Getsockname) }
func (c *hsConn) RemoteAddr() net.Addr               { return sockAddr(c.f, unix.Getpeername) }
func (c *hsConn) SetDeadline(t time.Time) error      { return c.f.SetDeadline(t) }
func (c *hsConn) SetReadDeadline(t time.Time) error  { return c.f.SetReadDeadline(t) }
func (c *hsConn) SetWriteDeadline(t time.Time) error { return c.f.SetWriteDeadline(t) }

// KeyLogWriter: crypto/tls writes one NSS key log line per call.
func (c *hsConn) writeKeyLog(p []byte) { c.keylog = append(c.keylog, p...) }

type keyLogWriter struct{ c *hsConn }

func (w keyLogWriter) Write(p []byte) (int, error) { w.c.writeKeyLog(p); return len(p), nil }

// sockAddr is the ClientSessionCache key's source (the client caches by
// server name, else by the remote address) and what crypto/tls prints.
func sockAddr(f *os.File, get func(int) (unix.Sockaddr, error)) net.Addr {
	var sa unix.Sockaddr
	rc, err := f.SyscallConn()
	if err == nil {
		rc.Control(func(fd uintptr) { sa, err = get(int(fd)) })
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: a.Addr[:], Port: a.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: a.Addr[:], Port: a.Port}
	case *unix.SockaddrUnix:
		return &net.UnixAddr{Name: a.Name, Net: "unix"}
	}
	return &net.TCPAddr{}
}

// serverConfig is GetConfigForClient: the context's config cloned for this
// connection, with its key log and ticket counter. Tickets are encrypted
// with the context's keys (newTLSContext sets them), so they resume on any
// connection of the context.
func (c *tlsContext) serverConfig(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	hs, ok := hello.Conn.(*hsConn)
	if !ok {
		return nil, nil
	}
	cfg := c.cfg.Clone()
	cfg.GetConfigForClient = nil
	if len(cfg.NextProtos) > 0 && len(hello.SupportedProtos) > 0 && !anyIn(cfg.NextProtos, hello.SupportedProtos) {
		// ssl's server goes on without ALPN when nothing matches (its
		// selection callback answers NOACK); crypto/tls would fail the
		// handshake with no_application_protocol.
		cfg.NextProtos = nil
	}
	cfg.KeyLogWriter = keyLogWriter{hs}
	cfg.VerifyConnection = func(cs tls.ConnectionState) error { return c.verifyPeer(hs, cs, "") }
	base := c.cfg
	cfg.WrapSession = func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		// Each call is one NewSessionTicket message, one record: in TLS 1.3
		// it is sent under the application keys, so it counts in the
		// server's first sequence number.
		hs.tickets++
		return base.EncryptTicket(cs, ss)
	}
	cfg.UnwrapSession = func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		ss, err := base.DecryptTicket(identity, cs)
		if ss != nil {
			hs.session = ss
		}
		return ss, err
	}
	return cfg, nil
}

func anyIn(a, b []string) bool {
	for _, x := range a {
		for _, y := range b {
			if x == y {
				return true
			}
		}
	}
	return false
}

func (c *tlsContext) handshake(ctx context.Context, hs *hsConn, server bool, hostname string) ([]byte, error) {
	var tc *tls.Conn
	if server {
		tc = tls.Server(hs, c.cfg)
	} else {
		cfg := c.cfg.Clone()
		cfg.ServerName = hostname // SNI (crypto/tls leaves IP addresses out, as OpenSSL does)
		cfg.KeyLogWriter = keyLogWriter{hs}
		cfg.VerifyConnection = func(cs tls.ConnectionState) error { return c.verifyPeer(hs, cs, hostname) }
		if cfg.ClientSessionCache != nil {
			cfg.ClientSessionCache = sessionCache{cfg.ClientSessionCache, hs}
		}
		tc = tls.Client(hs, cfg)
	}
	defer clear(hs.keylog)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, handshakeError(ctx, err)
	}
	st := tc.ConnectionState()
	p, err := hs.params(st, server)
	if err != nil {
		return nil, err
	}
	out := make([]byte, ktlsParamsLen, ktlsParamsLen+2048)
	p.encode(out)
	clear(p.Master[:])
	clear(p.ClientSecret[:])
	clear(p.ServerSecret[:])
	info, err := json.Marshal(c.info(hs, st))
	if err != nil {
		return nil, fmt.Errorf("ssl:%v", err)
	}
	return append(out, info...), nil
}

// params builds the gl_ktls for the record layer from this connection's
// key log and hellos. Sequence numbers: TLS 1.2 application data starts at
// 1 both ways (each side's Finished was record 0 after its
// ChangeCipherSpec, full handshake or resumed). TLS 1.3 receives from 0
// (the peer has sent nothing under its application keys that was read: a
// client stops at the server's Finished, a server at the client's) and a
// client sends from 0; a server has already sent its session tickets under
// its application keys, one record each.
func (hs *hsConn) params(st tls.ConnectionState, server bool) (*KTLSParams, error) {
	suite, ok := KTLSSuiteFor(st.Version, st.CipherSuite)
	if !ok {
		return nil, fmt.Errorf("ssl:negotiated %s (%#04x), which the record layer cannot carry", tls.CipherSuiteName(st.CipherSuite), st.CipherSuite)
	}
	p := &KTLSParams{Version: st.Version, Suite: st.CipherSuite, RX: 1}
	if server {
		p.Server = 1
	}
	secrets := map[string][]byte{}
	defer func() {
		for _, v := range secrets {
			clear(v)
		}
	}()
	var clientRandom []byte
	for _, line := range bytes.Split(hs.keylog, []byte("\n")) {
		f := bytes.Fields(line)
		if len(f) != 3 {
			continue
		}
		r, err1 := hex.DecodeString(string(f[1]))
		s, err2 := hex.DecodeString(string(f[2]))
		if err1 != nil || err2 != nil {
			continue
		}
		secrets[string(f[0])] = s
		clientRandom = r
	}
	if len(clientRandom) == 32 {
		copy(p.ClientRandom[:], clientRandom)
	}
	if st.Version == TLS13 {
		cs, ss := secrets["CLIENT_TRAFFIC_SECRET_0"], secrets["SERVER_TRAFFIC_SECRET_0"]
		if len(cs) != suite.Hash.Size() || len(ss) != suite.Hash.Size() {
			return nil, errors.New("ssl:no TLS 1.3 traffic secrets in the key log")
		}
		p.SecretLen = uint8(len(cs))
		copy(p.ClientSecret[:], cs)
		copy(p.ServerSecret[:], ss)
		if server {
			p.TXSeq = uint64(hs.tickets)
		}
		return p, nil
	}
	master := secrets["CLIENT_RANDOM"]
	if master == nil && st.DidResume && hs.session != nil {
		master = sessionSecret(hs.session)
	}
	if len(master) != 48 {
		return nil, errors.New("ssl:no TLS 1.2 master secret in the key log")
	}
	copy(p.Master[:], master)
	clear(master) // from the key log (also in secrets) or from the session
	clientOut, serverOut := hs.out, hs.in
	if server {
		clientOut, serverOut = hs.in, hs.out
	}
	// The randoms from the hellos: a resumed handshake logs no
	// CLIENT_RANDOM line to take the client's from.
	cr := clientRandom
	if len(cr) != 32 {
		var err error
		if cr, err = tlsHelloRandom(clientOut, 1); err != nil {
			return nil, err
		}
	}
	sr, err := tlsHelloRandom(serverOut, 2)
	if err != nil {
		return nil, err
	}
	copy(p.ClientRandom[:], cr)
	copy(p.ServerRandom[:], sr)
	p.TXSeq, p.RXSeq = 1, 1
	return p, nil
}

// sessionSecret is the master secret of a TLS 1.2 session: the
// secret field of SessionState.Bytes' documented encoding (uint16 version,
// uint8 type, uint16 cipher_suite, uint64 created_at, opaque
// secret<1..2^8-1>, ...), crypto/tls having no getter for it.
func sessionSecret(ss *tls.SessionState) []byte {
	b, err := ss.Bytes()
	if err != nil || len(b) < 14 || binary.BigEndian.Uint16(b) != TLS12 || len(b) < 14+int(b[13]) {
		return nil
	}
	secret := append([]byte(nil), b[14:14+int(b[13])]...)
	clear(b)
	return secret
}

// sessionCache is the context's client session cache seen by one
// connection: it notes the session a handshake offers, which is the one
// it resumes if the server accepts it.
type sessionCache struct {
	tls.ClientSessionCache
	hs *hsConn
}

func (s sessionCache) Get(key string) (*tls.ClientSessionState, bool) {
	cs, ok := s.ClientSessionCache.Get(key)
	if ok && cs != nil {
		if _, ss, err := cs.ResumptionState(); err == nil && ss != nil {
			s.hs.session = ss
		}
	}
	return cs, ok
}

// tlsHelloRandom finds the random of the hello (1: ClientHello, 2:
// ServerHello) that a side's byte stream starts with (its handshake
// records, which may split or join messages).
func tlsHelloRandom(stream []byte, typ byte) ([]byte, error) {
	var msgs []byte
	for len(stream) >= 5 && stream[0] == RecordHandshake {
		n := int(binary.BigEndian.Uint16(stream[3:5]))
		if len(stream) < 5+n {
			break
		}
		msgs = append(msgs, stream[5:5+n]...)
		stream = stream[5+n:]
	}
	for len(msgs) >= 4 {
		n := int(msgs[1])<<16 | int(msgs[2])<<8 | int(msgs[3])
		if msgs[0] == typ && n >= 34 && len(msgs) >= 4+34 {
			return msgs[6:38], nil
		}
		if len(msgs) < 4+n {
			break
		}
		msgs = msgs[4+n:]
	}
	return nil, fmt.Errorf("ssl:no hello %d in the handshake bytes", typ)
}

// ktlsParamsLen is sizeof(gl_ktls).
const ktlsParamsLen = 232

// encode lays p out as gl_ktls in memory (little endian, pybind/goloop.h).
func (p *KTLSParams) encode(b []byte) {
	le := binary.LittleEndian
	le.PutUint16(b[0:], p.Version)
	le.PutUint16(b[2:], p.Suite)
	b[4], b[5], b[6], b[7] = p.Server, p.RX, p.SecretLen, 0
	le.PutUint64(b[8:], p.TXSeq)
	le.PutUint64(b[16:], p.RXSeq)
	copy(b[24:56], p.ClientRandom[:])
	copy(b[56:88], p.ServerRandom[:])
	copy(b[88:136], p.Master[:])
	copy(b[136:184], p.ClientSecret[:])
	copy(b[184:232], p.ServerSecret[:])
}

// What ssl's SSLObject would report after this handshake.
type tlsInfo struct {
	Version  string          `json:"version"`
	Cipher   [3]any          `json:"cipher"`
	ALPN     *string         `json:"alpn"`
	PeerDER  *string         `json:"peer_der"`
	PeerCert json.RawMessage `json:"peercert"`
	Resumed  bool            `json:"resumed"`
}

// OpenSSL's names for the suites tlsKTLSSuites12 and TLS 1.3 allow, and
// their secret bits (SSL_CIPHER_get_bits).
var opensslCiphers = map[uint16]struct {
	name string
	bits int
}{
	0x1301: {"TLS_AES_128_GCM_SHA256", 128},
	0x1302: {"TLS_AES_256_GCM_SHA384", 256},
	0x1303: {"TLS_CHACHA20_POLY1305_SHA256", 256},
	0xc02b: {"ECDHE-ECDSA-AES128-GCM-SHA256", 128},
	0xc02c: {"ECDHE-ECDSA-AES256-GCM-SHA384", 256},
	0xc02f: {"ECDHE-RSA-AES128-GCM-SHA256", 128},
	0xc030: {"ECDHE-RSA-AES256-GCM-SHA384", 256},
	0xcca8: {"ECDHE-RSA-CHACHA20-POLY1305", 256},
	0xcca9: {"ECDHE-ECDSA-CHACHA20-POLY1305", 256},
}

func (c *tlsContext) info(hs *hsConn, st tls.ConnectionState) tlsInfo {
	v := "TLSv1.2"
	if st.Version == TLS13 {
		v = "TLSv1.3"
	}
	ci := opensslCiphers[st.CipherSuite]
	if ci.name == "" {
		ci.name = tls.CipherSuiteName(st.CipherSuite)
	}
	in := tlsInfo{Version: v, Cipher: [3]any{ci.name, v, ci.bits}, Resumed: st.DidResume, PeerCert: json.RawMessage("null")}
	if st.NegotiatedProtocol != "" {
		in.ALPN = &st.NegotiatedProtocol
	}
	if len(st.PeerCertificates) > 0 {
		leaf := st.PeerCertificates[0]
		der := base64.StdEncoding.EncodeToString(leaf.Raw)
		in.PeerDER = &der
		if hs.verified {
			in.PeerCert, _ = json.Marshal(decodeCert(leaf))
		} else {
			// ssl: a certificate that was not verified (CERT_NONE) is {}.
			in.PeerCert = json.RawMessage("{}")
		}
	}
	return in
}

// verifyError is a failed certificate check with OpenSSL's verify code, so
// Python raises SSLCertVerificationError with ssl's verify_code and
// verify_message.
type verifyError struct {
	code int
	msg  string
}

func (e *verifyError) Error() string { return fmt.Sprintf("verify:%d:%s", e.code, e.msg) }

// verifyPeer is VerifyConnection: ssl's verification, done here for both
// sides. A client verifies the server unless CERT_NONE, and its name only
// with check_hostname; a server verifies a client certificate when it
// asked for one (CERT_OPTIONAL, CERT_REQUIRED) and got one (crypto/tls
// refuses a missing one under CERT_REQUIRED itself).
func (c *tlsContext) verifyPeer(hs *hsConn, cs tls.ConnectionState, hostname string) error {
	if c.verifyMode == certNone || len(cs.PeerCertificates) == 0 {
		return nil
	}
	usage := x509.ExtKeyUsageServerAuth
	if c.server {
		usage = x509.ExtKeyUsageClientAuth
	}
	if err := verifyChain(cs.PeerCertificates, c.roots, usage, time.Now()); err != nil {
		return err
	}
	if !c.server && c.checkHostname && hostname != "" {
		if err := cs.PeerCertificates[0].VerifyHostname(hostname); err != nil {
			if net.ParseIP(strings.Trim(hostname, "[]")) != nil {
				return &verifyError{64, fmt.Sprintf("IP address mismatch, certificate is not valid for '%s'.", hostname)}
			}
			return &verifyError{62, fmt.Sprintf("Hostname mismatch, certificate is not valid for '%s'.", hostname)}
		}
	}
	hs.verified = true
	return nil
}

func verifyChain(certs []*x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage, now time.Time) error {
	inter := x509.NewCertPool()
	for _, ic := range certs[1:] {
		inter.AddCert(ic)
	}
	leaf := certs[0]
	_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}})
	if err == nil {
		return nil
	}
	var ua x509.UnknownAuthorityError
	var ci x509.CertificateInvalidError
	switch {
	case errors.As(err, &ua):
		last := certs[len(certs)-1]
		switch {
		case len(certs) == 1 && selfSigned(leaf):
			return &verifyError{18, "self-signed certificate"}
		case len(certs) > 1 && selfSigned(last):
			return &verifyError{19, "self-signed certificate in certificate chain"}
		}
		return &verifyError{20, "unable to get local issuer certificate"}
	case errors.As(err, &ci):
		switch ci.Reason {
		case x509.Expired:
			if ci.Cert != nil && now.Before(ci.Cert.NotBefore) {
				return &verifyError{9, "certificate is not yet valid"}
			}
			return &verifyError{10, "certificate has expired"}
		case x509.IncompatibleUsage:
			return &verifyError{26, "unsupported certificate purpose"}
		case x509.NotAuthorizedToSign:
			return &verifyError{24, "invalid CA certificate"}
		case x509.TooManyIntermediates:
			return &verifyError{22, "certificate chain too long"}
		case x509.CANotAuthorizedForThisName:
			return &verifyError{47, "permitted subtree violation"}
		}
	}
	return &verifyError{1, "unspecified certificate verification error (" + err.Error() + ")"}
}

func selfSigned(c *x509.Certificate) bool {
	// CheckSignatureFrom would also want c to be a CA; OpenSSL calls a
	// leaf that signed itself self-signed all the same.
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}

// handshakeError gives a failed handshake its kind (docs/gotls.md).
func handshakeError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return errors.New("cancelled:" + ctx.Err().Error())
	}
	var ve *verifyError
	if errors.As(err, &ve) {
		return ve
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "remote error" {
		// crypto/tls's alert type is unexported; it is a uint8.
		if v := reflect.ValueOf(op.Err); v.Kind() == reflect.Uint8 {
			return fmt.Errorf("alert:%d:%v", v.Uint(), op.Err)
		}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.New("eof:EOF occurred in violation of protocol")
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return fmt.Errorf("os:%d:%s", int(errno), errno.Error())
	}
	text := err.Error()
	for _, m := range opensslReasons {
		if strings.Contains(text, m.goText) {
			return fmt.Errorf("ssl:[SSL: %s] %s (crypto/tls: %s)", m.reason, m.text, text)
		}
	}
	return errors.New("ssl:" + text)
}

// OpenSSL's reason for the failures ssl users meet most, so the SSLError
// reads as ssl's would ([SSL: REASON] text); crypto/tls's own text follows
// in parentheses.
var opensslReasons = []struct{ goText, reason, text string }{
	{"client didn't provide a certificate", "PEER_DID_NOT_RETURN_A_CERTIFICATE", "peer did not return a certificate"},
	{"no cipher suite supported by both", "NO_SHARED_CIPHER", "no shared cipher"},
	{"no certificates configured", "NO_SHARED_CIPHER", "no shared cipher"},
	{"offered only unsupported versions", "UNSUPPORTED_PROTOCOL", "unsupported protocol"},
	{"selected unsupported protocol version", "UNSUPPORTED_PROTOCOL", "unsupported protocol"},
	{"first record does not look like a TLS handshake", "WRONG_VERSION_NUMBER", "wrong version number"},
}

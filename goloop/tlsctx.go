package goloop

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// goloop.TLSContext (docs/gotls.md): an ssl.SSLContext look-alike whose
// handshakes run on crypto/tls in goroutines. "tls.context" turns the
// context's settings into one *tls.Config, built once and shared by every
// handshake of that context (read-only after this; each handshake clones
// it to bind its own key log); "tls.context.free" drops it.
//
// Errors are "kind:detail" so Python raises what ssl raises for the same
// mistake (docs/gotls.md lists the kinds):
//
//	os:<errno>:<text>   OSError(errno, text): FileNotFoundError, PermissionError...
//	ssl:<text>          ssl.SSLError
//	value:<text>        ValueError (a request ssl would refuse as an argument)

// ssl's verify modes.
const (
	certNone     = 0
	certOptional = 1
	certRequired = 2
)

type tlsContextReq struct {
	Server    bool `json:"server"`
	CertChain []struct {
		CertFile string  `json:"certfile"`
		KeyFile  *string `json:"keyfile"`
		Password *string `json:"password"`
	} `json:"cert_chain"`
	CAFiles        []string `json:"cafiles"`
	CAData         []string `json:"cadata"`
	CAPaths        []string `json:"capaths"`
	DefaultCerts   bool     `json:"default_certs"`
	VerifyMode     int      `json:"verify_mode"`
	CheckHostname  bool     `json:"check_hostname"`
	ALPN           []string `json:"alpn"`
	MinVersion     uint16   `json:"min_version"`
	MaxVersion     uint16   `json:"max_version"`
	SessionTickets *bool    `json:"session_tickets"`
}

// tlsContext is one context's settings, immutable once registered.
type tlsContext struct {
	server        bool
	verifyMode    int
	checkHostname bool
	roots         *x509.CertPool // never nil: an empty pool trusts nothing (nil would mean the system's)
	cfg           *tls.Config
}

// The registry is read by every handshake: a sync.Map so that many
// handshakes starting at once share no lock.
var (
	tlsContexts  sync.Map // uint64 -> *tlsContext
	tlsContextID atomic.Uint64
)

func lookupTLSContext(id uint64) *tlsContext {
	if v, ok := tlsContexts.Load(id); ok {
		return v.(*tlsContext)
	}
	return nil
}

// tlsKTLSSuites12 are the TLS 1.2 suites offered and accepted: the ECDHE
// AEAD ones KTLSSuiteFor knows, so whatever is negotiated can go to kernel
// TLS or to the record layer. TLS 1.3's three suites all can.
var tlsKTLSSuites12 = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

func init() {
	newCtx := func(req []byte) ([]byte, error) {
		c, err := newTLSContext(req)
		if err != nil {
			return nil, err
		}
		id := tlsContextID.Add(1)
		tlsContexts.Store(id, c)
		return strconv.AppendUint(nil, id, 10), nil
	}
	free := func(req []byte) ([]byte, error) {
		id, err := strconv.ParseUint(string(req), 10, 64)
		if err != nil {
			return nil, errors.New("value:tls.context.free: bad context id")
		}
		tlsContexts.Delete(id)
		return []byte{}, nil
	}
	// Building a context reads files and parses keys: a few hundred µs at
	// most, like ssl's load_cert_chain, which also runs in the caller.
	RegisterMethod("tls.context", func(_ context.Context, req []byte) ([]byte, error) { return newCtx(req) })
	RegisterQuick("tls.context", func(req []byte) ([]byte, error, bool) { out, err := newCtx(req); return out, err, true })
	RegisterMethod("tls.context.free", func(_ context.Context, req []byte) ([]byte, error) { return free(req) })
	RegisterQuick("tls.context.free", func(req []byte) ([]byte, error, bool) { out, err := free(req); return out, err, true })
}

func newTLSContext(req []byte) (*tlsContext, error) {
	var r tlsContextReq
	if err := json.Unmarshal(req, &r); err != nil {
		return nil, fmt.Errorf("value:tls.context: bad request: %v", err)
	}
	if r.VerifyMode < certNone || r.VerifyMode > certRequired {
		return nil, errors.New("value:invalid value for verify_mode")
	}
	if r.CheckHostname && r.VerifyMode == certNone {
		return nil, errors.New("value:Cannot set verify_mode to CERT_NONE when check_hostname is enabled.")
	}
	minV, maxV := r.MinVersion, r.MaxVersion
	if minV == 0 {
		minV = tls.VersionTLS12
	}
	if maxV == 0 {
		maxV = tls.VersionTLS13
	}
	for _, v := range []uint16{minV, maxV} {
		if v != tls.VersionTLS12 && v != tls.VersionTLS13 {
			return nil, fmt.Errorf("value:unsupported TLS version %#04x (TLSContext does TLS 1.2 and 1.3)", v)
		}
	}
	if minV > maxV {
		return nil, errors.New("value:min_version is above max_version")
	}
	c := &tlsContext{server: r.Server, verifyMode: r.VerifyMode, checkHostname: r.CheckHostname}
	var err error
	if r.DefaultCerts {
		if c.roots, err = x509.SystemCertPool(); err != nil {
			return nil, fmt.Errorf("ssl:cannot load the system's CA certificates: %v", err)
		}
	} else {
		c.roots = x509.NewCertPool()
	}
	for _, f := range r.CAFiles {
		if err := addCAFile(c.roots, f); err != nil {
			return nil, err
		}
	}
	for _, d := range r.CAData {
		if err := addCAData(c.roots, d); err != nil {
			return nil, err
		}
	}
	for _, d := range r.CAPaths {
		if err := addCAPath(c.roots, d); err != nil {
			return nil, err
		}
	}
	cfg := &tls.Config{
		MinVersion:   minV,
		MaxVersion:   maxV,
		CipherSuites: tlsKTLSSuites12,
		NextProtos:   r.ALPN,
		// Verification is done here (verifyPeer), not by crypto/tls: ssl
		// verifies a chain without the host name when check_hostname is off,
		// and its failures carry OpenSSL's verify codes.
		InsecureSkipVerify: true,
	}
	for _, cc := range r.CertChain {
		cert, err := loadCertChain(cc.CertFile, cc.KeyFile, cc.Password)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = append(cfg.Certificates, cert)
	}
	tickets := r.SessionTickets == nil || *r.SessionTickets
	if r.Server {
		switch r.VerifyMode {
		case certOptional:
			cfg.ClientAuth = tls.RequestClientCert
		case certRequired:
			cfg.ClientAuth = tls.RequireAnyClientCert
		}
		cfg.SessionTicketsDisabled = !tickets
		if tickets {
			// Explicit keys: every per-connection clone then encrypts and
			// decrypts with these, so a ticket one connection issued
			// resumes on another of the same context (automatic keys would
			// be made per clone).
			var k [32]byte
			if _, err := rand.Read(k[:]); err != nil {
				return nil, fmt.Errorf("ssl:%v", err)
			}
			cfg.SetSessionTicketKeys([][32]byte{k})
		}
	} else if tickets {
		// TLS 1.2 tickets arrive within the handshake and resume the next
		// connection to the same server name; TLS 1.3 tickets come after it
		// and go to the record layer, which drops them (docs/gotls.md).
		cfg.ClientSessionCache = tls.NewLRUClientSessionCache(64)
	}
	if r.Server {
		cfg.GetConfigForClient = c.serverConfig
	}
	c.cfg = cfg
	return c, nil
}

// osError renders a file error as "os:<errno>:<text>: '<path>'".
func osError(err error, path string) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return fmt.Errorf("os:%d:%s: %s", int(errno), errno.Error(), strconv.Quote(path))
	}
	return fmt.Errorf("os:0:%v", err)
}

func readFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, osError(err, path)
	}
	return b, nil
}

func addCAFile(pool *x509.CertPool, path string) error {
	b, err := readFile(path)
	if err != nil {
		return err
	}
	if !addPEMCerts(pool, b) {
		// A DER file is also accepted by OpenSSL's lookup only as PEM;
		// ssl reports an empty or unreadable cafile like this.
		return errors.New("ssl:[X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl found")
	}
	return nil
}

func addPEMCerts(pool *x509.CertPool, b []byte) bool {
	n := 0
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return n > 0
		}
		if blk.Type != "CERTIFICATE" && blk.Type != "TRUSTED CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			continue
		}
		pool.AddCert(cert)
		n++
	}
}

// addCAData takes load_verify_locations' cadata: a PEM string, or DER bytes
// that Python sent as base64.
func addCAData(pool *x509.CertPool, d string) error {
	if strings.Contains(d, "-----BEGIN") {
		if !addPEMCerts(pool, []byte(d)) {
			return errors.New("ssl:[X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl found")
		}
		return nil
	}
	der, err := base64.StdEncoding.DecodeString(d)
	if err != nil {
		return errors.New("value:cadata: neither PEM nor base64 DER")
	}
	n := 0
	for len(der) > 0 { // DER cadata may hold several certificates back to back
		certs, err := x509.ParseCertificates(der)
		if err != nil {
			return errors.New("ssl:[ASN1: NOT_ENOUGH_DATA] not enough data")
		}
		for _, c := range certs {
			pool.AddCert(c)
			n++
		}
		der = nil
	}
	if n == 0 {
		return errors.New("ssl:[X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl found")
	}
	return nil
}

// addCAPath loads a c_rehash directory. OpenSSL looks certificates up by
// subject hash when it needs them; loading every PEM file in it up front
// trusts the same set.
func addCAPath(pool *x509.CertPool, dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return osError(err, dir)
	}
	for _, e := range ents {
		if e.Type()&fs.ModeDir != 0 {
			continue
		}
		if b, err := os.ReadFile(filepath.Join(dir, e.Name())); err == nil {
			addPEMCerts(pool, b)
		}
	}
	return nil
}

// loadCertChain is load_cert_chain: certfile holds the leaf and its chain
// (PEM) and, without keyfile, the key too.
func loadCertChain(certFile string, keyFile, password *string) (tls.Certificate, error) {
	certPEM, err := readFile(certFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyPEM := certPEM
	if keyFile != nil && *keyFile != "" {
		if keyPEM, err = readFile(*keyFile); err != nil {
			return tls.Certificate{}, err
		}
	}
	var chain []byte
	for rest := certPEM; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type == "CERTIFICATE" || blk.Type == "TRUSTED CERTIFICATE" {
			blk.Type = "CERTIFICATE"
			chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: blk.Bytes})...)
		}
	}
	if chain == nil {
		return tls.Certificate{}, errors.New("ssl:[SSL] PEM lib")
	}
	key, err := privateKeyPEM(keyPEM, password)
	if err != nil {
		return tls.Certificate{}, err
	}
	cert, err := tls.X509KeyPair(chain, key)
	if err != nil {
		if strings.Contains(err.Error(), "does not match") {
			return tls.Certificate{}, errors.New("ssl:[X509: KEY_VALUES_MISMATCH] key values mismatch")
		}
		return tls.Certificate{}, fmt.Errorf("ssl:[SSL] PEM lib (%v)", err)
	}
	return cert, nil
}

// privateKeyPEM finds the first private key block, decrypting an encrypted
// one with the password: PKCS#8 "ENCRYPTED PRIVATE KEY" (tlspbes2.go) or
// the legacy PEM encryption (Proc-Type: 4,ENCRYPTED).
func privateKeyPEM(b []byte, password *string) ([]byte, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("ssl:[SSL] PEM lib")
		}
		if !strings.HasSuffix(blk.Type, "PRIVATE KEY") {
			continue
		}
		if blk.Type == "ENCRYPTED PRIVATE KEY" {
			if password == nil {
				return nil, errors.New("ssl:[SSL] PEM lib (the key is encrypted and no password was given)")
			}
			der, err := decryptPKCS8(blk.Bytes, []byte(*password))
			if err != nil {
				return nil, err
			}
			return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
		}
		//lint:ignore SA1019 legacy PEM encryption is what OpenSSL's traditional format uses
		if x509.IsEncryptedPEMBlock(blk) { //nolint:staticcheck
			if password == nil {
				return nil, errors.New("ssl:[SSL] PEM lib (the key is encrypted and no password was given)")
			}
			der, err := x509.DecryptPEMBlock(blk, []byte(*password)) //nolint:staticcheck
			if err != nil {
				if errors.Is(err, x509.IncorrectPasswordError) {
					return nil, errors.New("ssl:[EVP: BAD_DECRYPT] bad decrypt")
				}
				return nil, fmt.Errorf("ssl:encrypted keys not supported (%v)", err)
			}
			return pem.EncodeToMemory(&pem.Block{Type: blk.Type, Bytes: der}), nil
		}
		return pem.EncodeToMemory(blk), nil
	}
}

package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testCert makes a self-signed ECDSA P-256 certificate for localhost and
// 127.0.0.1, as the suite's openssl command does, and writes it as a CA file.
func testCert(t *testing.T) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "localhost"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, ca
}

// tlsEchoServer is a crypto/tls echo server on loopback that counts
// handshakes, resumed ones, and connections that ended other than by EOF,
// a reset or a close_notify.
type tlsEchoServer struct {
	ln         net.Listener
	handshakes atomic.Int64
	resumed    atomic.Int64
	bad        atomic.Int64
	lastBad    atomic.Value
	wg         sync.WaitGroup
}

func startTLSEcho(t *testing.T, cert tls.Certificate) *tlsEchoServer {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	s := &tlsEchoServer{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				tc := c.(*tls.Conn)
				if err := tc.Handshake(); err != nil {
					return // the client gave up, or a verification test
				}
				s.handshakes.Add(1)
				if tc.ConnectionState().DidResume {
					s.resumed.Add(1)
				}
				_, err := io.Copy(c, c)
				if err != nil && !isPeerGone(err) {
					s.bad.Add(1)
					s.lastBad.Store(err.Error())
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.wg.Wait()
	})
	return s
}

func isPeerGone(err error) bool {
	msg := err.Error()
	return errors.Is(err, io.EOF) || strings.Contains(msg, "connection reset") ||
		strings.Contains(msg, "broken pipe") || strings.Contains(msg, "use of closed")
}

func clientConfig(t *testing.T, o tlsOptions) *tls.Config {
	t.Helper()
	if o.serverName == "" {
		o.serverName = "localhost"
	}
	cfg, err := o.config()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestTLSEcho(t *testing.T) {
	cert, ca := testCert(t)
	for _, tc := range []struct {
		name    string
		opts    tlsOptions
		size    int
		version string
		cipher  string
	}{
		{"1.3 1KiB", tlsOptions{version: "1.3", caFile: ca}, 1024, "TLS 1.3", ""},
		// Above one record: the write runs beside the read (largeWrite).
		{"1.3 100KiB", tlsOptions{version: "1.3", caFile: ca}, 100 * 1024, "TLS 1.3", ""},
		{"1.2 cipher", tlsOptions{version: "1.2", caFile: ca, cipher: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"},
			1024, "TLS 1.2", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"},
		{"1.2 insecure", tlsOptions{version: "1.2", insecure: true}, 64, "TLS 1.2", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startTLSEcho(t, cert)
			res := result{Conns: 3, Size: tc.size}
			err := runTLS(&res, s.ln.Addr().String(), "", 50*time.Millisecond, 150*time.Millisecond, 2, 0, 5*time.Second, clientConfig(t, tc.opts))
			if err != nil {
				t.Fatal(err)
			}
			if res.Requests == 0 || res.RPS <= 0 || len(res.WindowsRPS) != 2 || res.P50us <= 0 {
				t.Fatalf("no requests counted: %+v", res)
			}
			if !res.TLS || res.TLSVersion != tc.version || res.TLSHandshakes != 3 {
				t.Fatalf("TLS fields: %+v", res)
			}
			if tc.cipher != "" && res.TLSCipher != tc.cipher {
				t.Fatalf("negotiated %s, asked for %s", res.TLSCipher, tc.cipher)
			}
			if s.bad.Load() != 0 {
				t.Fatalf("server saw %d broken connections: %v", s.bad.Load(), s.lastBad.Load())
			}
		})
	}
}

func TestTLSChurnFullHandshakes(t *testing.T) {
	cert, ca := testCert(t)
	s := startTLSEcho(t, cert)
	res := result{Conns: 4, Size: 64}
	err := runTLSChurn(&res, s.ln.Addr().String(), "", 50*time.Millisecond, 200*time.Millisecond, 2, 0, 5*time.Second,
		clientConfig(t, tlsOptions{version: "1.3", caFile: ca}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors != 0 {
		t.Fatalf("%d errors, last: %s", res.Errors, res.LastError)
	}
	if res.Requests == 0 || len(res.WindowsRPS) != 2 || res.P99us < res.P50us {
		t.Fatalf("no connections counted: %+v", res)
	}
	// Every counted connection was its own full handshake on the server.
	s.ln.Close()
	s.wg.Wait()
	if got := s.handshakes.Load(); got < int64(res.Requests) || res.TLSHandshakes < res.Requests {
		t.Fatalf("server made %d handshakes, client %d, counted %d", got, res.TLSHandshakes, res.Requests)
	}
	if s.resumed.Load() != 0 || res.TLSResumed != 0 {
		t.Fatalf("sessions resumed without -tls-resume: server %d, client %d", s.resumed.Load(), res.TLSResumed)
	}
	if s.bad.Load() != 0 {
		t.Fatalf("server saw %d broken connections: %v", s.bad.Load(), s.lastBad.Load())
	}
}

func TestTLSChurnResume(t *testing.T) {
	cert, ca := testCert(t)
	for _, version := range []string{"1.2", "1.3"} {
		t.Run(version, func(t *testing.T) {
			s := startTLSEcho(t, cert)
			res := result{Conns: 2, Size: 64}
			err := runTLSChurn(&res, s.ln.Addr().String(), "", 50*time.Millisecond, 150*time.Millisecond, 1, 0, 5*time.Second,
				clientConfig(t, tlsOptions{version: version, caFile: ca, resume: true}))
			if err != nil {
				t.Fatal(err)
			}
			if res.Errors != 0 || res.Requests == 0 {
				t.Fatalf("%d connections, %d errors, last: %s", res.Requests, res.Errors, res.LastError)
			}
			// The first connection of each unit has no ticket yet; after
			// that, nearly all resume.
			if res.TLSResumed == 0 || res.TLSResumed+uint64(res.Conns) < res.TLSHandshakes/2 {
				t.Fatalf("%d of %d handshakes resumed", res.TLSResumed, res.TLSHandshakes)
			}
		})
	}
}

func TestTLSVerifyFailure(t *testing.T) {
	cert, _ := testCert(t)
	_, otherCA := testCert(t)
	s := startTLSEcho(t, cert)
	cfg := clientConfig(t, tlsOptions{version: "1.3", caFile: otherCA})
	// Echo: the handshakes happen before the load, and a failure ends the run.
	res := result{Conns: 1, Size: 64}
	err := runTLS(&res, s.ln.Addr().String(), "", 0, 50*time.Millisecond, 1, 0, 2*time.Second, cfg)
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("want a certificate error, got %v", err)
	}
	// Churn: counted per connection, and the run gives up when nothing completes.
	res = result{Conns: 2, Size: 64}
	err = runTLSChurn(&res, s.ln.Addr().String(), "", 0, 2*time.Second, 1, 0, 300*time.Millisecond, cfg)
	if err == nil || !strings.Contains(err.Error(), "no connection completed") || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("want a give-up error naming the certificate, got %v", err)
	}
}

func TestTLSChurnRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	res := result{Conns: 2, Size: 64}
	err = runTLSChurn(&res, addr, "", 10*time.Millisecond, 150*time.Millisecond, 1, 0, 5*time.Second,
		clientConfig(t, tlsOptions{version: "1.3", insecure: true}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 0 || res.Errors == 0 || res.Refused != res.Errors {
		t.Fatalf("want only refusals, got %d connections, %d errors, %d refused", res.Requests, res.Errors, res.Refused)
	}
}

func TestTLSOptions(t *testing.T) {
	for _, tc := range []struct {
		opts tlsOptions
		want string
	}{
		{tlsOptions{version: "1.1", insecure: true}, "1.2 or 1.3"},
		{tlsOptions{version: "1.3", insecure: true, cipher: "TLS_AES_128_GCM_SHA256"}, "TLS 1.2 only"},
		{tlsOptions{version: "1.2", insecure: true, cipher: "TLS_RSA_WITH_RC4_128_SHA"}, "unknown or insecure"},
		{tlsOptions{version: "1.3"}, "-ca FILE"},
		{tlsOptions{version: "1.3", insecure: true, caFile: "x"}, "not both"},
	} {
		if _, err := tc.opts.config(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: want an error with %q, got %v", tc.opts, tc.want, err)
		}
	}
	for _, f := range []func(*result) error{
		func(r *result) error {
			return runTLS(r, "192.0.2.1:7", "", 0, time.Millisecond, 1, 0, time.Second, &tls.Config{InsecureSkipVerify: true})
		},
		func(r *result) error {
			return runTLSChurn(r, "192.0.2.1:7", "", 0, time.Millisecond, 1, 0, time.Second, &tls.Config{InsecureSkipVerify: true})
		},
	} {
		if err := f(&result{Conns: 1, Size: 64}); err == nil || !strings.Contains(err.Error(), "non-loopback") {
			t.Fatalf("non-loopback address: %v", err)
		}
	}
}

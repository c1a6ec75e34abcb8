package goloop

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// CPython's own test certificates (Debian's libpython3.11-testsuite).
const pyTestDir = "/usr/lib/python3.11/test"

func pyTestFile(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(pyTestDir, name)
	if _, err := os.Stat(p); err != nil {
		t.Skipf("SKIP: %s not here (libpython3.11-testsuite)", p)
	}
	return p
}

func ctxErr(t *testing.T, r ctxReq) error {
	t.Helper()
	b, _ := json.Marshal(r)
	out, err := callQuick(t, "tls.context", b)
	if err == nil {
		callQuick(t, "tls.context.free", out)
	}
	return err
}

// Load errors carry the kind Python turns into ssl's exception.
func TestTLSContextErrors(t *testing.T) {
	p := pki(t)
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	os.WriteFile(garbage, []byte("not a certificate\n"), 0o600)
	// The ECDSA leaf's certificate with the RSA leaf's key.
	mismatch := filepath.Join(dir, "mismatch.pem")
	ec, _ := os.ReadFile(sharedECDSA)
	rs, _ := os.ReadFile(sharedRSA)
	ecCert, _ := pem.Decode(ec)
	_, rsRest := pem.Decode(rs)
	os.WriteFile(mismatch, append(pem.EncodeToMemory(ecCert), rsRest...), 0o600)
	certOnly := filepath.Join(dir, "certonly.pem")
	os.WriteFile(certOnly, pem.EncodeToMemory(ecCert), 0o600)
	chain := func(cert string, key any) ctxReq {
		return ctxReq{"server": true, "cert_chain": []any{map[string]any{"certfile": cert, "keyfile": key}}}
	}
	for _, tc := range []struct {
		name string
		req  ctxReq
		want string
	}{
		{"missing-certfile", chain(filepath.Join(dir, "nope.pem"), nil), "os:2:no such file or directory: "},
		{"missing-keyfile", chain(sharedECDSA, filepath.Join(dir, "nope.pem")), "os:2:"},
		{"directory", chain(dir, nil), "os:21:"},
		{"garbage", chain(garbage, nil), "ssl:[SSL] PEM lib"},
		{"no-key", chain(certOnly, nil), "ssl:[SSL] PEM lib"},
		{"key-mismatch", chain(mismatch, nil), "ssl:[X509: KEY_VALUES_MISMATCH] key values mismatch"},
		{"missing-cafile", ctxReq{"cafiles": []string{filepath.Join(dir, "nope.pem")}}, "os:2:"},
		{"empty-cafile", ctxReq{"cafiles": []string{garbage}}, "ssl:[X509: NO_CERTIFICATE_OR_CRL_FOUND]"},
		{"bad-cadata", ctxReq{"cadata": []string{"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}}, "ssl:[X509: NO_CERTIFICATE_OR_CRL_FOUND]"},
		{"bad-cadata-der", ctxReq{"cadata": []string{base64.StdEncoding.EncodeToString([]byte("junk"))}}, "ssl:"},
		{"missing-capath", ctxReq{"capaths": []string{filepath.Join(dir, "nope")}}, "os:2:"},
		{"verify-mode", ctxReq{"verify_mode": 3}, "value:"},
		{"check-hostname-cert-none", ctxReq{"verify_mode": 0, "check_hostname": true}, "value:"},
		{"version", ctxReq{"min_version": 0x0302}, "value:"},
		{"versions-crossed", ctxReq{"min_version": 0x0304, "max_version": 0x0303}, "value:"},
	} {
		t.Run(tc.name, func(t *testing.T) { errPrefix(t, ctxErr(t, tc.req), tc.want) })
	}
	if err := ctxErr(t, chain(sharedECDSA, sharedECDSA)); err != nil {
		t.Fatalf("key file given explicitly: %v", err)
	}
	if err := ctxErr(t, ctxReq{"cafiles": []string{p.caFile}, "default_certs": true}); err != nil {
		t.Fatalf("default certs: %v", err)
	}
	if _, err := callQuick(t, "tls.context.free", []byte("x")); err == nil || !strings.HasPrefix(err.Error(), "value:") {
		t.Fatalf("free of a bad id: %v", err)
	}
}

// Encrypted keys: PKCS#8 PBES2 (CPython's keycert.passwd.pem, password
// "somepass") and the legacy PEM encryption.
func TestTLSContextEncryptedKeys(t *testing.T) {
	pki(t)
	chain := func(cert string, pw any) ctxReq {
		return ctxReq{"server": true, "cert_chain": []any{map[string]any{"certfile": cert, "password": pw}}}
	}
	legacy := filepath.Join(t.TempDir(), "legacy.pem")
	b, _ := os.ReadFile(sharedRSA)
	certBlk, rest := pem.Decode(b)
	keyBlk, _ := pem.Decode(rest)
	k, _ := x509.ParsePKCS8PrivateKey(keyBlk.Bytes)
	//nolint:staticcheck // the legacy format is what is being tested
	enc, err := x509.EncryptPEMBlock(rand.Reader, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k.(*rsa.PrivateKey)), []byte("pw"), x509.PEMCipherAES256)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(legacy, append(pem.EncodeToMemory(certBlk), pem.EncodeToMemory(enc)...), 0o600)
	passwd := pyTestFile(t, "keycert.passwd.pem")
	for _, tc := range []struct {
		name string
		req  ctxReq
		want string
	}{
		{"pkcs8", chain(passwd, "somepass"), ""},
		{"pkcs8-wrong", chain(passwd, "wrong"), "ssl:[EVP: BAD_DECRYPT] bad decrypt"},
		{"pkcs8-none", chain(passwd, nil), "ssl:[SSL] PEM lib"},
		{"legacy", chain(legacy, "pw"), ""},
		{"legacy-wrong", chain(legacy, "nope"), "ssl:"},
		{"legacy-none", chain(legacy, nil), "ssl:[SSL] PEM lib"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ctxErr(t, tc.req)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			errPrefix(t, err, tc.want)
		})
	}
}

// cadata (PEM and base64 DER) and capath trust what they hold.
func TestTLSContextCAData(t *testing.T) {
	p := pki(t)
	caPEM, _ := os.ReadFile(p.caFile)
	capath := t.TempDir()
	os.WriteFile(filepath.Join(capath, "1234abcd.0"), caPEM, 0o600)
	for name, req := range map[string]ctxReq{
		"pem":    {"cadata": []string{string(caPEM)}},
		"der":    {"cadata": []string{base64.StdEncoding.EncodeToString(p.caCert.Raw)}},
		"capath": {"capaths": []string{capath}},
	} {
		t.Run(name, func(t *testing.T) {
			req["verify_mode"], req["check_hostname"] = 2, true
			id := newCtx(t, req)
			o := runCase(t, hsCase{ctx: id, host: "localhost", peerCfg: &tls.Config{Certificates: []tls.Certificate{loadPair(t, sharedECDSA)}}})
			exchangeData(t, must(t, o), o.mine, o.peer)
		})
	}
}

// getpeercert()'s dict, checked against CPython's own decoder for its
// test certificates.
func TestTLSPeerCertMatchesPython(t *testing.T) {
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skip("SKIP: no /usr/bin/python3")
	}
	pyTestFile(t, "keycert.pem")
	files := []string{"keycert.pem", "keycert2.pem", "keycert3.pem", "keycert4.pem", "keycertecc.pem", "allsans.pem",
		"idnsans.pem", "nokia.pem", "nosan.pem", "talos-2019-0758.pem", "pycacert.pem", "selfsigned_pythontestdotnet.pem"}
	p := pki(t)
	var paths []string
	for _, f := range files {
		paths = append(paths, filepath.Join(pyTestDir, f))
	}
	paths = append(paths, sharedECDSA, p.caFile)
	script := `import json, ssl, sys
print(json.dumps([ssl._ssl._test_decode_cert(p) for p in sys.argv[1:]]))`
	out, err := exec.Command(py, append([]string{"-c", script}, paths...)...).Output()
	if err != nil {
		t.Fatalf("python: %v", err)
	}
	var want []any
	if err := json.Unmarshal(out, &want); err != nil {
		t.Fatal(err)
	}
	for i, path := range paths {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		for blk != nil && blk.Type != "CERTIFICATE" {
			_, rest := pem.Decode(b)
			b = rest
			blk, _ = pem.Decode(b)
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		gb, _ := json.Marshal(decodeCert(cert))
		var got any
		json.Unmarshal(gb, &got)
		if !reflect.DeepEqual(got, want[i]) {
			wb, _ := json.Marshal(want[i])
			t.Errorf("%s:\n got %s\nwant %s", filepath.Base(path), gb, wb)
		}
	}
}

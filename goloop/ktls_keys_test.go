package goloop

import (
	"bytes"
	"crypto"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"hash"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// RFC 8448 section 3 (Simple 1-RTT Handshake, TLS_AES_128_GCM_SHA256):
// the "derive write traffic keys" steps for both application traffic
// secrets and for the server handshake traffic secret.
func TestKTLSKeysTLS13RFC8448(t *testing.T) {
	s, ok := KTLSSuiteFor(TLS13, 0x1301)
	if !ok {
		t.Fatal("TLS_AES_128_GCM_SHA256 unknown")
	}
	for _, v := range []struct{ name, secret, key, iv string }{
		{"server application_traffic_secret_0",
			"a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 43",
			"9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56", "cf 78 2b 88 dd 83 54 9a ad f1 e9 84"},
		{"client application_traffic_secret_0",
			"9e 40 64 6c e7 9a 7f 9d c0 5a f8 88 9b ce 65 52 87 5a fa 0b 06 df 00 87 f7 92 eb b7 c1 75 04 a5",
			"17 42 2d da 59 6e d5 d9 ac d8 90 e3 c6 3f 50 51", "5b 78 92 3d ee 08 57 90 33 e5 23 d9"},
		{"server handshake_traffic_secret",
			"b6 7b 7d 69 0c c1 6c 4e 75 e5 42 13 cb 2d 37 b4 e9 c9 12 bc de d9 10 5d 42 be fd 59 d3 91 ad 38",
			"3f ce 51 60 09 c2 17 27 d0 f2 e4 e8 6e e4 03 bc", "5d 31 3e b2 67 12 76 ee 13 00 0b 30"},
	} {
		key, iv, err := TLS13TrafficKeys(s, unhex(t, v.secret))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(key, unhex(t, v.key)) || !bytes.Equal(iv, unhex(t, v.iv)) {
			t.Errorf("%s: key %x iv %x, want %s / %s", v.name, key, iv, v.key, v.iv)
		}
	}
	// A secret of the wrong size for the suite's hash is refused.
	s384, _ := KTLSSuiteFor(TLS13, 0x1302)
	if _, _, err := TLS13TrafficKeys(s384, make([]byte, 32)); err == nil {
		t.Error("a 32-byte secret accepted for a SHA-384 suite")
	}
}

// The TLS 1.2 PRF against the test vectors published for the IETF TLS
// working group (P_SHA256, 100 bytes; P_SHA384, 148 bytes).
func TestKTLSTLS12PRFVectors(t *testing.T) {
	for _, v := range []struct {
		h                 func() hash.Hash
		secret, seed, out string
	}{
		{sha256.New, "9b be 43 6b a9 40 f0 17 b1 76 52 84 9a 71 db 35", "a0 ba 9f 93 6c da 31 18 27 a6 f7 96 ff d5 19 8c",
			`e3 f2 29 ba 72 7b e1 7b 8d 12 26 20 55 7c d4 53 c2 aa b2 1d 07 c3 d4 95 32 9b 52 d4 e6 1e db 5a
			 6b 30 17 91 e9 0d 35 c9 c9 a4 6b 4e 14 ba f9 af 0f a0 22 f7 07 7d ef 17 ab fd 37 97 c0 56 4b ab
			 4f bc 91 66 6e 9d ef 9b 97 fc e3 4f 79 67 89 ba a4 80 82 d1 22 ee 42 c5 a7 2e 5a 51 10 ff f7 01
			 87 34 7b 66`},
		{sha512.New384, "b8 0b 73 3d 6c ee fc dc 71 56 6e a4 8e 55 67 df", "cd 66 5c f6 a8 44 7d d6 ff 8b 27 55 5e db 74 65",
			`7b 0c 18 e9 ce d4 10 ed 18 04 f2 cf a3 4a 33 6a 1c 14 df fb 49 00 bb 5f d7 94 21 07 e8 1c 83 cd
			 e9 ca 0f aa 60 be 9f e3 4f 82 b1 23 3c 91 46 a0 e5 34 cb 40 0f ed 27 00 88 4f 9d c2 36 f8 0e dd
			 8b fa 96 11 44 c9 e8 d7 92 ec a7 22 a7 b3 2f c3 d4 16 d4 73 eb c2 c5 fd 4a bf da d0 5d 91 84 25
			 9b 5b f8 cd 4d 90 fa 0d 31 e2 de c4 79 e4 f1 a2 60 66 f2 ee a9 a6 92 36 a3 e5 26 55 c9 e9 ae e6
			 91 c8 f3 a2 68 54 30 8d 5e aa 3b e8 5e 09 90 70 3d 73 e5 6f`},
	} {
		want := unhex(t, v.out)
		got := tls12PRF(v.h, unhex(t, v.secret), "test label", unhex(t, v.seed), len(want))
		if !bytes.Equal(got, want) {
			t.Errorf("PRF = %x\nwant %x", got, want)
		}
	}
}

// The key block's layout, against a second, deliberately plain reading of
// RFC 5246 (P_hash written out by its definition, slices cut by offset).
// The crypto/tls tests in ktls_handshake_test.go prove the same layout
// against a real peer.
func TestKTLSTLS12KeyBlock(t *testing.T) {
	master := bytes.Repeat([]byte{0x4d}, 48)
	cr := bytes.Repeat([]byte{0xc1}, 32)
	sr := bytes.Repeat([]byte{0x5e}, 32)
	for _, id := range []uint16{0xc02b, 0xc02c, 0xcca9} {
		s, _ := KTLSSuiteFor(TLS12, id)
		ck, civ, sk, siv, err := TLS12KeyBlock(s, master, cr, sr)
		if err != nil {
			t.Fatal(err)
		}
		newH := sha256.New
		if s.Hash == crypto.SHA384 {
			newH = sha512.New384
		}
		hm := func(key, data []byte) []byte { m := hmac.New(newH, key); m.Write(data); return m.Sum(nil) }
		seed := append(append([]byte("key expansion"), sr...), cr...)
		var kb []byte
		for a := hm(master, seed); len(kb) < 200; a = hm(master, a) {
			kb = append(kb, hm(master, append(append([]byte{}, a...), seed...))...)
		}
		kl, il := s.Cipher.KeyLen(), s.Cipher.IVLen(TLS12)
		if !bytes.Equal(ck, kb[0:kl]) || !bytes.Equal(sk, kb[kl:2*kl]) ||
			!bytes.Equal(civ, kb[2*kl:2*kl+il]) || !bytes.Equal(siv, kb[2*kl+il:2*kl+2*il]) {
			t.Errorf("suite %#04x: key block cut wrong", id)
		}
		if len(civ) != map[KTLSCipher]int{KTLSAES128GCM: 4, KTLSAES256GCM: 4, KTLSChaCha20Poly1305: 12}[s.Cipher] {
			t.Errorf("suite %#04x: IV length %d", id, len(civ))
		}
	}
}

// The crypto_info structs must have linux/tls.h's sizes (the kernel checks
// optlen against them).
func TestKTLSCryptoInfoLayout(t *testing.T) {
	if n := unsafe.Sizeof(tls12CryptoInfoAESGCM128{}); n != 40 {
		t.Errorf("aes_gcm_128 %d bytes, want 40", n)
	}
	if n := unsafe.Sizeof(tls12CryptoInfoAESGCM256{}); n != 56 {
		t.Errorf("aes_gcm_256 %d bytes, want 56", n)
	}
	if n := unsafe.Sizeof(tls12CryptoInfoChaCha20Poly1305{}); n != 56 {
		t.Errorf("chacha20_poly1305 %d bytes, want 56", n)
	}
	if o := unsafe.Offsetof(tls12CryptoInfoAESGCM128{}.recSeq); o != 32 {
		t.Errorf("aes_gcm_128 rec_seq at %d, want 32", o)
	}
	if o := unsafe.Offsetof(tls12CryptoInfoChaCha20Poly1305{}.recSeq); o != 48 {
		t.Errorf("chacha20_poly1305 rec_seq at %d, want 48", o)
	}
}

// A bad config is refused before any syscall, with an error that says so;
// on a kernel without the tls module the refusal names the missing module.
func TestKTLSInstallErrors(t *testing.T) {
	good := &KTLSKeys{Key: make([]byte, 16), IV: make([]byte, 12)}
	for _, cfg := range []KTLSConfig{
		{Version: 0x0302, Cipher: KTLSAES128GCM, TX: good},
		{Version: TLS13, Cipher: 99, TX: good},
		{Version: TLS13, Cipher: KTLSAES128GCM},
		{Version: TLS13, Cipher: KTLSAES256GCM, TX: good},                                             // 16-byte key
		{Version: TLS12, Cipher: KTLSAES128GCM, RX: good},                                             // 12-byte IV for 1.2 GCM
		{Version: TLS12, Cipher: KTLSChaCha20Poly1305, TX: &KTLSKeys{Key: make([]byte, 32), IV: nil}}, // no IV
	} {
		tx, rx, err := InstallKTLS(-1, cfg)
		if tx || rx || !errors.Is(err, ErrKTLSBadConfig) {
			t.Errorf("%+v: %v %v %v, want a config error", cfg, tx, rx, err)
		}
	}
	// An unconnected socket cannot take the ULP.
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	_, _, err = InstallKTLS(fd, KTLSConfig{Version: TLS13, Cipher: KTLSAES128GCM, TX: good})
	var ke *KTLSError
	if !errors.As(err, &ke) || ke.Step != "TCP_ULP" {
		t.Fatalf("unconnected socket: %v", err)
	}
	t.Logf("unconnected socket: %v", err)
	if err := KTLSAvailable(); err != nil {
		if !errors.Is(err, ErrKTLSUnavailable) {
			t.Fatalf("probe failed for another reason than a missing module: %v", err)
		}
		if !strings.Contains(err.Error(), "no tls module") {
			t.Errorf("message does not name the missing module: %v", err)
		}
		t.Logf("this kernel: %v", err)
	}
}

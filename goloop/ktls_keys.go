package goloop

import (
	"crypto"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
)

// Record-layer keys from handshake secrets, for kernel TLS. A handshake
// engine that will not hand over its keys can still hand over its secrets
// (SSLKEYLOGFILE's NSS key log lines: CLIENT_TRAFFIC_SECRET_0 and
// SERVER_TRAFFIC_SECRET_0 for TLS 1.3, CLIENT_RANDOM's master secret for
// TLS 1.2); the record keys follow from them by RFC 8446 7.3 and RFC 5246
// 6.3.

// KTLSSuite is what kernel TLS needs to know of a negotiated cipher suite.
type KTLSSuite struct {
	ID      uint16 // IANA cipher suite number
	Version uint16
	Cipher  KTLSCipher
	Hash    crypto.Hash // the suite's PRF (1.2) or HKDF (1.3) hash
}

// The AEAD suites kernel TLS can carry. TLS 1.2 key exchange and signature
// (ECDHE/DHE/RSA, RSA/ECDSA) do not matter to the record layer.
var ktlsSuites = []KTLSSuite{
	{0x1301, TLS13, KTLSAES128GCM, crypto.SHA256},        // TLS_AES_128_GCM_SHA256
	{0x1302, TLS13, KTLSAES256GCM, crypto.SHA384},        // TLS_AES_256_GCM_SHA384
	{0x1303, TLS13, KTLSChaCha20Poly1305, crypto.SHA256}, // TLS_CHACHA20_POLY1305_SHA256
	{0xc02b, TLS12, KTLSAES128GCM, crypto.SHA256},        // ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
	{0xc02c, TLS12, KTLSAES256GCM, crypto.SHA384},        // ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
	{0xc02f, TLS12, KTLSAES128GCM, crypto.SHA256},        // ECDHE_RSA_WITH_AES_128_GCM_SHA256
	{0xc030, TLS12, KTLSAES256GCM, crypto.SHA384},        // ECDHE_RSA_WITH_AES_256_GCM_SHA384
	{0xcca8, TLS12, KTLSChaCha20Poly1305, crypto.SHA256}, // ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
	{0xcca9, TLS12, KTLSChaCha20Poly1305, crypto.SHA256}, // ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
	{0xccaa, TLS12, KTLSChaCha20Poly1305, crypto.SHA256}, // DHE_RSA_WITH_CHACHA20_POLY1305_SHA256
	{0x009c, TLS12, KTLSAES128GCM, crypto.SHA256},        // RSA_WITH_AES_128_GCM_SHA256
	{0x009d, TLS12, KTLSAES256GCM, crypto.SHA384},        // RSA_WITH_AES_256_GCM_SHA384
	{0x009e, TLS12, KTLSAES128GCM, crypto.SHA256},        // DHE_RSA_WITH_AES_128_GCM_SHA256
	{0x009f, TLS12, KTLSAES256GCM, crypto.SHA384},        // DHE_RSA_WITH_AES_256_GCM_SHA384
}

// KTLSSuiteFor finds the suite negotiated as id under version; false when
// kernel TLS cannot carry it (CBC, CCM, another version), which is a reason
// to stay in user space.
func KTLSSuiteFor(version, id uint16) (KTLSSuite, bool) {
	for _, s := range ktlsSuites {
		if s.ID == id && s.Version == version {
			return s, true
		}
	}
	return KTLSSuite{}, false
}

func (s KTLSSuite) newHash() (func() hash.Hash, error) {
	switch s.Hash {
	case crypto.SHA256:
		return sha256.New, nil
	case crypto.SHA384:
		return sha512.New384, nil
	}
	return nil, fmt.Errorf("ktls: suite %#04x: unsupported hash %v", s.ID, s.Hash)
}

// TLS13TrafficKeys derives the record key and IV from a TLS 1.3 traffic
// secret (client_/server_application_traffic_secret_N): RFC 8446 7.3,
// HKDF-Expand-Label(secret, "key", "", key_length) and (…, "iv", "", 12).
func TLS13TrafficKeys(s KTLSSuite, secret []byte) (key, iv []byte, err error) {
	if s.Version != TLS13 {
		return nil, nil, errors.New("ktls: TLS13TrafficKeys needs a TLS 1.3 suite")
	}
	h, err := s.newHash()
	if err != nil {
		return nil, nil, err
	}
	if len(secret) != s.Hash.Size() {
		return nil, nil, fmt.Errorf("ktls: traffic secret is %d bytes, %v needs %d", len(secret), s.Hash, s.Hash.Size())
	}
	if key, err = hkdfExpandLabel(h, secret, "key", s.Cipher.KeyLen()); err != nil {
		return nil, nil, err
	}
	if iv, err = hkdfExpandLabel(h, secret, "iv", s.Cipher.IVLen(TLS13)); err != nil {
		return nil, nil, err
	}
	return key, iv, nil
}

// hkdfExpandLabel is RFC 8446 7.1: the info is the HkdfLabel struct
// (uint16 length, opaque label<7..255> = "tls13 " + label, opaque
// context<0..255>, here empty).
func hkdfExpandLabel(h func() hash.Hash, secret []byte, label string, length int) ([]byte, error) {
	full := "tls13 " + label
	info := make([]byte, 0, 4+len(full))
	info = append(info, byte(length>>8), byte(length), byte(len(full)))
	info = append(info, full...)
	info = append(info, 0) // empty context
	return hkdf.Expand(h, secret, string(info), length)
}

// TLS13NextTrafficSecret is the secret after a KeyUpdate (RFC 8446 7.2):
// HKDF-Expand-Label(secret, "traffic upd", "", Hash.length). Kernels that
// can rekey (not 6.1) take the keys derived from it.
func TLS13NextTrafficSecret(s KTLSSuite, secret []byte) ([]byte, error) {
	h, err := s.newHash()
	if err != nil {
		return nil, err
	}
	return hkdfExpandLabel(h, secret, "traffic upd", s.Hash.Size())
}

// TLS12KeyBlock derives both directions' keys from a TLS 1.2 master secret
// and the hello randoms: RFC 5246 6.3, key_block = PRF(master_secret,
// "key expansion", server_random + client_random), cut into
// client_write_MAC_key, server_write_MAC_key (empty for AEAD suites),
// client_write_key, server_write_key, client_write_IV, server_write_IV
// (4 bytes for AES-GCM, RFC 5288; 12 for ChaCha20-Poly1305, RFC 7905).
// The master secret is the extended one (RFC 7627) when that extension was
// negotiated; the expansion is the same.
func TLS12KeyBlock(s KTLSSuite, master, clientRandom, serverRandom []byte) (clientKey, clientIV, serverKey, serverIV []byte, err error) {
	if s.Version != TLS12 {
		return nil, nil, nil, nil, errors.New("ktls: TLS12KeyBlock needs a TLS 1.2 suite")
	}
	if len(master) != 48 || len(clientRandom) != 32 || len(serverRandom) != 32 {
		return nil, nil, nil, nil, fmt.Errorf("ktls: master secret %d bytes and randoms %d, %d bytes; want 48, 32, 32",
			len(master), len(clientRandom), len(serverRandom))
	}
	h, err := s.newHash()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	kl, il := s.Cipher.KeyLen(), s.Cipher.IVLen(TLS12)
	seed := make([]byte, 0, 64)
	seed = append(append(seed, serverRandom...), clientRandom...)
	kb := tls12PRF(h, master, "key expansion", seed, 2*kl+2*il)
	clientKey, kb = kb[:kl:kl], kb[kl:]
	serverKey, kb = kb[:kl:kl], kb[kl:]
	clientIV, kb = kb[:il:il], kb[il:]
	serverIV = kb[:il:il]
	return clientKey, clientIV, serverKey, serverIV, nil
}

// tls12PRF is RFC 5246 5: PRF(secret, label, seed) = P_hash(secret,
// label + seed), with P_hash's A(0) = seed', A(i) = HMAC(secret, A(i-1)),
// output HMAC(secret, A(i) + seed') for i = 1, 2, ...
func tls12PRF(h func() hash.Hash, secret []byte, label string, seed []byte, n int) []byte {
	ls := append([]byte(label), seed...)
	mac := hmac.New(h, secret)
	mac.Write(ls)
	a := mac.Sum(nil)
	out := make([]byte, 0, n+mac.Size())
	for len(out) < n {
		mac.Reset()
		mac.Write(a)
		mac.Write(ls)
		out = mac.Sum(out)
		mac.Reset()
		mac.Write(a)
		a = mac.Sum(a[:0])
	}
	return out[:n]
}

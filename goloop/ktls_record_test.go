package goloop

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"math/big"
	"math/bits"
)

// A TLS record layer for tests, written from RFC 8446 5.2-5.3, RFC 5246
// 6.2.3.3, RFC 5288 3 and RFC 7905 2, so that the keys and sequence numbers
// derived for kernel TLS can be checked against crypto/tls on a kernel
// without the tls module: a record crypto/tls sealed must open with them,
// and one sealed with them must be accepted by crypto/tls.

type testRecordLayer struct {
	version uint16
	cipher  KTLSCipher
	aead    cipher.AEAD
	iv      []byte
	seq     uint64
}

func newTestRecordLayer(version uint16, c KTLSCipher, k *KTLSKeys) (*testRecordLayer, error) {
	l := &testRecordLayer{version: version, cipher: c, iv: k.IV, seq: k.Seq}
	if c == KTLSChaCha20Poly1305 {
		l.aead = &chacha20Poly1305{key: k.Key}
		return l, nil
	}
	b, err := aes.NewCipher(k.Key)
	if err != nil {
		return nil, err
	}
	l.aead, err = cipher.NewGCM(b)
	return l, err
}

// xorNonce is the TLS 1.3 and ChaCha20 nonce: the 12-byte IV with the
// sequence number xored into its last 8 bytes.
func (l *testRecordLayer) xorNonce() []byte {
	n := append([]byte(nil), l.iv...)
	var s [8]byte
	binary.BigEndian.PutUint64(s[:], l.seq)
	subtle.XORBytes(n[4:], n[4:], s[:])
	return n
}

// aad12 is TLS 1.2's additional data: seq_num + type + version + length.
func (l *testRecordLayer) aad12(typ uint8, n int) []byte {
	a := binary.BigEndian.AppendUint64(nil, l.seq)
	return append(a, typ, 3, 3, byte(n>>8), byte(n))
}

func (l *testRecordLayer) explicit() bool {
	return l.version == TLS12 && l.cipher != KTLSChaCha20Poly1305
}

func (l *testRecordLayer) open(rec []byte) (typ uint8, plain []byte, err error) {
	if len(rec) < 5 || int(binary.BigEndian.Uint16(rec[3:5])) != len(rec)-5 {
		return 0, nil, errors.New("bad record framing")
	}
	hdr, body := rec[:5], rec[5:]
	defer func() { l.seq++ }()
	switch {
	case l.version == TLS13:
		inner, err := l.aead.Open(nil, l.xorNonce(), body, hdr)
		if err != nil {
			return 0, nil, err
		}
		i := len(inner) - 1
		for i >= 0 && inner[i] == 0 {
			i--
		}
		if i < 0 {
			return 0, nil, errors.New("no inner content type")
		}
		return inner[i], inner[:i], nil
	case l.explicit():
		if len(body) < 8+16 {
			return 0, nil, errors.New("short record")
		}
		nonce := append(append([]byte(nil), l.iv...), body[:8]...)
		plain, err := l.aead.Open(nil, nonce, body[8:], l.aad12(hdr[0], len(body)-8-16))
		return hdr[0], plain, err
	default:
		if len(body) < 16 {
			return 0, nil, errors.New("short record")
		}
		plain, err := l.aead.Open(nil, l.xorNonce(), body, l.aad12(hdr[0], len(body)-16))
		return hdr[0], plain, err
	}
}

func (l *testRecordLayer) seal(typ uint8, plain []byte) []byte {
	defer func() { l.seq++ }()
	hdr := func(n int) []byte { return []byte{typ, 3, 3, byte(n >> 8), byte(n)} }
	switch {
	case l.version == TLS13:
		inner := append(append([]byte(nil), plain...), typ)
		h := hdr(len(inner) + 16)
		h[0] = RecordApplicationData
		return l.aead.Seal(h, l.xorNonce(), inner, h)
	case l.explicit():
		explicit := binary.BigEndian.AppendUint64(nil, l.seq)
		nonce := append(append([]byte(nil), l.iv...), explicit...)
		rec := append(hdr(8+len(plain)+16), explicit...)
		return l.aead.Seal(rec, nonce, plain, l.aad12(typ, len(plain)))
	default:
		return l.aead.Seal(hdr(len(plain)+16), l.xorNonce(), plain, l.aad12(typ, len(plain)))
	}
}

// chacha20Poly1305 is RFC 8439's AEAD, plainly (the standard library keeps
// its own internal; golang.org/x/crypto is not a dependency of this module).
type chacha20Poly1305 struct{ key []byte }

func (*chacha20Poly1305) NonceSize() int { return 12 }
func (*chacha20Poly1305) Overhead() int  { return 16 }

func chachaBlock(key, nonce []byte, counter uint32) [64]byte {
	var s [16]uint32
	s[0], s[1], s[2], s[3] = 0x61707865, 0x3320646e, 0x79622d32, 0x6b206574
	for i := 0; i < 8; i++ {
		s[4+i] = binary.LittleEndian.Uint32(key[4*i:])
	}
	s[12] = counter
	for i := 0; i < 3; i++ {
		s[13+i] = binary.LittleEndian.Uint32(nonce[4*i:])
	}
	x := s
	qr := func(a, b, c, d int) {
		x[a] += x[b]
		x[d] = bits.RotateLeft32(x[d]^x[a], 16)
		x[c] += x[d]
		x[b] = bits.RotateLeft32(x[b]^x[c], 12)
		x[a] += x[b]
		x[d] = bits.RotateLeft32(x[d]^x[a], 8)
		x[c] += x[d]
		x[b] = bits.RotateLeft32(x[b]^x[c], 7)
	}
	for i := 0; i < 10; i++ {
		qr(0, 4, 8, 12)
		qr(1, 5, 9, 13)
		qr(2, 6, 10, 14)
		qr(3, 7, 11, 15)
		qr(0, 5, 10, 15)
		qr(1, 6, 11, 12)
		qr(2, 7, 8, 13)
		qr(3, 4, 9, 14)
	}
	var out [64]byte
	for i := range x {
		binary.LittleEndian.PutUint32(out[4*i:], x[i]+s[i])
	}
	return out
}

func (c *chacha20Poly1305) xor(nonce, dst, src []byte) {
	for i := 0; i < len(src); i += 64 {
		ks := chachaBlock(c.key, nonce, uint32(1+i/64))
		subtle.XORBytes(dst[i:], src[i:], ks[:])
	}
}

func leInt(b []byte) *big.Int {
	r := make([]byte, len(b))
	for i := range b {
		r[len(b)-1-i] = b[i]
	}
	return new(big.Int).SetBytes(r)
}

func (c *chacha20Poly1305) tag(nonce, aad, ct []byte) []byte {
	pk := chachaBlock(c.key, nonce, 0)
	rb := append([]byte(nil), pk[:16]...)
	for _, i := range []int{3, 7, 11, 15} {
		rb[i] &= 15
	}
	for _, i := range []int{4, 8, 12} {
		rb[i] &= 252
	}
	r, s := leInt(rb), leInt(pk[16:32])
	p := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 130), big.NewInt(5))
	pad := func(b []byte) []byte { return append(b, make([]byte, (16-len(b)%16)%16)...) }
	m := pad(append([]byte(nil), aad...))
	m = pad(append(m, ct...))
	m = binary.LittleEndian.AppendUint64(m, uint64(len(aad)))
	m = binary.LittleEndian.AppendUint64(m, uint64(len(ct)))
	acc := new(big.Int)
	for i := 0; i < len(m); i += 16 {
		acc.Add(acc, leInt(append(append([]byte(nil), m[i:i+16]...), 1)))
		acc.Mul(acc, r).Mod(acc, p)
	}
	acc.Add(acc, s)
	t := acc.Bytes() // big-endian; keep the low 16 bytes, little-endian
	out := make([]byte, 16)
	for i := 0; i < 16 && i < len(t); i++ {
		out[i] = t[len(t)-1-i]
	}
	return out
}

func (c *chacha20Poly1305) Seal(dst, nonce, plain, aad []byte) []byte {
	ct := make([]byte, len(plain))
	c.xor(nonce, ct, plain)
	return append(append(dst, ct...), c.tag(nonce, aad, ct)...)
}

func (c *chacha20Poly1305) Open(dst, nonce, ct, aad []byte) ([]byte, error) {
	if len(ct) < 16 {
		return nil, errors.New("short")
	}
	body, tag := ct[:len(ct)-16], ct[len(ct)-16:]
	if subtle.ConstantTimeCompare(tag, c.tag(nonce, aad, body)) != 1 {
		return nil, errors.New("chacha20poly1305: message authentication failed")
	}
	plain := make([]byte, len(body))
	c.xor(nonce, plain, body)
	return append(dst, plain...), nil
}

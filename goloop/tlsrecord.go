package goloop

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"

	"golang.org/x/crypto/chacha20poly1305"
)

// The TLS record protection of one direction, for the soft record layer
// (softtls.go, docs/softtls.md): what the kernel's tls module does with the
// keys OpKTLS derives, done in Go where the kernel has no tls module. RFC
// 8446 5.2-5.3 (TLS 1.3), RFC 5246 6.2.3.3 with RFC 5288 3 (TLS 1.2
// AES-GCM, an explicit 8-byte nonce that is the sequence number, as the
// kernel and crypto/tls send it) and RFC 7905 2 (TLS 1.2 ChaCha20-Poly1305,
// IV xor sequence number). Records are sealed and opened in place: the
// hot path allocates nothing per record.

// Limits of a protected record (RFC 8446 5.2: a TLSCiphertext's length
// must not exceed 2^14 + 256; RFC 5246 allows 2^14 + 2048, but no AEAD
// suite's expansion comes near 256).
const (
	recordMaxPlain  = 1 << 14
	recordMaxCipher = recordMaxPlain + 256
	recordTagLen    = 16
)

var (
	// errRecordAuth: the record does not authenticate (a corrupted or
	// forged record, the wrong keys or sequence number): -EBADMSG, what
	// the kernel answers.
	errRecordAuth = errors.New("tls record: bad record MAC")
	// errRecordOverflow: a record longer than the protocol allows:
	// -EMSGSIZE.
	errRecordOverflow = errors.New("tls record: record overflow")
	// errRecordSeq: the sequence number would wrap (2^64 - 1 records);
	// the connection must end: -EOVERFLOW.
	errRecordSeq = errors.New("tls record: sequence number exhausted")
)

// recordCipher seals or opens the records of one direction.
type recordCipher struct {
	aead     cipher.AEAD
	seq      uint64
	version  uint16
	explicit bool     // TLS 1.2 AES-GCM: the nonce's last 8 bytes travel in the record
	iv       [12]byte // TLS 1.2 AES-GCM: the 4-byte salt, then the explicit part
	nonce    [12]byte
	aad      [13]byte
}

// newRecordCipher makes one direction's protection from the keys
// OpKTLS derives (KTLSKeys: Key, IV of IVLen bytes, the next record's Seq).
func newRecordCipher(version uint16, c KTLSCipher, k *KTLSKeys) (*recordCipher, error) {
	if version != TLS12 && version != TLS13 {
		return nil, errors.New("tls record: version must be TLS 1.2 or 1.3")
	}
	if c.KeyLen() == 0 || len(k.Key) != c.KeyLen() || len(k.IV) != c.IVLen(version) {
		return nil, errors.New("tls record: key or IV length does not fit the cipher")
	}
	r := &recordCipher{seq: k.Seq, version: version}
	var err error
	if c == KTLSChaCha20Poly1305 {
		r.aead, err = chacha20poly1305.New(k.Key)
	} else {
		var b cipher.Block
		if b, err = aes.NewCipher(k.Key); err == nil {
			r.aead, err = cipher.NewGCM(b)
		}
		r.explicit = version == TLS12
	}
	if err != nil {
		return nil, err
	}
	copy(r.iv[:], k.IV)
	return r, nil
}

// headerLen is what precedes the encrypted bytes of a record: the 5-byte
// header, and TLS 1.2 AES-GCM's explicit nonce.
func (r *recordCipher) headerLen() int {
	if r.explicit {
		return 5 + 8
	}
	return 5
}

// overhead is what sealing adds after the plaintext: the tag, and TLS
// 1.3's inner content type byte.
func (r *recordCipher) overhead() int {
	if r.version == TLS13 {
		return 1 + recordTagLen
	}
	return recordTagLen
}

// setNonce puts the next record's nonce in r.nonce: TLS 1.2 AES-GCM salt
// || seq (the explicit part is the sequence number), else IV xor seq.
func (r *recordCipher) setNonce() {
	r.nonce = r.iv
	if r.explicit {
		binary.BigEndian.PutUint64(r.nonce[4:], r.seq)
		return
	}
	s := binary.BigEndian.Uint64(r.iv[4:]) ^ r.seq
	binary.BigEndian.PutUint64(r.nonce[4:], s)
}

// setAAD12 is TLS 1.2's additional data: seq || type || version || length.
func (r *recordCipher) setAAD12(typ uint8, n int) []byte {
	binary.BigEndian.PutUint64(r.aad[:8], r.seq)
	r.aad[8], r.aad[9], r.aad[10] = typ, 3, 3
	binary.BigEndian.PutUint16(r.aad[11:], uint16(n))
	return r.aad[:]
}

// sealAt seals the record whose plaintext lies in buf[start+headerLen():]
// (buf's end is the plaintext's end), with room for the header reserved at
// buf[start:]; it writes the header and returns buf extended by the
// overhead (cap(buf) must have room for it). At most recordMaxPlain bytes.
func (r *recordCipher) sealAt(buf []byte, start int, typ uint8) ([]byte, error) {
	if r.seq == ^uint64(0) {
		return buf, errRecordSeq
	}
	h := r.headerLen()
	plainLen := len(buf) - start - h
	if plainLen < 0 || plainLen > recordMaxPlain {
		return buf, errRecordOverflow
	}
	if need := len(buf) + r.overhead(); need > cap(buf) {
		buf = append(buf[:cap(buf)], make([]byte, need-cap(buf))...)[:len(buf)]
	}
	r.setNonce()
	hdr := buf[start : start+5]
	var aad []byte
	if r.version == TLS13 {
		buf = append(buf, typ) // within cap: hdr stays in buf's array
		plainLen++
		binary.BigEndian.PutUint16(hdr[3:], uint16(plainLen+recordTagLen))
		hdr[0], hdr[1], hdr[2] = RecordApplicationData, 3, 3
		aad = hdr
	} else {
		binary.BigEndian.PutUint16(hdr[3:], uint16(h-5+plainLen+recordTagLen))
		hdr[0], hdr[1], hdr[2] = typ, 3, 3
		if r.explicit {
			copy(buf[start+5:start+h], r.nonce[4:])
		}
		aad = r.setAAD12(typ, plainLen)
	}
	p := buf[start+h : start+h+plainLen]
	r.aead.Seal(p[:0], r.nonce[:], p, aad)
	r.seq++
	return buf[:start+h+plainLen+recordTagLen], nil
}

// seal appends one record of type typ carrying plain to dst (a copy, then
// sealed in place).
func (r *recordCipher) seal(dst []byte, typ uint8, plain []byte) ([]byte, error) {
	start := len(dst)
	dst = append(dst, make([]byte, r.headerLen())...)
	dst = append(dst, plain...)
	return r.sealAt(dst, start, typ)
}

// open authenticates and decrypts the whole record rec (header and body)
// and appends its plaintext to dst: dst may be rec[r.headerLen():][:0] to
// open in place, or a buffer apart from rec. typ is the record's true type
// (TLS 1.3: the inner content type, the padding stripped).
func (r *recordCipher) open(dst, rec []byte) (typ uint8, out []byte, err error) {
	if len(rec) < 5 {
		return 0, dst, errRecordAuth
	}
	body := rec[5:]
	if len(body) > recordMaxCipher {
		return 0, dst, errRecordOverflow
	}
	if r.seq == ^uint64(0) {
		return 0, dst, errRecordSeq
	}
	r.setNonce()
	typ = rec[0]
	var aad []byte
	switch {
	case r.version == TLS13:
		if typ != RecordApplicationData || len(body) < recordTagLen+1 {
			return 0, dst, errRecordAuth
		}
		aad = rec[:5]
	case r.explicit:
		if len(body) < 8+recordTagLen {
			return 0, dst, errRecordAuth
		}
		copy(r.nonce[4:], body[:8])
		body = body[8:]
		aad = r.setAAD12(typ, len(body)-recordTagLen)
	default:
		if len(body) < recordTagLen {
			return 0, dst, errRecordAuth
		}
		aad = r.setAAD12(typ, len(body)-recordTagLen)
	}
	n := len(dst)
	out, err = r.aead.Open(dst, r.nonce[:], body, aad)
	if err != nil {
		return 0, dst, errRecordAuth
	}
	r.seq++
	if r.version == TLS13 {
		i := len(out) - 1
		for i >= n && out[i] == 0 {
			i--
		}
		if i < n {
			return 0, dst, errRecordAuth // no inner content type: unexpected_message
		}
		typ, out = out[i], out[:i]
	}
	if len(out)-n > recordMaxPlain {
		return 0, dst, errRecordOverflow
	}
	return typ, out, nil
}

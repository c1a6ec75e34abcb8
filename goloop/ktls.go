package goloop

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kernel TLS: after a TLS handshake done elsewhere (OpenSSL, crypto/tls),
// the record layer of a connected TCP socket is handed to the kernel's
// `tls` module. From then on write(2) on the fd takes plaintext and the
// kernel sends records (TX), and read(2) returns the plaintext of received
// application-data records (RX). Records of other types reach user space
// only through recvmsg with the TLS_GET_RECORD_TYPE control message
// (RecvRecord); a plain read of one fails with EIO, so none is lost.
//
// The kernel interface (include/uapi/linux/tls.h): setsockopt
// IPPROTO_TCP/TCP_ULP "tls" turns the socket into a TLS socket that still
// passes bytes through unchanged; then setsockopt SOL_TLS/TLS_TX and/or
// TLS_RX with a tls12_crypto_info_* struct installs one direction's keys.
// A direction cannot be changed once installed (6.1 has no rekey), and the
// ULP cannot be removed.

// TLS protocol versions as the kernel names them (the wire values).
const (
	TLS12 uint16 = 0x0303
	TLS13 uint16 = 0x0304
)

// KTLSCipher is the kernel's cipher_type (TLS_CIPHER_* in linux/tls.h).
type KTLSCipher uint16

const (
	KTLSAES128GCM        KTLSCipher = 51 // TLS_CIPHER_AES_GCM_128
	KTLSAES256GCM        KTLSCipher = 52 // TLS_CIPHER_AES_GCM_256
	KTLSChaCha20Poly1305 KTLSCipher = 54 // TLS_CIPHER_CHACHA20_POLY1305 (kernel 5.11+)
)

func (c KTLSCipher) String() string {
	switch c {
	case KTLSAES128GCM:
		return "aes-128-gcm"
	case KTLSAES256GCM:
		return "aes-256-gcm"
	case KTLSChaCha20Poly1305:
		return "chacha20-poly1305"
	}
	return "cipher(" + strconv.Itoa(int(c)) + ")"
}

// KeyLen is the AEAD key length.
func (c KTLSCipher) KeyLen() int {
	switch c {
	case KTLSAES128GCM:
		return 16
	case KTLSAES256GCM, KTLSChaCha20Poly1305:
		return 32
	}
	return 0
}

// IVLen is the length of the write IV the key schedule yields for this
// cipher: TLS 1.3 always 12 bytes; TLS 1.2 AES-GCM a 4-byte implicit part
// (the "salt"; the other 8 bytes travel in each record), TLS 1.2
// ChaCha20-Poly1305 (RFC 7905) the full 12 bytes, as in 1.3.
func (c KTLSCipher) IVLen(version uint16) int {
	switch c {
	case KTLSAES128GCM, KTLSAES256GCM:
		if version == TLS12 {
			return 4
		}
		return 12
	case KTLSChaCha20Poly1305:
		return 12
	}
	return 0
}

func versionName(v uint16) string {
	switch v {
	case TLS12:
		return "tls1.2"
	case TLS13:
		return "tls1.3"
	}
	return fmt.Sprintf("tls(%#04x)", v)
}

// The kernel's TLS socket options and record types.
const (
	solTLS           = unix.SOL_TLS // 282
	tlsTX            = 1            // TLS_TX
	tlsRX            = 2            // TLS_RX
	tlsSetRecordType = 1            // cmsg type on sendmsg
	tlsGetRecordType = 2            // cmsg type on recvmsg
)

// TLS record content types (RFC 8446 5.1).
const (
	RecordChangeCipherSpec uint8 = 20
	RecordAlert            uint8 = 21
	RecordHandshake        uint8 = 22
	RecordApplicationData  uint8 = 23
)

// The crypto_info structs of linux/tls.h, field for field. Every field
// after the two u16 is a byte array, so there is no padding and the layout
// is the same on every architecture (sizes 40, 56, 56; checked by a test).
type tlsCryptoInfo struct {
	version    uint16
	cipherType uint16
}

type tls12CryptoInfoAESGCM128 struct {
	info   tlsCryptoInfo
	iv     [8]byte
	key    [16]byte
	salt   [4]byte
	recSeq [8]byte
}

type tls12CryptoInfoAESGCM256 struct {
	info   tlsCryptoInfo
	iv     [8]byte
	key    [32]byte
	salt   [4]byte
	recSeq [8]byte
}

type tls12CryptoInfoChaCha20Poly1305 struct {
	info   tlsCryptoInfo
	iv     [12]byte
	key    [32]byte
	recSeq [8]byte // salt[0] in the C struct
}

// KTLSKeys is one direction's record protection state right after the
// handshake: Key and IV as the key schedule derives them (TLS13TrafficKeys,
// TLS12KeyBlock; IV is IVLen bytes), and Seq, the sequence number of the
// next record in this direction.
type KTLSKeys struct {
	Key []byte
	IV  []byte
	Seq uint64
}

// KTLSConfig says what to install on a socket. A nil direction is left to
// user space.
type KTLSConfig struct {
	Version uint16 // TLS12 or TLS13
	Cipher  KTLSCipher
	TX, RX  *KTLSKeys
}

// Errors InstallKTLS's *KTLSError matches with errors.Is, so the caller can
// decide to fall back to user-space TLS (before the first application byte).
var (
	// ErrKTLSUnavailable: the kernel has no TLS ULP (TCP_ULP "tls" fails
	// with ENOENT: module not built or not loadable).
	ErrKTLSUnavailable = errors.New("kernel TLS unavailable")
	// ErrKTLSUnsupported: the kernel has kTLS but refuses this version and
	// cipher (EINVAL, ENOPROTOOPT, EOPNOTSUPP on TLS_TX/TLS_RX).
	ErrKTLSUnsupported = errors.New("kernel TLS does not support this version and cipher")
	// ErrKTLSBadConfig: the config is wrong (key or IV length, unknown
	// version or cipher); nothing was done to the socket.
	ErrKTLSBadConfig = errors.New("bad kernel TLS config")
)

// KTLSError says which step failed and why.
type KTLSError struct {
	Step string // "config", "TCP_ULP", "TLS_TX", "TLS_RX"
	Err  error  // a unix.Errno from the kernel, or the reason for "config"
}

func (e *KTLSError) Error() string {
	var hint string
	switch {
	case errors.Is(e, ErrKTLSUnavailable):
		hint = " (the kernel has no tls module)"
	case errors.Is(e, ErrKTLSUnsupported):
		hint = " (this kernel's TLS does not take this version/cipher)"
	case e.Err == unix.ENOTCONN:
		hint = " (the socket must be a connected TCP socket)"
	case e.Err == unix.EBUSY:
		hint = " (this direction is already installed)"
	}
	if e.Step == "config" {
		return "ktls: " + e.Err.Error()
	}
	return fmt.Sprintf("ktls: setsockopt %s: %v%s", e.Step, e.Err, hint)
}

func (e *KTLSError) Unwrap() error { return e.Err }

func (e *KTLSError) Is(target error) bool {
	switch target {
	case ErrKTLSUnavailable:
		return e.Step == "TCP_ULP" && e.Err == unix.ENOENT
	case ErrKTLSUnsupported:
		return (e.Step == "TLS_TX" || e.Step == "TLS_RX") &&
			(e.Err == unix.EINVAL || e.Err == unix.ENOPROTOOPT || e.Err == unix.EOPNOTSUPP)
	case ErrKTLSBadConfig:
		return e.Step == "config"
	}
	return false
}

func (c *KTLSConfig) check() error {
	bad := func(format string, a ...any) error {
		return &KTLSError{Step: "config", Err: fmt.Errorf(format, a...)}
	}
	if c.Version != TLS12 && c.Version != TLS13 {
		return bad("version %#04x: only TLS 1.2 and 1.3", c.Version)
	}
	if c.Cipher.KeyLen() == 0 {
		return bad("unknown cipher %v", c.Cipher)
	}
	for _, d := range []struct {
		name string
		k    *KTLSKeys
	}{{"TX", c.TX}, {"RX", c.RX}} {
		if d.k == nil {
			continue
		}
		if len(d.k.Key) != c.Cipher.KeyLen() {
			return bad("%s key is %d bytes, %v needs %d", d.name, len(d.k.Key), c.Cipher, c.Cipher.KeyLen())
		}
		if want := c.Cipher.IVLen(c.Version); len(d.k.IV) != want {
			return bad("%s IV is %d bytes, %s %v needs %d", d.name, len(d.k.IV), versionName(c.Version), c.Cipher, want)
		}
	}
	if c.TX == nil && c.RX == nil {
		return bad("neither TX nor RX given")
	}
	return nil
}

// InstallKTLS hands the record layer of fd, a connected TCP socket whose
// handshake is complete and whose user-space TLS has consumed no byte past
// the last handshake record, to the kernel: TCP_ULP "tls", then TLS_TX,
// then TLS_RX, for the directions cfg gives. It reports what it installed.
//
// On error nothing more is tried. Until TLS_TX or TLS_RX succeeds the
// socket still passes bytes unchanged (the "tls" ULP alone is transparent),
// so with tx and rx both false the caller can go on with user-space TLS.
// With tx true and rx false (RX refused), the kernel encrypts what is
// written and user space must decrypt what is read: a mixed mode that
// works (OpenSSL 3.0 runs TLS 1.3 that way) or a reason to close.
func InstallKTLS(fd int, cfg KTLSConfig) (tx, rx bool, err error) {
	if err := cfg.check(); err != nil {
		return false, false, err
	}
	if err := setULP(fd); err != nil {
		return false, false, err
	}
	if cfg.TX != nil {
		if err := setCryptoInfo(fd, tlsTX, &cfg, cfg.TX); err != nil {
			return false, false, &KTLSError{Step: "TLS_TX", Err: err}
		}
		tx = true
	}
	if cfg.RX != nil {
		if err := setCryptoInfo(fd, tlsRX, &cfg, cfg.RX); err != nil {
			return tx, false, &KTLSError{Step: "TLS_RX", Err: err}
		}
		rx = true
	}
	return tx, rx, nil
}

// setULP attaches the "tls" upper-layer protocol; a socket that already has
// it (TX installed earlier, RX now) is fine.
func setULP(fd int) error {
	err := unix.SetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_ULP, "tls")
	if err == unix.EEXIST {
		if cur, gerr := unix.GetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_ULP); gerr == nil && cur == "tls" {
			return nil
		}
	}
	if err != nil {
		return &KTLSError{Step: "TCP_ULP", Err: err}
	}
	return nil
}

// setCryptoInfo fills the struct for cfg's cipher and passes it to the
// kernel; the key material in it is wiped afterwards.
func setCryptoInfo(fd, dir int, cfg *KTLSConfig, k *KTLSKeys) error {
	info := tlsCryptoInfo{version: cfg.Version, cipherType: uint16(cfg.Cipher)}
	var seq [8]byte
	putSeq(seq[:], k.Seq)
	switch cfg.Cipher {
	case KTLSAES128GCM:
		var ci tls12CryptoInfoAESGCM128
		ci.info, ci.recSeq = info, seq
		copy(ci.key[:], k.Key)
		fillGCMNonce(cfg.Version, ci.salt[:], ci.iv[:], k)
		defer wipe(unsafe.Pointer(&ci), unsafe.Sizeof(ci))
		return setsockoptPtr(fd, solTLS, dir, unsafe.Pointer(&ci), unsafe.Sizeof(ci))
	case KTLSAES256GCM:
		var ci tls12CryptoInfoAESGCM256
		ci.info, ci.recSeq = info, seq
		copy(ci.key[:], k.Key)
		fillGCMNonce(cfg.Version, ci.salt[:], ci.iv[:], k)
		defer wipe(unsafe.Pointer(&ci), unsafe.Sizeof(ci))
		return setsockoptPtr(fd, solTLS, dir, unsafe.Pointer(&ci), unsafe.Sizeof(ci))
	case KTLSChaCha20Poly1305:
		var ci tls12CryptoInfoChaCha20Poly1305
		ci.info, ci.recSeq = info, seq
		copy(ci.key[:], k.Key)
		copy(ci.iv[:], k.IV) // the nonce is IV xor seq in both versions
		defer wipe(unsafe.Pointer(&ci), unsafe.Sizeof(ci))
		return setsockoptPtr(fd, solTLS, dir, unsafe.Pointer(&ci), unsafe.Sizeof(ci))
	}
	return unix.EINVAL
}

// fillGCMNonce splits the AES-GCM nonce the kernel's way. TLS 1.3: the
// 12-byte IV is salt (4) || iv (8), and the kernel xors the sequence number
// into the last 8. TLS 1.2: salt is the 4-byte implicit IV, and iv is the
// first explicit nonce, which the kernel sends in each record and
// increments with the sequence number; starting it at the sequence number
// keeps it unique for the key (what crypto/tls sends too).
func fillGCMNonce(version uint16, salt, iv []byte, k *KTLSKeys) {
	if version == TLS13 {
		copy(salt, k.IV[:4])
		copy(iv, k.IV[4:])
		return
	}
	copy(salt, k.IV)
	putSeq(iv, k.Seq)
}

func putSeq(b []byte, seq uint64) {
	for i := 7; i >= 0; i-- {
		b[i] = byte(seq)
		seq >>= 8
	}
}

func setsockoptPtr(fd, level, opt int, p unsafe.Pointer, n uintptr) error {
	_, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(p), n, 0)
	if e != 0 {
		return e
	}
	return nil
}

func wipe(p unsafe.Pointer, n uintptr) {
	clear(unsafe.Slice((*byte)(p), n))
}

// RecvRecord reads from a socket with kernel TLS RX: one recvmsg that
// returns the plaintext of records of a single type and that type (the
// kernel never mixes types in one call; consecutive application-data
// records may be joined). A record larger than p is returned in pieces of
// the same type. n == 0 with a nil error is the end of the stream. flags
// go to recvmsg (MSG_DONTWAIT for a blocking fd, MSG_PEEK). On a socket
// without kernel TLS RX, recType is 0.
//
// A non-data record (an alert, a session ticket, a KeyUpdate) can only be
// read this way: read(2) of one fails with EIO and leaves it in place.
func RecvRecord(fd int, p []byte, flags int) (n int, recType uint8, err error) {
	var oob [32]byte // CMSG_SPACE(1) is 24 on 64-bit
	n, oobn, rflags, _, err := unix.Recvmsg(fd, p, oob[:], flags)
	if err != nil {
		return 0, 0, err
	}
	if rflags&unix.MSG_CTRUNC != 0 {
		return 0, 0, errors.New("ktls: recvmsg control message truncated")
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return 0, 0, err
	}
	for _, m := range msgs {
		if m.Header.Level == solTLS && m.Header.Type == tlsGetRecordType && len(m.Data) >= 1 {
			recType = m.Data[0]
		}
	}
	return n, recType, nil
}

// SendRecord sends p as a record of type recType on a socket with kernel
// TLS TX (an alert, a handshake message); application data needs no such
// call, write(2) is enough. More than 16 KiB becomes several records, and a
// non-blocking socket may take only part (n < len(p)). flags go to sendmsg.
func SendRecord(fd int, recType uint8, p []byte, flags int) (int, error) {
	if len(p) == 0 {
		// sendmsg on a stream socket with only a control message would
		// send x/sys/unix's dummy byte as the record.
		return 0, errors.New("ktls: empty record")
	}
	oob := make([]byte, unix.CmsgSpace(1))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = solTLS, tlsSetRecordType
	h.SetLen(unix.CmsgLen(1))
	oob[unix.CmsgLen(0)] = recType
	return unix.SendmsgN(fd, p, oob, nil, flags)
}

// KTLSAvailable says once per process whether this kernel has the TLS ULP:
// it attaches it to one end of a connected loopback TCP pair (which also
// makes the kernel load the module where it can). nil means available; the
// error otherwise is a *KTLSError (errors.Is ErrKTLSUnavailable when the
// module is missing) or the reason the probe could not run.
func KTLSAvailable() error {
	ktlsOnce.Do(func() { ktlsProbeErr = probeULP() })
	return ktlsProbeErr
}

var (
	ktlsOnce     sync.Once
	ktlsProbeErr error
)

func probeULP() error {
	a, b, err := loopbackPair()
	if err != nil {
		return fmt.Errorf("ktls probe: %w", err)
	}
	defer unix.Close(a)
	defer unix.Close(b)
	return setULP(a)
}

// loopbackPair returns two connected TCP sockets over 127.0.0.1.
func loopbackPair() (int, int, error) {
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return -1, -1, err
	}
	defer ln.Close()
	c, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		return -1, -1, err
	}
	defer c.Close()
	s, err := ln.AcceptTCP()
	if err != nil {
		return -1, -1, err
	}
	defer s.Close()
	// Detached fds of our own: the net package's stay in its poller.
	cf, err := dupConnFd(c)
	if err != nil {
		return -1, -1, err
	}
	sf, err := dupConnFd(s)
	if err != nil {
		unix.Close(cf)
		return -1, -1, err
	}
	return cf, sf, nil
}

func dupConnFd(c *net.TCPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(f uintptr) { fd, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	return fd, derr
}

// KTLSFeatures is the "ktls" part of goloop.features: whether the TLS ULP
// attaches here and, where it does, which version/cipher pairs the kernel
// takes for each direction (tried with dummy keys on throwaway loopback
// sockets), plus the kernel's counters.
type KTLSFeatures struct {
	Usable  bool                      `json:"usable"`
	Error   string                    `json:"error,omitempty"`
	Ciphers map[string]KTLSDirections `json:"ciphers,omitempty"` // "tls1.3/aes-128-gcm"
	Stat    map[string]uint64         `json:"tls_stat,omitempty"`
}

// KTLSDirections tells whether TLS_TX and TLS_RX were accepted.
type KTLSDirections struct {
	TX bool `json:"tx"`
	RX bool `json:"rx"`
}

func probeKTLSFeatures() KTLSFeatures {
	var f KTLSFeatures
	if err := KTLSAvailable(); err != nil {
		f.Error = err.Error()
		return f
	}
	f.Usable = true
	f.Ciphers = map[string]KTLSDirections{}
	for _, v := range []uint16{TLS12, TLS13} {
		for _, c := range []KTLSCipher{KTLSAES128GCM, KTLSAES256GCM, KTLSChaCha20Poly1305} {
			f.Ciphers[versionName(v)+"/"+c.String()] = probeCipher(v, c)
		}
	}
	f.Stat, _ = ReadTLSStat()
	return f
}

func probeCipher(v uint16, c KTLSCipher) KTLSDirections {
	var d KTLSDirections
	a, b, err := loopbackPair()
	if err != nil {
		return d
	}
	defer unix.Close(a)
	defer unix.Close(b)
	k := &KTLSKeys{Key: make([]byte, c.KeyLen()), IV: make([]byte, c.IVLen(v))}
	d.TX, _, _ = InstallKTLS(a, KTLSConfig{Version: v, Cipher: c, TX: k})
	_, d.RX, _ = InstallKTLS(a, KTLSConfig{Version: v, Cipher: c, RX: k})
	return d
}

// ReadTLSStat reads /proc/net/tls_stat (present while the tls module is
// loaded): TlsTxSw/TlsRxSw count sockets given software kernel TLS,
// TlsCurr* those open now, TlsDecryptError records that failed to decrypt.
func ReadTLSStat() (map[string]uint64, error) {
	b, err := os.ReadFile("/proc/net/tls_stat")
	if err != nil {
		return nil, err
	}
	m := map[string]uint64{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		if v, err := strconv.ParseUint(f[1], 10, 64); err == nil {
			m[f[0]] = v
		}
	}
	return m, nil
}

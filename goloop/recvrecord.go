package goloop

import (
	"encoding/binary"
	"errors"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kernel TLS on goloop's fds, what both backends share (record.go's
// OpRecvRecord and OpKTLS, docs/ktls.md): reading the handshake's records
// one at a time so that nothing past the last one leaves the socket,
// installing the keys in the output queue's order, sending a record of a
// given type, and the records a kernel-TLS receive meets that are not data.
// All of it is synchronous I/O inside Poll on a socket Go knows is ready
// (epoll readiness, or an io_uring POLL_ADD), never a request that reads
// in the kernel: only Go decides where a read stops.

// Record buffers: a pool apart from the receive buffers, which io_uring's
// provided-buffer ring owns (Go cannot take one out for a read of its own).
// Made on first use and grown a chunk at a time, since only connections in
// a handshake (or meeting a control record) hold one, and only until C
// gives it back; bounded so that a C that never gives them back gets
// -ENOBUFS rather than unbounded memory.
const (
	recordBufSize   = 20 << 10 // a whole record (5 + RecordMaxBody) fits
	recordChunk     = 16       // buffers per mmap
	recordMaxChunks = 64       // at most 1024 buffers, 20 MiB
	// ktlsCtrlRead is what a kernel-TLS receive reads a record that is not
	// data into: 16 KiB of plaintext and room to spare, so the kernel
	// returns any record whole (it cuts a longer one into pieces).
	ktlsCtrlRead = 16<<10 + 256
)

type recPool struct {
	chunks [][]byte
	free   []uint32 // ids without RecordBufBit
	out    []bool   // the buffer is with C (or holds a partial record)
}

func (p *recPool) get() (uint32, bool) {
	if len(p.free) == 0 {
		if len(p.chunks) == recordMaxChunks {
			return 0, false
		}
		mem, err := unix.Mmap(-1, 0, recordBufSize*recordChunk, unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return 0, false
		}
		base := uint32(len(p.chunks) * recordChunk)
		p.chunks = append(p.chunks, mem)
		for i := recordChunk - 1; i >= 0; i-- {
			p.free = append(p.free, base+uint32(i))
			p.out = append(p.out, false)
		}
	}
	id := p.free[len(p.free)-1]
	p.free = p.free[:len(p.free)-1]
	p.out[id] = true
	return id | RecordBufBit, true
}

// put takes a buffer back; ids that are not out (a double return,
// garbage) are ignored.
func (p *recPool) put(id uint32) {
	i := id &^ RecordBufBit
	if id&RecordBufBit == 0 || int(i) >= len(p.out) || !p.out[i] {
		return
	}
	p.out[i] = false
	p.free = append(p.free, i)
}

func (p *recPool) buf(id uint32) []byte {
	i := int(id &^ RecordBufBit)
	c, off := p.chunks[i/recordChunk], (i%recordChunk)*recordBufSize
	return c[off : off+recordBufSize : off+recordBufSize]
}

func (p *recPool) addr(id uint32) uintptr { return uintptr(unsafe.Pointer(&p.buf(id)[0])) }

func (p *recPool) close() {
	for _, c := range p.chunks {
		unix.Munmap(c)
	}
	p.chunks, p.free, p.out = nil, nil, nil
}

// ktlsFd is an fd's kernel-TLS state on either backend.
type ktlsFd struct {
	rec recordRead
	// tx, rx: OpKTLS installed that direction on this fd. A receive that
	// fails with EIO asks the socket itself (ktlsULP) when rx is not set:
	// an idle fd's state is forgotten between ops, and kernel TLS may have
	// been installed by someone else (OpenSSL's own kTLS).
	tx, rx bool
	// skip: bytes of a dropped NewSessionTicket message still to come at
	// the start of the next handshake records (a message longer than the
	// record it started in).
	skip int
	// soft: Go's record layer (softtls.go), on a soft fd only.
	soft *softTLS
}

// recordRead is OpRecvRecord's state on an fd: the op waiting for its
// answer (live), and the bytes of the record read so far, in a record
// buffer, which outlive a stop (record.go).
type recordRead struct {
	live   bool
	token  uint64
	hasBuf bool
	buf    uint32
	have   int
}

// held reports whether the fd must keep its state for this record read.
func (r *recordRead) held() bool { return r.live || r.hasBuf }

// drop forgets the record read, giving its buffer back: the fd is being
// closed, and nobody will read those bytes.
func (r *recordRead) drop(p *recPool) {
	if r.hasBuf {
		p.put(r.buf)
	}
	*r = recordRead{}
}

// takeOver answers a pending OpRecvRecord with -ECANCELED and hands the
// bytes read so far to a receive that replaces it (OpRecvStart, token),
// as its first chunk.
func (r *recordRead) takeOver(token uint64, p *recPool, complete func(Comp)) {
	if r.live {
		complete(Comp{Token: r.token, Kind: EvRecv, Res: -int32(unix.ECANCELED)})
		r.live = false
	}
	if r.hasBuf && r.have > 0 {
		complete(Comp{Token: token, Kind: EvRecv, Res: int32(r.have), Ptr: p.addr(r.buf), Buf: r.buf, Flags: FlagMore})
		r.hasBuf = false
	}
	r.drop(p)
}

// answer ends the live op with c.
func (r *recordRead) answer(c Comp, complete func(Comp)) {
	c.Token, c.Kind = r.token, EvRecv
	r.live = false
	complete(c)
}

// fail ends the live op with res, dropping what was read of the record.
func (r *recordRead) fail(res int32, p *recPool, complete func(Comp)) {
	tok := r.token
	r.drop(p)
	complete(Comp{Token: tok, Kind: EvRecv, Res: res})
}

// pump reads the live record as far as the socket allows, never past its
// end: the header first (at most 5 bytes), then exactly the body it
// names. It reports whether the op was answered; false: wait until fd is
// readable.
func (r *recordRead) pump(fd int32, p *recPool, complete func(Comp)) bool {
	if !r.live {
		return false
	}
	if !r.hasBuf {
		id, ok := p.get()
		if !ok {
			r.fail(-int32(unix.ENOBUFS), p, complete)
			return true
		}
		r.buf, r.hasBuf, r.have = id, true, 0
	}
	b := p.buf(r.buf)
	for {
		need := 5
		if r.have >= 5 {
			need = 5 + int(binary.BigEndian.Uint16(b[3:5]))
		}
		if r.have == need {
			r.hasBuf = false
			r.answer(Comp{Res: int32(r.have), Ptr: p.addr(r.buf), Buf: r.buf}, complete)
			return true
		}
		n, e := readSome(fd, b[r.have:need])
		switch {
		case e == unix.EAGAIN:
			return false
		case e != 0:
			r.fail(-int32(e), p, complete)
			return true
		case n == 0 && r.have == 0:
			r.fail(0, p, complete) // end of stream before the record
			return true
		case n == 0:
			// End of stream inside the record: what came is the answer;
			// the next OpRecvRecord reads the end of stream again.
			r.hasBuf = false
			r.answer(Comp{Res: int32(r.have), Ptr: p.addr(r.buf), Buf: r.buf}, complete)
			return true
		}
		r.have += n
		if r.have == 5 {
			typ, body := b[0], int(binary.BigEndian.Uint16(b[3:5]))
			if typ < RecordChangeCipherSpec || typ > 24 || body > RecordMaxBody {
				r.fail(-int32(unix.EBADMSG), p, complete)
				return true
			}
		}
	}
}

// readSome is one non-blocking read into p (a socket's recv; read(2) for
// anything else), again after EINTR.
func readSome(fd int32, p []byte) (int, unix.Errno) {
	ptr := uintptr(unsafe.Pointer(&p[0]))
	r, e := nonblocking(unix.SYS_RECVFROM, uintptr(fd), ptr, uintptr(len(p)), unix.MSG_DONTWAIT, 0, 0)
	if e == unix.ENOTSOCK {
		r, e = nonblocking(unix.SYS_READ, uintptr(fd), ptr, uintptr(len(p)), 0, 0, 0)
	}
	return int(r), e
}

// ktlsULP reports whether fd carries the "tls" upper-layer protocol.
func ktlsULP(fd int32) bool {
	s, err := unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_ULP)
	return err == nil && s == "tls"
}

// ktlsRecvEIO is what a stream receive does when the socket failed it with
// EIO: on a socket with kernel TLS RX that means the next record is not
// application data, and RecvRecord reads it with its type. It reports
// whether EIO meant that (false: an ordinary error, the caller's), and if
// so whether receiving is over (end of stream or an error, answered with
// one EvRecv on tok) or goes on (a ticket dropped, data delivered as a
// chunk, nothing there yet).
func ktlsRecvEIO(fd int32, k *ktlsFd, p *recPool, tok uint64, complete func(Comp)) (handled, over bool) {
	if !k.rx && !ktlsULP(fd) {
		return false, false
	}
	id, ok := p.get()
	if !ok {
		complete(Comp{Token: tok, Kind: EvRecv, Res: -int32(unix.ENOBUFS)})
		return true, true
	}
	b := p.buf(id)[:ktlsCtrlRead]
	var n int
	var typ uint8
	var err error
	for {
		n, typ, err = RecvRecord(int(fd), b, unix.MSG_DONTWAIT)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil || n == 0 || typ != RecordApplicationData && typ != 0 {
		p.put(id)
	}
	switch {
	case err == unix.EAGAIN:
		return true, false
	case err != nil:
		e, ok := err.(unix.Errno)
		if !ok {
			e = unix.EIO
		}
		complete(Comp{Token: tok, Kind: EvRecv, Res: -int32(e)})
		return true, true
	case n == 0:
		complete(Comp{Token: tok, Kind: EvRecv})
		return true, true
	case typ == RecordApplicationData || typ == 0:
		// Data that came in the same call (0: the socket has no kernel
		// RX after all, so these are plain bytes).
		complete(Comp{Token: tok, Kind: EvRecv, Res: int32(n), Ptr: p.addr(id), Buf: id, Flags: FlagMore})
		return true, false
	}
	res, aux := k.control(typ, b[:n])
	if res == 1 {
		ktlsStats.tickets.Add(1)
		return true, false
	}
	complete(Comp{Token: tok, Kind: EvRecv, Res: res, Aux: aux})
	return true, true
}

// control judges a record that is not data: 0 for the peer's close_notify
// (end of stream), 1 for a record of NewSessionTickets (dropped), else
// -EPROTO with Aux = type << 8 | alert description or handshake message
// type (0xff: too short to say).
func (k *ktlsFd) control(typ uint8, body []byte) (int32, uint32) {
	eproto := -int32(unix.EPROTO)
	switch typ {
	case RecordAlert:
		if len(body) < 2 {
			return eproto, uint32(typ)<<8 | 0xff
		}
		if body[1] == 0 { // close_notify, whatever level it claims
			return 0, 0
		}
		return eproto, uint32(typ)<<8 | uint32(body[1])
	case RecordHandshake:
		i := k.skip
		for i < len(body) {
			if len(body)-i < 4 {
				return eproto, uint32(typ)<<8 | 0xff
			}
			if body[i] != 4 {
				return eproto, uint32(typ)<<8 | uint32(body[i])
			}
			i += 4 + (int(body[i+1])<<16 | int(body[i+2])<<8 | int(body[i+3]))
		}
		k.skip = i - len(body) // a ticket that goes on in the next record
		if k.skip < 0 {
			k.skip = 0
		}
		if len(body) == 0 {
			return eproto, uint32(typ)<<8 | 0xff
		}
		return 1, 0
	}
	return eproto, uint32(typ) << 8
}

// ktlsStats counts what OpKTLS did in this process (runtime.stats).
var ktlsStats struct {
	tx, rx, failed, tickets atomic.Uint64
	soft                    atomic.Uint64 // installs of Go's record layer (softtls.go)
}

// runKTLS is OpKTLS's work, when the output queue reaches it: derive the
// keys from the params C holds at ptr, install them (in the kernel, or in
// Go's record layer: softtls.go), count, and answer.
func (k *ktlsFd) run(fd int32, token uint64, ptr uintptr, rp *recPool) Comp {
	res, aux := k.install(fd, ptr, rp)
	switch {
	case aux&KTLSSoftware != 0:
		ktlsStats.soft.Add(1)
	default:
		if aux&KTLSTX != 0 {
			k.tx = true
			ktlsStats.tx.Add(1)
		}
		if aux&KTLSRX != 0 {
			k.rx = true
			ktlsStats.rx.Add(1)
		}
	}
	if res < 0 {
		ktlsStats.failed.Add(1)
	}
	return Comp{Token: token, Kind: EvKTLS, Res: res, Aux: aux}
}

func (k *ktlsFd) install(fd int32, ptr uintptr, rp *recPool) (int32, uint32) {
	if ptr == 0 {
		return -int32(unix.EINVAL), 0
	}
	p := *(*KTLSParams)(unsafe.Pointer(ptr)) // C's memory, copied once
	defer wipe(unsafe.Pointer(&p), unsafe.Sizeof(p))
	if k.soft != nil {
		return -int32(unix.EBUSY), 0 // as the kernel answers a direction installed twice
	}
	cfg, keys, e := p.config()
	defer func() {
		for _, b := range keys {
			clear(b)
		}
	}()
	if e != 0 {
		return -int32(e), 0
	}
	soft := p.Flags&(KTLSSoft|KTLSSoftOnly) != 0
	if p.Flags&^(KTLSSoft|KTLSSoftOnly) != 0 || soft && p.RX != 1 {
		return -int32(unix.EINVAL), 0
	}
	if p.Flags&KTLSSoftOnly == 0 && (!soft || isTCP(fd)) {
		tx, rx, err := InstallKTLS(int(fd), cfg)
		var aux uint32
		if tx {
			aux |= KTLSTX
		}
		if rx {
			aux |= KTLSRX
		}
		if err == nil {
			return 0, aux
		}
		e := ktlsErrno(err)
		if !soft || aux != 0 {
			return -int32(e), aux
		}
		// Nothing went in, whatever the kernel's reason (no tls module,
		// the cipher, or -ENOTCONN for a socket whose peer's FIN came
		// before the keys: the kernel takes only ESTABLISHED ones). The
		// socket still passes bytes unchanged, and Go's record layer
		// takes over.
	}
	s, e := newSoftTLS(&cfg)
	if e != 0 {
		return -int32(e), 0
	}
	s.adopt(&k.rec, rp)
	k.soft = s
	return 0, KTLSTX | KTLSRX | KTLSSoftware
}

// isTCP reports whether fd is a TCP socket (kernel TLS takes no other).
func isTCP(fd int32) bool {
	v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL)
	return err == nil && v == unix.IPPROTO_TCP
}

// freeSoft ends the fd's soft record layer, if it has one (a close, an
// abort, the loop's close).
func (k *ktlsFd) freeSoft() {
	if k.soft != nil {
		k.soft.free()
		k.soft = nil
	}
}

// ktlsErrno is EvKTLS's errno for InstallKTLS's error.
func ktlsErrno(err error) unix.Errno {
	var e unix.Errno
	switch {
	case errors.Is(err, ErrKTLSUnavailable):
		return unix.ENOENT
	case errors.Is(err, ErrKTLSUnsupported):
		return unix.EOPNOTSUPP
	case errors.Is(err, ErrKTLSBadConfig):
		return unix.EINVAL
	case errors.As(err, &e):
		return e
	}
	return unix.EIO
}

// config derives the record keys the params name; keys lists every key
// and IV derived, for the caller to wipe.
func (p *KTLSParams) config() (cfg KTLSConfig, keys [][]byte, errno unix.Errno) {
	if p.Server > 1 || p.RX > 1 {
		return cfg, nil, unix.EINVAL
	}
	suite, ok := KTLSSuiteFor(p.Version, p.Suite)
	if !ok {
		return cfg, nil, unix.EINVAL // an unknown version, or a suite kernel TLS cannot carry
	}
	var ck, civ, sk, siv []byte
	var err error
	if p.Version == TLS13 {
		n := int(p.SecretLen)
		if n != suite.Hash.Size() || n > len(p.ClientSecret) {
			return cfg, nil, unix.EINVAL
		}
		if ck, civ, err = TLS13TrafficKeys(suite, p.ClientSecret[:n]); err == nil {
			sk, siv, err = TLS13TrafficKeys(suite, p.ServerSecret[:n])
		}
	} else {
		ck, civ, sk, siv, err = TLS12KeyBlock(suite, p.Master[:], p.ClientRandom[:], p.ServerRandom[:])
	}
	keys = [][]byte{ck, civ, sk, siv}
	if err != nil {
		return cfg, keys, unix.EINVAL
	}
	mine, peer := &KTLSKeys{Key: ck, IV: civ}, &KTLSKeys{Key: sk, IV: siv}
	if p.Server == 1 {
		mine, peer = peer, mine
	}
	mine.Seq, peer.Seq = p.TXSeq, p.RXSeq
	cfg = KTLSConfig{Version: p.Version, Cipher: suite.Cipher, TX: mine}
	if p.RX == 1 {
		cfg.RX = peer
	}
	return cfg, keys, 0
}

// sendRecordSome sends a queued OpSend with a record type (record.go) as
// one record: done=false when the socket is full (wait for writability).
// A record the socket took only in part (it does not happen to a 2-byte
// alert) goes on as a second record of the same type.
func sendRecordSome(fd int32, q *queued) (done bool, errno unix.Errno) {
	if q.n == 0 {
		return true, unix.EINVAL
	}
	for q.off < q.n {
		p := unsafe.Slice((*byte)(unsafe.Pointer(q.ptr+uintptr(q.off))), q.n-q.off)
		n, err := SendRecord(int(fd), q.rectype, p, unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT)
		switch err {
		case nil:
			q.off += n
		case unix.EINTR:
		case unix.EAGAIN:
			return false, 0
		default:
			e, ok := err.(unix.Errno)
			if !ok {
				e = unix.EIO
			}
			return true, e
		}
	}
	return true, 0
}

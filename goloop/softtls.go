package goloop

import (
	"encoding/binary"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Soft TLS: Go's own record layer behind OpKTLS, for a kernel without the
// tls module (docs/softtls.md). Same op, same contract: after EvKTLS
// (Aux KTLSTX|KTLSRX|KTLSSoftware) C's sends are plaintext and its
// receives give plaintext, control records are judged as a kernel-TLS
// receive judges them (ktlsFd.control), and nothing but the flag tells C
// the difference. Both backends do the I/O themselves on readiness (an
// epoll event, an io_uring POLL_ADD): read(2) of ciphertext into the fd's
// reassembly buffer, records opened into a record buffer C gets as an
// EvRecv chunk; plaintext sends sealed into the fd's output buffer, which
// is written with send(2); a send's EvSend comes once the records that
// carry its last byte are written, so C's write-buffer accounting holds.

// softBufSize is a soft fd's reassembly or output buffer: four records of
// 2^14 bytes and their expansion. Lent from softBufs only while it holds
// bytes (a partial record read, sealed output not yet written), so an
// idle soft fd holds its ciphers and nothing else.
const softBufSize = 4*(recordMaxCipher+5) + 64

// softReadsPerEvent bounds the reads one readiness event makes on a soft
// fd, so a fast sender cannot keep the loop on one fd; level-triggered
// readiness (epoll) or a re-armed POLL_ADD brings the rest.
const softReadsPerEvent = 4

var softBufs = sync.Pool{New: func() any { return new([softBufSize]byte) }}

// softTLS is a soft fd's record layer; ktlsFd.soft points to it (nil on
// every other fd). Owned by the backend's loop goroutine; freed (keys
// wiped, buffers back in the pool) when the fd closes or the loop does.
type softTLS struct {
	tx, rx *recordCipher

	// in: ciphertext read and not yet opened, in[inOff:inLen] (between
	// events: at most one partial record).
	in           *[softBufSize]byte
	inOff, inLen int
	// rxEnd: the receive met its end (close_notify, an error): every later
	// receive ends the same way at once (rxRes, rxAux), as the kernel's
	// receive keeps answering.
	rxEnd bool
	rxRes int32
	rxAux uint32

	// out: sealed records out[outSent:outLen] not yet written. ends: for
	// each queued send whose bytes are all sealed, oldest first, where in
	// out its last record ends and its answer (the entries are the head of
	// the fd's output queue, in order).
	out             *[softBufSize]byte
	outSent, outLen int
	ends            []softEnd
	endsHead        int // ends[:endsHead] are answered
	// txErr: a write failed or sealing cannot go on; every later send
	// ends with it.
	txErr unix.Errno
}

type softEnd struct {
	off int
	res int32
}

// newSoftTLS is the record layer for cfg's two directions.
func newSoftTLS(cfg *KTLSConfig) (*softTLS, unix.Errno) {
	if cfg.TX == nil || cfg.RX == nil {
		return nil, unix.EINVAL
	}
	tx, err := newRecordCipher(cfg.Version, cfg.Cipher, cfg.TX)
	if err != nil {
		return nil, unix.EINVAL
	}
	rx, err := newRecordCipher(cfg.Version, cfg.Cipher, cfg.RX)
	if err != nil {
		return nil, unix.EINVAL
	}
	return &softTLS{tx: tx, rx: rx}, 0
}

// adopt takes the bytes of a record OpRecvRecord had read in part when the
// keys went in: they start the first protected record, so they are the
// reassembly buffer's first bytes (the kernel would have read them from
// the socket).
func (s *softTLS) adopt(r *recordRead, p *recPool) {
	if r.hasBuf && r.have > 0 && !r.live {
		s.in = softBufs.Get().(*[softBufSize]byte)
		s.inOff, s.inLen = 0, copy(s.in[:], p.buf(r.buf)[:r.have])
		r.drop(p)
	}
}

// free wipes the keys and gives the buffers back: the fd is closed (or its
// loop is), and no I/O will touch them again. Sealed output not written is
// dropped, as the kernel drops a closed socket's unsent bytes.
func (s *softTLS) free() {
	for _, c := range []*recordCipher{s.tx, s.rx} {
		if c != nil {
			// crypto/cipher keeps its expanded key inside the AEAD; dropping
			// the last reference is all Go offers. The IVs are ours to wipe.
			clear(c.iv[:])
			clear(c.nonce[:])
			c.aead = nil
		}
	}
	s.tx, s.rx = nil, nil
	s.releaseIn()
	s.releaseOut()
	s.ends = nil
}

func (s *softTLS) releaseIn() {
	if s.in != nil {
		softBufs.Put(s.in)
		s.in = nil
	}
	s.inOff, s.inLen = 0, 0
}

func (s *softTLS) releaseOut() {
	if s.out != nil {
		softBufs.Put(s.out)
		s.out = nil
	}
	s.outSent, s.outLen = 0, 0
}

// recvErrno maps a record that does not open to the kernel's answer.
func recvErrno(err error) int32 {
	switch err {
	case errRecordOverflow:
		return -int32(unix.EMSGSIZE)
	case errRecordSeq:
		return -int32(unix.EOVERFLOW)
	}
	return -int32(unix.EBADMSG)
}

// recv is a readable soft fd's receive (tok is the live OpRecvStart):
// read ciphertext, open every whole record, deliver the data in record
// buffers as EvRecv chunks (FlagMore), judge the rest. It reports whether
// receiving is over (one EvRecv without FlagMore was sent: end of stream
// or an error); false: wait for readability again.
func (s *softTLS) recv(fd int32, k *ktlsFd, p *recPool, tok uint64, complete func(Comp)) bool {
	if s.rxEnd {
		complete(Comp{Token: tok, Kind: EvRecv, Res: s.rxRes, Aux: s.rxAux})
		return true
	}
	var id uint32 // the record buffer being filled (0: none)
	fill := 0
	flush := func() {
		if id != 0 && fill > 0 {
			complete(Comp{Token: tok, Kind: EvRecv, Res: int32(fill), Ptr: p.addr(id), Buf: id, Flags: FlagMore})
			id, fill = 0, 0
		}
	}
	end := func(res int32, aux uint32) bool {
		flush()
		if id != 0 {
			p.put(id)
		}
		s.rxEnd, s.rxRes, s.rxAux = true, res, aux
		s.releaseIn()
		complete(Comp{Token: tok, Kind: EvRecv, Res: res, Aux: aux})
		return true
	}
	drained := false
	for reads := 0; ; {
		// Every whole record in the buffer first.
		for s.in != nil && s.inLen-s.inOff >= 5 {
			b := s.in[s.inOff:s.inLen]
			body := int(binary.BigEndian.Uint16(b[3:5]))
			if body > recordMaxCipher {
				return end(-int32(unix.EMSGSIZE), 0)
			}
			if len(b) < 5+body {
				break
			}
			rec := b[:5+body]
			if id != 0 && recordBufSize-fill < body {
				flush()
			}
			if id == 0 {
				var ok bool
				if id, ok = p.get(); !ok {
					id = 0
					return end(-int32(unix.ENOBUFS), 0)
				}
			}
			dst := p.buf(id)[fill:fill]
			typ, plain, err := s.rx.open(dst, rec)
			if err != nil {
				return end(recvErrno(err), 0)
			}
			s.inOff += 5 + body
			if typ == RecordApplicationData {
				fill += len(plain)
				continue
			}
			res, aux := k.control(typ, plain)
			if res == 1 {
				ktlsStats.tickets.Add(1)
				continue
			}
			return end(res, aux)
		}
		if id != 0 && fill == 0 {
			p.put(id)
			id = 0
		}
		if reads == softReadsPerEvent || drained {
			break
		}
		// Room for more: the partial record moves to the front.
		if s.in == nil {
			s.in = softBufs.Get().(*[softBufSize]byte)
			s.inOff, s.inLen = 0, 0
		} else if s.inOff > 0 {
			s.inLen = copy(s.in[:], s.in[s.inOff:s.inLen])
			s.inOff = 0
		}
		n, e := readSome(fd, s.in[s.inLen:])
		reads++
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
		case e != 0:
			return end(-int32(e), 0)
		case n == 0 && s.inLen > 0:
			// End of stream inside a record: a truncation, not an end.
			return end(-int32(unix.ECONNRESET), 0)
		case n == 0:
			return end(0, 0) // no close_notify: C judges (as kernel TLS gives it)
		default:
			// A short read took all there was: readiness says when there
			// is more, without a read that finds nothing.
			drained = n < len(s.in)-s.inLen
			s.inLen += n
			continue
		}
		break
	}
	flush()
	if id != 0 {
		p.put(id)
	}
	if s.inLen == s.inOff {
		s.releaseIn()
	}
	return false
}

// sendable: a queue entry the soft record layer seals (plain data, or a
// record of its own type).
func sendable(q *queued) bool { return q.op == OpSend }

// send works through the sends at the head of q (the fd's output queue):
// writes what is sealed, seals more once that is out, and answers each
// send once its last record is written. It reports how many entries at
// the head are answered (the caller drops them) and whether the socket is
// full (wait for writability); blocked false with an entry left means the
// head is not a send (a shutdown, a close, OpKTLS: the caller's).
func (s *softTLS) send(fd int32, q []queued, complete func(Comp)) (done int, blocked bool) {
	for {
		for s.endsHead < len(s.ends) && s.ends[s.endsHead].off <= s.outSent {
			complete(Comp{Token: q[done].token, Kind: EvSend, Res: s.ends[s.endsHead].res})
			done++
			s.endsHead++
		}
		if s.outSent < s.outLen {
			b := s.out[s.outSent:s.outLen]
			r, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
				unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT, 0, 0)
			if f := faultAt(faultSend); f != 0 && e == 0 {
				e, r = f, 0
			}
			switch e {
			case 0:
				s.outSent += int(r)
				continue
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return done, true
			}
			// The record stream is broken: the sends it carried end with
			// the error, and so does every later one.
			s.txErr = e
			for ; s.endsHead < len(s.ends); s.endsHead++ {
				complete(Comp{Token: q[done].token, Kind: EvSend, Res: -int32(e)})
				done++
			}
			if done < len(q) && q[done].off > 0 && sendable(&q[done]) {
				complete(Comp{Token: q[done].token, Kind: EvSend, Res: -int32(e)})
				done++
			}
		}
		s.ends, s.endsHead = s.ends[:0], 0
		s.releaseOut()
		if done == len(q) || !sendable(&q[done]) {
			return done, false
		}
		if s.txErr != 0 {
			complete(Comp{Token: q[done].token, Kind: EvSend, Res: -int32(s.txErr)})
			done++
			continue
		}
		s.seal(q[done:])
	}
}

// seal fills the output buffer with records for the sends at the head of
// q (none answered yet, nothing of theirs written): consecutive plain
// sends share records of up to 2^14 bytes; a record-typed send is one
// record (more if longer than 2^14) of its own. q[i].off counts the bytes
// of each send sealed so far.
func (s *softTLS) seal(q []queued) {
	s.out = softBufs.Get().(*[softBufSize]byte)
	buf := s.out[:0]
	h, over := s.tx.headerLen(), s.tx.overhead()
	fail := func(err error) {
		s.txErr = unix.EOVERFLOW
		if err == errRecordOverflow {
			s.txErr = unix.EMSGSIZE
		}
	}
	i := 0
	for i < len(q) && sendable(&q[i]) {
		room := softBufSize - len(buf) - h - over
		if room <= 0 || room < recordMaxPlain && len(buf) > 0 && room < q[i].n-q[i].off {
			break // a short record only for what fits whole
		}
		room = min(room, recordMaxPlain)
		start := len(buf)
		buf = buf[:start+h]
		e := &q[i]
		if e.rectype != 0 {
			if e.n == 0 {
				buf = buf[:start]
				s.ends = append(s.ends, softEnd{off: start, res: -int32(unix.EINVAL)})
				i++
				continue
			}
			k := min(room, e.n-e.off)
			buf = append(buf, unsafe.Slice((*byte)(unsafe.Pointer(e.ptr+uintptr(e.off))), k)...)
			var err error
			if buf, err = s.tx.sealAt(buf, start, e.rectype); err != nil {
				buf = buf[:start] // never write plaintext
				fail(err)
				break
			}
			if e.off += k; e.off == e.n {
				s.ends = append(s.ends, softEnd{off: len(buf), res: int32(e.n)})
				i++
			}
			continue
		}
		// Plain sends, as many as fit one record.
		j := i
		for j < len(q) && sendable(&q[j]) && q[j].rectype == 0 && len(buf)-start-h < room {
			e := &q[j]
			k := min(room-(len(buf)-start-h), e.n-e.off)
			if k > 0 {
				buf = append(buf, unsafe.Slice((*byte)(unsafe.Pointer(e.ptr+uintptr(e.off))), k)...)
				e.off += k
			}
			if e.off < e.n {
				break
			}
			j++
		}
		if len(buf)-start-h > 0 {
			var err error
			if buf, err = s.tx.sealAt(buf, start, RecordApplicationData); err != nil {
				buf = buf[:start] // never write plaintext
				fail(err)
				break
			}
		} else {
			buf = buf[:start] // zero-length sends only: no empty record
		}
		for ; i < j; i++ {
			s.ends = append(s.ends, softEnd{off: len(buf), res: int32(q[i].n)})
		}
		if j < len(q) && sendable(&q[j]) && q[j].rectype == 0 && q[j].off < q[j].n {
			continue // the same send goes on in the next record
		}
	}
	s.outSent, s.outLen = 0, len(buf)
}

// failTX breaks the record stream (the backend answered the sends itself,
// or the fd cannot be written): what is sealed is dropped, and every
// later send ends with e.
func (s *softTLS) failTX(e unix.Errno) {
	if s.txErr == 0 {
		s.txErr = e
	}
	s.ends, s.endsHead = s.ends[:0], 0
	s.releaseOut()
}

// softEnded answers a receive started on a soft fd whose receiving already
// ended (close_notify, an error) with that end again, at once: the socket
// may never be readable again. It reports whether it did.
func (k *ktlsFd) softEnded(tok uint64, complete func(Comp)) bool {
	s := k.soft
	if s == nil || !s.rxEnd {
		return false
	}
	complete(Comp{Token: tok, Kind: EvRecv, Res: s.rxRes, Aux: s.rxAux})
	return true
}

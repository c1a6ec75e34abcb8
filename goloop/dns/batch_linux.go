package dns

import (
	"encoding/binary"
	"os"
	"syscall"
	"unsafe"

	mdns "github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// sendmmsg and recvmmsg on the pool's connected UDP sockets, through
// their RawConn so that Go's poller still does the waiting: one syscall
// for the questions of a try, one for every answer already queued.

// sendBatch holds the packed questions of one try and their headers.
type sendBatch struct {
	pkts [][]byte
	hs   []unix.Mmsghdr
	iov  []unix.Iovec
	fn   func(fd uintptr) bool // s.write, made once
	n    int
	done int
	err  error

	pbuf [maxBatch][]byte
	hbuf [maxBatch]unix.Mmsghdr
	ibuf [maxBatch]unix.Iovec
	mem  [maxBatch][maxQueryWire]byte
}

func (s *sendBatch) init() {
	s.pkts, s.hs, s.iov = s.pbuf[:0], s.hbuf[:0], s.ibuf[:0]
	s.fn = s.write
}

// pack puts question i (with id 0 until setID) in place.
func (s *sendBatch) pack(i int, name string, qtype uint16, edns bool) error {
	for len(s.pkts) <= i {
		s.pkts = append(s.pkts, nil)
		s.hs = append(s.hs, unix.Mmsghdr{})
		s.iov = append(s.iov, unix.Iovec{})
	}
	var dst []byte
	if i < maxBatch {
		dst = s.mem[i][:0]
	} else {
		dst = make([]byte, 0, maxQueryWire)
	}
	p, err := packQuery(dst, 0, name, qtype, edns)
	s.pkts[i] = p
	return err
}

func (s *sendBatch) setID(i int, id uint16) { binary.BigEndian.PutUint16(s.pkts[i], id) }
func (s *sendBatch) id(i int) uint16        { return binary.BigEndian.Uint16(s.pkts[i]) }

// send puts the first n questions on the wire and says how many went.
func (s *sendBatch) send(rc syscall.RawConn, n int) (int, error) {
	for i := 0; i < n; i++ {
		s.iov[i].Base = &s.pkts[i][0]
		s.iov[i].SetLen(len(s.pkts[i]))
		s.hs[i] = unix.Mmsghdr{}
		s.hs[i].Hdr.Iov = &s.iov[i]
		s.hs[i].Hdr.SetIovlen(1)
	}
	s.n, s.done, s.err = n, 0, nil
	if err := rc.Write(s.fn); err != nil {
		return s.done, err
	}
	return s.done, s.err
}

func (s *sendBatch) write(fd uintptr) bool {
	for s.done < s.n {
		r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&s.hs[s.done])),
			uintptr(s.n-s.done), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			s.done += int(r)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			s.err = os.NewSyscallError("write", e)
			return true
		}
	}
	return true
}

const (
	readSlots = 16
	// slotSize bounds one answer. We advertise 1232 bytes with EDNS0 and
	// 512 without; a server sending more than fits is answered as if it
	// had set TC: the question is asked again over TCP.
	slotSize = 4096
)

// readBatch receives up to readSlots answers per syscall.
type readBatch struct {
	buf []byte
	hs  [readSlots]unix.Mmsghdr
	iov [readSlots]unix.Iovec
	fn  func(fd uintptr) bool
	n   int
	err error

	names nameTable
}

func newReadBatch() *readBatch {
	rb := &readBatch{buf: make([]byte, readSlots*slotSize)}
	for i := range rb.hs {
		rb.iov[i].Base = &rb.buf[i*slotSize]
		rb.iov[i].SetLen(slotSize)
		rb.hs[i].Hdr.Iov = &rb.iov[i]
		rb.hs[i].Hdr.SetIovlen(1)
	}
	rb.fn = rb.read
	return rb
}

// recv waits for at least one datagram and takes all that are queued, up
// to readSlots.
func (rb *readBatch) recv(rc syscall.RawConn) (int, error) {
	rb.n, rb.err = 0, nil
	if err := rc.Read(rb.fn); err != nil {
		return 0, err
	}
	return rb.n, rb.err
}

func (rb *readBatch) read(fd uintptr) bool {
	for {
		r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&rb.hs[0])),
			readSlots, unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			rb.n = int(r)
			return true
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			rb.err = os.NewSyscallError("read", e)
			return true
		}
	}
}

// answer is datagram i parsed, or nil when it is no answer to one
// question.
func (rb *readBatch) answer(i int) *mdns.Msg {
	h := &rb.hs[i]
	data := rb.buf[i*slotSize : i*slotSize+int(h.Len)]
	if h.Hdr.Flags&unix.MSG_TRUNC != 0 {
		return oversized(data)
	}
	m, err := unpackAnswer(data, &rb.names)
	if err != nil || len(m.Question) != 1 {
		return nil
	}
	return m
}

// oversized stands for an answer too big for its slot: its header and
// question, marked truncated.
func oversized(data []byte) *mdns.Msg {
	if len(data) < hdrLen {
		return nil
	}
	name, off, err := mdns.UnpackDomainName(data, hdrLen)
	if err != nil || off+4 > len(data) {
		return nil
	}
	m := new(mdns.Msg)
	m.Id = binary.BigEndian.Uint16(data)
	m.Response, m.Truncated = true, true
	m.Question = []mdns.Question{{Name: name, Qtype: binary.BigEndian.Uint16(data[off:]),
		Qclass: binary.BigEndian.Uint16(data[off+2:])}}
	return m
}

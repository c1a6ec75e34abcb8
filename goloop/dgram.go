package goloop

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Datagram sockets (UDP, Unix SOCK_DGRAM): what both backends share.
//
// A datagram must arrive whole, with the address it came from, and one
// 64 KiB stream buffer cannot hold the largest (a UDP datagram of 65507
// bytes plus its address, a Unix datagram of 200 KiB). So datagrams have
// their own pool, made on first use: buffers of DgramMax bytes (asyncio's
// recvfrom size) after a header. A buffer's layout is io_uring's multishot
// recvmsg layout, which epoll reproduces:
//
//	[0, 16)                  struct io_uring_recvmsg_out (io_uring only)
//	[16, 16+DgramNameCap)    the source address (a sockaddr)
//	[dgramHead, ...)         the payload, at most DgramMax bytes
//
// EvDgram's Ptr is the payload; the address lies DgramNameCap bytes before
// it. Datagram buffer ids carry DgramBufBit, so OpBufReturn knows the pool.

const (
	// DgramNameCap is the room for a source address before the payload.
	DgramNameCap = 128
	// DgramMax is the longest datagram delivered whole.
	DgramMax = 256 << 10
	// DgramBufBit marks a datagram pool buffer id in EvDgram.Buf and OpBufReturn.
	DgramBufBit uint32 = 1 << 31

	dgramOutHdr   = 16 // struct io_uring_recvmsg_out
	dgramHead     = dgramOutHdr + DgramNameCap
	dgramBufSize  = dgramHead + DgramMax
	dgramBufCount = 64
	dgramGroup    = 1 // the datagram pool's provided-buffer group (io_uring)
	// dgramBurst bounds the datagrams epoll reads per readiness, so one busy
	// socket cannot starve the others.
	dgramBurst = 64
)

// sendtoBlock is gl_sendto (pybind/goloop.h): what OpSendTo's Ptr points
// to, in C memory that C keeps alive until the send's EvSend.
type sendtoBlock struct {
	data    uintptr
	len     uint32
	namelen uint32
	name    [DgramNameCap]byte
}

var _ [unsafe.Sizeof(sendtoBlock{}) - 16 - DgramNameCap]byte
var _ [16 + DgramNameCap - unsafe.Sizeof(sendtoBlock{})]byte

func sendtoAt(p uintptr) *sendtoBlock { return (*sendtoBlock)(unsafe.Pointer(p)) }

// sendtoName is the address of a sendto block (0 and 0: none).
func (s *sendtoBlock) sendtoName() (uintptr, uint32) {
	n := s.namelen
	if n == 0 {
		return 0, 0
	}
	if n > DgramNameCap {
		n = DgramNameCap
	}
	return uintptr(unsafe.Pointer(&s.name[0])), n
}

// dgramFatal tells the receive errors after which receiving cannot go on
// (the fd is no datagram socket, or not one at all) from those that concern
// one datagram or one ICMP error, which asyncio reports with
// error_received and then reads on.
func dgramFatal(e unix.Errno) bool {
	switch e {
	case unix.EBADF, unix.ENOTSOCK, unix.EINVAL, unix.EOPNOTSUPP, unix.EFAULT, unix.ENOMEM:
		return true
	}
	return false
}

// sendDgram sends one queued datagram at once, for a readiness backend:
// done=false when the socket would block (wait for EPOLLOUT), else done with
// errno 0 or the datagram's own error.
func sendDgram(fd int32, q *queued) (done bool, errno unix.Errno) {
	blk := sendtoAt(q.ptr)
	name, namelen := blk.sendtoName()
	for {
		_, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), blk.data, uintptr(q.n),
			unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT, name, uintptr(namelen))
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false, 0
		case 0:
			q.off = q.n
			return true, 0
		}
		return true, e
	}
}

package goloop

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The io_uring backend's datagrams: a multishot recvmsg that takes buffers
// from the datagram pool's own provided-buffer ring (group dgramGroup), and
// sends in the order of the fd's output queue, each at once (sendNow).

type urDgram struct {
	pool    *bufPool
	pbuf    *pbufRing
	starved []*urFd // receives ended by an empty ring, re-armed when buffers come back
	// recvHdr is the multishot recvmsg's template: room for the source
	// address, no control data. The kernel reads it when the request starts.
	recvHdr unix.Msghdr
}

// recvmsgOut is struct io_uring_recvmsg_out, at the start of each buffer a
// multishot recvmsg fills.
type recvmsgOut struct {
	namelen, controllen, payloadlen, flags uint32
}

func (b *uringBackend) dgramInit() error {
	if b.dg != nil {
		return nil
	}
	pool, err := newBufPool(dgramBufSize, dgramBufCount)
	if err != nil {
		return err
	}
	pbuf, err := newPbufRingGroup(b.r.fd, pool, dgramGroup, dgramBufCount)
	if err != nil {
		pool.close()
		return err
	}
	b.dg = &urDgram{pool: pool, pbuf: pbuf}
	b.dg.recvHdr.Namelen = DgramNameCap
	return nil
}

func (b *uringBackend) dgramRecvStart(f *urFd, s *Sub) {
	if err := b.dgramInit(); err != nil {
		b.complete(Comp{Token: s.Token, Kind: EvDgram, Res: -int32(unix.ENOMEM)})
		return
	}
	f.dgram = true
	f.recvTok, f.recvOn = s.Token, true
	b.armRecvMsg(f)
}

func (b *uringBackend) armRecvMsg(f *urFd) {
	if !f.recvOn || f.recv != reqNone || f.closing() || b.dg == nil {
		return
	}
	if !b.dg.pbuf.available() {
		// A recvmsg armed now would end at once with ENOBUFS.
		f.recv = reqStarved
		b.dg.starved = append(b.dg.starved, f)
		return
	}
	f.recvIdx = b.r.sqLocal
	s := b.fdSQE(f, iouOpRecvmsg, kRecvMsg)
	s.addr = uint64(uintptr(unsafe.Pointer(&b.dg.recvHdr)))
	s.len = 1
	s.ioprio = iouRecvMultishot
	s.flags = iosqeBufferSelect
	s.bufIndex = dgramGroup
	f.recvKind = kRecvMsg
	f.recv = reqArmed
}

func (b *uringBackend) onRecvMsg(f *urFd, c *uringCQE) {
	if c.flags&cqeFMore == 0 {
		f.recv = reqNone
	}
	switch {
	case c.flags&cqeFBuffer != 0:
		bid := uint16(c.flags >> 16)
		if f.closing() || c.res < dgramHead {
			// Nobody will read it (the fd is closing), or it holds no
			// datagram. One received after OpRecvStop still goes to C,
			// which holds it: the kernel had it, as the socket would.
			b.dg.pbuf.recycle(bid)
			break
		}
		b.dg.pbuf.taken(bid)
		out := (*recvmsgOut)(unsafe.Pointer(&b.dg.pool.buf(uint32(bid))[0]))
		n, namelen := out.payloadlen, out.namelen
		if n > DgramMax {
			n = DgramMax
		}
		if namelen > DgramNameCap {
			namelen = DgramNameCap
		}
		b.complete(Comp{Token: f.recvTok, Kind: EvDgram, Res: int32(n),
			Ptr: b.dg.pool.addr(uint32(bid)) + dgramHead, Buf: uint32(bid) | DgramBufBit,
			Aux: namelen, Flags: FlagMore})
	case f.closing() || !f.recvOn:
	case c.res >= 0, c.res == -int32(unix.ENOBUFS), c.res == -int32(unix.ECANCELED),
		c.res == -int32(unix.EINTR), c.res == -int32(unix.EAGAIN):
		// Ours: the re-arm below (or starving until buffers come back).
	case dgramFatal(unix.Errno(-c.res)):
		f.recvOn = false
		b.complete(Comp{Token: f.recvTok, Kind: EvDgram, Res: c.res})
	default:
		// An error for this socket (ECONNREFUSED from an ICMP message): the
		// multishot request ends with it; report it and receive on.
		b.complete(Comp{Token: f.recvTok, Kind: EvDgram, Res: c.res, Flags: FlagMore})
	}
	if f.recv == reqNone {
		b.armRecvMsg(f)
	}
}

func (b *uringBackend) dgramBufReturn(id uint32) {
	if b.dg == nil || !b.dg.pbuf.give(id&^DgramBufBit) || len(b.dg.starved) == 0 {
		return
	}
	st := b.dg.starved
	b.dg.starved = nil
	for _, f := range st {
		if f.recv == reqStarved {
			f.recv = reqNone
		}
		if b.slots[f.slot] == f {
			b.armRecvMsg(f)
		}
	}
}

// dgramOrphan gives back the buffer of a datagram nobody waits for.
func (b *uringBackend) dgramOrphan(c *uringCQE) {
	if c.flags&cqeFBuffer != 0 && b.dg != nil {
		b.dg.pbuf.recycle(uint16(c.flags >> 16))
	}
}

// A datagram is sent from the head of f's queue with one sendto, at once
// (uring_fd.go's sendNow with sendDgram), as the epoll backend does: it
// leaves whole or not at all, so a request in the ring would only add a
// completion to wait for; a full socket arms a POLLOUT wait and onSendPoll
// pumps again. (A SENDMSG left to the kernel's own EAGAIN retry was also
// seen to send an empty datagram first, on a Unix datagram socket whose
// peer had been full: kernel 6.18.)

func (b *uringBackend) dgramRelease() {
	if b.dg == nil {
		return
	}
	b.dg.pbuf.close()
	b.dg.pool.close()
	b.dg = nil
}

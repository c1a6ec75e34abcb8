package goloop

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The epoll backend's datagram receive: recvfrom into the datagram pool,
// laid out as io_uring's multishot recvmsg lays it out (dgram.go).

func (b *epollBackend) dgramRecvStart(f *epFd, s *Sub) {
	if b.dg == nil {
		pool, err := newBufPool(dgramBufSize, dgramBufCount)
		if err != nil {
			b.complete(Comp{Token: s.Token, Kind: EvDgram, Res: -int32(unix.ENOMEM)})
			return
		}
		b.dg = pool
	}
	f.recvOn, f.recvTok, f.dgram = true, s.Token, true
}

// dgramBufReturn takes back a datagram buffer; false for a stream buffer.
func (b *epollBackend) dgramBufReturn(id uint32) bool {
	if id&DgramBufBit == 0 {
		return false
	}
	if b.dg != nil {
		b.dg.put(id &^ DgramBufBit)
	}
	return true
}

func (b *epollBackend) recvDgram(f *epFd) {
	p := b.dg
	for i := 0; i < dgramBurst && f.recvOn; i++ {
		id, ok := p.get()
		if !ok {
			f.starved = true
			b.starved = append(b.starved, f)
			b.markDirty(f)
			return
		}
		buf := p.buf(id)
		namelen := uint32(DgramNameCap)
		r, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(f.fd),
			uintptr(unsafe.Pointer(&buf[dgramHead])), DgramMax, unix.MSG_DONTWAIT,
			uintptr(unsafe.Pointer(&buf[dgramOutHdr])), uintptr(unsafe.Pointer(&namelen)))
		if e == 0 {
			if namelen > DgramNameCap {
				namelen = DgramNameCap
			}
			b.complete(Comp{Token: f.recvTok, Kind: EvDgram, Res: int32(r), Ptr: p.addr(id) + dgramHead,
				Buf: id | DgramBufBit, Aux: namelen, Flags: FlagMore})
			continue
		}
		p.put(id)
		switch {
		case e == unix.EINTR:
		case e == unix.EAGAIN:
			return
		case dgramFatal(e):
			f.recvOn = false
			b.complete(Comp{Token: f.recvTok, Kind: EvDgram, Res: -int32(e)})
			b.markDirty(f)
			return
		default:
			b.complete(Comp{Token: f.recvTok, Kind: EvDgram, Res: -int32(e), Flags: FlagMore})
		}
	}
}

func (b *epollBackend) dgramClose() {
	if b.dg != nil {
		b.dg.close()
		b.dg = nil
	}
}

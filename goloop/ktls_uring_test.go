package goloop

import (
	"bytes"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// io_uring on a kernel-TLS socket, the way the backends would read one: a
// plain IORING_OP_RECV gets application data and fails with -EIO on a
// non-data record (which stays queued), and IORING_OP_RECVMSG with a control
// buffer then returns that record with its TLS_GET_RECORD_TYPE.
func TestKTLSUringRecv(t *testing.T) {
	requireKTLS(t)
	r, err := newRing(8, false)
	if err != nil {
		t.Skipf("no io_uring: %v", err)
	}
	defer r.close()
	k := ktlsHandshake(t, ktlsCases[3], false, false) // TLS 1.3, AES-128-GCM
	k.install(t, true, true)
	var fd int
	k.rc.Control(func(f uintptr) { fd = int(f) })
	waitIn := func() {
		t.Helper()
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(pfd, 10000); n != 1 || err != nil {
			t.Fatalf("poll: %d %v", n, err)
		}
	}
	buf := make([]byte, 4096)
	recv := func() int32 {
		t.Helper()
		s := r.sqe()
		s.opcode, s.fd, s.userData = iouOpRecv, int32(fd), 1
		s.addr, s.len = uint64(uintptr(unsafe.Pointer(&buf[0]))), uint32(len(buf))
		c, ok := r.await()
		runtime.KeepAlive(buf)
		if !ok {
			t.Fatal("no completion")
		}
		return c.res
	}
	k.peer.SetDeadline(time.Now().Add(time.Minute))
	msg := []byte("via io_uring")
	if _, err := k.peer.Write(msg); err != nil {
		t.Fatal(err)
	}
	waitIn()
	if res := recv(); res != int32(len(msg)) || !bytes.Equal(buf[:res], msg) {
		t.Fatalf("IORING_OP_RECV of data: %d", res)
	}
	if err := k.peer.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	waitIn()
	if res := recv(); res != -int32(unix.EIO) {
		t.Fatalf("IORING_OP_RECV of an alert record: %d, want -EIO", res)
	}
	oob := make([]byte, 64)
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	mh := unix.Msghdr{Iov: &iov, Control: &oob[0]}
	mh.SetIovlen(1)
	mh.SetControllen(len(oob))
	s := r.sqe()
	s.opcode, s.fd, s.userData = iouOpRecvmsg, int32(fd), 2
	s.addr, s.len = uint64(uintptr(unsafe.Pointer(&mh))), 1
	c, ok := r.await()
	runtime.KeepAlive(&mh)
	runtime.KeepAlive(&iov)
	runtime.KeepAlive(oob)
	if !ok || c.res != 2 || !bytes.Equal(buf[:2], []byte{1, 0}) {
		t.Fatalf("IORING_OP_RECVMSG: %+v % x", c, buf[:2])
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:mh.Controllen])
	if err != nil || len(msgs) != 1 || msgs[0].Header.Level != solTLS || msgs[0].Header.Type != tlsGetRecordType ||
		len(msgs[0].Data) != 1 || msgs[0].Data[0] != RecordAlert {
		t.Fatalf("control message: %+v %v", msgs, err)
	}
}

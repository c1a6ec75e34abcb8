package goloop

import (
	"context"
	"encoding/json"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// goloop.features tells what this kernel offers the io_uring backend, for
// `python -m goloop` and bug reports: whether a backend made with "auto"
// gets io_uring and, if not, why; and which of the kernel features the
// backend relies on work here. Multishot accept and recv cannot be seen in
// the opcode probe (they are flags of ACCEPT and RECV), so they are tried
// for real on a ring of their own, over loopback sockets.
func init() {
	RegisterMethod("goloop.features", func(context.Context, []byte) ([]byte, error) {
		return json.Marshal(probeFeatures())
	})
}

// Features is the answer, as JSON.
type Features struct {
	GoVersion string        `json:"go_version"`
	GOOS      string        `json:"goos"`
	GOARCH    string        `json:"goarch"`
	Kernel    string        `json:"kernel"`
	IOUring   UringFeatures `json:"io_uring"`
	KTLS      KTLSFeatures  `json:"ktls"`
}

// UringFeatures: Usable is what "auto" decides (NewBackend tries io_uring
// exactly this way); Error says why it is not. The feature fields are
// probed independently, so they tell what is missing when it is not.
type UringFeatures struct {
	Usable          bool            `json:"usable"`
	Error           string          `json:"error,omitempty"`
	Disabled        string          `json:"io_uring_disabled,omitempty"` // the sysctl, where it exists
	SetupFlags      []string        `json:"setup_flags,omitempty"`       // what a backend's ring got
	Ops             map[string]bool `json:"ops,omitempty"`
	ProvidedBuffers *bool           `json:"provided_buffer_rings,omitempty"`
	MultishotAccept *bool           `json:"multishot_accept,omitempty"`
	MultishotRecv   *bool           `json:"multishot_recv,omitempty"`
	SendZC          *bool           `json:"send_zc,omitempty"`
	ProbeError      string          `json:"probe_error,omitempty"`
}

func probeFeatures() Features {
	f := Features{GoVersion: runtime.Version(), GOOS: runtime.GOOS, GOARCH: runtime.GOARCH}
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		f.Kernel = unix.ByteSliceToString(uts.Release[:])
	}
	u := &f.IOUring
	if b, err := os.ReadFile("/proc/sys/kernel/io_uring_disabled"); err == nil {
		u.Disabled = strings.TrimSpace(string(b))
	}
	opt := Options{}
	opt.fill()
	if b, err := newUring(opt); err != nil {
		u.Error = err.Error()
	} else {
		u.Usable = true
		u.SetupFlags = setupFlagNames(b.(*uringBackend).r.flags)
		b.Close()
	}
	probeRing(u)
	f.KTLS = probeKTLSFeatures()
	return f
}

func setupFlagNames(fl uint32) []string {
	names := []struct {
		bit  uint32
		name string
	}{
		{iouSetupSubmitAll, "SUBMIT_ALL"}, {iouSetupCoopTaskrun, "COOP_TASKRUN"},
		{iouSetupTaskrunFlag, "TASKRUN_FLAG"}, {iouSetupSingleIssuer, "SINGLE_ISSUER"},
		{iouSetupDeferTaskrun, "DEFER_TASKRUN"},
	}
	out := []string{}
	for _, n := range names {
		if fl&n.bit != 0 {
			out = append(out, n.name)
		}
	}
	return out
}

// probeRing fills the feature fields on a small ring of its own.
func probeRing(u *UringFeatures) {
	r, err := newRing(8, false)
	if err != nil {
		u.ProbeError = err.Error()
		return
	}
	defer r.close()
	ops, err := probeOps(r)
	if err != nil {
		u.ProbeError = err.Error()
		return
	}
	u.Ops = map[string]bool{}
	for name, op := range map[string]uint8{
		"poll_add": iouOpPollAdd, "poll_remove": iouOpPollRemove, "accept": iouOpAccept,
		"async_cancel": iouOpAsyncCancel, "connect": iouOpConnect, "read": iouOpRead,
		"write": iouOpWrite, "send": iouOpSend, "recv": iouOpRecv, "send_zc": iouOpSendZC,
	} {
		u.Ops[name] = ops[op]
	}
	u.SendZC = boolp(ops[iouOpSendZC])
	if ops[iouOpAccept] {
		u.MultishotAccept = probeMultishotAccept(r)
	}
	pool, err := newBufPool(4096, 2)
	if err != nil {
		u.ProbeError = err.Error()
		return
	}
	defer pool.close()
	pb, err := newPbufRing(r.fd, pool)
	u.ProvidedBuffers = boolp(err == nil)
	if err != nil {
		return
	}
	defer pb.close()
	if ops[iouOpRecv] {
		u.MultishotRecv = probeMultishotRecv(r)
	}
}

func boolp(b bool) *bool { return &b }

// probeOps reads the kernel's opcode table (IORING_REGISTER_PROBE).
func probeOps(r *ring) (map[uint8]bool, error) {
	const n = 256
	buf := make([]byte, 16+8*n)
	if err := ioUringRegister(r.fd, iouRegisterProbe, unsafe.Pointer(&buf[0]), n); err != nil {
		return nil, err
	}
	ops := map[uint8]bool{}
	for op := 0; op <= int(buf[0]); op++ {
		ops[uint8(op)] = buf[16+8*op+2]&1 != 0 // IO_URING_OP_SUPPORTED
	}
	return ops, nil
}

// await submits what is queued and returns the next completion, or false
// when none comes within a second.
func (r *ring) await() (uringCQE, bool) {
	deadline := time.Now().Add(time.Second)
	for {
		head := atomic.LoadUint32(r.cqHead)
		if head != atomic.LoadUint32(r.cqTail) {
			c := r.cqe(head)
			atomic.StoreUint32(r.cqHead, head+1)
			return c, true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return uringCQE{}, false
		}
		if err := r.enter(1, left); err != nil && err != unix.EINTR && err != unix.ETIME {
			return uringCQE{}, false
		}
	}
}

// probeMultishotAccept arms a multishot accept on a loopback listener and
// connects to it: a kernel without it (before 5.19) fails the accept with
// EINVAL; one with it accepts and says more will follow (CQE_F_MORE).
func probeMultishotAccept(r *ring) *bool {
	ln, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	defer unix.Close(ln)
	if unix.Bind(ln, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}) != nil || unix.Listen(ln, 4) != nil {
		return nil
	}
	sa, err := unix.Getsockname(ln)
	if err != nil {
		return nil
	}
	s := r.sqe()
	s.opcode, s.fd, s.userData, s.ioprio = iouOpAccept, int32(ln), 1, iouAcceptMultishot
	s.opFlags = unix.SOCK_CLOEXEC
	// Submit before connecting, so the accept is armed and waiting.
	atomic.StoreUint32(r.sqTail, r.sqLocal)
	if err := r.enter(0, 0); err != nil {
		return nil
	}
	c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	defer unix.Close(c)
	if unix.Connect(c, sa) != nil {
		return nil
	}
	cqe, ok := r.await()
	if !ok {
		return nil
	}
	if cqe.res >= 0 {
		unix.Close(int(cqe.res))
	}
	// The accept stays armed until the ring closes, which cancels it; it
	// holds no memory of ours.
	return boolp(cqe.res >= 0 && cqe.flags&cqeFMore != 0)
}

// probeMultishotRecv arms a multishot recv with buffer selection on a
// socket pair that already holds a byte: a kernel without it (before 6.0)
// fails the recv with EINVAL; one with it delivers the byte and says more
// will follow. The peer's close then ends it (a final CQE without F_MORE),
// so nothing still writes into the buffers when they are unmapped.
func probeMultishotRecv(r *ring) *bool {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	defer unix.Close(fds[0])
	peerOpen := true
	closePeer := func() {
		if peerOpen {
			unix.Close(fds[1])
			peerOpen = false
		}
	}
	defer closePeer()
	if _, err := unix.Write(fds[1], []byte{'x'}); err != nil {
		return nil
	}
	s := r.sqe()
	s.opcode, s.fd, s.userData = iouOpRecv, int32(fds[0]), 2
	s.ioprio, s.flags, s.bufIndex = iouRecvMultishot, iosqeBufferSelect, pbufGroup
	cqe, ok := r.await()
	if !ok {
		return nil
	}
	works := cqe.res == 1 && cqe.flags&cqeFBuffer != 0 && cqe.flags&cqeFMore != 0
	for cqe.flags&cqeFMore != 0 {
		closePeer()
		if cqe, ok = r.await(); !ok {
			return nil
		}
	}
	return boolp(works)
}

package goloop

import "golang.org/x/sys/unix"

// Fault injection at the backends' syscall boundary, for tests: errors the
// kernel cannot be made to return on demand (ENOMEM, ENOBUFS, EIO from an
// accept, a receive or a send) replace a real result, on both backends, at
// the one point where each backend learns it: the epoll backend's syscall,
// the io_uring backend's CQE. Nil outside tests: one predictable branch.
type faultSite uint8

const (
	faultAccept faultSite = iota
	faultRecv
	faultSend
)

// injectFault, when set, returns the errno to report instead of a
// successful result at site (0: leave it).
var injectFault func(site faultSite) unix.Errno

// faultAt is the error to report at site, if a test injects one.
func faultAt(site faultSite) unix.Errno {
	if injectFault == nil {
		return 0
	}
	return injectFault(site)
}

// faultCQE applies an injected fault to an io_uring completion of the given
// kind, giving back what the real result carried (a picked buffer is
// recycled by the receive path, which sees res < 0). Accepts are faulted in
// acceptSome, the same code on both backends.
func faultCQE(kind uint8, res int32) int32 {
	if injectFault == nil || res < 0 {
		return res
	}
	var site faultSite
	switch kind {
	case kRecv:
		site = faultRecv
	case kSend:
		site = faultSend
	default:
		return res
	}
	e := injectFault(site)
	if e == 0 {
		return res
	}
	return -int32(e)
}

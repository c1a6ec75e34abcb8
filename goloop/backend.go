package goloop

import (
	"fmt"
	"os"
	"time"
)

// Backend turns submissions into completions. Both implementations produce
// the same records, so nothing above this package knows which one runs; a
// kqueue backend would be a third implementation of the same contract.
//
// A Backend is driven by one goroutine (the loop's thread) except Wake,
// which any goroutine may call.
type Backend interface {
	// Poll applies subs in order, then waits until at least one completion
	// is ready, Wake is called, or timeout passes (timeout < 0: no limit,
	// 0: do not wait), and copies up to len(out) completions into out.
	// Completions that do not fit stay queued for the next call.
	// timeout ApplyOnly: apply subs and return what they completed (and
	// what was queued), without asking the kernel what became ready.
	Poll(subs []Sub, out []Comp, timeout time.Duration) (int, error)
	// Pending reports whether completions are already queued, so a caller
	// knows not to wait.
	Pending() bool
	Wake() error
	// WakeFd is the eventfd Wake writes to (a counter: write 8 bytes of a
	// little-endian 1), open until Close: a caller that knows the backend
	// is not closing may wake it by writing there itself, without a call
	// into Go (the C side's call_soon_threadsafe, whose thread is not Go's:
	// entering Go from it costs the runtime a P hand-off and thread wake-ups).
	WakeFd() int
	Name() string
	Close() error
}

// ApplyOnly is Poll's timeout for a call that only applies its batch: C's
// loop_apply_now, mid-iteration (a sock op tried at once, a server's close,
// a stop). Readiness is the next ordinary Poll's business; on epoll this
// saves an epoll_wait per call.
const ApplyOnly time.Duration = -2

// Options size a backend.
type Options struct {
	BufSize  int // bytes per receive buffer
	BufCount int // buffers in the pool (a power of two)
	Entries  int // io_uring submission queue entries
}

func (o *Options) fill() {
	if o.BufSize == 0 {
		o.BufSize = 64 << 10
	}
	if o.BufCount == 0 {
		o.BufCount = 256
	}
	if o.Entries == 0 {
		o.Entries = 1024
	}
}

// NewBackend makes the backend named by kind: "io_uring", "epoll", "auto"
// (io_uring where the kernel allows it, else epoll), or "" (GOLOOP_BACKEND
// from Go's environment, else auto). The C ABI always names one: Go's copy
// of the environment is the one the process had when Go started, and the
// Python side chooses from os.environ as it is when the loop is made.
func NewBackend(kind string, opt Options) (Backend, error) {
	opt.fill()
	if kind == "" {
		kind = os.Getenv("GOLOOP_BACKEND")
	}
	switch kind {
	case "epoll":
		return newEpoll(opt)
	case "io_uring":
		return newUring(opt)
	case "", "auto":
		if b, err := newUring(opt); err == nil {
			return b, nil
		}
		return newEpoll(opt)
	}
	return nil, fmt.Errorf("goloop: unknown backend %q (want io_uring or epoll)", kind)
}

package goloop

import (
	"runtime"
	"sync"
	"time"
)

// Loop is what the C ABI drives: a backend plus the queue through which
// goroutines (DNS lookups, TLS handshakes) hand results to the loop thread.
// Posting wakes the backend, so a posted result ends a wait at once.
type Loop struct {
	b       Backend
	mu      sync.Mutex
	posted  []Comp
	closed  bool // under mu: Post must not wake a backend that is gone
	calls   calls
	running sync.WaitGroup // calls whose goroutine has not returned
	born    time.Time
	yieldAt time.Duration // since born: when Poll next yields its P (Poll)
}

// yieldEvery is how often Poll lets the Go scheduler run (see Poll).
const yieldEvery = 5 * time.Millisecond

// closeWait bounds how long Close waits for cancelled calls to return: a
// method that ignores its context must not hang the loop's close.
const closeWait = 2 * time.Second

func NewLoop(kind string, opt Options) (*Loop, error) {
	// The Go runtime opens its netpoller (an epoll fd and an eventfd, once
	// per process) the first time a timer is armed. Close's bounded wait
	// arms one only when it has to wait, which depends on scheduling, so
	// those two fds appeared at a random later close. Arming one here opens
	// them with the first loop, at a known moment.
	time.AfterFunc(time.Hour, func() {}).Stop()
	b, err := NewBackend(kind, opt)
	if err != nil {
		return nil, err
	}
	return &Loop{b: b, born: time.Now()}, nil
}

func (l *Loop) Backend() Backend { return l.b }

// Post queues c for the loop thread; any goroutine may call it.
func (l *Loop) Post(c Comp) {
	l.mu.Lock()
	if l.closed {
		// Its eventfd is closed and the number may be another file's now.
		l.mu.Unlock()
		return
	}
	l.posted = append(l.posted, c)
	first := len(l.posted) == 1
	l.mu.Unlock()
	if first {
		l.b.Wake()
	}
}

func (l *Loop) Wake() error { return l.b.Wake() }

// WakeFd is the backend's WakeFd (backend.go).
func (l *Loop) WakeFd() int { return l.b.WakeFd() }

// Poll is one loop iteration's crossing: submissions in, completions out.
func (l *Loop) Poll(subs []Sub, out []Comp, timeout time.Duration) (int, error) {
	// Poll runs on the goroutine of a call from C that lasts as long as the
	// loop, on a P whose schedule tick never moves: after 10 ms the
	// runtime's sysmon counts that as one goroutine hogging its P, and from
	// then on takes the P away at nearly every tick (about 2,000 handoffs a
	// second under load, each costing the loop thread a slow way back in),
	// and preempts the goroutine with a signal when it is in Go. A Gosched
	// now and then moves the tick, which is what sysmon looks at.
	if now := time.Since(l.born); now >= l.yieldAt {
		l.yieldAt = now + yieldEvery
		runtime.Gosched()
	}
	n := 0
	l.mu.Lock()
	if len(l.posted) > 0 {
		n = copy(out, l.posted)
		rest := copy(l.posted, l.posted[n:])
		l.posted = l.posted[:rest]
	}
	more := len(l.posted) > 0
	l.mu.Unlock()
	if (n > 0 || more) && timeout != ApplyOnly {
		timeout = 0
	}
	m, err := l.b.Poll(subs, out[n:], timeout)
	return n + m, err
}

// Close cancels the calls still running and waits (a bounded time) for
// them to return, so that what they hold (a DNS question's socket) is given
// back before the loop is reported closed; then it closes the backend.
func (l *Loop) Close() error {
	l.calls.mu.Lock()
	for _, c := range l.calls.m {
		c.cancel()
	}
	l.calls.m = nil
	l.calls.mu.Unlock()
	done := make(chan struct{})
	go func() { l.running.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(closeWait):
	}
	l.mu.Lock()
	l.closed = true
	l.posted = nil
	l.mu.Unlock()
	return l.b.Close()
}

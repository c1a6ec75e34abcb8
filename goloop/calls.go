package goloop

import (
	"context"
	"sync"
)

// A Method is slow or CPU-heavy work (a DNS lookup, later a TLS handshake)
// that runs in its own goroutine, off the loop thread and without the GIL.
// Requests and results are opaque bytes: each method defines its encoding,
// and only the Python module that calls it decodes them, off the hot path.
type Method func(ctx context.Context, req []byte) ([]byte, error)

// A QuickMethod answers a request at once when it can do so from memory
// (a cached DNS answer, /etc/hosts), without blocking: ok false means it
// cannot, and the Method runs in a goroutine as usual. Answering in the
// caller saves the goroutine hand-off, the completion and the loop's wake-up,
// which cost more than a cache lookup.
type QuickMethod func(req []byte) (out []byte, err error, ok bool)

var (
	methodsMu sync.RWMutex
	methods   = map[string]Method{}
	quicks    = map[string]QuickMethod{}
)

// RegisterMethod makes fn callable by name through Loop.Call. Packages
// register their methods in init.
func RegisterMethod(name string, fn Method) {
	methodsMu.Lock()
	methods[name] = fn
	methodsMu.Unlock()
}

// RegisterQuick gives the method name a QuickMethod, tried first by Call.
func RegisterQuick(name string, fn QuickMethod) {
	methodsMu.Lock()
	quicks[name] = fn
	methodsMu.Unlock()
}

// CallState is what Call did.
type CallState int

const (
	CallUnknown  CallState = iota // no such method
	CallStarted                   // running; an EvPosted completion will say when it ends
	CallAnswered                  // answered at once: Result has the answer, no completion follows
	CallFailed                    // failed at once: Result has the error text, no completion follows
)

func noCancel() {}

type call struct {
	cancel context.CancelFunc
	result []byte
	done   bool
}

type calls struct {
	mu sync.Mutex
	m  map[uint64]*call
}

// Call answers req at once if the method's QuickMethod can; otherwise it
// starts the method in a goroutine, and when it ends an EvPosted
// completion with the same token carries Res = len(result) (>= 0) or -1
// when the method failed (the result is then the error text). Either way
// Result hands the outcome over.
func (l *Loop) Call(token uint64, method string, req []byte) CallState {
	methodsMu.RLock()
	fn, quick := methods[method], quicks[method]
	methodsMu.RUnlock()
	if fn == nil {
		return CallUnknown
	}
	if quick != nil {
		if out, err, ok := quick(req); ok {
			state := CallAnswered
			if err != nil {
				out, state = []byte(err.Error()), CallFailed
			}
			l.storeCall(token, &call{cancel: noCancel, result: out, done: true})
			return state
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &call{cancel: cancel}
	l.storeCall(token, c)
	l.running.Add(1)
	t := task{l: l, token: token, fn: fn, ctx: ctx, c: c, req: req}
	if w := workers.take(); w != nil {
		w <- t
	} else {
		go work(t)
	}
	return CallStarted
}

func (l *Loop) storeCall(token uint64, c *call) {
	l.calls.mu.Lock()
	if l.calls.m == nil {
		l.calls.m = make(map[uint64]*call)
	}
	l.calls.m[token] = c
	l.calls.mu.Unlock()
}

// Calls run on worker goroutines that wait for the next call when theirs
// is done, up to maxIdleWorkers of them, instead of a goroutine per call:
// a new goroutine grows its stack again for every lookup (the copying
// showed in profiles), a parked worker keeps the stack it grew.
const maxIdleWorkers = 256

type task struct {
	l     *Loop
	token uint64
	fn    Method
	ctx   context.Context
	c     *call
	req   []byte
}

func (t *task) run() {
	out, err := t.fn(t.ctx, t.req)
	res := int32(len(out))
	if err != nil {
		out, res = []byte(err.Error()), -1
	}
	l := t.l
	l.calls.mu.Lock()
	t.c.result, t.c.done = out, true
	l.calls.mu.Unlock()
	l.Post(Comp{Token: t.token, Kind: EvPosted, Res: res})
	l.running.Done()
}

type workerPool struct {
	mu   sync.Mutex
	idle []chan task // most recently parked last
}

var workers workerPool

// take returns an idle worker's channel, or nil when none waits.
func (p *workerPool) take() chan task {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.idle)
	if n == 0 {
		return nil
	}
	w := p.idle[n-1]
	p.idle[n-1] = nil
	p.idle = p.idle[:n-1]
	return w
}

// park offers ch for the next call; false means enough workers wait.
func (p *workerPool) park(ch chan task) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle) >= maxIdleWorkers {
		return false
	}
	p.idle = append(p.idle, ch)
	return true
}

func work(t task) {
	ch := make(chan task, 1)
	for {
		t.run()
		t = task{}
		if !workers.park(ch) {
			return
		}
		t = <-ch
	}
}

// Result hands over the result of a finished call; with take it also
// forgets it. A caller whose buffer is too small looks first, then takes.
func (l *Loop) Result(token uint64, take bool) ([]byte, bool) {
	l.calls.mu.Lock()
	defer l.calls.mu.Unlock()
	c := l.calls.m[token]
	if c == nil || !c.done {
		return nil, false
	}
	if take {
		delete(l.calls.m, token)
		c.cancel()
	}
	return c.result, true
}

// Cancel asks a running call to stop; its completion is still posted, and
// its result must still be taken (or is dropped when the loop closes).
func (l *Loop) Cancel(token uint64) {
	l.calls.mu.Lock()
	c := l.calls.m[token]
	l.calls.mu.Unlock()
	if c != nil {
		c.cancel()
	}
}

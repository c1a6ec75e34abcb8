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

var (
	methodsMu sync.RWMutex
	methods   = map[string]Method{}
)

// RegisterMethod makes fn callable by name through Loop.Call. Packages
// register their methods in init.
func RegisterMethod(name string, fn Method) {
	methodsMu.Lock()
	methods[name] = fn
	methodsMu.Unlock()
}

type call struct {
	cancel context.CancelFunc
	result []byte
	done   bool
}

type calls struct {
	mu sync.Mutex
	m  map[uint64]*call
}

// Call starts method on req in a goroutine. When it ends, an EvPosted
// completion with the same token carries Res = len(result) (>= 0) or -1
// when the method failed (the result is then the error text). It returns
// false if no such method is registered.
func (l *Loop) Call(token uint64, method string, req []byte) bool {
	methodsMu.RLock()
	fn := methods[method]
	methodsMu.RUnlock()
	if fn == nil {
		return false
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &call{cancel: cancel}
	l.calls.mu.Lock()
	if l.calls.m == nil {
		l.calls.m = make(map[uint64]*call)
	}
	l.calls.m[token] = c
	l.calls.mu.Unlock()
	go func() {
		out, err := fn(ctx, req)
		res := int32(len(out))
		if err != nil {
			out, res = []byte(err.Error()), -1
		}
		l.calls.mu.Lock()
		c.result, c.done = out, true
		l.calls.mu.Unlock()
		l.Post(Comp{Token: token, Kind: EvPosted, Res: res})
	}()
	return true
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

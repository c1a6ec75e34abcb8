package dns

import (
	"context"
	"sync"

	mdns "github.com/miekg/dns"
)

// flights coalesces identical questions in flight: the first asker starts
// the exchange, later ones wait for its result. The exchange runs on its
// own context, cancelled only when every asker has given up, so one
// cancelled task does not fail the others that share its question.
type flights struct {
	mu sync.Mutex
	m  map[cacheKey]*flight
}

type flight struct {
	done    chan struct{}
	resp    *mdns.Msg
	err     error
	waiters int
	cancel  context.CancelFunc
}

// do runs fn once for all concurrent callers with the same key. shared
// reports whether this caller joined someone else's exchange. The first
// caller runs fn itself (no goroutine): if it gives up while others still
// wait, it stays until fn returns, which only delays a Go goroutine whose
// answer nobody reads.
func (fs *flights) do(ctx context.Context, k cacheKey, fn func(context.Context) (*mdns.Msg, error)) (resp *mdns.Msg, shared bool, err error) {
	fs.mu.Lock()
	if fs.m == nil {
		fs.m = map[cacheKey]*flight{}
	}
	f, ok := fs.m[k]
	if !ok {
		fctx, cancel := context.WithCancel(context.Background())
		f = &flight{done: make(chan struct{}), waiters: 1, cancel: cancel}
		fs.m[k] = f
		fs.mu.Unlock()
		stop := context.AfterFunc(ctx, func() { fs.leave(k, f) })
		r, e := fn(fctx)
		stop()
		fs.mu.Lock()
		if fs.m[k] == f {
			delete(fs.m, k)
		}
		fs.mu.Unlock()
		f.resp, f.err = r, e
		close(f.done)
		cancel()
		if ctx.Err() != nil {
			return nil, false, ctx.Err()
		}
		return r, false, e
	}
	f.waiters++
	fs.mu.Unlock()
	select {
	case <-f.done:
		return f.resp, true, f.err
	case <-ctx.Done():
		fs.leave(k, f)
		return nil, true, ctx.Err()
	}
}

// leave drops one waiter; the last one out cancels the exchange, and a
// later question then starts afresh rather than join a dying one.
func (fs *flights) leave(k cacheKey, f *flight) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f.waiters--
	if f.waiters == 0 {
		if fs.m[k] == f {
			delete(fs.m, k)
		}
		f.cancel()
	}
}

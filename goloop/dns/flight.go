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
// reports whether this caller joined someone else's exchange.
func (fs *flights) do(ctx context.Context, k cacheKey, fn func(context.Context) (*mdns.Msg, error)) (resp *mdns.Msg, shared bool, err error) {
	fs.mu.Lock()
	if fs.m == nil {
		fs.m = map[cacheKey]*flight{}
	}
	f, ok := fs.m[k]
	if ok {
		f.waiters++
	} else {
		fctx, cancel := context.WithCancel(context.Background())
		f = &flight{done: make(chan struct{}), waiters: 1, cancel: cancel}
		fs.m[k] = f
		go func() {
			r, e := fn(fctx)
			fs.mu.Lock()
			if fs.m[k] == f {
				delete(fs.m, k)
			}
			fs.mu.Unlock()
			f.resp, f.err = r, e
			close(f.done)
			cancel()
		}()
	}
	fs.mu.Unlock()

	select {
	case <-f.done:
		return f.resp, ok, f.err
	case <-ctx.Done():
		fs.mu.Lock()
		f.waiters--
		if f.waiters == 0 {
			// Nobody wants the answer any more: stop asking, and let a
			// later question start afresh rather than join a dying one.
			if fs.m[k] == f {
				delete(fs.m, k)
			}
			f.cancel()
		}
		fs.mu.Unlock()
		return nil, ok, ctx.Err()
	}
}

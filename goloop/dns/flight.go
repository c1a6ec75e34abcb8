package dns

import (
	"context"
	"errors"
	"sync"

	mdns "github.com/miekg/dns"
)

// flights coalesces identical questions in flight: the first asker (the
// leader) sends the query, later ones wait for its answer. If the leader
// gives up (its task was cancelled), the others are told so and ask
// again, one of them becoming the new leader: a cancelled task never
// fails the tasks that shared its question.
type flights struct {
	mu sync.Mutex
	m  map[cacheKey]*flight
}

type flight struct {
	done    chan struct{} // made when the first follower joins
	resp    *mdns.Msg
	err     error
	waiters int // askers so far, the leader included (for tests)
}

// errLeaderGone tells followers that the leader stopped before an answer.
var errLeaderGone = errors.New("the query was abandoned by its sender")

// join returns the flight for k and whether the caller leads it, in which
// case it must call finish.
func (fs *flights) join(k cacheKey) (*flight, bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.m == nil {
		fs.m = map[cacheKey]*flight{}
	}
	if f, ok := fs.m[k]; ok {
		f.waiters++
		if f.done == nil {
			f.done = make(chan struct{})
		}
		return f, false
	}
	f := &flight{waiters: 1}
	fs.m[k] = f
	return f, true
}

// finish publishes the leader's outcome. leaderCancelled says the leader
// stopped because its own context ended.
func (fs *flights) finish(k cacheKey, f *flight, resp *mdns.Msg, err error, leaderCancelled bool) {
	if leaderCancelled {
		resp, err = nil, errLeaderGone
	}
	fs.mu.Lock()
	if fs.m[k] == f {
		delete(fs.m, k)
	}
	f.resp, f.err = resp, err
	done := f.done
	fs.mu.Unlock()
	if done != nil {
		close(done)
	}
}

// wait is a follower's wait. retry is true when the leader gave up and the
// caller should join again.
func (fs *flights) wait(ctx context.Context, f *flight) (resp *mdns.Msg, err error, retry bool) {
	select {
	case <-f.done:
		if f.err == errLeaderGone {
			return nil, nil, ctx.Err() == nil
		}
		return f.resp, f.err, false
	case <-ctx.Done():
		return nil, ctx.Err(), false
	}
}

// do runs fn once for all concurrent callers with the same key (for
// callers with a single question).
func (fs *flights) do(ctx context.Context, k cacheKey, fn func(context.Context) (*mdns.Msg, error)) (*mdns.Msg, bool, error) {
	for {
		f, leader := fs.join(k)
		if leader {
			r, e := fn(ctx)
			fs.finish(k, f, r, e, ctx.Err() != nil)
			if ctx.Err() != nil {
				return nil, false, ctx.Err()
			}
			return r, false, e
		}
		r, e, retry := fs.wait(ctx, f)
		if !retry {
			return r, true, e
		}
	}
}

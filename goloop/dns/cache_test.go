package dns

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

func answer(name string, ttl uint32, ip string) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetQuestion(name, mdns.TypeA)
	m.Response = true
	m.Answer = []mdns.RR{&mdns.A{Hdr: mdns.RR_Header{Name: name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: ttl}, A: net.ParseIP(ip)}}
	return m
}

func negative(name string, rcode int, soaTTL, minTTL uint32) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetQuestion(name, mdns.TypeA)
	m.Response, m.Rcode = true, rcode
	m.Ns = []mdns.RR{&mdns.SOA{Hdr: mdns.RR_Header{Name: "example.", Rrtype: mdns.TypeSOA, Class: mdns.ClassINET, Ttl: soaTTL},
		Ns: "ns.example.", Mbox: "h.example.", Minttl: minTTL}}
	return m
}

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestCacheTTL(t *testing.T) {
	clk := &fakeClock{time.Unix(1000, 0)}
	c := NewCache(10)
	c.now = clk.now
	k := cacheKey{"a.example.", mdns.TypeA}
	m := answer("a.example.", 30, "10.0.0.1")
	m.Answer = append(m.Answer, answer("a.example.", 10, "10.0.0.2").Answer...)
	if !c.Put(k, m) {
		t.Fatal("not cached")
	}
	clk.t = clk.t.Add(9 * time.Second)
	if _, left, ok := c.Get(k); !ok || left != time.Second {
		t.Fatalf("the shortest TTL rules: ok=%v left=%v", ok, left)
	}
	clk.t = clk.t.Add(time.Second)
	if _, _, ok := c.Get(k); ok {
		t.Fatal("expired entry returned")
	}
	if c.Put(k, answer("a.example.", 0, "10.0.0.1")) {
		t.Fatal("TTL 0 cached")
	}
	c.maxTTL = time.Minute
	c.Put(k, answer("a.example.", 1<<30, "10.0.0.1"))
	if _, left, _ := c.Get(k); left != time.Minute {
		t.Fatalf("TTL not capped: %v", left)
	}
}

func TestCacheNegative(t *testing.T) {
	clk := &fakeClock{time.Unix(1000, 0)}
	c := NewCache(10)
	c.now = clk.now
	nx := cacheKey{"nx.example.", mdns.TypeA}
	// RFC 2308: min(SOA TTL, SOA MINIMUM).
	if !c.Put(nx, negative("nx.example.", mdns.RcodeNameError, 600, 5)) {
		t.Fatal("NXDOMAIN not cached")
	}
	if _, left, ok := c.Get(nx); !ok || left != 5*time.Second {
		t.Fatalf("negative TTL %v", left)
	}
	nd := cacheKey{"nodata.example.", mdns.TypeA}
	if !c.Put(nd, negative("nodata.example.", mdns.RcodeSuccess, 3, 60)) {
		t.Fatal("NODATA not cached")
	}
	if _, left, _ := c.Get(nd); left != 3*time.Second {
		t.Fatalf("NODATA TTL %v", left)
	}
	noSOA := negative("x.example.", mdns.RcodeNameError, 1, 1)
	noSOA.Ns = nil
	if c.Put(cacheKey{"x.example.", mdns.TypeA}, noSOA) {
		t.Fatal("negative answer without SOA cached")
	}
	sf := negative("sf.example.", mdns.RcodeServerFailure, 60, 60)
	if c.Put(cacheKey{"sf.example.", mdns.TypeA}, sf) {
		t.Fatal("SERVFAIL cached")
	}
}

func TestCacheBound(t *testing.T) {
	c := NewCache(3)
	keys := []string{"a.", "b.", "c.", "d."}
	for i, n := range keys[:3] {
		c.Put(cacheKey{n, mdns.TypeA}, answer(n, 60, "10.0.0.1"))
		_ = i
	}
	c.Get(cacheKey{"a.", mdns.TypeA}) // a is now the most recent
	c.Put(cacheKey{"d.", mdns.TypeA}, answer("d.", 60, "10.0.0.1"))
	if c.Len() != 3 {
		t.Fatalf("len %d", c.Len())
	}
	if _, _, ok := c.Get(cacheKey{"b.", mdns.TypeA}); ok {
		t.Fatal("least recently used entry kept")
	}
	for _, n := range []string{"a.", "c.", "d."} {
		if _, _, ok := c.Get(cacheKey{n, mdns.TypeA}); !ok {
			t.Fatalf("%s dropped", n)
		}
	}
	c.Clear()
	if c.Len() != 0 {
		t.Fatal("clear")
	}
}

func TestFlightsCoalesce(t *testing.T) {
	var fs flights
	var calls atomic.Int32
	release := make(chan struct{})
	k := cacheKey{"a.", mdns.TypeA}
	fn := func(ctx context.Context) (*mdns.Msg, error) {
		calls.Add(1)
		<-release
		return answer("a.", 1, "10.0.0.1"), nil
	}
	const n = 20
	var wg sync.WaitGroup
	var shared atomic.Int32
	started := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			started <- struct{}{}
			m, sh, err := fs.do(context.Background(), k, fn)
			if err != nil || m == nil {
				t.Error(err)
			}
			if sh {
				shared.Add(1)
			}
		}()
	}
	for i := 0; i < n; i++ {
		<-started
	}
	// Every goroutine has started; wait until all have joined the flight.
	for {
		fs.mu.Lock()
		f := fs.m[k]
		w := 0
		if f != nil {
			w = f.waiters
		}
		fs.mu.Unlock()
		if w == n {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	if calls.Load() != 1 || shared.Load() != n-1 {
		t.Fatalf("calls %d shared %d", calls.Load(), shared.Load())
	}
}

func TestFlightsLeaderCancel(t *testing.T) {
	var fs flights
	k := cacheKey{"a.", mdns.TypeA}
	var calls atomic.Int32
	fn := func(ctx context.Context) (*mdns.Msg, error) {
		calls.Add(1)
		<-ctx.Done()
		return nil, ctx.Err()
	}
	ctx1, cancel1 := context.WithCancel(context.Background())
	ctx2, cancel2 := context.WithCancel(context.Background())
	err1, err2 := make(chan error, 1), make(chan error, 1)
	go func() { _, _, err := fs.do(ctx1, k, fn); err1 <- err }()
	waitFor := func(cond func() bool) {
		for !cond() {
			time.Sleep(time.Millisecond)
		}
	}
	waitFor(func() bool { return calls.Load() == 1 })
	go func() { _, _, err := fs.do(ctx2, k, fn); err2 <- err }()
	waitFor(func() bool {
		fs.mu.Lock()
		defer fs.mu.Unlock()
		return fs.m[k] != nil && fs.m[k].waiters == 2
	})
	// The leader gives up: the follower must not fail with it, but ask
	// again itself.
	cancel1()
	if err := <-err1; err != context.Canceled {
		t.Fatalf("leader: %v", err)
	}
	waitFor(func() bool { return calls.Load() == 2 })
	select {
	case err := <-err2:
		t.Fatalf("follower ended with its leader: %v", err)
	default:
	}
	cancel2()
	if err := <-err2; err != context.Canceled {
		t.Fatalf("follower: %v", err)
	}
}

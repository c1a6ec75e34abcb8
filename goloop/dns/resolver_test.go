package dns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

func eaiOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func TestParallelAAndAAAA(t *testing.T) {
	// The A answer is held back until the AAAA question has arrived: a
	// resolver asking one after the other would time out.
	gotAAAA := make(chan struct{})
	var once sync.Once
	addr := startServer(t, func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := reply(r)
		q := r.Question[0]
		switch q.Qtype {
		case mdns.TypeA:
			select {
			case <-gotAAAA:
			case <-time.After(3 * time.Second):
			}
			m.Answer = []mdns.RR{rrA(q.Name, "192.0.2.1", 60)}
		case mdns.TypeAAAA:
			once.Do(func() { close(gotAAAA) })
			m.Answer = []mdns.RR{rrAAAA(q.Name, "2001:db8::1", 60)}
		}
		w.WriteMsg(m)
	})
	r := testResolver(t, "nameserver "+addr+"\noptions timeout:1 attempts:1\n", "")
	addrs, canon, err := r.LookupHost(context.Background(), "host.example.")
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")}
	if fmt.Sprint(addrs) != fmt.Sprint(want) || canon != "host.example" {
		t.Fatalf("%v %q", addrs, canon)
	}
}

func TestTruncationRetriesOverTCP(t *testing.T) {
	var tcpQueries atomic.Int32
	addr := startServer(t, func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := reply(r)
		q := r.Question[0]
		if w.RemoteAddr().Network() == "udp" {
			m.Truncated = true
		} else {
			tcpQueries.Add(1)
			if q.Qtype == mdns.TypeA {
				for i := 0; i < 200; i++ {
					m.Answer = append(m.Answer, rrA(q.Name, fmt.Sprintf("10.0.%d.%d", i/250, i%250+1), 60))
				}
			} else {
				m.Ns = []mdns.RR{soa(60)}
			}
		}
		w.WriteMsg(m)
	})
	r := testResolver(t, "nameserver "+addr+"\n", "")
	addrs, _, err := r.LookupHost(context.Background(), "big.example.")
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 200 || tcpQueries.Load() != 2 {
		t.Fatalf("%d addresses, %d TCP queries", len(addrs), tcpQueries.Load())
	}
}

func TestFailoverAndTimeout(t *testing.T) {
	good := startServer(t, func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := reply(r)
		if r.Question[0].Qtype == mdns.TypeA {
			m.Answer = []mdns.RR{rrA(r.Question[0].Name, "192.0.2.7", 60)}
		} else {
			m.Ns = []mdns.RR{soa(60)}
		}
		w.WriteMsg(m)
	})
	servfail := startServer(t, func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := reply(r)
		m.Rcode = mdns.RcodeServerFailure
		w.WriteMsg(m)
	})
	dead := blackhole(t)
	r := testResolver(t, fmt.Sprintf("nameserver %s\nnameserver %s\nnameserver %s\noptions timeout:1 attempts:1\n", dead, servfail, good), "")
	start := time.Now()
	addrs, _, err := r.LookupHost(context.Background(), "x.example.")
	if err != nil || len(addrs) != 1 || addrs[0].String() != "192.0.2.7" {
		t.Fatalf("%v %v", addrs, err)
	}
	if el := time.Since(start); el < 900*time.Millisecond || el > 3*time.Second {
		t.Fatalf("the dead server should cost one timeout, took %v", el)
	}

	// Only dead servers: EAI_AGAIN after attempts x servers tries.
	r = New(Options{Nameservers: []string{dead}, Timeout: 100 * time.Millisecond, Attempts: 3, NoHosts: true})
	start = time.Now()
	_, _, err = r.LookupHost(context.Background(), "x.example.")
	if eaiOf(err) != EAI_AGAIN {
		t.Fatalf("got %v", err)
	}
	if el := time.Since(start); el < 300*time.Millisecond || el > 2*time.Second {
		t.Fatalf("3 attempts of 100ms took %v", el)
	}

	// Only SERVFAIL: EAI_AGAIN too, without waiting.
	r = New(Options{Nameservers: []string{servfail}, NoHosts: true})
	if _, _, err = r.LookupHost(context.Background(), "x.example."); eaiOf(err) != EAI_AGAIN {
		t.Fatalf("servfail: %v", err)
	}
}

func TestCancelStopsLookup(t *testing.T) {
	dead := blackhole(t)
	r := New(Options{Nameservers: []string{dead}, Timeout: 5 * time.Second, NoHosts: true})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { _, _, err := r.LookupHost(ctx, "x.example."); done <- err }()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	cancel()
	<-done
	if el := time.Since(start); el > time.Second {
		t.Fatalf("cancel took %v", el)
	}
}

func TestRotate(t *testing.T) {
	var n1, n2 atomic.Int32
	mk := func(n *atomic.Int32) string {
		return startServer(t, func(w mdns.ResponseWriter, r *mdns.Msg) {
			n.Add(1)
			m := reply(r)
			m.Answer = []mdns.RR{rrA(r.Question[0].Name, "192.0.2.1", 60)}
			w.WriteMsg(m)
		})
	}
	a1, a2 := mk(&n1), mk(&n2)
	r := testResolver(t, fmt.Sprintf("nameserver %s\nnameserver %s\noptions rotate\n", a1, a2), "")
	r.cache = NewCache(0)
	for i := 0; i < 10; i++ {
		if _, err := r.Getaddrinfo(context.Background(), &AddrinfoRequest{Host: ptr(fmt.Sprintf("h%d.example.", i)), Family: afInet}); err != nil {
			t.Fatal(err)
		}
	}
	if n1.Load() != 5 || n2.Load() != 5 {
		t.Fatalf("rotate spread %d/%d", n1.Load(), n2.Load())
	}
}

func ptr(s string) *string { return &s }

func TestSearchListAndNdots(t *testing.T) {
	var mu sync.Mutex
	var asked []string
	addr := startServer(t, func(w mdns.ResponseWriter, r *mdns.Msg) {
		q := r.Question[0]
		m := reply(r)
		if q.Qtype == mdns.TypeA {
			mu.Lock()
			asked = append(asked, q.Name)
			mu.Unlock()
		}
		switch q.Name {
		case "www.b.example.":
			if q.Qtype == mdns.TypeA {
				m.Answer = []mdns.RR{rrA(q.Name, "192.0.2.2", 60)}
			} else {
				m.Ns = []mdns.RR{soa(60)}
			}
		case "nodata.a.example.":
			m.Ns = []mdns.RR{soa(60)}
		default:
			m.Rcode = mdns.RcodeNameError
			m.Ns = []mdns.RR{soa(60)}
		}
		w.WriteMsg(m)
	})
	r := testResolver(t, "nameserver "+addr+"\nsearch a.example b.example\noptions ndots:2\n", "")
	take := func() []string {
		mu.Lock()
		defer mu.Unlock()
		out := asked
		asked = nil
		return out
	}
	res, err := r.Getaddrinfo(context.Background(), &AddrinfoRequest{Host: ptr("www"), Flags: AI_CANONNAME, Socktype: sockStream})
	if err != nil || len(res) != 1 || res[0].Canon != "www.b.example" {
		t.Fatalf("%+v %v", res, err)
	}
	if got := strings.Join(take(), " "); got != "www.a.example. www.b.example." {
		t.Fatalf("asked %s", got)
	}
	// Two dots reach ndots: the name as given goes first.
	r.Getaddrinfo(context.Background(), &AddrinfoRequest{Host: ptr("x.y.z")})
	if got := strings.Join(take(), " "); got != "x.y.z. x.y.z.a.example. x.y.z.b.example." {
		t.Fatalf("asked %s", got)
	}
	// NODATA on the way is remembered: the answer is EAI_NODATA, not NONAME.
	_, err = r.Getaddrinfo(context.Background(), &AddrinfoRequest{Host: ptr("nodata")})
	if eaiOf(err) != EAI_NODATA {
		t.Fatalf("nodata: %v", err)
	}
	take()
	_, err = r.Getaddrinfo(context.Background(), &AddrinfoRequest{Host: ptr("nothing.example.")})
	if eaiOf(err) != EAI_NONAME {
		t.Fatalf("nxdomain: %v", err)
	}
	if got := strings.Join(take(), " "); got != "nothing.example." {
		t.Fatalf("trailing dot must stop the search list: %s", got)
	}
}

func TestCacheAndCoalescingAgainstServer(t *testing.T) {
	var queries atomic.Int32
	release := make(chan struct{})
	addr := countingServer(t, &queries, release)
	r := testResolver(t, "nameserver "+addr+"\n", "")
	const n = 50
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, err := r.LookupHost(context.Background(), "same.example."); err != nil {
				t.Error(err)
			}
		}()
	}
	for queries.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // give stragglers the chance to (wrongly) ask
	close(release)
	wg.Wait()
	if q := queries.Load(); q != 2 {
		t.Fatalf("%d lookups made %d queries, want 2 (A and AAAA)", n, q)
	}
	r.LookupHost(context.Background(), "same.example.")
	if q := queries.Load(); q != 2 {
		t.Fatalf("cached answer asked again: %d", q)
	}
	r.LookupHost(context.Background(), "nx.example.")
	r.LookupHost(context.Background(), "nx.example.")
	if q := queries.Load(); q != 4 {
		t.Fatalf("negative answer not cached: %d", q)
	}
	r.ClearCache()
	r.LookupHost(context.Background(), "same.example.")
	if q := queries.Load(); q != 6 {
		t.Fatalf("ClearCache: %d", q)
	}
}

package dns

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// udpServerFunc runs a bare UDP server on 127.0.0.1: saw (if not nil)
// sees each datagram's sender, handle each query that parses with a
// function that sends a datagram back to its sender (from any goroutine,
// at any time), so tests can answer as a well-behaved server never would.
func udpServerFunc(t *testing.T, saw func(net.Addr), handle func(q *mdns.Msg, send func([]byte))) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if saw != nil {
				saw(from)
			}
			q := new(mdns.Msg)
			if q.Unpack(buf[:n]) != nil {
				continue
			}
			handle(q, func(d []byte) { pc.WriteTo(d, from) })
		}
	}()
	return pc.LocalAddr().String()
}

// rawUDPServer answers each query with whatever datagrams send returns.
func rawUDPServer(t *testing.T, send func(q *mdns.Msg) [][]byte) string {
	t.Helper()
	return udpServerFunc(t, nil, func(q *mdns.Msg, out func([]byte)) {
		for _, d := range send(q) {
			out(d)
		}
	})
}

func mustPack(t *testing.T, m *mdns.Msg) []byte {
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestStrayAndForgedAnswersIgnored(t *testing.T) {
	addr := rawUDPServer(t, func(q *mdns.Msg) [][]byte {
		name, qt := q.Question[0].Name, q.Question[0].Qtype
		answer := func(id uint16, name string, qt uint16, ip string) []byte {
			m := new(mdns.Msg)
			m.SetQuestion(name, qt)
			m = reply(m)
			m.Id = id
			if qt == mdns.TypeA {
				m.Answer = []mdns.RR{rrA(name, ip, 60)}
			}
			return mustPack(t, m)
		}
		if qt != mdns.TypeA {
			return [][]byte{answer(q.Id, name, qt, "")}
		}
		return [][]byte{
			answer(q.Id+1, name, qt, "192.0.2.66"),           // another id
			answer(q.Id, "other.example.", qt, "192.0.2.67"), // another name
			answer(q.Id, name, mdns.TypeMX, ""),              // another type
			{1, 2, 3},                                        // garbage
			answer(q.Id, toUpper(name), qt, "192.0.2.1"),     // the answer, its name in other case
			answer(q.Id, name, qt, "192.0.2.68"),             // a second answer: too late
		}
	})
	r := New(Options{Nameservers: []string{addr}, Timeout: 2 * time.Second, Attempts: 1, NoHosts: true, NoCache: true})
	for i := 0; i < 20; i++ {
		addrs, _, err := r.LookupHost(context.Background(), fmt.Sprintf("h%d.example.", i))
		if err != nil || len(addrs) != 1 || addrs[0].String() != "192.0.2.1" {
			t.Fatalf("%v %v", addrs, err)
		}
	}
}

func toUpper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 32
		}
	}
	return string(b)
}

func TestRefusedPortFailsOverAtOnce(t *testing.T) {
	// A port nothing listens on: the ICMP port unreachable it draws must
	// move the query to the next server without waiting for the timeout.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := pc.LocalAddr().String()
	pc.Close()
	good := startServer(t, func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := reply(r)
		if r.Question[0].Qtype == mdns.TypeA {
			m.Answer = []mdns.RR{rrA(r.Question[0].Name, "192.0.2.9", 60)}
		}
		w.WriteMsg(m)
	})
	r := New(Options{Nameservers: []string{closed, good}, Timeout: 5 * time.Second, Attempts: 1, NoHosts: true, NoCache: true})
	for i := 0; i < 3; i++ {
		start := time.Now()
		addrs, _, err := r.LookupHost(context.Background(), fmt.Sprintf("r%d.example.", i))
		if err != nil || len(addrs) != 1 || addrs[0].String() != "192.0.2.9" {
			t.Fatalf("%v %v", addrs, err)
		}
		if el := time.Since(start); el > 2*time.Second {
			t.Fatalf("failover took %v", el)
		}
	}
}

func TestOversizedUDPAnswerAskedAgainOverTCP(t *testing.T) {
	// A UDP answer bigger than a read slot, without TC: the resolver
	// cannot see all of it, so it asks over TCP as for a truncated one.
	var udpSeen sync.Once
	sawUDP := make(chan struct{})
	addr := startServer(t, func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := reply(r)
		q := r.Question[0]
		if q.Qtype == mdns.TypeA {
			n := 300 // about 4.8 kB
			if w.RemoteAddr().Network() == "tcp" {
				n = 2
			} else {
				udpSeen.Do(func() { close(sawUDP) })
			}
			for i := 0; i < n; i++ {
				m.Answer = append(m.Answer, rrA(q.Name, fmt.Sprintf("10.1.%d.%d", i/250, i%250+1), 60))
			}
		}
		w.WriteMsg(m)
	})
	r := New(Options{Nameservers: []string{addr}, NoHosts: true, NoCache: true})
	addrs, _, err := r.LookupHost(context.Background(), "big.example.")
	if err != nil || len(addrs) != 2 {
		t.Fatalf("%v %v", len(addrs), err)
	}
	select {
	case <-sawUDP:
	default:
		t.Fatal("no UDP query was made")
	}
}

func TestShortTimeoutBehindLongOne(t *testing.T) {
	// The sockets to a server are shared by every resolver: a query with
	// a short timeout sent after one with a long timeout must still time
	// out on time.
	dead := blackhole(t)
	long := New(Options{Nameservers: []string{dead}, Timeout: 3 * time.Second, Attempts: 1, NoHosts: true})
	short := New(Options{Nameservers: []string{dead}, Timeout: 100 * time.Millisecond, Attempts: 1, NoHosts: true})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	longDone := make(chan error, 1)
	go func() { _, _, err := long.LookupHost(ctx, "long.example."); longDone <- err }()
	for i := 0; i < 2*socketsPerServer; i++ { // round robin: some share the long one's socket
		start := time.Now()
		if _, _, err := short.LookupHost(context.Background(), fmt.Sprintf("s%d.example.", i)); eaiOf(err) != EAI_AGAIN {
			t.Fatalf("got %v", err)
		}
		if el := time.Since(start); el > time.Second {
			t.Fatalf("a 100ms timeout took %v", el)
		}
	}
	cancel()
	<-longDone
}

func TestSourcePortChanges(t *testing.T) {
	var mu sync.Mutex
	ports := map[string]bool{}
	defer func(n int) { retireAfter = n }(retireAfter)
	retireAfter = 64
	seen := startServerFrom(t, func(from net.Addr) {
		mu.Lock()
		ports[from.String()] = true
		mu.Unlock()
	})
	r := New(Options{Nameservers: []string{seen}, NoHosts: true, NoCache: true})
	n := retireAfter * socketsPerServer // lookups, of two questions each
	for i := 0; i < n/32; i++ {
		var wg sync.WaitGroup
		for j := 0; j < 32; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, _, err := r.LookupHost(context.Background(), fmt.Sprintf("p%d-%d.example.", i, j)); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ports) < 2*socketsPerServer {
		t.Fatalf("%d source ports for %d lookups", len(ports), n)
	}
}

// startServerFrom is a UDP server answering every A query with one
// address and calling saw with each client address.
func startServerFrom(t *testing.T, saw func(net.Addr)) string {
	return udpServerFunc(t, saw, func(q *mdns.Msg, out func([]byte)) {
		m := reply(q)
		if q.Question[0].Qtype == mdns.TypeA {
			m.Answer = []mdns.RR{rrA(q.Question[0].Name, "192.0.2.1", 60)}
		}
		b, _ := m.Pack()
		out(b)
	})
}

func TestAnswersNeverCrossUnderTimeoutsAndCancels(t *testing.T) {
	// Batches and their channels are reused once every answer they waited
	// for arrived. Under lost, late and cancelled questions, no lookup may
	// ever see an answer meant for another.
	var mu sync.Mutex
	rng := uint32(1)
	next := func() uint32 { // a small LCG: the server's choices, not security
		mu.Lock()
		defer mu.Unlock()
		rng = rng*1664525 + 1013904223
		return rng >> 8
	}
	addrFor := func(name string) string {
		var n int
		fmt.Sscanf(name, "q%d.", &n)
		return fmt.Sprintf("10.%d.%d.1", n/256, n%256)
	}
	addr := udpServerFunc(t, nil, func(q *mdns.Msg, out func([]byte)) {
		m := reply(q)
		if q.Question[0].Qtype == mdns.TypeA {
			m.Answer = []mdns.RR{rrA(q.Question[0].Name, addrFor(q.Question[0].Name), 60)}
		}
		b := mustPack(t, m)
		switch c := next() % 10; {
		case c < 2: // lost
		case c < 4: // late, maybe after its try gave up, and twice
			time.AfterFunc(time.Duration(next()%60)*time.Millisecond, func() {
				out(b)
				out(b)
			})
		default:
			out(b)
		}
	})
	r := New(Options{Nameservers: []string{addr}, Timeout: 40 * time.Millisecond, Attempts: 2, NoHosts: true, NoCache: true})
	var wg sync.WaitGroup
	for g := 0; g < 50; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				name := fmt.Sprintf("q%d.example.", g*20+i)
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(next()%80)*time.Millisecond)
				addrs, _, err := r.LookupHost(ctx, name)
				cancel()
				if err == nil && (len(addrs) != 1 || addrs[0].String() != addrFor(name)) {
					t.Errorf("%s: got %v, want %s", name, addrs, addrFor(name))
				}
			}
		}()
	}
	wg.Wait()
}

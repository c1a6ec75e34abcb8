package dns

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	mdns "github.com/miekg/dns"
)

// startServer runs an in-process DNS server on 127.0.0.1 (UDP and TCP on
// the same port) and returns its address.
func startServer(t *testing.T, h mdns.HandlerFunc) string {
	t.Helper()
	var pc net.PacketConn
	var ln net.Listener
	for i := 0; ; i++ {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		if i > 20 {
			t.Fatal(err)
		}
	}
	udp := &mdns.Server{PacketConn: pc, Handler: h}
	tcp := &mdns.Server{Listener: ln, Handler: h}
	udpUp, tcpUp := make(chan struct{}), make(chan struct{})
	udp.NotifyStartedFunc = func() { close(udpUp) }
	tcp.NotifyStartedFunc = func() { close(tcpUp) }
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	<-udpUp
	<-tcpUp
	t.Cleanup(func() { udp.Shutdown(); tcp.Shutdown() })
	return pc.LocalAddr().String()
}

// countingServer starts a server that counts the questions it gets and,
// once release is closed (nil: at once), answers A with 192.0.2.9 for any
// name, NXDOMAIN for names that start with "nx" and NODATA for other
// types, with a 60 s TTL.
func countingServer(t *testing.T, queries *atomic.Int32, release <-chan struct{}) string {
	return startServer(t, func(w mdns.ResponseWriter, r *mdns.Msg) {
		queries.Add(1)
		if release != nil {
			<-release
		}
		q := r.Question[0]
		m := reply(r)
		switch {
		case strings.HasPrefix(q.Name, "nx"):
			m.Rcode = mdns.RcodeNameError
			m.Ns = []mdns.RR{soa(60)}
		case q.Qtype == mdns.TypeA:
			m.Answer = []mdns.RR{rrA(q.Name, "192.0.2.9", 60)}
		default:
			m.Ns = []mdns.RR{soa(60)}
		}
		w.WriteMsg(m)
	})
}

// blackhole is a UDP address that receives and never answers.
func blackhole(t *testing.T) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().String()
}

// testResolver writes a resolv.conf and hosts file and returns a resolver
// reading them.
func testResolver(t *testing.T, resolvConf, hosts string) *Resolver {
	t.Helper()
	dir := t.TempDir()
	rc := filepath.Join(dir, "resolv.conf")
	hf := filepath.Join(dir, "hosts")
	os.WriteFile(rc, []byte(resolvConf), 0o644)
	os.WriteFile(hf, []byte(hosts), 0o644)
	return New(Options{ResolvConfPath: rc, HostsPath: hf})
}

func rrA(name string, ip string, ttl uint32) mdns.RR {
	return &mdns.A{Hdr: mdns.RR_Header{Name: name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: ttl}, A: net.ParseIP(ip)}
}

func rrAAAA(name string, ip string, ttl uint32) mdns.RR {
	return &mdns.AAAA{Hdr: mdns.RR_Header{Name: name, Rrtype: mdns.TypeAAAA, Class: mdns.ClassINET, Ttl: ttl}, AAAA: net.ParseIP(ip)}
}

func soa(ttl uint32) mdns.RR {
	return &mdns.SOA{Hdr: mdns.RR_Header{Name: "example.", Rrtype: mdns.TypeSOA, Class: mdns.ClassINET, Ttl: ttl},
		Ns: "ns.example.", Mbox: "h.example.", Minttl: ttl}
}

func reply(r *mdns.Msg) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	return m
}

func asError(err error, e **Error) bool {
	v, ok := err.(*Error)
	if ok {
		*e = v
	}
	return ok
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

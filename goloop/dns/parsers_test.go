package dns

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func TestParseHosts(t *testing.T) {
	h := ParseHosts([]byte(`# comment
127.0.0.1	localhost
::1 localhost ip6-localhost # trailing comment
10.0.0.1 Multi.Example multi alias
10.0.0.2 multi
fe80::1%eth0 scoped
bogus line
300.1.1.1 badaddr
10.0.0.3
`))
	addrs, canon := h.Lookup("localhost", true, true)
	want := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")}
	if !reflect.DeepEqual(addrs, want) || canon != "localhost" {
		t.Fatalf("localhost: %v %q", addrs, canon)
	}
	if addrs, _ := h.Lookup("localhost", false, true); len(addrs) != 1 || !addrs[0].Is6() {
		t.Fatalf("v6 only: %v", addrs)
	}
	addrs, canon = h.Lookup("MULTI", true, false)
	if len(addrs) != 2 || canon != "Multi.Example" {
		t.Fatalf("case-insensitive multi-line: %v %q", addrs, canon)
	}
	for _, n := range []string{"scoped", "badaddr", "bogus", "line"} {
		if a, _ := h.Lookup(n, true, true); len(a) != 0 {
			t.Fatalf("%s should not resolve: %v", n, a)
		}
	}
	if n, ok := h.Reverse(netip.MustParseAddr("10.0.0.2")); !ok || n != "multi" {
		t.Fatalf("reverse: %q %v", n, ok)
	}
}

func TestParseResolvConf(t *testing.T) {
	c := ParseResolvConf([]byte(`
# comment
; other comment
nameserver 192.0.2.1
nameserver ::1
nameserver 127.0.0.1:5353
nameserver 192.0.2.4
nameserver not-an-ip
domain first.example
search a.example b.example.
options ndots:3 timeout:2 attempts:9 rotate edns0 single-request no-aaaa
options timeout:0 ndots:99
`))
	if want := []string{"192.0.2.1:53", "[::1]:53", "127.0.0.1:5353"}; !reflect.DeepEqual(c.Servers, want) {
		t.Fatalf("servers %v", c.Servers)
	}
	if want := []string{"a.example", "b.example"}; !reflect.DeepEqual(c.Search, want) {
		t.Fatalf("search %v", c.Search)
	}
	if c.Ndots != 15 || c.Timeout != time.Second || c.Attempts != 5 || !c.Rotate || !c.EDNS0 || !c.SingleRequest || !c.NoAAAA {
		t.Fatalf("options %+v", c)
	}
	c = ParseResolvConf([]byte("search x.example\ndomain y.example\n"))
	if !reflect.DeepEqual(c.Search, []string{"y.example"}) || !reflect.DeepEqual(c.Servers, []string{"127.0.0.1:53"}) {
		t.Fatalf("last of domain/search wins, default server: %+v", c)
	}
	if c.Ndots != 1 || c.Timeout != 5*time.Second || c.Attempts != 2 {
		t.Fatalf("defaults %+v", c)
	}
}

func TestParseServices(t *testing.T) {
	s := ParseServices([]byte(`
http		80/tcp		www		# WorldWideWeb HTTP
http		80/udp
domain		53/tcp
domain		53/udp
sctpthing	9999/sctp	alias1 alias2
broken		x/tcp
broken2		70000/tcp
noproto		12/
http-alt	80/tcp
`))
	if p, ok := s.Port("www", "tcp"); !ok || p != 80 {
		t.Fatalf("alias: %d %v", p, ok)
	}
	if p, ok := s.Port("alias2", "sctp"); !ok || p != 9999 {
		t.Fatalf("sctp alias: %d %v", p, ok)
	}
	if _, ok := s.Port("HTTP", "tcp"); ok {
		t.Fatal("service names are case sensitive")
	}
	for _, n := range []string{"broken", "broken2", "noproto"} {
		if _, ok := s.Port(n, "tcp"); ok {
			t.Fatalf("%s parsed", n)
		}
	}
	if n, ok := s.Name(80, "tcp"); !ok || n != "http" {
		t.Fatalf("first line wins for reverse: %q", n)
	}
}

func TestWatchedReload(t *testing.T) {
	p := filepath.Join(t.TempDir(), "hosts")
	os.WriteFile(p, []byte("10.0.0.1 one\n"), 0o644)
	w := newWatched(p, ParseHosts)
	w.recheck = 0
	if a, _ := w.get().Lookup("one", true, true); len(a) != 1 {
		t.Fatal("initial parse")
	}
	// Same size, so only the mtime (or inode, with rename) tells.
	os.WriteFile(p+".new", []byte("10.0.0.2 two\n"), 0o644)
	os.Rename(p+".new", p)
	if a, _ := w.get().Lookup("two", true, true); len(a) != 1 {
		t.Fatal("replaced file not re-read")
	}
	os.WriteFile(p, []byte("10.0.0.3 three\n10.0.0.4 four\n"), 0o644)
	if a, _ := w.get().Lookup("four", true, true); len(a) != 1 {
		t.Fatal("rewritten file not re-read")
	}
	os.Remove(p)
	if a, _ := w.get().Lookup("four", true, true); len(a) != 0 {
		t.Fatal("removed file still answers")
	}
}

func TestParseServiceNumber(t *testing.T) {
	cases := []struct {
		in  string
		num int32
		ok  bool
	}{
		{"80", 80, true}, {" 80", 80, true}, {"+80", 80, true}, {"-1", -1, true},
		{"80x", 0, false}, {"http", 0, false}, {"65536", 65536, true},
		{"4294967297", 1, true}, {"99999999999999999999999", -1, true}, {"", 0, true},
	}
	for _, c := range cases {
		n, ok := parseServiceNumber(c.in)
		if n != c.num || ok != c.ok {
			t.Errorf("%q: got %d %v want %d %v", c.in, n, ok, c.num, c.ok)
		}
	}
}

func TestInetAtonExact(t *testing.T) {
	good := map[string]string{
		"127.0.0.1": "127.0.0.1", "127.1": "127.0.0.1", "0x7f.1": "127.0.0.1",
		"017.0.0.1": "15.0.0.1", "1": "0.0.0.1", "1.2.3": "1.2.0.3", "4294967295": "255.255.255.255",
	}
	for in, want := range good {
		a, ok := parseInetAtonExact(in)
		if !ok || a.String() != want {
			t.Errorf("%q: %v %v", in, a, ok)
		}
	}
	for _, in := range []string{"", "1.2.3.4.5", "256.1.1.1", "1..2", "09", "1.2.3.256", "4294967296", "a.b", "1.2.3.4 "} {
		if a, ok := parseInetAtonExact(in); ok {
			t.Errorf("%q accepted as %v", in, a)
		}
	}
}

func TestCouldBeNumeric(t *testing.T) {
	for _, s := range []string{"127.0.0.1", "0x7f.1", "::1", "fe80::1%eth0", "deadbeef", "1"} {
		if !couldBeNumeric(s) {
			t.Errorf("%q", s)
		}
	}
	for _, s := range []string{"localhost", "n1.bench.example", "1.2.3.4 ", "a-b"} {
		if couldBeNumeric(s) {
			t.Errorf("%q", s)
		}
	}
}

func FuzzHosts(f *testing.F) {
	f.Add([]byte("127.0.0.1 localhost\n::1 localhost ip6-localhost\n"))
	f.Add([]byte("# c\n10.0.0.1 a b c # d\n\n\t\n"))
	f.Add([]byte("fe80::1%lo x\n300.0.0.1 y\n1.2.3.4"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h := ParseHosts(data)
		for name, idxs := range h.byName {
			addrs, canon := h.Lookup(name, true, true)
			if len(addrs) != len(idxs) || canon == "" {
				t.Fatalf("%q: %d addrs for %d lines, canon %q", name, len(addrs), len(idxs), canon)
			}
			for _, a := range addrs {
				if !a.IsValid() || a.Zone() != "" {
					t.Fatalf("bad addr %v", a)
				}
			}
		}
	})
}

func FuzzResolvConf(f *testing.F) {
	f.Add([]byte("nameserver 127.0.0.1\nsearch a b\noptions ndots:2 timeout:1 attempts:3 rotate\n"))
	f.Add([]byte("domain x\noptions ndots:-1 timeout:abc attempts:999999999999999999999\n"))
	f.Add([]byte("nameserver [::1]:53\nnameserver fe80::1%eth0\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c := ParseResolvConf(data)
		if len(c.Servers) == 0 || len(c.Servers) > maxNS {
			t.Fatalf("servers %v", c.Servers)
		}
		if c.Ndots < 0 || c.Ndots > maxNdots || c.Attempts < 1 || c.Attempts > maxAttempts ||
			c.Timeout < time.Second || c.Timeout > maxTimeout*time.Second {
			t.Fatalf("out of range %+v", c)
		}
		for _, s := range c.Servers {
			if _, err := netip.ParseAddrPort(s); err != nil {
				t.Fatalf("server %q: %v", s, err)
			}
		}
	})
}

func FuzzServices(f *testing.F) {
	f.Add([]byte("http 80/tcp www\nhttp 80/udp\n"))
	f.Add([]byte("x 1/ \n y /tcp\nz 99999/tcp\n# c\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := ParseServices(data)
		for k, p := range s.byName {
			if p < 0 || p > 65535 {
				t.Fatalf("%s -> %d", k, p)
			}
		}
		for k, n := range s.byPort {
			if n == "" {
				t.Fatalf("%s has no name", k)
			}
		}
	})
}

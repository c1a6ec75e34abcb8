package dns

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// The tests in this file run against a real server: Debian's unbound,
// started on 127.0.0.1 and a free port with a zone this file writes.

const testZone = `$ORIGIN example.
$TTL 300
@ IN SOA ns.example. admin.example. 1 3600 600 86400 30
@ IN NS ns.example.
ns IN A 127.0.0.1
both IN A 192.0.2.10
both IN AAAA 2001:db8::10
v4 IN A 192.0.2.11
v6 IN AAAA 2001:db8::11
c1 IN CNAME c2
c2 IN CNAME c3
c3 IN CNAME both
nodata IN TXT "only text"
mx IN MX 10 mail.example.
mx IN MX 20 mail2.example.
srv IN SRV 1 2 8080 both.example.
txt IN TXT "hello" "world"
`

func startUnbound(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("unbound")
	if err != nil {
		for _, p := range []string{"/usr/sbin/unbound", "/sbin/unbound"} {
			if _, e := os.Stat(p); e == nil {
				bin, err = p, nil
			}
		}
	}
	if err != nil {
		t.Skip("unbound binary not installed (apt-get install unbound)")
	}
	dir := t.TempDir()
	var zone strings.Builder
	zone.WriteString(testZone)
	for i := 0; i < 300; i++ {
		fmt.Fprintf(&zone, "h%d IN A 198.51.100.%d\n", i, i%250+1)
	}
	for i := 0; i < 120; i++ {
		fmt.Fprintf(&zone, "big IN A 203.0.113.%d\n", i+1)
	}
	os.WriteFile(filepath.Join(dir, "example.zone"), []byte(zone.String()), 0o644)
	os.WriteFile(filepath.Join(dir, "rev.zone"), []byte(`$ORIGIN 7.7.7.in-addr.arpa.
$TTL 300
@ IN SOA ns.example. admin.example. 1 3600 600 86400 30
@ IN NS ns.example.
1 IN PTR one.example.
`), 0o644)
	// A free port is only free until someone takes it: if unbound finds
	// it taken, start again on another.
	for try := 0; ; try++ {
		addr, err := runUnbound(t, bin, dir)
		if err == nil {
			return addr
		}
		if !strings.Contains(err.Error(), "already in use") || try == 4 {
			t.Fatal(err)
		}
	}
}

// runUnbound starts unbound on a free port with the zones in dir and
// waits until it answers.
func runUnbound(t testing.TB, bin, dir string) (string, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	pc.Close()
	conf := fmt.Sprintf(`server:
  interface: 127.0.0.1@%d
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "%s"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  rrset-roundrobin: no
  minimal-responses: yes
  num-threads: 1
  so-rcvbuf: 4m
  module-config: "iterator"
auth-zone:
  name: "example."
  zonefile: "%s/example.zone"
  for-downstream: yes
  for-upstream: yes
  fallback-enabled: no
auth-zone:
  name: "7.7.7.in-addr.arpa."
  zonefile: "%s/rev.zone"
  for-downstream: yes
  for-upstream: yes
  fallback-enabled: no
remote-control:
  control-enable: no
`, port, dir, dir, dir)
	cf := filepath.Join(dir, "unbound.conf")
	os.WriteFile(cf, []byte(conf), 0o644)
	logPath := filepath.Join(dir, fmt.Sprintf("unbound-%d.log", port))
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "-d", "-c", cf)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() { cmd.Process.Kill(); <-exited }
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	// Ready when it answers.
	deadline := time.Now().Add(10 * time.Second)
	for {
		m := new(mdns.Msg)
		m.SetQuestion("both.example.", mdns.TypeA)
		c := &mdns.Client{Timeout: 200 * time.Millisecond}
		if r, _, err := c.Exchange(m, addr); err == nil && len(r.Answer) == 1 {
			t.Cleanup(stop)
			return addr, nil
		}
		select {
		case <-exited:
			out, _ := os.ReadFile(logPath)
			return "", fmt.Errorf("unbound exited: %s", out)
		default:
		}
		if time.Now().After(deadline) {
			stop()
			out, _ := os.ReadFile(logPath)
			return "", fmt.Errorf("unbound did not come up: %s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestUnboundGetaddrinfo(t *testing.T) {
	addr := startUnbound(t)
	r := testResolver(t, "nameserver "+addr+"\nsearch example\noptions timeout:2 attempts:1\n", "127.0.0.1 localhost\n192.0.2.99 both.hosts\n")
	ctx := context.Background()
	gai := func(host string, family, flags int) ([]Addrinfo, error) {
		return r.Getaddrinfo(ctx, &AddrinfoRequest{Host: &host, Family: family, Flags: flags, Socktype: sockStream})
	}
	addrsOf := func(res []Addrinfo) string {
		var s []string
		for _, a := range res {
			s = append(s, a.Addr.String())
		}
		return strings.Join(s, " ")
	}

	res, err := gai("both", afUnspec, 0)
	if err != nil || len(res) != 2 {
		t.Fatalf("both: %v %v", res, err)
	}
	res, err = gai("c1.example", afUnspec, AI_CANONNAME)
	if err != nil || res[0].Canon != "both.example" {
		t.Fatalf("CNAME chain canon: %+v %v", res, err)
	}
	res, err = gai("v6", afInet, 0)
	if eaiOf(err) != EAI_NODATA {
		t.Fatalf("v6 as AF_INET: %v %v", res, err)
	}
	res, err = gai("v4", afInet6, AI_V4MAPPED)
	if err != nil || addrsOf(res) != "::ffff:192.0.2.11" {
		t.Fatalf("v4mapped: %v %v", res, err)
	}
	res, err = gai("both", afInet6, AI_V4MAPPED)
	if err != nil || addrsOf(res) != "2001:db8::10" {
		t.Fatalf("v4mapped with IPv6 present: %v %v", addrsOf(res), err)
	}
	res, err = gai("both", afInet6, AI_V4MAPPED|AI_ALL)
	if err != nil || len(res) != 2 {
		t.Fatalf("v4mapped|all: %v %v", addrsOf(res), err)
	}
	if _, err = gai("nodata", afUnspec, 0); eaiOf(err) != EAI_NODATA {
		t.Fatalf("nodata: %v", err)
	}
	if _, err = gai("missing.example.", afUnspec, 0); eaiOf(err) != EAI_NONAME {
		t.Fatalf("nxdomain: %v", err)
	}
	res, err = gai("big.example", afInet, 0)
	if err != nil || len(res) != 120 {
		t.Fatalf("large answer over TCP: %d %v", len(res), err)
	}
	res, err = gai("both.hosts", afUnspec, AI_CANONNAME)
	if err != nil || addrsOf(res) != "192.0.2.99" || res[0].Canon != "both.hosts" {
		t.Fatalf("hosts file first: %v %v", res, err)
	}
	for i := 0; i < 300; i += 37 {
		res, err = gai(fmt.Sprintf("h%d", i), afUnspec, 0)
		if err != nil || addrsOf(res) != fmt.Sprintf("198.51.100.%d", i%250+1) {
			t.Fatalf("h%d: %v %v", i, addrsOf(res), err)
		}
	}
}

func TestUnboundQueryAndReverse(t *testing.T) {
	addr := startUnbound(t)
	r := New(Options{Nameservers: []string{addr}, NoHosts: true, EDNS0: true})
	ctx := context.Background()
	recs, err := r.Query(ctx, "mx.example", mdns.TypeMX)
	if err != nil || len(recs) != 2 || recs[0].Host != "mail.example" || recs[0].Priority != 10 {
		t.Fatalf("MX %+v %v", recs, err)
	}
	recs, err = r.Query(ctx, "srv.example", mdns.TypeSRV)
	if err != nil || recs[0].Port != 8080 || recs[0].Weight != 2 || recs[0].Host != "both.example" {
		t.Fatalf("SRV %+v %v", recs, err)
	}
	recs, err = r.Query(ctx, "txt.example", mdns.TypeTXT)
	if err != nil || strings.Join(recs[0].Text, ",") != "hello,world" {
		t.Fatalf("TXT %+v %v", recs, err)
	}
	recs, err = r.Query(ctx, "c1.example", mdns.TypeCNAME)
	if err != nil || recs[0].Host != "c2.example" {
		t.Fatalf("CNAME %+v %v", recs, err)
	}
	recs, err = r.Query(ctx, "c1.example", mdns.TypeA)
	if err != nil || len(recs) != 1 || recs[0].Host != "192.0.2.10" {
		t.Fatalf("A through CNAME %+v %v", recs, err)
	}
	recs, err = r.Query(ctx, "example", mdns.TypeNS)
	if err != nil || recs[0].Host != "ns.example" {
		t.Fatalf("NS %+v %v", recs, err)
	}
	recs, err = r.Query(ctx, "1.7.7.7.in-addr.arpa", mdns.TypePTR)
	if err != nil || recs[0].Host != "one.example" {
		t.Fatalf("PTR %+v %v", recs, err)
	}
	var e *Error
	if _, err = r.Query(ctx, "nope.example", mdns.TypeA); !asError(err, &e) || e.Rcode != mdns.RcodeNameError {
		t.Fatalf("NXDOMAIN: %v", err)
	}
	if _, err = r.Query(ctx, "nodata.example", mdns.TypeA); !asError(err, &e) || e.Code != EAI_NODATA || e.Rcode != 0 {
		t.Fatalf("NODATA: %v", err)
	}
	r2 := testResolver(t, "nameserver "+addr+"\n", "")
	host, serv, err := r2.Getnameinfo(ctx, mustAddr("7.7.7.1"), 80, 0)
	if err != nil || host != "one.example" || serv != "http" {
		t.Fatalf("getnameinfo: %q %q %v", host, serv, err)
	}
	host, _, err = r2.Getnameinfo(ctx, mustAddr("7.7.7.2"), 80, 0)
	if err != nil || host != "" {
		t.Fatalf("no PTR: %q %v", host, err)
	}
	if _, _, err = r2.Getnameinfo(ctx, mustAddr("7.7.7.2"), 80, NI_NAMEREQD); eaiOf(err) != EAI_NONAME {
		t.Fatalf("NI_NAMEREQD: %v", err)
	}
}

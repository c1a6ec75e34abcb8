package dns

import (
	"bytes"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// ResolvConf is the part of resolv.conf(5) the resolver obeys, with glibc's
// defaults and limits.
type ResolvConf struct {
	Servers       []string // "addr:port"; at most maxNS, as glibc keeps
	Search        []string // without trailing dots
	Ndots         int
	Timeout       time.Duration // per try
	Attempts      int
	Rotate        bool
	EDNS0         bool
	SingleRequest bool // A then AAAA, not both at once
	UseVC         bool // TCP only
	NoAAAA        bool
}

const (
	maxNS       = 3
	maxDnsrch   = 6 // glibc 2.26+ has no limit, but a search list of 6 is plenty and glibc < 2.26 capped there
	maxNdots    = 15
	maxTimeout  = 30
	maxAttempts = 5
)

func defaultResolvConf() ResolvConf {
	return ResolvConf{Ndots: 1, Timeout: 5 * time.Second, Attempts: 2}
}

// ParseResolvConf parses resolv.conf text as glibc does: the last of
// "domain"/"search" wins, unknown lines and options are ignored, values are
// clamped to glibc's limits, no nameserver means 127.0.0.1, and with no
// search list the local domain (the host name's part after its first dot)
// is searched. A nameserver may carry a port ("[::1]:5353" or
// "127.0.0.1:5353"), which glibc does not read: that lets tests point the
// resolver at a server on a high port.
func ParseResolvConf(data []byte) ResolvConf {
	c := defaultResolvConf()
	searchSet := false
	for len(data) > 0 {
		var line []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			line, data = data, nil
		}
		if len(line) > 0 && (line[0] == '#' || line[0] == ';') {
			continue
		}
		f := strings.Fields(string(line))
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "nameserver":
			if len(f) > 1 && len(c.Servers) < maxNS {
				if s, ok := parseServer(f[1]); ok {
					c.Servers = append(c.Servers, s)
				}
			}
		case "domain":
			if len(f) > 1 {
				c.Search, searchSet = []string{strings.TrimSuffix(f[1], ".")}, true
			}
		case "search":
			c.Search, searchSet = nil, true
			for _, d := range f[1:] {
				if len(c.Search) >= maxDnsrch {
					break
				}
				if d = strings.TrimSuffix(d, "."); d != "" {
					c.Search = append(c.Search, d)
				}
			}
		case "options":
			for _, o := range f[1:] {
				c.applyOption(o)
			}
		}
	}
	if len(c.Servers) == 0 {
		c.Servers = []string{"127.0.0.1:53"}
	}
	if !searchSet {
		if h, err := os.Hostname(); err == nil {
			if i := strings.IndexByte(h, '.'); i >= 0 && i+1 < len(h) {
				c.Search = []string{strings.TrimSuffix(h[i+1:], ".")}
			}
		}
	}
	return c
}

// applyEnv applies LOCALDOMAIN and RES_OPTIONS, which glibc lets override
// the file.
func (c *ResolvConf) applyEnv() {
	if v, ok := os.LookupEnv("LOCALDOMAIN"); ok {
		c.Search = nil
		for _, d := range strings.Fields(v) {
			if len(c.Search) < maxDnsrch {
				c.Search = append(c.Search, strings.TrimSuffix(d, "."))
			}
		}
	}
	for _, o := range strings.Fields(os.Getenv("RES_OPTIONS")) {
		c.applyOption(o)
	}
}

func (c *ResolvConf) applyOption(o string) {
	num := func(prefix string, max int) (int, bool) {
		v, err := strconv.Atoi(o[len(prefix):])
		if err != nil || v < 0 {
			return 0, false
		}
		if v > max {
			v = max
		}
		return v, true
	}
	switch {
	case strings.HasPrefix(o, "ndots:"):
		if v, ok := num("ndots:", maxNdots); ok {
			c.Ndots = v
		}
	case strings.HasPrefix(o, "timeout:"):
		if v, ok := num("timeout:", maxTimeout); ok {
			if v < 1 {
				v = 1
			}
			c.Timeout = time.Duration(v) * time.Second
		}
	case strings.HasPrefix(o, "attempts:"):
		if v, ok := num("attempts:", maxAttempts); ok {
			if v < 1 {
				v = 1
			}
			c.Attempts = v
		}
	case o == "rotate":
		c.Rotate = true
	case o == "edns0":
		c.EDNS0 = true
	case o == "single-request", o == "single-request-reopen":
		c.SingleRequest = true
	case o == "use-vc":
		c.UseVC = true
	case o == "no-aaaa":
		c.NoAAAA = true
	}
}

// parseServer accepts an address, optionally with a port; addresses with a
// zone ("fe80::1%eth0") keep it.
func parseServer(s string) (string, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return net.JoinHostPort(a.String(), "53"), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.String(), true
	}
	return "", false
}

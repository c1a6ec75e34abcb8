package dns

import (
	"net/netip"
	"strings"
)

// hostsEntry is one address line of /etc/hosts.
type hostsEntry struct {
	addr  netip.Addr
	names []string // names[0] is the canonical name
}

// Hosts is a parsed /etc/hosts: lines in file order, indexed by lowercased
// name. glibc's files module walks the lines in order and returns every
// address whose line carries the name, so the index keeps line order.
type Hosts struct {
	entries []hostsEntry
	byName  map[string][]int
}

// ParseHosts parses hosts-file text. Lines whose address does not parse
// (including scoped IPv6 addresses, which glibc's files module rejects) are
// skipped, as glibc skips them.
func ParseHosts(data []byte) *Hosts {
	h := &Hosts{byName: map[string][]int{}}
	eachFields(data, func(f []string) {
		if len(f) < 2 {
			return
		}
		addr, err := netip.ParseAddr(f[0])
		if err != nil || addr.Zone() != "" {
			return
		}
		idx := len(h.entries)
		h.entries = append(h.entries, hostsEntry{addr: addr, names: f[1:]})
		seen := map[string]bool{}
		for _, n := range f[1:] {
			k := strings.ToLower(n)
			if seen[k] {
				continue
			}
			seen[k] = true
			h.byName[k] = append(h.byName[k], idx)
		}
	})
	return h
}

// Lookup returns the addresses of name in file order, restricted to the
// families asked for (want4, want6), and the canonical name of the first
// matching line.
func (h *Hosts) Lookup(name string, want4, want6 bool) (addrs []netip.Addr, canon string) {
	if h == nil {
		return nil, ""
	}
	for _, i := range h.byName[strings.ToLower(name)] {
		e := h.entries[i]
		a := e.addr
		if want4 && !want6 && a.Is6() {
			// An IPv4-only lookup (gethostbyname2_r(AF_INET)) reads IPv6
			// lines too: glibc turns mapped addresses into IPv4 ones and
			// ::1 into 127.0.0.1, and skips the rest.
			switch {
			case a.Is4In6():
				a = a.Unmap()
			case a == netip.IPv6Loopback():
				a = netip.AddrFrom4([4]byte{127, 0, 0, 1})
			default:
				continue
			}
		}
		is4 := a.Is4()
		if (is4 && !want4) || (!is4 && !want6) {
			continue
		}
		if canon == "" {
			canon = e.names[0]
		}
		addrs = append(addrs, a)
	}
	return addrs, canon
}

// Reverse returns the canonical name of the first line with addr.
func (h *Hosts) Reverse(addr netip.Addr) (string, bool) {
	if h == nil {
		return "", false
	}
	addr = addr.WithZone("")
	for _, e := range h.entries {
		if e.addr == addr {
			return e.names[0], true
		}
	}
	return "", false
}

package dns

import (
	"math/bits"
	"net"
	"net/netip"
	"sort"
	"sync"
	"syscall"
	"time"
)

// Destination address selection (RFC 3484/6724) the way glibc applies it
// with its built-in tables (Debian's /etc/gai.conf sets none): the source
// address the kernel would pick is found by connecting a UDP socket, and
// the rules run in glibc's order. Rules 3, 4 and 7 need interface flags
// glibc reads over netlink (deprecated, home address, tunnel); they are
// left out, which only matters on hosts with such addresses.

type prefixVal struct {
	prefix netip.Prefix
	val    int
}

var (
	precedenceTable = []prefixVal{
		{netip.MustParsePrefix("::1/128"), 50},
		{netip.MustParsePrefix("2002::/16"), 30},
		{netip.MustParsePrefix("::/96"), 20},
		{netip.MustParsePrefix("::ffff:0:0/96"), 10},
		{netip.MustParsePrefix("::/0"), 40},
	}
	labelTable = []prefixVal{
		{netip.MustParsePrefix("::1/128"), 0},
		{netip.MustParsePrefix("2002::/16"), 2},
		{netip.MustParsePrefix("::/96"), 3},
		{netip.MustParsePrefix("::ffff:0:0/96"), 4},
		{netip.MustParsePrefix("fec0::/10"), 5},
		{netip.MustParsePrefix("fc00::/7"), 6},
		{netip.MustParsePrefix("2001::/32"), 7},
		{netip.MustParsePrefix("::/0"), 1},
	}
)

func lookupTable(t []prefixVal, a netip.Addr) int {
	a16 := netip.AddrFrom16(a.As16())
	for _, e := range t {
		if e.prefix.Contains(a16) {
			return e.val
		}
	}
	return 0
}

// scopeOf is glibc's get_scope.
func scopeOf(a netip.Addr) int {
	if a.Is4() {
		b := a.As4()
		switch {
		case b[0] == 169 && b[1] == 254, b[0] == 127:
			return 2
		}
		return 14
	}
	b := a.As16()
	if b[0] == 0xff {
		return int(b[1] & 0xf)
	}
	switch {
	case a.IsLinkLocalUnicast() || a == netip.IPv6Loopback():
		return 2
	case b[0] == 0xfe && b[1]&0xc0 == 0xc0:
		return 5
	}
	return 14
}

type sortEntry struct {
	dst       netip.Addr
	src       netip.Addr
	gotSrc    bool
	prefixlen int
	idx       int
}

// sourceFor asks the kernel which source address it would use for dst.
func sourceFor(dst netip.Addr) (netip.Addr, bool) {
	var fd int
	var err error
	var sa syscall.Sockaddr
	if dst.Is4() {
		fd, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
		sa = &syscall.SockaddrInet4{Port: 9, Addr: dst.As4()}
	} else {
		fd, err = syscall.Socket(syscall.AF_INET6, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
		sa = &syscall.SockaddrInet6{Port: 9, Addr: dst.As16()}
	}
	if err != nil {
		return netip.Addr{}, false
	}
	defer syscall.Close(fd)
	if err := syscall.Connect(fd, sa); err != nil {
		return netip.Addr{}, false
	}
	got, err := syscall.Getsockname(fd)
	if err != nil {
		return netip.Addr{}, false
	}
	switch s := got.(type) {
	case *syscall.SockaddrInet4:
		return netip.AddrFrom4(s.Addr), true
	case *syscall.SockaddrInet6:
		return netip.AddrFrom16(s.Addr), true
	}
	return netip.Addr{}, false
}

// ifacePrefixes maps local IPv4 addresses to their prefix length, read at
// most once a second.
var ifaceCache struct {
	sync.Mutex
	at  time.Time
	pfx map[netip.Addr]int
}

func ipv4PrefixLen(a netip.Addr) int {
	if a.As4()[0] == 127 {
		// glibc looks loopback sources up as 127.0.0.1.
		a = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	ifaceCache.Lock()
	defer ifaceCache.Unlock()
	if ifaceCache.pfx == nil || time.Since(ifaceCache.at) > time.Second {
		ifaceCache.pfx = map[netip.Addr]int{}
		ifaceCache.at = time.Now()
		if ias, err := net.InterfaceAddrs(); err == nil {
			for _, ia := range ias {
				if ipn, ok := ia.(*net.IPNet); ok {
					if ip4 := ipn.IP.To4(); ip4 != nil {
						ones, _ := ipn.Mask.Size()
						ifaceCache.pfx[netip.AddrFrom4([4]byte(ip4))] = ones
					}
				}
			}
		}
	}
	return ifaceCache.pfx[a]
}

func sortRFC6724(addrs []netip.Addr) []netip.Addr {
	es := make([]sortEntry, len(addrs))
	for i, a := range addrs {
		es[i] = sortEntry{dst: a, idx: i}
		if i > 0 && addrs[i-1] == a {
			es[i].src, es[i].gotSrc, es[i].prefixlen = es[i-1].src, es[i-1].gotSrc, es[i-1].prefixlen
			continue
		}
		if src, ok := sourceFor(a); ok {
			es[i].src, es[i].gotSrc = src, true
			if a.Is4() && src.Is4() {
				es[i].prefixlen = ipv4PrefixLen(src)
			}
		}
	}
	sort.SliceStable(es, func(i, j int) bool { return prefer(&es[i], &es[j]) < 0 })
	out := make([]netip.Addr, len(es))
	for i, e := range es {
		out[i] = e.dst
	}
	return out
}

// prefer is glibc's rfc3484_sort comparison (negative: a1 first).
func prefer(a1, a2 *sortEntry) int {
	// Rule 1: avoid unusable destinations.
	if a1.gotSrc != a2.gotSrc {
		if a1.gotSrc {
			return -1
		}
		return 1
	}
	// Rule 2: prefer matching scope.
	s1, s2 := scopeOf(a1.dst), scopeOf(a2.dst)
	if a1.gotSrc {
		m1, m2 := s1 == scopeOf(a1.src), s2 == scopeOf(a2.src)
		if m1 && !m2 {
			return -1
		}
		if !m1 && m2 {
			return 1
		}
	}
	// Rule 5: prefer matching label.
	if a1.gotSrc {
		m1 := lookupTable(labelTable, a1.dst) == lookupTable(labelTable, a1.src)
		m2 := lookupTable(labelTable, a2.dst) == lookupTable(labelTable, a2.src)
		if m1 && !m2 {
			return -1
		}
		if !m1 && m2 {
			return 1
		}
	}
	// Rule 6: prefer higher precedence.
	p1, p2 := lookupTable(precedenceTable, a1.dst), lookupTable(precedenceTable, a2.dst)
	if p1 != p2 {
		if p1 > p2 {
			return -1
		}
		return 1
	}
	// Rule 8: prefer smaller scope.
	if s1 != s2 {
		if s1 < s2 {
			return -1
		}
		return 1
	}
	// Rule 9: longest matching prefix, for IPv4 only inside the source's
	// subnet, for IPv6 within the first 32-bit word that differs.
	if a1.gotSrc && a1.dst.Is4() == a2.dst.Is4() {
		b1, b2 := 0, 0
		if a1.dst.Is4() {
			b1, b2 = prefixBits4(a1), prefixBits4(a2)
		} else {
			d1, s1b, d2, s2b := a1.dst.As16(), a1.src.As16(), a2.dst.As16(), a2.src.As16()
			for w := 0; w < 4; w++ {
				x1 := word(d1, w) ^ word(s1b, w)
				x2 := word(d2, w) ^ word(s2b, w)
				if x1 != 0 || x2 != 0 {
					b1, b2 = bits.LeadingZeros32(x1), bits.LeadingZeros32(x2)
					break
				}
			}
		}
		if b1 != b2 {
			if b1 > b2 {
				return -1
			}
			return 1
		}
	}
	// Rule 10: keep the order.
	return 0
}

func word(b [16]byte, w int) uint32 {
	return uint32(b[4*w])<<24 | uint32(b[4*w+1])<<16 | uint32(b[4*w+2])<<8 | uint32(b[4*w+3])
}

func prefixBits4(e *sortEntry) int {
	d, s := e.dst.As4(), e.src.As4()
	dv := uint32(d[0])<<24 | uint32(d[1])<<16 | uint32(d[2])<<8 | uint32(d[3])
	sv := uint32(s[0])<<24 | uint32(s[1])<<16 | uint32(s[2])<<8 | uint32(s[3])
	// glibc shifts by 32 - prefixlen; with no prefix known that is a shift
	// by 32, which x86 reduces to 0: the mask is then all ones.
	mask := ^uint32(0)
	if e.prefixlen > 0 {
		mask = ^uint32(0) << (32 - e.prefixlen)
	}
	if sv&mask == dv&mask {
		return bits.LeadingZeros32(dv ^ sv)
	}
	return 0
}

package dns

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Linux values of the constants getaddrinfo speaks in.
const (
	afUnspec = 0
	afInet   = 2
	afInet6  = 10

	sockStream    = 1
	sockDgram     = 2
	sockRaw       = 3
	sockSeqpacket = 5
	sockDccp      = 6

	ipprotoTCP     = 6
	ipprotoUDP     = 17
	ipprotoDCCP    = 33
	ipprotoSCTP    = 132
	ipprotoUDPLite = 136

	AI_PASSIVE      = 0x1
	AI_CANONNAME    = 0x2
	AI_NUMERICHOST  = 0x4
	AI_V4MAPPED     = 0x8
	AI_ALL          = 0x10
	AI_ADDRCONFIG   = 0x20
	AI_IDN          = 0x40
	AI_CANONIDN     = 0x80
	aiDeprecatedIDN = 0x100 | 0x200 // AI_IDN_ALLOW_UNASSIGNED, AI_IDN_USE_STD3_ASCII_RULES
	AI_NUMERICSERV  = 0x400
	aiKnownFlags    = AI_PASSIVE | AI_CANONNAME | AI_NUMERICHOST | AI_V4MAPPED | AI_ALL | AI_ADDRCONFIG | AI_IDN | AI_CANONIDN | aiDeprecatedIDN | AI_NUMERICSERV
)

// typeProto is one row of the table of socket types getaddrinfo knows,
// in glibc's order, which is the order results come out in.
type typeProto struct {
	socktype, protocol int
	protoAny, noServ   bool // protocol taken from the hints; no service allowed
	byDefault          bool // returned when the hints name no type
	name               string
}

var typeProtos = []typeProto{
	{sockStream, ipprotoTCP, false, false, true, "tcp"},
	{sockDgram, ipprotoUDP, false, false, true, "udp"},
	{sockDccp, ipprotoDCCP, false, false, false, "dccp"},
	{sockDgram, ipprotoUDPLite, false, false, false, "udplite"},
	{sockStream, ipprotoSCTP, false, false, false, "sctp"},
	{sockSeqpacket, ipprotoSCTP, false, false, false, "sctp"},
	{sockRaw, 0, true, true, true, "raw"},
}

// AddrinfoRequest is getaddrinfo's arguments. Host and Service are nil
// for a NULL pointer.
type AddrinfoRequest struct {
	Host     *string `json:"host"`
	Service  *string `json:"service"`
	Family   int     `json:"family"`
	Socktype int     `json:"type"`
	Proto    int     `json:"proto"`
	Flags    int     `json:"flags"`
}

// Addrinfo is one result, in the shape of Python's 5-tuple.
type Addrinfo struct {
	Family, Socktype, Proto int
	Canon                   string
	Addr                    netip.Addr
	Port                    int
	Scope                   uint32
}

type servTuple struct{ socktype, protocol, port int }

// parseServiceNumber is strtoul(s, &end, 10) truncated to a C int, as
// glibc reads the service: ok is false when characters follow the number.
func parseServiceNumber(s string) (num int32, ok bool) {
	i := 0
	for i < len(s) && isCSpace(s[i]) {
		i++
	}
	neg := false
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		neg = s[i] == '-'
		i++
	}
	start := i
	var v uint64
	overflow := false
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		d := uint64(s[i] - '0')
		if v > (1<<64-1-d)/10 {
			overflow = true
		}
		v = v*10 + d
		i++
	}
	if i == start {
		// No digits: strtoul leaves the end at the very start.
		return 0, len(s) == 0
	}
	if i != len(s) {
		return 0, false
	}
	if overflow {
		v = 1<<64 - 1
	} else if neg {
		v = -v
	}
	return int32(uint32(v)), true
}

func isCSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

// servTuples is glibc's get_servtuples: which (type, protocol, port)
// triples every address is paired with.
func (r *Resolver) servTuples(service *string, req *AddrinfoRequest, num int32) ([]servTuple, *Error) {
	tp := -1 // index of the row the hints select; -1: none named
	if req.Proto != 0 || req.Socktype != 0 {
		for i, t := range typeProtos {
			if (req.Socktype == 0 || req.Socktype == t.socktype) &&
				(req.Proto == 0 || t.protoAny || req.Proto == t.protocol) {
				tp = i
				break
			}
		}
		if tp < 0 {
			if req.Socktype != 0 {
				return nil, gaiError(EAI_SOCKTYPE)
			}
			return nil, gaiError(EAI_SERVICE)
		}
	}
	protoOf := func(t typeProto) int {
		if t.protoAny {
			return req.Proto
		}
		return t.protocol
	}
	if service != nil && tp >= 0 && typeProtos[tp].noServ {
		return nil, gaiError(EAI_SERVICE)
	}
	if service == nil || num >= 0 {
		port := 0
		if service != nil {
			port = int(uint16(num))
		}
		if tp >= 0 {
			t := typeProtos[tp]
			return []servTuple{{t.socktype, protoOf(t), port}}, nil
		}
		var out []servTuple
		for _, t := range typeProtos {
			if t.byDefault {
				out = append(out, servTuple{t.socktype, t.protocol, port})
			}
		}
		return out, nil
	}
	svcs := r.services.get()
	if tp >= 0 {
		t := typeProtos[tp]
		p, ok := svcs.Port(*service, t.name)
		if !ok {
			return nil, gaiError(EAI_SERVICE)
		}
		return []servTuple{{t.socktype, protoOf(t), p}}, nil
	}
	var out []servTuple
	for _, t := range typeProtos {
		if t.noServ {
			continue
		}
		if p, ok := svcs.Port(*service, t.name); ok {
			out = append(out, servTuple{t.socktype, protoOf(t), p})
		}
	}
	if len(out) == 0 {
		return nil, gaiError(EAI_SERVICE)
	}
	return out, nil
}

// parseInetAtonExact accepts what glibc's __inet_aton_exact accepts: one
// to four parts, each decimal, octal (leading 0) or hex (0x), the last
// part filling the remaining bytes.
func parseInetAtonExact(s string) (netip.Addr, bool) {
	if s == "" {
		return netip.Addr{}, false
	}
	parts := strings.Split(s, ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	vals := make([]uint64, len(parts))
	for i, p := range parts {
		if p == "" {
			return netip.Addr{}, false
		}
		base := 10
		switch {
		case len(p) > 1 && (p[:2] == "0x" || p[:2] == "0X"):
			base, p = 16, p[2:]
			if p == "" {
				// "0x" alone reads as zero in inet_aton.
				p = "0"
			}
		case len(p) > 1 && p[0] == '0':
			base, p = 8, p[1:]
		}
		v, err := strconv.ParseUint(p, base, 32)
		if err != nil {
			return netip.Addr{}, false
		}
		vals[i] = v
	}
	var out uint32
	last := len(vals) - 1
	for i := 0; i < last; i++ {
		if vals[i] > 0xff {
			return netip.Addr{}, false
		}
		out |= uint32(vals[i]) << (24 - 8*i)
	}
	if max := uint64(1)<<(32-8*last) - 1; vals[last] > max {
		return netip.Addr{}, false
	}
	out |= uint32(vals[last])
	return netip.AddrFrom4([4]byte{byte(out >> 24), byte(out >> 16), byte(out >> 8), byte(out)}), true
}

// couldBeNumeric is false for names no address parser would accept: no
// colon (IPv6) and a character outside inet_aton's digits, hex and dots.
// It spares the common case two failing parses.
func couldBeNumeric(name string) bool {
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f', c >= 'A' && c <= 'F', c == 'x', c == 'X', c == '.':
		case c == ':':
			return true
		default:
			return false
		}
	}
	return true
}

// numericHost is glibc's text_to_binary_address. handled is false when
// name is not numeric and a lookup must follow.
func numericHost(name string, req *AddrinfoRequest) (addrs []netip.Addr, scope uint32, handled bool, err *Error) {
	if !couldBeNumeric(name) {
		if req.Flags&AI_NUMERICHOST != 0 {
			return nil, 0, true, gaiError(EAI_NONAME)
		}
		return nil, 0, false, nil
	}
	if a, ok := parseInetAtonExact(name); ok {
		switch {
		case req.Family == afUnspec || req.Family == afInet:
			return []netip.Addr{a}, 0, true, nil
		case req.Family == afInet6 && req.Flags&AI_V4MAPPED != 0:
			return []netip.Addr{netip.AddrFrom16(a.As16())}, 0, true, nil
		}
		return nil, 0, true, gaiError(EAI_ADDRFAMILY)
	}
	host, zone, hasZone := strings.Cut(name, "%")
	if a, err := netip.ParseAddr(host); err == nil && a.Is6() && a.Zone() == "" {
		switch {
		case req.Family == afUnspec || req.Family == afInet6:
		case req.Family == afInet && a.Is4In6():
			a = a.Unmap()
		default:
			return nil, 0, true, gaiError(EAI_ADDRFAMILY)
		}
		if hasZone {
			id, ok := scopeID(a, zone)
			if !ok {
				return nil, 0, true, gaiError(EAI_NONAME)
			}
			scope = id
		}
		return []netip.Addr{a}, scope, true, nil
	}
	if req.Flags&AI_NUMERICHOST != 0 {
		return nil, 0, true, gaiError(EAI_NONAME)
	}
	return nil, 0, false, nil
}

// scopeID reads an IPv6 zone: an interface name for link-local addresses,
// else (or failing that) a decimal number.
func scopeID(a netip.Addr, zone string) (uint32, bool) {
	if a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() {
		if ifi, err := net.InterfaceByName(zone); err == nil {
			return uint32(ifi.Index), true
		}
	}
	if zone == "" {
		return 0, false
	}
	v, err := strconv.ParseUint(zone, 10, 32)
	if err != nil {
		return 0, false
	}
	return uint32(v), true
}

// Getaddrinfo answers as glibc's getaddrinfo would on this machine.
func (r *Resolver) Getaddrinfo(ctx context.Context, req *AddrinfoRequest) ([]Addrinfo, error) {
	host, service := req.Host, req.Service
	if host != nil && *host == "*" {
		host = nil
	}
	if service != nil && *service == "*" {
		service = nil
	}
	if host == nil && service == nil {
		return nil, gaiError(EAI_NONAME)
	}
	if req.Flags&^aiKnownFlags != 0 || (req.Flags&AI_CANONNAME != 0 && host == nil) {
		return nil, gaiError(EAI_BADFLAGS)
	}
	if req.Family != afUnspec && req.Family != afInet && req.Family != afInet6 {
		return nil, gaiError(EAI_FAMILY)
	}
	eff := *req
	if req.Flags&AI_ADDRCONFIG != 0 {
		seen4, seen6 := seenFamilies()
		if eff.Family == afUnspec && (seen4 || seen6) {
			if seen4 != seen6 {
				eff.Family = afInet6
				if seen4 {
					eff.Family = afInet
				}
			}
		} else if (eff.Family == afInet && !seen4) || (eff.Family == afInet6 && !seen6) {
			return nil, gaiError(EAI_NONAME)
		}
	}
	var num int32
	if service != nil && *service != "" {
		n, ok := parseServiceNumber(*service)
		if !ok {
			if eff.Flags&AI_NUMERICSERV != 0 {
				return nil, gaiError(EAI_NONAME)
			}
			n = -1
		}
		num = n
	} else {
		service = nil
	}
	st, gerr := r.servTuples(service, &eff, num)
	if gerr != nil {
		return nil, gerr
	}

	var addrs []netip.Addr
	var scope uint32
	var canon string
	gotIPv6 := false
	switch {
	case host == nil:
		if eff.Family == afUnspec || eff.Family == afInet6 {
			a := netip.IPv6Unspecified()
			if eff.Flags&AI_PASSIVE == 0 {
				a = netip.IPv6Loopback()
			}
			addrs = append(addrs, a)
		}
		if eff.Family == afUnspec || eff.Family == afInet {
			a := netip.IPv4Unspecified()
			if eff.Flags&AI_PASSIVE == 0 {
				a = netip.AddrFrom4([4]byte{127, 0, 0, 1})
			}
			addrs = append(addrs, a)
		}
	default:
		a, sc, handled, herr := numericHost(*host, &eff)
		if herr != nil {
			return nil, herr
		}
		if handled {
			addrs, scope = a, sc
			if eff.Flags&AI_CANONNAME != 0 {
				canon = *host
			}
			break
		}
		var lerr *Error
		addrs, canon, gotIPv6, lerr = r.resolveName(ctx, *host, &eff)
		if lerr != nil {
			return nil, lerr
		}
		if eff.Flags&AI_CANONNAME != 0 && canon == "" {
			canon = *host
		}
	}

	// Drop mapped addresses when real IPv6 ones were found, unless AI_ALL.
	if gotIPv6 && eff.Flags&(AI_V4MAPPED|AI_ALL) == AI_V4MAPPED {
		kept := addrs[:0]
		for _, a := range addrs {
			if !a.Is4In6() {
				kept = append(kept, a)
			}
		}
		addrs = kept
	}
	if len(addrs) > 1 {
		addrs = sortRFC6724(addrs)
	}
	out := make([]Addrinfo, 0, len(addrs)*len(st))
	for _, a := range addrs {
		fam := afInet
		if a.Is6() {
			fam = afInet6
		}
		for _, s := range st {
			ai := Addrinfo{Family: fam, Socktype: s.socktype, Proto: s.protocol, Addr: a, Port: s.port}
			if fam == afInet6 {
				ai.Scope = scope
			}
			if len(out) == 0 && eff.Flags&AI_CANONNAME != 0 {
				ai.Canon = canon
			}
			out = append(out, ai)
		}
	}
	if len(out) == 0 {
		return nil, gaiError(EAI_NONAME)
	}
	return out, nil
}

// resolveName is glibc's lookup of a non-numeric name: the families the
// request wants, with IPv4 answers mapped into IPv6 for AI_V4MAPPED.
func (r *Resolver) resolveName(ctx context.Context, name string, req *AddrinfoRequest) (addrs []netip.Addr, canon string, gotIPv6 bool, err *Error) {
	conf := r.Config()
	switch req.Family {
	case afUnspec:
		res := r.lookupFamilies(ctx, &conf, name, true, true)
		if res.oc != found {
			return nil, "", false, outcomeError(res.oc, res.oc, name)
		}
		return res.addrs, res.canon, false, nil
	case afInet:
		res := r.lookupFamilies(ctx, &conf, name, true, false)
		if res.oc == noaddr && req.Flags&AI_CANONNAME == 0 {
			// Without AI_CANONNAME glibc asks through the public
			// gethostbyname2_r, which reports an answer without
			// addresses as NO_DATA, where the NSS entry points used
			// otherwise say HOST_NOT_FOUND.
			return nil, "", false, &Error{Code: EAI_NODATA, Rcode: 0, Name: name}
		}
		if res.oc != found {
			return nil, "", false, outcomeError(res.oc, res.oc, name)
		}
		return res.addrs, res.canon, false, nil
	}
	// AF_INET6: IPv6 first; IPv4 mapped too with AI_V4MAPPED when there
	// was no IPv6 answer, or always with AI_ALL. As in glibc, each source
	// of the chain is asked for both before the next source is tried.
	mapped := req.Flags&AI_V4MAPPED != 0
	try := func(src func(v4, v6 bool) famResult) (famResult, famResult, bool) {
		r6 := src(false, true)
		r4 := famResult{oc: r6.oc}
		if mapped && (req.Flags&AI_ALL != 0 || r6.oc != found) {
			r4 = src(true, false)
		}
		return r6, r4, r6.oc == found || (mapped && r4.oc == found)
	}
	files := func(v4, v6 bool) famResult { return r.lookupFiles(name, v4, v6) }
	dnsSrc := func(v4, v6 bool) famResult {
		var qt []uint16
		if v4 {
			qt = []uint16{1} // A
		} else if !conf.NoAAAA {
			qt = []uint16{28} // AAAA
		} else {
			return famResult{oc: nodata}
		}
		return r.lookupDNS(ctx, &conf, name, qt)
	}
	r6, r4, ok := try(files)
	if !ok {
		r6, r4, ok = try(dnsSrc)
	}
	if !ok {
		return nil, "", false, outcomeError(r6.oc, r4.oc, name)
	}
	if r6.oc == found {
		addrs = append(addrs, r6.addrs...)
		canon = r6.canon
		gotIPv6 = true
	}
	if mapped && r4.oc == found && r4.addrs != nil {
		for _, a := range r4.addrs {
			addrs = append(addrs, netip.AddrFrom16(a.As16()))
		}
		if canon == "" {
			canon = r4.canon
		}
		if req.Flags&AI_ALL != 0 {
			// glibc records the family of the last conversion.
			gotIPv6 = false
		}
	}
	return addrs, canon, gotIPv6, nil
}

// seenFamilies is glibc's __check_pf for AI_ADDRCONFIG: does the machine
// have an IPv4 address other than 127.0.0.1, an IPv6 one other than ::1.
func seenFamilies() (seen4, seen6 bool) {
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return true, true
	}
	for _, ia := range ifaddrs {
		ipn, ok := ia.(*net.IPNet)
		if !ok {
			continue
		}
		a, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		if a.Is4() {
			if a != netip.AddrFrom4([4]byte{127, 0, 0, 1}) {
				seen4 = true
			}
		} else if a != netip.IPv6Loopback() {
			seen6 = true
		}
	}
	return seen4, seen6
}

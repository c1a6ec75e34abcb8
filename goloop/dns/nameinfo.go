package dns

import (
	"context"
	"net/netip"
	"strconv"
	"strings"

	mdns "github.com/miekg/dns"
)

// getnameinfo flags (glibc values).
const (
	NI_NUMERICHOST = 1
	NI_NUMERICSERV = 2
	NI_NOFQDN      = 4
	NI_NAMEREQD    = 8
	NI_DGRAM       = 16
)

// Getnameinfo is glibc's getnameinfo for an address already parsed:
// host is the name found (files, then a PTR query), or "" when none was
// found and NI_NAMEREQD was not given; serv is the service name for port,
// or the number.
func (r *Resolver) Getnameinfo(ctx context.Context, addr netip.Addr, port int, flags int) (host, serv string, err error) {
	if flags&NI_NUMERICHOST == 0 {
		name, herr := r.reverse(ctx, addr)
		if herr != nil && herr.Code == EAI_AGAIN && flags&NI_NAMEREQD != 0 {
			return "", "", herr
		}
		if name != "" && flags&NI_NOFQDN != 0 {
			if h, err := hostname(); err == nil {
				if i := strings.IndexByte(h, '.'); i >= 0 {
					dom := h[i+1:]
					if j := strings.IndexByte(name, '.'); j >= 0 && strings.EqualFold(name[j+1:], dom) {
						name = name[:j]
					}
				}
			}
		}
		host = name
	}
	if host == "" && flags&NI_NAMEREQD != 0 {
		return "", "", gaiError(EAI_NONAME)
	}
	serv = strconv.Itoa(port)
	if flags&NI_NUMERICSERV == 0 {
		proto := "tcp"
		if flags&NI_DGRAM != 0 {
			proto = "udp"
		}
		if n, ok := r.services.get().Name(port, proto); ok {
			serv = n
		}
	}
	return host, serv, nil
}

// reverse finds a name for addr: the hosts file first, then a PTR query.
func (r *Resolver) reverse(ctx context.Context, addr netip.Addr) (string, *Error) {
	if !r.opts.NoHosts {
		if name, ok := r.hosts.get().Reverse(addr); ok {
			return name, nil
		}
	}
	arpa, err := mdns.ReverseAddr(addr.Unmap().WithZone("").String())
	if err != nil {
		return "", nil
	}
	conf := r.Config()
	resp, xerr := r.Exchange(ctx, &conf, arpa, mdns.TypePTR)
	if xerr != nil {
		return "", &Error{Code: EAI_AGAIN, Rcode: -1}
	}
	name := firstPTR(resp, arpa)
	return trimDot(name), nil
}

func firstPTR(resp *mdns.Msg, qname string) string {
	cur := qname
	for hops := 0; hops <= len(resp.Answer); hops++ {
		next := ""
		for _, rr := range resp.Answer {
			if !strings.EqualFold(rr.Header().Name, cur) {
				continue
			}
			switch v := rr.(type) {
			case *mdns.PTR:
				return v.Ptr
			case *mdns.CNAME:
				next = v.Target
			}
		}
		if next == "" {
			return ""
		}
		cur = next
	}
	return ""
}

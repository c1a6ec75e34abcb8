package dns

import (
	"context"
	"net"
	"net/netip"
	"strings"

	mdns "github.com/miekg/dns"
)

// famResult is what one source (files or dns) says about one name for the
// families asked.
type famResult struct {
	addrs []netip.Addr
	canon string
	oc    outcome
}

// lookupFiles consults the hosts file.
func (r *Resolver) lookupFiles(name string, want4, want6 bool) famResult {
	if r.opts.NoHosts {
		return famResult{oc: nxdomain}
	}
	addrs, canon := r.hosts.get().Lookup(name, want4, want6)
	if len(addrs) == 0 {
		return famResult{oc: nxdomain}
	}
	return famResult{addrs: addrs, canon: canon, oc: found}
}

// lookupDNS is glibc's res_nsearch over the search list, asking the
// given types of each candidate name (at once, unless single-request says
// one after the other). A name with at least ndots dots is asked as given
// first, and if that fails, its failure is the one reported whatever the
// search list gives; otherwise the search list goes first, a NODATA on the
// way wins over a SERVFAIL, and silence (a timeout) ends the search. Any
// answer with records ends it too, even one without addresses.
func (r *Resolver) lookupDNS(ctx context.Context, conf *ResolvConf, name string, qtypes []uint16) famResult {
	if strings.HasSuffix(name, ".") {
		return r.queryName(ctx, conf, name, qtypes)
	}
	final := func(res famResult) bool { return res.oc == found || res.oc == noaddr }
	asIsFirst := strings.Count(name, ".") >= conf.Ndots
	saved, haveSaved := nxdomain, false
	last := nxdomain
	if asIsFirst {
		res := r.queryName(ctx, conf, name+".", qtypes)
		if final(res) {
			return res
		}
		saved, haveSaved, last = res.oc, true, res.oc
	}
	gotNodata, gotServfail := false, false
	for _, d := range conf.Search {
		res := r.queryName(ctx, conf, name+"."+d+".", qtypes)
		if final(res) {
			return res
		}
		last = res.oc
		if res.oc == nodata {
			gotNodata = true
		} else if res.oc == servfail {
			gotServfail = true
		} else if res.oc == tempfail {
			break
		}
	}
	if !asIsFirst {
		res := r.queryName(ctx, conf, name+".", qtypes)
		if final(res) {
			return res
		}
		last = res.oc
	}
	switch {
	case haveSaved:
		return famResult{oc: saved}
	case gotNodata:
		return famResult{oc: nodata}
	case gotServfail:
		return famResult{oc: servfail}
	}
	return famResult{oc: last}
}

// queryName asks one fully qualified name for each of qtypes and merges
// the answers: addresses in qtypes order, the canonical name from the
// first answer that had addresses.
func (r *Resolver) queryName(ctx context.Context, conf *ResolvConf, fqdn string, qtypes []uint16) famResult {
	type one struct {
		addrs []net.IP
		canon string
		oc    outcome
	}
	var resBuf [maxBatch]one
	var xBuf [maxBatch]exchangeResult
	res, xs := resBuf[:0], xBuf[:0]
	if len(qtypes) > maxBatch {
		res, xs = make([]one, 0, len(qtypes)), make([]exchangeResult, 0, len(qtypes))
	}
	res, xs = res[:len(qtypes)], xs[:len(qtypes)]
	if conf.SingleRequest {
		for i := range qtypes {
			r.exchangeMulti(ctx, conf, fqdn, qtypes[i:i+1], xs[i:i+1])
		}
	} else {
		r.exchangeMulti(ctx, conf, fqdn, qtypes, xs)
	}
	for i, x := range xs {
		var addrs []net.IP
		canon := fqdn
		if x.err == nil {
			addrs, canon = answerAddrs(x.msg, fqdn, qtypes[i])
		}
		res[i] = one{addrs, canon, classify(x.msg, x.err, addrs)}
	}
	var out famResult
	out.oc = nxdomain
	anyTemp, anyNodata, anyServ, anyNoaddr := false, false, false, false
	for _, o := range res {
		switch o.oc {
		case found:
			if out.oc != found {
				out.canon = trimDot(o.canon)
			}
			out.oc = found
			for _, ip := range o.addrs {
				if a, ok := netip.AddrFromSlice(ip); ok {
					if ip4 := ip.To4(); ip4 != nil && len(ip) == 4 {
						a = netip.AddrFrom4([4]byte(ip4))
					}
					out.addrs = append(out.addrs, a)
				}
			}
		case tempfail:
			anyTemp = true
		case nodata:
			anyNodata = true
		case servfail:
			anyServ = true
		case noaddr:
			anyNoaddr = true
		}
	}
	switch {
	case out.oc == found:
	case anyNoaddr:
		out.oc = noaddr
	case anyTemp:
		out.oc = tempfail
	case anyNodata:
		out.oc = nodata
	case anyServ:
		out.oc = servfail
	}
	return out
}

func trimDot(s string) string {
	if len(s) > 1 && s[len(s)-1] == '.' {
		return s[:len(s)-1]
	}
	return s
}

// lookupFamilies runs the NSS chain (files, then dns) for one family
// request: v4 and v6 say which address types the caller wants. The dns
// source asks A and AAAA together when both are wanted, as
// gethostbyname4_r does.
func (r *Resolver) lookupFamilies(ctx context.Context, conf *ResolvConf, name string, v4, v6 bool) famResult {
	if res := r.lookupFiles(name, v4, v6); res.oc == found {
		return res
	}
	var qtypes []uint16
	if v4 {
		qtypes = append(qtypes, mdns.TypeA)
	}
	if v6 && !conf.NoAAAA {
		qtypes = append(qtypes, mdns.TypeAAAA)
	}
	if len(qtypes) == 0 {
		return famResult{oc: nodata}
	}
	return r.lookupDNS(ctx, conf, name, qtypes)
}

// LookupHost resolves name to addresses the way getaddrinfo with
// AF_UNSPEC would, without shaping or sorting; for Go callers and tests.
func (r *Resolver) LookupHost(ctx context.Context, name string) ([]netip.Addr, string, error) {
	conf := r.Config()
	res := r.lookupFamilies(ctx, &conf, name, true, true)
	if res.oc != found {
		return nil, "", outcomeError(res.oc, res.oc, name)
	}
	return res.addrs, res.canon, nil
}

// outcomeError maps the outcomes of the two family lookups (the same one
// twice when there was only one) to getaddrinfo's error, as glibc's
// get_nss_addresses does: both temporary failures give EAI_AGAIN, any
// other pair of "the name exists but" gives EAI_NODATA, and otherwise the
// name is unknown.
func outcomeError(a, b outcome, name string) *Error {
	isAgain := func(o outcome) bool { return o == tempfail || o == servfail }
	nonzero := func(o outcome) bool { return isAgain(o) || o == nodata }
	e := &Error{Rcode: -1, Name: name}
	switch {
	case isAgain(a) && isAgain(b):
		e.Code = EAI_AGAIN
		if a == servfail || b == servfail {
			e.Rcode = mdns.RcodeServerFailure
		}
	case nonzero(a) && nonzero(b):
		e.Code, e.Rcode = EAI_NODATA, mdns.RcodeSuccess
	default:
		e.Code, e.Rcode = EAI_NONAME, mdns.RcodeNameError
	}
	return e
}

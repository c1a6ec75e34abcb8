package dns

import (
	"context"
	"strings"

	mdns "github.com/miekg/dns"
)

// Record is one parsed answer record of the query API. Fields not used by
// a type stay zero.
type Record struct {
	Type     string   `json:"type"`
	Name     string   `json:"name"` // owner
	TTL      uint32   `json:"ttl"`
	Host     string   `json:"host,omitempty"` // A, AAAA: address; MX, NS, SRV, CNAME, PTR: target
	Priority uint16   `json:"priority,omitempty"`
	Weight   uint16   `json:"weight,omitempty"`
	Port     uint16   `json:"port,omitempty"`
	Text     []string `json:"text,omitempty"`
}

// QueryTypes are the types the query API parses.
var QueryTypes = map[string]uint16{
	"A": mdns.TypeA, "AAAA": mdns.TypeAAAA, "CNAME": mdns.TypeCNAME, "MX": mdns.TypeMX,
	"TXT": mdns.TypeTXT, "SRV": mdns.TypeSRV, "NS": mdns.TypeNS, "PTR": mdns.TypePTR,
}

// Query asks the servers for one name and type, with no search list and
// no hosts file (as aiodns does), and returns the records of that type in
// the answer, the CNAME chain before them followed.
func (r *Resolver) Query(ctx context.Context, name string, qtype uint16) ([]Record, error) {
	fqdn := mdns.Fqdn(name)
	conf := r.Config()
	resp, err := r.Exchange(ctx, &conf, fqdn, qtype)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &Error{Code: EAI_AGAIN, Rcode: -1, Name: name, Detail: err.Error()}
	}
	switch resp.Rcode {
	case mdns.RcodeSuccess:
	case mdns.RcodeNameError:
		return nil, &Error{Code: EAI_NONAME, Rcode: resp.Rcode, Name: name}
	default:
		return nil, &Error{Code: EAI_AGAIN, Rcode: resp.Rcode, Name: name}
	}
	var out []Record
	for _, rr := range resp.Answer {
		h := rr.Header()
		if h.Rrtype != qtype {
			continue
		}
		rec := Record{Type: mdns.TypeToString[h.Rrtype], Name: trimDot(h.Name), TTL: h.Ttl}
		switch v := rr.(type) {
		case *mdns.A:
			rec.Host = v.A.String()
		case *mdns.AAAA:
			rec.Host = v.AAAA.String()
		case *mdns.CNAME:
			rec.Host = trimDot(v.Target)
		case *mdns.MX:
			rec.Host, rec.Priority = trimDot(v.Mx), v.Preference
		case *mdns.NS:
			rec.Host = trimDot(v.Ns)
		case *mdns.PTR:
			rec.Host = trimDot(v.Ptr)
		case *mdns.SRV:
			rec.Host, rec.Priority, rec.Weight, rec.Port = trimDot(v.Target), v.Priority, v.Weight, v.Port
		case *mdns.TXT:
			rec.Text = append([]string(nil), v.Txt...)
		}
		out = append(out, rec)
	}
	if len(out) == 0 {
		return nil, &Error{Code: EAI_NODATA, Rcode: mdns.RcodeSuccess, Name: name}
	}
	return out, nil
}

// normalizeType accepts "a", "A", "aaaa"...
func normalizeType(t string) (uint16, bool) {
	v, ok := QueryTypes[strings.ToUpper(t)]
	return v, ok
}

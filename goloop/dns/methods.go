package dns

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/goloop-dev/goloop/goloop"
)

// The goloop methods. Requests and replies are JSON: DNS is off the hot
// path and the Python side decodes it with the standard library. A failed
// call's error text is a JSON object too, {"eai", "rcode", "msg"}, so
// Python can raise socket.gaierror or goloop.DNSError with the right codes.

func init() {
	goloop.RegisterMethod("dns.getaddrinfo", methodGetaddrinfo)
	goloop.RegisterQuick("dns.getaddrinfo", quickGetaddrinfo)
	goloop.RegisterMethod("dns.getnameinfo", methodGetnameinfo)
	goloop.RegisterMethod("dns.query", methodQuery)
	goloop.RegisterMethod("dns.clear_cache", methodClearCache)
}

var (
	defaultOnce sync.Once
	defaultRes  *Resolver
)

// Default is the resolver behind getaddrinfo. GOLOOP_HOSTS,
// GOLOOP_RESOLV_CONF and GOLOOP_SERVICES replace the system paths (for
// tests).
func Default() *Resolver {
	defaultOnce.Do(func() {
		defaultRes = New(Options{
			HostsPath:      os.Getenv("GOLOOP_HOSTS"),
			ResolvConfPath: os.Getenv("GOLOOP_RESOLV_CONF"),
			ServicesPath:   os.Getenv("GOLOOP_SERVICES"),
		})
	})
	return defaultRes
}

type errReply struct {
	EAI   int    `json:"eai"`
	Rcode int    `json:"rcode"`
	Msg   string `json:"msg"`
}

// replyError turns any error into the JSON error text.
func replyError(err error) error {
	var e *Error
	rep := errReply{EAI: EAI_SYSTEM, Rcode: -1, Msg: err.Error()}
	switch {
	case errors.As(err, &e):
		rep = errReply{EAI: e.Code, Rcode: e.Rcode, Msg: e.Message()}
	case errors.Is(err, context.Canceled):
		rep.Msg = "cancelled"
	}
	b, _ := json.Marshal(rep)
	return errors.New(string(b))
}

func badRequest(err error) error {
	return replyError(&Error{Code: EAI_SYSTEM, Rcode: -1, Detail: "bad request: " + err.Error()})
}

// parseAddrinfoRequest reads the request _dns.py sends on the hot path of
// name lookups, six NUL-separated fields: host and service ("s" + text,
// or "n" for None), then family, type, proto and flags in decimal. A JSON
// object with the AddrinfoRequest fields is accepted too.
func parseAddrinfoRequest(req []byte) (*AddrinfoRequest, error) {
	var r AddrinfoRequest
	if len(req) > 0 && req[0] == '{' {
		return &r, json.Unmarshal(req, &r)
	}
	// Split by hand: this runs twice for every lookup (quick, then full).
	var f [6]string
	rest := string(req)
	for i := range f {
		j := strings.IndexByte(rest, 0)
		if i == len(f)-1 {
			if j >= 0 {
				return nil, errors.New("want 6 fields")
			}
			f[i] = rest
			break
		}
		if j < 0 {
			return nil, errors.New("want 6 fields")
		}
		f[i], rest = rest[:j], rest[j+1:]
	}
	str := func(s string) (*string, error) {
		switch {
		case s == "n":
			return nil, nil
		case strings.HasPrefix(s, "s"):
			v := s[1:]
			return &v, nil
		}
		return nil, errors.New("bad string field")
	}
	var err error
	if r.Host, err = str(f[0]); err != nil {
		return nil, err
	}
	if r.Service, err = str(f[1]); err != nil {
		return nil, err
	}
	for i, p := range []*int{&r.Family, &r.Socktype, &r.Proto, &r.Flags} {
		if *p, err = strconv.Atoi(f[2+i]); err != nil {
			return nil, err
		}
	}
	return &r, nil
}

// quickGetaddrinfo answers from /etc/hosts and the cache when it can
// (quick.go); ok false sends the request to methodGetaddrinfo.
func quickGetaddrinfo(req []byte) ([]byte, error, bool) {
	r, err := parseAddrinfoRequest(req)
	if err != nil {
		return nil, badRequest(err), true
	}
	res, err, ok := Default().GetaddrinfoQuick(r)
	if !ok {
		return nil, nil, false
	}
	out, err := addrinfoReply(res, err)
	return out, err, true
}

func methodGetaddrinfo(ctx context.Context, req []byte) ([]byte, error) {
	r, err := parseAddrinfoRequest(req)
	if err != nil {
		return nil, badRequest(err)
	}
	return addrinfoReply(Default().Getaddrinfo(ctx, r))
}

// addrinfoReply is a lookup's outcome as the call returns it: the encoded
// answer, or the JSON error text.
func addrinfoReply(res []Addrinfo, err error) ([]byte, error) {
	if err != nil {
		return nil, replyError(err)
	}
	return appendAddrinfoReply(make([]byte, 0, 64*len(res)), res), nil
}

// appendAddrinfoReply encodes getaddrinfo's answer for the C extension
// (_core's addrinfo decoder), which builds the Python tuples from it
// without a Python frame: per entry, little-endian,
//
//	u8 family, u8 address length (4 or 16), i32 socktype, i32 proto,
//	u16 port, u32 scope id, u16 canonical name length, the name's bytes,
//	the address bytes.
//
// The canonical name is non-empty on the first entry only, as glibc
// sets ai_canonname.
func appendAddrinfoReply(b []byte, res []Addrinfo) []byte {
	for _, ai := range res {
		raw := ai.Addr.AsSlice()
		canon := ai.Canon
		if len(canon) > 0xffff {
			canon = canon[:0xffff]
		}
		b = append(b, byte(ai.Family), byte(len(raw)))
		b = binary.LittleEndian.AppendUint32(b, uint32(int32(ai.Socktype)))
		b = binary.LittleEndian.AppendUint32(b, uint32(int32(ai.Proto)))
		b = binary.LittleEndian.AppendUint16(b, uint16(ai.Port))
		b = binary.LittleEndian.AppendUint32(b, ai.Scope)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(canon)))
		b = append(b, canon...)
		b = append(b, raw...)
	}
	return b
}

type nameinfoRequest struct {
	Addr  string `json:"addr"` // numeric, as getnameinfo(NI_NUMERICHOST) printed it
	Port  int    `json:"port"`
	Flags int    `json:"flags"`
}

func methodGetnameinfo(ctx context.Context, req []byte) ([]byte, error) {
	var r nameinfoRequest
	if err := json.Unmarshal(req, &r); err != nil {
		return nil, badRequest(err)
	}
	a, err := netip.ParseAddr(strings.SplitN(r.Addr, "%", 2)[0])
	if err != nil {
		return nil, badRequest(err)
	}
	host, serv, err := Default().Getnameinfo(ctx, a, r.Port, r.Flags)
	if err != nil {
		return nil, replyError(err)
	}
	return json.Marshal(map[string]string{"host": host, "serv": serv})
}

// resolverOptions is the configuration a Python goloop.Resolver carries.
type resolverOptions struct {
	Nameservers []string `json:"nameservers"`
	Timeout     float64  `json:"timeout"`
	Attempts    int      `json:"attempts"`
	Cache       bool     `json:"cache"`
}

var (
	resolversMu sync.Mutex
	resolvers   = map[string]*Resolver{}
)

// resolverFor returns the resolver for one configuration, made on first
// use and kept, so that its cache outlives a single query.
func resolverFor(o resolverOptions) *Resolver {
	key, _ := json.Marshal(o)
	resolversMu.Lock()
	defer resolversMu.Unlock()
	if r := resolvers[string(key)]; r != nil {
		return r
	}
	d := Default().opts
	r := New(Options{
		ResolvConfPath: d.ResolvConfPath,
		Nameservers:    o.Nameservers,
		Timeout:        time.Duration(o.Timeout * float64(time.Second)),
		Attempts:       o.Attempts,
		EDNS0:          true,
		NoCache:        !o.Cache,
		NoHosts:        true,
	})
	resolvers[string(key)] = r
	return r
}

type queryRequest struct {
	resolverOptions
	Name  string `json:"name"`
	Type  string `json:"type"`
	Clear bool   `json:"clear"` // forget the cache first
}

func methodQuery(ctx context.Context, req []byte) ([]byte, error) {
	var q queryRequest
	if err := json.Unmarshal(req, &q); err != nil {
		return nil, badRequest(err)
	}
	qt, ok := normalizeType(q.Type)
	if !ok {
		return nil, badRequest(errors.New("unsupported type " + q.Type))
	}
	r := resolverFor(q.resolverOptions)
	if q.Clear {
		r.ClearCache()
	}
	recs, err := r.Query(ctx, q.Name, qt)
	if err != nil {
		return nil, replyError(err)
	}
	return json.Marshal(recs)
}

func methodClearCache(ctx context.Context, req []byte) ([]byte, error) {
	var o resolverOptions
	if err := json.Unmarshal(req, &o); err != nil {
		return nil, badRequest(err)
	}
	resolverFor(o).ClearCache()
	return []byte("null"), nil
}

package dns

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
)

// Options configure a Resolver. Zero values mean the system's files and
// resolv.conf's settings.
type Options struct {
	HostsPath      string // default /etc/hosts
	ResolvConfPath string // default /etc/resolv.conf
	ServicesPath   string // default /etc/services

	// Explicit settings override resolv.conf's.
	Nameservers []string // "addr" or "addr:port"
	Timeout     time.Duration
	Attempts    int
	EDNS0       bool // always advertise EDNS0 (resolv.conf's edns0 also turns it on)

	CacheSize int  // entries; 0 means the default
	NoCache   bool // no cache at all
	NoHosts   bool // DNS only (the query API)
}

const defaultCacheSize = 10000

// Resolver answers name lookups. It is safe for concurrent use.
type Resolver struct {
	opts     Options
	hosts    *watched[*Hosts]
	resolv   *watched[ResolvConf]
	services *watched[*Services]
	cache    *Cache
	flights  flights
	rr       atomic.Uint32 // rotate's round robin
}

// New makes a resolver.
func New(o Options) *Resolver {
	if o.HostsPath == "" {
		o.HostsPath = "/etc/hosts"
	}
	if o.ResolvConfPath == "" {
		o.ResolvConfPath = "/etc/resolv.conf"
	}
	if o.ServicesPath == "" {
		o.ServicesPath = "/etc/services"
	}
	size := o.CacheSize
	if size == 0 {
		size = defaultCacheSize
	}
	if o.NoCache {
		size = 0
	}
	r := &Resolver{
		opts:     o,
		hosts:    newWatched(o.HostsPath, ParseHosts),
		services: newWatched(o.ServicesPath, ParseServices),
		resolv: newWatched(o.ResolvConfPath, func(b []byte) ResolvConf {
			c := ParseResolvConf(b)
			c.applyEnv()
			return c
		}),
		cache: NewCache(size),
	}
	return r
}

// ClearCache forgets every cached answer.
func (r *Resolver) ClearCache() { r.cache.Clear() }

// Config is the resolv.conf in force, with the explicit options applied.
func (r *Resolver) Config() ResolvConf {
	c := r.resolv.get()
	if len(r.opts.Nameservers) > 0 {
		c.Servers = nil
		for _, s := range r.opts.Nameservers {
			if a, ok := parseServer(s); ok {
				c.Servers = append(c.Servers, a)
			}
		}
	}
	if r.opts.Timeout > 0 {
		c.Timeout = r.opts.Timeout
	}
	if r.opts.Attempts > 0 {
		c.Attempts = r.opts.Attempts
	}
	if r.opts.EDNS0 {
		c.EDNS0 = true
	}
	return c
}

// errNoServer is an exchange in which no server answered in time.
var errNoServer = errors.New("no server answered")

// Exchange asks the servers for one question (name must be fully
// qualified), through the cache and joined with identical questions in
// flight. A non-nil response may carry any rcode; an error means no
// usable response arrived.
func (r *Resolver) Exchange(ctx context.Context, conf *ResolvConf, name string, qtype uint16) (*mdns.Msg, error) {
	out := r.ExchangeMulti(ctx, conf, name, []uint16{qtype})
	return out[0].msg, out[0].err
}

type exchangeResult struct {
	msg *mdns.Msg
	err error
}

// ExchangeMulti asks several questions about one name at once (A and AAAA
// in one round trip: both are sent before either answer is awaited, and no
// goroutine is started), each through the cache and the in-flight table.
func (r *Resolver) ExchangeMulti(ctx context.Context, conf *ResolvConf, name string, qtypes []uint16) []exchangeResult {
	out := make([]exchangeResult, len(qtypes))
	r.exchangeMulti(ctx, conf, name, qtypes, out)
	return out
}

// exchangeMulti is ExchangeMulti into out (len(qtypes) long). The usual
// one or two questions need no allocation for the bookkeeping.
func (r *Resolver) exchangeMulti(ctx context.Context, conf *ResolvConf, name string, qtypes []uint16, out []exchangeResult) {
	lname := strings.ToLower(name)
	type follow struct {
		i int
		f *flight
	}
	var followBuf [maxBatch]follow
	var leadBuf [maxBatch]int
	var ledBuf [maxBatch]*flight
	var qsBuf [maxBatch]uint16
	follows, lead, led, qs := followBuf[:0], leadBuf[:0], ledBuf[:0], qsBuf[:0]
	for i, qt := range qtypes {
		k := cacheKey{lname, qt}
		if m, _, ok := r.cache.Get(k); ok {
			out[i] = exchangeResult{m, nil}
			continue
		}
		if co := cacheOnlyFrom(ctx); co != nil {
			co.missed = true // a quick lookup: never the network (quick.go)
			out[i] = exchangeResult{nil, errCacheMiss}
			continue
		}
		f, leader := r.flights.join(k)
		if leader {
			lead = append(lead, i)
			led = append(led, f)
			qs = append(qs, qt)
		} else {
			follows = append(follows, follow{i, f})
		}
	}
	if len(lead) > 0 {
		var resBuf [maxBatch]exchangeResult
		res := resBuf[:0]
		if len(lead) > maxBatch {
			res = make([]exchangeResult, 0, len(lead))
		}
		res = res[:len(lead)]
		r.exchangeServers(ctx, conf, name, qs, res)
		cancelled := ctx.Err() != nil
		for j, i := range lead {
			k := cacheKey{lname, qtypes[i]}
			if res[j].err == nil {
				r.cache.Put(k, res[j].msg)
			}
			r.flights.finish(k, led[j], res[j].msg, res[j].err, cancelled)
			out[i] = res[j]
		}
	}
	for _, fl := range follows {
		f := fl.f
		for {
			m, err, retry := r.flights.wait(ctx, f)
			if !retry {
				out[fl.i] = exchangeResult{m, err}
				break
			}
			// The leader gave up: ask ourselves (or follow a new leader).
			k := cacheKey{lname, qtypes[fl.i]}
			nf, leader := r.flights.join(k)
			if leader {
				var res [1]exchangeResult
				r.exchangeServers(ctx, conf, name, qtypes[fl.i:fl.i+1], res[:])
				if res[0].err == nil {
					r.cache.Put(k, res[0].msg)
				}
				r.flights.finish(k, nf, res[0].msg, res[0].err, ctx.Err() != nil)
				out[fl.i] = res[0]
				break
			}
			f = nf
		}
	}
}

// exchangeServers walks the servers as glibc's res_send does: attempts
// rounds over the list (starting at the next server in turn with rotate),
// each try bounded by the timeout, moving on after a timeout, a network
// error, or a server that refuses or fails (SERVFAIL, REFUSED, NOTIMP,
// FORMERR). All questions still unanswered go to a server together. A
// truncated UDP answer is asked again over TCP of the same server. When
// every server failed with an rcode, the last such answer is returned so
// the caller can tell SERVFAIL from silence.
func (r *Resolver) exchangeServers(ctx context.Context, conf *ResolvConf, name string, qtypes []uint16, out []exchangeResult) {
	for i := range out {
		out[i] = exchangeResult{nil, errNoServer}
	}
	n := len(conf.Servers)
	if n == 0 {
		return
	}
	start := 0
	if conf.Rotate {
		start = int(r.rr.Add(1)-1) % n
	}
	// Small fixed arrays back the bookkeeping of the usual one or two
	// questions.
	var pendBuf, stillBuf [maxBatch]int
	var qtBuf [maxBatch]uint16
	var lastBuf [maxBatch]*mdns.Msg
	pending, still, askTypes := pendBuf[:0], stillBuf[:0], qtBuf[:0]
	lastResp := lastBuf[:0]
	for i := range qtypes {
		pending = append(pending, i)
		lastResp = append(lastResp, nil)
	}
	for a := 0; a < conf.Attempts && len(pending) > 0; a++ {
		for s := 0; s < n && len(pending) > 0; s++ {
			if err := ctx.Err(); err != nil {
				for _, i := range pending {
					out[i] = exchangeResult{nil, err}
				}
				return
			}
			server := conf.Servers[(start+s)%n]
			deadline := time.Now().Add(conf.Timeout)
			askTypes = askTypes[:0]
			for _, i := range pending {
				askTypes = append(askTypes, qtypes[i])
			}
			var udp []udpResult
			var batch *udpBatch
			complete := false
			if !conf.UseVC {
				var err error
				batch, err = sendUDP(server, name, askTypes, conf.EDNS0, deadline)
				if err != nil {
					for _, i := range pending {
						out[i].err = err
					}
				} else {
					udp, complete = batch.wait(ctx)
				}
			}
			still = still[:0]
			for j, i := range pending {
				var resp *mdns.Msg
				var err error
				switch {
				case conf.UseVC:
					resp, err = exchangeTCP(ctx, newQuestion(name, qtypes[i], conf.EDNS0), server, time.Until(deadline))
				case udp != nil:
					resp, err = udp[j].msg, udp[j].err
					if err == nil && resp.Truncated {
						resp, err = exchangeTCP(ctx, newQuestion(name, qtypes[i], conf.EDNS0), server, time.Until(deadline))
					}
				default:
					err = out[i].err
				}
				if err != nil {
					out[i].err = err
					still = append(still, i)
					continue
				}
				switch resp.Rcode {
				case mdns.RcodeSuccess, mdns.RcodeNameError:
					out[i] = exchangeResult{resp, nil}
				default:
					lastResp[i] = resp
					still = append(still, i)
				}
			}
			if complete {
				batch.release()
			}
			pending, still = still, pending
		}
	}
	for _, i := range pending {
		if ctx.Err() != nil {
			out[i] = exchangeResult{nil, ctx.Err()}
		} else if lastResp[i] != nil {
			out[i] = exchangeResult{lastResp[i], nil}
		}
	}
}

// exchangeTCP asks over TCP: when resolv.conf says use-vc, or when the
// UDP answer did not fit.
func exchangeTCP(ctx context.Context, q *mdns.Msg, server string, timeout time.Duration) (*mdns.Msg, error) {
	if timeout <= 0 {
		timeout = time.Second
	}
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := &mdns.Client{Net: "tcp", Timeout: timeout}
	m := q.Copy()
	m.Id = mdns.Id()
	resp, _, err := c.ExchangeContext(tctx, m, server)
	if err != nil {
		return nil, err
	}
	if len(resp.Question) != 1 || !strings.EqualFold(resp.Question[0].Name, m.Question[0].Name) ||
		resp.Question[0].Qtype != m.Question[0].Qtype {
		return nil, errors.New("answer to another question")
	}
	return resp, nil
}

// hostname is os.Hostname, replaceable by tests.
var hostname = os.Hostname

// Outcome of asking one name for one family, in glibc's terms.
type outcome int

const (
	found    outcome = iota
	nxdomain         // HOST_NOT_FOUND
	nodata           // NO_DATA: the name exists, without this type
	servfail         // TRY_AGAIN after SERVFAIL: the search goes on
	tempfail         // TRY_AGAIN after silence: the search stops
	noaddr           // records, but no address at the end of them: HOST_NOT_FOUND, the search stops
)

// answerAddrs pulls the addresses of type qtype for qname out of resp,
// following the CNAME chain inside the answer section, and returns the
// name at the end of the chain.
func answerAddrs(resp *mdns.Msg, qname string, qtype uint16) (addrs []net.IP, canon string) {
	cur := qname
	for hops := 0; hops <= len(resp.Answer); hops++ {
		var next string
		for _, rr := range resp.Answer {
			h := rr.Header()
			if !strings.EqualFold(h.Name, cur) {
				continue
			}
			switch v := rr.(type) {
			case *mdns.A:
				if qtype == mdns.TypeA {
					addrs = append(addrs, v.A)
				}
			case *mdns.AAAA:
				if qtype == mdns.TypeAAAA {
					addrs = append(addrs, v.AAAA)
				}
			case *mdns.CNAME:
				if next == "" {
					next = v.Target
				}
			}
		}
		if len(addrs) > 0 || next == "" {
			break
		}
		cur = next
	}
	return addrs, cur
}

func classify(resp *mdns.Msg, err error, addrs []net.IP) outcome {
	switch {
	case err != nil:
		return tempfail
	case len(addrs) > 0:
		return found
	case resp.Rcode == mdns.RcodeNameError:
		return nxdomain
	case resp.Rcode == mdns.RcodeSuccess && len(resp.Answer) > 0:
		return noaddr
	case resp.Rcode == mdns.RcodeSuccess:
		return nodata
	}
	return servfail
}

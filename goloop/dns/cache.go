package dns

import (
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// cacheKey names one question. Names are lowercased and fully qualified.
type cacheKey struct {
	name  string
	qtype uint16
}

type cacheEntry struct {
	key        cacheKey
	msg        *mdns.Msg // shared, never modified after insertion
	expires    time.Time
	prev, next *cacheEntry // the LRU list, through the cache's root
}

// Cache holds DNS responses for as long as their TTL allows, and at most
// max of them, dropping the least recently used first. Negative answers
// (NXDOMAIN, and NOERROR without the asked type) are kept for the time RFC
// 2308 gives them: the smaller of the SOA record's TTL and its MINIMUM
// field; without an SOA they are not kept at all.
type Cache struct {
	mu     sync.Mutex
	max    int
	maxTTL time.Duration
	now    func() time.Time
	root   cacheEntry // root.next = most recently used; the list links entries themselves, one allocation each
	n      int
	m      map[cacheKey]*cacheEntry
}

// NewCache makes a cache of at most max entries (max <= 0 disables it).
func NewCache(max int) *Cache {
	c := &Cache{max: max, maxTTL: 24 * time.Hour, now: time.Now, m: map[cacheKey]*cacheEntry{}}
	c.root.prev, c.root.next = &c.root, &c.root
	return c
}

func (c *Cache) unlink(e *cacheEntry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
	c.n--
}

func (c *Cache) pushFront(e *cacheEntry) {
	e.prev, e.next = &c.root, c.root.next
	c.root.next.prev = e
	c.root.next = e
	c.n++
}

// Get returns the cached response and how long it has left to live.
func (c *Cache) Get(k cacheKey) (*mdns.Msg, time.Duration, bool) {
	if c == nil || c.max <= 0 {
		return nil, 0, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok {
		return nil, 0, false
	}
	left := e.expires.Sub(c.now())
	if left <= 0 {
		c.unlink(e)
		delete(c.m, k)
		return nil, 0, false
	}
	c.unlink(e)
	c.pushFront(e)
	return e.msg, left, true
}

// Put stores resp if it may be cached and reports whether it was.
func (c *Cache) Put(k cacheKey, resp *mdns.Msg) bool {
	if c == nil || c.max <= 0 {
		return false
	}
	ttl, ok := cacheTTL(resp, k.qtype)
	if !ok || ttl <= 0 {
		return false
	}
	if ttl > c.maxTTL {
		ttl = c.maxTTL
	}
	e := &cacheEntry{key: k, msg: resp}
	c.mu.Lock()
	defer c.mu.Unlock()
	e.expires = c.now().Add(ttl)
	if old, ok := c.m[k]; ok {
		c.unlink(old)
	}
	c.m[k] = e
	c.pushFront(e)
	for c.n > c.max {
		old := c.root.prev
		c.unlink(old)
		delete(c.m, old.key)
	}
	return true
}

// Len is the number of entries, expired ones included until touched.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// Clear drops everything.
func (c *Cache) Clear() {
	c.mu.Lock()
	c.root.prev, c.root.next = &c.root, &c.root
	c.n = 0
	c.m = map[cacheKey]*cacheEntry{}
	c.mu.Unlock()
}

// cacheTTL decides how long resp may be kept. Only NOERROR and NXDOMAIN
// are cacheable; a positive answer lives as long as its shortest record.
func cacheTTL(resp *mdns.Msg, qtype uint16) (time.Duration, bool) {
	if resp == nil || resp.Truncated {
		return 0, false
	}
	switch resp.Rcode {
	case mdns.RcodeSuccess:
		if hasType(resp.Answer, qtype) {
			min := uint32(1<<31 - 1)
			for _, rr := range resp.Answer {
				if t := rr.Header().Ttl; t < min {
					min = t
				}
			}
			return time.Duration(min) * time.Second, true
		}
		return negativeTTL(resp)
	case mdns.RcodeNameError:
		return negativeTTL(resp)
	}
	return 0, false
}

func negativeTTL(resp *mdns.Msg) (time.Duration, bool) {
	for _, rr := range resp.Ns {
		if soa, ok := rr.(*mdns.SOA); ok {
			t := soa.Hdr.Ttl
			if soa.Minttl < t {
				t = soa.Minttl
			}
			return time.Duration(t) * time.Second, true
		}
	}
	return 0, false
}

func hasType(rrs []mdns.RR, qtype uint16) bool {
	for _, rr := range rrs {
		if rr.Header().Rrtype == qtype {
			return true
		}
	}
	return false
}

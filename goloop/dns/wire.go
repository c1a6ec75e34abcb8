package dns

import (
	"encoding/binary"
	"errors"
	"net"

	mdns "github.com/miekg/dns"
)

// Queries are packed and answers parsed here by hand for the common case,
// which is most of what a lookup costs besides the syscalls: miekg's Pack
// and Unpack are general and allocate for every field. Anything outside
// the common case goes to miekg. wire_test.go fuzzes both directions
// against miekg: whatever the hand-written code accepts, it must turn into
// exactly what miekg makes of it.

const (
	hdrLen       = 12
	ednsPayload  = 1232
	maxQueryWire = hdrLen + 255 + 4 + 11 // header, name, type and class, OPT
)

// appendQuery appends the wire form of a recursive query for name (fully
// qualified) and qtype, with an EDNS0 OPT record when edns is set. It
// reports false for names it does not handle (escapes, bad or long
// labels); those are packed by miekg.
func appendQuery(dst []byte, id uint16, name string, qtype uint16, edns bool) ([]byte, bool) {
	if len(name) == 0 || name[len(name)-1] != '.' || len(name) > 254 {
		return dst, false
	}
	var ar byte
	if edns {
		ar = 1
	}
	dst = append(dst, byte(id>>8), byte(id), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, ar)
	if name != "." {
		start := 0
		for i := 0; i < len(name); i++ {
			c := name[i]
			if c == '\\' {
				return dst, false
			}
			if c != '.' {
				continue
			}
			l := i - start
			if l == 0 || l > 63 {
				return dst, false
			}
			dst = append(dst, byte(l))
			dst = append(dst, name[start:i]...)
			start = i + 1
		}
	}
	dst = append(dst, 0, byte(qtype>>8), byte(qtype), 0, 1)
	if edns {
		dst = append(dst, 0, 0, 41, ednsPayload>>8, ednsPayload&0xff, 0, 0, 0, 0, 0, 0)
	}
	return dst, true
}

// packQuery is the query for name and qtype, by hand or by miekg.
func packQuery(dst []byte, id uint16, name string, qtype uint16, edns bool) ([]byte, error) {
	if b, ok := appendQuery(dst[:0], id, name, qtype, edns); ok {
		return b, nil
	}
	q := newQuestion(name, qtype, edns)
	q.Id = id
	return q.PackBuffer(dst[:cap(dst)])
}

// newQuestion is the query as a miekg message (for TCP and for names the
// hand packer leaves alone).
func newQuestion(name string, qtype uint16, edns bool) *mdns.Msg {
	q := new(mdns.Msg)
	q.SetQuestion(name, qtype)
	q.RecursionDesired = true
	if edns {
		q.SetEdns0(ednsPayload, false)
	}
	return q
}

var errUnpack = errors.New("malformed answer")

// unpackAnswer parses an answer: by hand when it has one question and only
// A, AAAA, CNAME, SOA and OPT records in their plain forms, else by miekg.
// names (may be nil) shares the strings of names seen before.
func unpackAnswer(b []byte, names *nameTable) (*mdns.Msg, error) {
	if m, ok := leanUnpack(b, names); ok {
		return m, nil
	}
	m := new(mdns.Msg)
	if err := m.Unpack(b); err != nil {
		return nil, err
	}
	return m, nil
}

// leanParser holds what the hand parser learns while it goes: names
// already decoded, so that compression pointers to them (the owner of
// nearly every answer record points at the question) share one string.
type leanParser struct {
	b     []byte
	names *nameTable
	memo  [4]struct {
		off int
		s   string
	}
	nmemo int
}

// nameTable hands out one string per name for the names every answer of
// a zone repeats (its SOA, CNAME targets), instead of one each time. It
// belongs to one goroutine.
type nameTable struct{ m map[string]string }

const maxNameTable = 512

func (t *nameTable) intern(b []byte) string {
	if t == nil {
		return string(b)
	}
	if s, ok := t.m[string(b)]; ok {
		return s
	}
	if t.m == nil || len(t.m) >= maxNameTable {
		t.m = make(map[string]string, maxNameTable)
	}
	s := string(b)
	t.m[s] = s
	return s
}

// An answer's message, question and first records come in one
// allocation, and each address record with its address in another.
type msgBlock struct {
	m   mdns.Msg
	q   [1]mdns.Question
	rrs [3]mdns.RR
}

type aBlock struct {
	rr mdns.A
	ip [net.IPv4len]byte
}

type aaaaBlock struct {
	rr mdns.AAAA
	ip [net.IPv6len]byte
}

// leanUnpack is the hand parser; ok false means "ask miekg", never "bad".
func leanUnpack(b []byte, names *nameTable) (*mdns.Msg, bool) {
	if len(b) < hdrLen {
		return nil, false
	}
	bits := binary.BigEndian.Uint16(b[2:])
	qd := binary.BigEndian.Uint16(b[4:])
	an := int(binary.BigEndian.Uint16(b[6:]))
	ns := int(binary.BigEndian.Uint16(b[8:]))
	ar := int(binary.BigEndian.Uint16(b[10:]))
	if qd != 1 || an > 16 || ns > 4 || ar > 1 || len(b) == hdrLen {
		return nil, false
	}
	p := leanParser{b: b, names: names}
	blk := new(msgBlock)
	m := &blk.m
	m.Id = binary.BigEndian.Uint16(b)
	m.Response = bits&(1<<15) != 0
	m.Opcode = int(bits>>11) & 0xF
	m.Authoritative = bits&(1<<10) != 0
	m.Truncated = bits&(1<<9) != 0
	m.RecursionDesired = bits&(1<<8) != 0
	m.RecursionAvailable = bits&(1<<7) != 0
	m.Zero = bits&(1<<6) != 0
	m.AuthenticatedData = bits&(1<<5) != 0
	m.CheckingDisabled = bits&(1<<4) != 0
	m.Rcode = int(bits & 0xF)

	name, off, ok := p.name(hdrLen, false)
	if !ok || off+4 > len(b) {
		return nil, false
	}
	blk.q[0] = mdns.Question{Name: name,
		Qtype: binary.BigEndian.Uint16(b[off:]), Qclass: binary.BigEndian.Uint16(b[off+2:])}
	m.Question = blk.q[:]
	off += 4
	var rrs []mdns.RR
	if an+ns+ar <= len(blk.rrs) {
		rrs = blk.rrs[:0]
	}
	if m.Answer, rrs, off, ok = p.records(off, an, rrs); !ok {
		return nil, false
	}
	if m.Ns, rrs, off, ok = p.records(off, ns, rrs); !ok {
		return nil, false
	}
	if m.Extra, _, off, ok = p.records(off, ar, rrs); !ok {
		return nil, false
	}
	if off != len(b) {
		return nil, false
	}
	if len(m.Extra) == 1 {
		opt, isOpt := m.Extra[0].(*mdns.OPT)
		if !isOpt {
			return nil, false
		}
		m.Rcode |= opt.ExtendedRcode()
	}
	return m, true
}

// records parses n records at off; nil when n is 0, as miekg leaves it.
// They go at the end of room when it is not nil, which is returned
// without them.
func (p *leanParser) records(off, n int, room []mdns.RR) (rrs, rest []mdns.RR, end int, ok bool) {
	if n == 0 {
		return nil, room, off, true
	}
	if room != nil {
		rrs, rest = room[:0:n], room[n:n]
	} else {
		rrs = make([]mdns.RR, 0, n)
	}
	for i := 0; i < n; i++ {
		var h mdns.RR_Header
		h.Name, off, ok = p.name(off, true)
		if !ok || off+10 > len(p.b) {
			return nil, nil, 0, false
		}
		b := p.b
		h.Rrtype = binary.BigEndian.Uint16(b[off:])
		h.Class = binary.BigEndian.Uint16(b[off+2:])
		h.Ttl = binary.BigEndian.Uint32(b[off+4:])
		h.Rdlength = binary.BigEndian.Uint16(b[off+8:])
		off += 10
		end := off + int(h.Rdlength)
		if end > len(b) {
			return nil, nil, 0, false
		}
		var rr mdns.RR
		switch h.Rrtype {
		case mdns.TypeA:
			if h.Rdlength != net.IPv4len {
				return nil, nil, 0, false
			}
			a := new(aBlock)
			copy(a.ip[:], b[off:end])
			a.rr = mdns.A{Hdr: h, A: a.ip[:]}
			rr = &a.rr
		case mdns.TypeAAAA:
			if h.Rdlength != net.IPv6len {
				return nil, nil, 0, false
			}
			a := new(aaaaBlock)
			copy(a.ip[:], b[off:end])
			a.rr = mdns.AAAA{Hdr: h, AAAA: a.ip[:]}
			rr = &a.rr
		case mdns.TypeCNAME:
			// The rdata ends where rdlength says, so may its name.
			sub := leanParser{b: b[:end], names: p.names, memo: p.memo, nmemo: p.nmemo}
			target, o, ok := sub.name(off, true)
			if !ok || o != end {
				return nil, nil, 0, false
			}
			rr = &mdns.CNAME{Hdr: h, Target: target}
		case mdns.TypeSOA:
			sub := leanParser{b: b[:end], names: p.names, memo: p.memo, nmemo: p.nmemo}
			ns, o, ok := sub.name(off, true)
			if !ok {
				return nil, nil, 0, false
			}
			mbox, o, ok := sub.name(o, true)
			if !ok || o+20 != end {
				return nil, nil, 0, false
			}
			rr = &mdns.SOA{Hdr: h, Ns: ns, Mbox: mbox,
				Serial:  binary.BigEndian.Uint32(b[o:]),
				Refresh: binary.BigEndian.Uint32(b[o+4:]),
				Retry:   binary.BigEndian.Uint32(b[o+8:]),
				Expire:  binary.BigEndian.Uint32(b[o+12:]),
				Minttl:  binary.BigEndian.Uint32(b[o+16:])}
		case mdns.TypeOPT:
			if h.Rdlength != 0 {
				return nil, nil, 0, false
			}
			rr = &mdns.OPT{Hdr: h}
		default:
			return nil, nil, 0, false
		}
		rrs = append(rrs, rr)
		off = end
	}
	return rrs, rest, off, true
}

// name decodes the domain name at off in miekg's presentation form and
// returns the offset after it. Names needing escapes, pointers that do
// not point backwards, and names near the length limit are left to miekg.
// shared names come from the name table.
func (p *leanParser) name(off int, shared bool) (string, int, bool) {
	b := p.b
	if off < len(b) && b[off]&0xC0 == 0xC0 && off+1 < len(b) {
		target := int(b[off]&0x3F)<<8 | int(b[off+1])
		for i := 0; i < p.nmemo; i++ {
			if p.memo[i].off == target {
				return p.memo[i].s, off + 2, true
			}
		}
	}
	var buf [256]byte
	n := 0
	start := off
	end := -1 // offset after the name, set at the first pointer
	budget := 255
	hops := 0
	for {
		if off >= len(b) {
			return "", 0, false
		}
		c := int(b[off])
		switch c & 0xC0 {
		case 0x00:
			if c == 0 {
				if end < 0 {
					end = off + 1
				}
				if n == 0 {
					return ".", end, true
				}
				var s string
				if shared {
					s = p.names.intern(buf[:n])
				} else {
					s = string(buf[:n])
				}
				p.remember(start, s)
				return s, end, true
			}
			off++
			if off+c > len(b) {
				return "", 0, false
			}
			budget -= c + 1
			if budget <= 10 {
				return "", 0, false
			}
			for _, x := range b[off : off+c] {
				if x <= ' ' || x > '~' || x == '.' || x == '\'' || x == '@' || x == ';' ||
					x == '(' || x == ')' || x == '"' || x == '\\' {
					return "", 0, false
				}
			}
			n += copy(buf[n:], b[off:off+c])
			buf[n] = '.'
			n++
			off += c
		case 0xC0:
			if off+1 >= len(b) {
				return "", 0, false
			}
			target := (c&0x3F)<<8 | int(b[off+1])
			if end < 0 {
				end = off + 2
			}
			hops++
			if target >= off || hops > 16 {
				return "", 0, false
			}
			off = target
		default:
			return "", 0, false
		}
	}
}

func (p *leanParser) remember(off int, s string) {
	if p.nmemo < len(p.memo) {
		p.memo[p.nmemo].off, p.memo[p.nmemo].s = off, s
		p.nmemo++
	}
}

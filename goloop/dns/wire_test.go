package dns

import (
	"bytes"
	"reflect"
	"testing"

	mdns "github.com/miekg/dns"
)

// The hand-written packer and parser must agree with miekg on everything
// they accept. The seeds run with every `go test`; `go test -fuzz
// FuzzLeanUnpack` (or FuzzAppendQuery) searches further.

func answerSeeds(t testing.TB) [][]byte {
	mk := func(name string, qtype uint16, rcode int, edns, compress bool, ans, ns []mdns.RR) []byte {
		q := newQuestion(name, qtype, false)
		m := new(mdns.Msg)
		m.SetReply(q)
		m.RecursionAvailable = true
		m.Rcode = rcode
		m.Answer, m.Ns = ans, ns
		if edns {
			m.SetEdns0(ednsPayload, false)
		}
		m.Compress = compress
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cname := func(name, target string) mdns.RR {
		return &mdns.CNAME{Hdr: mdns.RR_Header{Name: name, Rrtype: mdns.TypeCNAME, Class: mdns.ClassINET, Ttl: 30}, Target: target}
	}
	mx := &mdns.MX{Hdr: mdns.RR_Header{Name: "mx.example.", Rrtype: mdns.TypeMX, Class: mdns.ClassINET, Ttl: 30}, Preference: 10, Mx: "mail.example."}
	var seeds [][]byte
	for _, c := range []bool{true, false} {
		seeds = append(seeds,
			mk("h1.example.", mdns.TypeA, 0, false, c, []mdns.RR{rrA("h1.example.", "198.51.100.2", 300)}, nil),
			mk("h1.example.", mdns.TypeAAAA, 0, false, c, nil, []mdns.RR{soa(30)}),
			mk("H1.Example.", mdns.TypeA, 0, true, c, []mdns.RR{rrA("H1.Example.", "198.51.100.2", 300), rrA("H1.Example.", "198.51.100.3", 300)}, nil),
			mk("c1.example.", mdns.TypeAAAA, 0, true, c, []mdns.RR{cname("c1.example.", "c2.example."), cname("c2.example.", "both.example."),
				rrAAAA("both.example.", "2001:db8::10", 300)}, nil),
			mk("none.example.", mdns.TypeA, mdns.RcodeNameError, false, c, nil, []mdns.RR{soa(30)}),
			mk("x.example.", mdns.TypeA, mdns.RcodeServerFailure, true, c, nil, nil),
			mk("mx.example.", mdns.TypeMX, 0, false, c, []mdns.RR{mx}, nil),
			mk(`we\.ird.example.`, mdns.TypeA, 0, false, c, []mdns.RR{rrA(`we\.ird.example.`, "192.0.2.1", 1)}, nil),
			mk(".", mdns.TypeA, 0, false, c, nil, nil),
		)
	}
	return seeds
}

func FuzzLeanUnpack(f *testing.F) {
	for _, s := range answerSeeds(f) {
		f.Add(s)
		for _, cut := range []int{1, 5, 13, len(s) / 2} {
			if cut < len(s) {
				f.Add(s[:len(s)-cut])
			}
		}
	}
	f.Add([]byte{})
	f.Add(make([]byte, 12))
	names := new(nameTable) // shared across inputs, as by a socket's reader
	f.Fuzz(func(t *testing.T, b []byte) {
		m, ok := leanUnpack(b, names)
		if !ok {
			return
		}
		ref := new(mdns.Msg)
		if err := ref.Unpack(b); err != nil {
			t.Fatalf("lean parser accepted what miekg rejects (%v): %x", err, b)
		}
		if !reflect.DeepEqual(m, ref) {
			t.Fatalf("parsers disagree on %x:\nlean:  %v\nmiekg: %v", b, m, ref)
		}
	})
}

// TestLeanUnpackTakesCommonAnswers keeps the fast path in use: the
// answers a lookup usually gets must not fall back to miekg.
func TestLeanUnpackTakesCommonAnswers(t *testing.T) {
	seeds := answerSeeds(t)
	for i, s := range seeds {
		_, ok := leanUnpack(s, nil)
		qtype := mdns.Msg{}
		qtype.Unpack(s)
		common := qtype.Question[0].Qtype != mdns.TypeMX && qtype.Question[0].Name != `we\.ird.example.`
		if ok != common {
			t.Errorf("seed %d (%s): lean=%v, want %v", i, qtype.Question[0].Name, ok, common)
		}
	}
}

func FuzzAppendQuery(f *testing.F) {
	for _, n := range []string{"h1.example.", "Both.Example.", ".", "a..b.", ".a.", "no-dot", `we\.ird.`,
		"x.\x00y.", "a23456789012345678901234567890123456789012345678901234567890123.",
		"a234567890123456789012345678901234567890123456789012345678901234."} {
		f.Add(n, uint16(1), false, uint16(0x1234))
		f.Add(n, uint16(28), true, uint16(0xffff))
	}
	f.Fuzz(func(t *testing.T, name string, qtype uint16, edns bool, id uint16) {
		b, ok := appendQuery(nil, id, name, qtype, edns)
		if !ok {
			return
		}
		q := newQuestion(name, qtype, edns)
		q.Id = id
		ref, err := q.Pack()
		if err != nil {
			t.Fatalf("hand packer accepted %q, miekg: %v", name, err)
		}
		if !bytes.Equal(b, ref) {
			t.Fatalf("%q: packed %x, miekg %x", name, b, ref)
		}
	})
}

func TestPackQueryFallsBackToMiekg(t *testing.T) {
	buf := make([]byte, 0, maxQueryWire)
	b, err := packQuery(buf, 7, `we\.ird.example.`, mdns.TypeA, true)
	if err != nil {
		t.Fatal(err)
	}
	m := new(mdns.Msg)
	if err := m.Unpack(b); err != nil || m.Question[0].Name != `we\.ird.example.` || m.Id != 7 || m.IsEdns0() == nil {
		t.Fatalf("%v %v", err, m)
	}
	if _, err := packQuery(buf, 7, "a..b.", mdns.TypeA, false); err == nil {
		t.Fatal("an empty label packed")
	}
}

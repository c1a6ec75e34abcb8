package dns

import "testing"

func TestParseAddrinfoRequest(t *testing.T) {
	r, err := parseAddrinfoRequest([]byte("sexample.com\x00s80\x0010\x001\x006\x00-3"))
	if err != nil {
		t.Fatal(err)
	}
	if *r.Host != "example.com" || *r.Service != "80" || r.Family != 10 || r.Socktype != 1 ||
		r.Proto != 6 || r.Flags != -3 {
		t.Fatalf("%+v", r)
	}
	r, err = parseAddrinfoRequest([]byte("n\x00s\x000\x000\x000\x000"))
	if err != nil || r.Host != nil || r.Service == nil || *r.Service != "" {
		t.Fatalf("%+v %v", r, err)
	}
	for _, bad := range []string{
		"", "sa", "sa\x00s1\x000\x000\x000", // too few fields
		"sa\x00s1\x000\x000\x000\x000\x000", // too many
		"xa\x00s1\x000\x000\x000\x000",      // neither s nor n
		"sa\x00s1\x00zero\x000\x000\x000",   // not a number
	} {
		if _, err := parseAddrinfoRequest([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

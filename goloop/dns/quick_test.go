package dns

import (
	"reflect"
	"sync/atomic"
	"testing"
)

// A quick lookup answers from /etc/hosts and the cache exactly what the
// full lookup answers, and never sends a question.
func TestQuickAnswersOnlyFromMemory(t *testing.T) {
	var queries atomic.Int32
	addr := countingServer(t, &queries, nil)
	r := testResolver(t, "nameserver "+addr+"\nsearch example\n", "192.0.2.1 filed.example\n")
	svc := "80"
	req := func(host string) *AddrinfoRequest {
		return &AddrinfoRequest{Host: &host, Service: &svc, Socktype: 1}
	}

	if _, _, ok := r.GetaddrinfoQuick(req("www.example")); ok {
		t.Fatal("answered a name it never looked up")
	}
	if _, _, ok := r.GetaddrinfoQuick(req("nx")); ok {
		t.Fatal("answered a name it never looked up (search list)")
	}
	if q := queries.Load(); q != 0 {
		t.Fatalf("a quick lookup sent %d questions", q)
	}

	for _, host := range []string{"filed.example", "www.example", "nx", "www"} {
		want, wantErr := r.Getaddrinfo(t.Context(), req(host))
		before := queries.Load()
		got, gotErr, ok := r.GetaddrinfoQuick(req(host))
		if !ok {
			t.Fatalf("%s: not answered after a full lookup", host)
		}
		if queries.Load() != before {
			t.Fatalf("%s: a quick lookup sent a question", host)
		}
		if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotErr, wantErr) {
			t.Fatalf("%s: quick %v %v, full %v %v", host, got, gotErr, want, wantErr)
		}
	}
	if _, err, _ := r.GetaddrinfoQuick(req("nx")); err == nil {
		t.Fatal("cached NXDOMAIN answered with addresses")
	}

	r.ClearCache()
	if _, _, ok := r.GetaddrinfoQuick(req("www.example")); ok {
		t.Fatal("answered from a cleared cache")
	}
	if _, _, ok := r.GetaddrinfoQuick(req("filed.example")); !ok {
		t.Fatal("a hosts-file name needs no cache")
	}
}

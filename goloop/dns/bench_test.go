package dns

import (
	"context"
	"testing"
)

// BenchmarkHostsLookup measures the Go side of a getaddrinfo answered from
// the hosts file: request parsing, lookup, shaping and the reply.
func BenchmarkHostsLookup(b *testing.B) {
	req := []byte("slocalhost\x00s80\x000\x001\x000\x000")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := methodGetaddrinfo(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	}
}

package dns

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BenchmarkUnboundLookups is the Go half of bench/dns_bench.py: lookups
// of distinct names (no cache) against unbound, 100 in flight, A and
// AAAA each. It reports the process CPU per lookup, which is what the
// resolver costs beside the Python side.
func BenchmarkUnboundLookups(b *testing.B) {
	addr := startUnbound(b)
	dir := b.TempDir()
	rc := filepath.Join(dir, "resolv.conf")
	os.WriteFile(rc, []byte("nameserver "+addr+"\n"), 0o644)
	r := New(Options{ResolvConfPath: rc, HostsPath: filepath.Join(dir, "none"), NoCache: true})
	names := make([]string, 300)
	for i := range names {
		names[i] = fmt.Sprintf("h%d.example", i)
	}
	svc := "80"
	const inflight = 100
	b.ReportAllocs()
	b.ResetTimer()
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	t0 := time.Now()
	var wg sync.WaitGroup
	next := make(chan int, inflight)
	go func() {
		for i := 0; i < b.N; i++ {
			next <- i
		}
		close(next)
	}()
	for w := 0; w < inflight; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				h := names[i%len(names)]
				req := &AddrinfoRequest{Host: &h, Service: &svc, Socktype: 1}
				if _, err := r.Getaddrinfo(context.Background(), req); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(t0)
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(syscall.TimevalToNsec(ru1.Utime) + syscall.TimevalToNsec(ru1.Stime) -
		syscall.TimevalToNsec(ru0.Utime) - syscall.TimevalToNsec(ru0.Stime))
	b.ReportMetric(float64(b.N)/el.Seconds(), "lookups/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/lookup")
}

package goloop

import (
	"context"
	"encoding/json"
	"runtime"
	"runtime/debug"
)

// runtime.stats reports the Go runtime's own numbers, so the leak tests can
// hold the Go half to a bound as they do the process's fds and RSS. It reads
// MemStats, which stops the world briefly: for tests and diagnostics, not
// for a hot path. The request "gc" collects first and gives freed memory
// back to the OS, as a leak test calls gc.collect() before it measures: with
// GOGC=400 (docs/architecture.md) the Go heap may otherwise hold several
// megabytes of garbage between collections, which RSS would count.
func init() {
	RegisterMethod("runtime.stats", func(_ context.Context, req []byte) ([]byte, error) { return runtimeStats(req) })
	RegisterQuick("runtime.stats", func(req []byte) ([]byte, error, bool) {
		out, err := runtimeStats(req)
		return out, err, true
	})
}

func runtimeStats(req []byte) ([]byte, error) {
	if string(req) == "gc" {
		runtime.GC()
		debug.FreeOSMemory()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return json.Marshal(map[string]uint64{
		"heap_alloc":   ms.HeapAlloc,
		"heap_objects": ms.HeapObjects,
		"sys":          ms.Sys,
		"num_gc":       uint64(ms.NumGC),
		"goroutines":   uint64(runtime.NumGoroutine()),
		// OpKTLS in this process (recvrecord.go): directions installed,
		// installs that failed, and TLS 1.3 session tickets a kernel-TLS
		// receive dropped.
		"ktls_tx":      ktlsStats.tx.Load(),
		"ktls_rx":      ktlsStats.rx.Load(),
		"ktls_failed":  ktlsStats.failed.Load(),
		"ktls_tickets": ktlsStats.tickets.Load(),
		// OpKTLS installs served by Go's record layer (softtls.go).
		"ktls_soft": ktlsStats.soft.Load(),
	})
}

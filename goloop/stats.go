package goloop

import (
	"context"
	"encoding/json"
	"runtime"
)

// runtime.stats reports the Go runtime's own numbers, so the leak tests can
// hold the Go half to a bound as they do the process's fds and RSS. It reads
// MemStats, which stops the world briefly: for tests and diagnostics, not
// for a hot path.
func init() {
	RegisterMethod("runtime.stats", func(context.Context, []byte) ([]byte, error) { return runtimeStats() })
	RegisterQuick("runtime.stats", func([]byte) ([]byte, error, bool) {
		out, err := runtimeStats()
		return out, err, true
	})
}

func runtimeStats() ([]byte, error) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return json.Marshal(map[string]uint64{
		"heap_alloc":   ms.HeapAlloc,
		"heap_objects": ms.HeapObjects,
		"sys":          ms.Sys,
		"num_gc":       uint64(ms.NumGC),
		"goroutines":   uint64(runtime.NumGoroutine()),
	})
}

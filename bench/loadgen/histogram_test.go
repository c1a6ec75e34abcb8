package main

import (
	"math/rand"
	"sort"
	"testing"
)

func TestBucketRoundTrip(t *testing.T) {
	for i := 0; i < len(histogram{}.counts)-1; i++ {
		if got := bucketOf(lowOf(i)); got != i {
			t.Fatalf("bucketOf(lowOf(%d)) = %d", i, got)
		}
		if lowOf(i+1) <= lowOf(i) {
			t.Fatalf("bucket bounds not increasing at %d", i)
		}
		if got := bucketOf(lowOf(i+1) - 1); got != i {
			t.Fatalf("top of bucket %d lands in %d", i, got)
		}
	}
}

func TestQuantileWithinPrecision(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	var h histogram
	vals := make([]uint64, 100000)
	for i := range vals {
		// A wide spread, as latencies in nanoseconds are: 1 µs .. 50 ms.
		vals[i] = uint64(1000 + r.ExpFloat64()*200000)
		if vals[i] > 50_000_000 {
			vals[i] = 50_000_000
		}
		h.record(vals[i])
	}
	sort.Slice(vals, func(a, b int) bool { return vals[a] < vals[b] })
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		exact := vals[int(q*float64(len(vals)-1))]
		got := h.quantile(q)
		diff := float64(got) - float64(exact)
		if diff < 0 {
			diff = -diff
		}
		if diff > float64(exact)/float64(subCount) {
			t.Errorf("q%.3f: got %d, exact %d", q, got, exact)
		}
	}
}

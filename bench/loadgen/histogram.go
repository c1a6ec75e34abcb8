package main

import "math/bits"

// histogram is a log-linear latency histogram in the manner of HDR histograms:
// values below 2^subBits are exact; above, each power of two is split into
// 2^subBits equal buckets, so any recorded value is known to within 1/64
// (about 1.6%) while the whole range up to hours fits in a few thousand
// counters. One per connection goroutine, merged at the end, so recording
// needs no synchronisation.
const subBits = 6
const subCount = 1 << subBits

type histogram struct {
	counts [subCount * 59]uint64 // covers every uint64
	total  uint64
}

func bucketOf(v uint64) int {
	if v < 2*subCount {
		return int(v)
	}
	shift := bits.Len64(v) - (subBits + 1)
	return subCount*shift + int(v>>uint(shift))
}

// lowOf is the smallest value that falls in bucket i; bucketOf(lowOf(i)) == i.
func lowOf(i int) uint64 {
	if i < 2*subCount {
		return uint64(i)
	}
	shift := i/subCount - 1
	return uint64(i-subCount*shift) << uint(shift)
}

func (h *histogram) record(v uint64) {
	i := bucketOf(v)
	if i >= len(h.counts) {
		i = len(h.counts) - 1
	}
	h.counts[i]++
	h.total++
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.total += o.total
}

// quantile returns the middle of the bucket holding the q-th value, which is
// within half a bucket width of the true value.
func (h *histogram) quantile(q float64) uint64 {
	if h.total == 0 {
		return 0
	}
	rank := uint64(q*float64(h.total-1)) + 1
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			lo := lowOf(i)
			hi := lowOf(i + 1)
			return lo + (hi-lo)/2
		}
	}
	return lowOf(len(h.counts) - 1)
}

// Package main is goloop's C ABI: the functions the C extension takes from
// libgoloop.so with dlsym. Only integers and C memory cross; a loop is named
// by a handle, never by a Go pointer.
package main

/*
#include <stdint.h>
#include "goloop.h"
*/
import "C"

import (
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"time"
	"unsafe"

	"github.com/goloop-dev/goloop/goloop"
	"github.com/goloop-dev/goloop/goloop/dns" // also registers the dns.* methods
)

var (
	mu     sync.RWMutex
	loops  = map[int64]*goloop.Loop{}
	nextID int64
)

func lookup(h C.int64_t) *goloop.Loop {
	mu.RLock()
	l := loops[int64(h)]
	mu.RUnlock()
	return l
}

func putErr(err error, buf *C.char, n C.int) {
	if buf == nil || n <= 0 {
		return
	}
	dst := unsafe.Slice((*byte)(unsafe.Pointer(buf)), int(n))
	k := copy(dst[:len(dst)-1], err.Error())
	dst[k] = 0
}

var procsOnce sync.Once

// tuneRuntime keeps one P idle for the loop thread. Between two calls
// the loop thread is in C (running Python), which Go counts as a syscall;
// with a single P, sysmon takes that P away after 20 µs and starts another
// thread to hold it, several times per iteration. With an idle P to spare
// it leaves the loop's P alone (for up to 10 ms). A process pinned to one
// CPU gets GOMAXPROCS=1 by default, so this matters most exactly where
// servers are tuned; an explicit GOMAXPROCS is respected.
//
// The Go heap holds little (receive buffers are mmap'd, not Go memory), so
// collecting it four times less often costs little memory and saves CPU on
// the resolver's path; an explicit GOGC is respected.
func tuneRuntime() {
	procsOnce.Do(func() {
		if os.Getenv("GOMAXPROCS") == "" && runtime.GOMAXPROCS(0) < 2 {
			runtime.GOMAXPROCS(2)
		}
		if os.Getenv("GOGC") == "" {
			debug.SetGCPercent(400)
		}
	})
}

//export goloop_new
func goloop_new(backend *C.char, errbuf *C.char, errlen C.int) C.int64_t {
	tuneRuntime()
	kind := ""
	if backend != nil {
		kind = C.GoString(backend)
	}
	l, err := goloop.NewLoop(kind, goloop.Options{})
	if err != nil {
		putErr(err, errbuf, errlen)
		return 0
	}
	mu.Lock()
	nextID++
	id := nextID
	loops[id] = l
	mu.Unlock()
	return C.int64_t(id)
}

// goloop_poll is the one crossing per loop iteration: the iteration's
// submissions go in, completions come back, and the wait happens in
// between without the GIL (the C caller released it).
//
//export goloop_poll
func goloop_poll(h C.int64_t, subs *C.gl_sub, nsubs C.int, out *C.gl_comp, nout C.int, timeoutNs C.int64_t) C.int {
	l := lookup(h)
	if l == nil {
		return -9 // EBADF
	}
	var s []goloop.Sub
	if nsubs > 0 {
		s = unsafe.Slice((*goloop.Sub)(unsafe.Pointer(subs)), int(nsubs))
	}
	o := unsafe.Slice((*goloop.Comp)(unsafe.Pointer(out)), int(nout))
	n, err := l.Poll(s, o, time.Duration(timeoutNs))
	if err != nil {
		return -5 // EIO
	}
	return C.int(n)
}

//export goloop_wake
func goloop_wake(h C.int64_t) C.int {
	if l := lookup(h); l != nil {
		if l.Wake() == nil {
			return 0
		}
	}
	return -1
}

// goloop_wake_fd is the eventfd goloop_wake writes to, open until
// goloop_close (-1: none). C wakes the loop from another thread by writing
// to it under the GIL, which also orders it before goloop_close.
//
//export goloop_wake_fd
func goloop_wake_fd(h C.int64_t) C.int {
	if l := lookup(h); l != nil {
		return C.int(l.WakeFd())
	}
	return -1
}

//export goloop_close
func goloop_close(h C.int64_t) C.int {
	mu.Lock()
	l := loops[int64(h)]
	delete(loops, int64(h))
	mu.Unlock()
	if l == nil {
		return -1
	}
	err := l.Close()
	mu.RLock()
	last := len(loops) == 0
	mu.RUnlock()
	if last {
		dns.ReleaseSockets() // no loop left to use them
	}
	if err != nil {
		return -1
	}
	return 0
}

//export goloop_backend_name
func goloop_backend_name(h C.int64_t, buf *C.char, n C.int) C.int {
	l := lookup(h)
	if l == nil || n <= 0 {
		return -1
	}
	dst := unsafe.Slice((*byte)(unsafe.Pointer(buf)), int(n))
	k := copy(dst[:len(dst)-1], l.Backend().Name())
	dst[k] = 0
	return C.int(k)
}

//export goloop_call
func goloop_call(h C.int64_t, token C.uint64_t, method *C.char, req *C.char, reqlen C.int,
	out *C.char, outcap C.int, outlen *C.int) C.int {
	l := lookup(h)
	if l == nil {
		return -1
	}
	// C.GoBytes copies: the request may be freed when this call returns.
	state := l.Call(uint64(token), C.GoString(method), C.GoBytes(unsafe.Pointer(req), reqlen))
	switch state {
	case goloop.CallStarted:
		return 0
	case goloop.CallAnswered, goloop.CallFailed:
		// Hand a quick answer over in this same call when it fits, rather
		// than in two more (goloop_result to size, then to copy).
		r, _ := l.Result(uint64(token), false)
		*outlen = C.int(len(r))
		if len(r) <= int(outcap) {
			if len(r) > 0 {
				copy(unsafe.Slice((*byte)(unsafe.Pointer(out)), int(outcap)), r)
			}
			l.Result(uint64(token), true)
		}
		if state == goloop.CallAnswered {
			return 1
		}
		return 2
	}
	return -2
}

// goloop_result copies a finished call's result into out; it returns the
// full length, so a caller whose buffer was too small knows what to ask for.
//
//export goloop_result
func goloop_result(h C.int64_t, token C.uint64_t, out *C.char, cap_ C.int) C.int {
	l := lookup(h)
	if l == nil {
		return -1
	}
	r, ok := l.Result(uint64(token), false)
	if !ok {
		return -1
	}
	if int(cap_) >= len(r) {
		if len(r) > 0 {
			copy(unsafe.Slice((*byte)(unsafe.Pointer(out)), int(cap_)), r)
		}
		l.Result(uint64(token), true)
	}
	return C.int(len(r))
}

//export goloop_cancel
func goloop_cancel(h C.int64_t, token C.uint64_t) {
	if l := lookup(h); l != nil {
		l.Cancel(uint64(token))
	}
}

func main() {}

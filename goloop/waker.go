package goloop

import (
	"sync"

	"golang.org/x/sys/unix"
)

// waker is a backend's eventfd: a write from any goroutine ends the loop
// thread's wait. After close, wake fails instead of writing into whatever
// file took the number (a DNS goroutine may post after the loop closed).
type waker struct {
	mu   sync.RWMutex // close waits out wakes in progress
	fd   int
	gone bool
}

func (w *waker) wake() error {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.gone || w.fd < 0 {
		return unix.EBADF
	}
	var one = [8]byte{1}
	_, err := unix.Write(w.fd, one[:])
	if err == unix.EAGAIN {
		return nil // counter full: a wake-up is pending anyway
	}
	return err
}

func (w *waker) close() {
	w.mu.Lock()
	if !w.gone && w.fd >= 0 {
		unix.Close(w.fd)
	}
	w.gone = true
	w.mu.Unlock()
}

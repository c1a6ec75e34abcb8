package main

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"syscall"
	"time"
	"unsafe"
)

// conn is one closed-loop client: it has at most one request in flight.
type conn struct {
	fd      int
	index   int32  // its place in the connection table, kept as epoll data
	out     []byte // its own copy: a partial write resumes from it later
	sent    int
	got     int
	seq     byte
	start   time.Time
	wantOut bool // registered for EPOLLOUT because a write was partial
}

// run connects, drives the load until the timed window closes, and fills res.
func run(res *result, addr, unixPath string, warmup, duration time.Duration, windows int, spin bool, serverPid int, ioTimeout time.Duration) error {
	network, target, err := checkTarget(addr, unixPath)
	if err != nil {
		return err
	}
	if res.Conns < 1 || res.Size < 1 || windows < 1 {
		return errors.New("conns, size and windows must be positive")
	}
	sa, family, err := sockaddrOf(network, target)
	if err != nil {
		return err
	}

	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll_create1: %w", err)
	}
	defer syscall.Close(ep)

	conns := make([]*conn, 0, res.Conns)
	defer func() {
		for _, c := range conns {
			syscall.Close(c.fd)
		}
	}()
	for i := 0; i < res.Conns; i++ {
		fd, err := dial(family, sa)
		if err != nil {
			return fmt.Errorf("connect %d: %w", i, err)
		}
		c := &conn{fd: fd, index: int32(i), out: make([]byte, res.Size)}
		for j := range c.out {
			c.out[j] = 'x'
		}
		conns = append(conns, c)
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(i)}
		if err := syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
			return fmt.Errorf("epoll_ctl: %w", err)
		}
	}

	scratch := make([]byte, res.Size)
	var (
		win       *window // nil during warm-up
		done      []*window
		nextEdge  = time.Now().Add(warmup)
		lastStart time.Time
	)
	lastProgress := time.Now()
	for _, c := range conns {
		if err := c.startRequest(ep, lastProgress); err != nil {
			return err
		}
	}

	events := make([]syscall.EpollEvent, 256)
	for {
		wait := time.Until(nextEdge)
		if wait > 100*time.Millisecond {
			wait = 100 * time.Millisecond
		}
		ms := int((wait + time.Millisecond - 1) / time.Millisecond)
		if ms < 0 || spin {
			ms = 0
		}
		n, err := syscall.EpollWait(ep, events, ms)
		if err != nil && err != syscall.EINTR {
			return fmt.Errorf("epoll_wait: %w", err)
		}
		for i := 0; i < n; i++ {
			c := conns[events[i].Fd]
			ev := events[i].Events
			if ev&syscall.EPOLLOUT != 0 {
				if err := c.flush(ep); err != nil {
					return err
				}
			}
			if ev&(syscall.EPOLLIN|syscall.EPOLLERR|syscall.EPOLLHUP) == 0 {
				continue
			}
			finished, err := c.readSome(scratch)
			if err != nil {
				return err
			}
			if !finished {
				continue
			}
			end := time.Now()
			lastProgress = end
			// Counted only if it both started and ended inside the window,
			// so the count and the latencies describe the same requests.
			if win != nil && !c.start.Before(lastStart) {
				win.hist.record(uint64(end.Sub(c.start).Nanoseconds()))
				win.requests++
			}
			if err := c.startRequest(ep, end); err != nil {
				return err
			}
		}

		now := time.Now()
		if !now.Before(nextEdge) {
			if win != nil {
				if err := win.close(serverPid); err != nil {
					return err
				}
				done = append(done, win)
			}
			if len(done) == windows {
				res.fill(done, serverPid)
				return nil
			}
			if win, err = openWindow(serverPid); err != nil {
				return err
			}
			lastStart = win.t0
			nextEdge = win.t0.Add(duration)
		}
		if now.Sub(lastProgress) > ioTimeout {
			return fmt.Errorf("no response completed for %v", ioTimeout)
		}
	}
}

// window is one timed measurement; a run has several back to back so that a
// burst of unrelated activity on the machine spoils one window, not the cell.
type window struct {
	hist         histogram
	requests     uint64
	t0, t1       time.Time
	cpu0, cpu1   float64
	self0, self1 float64
	busy0, busy1 float64 // seconds the watched CPUs were not idle, per /proc/stat
}

func openWindow(serverPid int) (*window, error) {
	w := &window{}
	var err error
	if w.cpu0, err = procCPU(serverPid); err != nil {
		return nil, fmt.Errorf("reading server CPU: %w", err)
	}
	w.self0 = selfCPU()
	w.busy0 = cpusBusy()
	w.t0 = time.Now()
	return w, nil
}

func (w *window) close(serverPid int) error {
	w.t1 = time.Now()
	var err error
	if w.cpu1, err = procCPU(serverPid); err != nil {
		return fmt.Errorf("reading server CPU: %w", err)
	}
	w.self1 = selfCPU()
	w.busy1 = cpusBusy()
	return nil
}

func (w *window) rps() float64 { return float64(w.requests) / w.t1.Sub(w.t0).Seconds() }

// otherCPU is how many CPUs' worth of time went to neither the server nor
// this process during the window: other programs, the hypervisor's steal.
func (w *window) otherCPU(serverPid int) float64 {
	secs := w.t1.Sub(w.t0).Seconds()
	other := (w.busy1 - w.busy0) - (w.self1 - w.self0)
	if serverPid > 0 {
		other -= w.cpu1 - w.cpu0
	}
	if other < 0 {
		other = 0 // /proc/stat is sampled per tick; small negatives are noise
	}
	return other / secs
}

// fill reports the window with the highest throughput: interference from
// the rest of the machine only ever slows a window down, so the fastest one
// is closest to what the server can do. Every window's throughput and
// interference are reported so that the spread is visible.
func (res *result) fill(ws []*window, serverPid int) {
	for _, w := range ws {
		res.WindowsRPS = append(res.WindowsRPS, w.rps())
		res.WindowsOther = append(res.WindowsOther, w.otherCPU(serverPid))
	}
	sorted := append([]*window(nil), ws...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].rps() < sorted[j].rps() })
	w := sorted[len(sorted)-1]
	res.OtherCPU = w.otherCPU(serverPid)
	res.Seconds = w.t1.Sub(w.t0).Seconds()
	res.Requests = w.requests
	res.RPS = w.rps()
	// Each request moves size bytes each way.
	res.BytesPerSec = 2 * float64(res.Size) * res.RPS
	res.P50us = float64(w.hist.quantile(0.50)) / 1e3
	res.P99us = float64(w.hist.quantile(0.99)) / 1e3
	res.MaxUs = float64(w.hist.quantile(1.0)) / 1e3
	res.LoadgenCPUUtil = (w.self1 - w.self0) / res.Seconds
	if serverPid > 0 {
		res.ServerCPUs = w.cpu1 - w.cpu0
		if w.requests > 0 {
			res.ServerCPUperRq = res.ServerCPUs / float64(w.requests) * 1e6
		}
	}
}

// startRequest sends the next message. The first and last byte carry a
// sequence number so that an echo of the wrong or stale data is caught
// cheaply.
func (c *conn) startRequest(ep int, now time.Time) error {
	c.seq++
	c.out[0], c.out[len(c.out)-1] = c.seq, c.seq
	c.sent, c.got = 0, 0
	c.start = now
	return c.flush(ep)
}

func (c *conn) flush(ep int) error {
	for c.sent < len(c.out) {
		n, err := rawWrite(c.fd, c.out[c.sent:])
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EAGAIN {
			if !c.wantOut {
				c.wantOut = true
				return c.interest(ep, syscall.EPOLLIN|syscall.EPOLLOUT)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("write: %w", err)
		}
		c.sent += n
	}
	if c.wantOut {
		c.wantOut = false
		return c.interest(ep, syscall.EPOLLIN)
	}
	return nil
}

func (c *conn) interest(ep int, events uint32) error {
	ev := syscall.EpollEvent{Events: events, Fd: c.index}
	if err := syscall.EpollCtl(ep, syscall.EPOLL_CTL_MOD, c.fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	return nil
}

// readSome reads what has arrived of the current reply; done when all of it has.
func (c *conn) readSome(scratch []byte) (done bool, err error) {
	size := len(c.out)
	for c.got < size {
		n, err := rawRead(c.fd, scratch[:size-c.got])
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EAGAIN {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("read: %w", err)
		}
		if n == 0 {
			return false, errors.New("server closed the connection")
		}
		if c.got == 0 && scratch[0] != c.seq {
			return false, errors.New("echo returned different bytes")
		}
		c.got += n
		if c.got == size && scratch[n-1] != c.seq {
			return false, errors.New("echo returned different bytes")
		}
	}
	return true, nil
}

func sockaddrOf(network, target string) (syscall.Sockaddr, int, error) {
	if network == "unix" {
		return &syscall.SockaddrUnix{Name: target}, syscall.AF_UNIX, nil
	}
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		return nil, 0, err
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return nil, 0, err
	}
	ip := net.ParseIP(host)
	if ip4 := ip.To4(); ip4 != nil {
		sa := &syscall.SockaddrInet4{Port: p}
		copy(sa.Addr[:], ip4)
		return sa, syscall.AF_INET, nil
	}
	sa := &syscall.SockaddrInet6{Port: p}
	copy(sa.Addr[:], ip.To16())
	return sa, syscall.AF_INET6, nil
}

// dial connects blocking (loopback connects complete at once or are
// refused), then switches the socket to non-blocking for the run.
func dial(family int, sa syscall.Sockaddr) (int, error) {
	fd, err := syscall.Socket(family, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := syscall.Connect(fd, sa); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	if family != syscall.AF_UNIX {
		syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	}
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

// rawRead and rawWrite skip the runtime's syscall bookkeeping (which lets
// another goroutine run while a call blocks): the sockets are non-blocking
// and this thread has nothing else to run, so the bookkeeping is pure cost
// in the generator's hottest path.
func rawRead(fd int, p []byte) (int, error) {
	r, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

func rawWrite(fd int, p []byte) (int, error) {
	r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

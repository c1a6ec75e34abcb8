package main

import (
	"errors"
	"fmt"
	"syscall"
	"time"
)

// Churn mode (-churn) measures how fast a server takes new connections: each
// of -conns units connects, sends one -size message, reads its echo, closes,
// and starts over with a new connection. A unit's latency is the whole
// connect→echo→close; the rate is connections completed per second.
//
// The client closes with SO_LINGER 0, so the close sends a reset instead of a
// FIN. A FIN close would leave every client port in TIME_WAIT for 60 s, and at
// tens of thousands of connections per second the 28,000 ephemeral ports of
// the default range run out within a second (tcp_tw_reuse only recycles a
// port whose TIME_WAIT is a second old, and searching a port range full of
// TIME_WAIT sockets makes connect() itself slow). With the reset no socket
// lingers on either side. The server has already written the echo and sees
// the reset on its next read: ECONNRESET, which asyncio, uvloop and goloop
// treat as the peer going away (connection_lost with the error, logged only in
// debug mode), and which the C echo handles by closing the socket.

// churner is one unit of concurrency: at most one connection at a time.
type churner struct {
	fd         int
	index      int32
	connecting bool // connect() in progress: the first EPOLLOUT completes it
	got        int
	seq        byte
	start      time.Time
}

// churnStats are what a run of units reports besides the windows.
type churnStats struct {
	errors   uint64
	lastErr  error
	refused  uint64 // connect refused: the listen backlog overflowed or the server is gone
	timeouts uint64
}

func runChurn(res *result, addr, unixPath string, warmup, duration time.Duration, windows int, spin bool, serverPid int, ioTimeout time.Duration) error {
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

	out := make([]byte, res.Size)
	for i := range out {
		out[i] = 'x'
	}
	scratch := make([]byte, res.Size)
	units := make([]*churner, res.Conns)
	defer func() {
		for _, u := range units {
			if u != nil && u.fd >= 0 {
				syscall.Close(u.fd)
			}
		}
	}()
	var st churnStats
	now := time.Now()
	for i := range units {
		units[i] = &churner{fd: -1, index: int32(i)}
		if err := units[i].open(ep, family, sa, out, now, &st); err != nil {
			return err
		}
	}

	var (
		win       *window
		done      []*window
		nextEdge  = time.Now().Add(warmup)
		lastStart time.Time
		lastScan  = time.Now()
	)
	lastProgress := time.Now()
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
			u := units[events[i].Fd]
			finished, uerr := u.step(events[i].Events, out, scratch)
			if uerr == nil && !finished {
				continue
			}
			end := time.Now()
			if uerr != nil {
				st.fail(uerr)
			} else {
				lastProgress = end
				// As in echo mode: counted only if the connection both began
				// and ended inside the window.
				if win != nil && !u.start.Before(lastStart) {
					win.hist.record(uint64(end.Sub(u.start).Nanoseconds()))
					win.requests++
				}
			}
			u.abort()
			if err := u.open(ep, family, sa, out, end, &st); err != nil {
				return err
			}
		}

		now := time.Now()
		// A unit stuck longer than -io-timeout (a lost SYN waits for its
		// retransmission, a server may stop answering) is an error, and the
		// unit starts over, so one stuck connection cannot stall its share
		// of the load for the rest of the run.
		if now.Sub(lastScan) > 100*time.Millisecond {
			lastScan = now
			for _, u := range units {
				if u.fd >= 0 && now.Sub(u.start) <= ioTimeout {
					continue
				}
				if u.fd >= 0 {
					st.timeouts++
					st.fail(fmt.Errorf("no echo within %v", ioTimeout))
					u.abort()
				}
				// A unit without a connection had its connect fail at once
				// (refused, no port free); it retries here, up to 100 ms
				// later, rather than in a tight loop.
				if err := u.open(ep, family, sa, out, now, &st); err != nil {
					return err
				}
			}
		}
		if !now.Before(nextEdge) {
			if win != nil {
				if err := win.close(serverPid); err != nil {
					return err
				}
				done = append(done, win)
			}
			if len(done) == windows {
				res.fill(done, serverPid)
				res.Errors, res.Refused, res.Timeouts = st.errors, st.refused, st.timeouts
				if st.lastErr != nil {
					res.LastError = st.lastErr.Error()
				}
				return nil
			}
			if win, err = openWindow(serverPid); err != nil {
				return err
			}
			lastStart = win.t0
			nextEdge = win.t0.Add(duration)
		}
		if now.Sub(lastProgress) > ioTimeout {
			msg := "nothing"
			if st.lastErr != nil {
				msg = st.lastErr.Error()
			}
			return fmt.Errorf("no connection completed for %v (last error: %s)", ioTimeout, msg)
		}
	}
}

func (st *churnStats) fail(err error) {
	st.errors++
	st.lastErr = err
	if errors.Is(err, syscall.ECONNREFUSED) {
		st.refused++
	}
}

// open starts the unit's next connection. Failures that belong to one
// connection (refused, no port free) are counted and the unit retries from
// the event loop's next pass; only failures of this process are returned.
func (u *churner) open(ep, family int, sa syscall.Sockaddr, out []byte, now time.Time, st *churnStats) error {
	u.seq++
	u.got = 0
	u.start = now
	fd, err := syscall.Socket(family, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	u.fd = fd
	if family != syscall.AF_UNIX {
		// Reset on close: see the comment at the top of this file.
		if err := syscall.SetsockoptLinger(fd, syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1, Linger: 0}); err != nil {
			return fmt.Errorf("SO_LINGER: %w", err)
		}
	}
	// Edge-triggered for both directions: the connect completing and the
	// echo arriving each raise one edge, so the fd is registered once and
	// never modified; close() removes it.
	ev := syscall.EpollEvent{Events: churnEvents, Fd: u.index}
	if err := syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	err = syscall.Connect(fd, sa)
	switch err {
	case nil:
		u.connecting = false
		if err := u.send(out); err != nil {
			st.fail(err)
			u.abort()
		}
	case syscall.EINPROGRESS:
		u.connecting = true
	default:
		// Refused, out of ports, or (EAGAIN) a Unix socket's backlog
		// full, where unlike TCP the connect does not go on: counted, and
		// the unit is left without a connection for the next scan to
		// reopen.
		st.fail(fmt.Errorf("connect: %w", err))
		u.abort()
	}
	return nil
}

// EPOLLET is bit 31: as an untyped constant it is negative in Go's syscall
// package, so the set is built as a uint32.
const churnEvents = uint32(syscall.EPOLLIN|syscall.EPOLLOUT|syscall.EPOLLRDHUP) | 1<<31

func (u *churner) send(out []byte) error {
	out[0], out[len(out)-1] = u.seq, u.seq
	// One small message into an empty socket buffer: the kernel takes all
	// of it or the connection is broken.
	n, err := rawWrite(u.fd, out)
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if n != len(out) {
		return fmt.Errorf("short write of %d bytes", n)
	}
	return nil
}

// step handles one epoll event; finished when the whole echo is in.
func (u *churner) step(events uint32, out, scratch []byte) (finished bool, err error) {
	if u.fd < 0 {
		return false, nil
	}
	if u.connecting {
		if events&(syscall.EPOLLOUT|syscall.EPOLLERR|syscall.EPOLLHUP) == 0 {
			return false, nil
		}
		soerr, err := syscall.GetsockoptInt(u.fd, syscall.SOL_SOCKET, syscall.SO_ERROR)
		if err != nil {
			return false, fmt.Errorf("connect: %w", err)
		}
		if soerr != 0 {
			return false, fmt.Errorf("connect: %w", syscall.Errno(soerr))
		}
		u.connecting = false
		if err := u.send(out); err != nil {
			return false, err
		}
	}
	if events&(syscall.EPOLLIN|syscall.EPOLLRDHUP|syscall.EPOLLERR|syscall.EPOLLHUP) == 0 {
		return false, nil
	}
	size := len(out)
	for u.got < size {
		n, err := rawRead(u.fd, scratch[:size-u.got])
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
			return false, errors.New("server closed the connection before the echo")
		}
		if u.got == 0 && scratch[0] != u.seq {
			return false, errors.New("echo returned different bytes")
		}
		u.got += n
		if u.got == size && scratch[n-1] != u.seq {
			return false, errors.New("echo returned different bytes")
		}
	}
	return true, nil
}

// abort closes the unit's connection (a reset, with SO_LINGER 0).
func (u *churner) abort() {
	if u.fd >= 0 {
		syscall.Close(u.fd)
		u.fd = -1
	}
}

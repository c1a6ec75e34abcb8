package main

// TLS mode (-tls): the same two loads as without it, echo and -churn, over
// Go's crypto/tls.
//
// crypto/tls cannot be driven from the raw epoll loop the plain modes use: a
// handshake interrupted by EAGAIN fails for good. So here every connection
// (echo) or unit of concurrency (churn) is a goroutine doing blocking I/O
// through Go's netpoller, still on one OS thread at a time (GOMAXPROCS 1, the
// process pinned by the harness). That costs the generator a few
// microseconds per request more than the raw loop, small beside the
// encryption both ends do and beside a Python server's cost per request.
// The windows, the server CPU per request and everything else in the JSON
// are measured exactly as in the plain modes.
//
// Echo: each connection is dialled and its handshake completed before the
// warm-up starts, so the timed windows measure records only. Churn: each
// connection is a full handshake (no session resumption unless
// -tls-resume), one message echoed, then close_notify and a reset close
// (SO_LINGER 0, see churn.go for why a reset).

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// tlsOptions are the -tls-* flags.
type tlsOptions struct {
	version    string // "1.2" or "1.3"
	cipher     string // a crypto/tls cipher suite name, TLS 1.2 only; "" for Go's choice
	caFile     string // verify the server's certificate against this CA bundle
	insecure   bool   // or do not verify it at all
	resume     bool   // churn: keep session tickets and resume with them
	serverName string // SNI and the name verified in the certificate
}

// config builds the client's tls.Config; every error is the user's.
func (o tlsOptions) config() (*tls.Config, error) {
	cfg := &tls.Config{
		ServerName: o.serverName,
		// The key exchanges an OpenSSL 3.0 server (Python's ssl here) can
		// pick. Go's default list starts with X25519MLKEM768, whose share the
		// client would compute on every handshake for nothing: about a tenth
		// of the generator's CPU per new connection.
		CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256},
	}
	switch o.version {
	case "1.2":
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	case "1.3":
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS13, tls.VersionTLS13
	default:
		return nil, fmt.Errorf("-tls-version must be 1.2 or 1.3, not %q", o.version)
	}
	if o.cipher != "" {
		if o.version == "1.3" {
			// crypto/tls picks TLS 1.3 suites itself (AES-GCM where the CPU
			// has AES instructions, else ChaCha20-Poly1305); there is no knob.
			return nil, errors.New("-tls-cipher applies to TLS 1.2 only: Go's TLS 1.3 cipher suites are not configurable")
		}
		id, ok := cipherByName(o.cipher)
		if !ok {
			return nil, fmt.Errorf("unknown or insecure TLS 1.2 cipher suite %q (names as in Go's crypto/tls, e.g. TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)", o.cipher)
		}
		cfg.CipherSuites = []uint16{id}
	}
	switch {
	case o.caFile != "" && o.insecure:
		return nil, errors.New("give -ca or -insecure, not both")
	case o.insecure:
		cfg.InsecureSkipVerify = true
	case o.caFile != "":
		pem, err := os.ReadFile(o.caFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no PEM certificate in %s", o.caFile)
		}
		cfg.RootCAs = pool
	default:
		return nil, errors.New("-tls needs -ca FILE (verify the server) or -insecure")
	}
	if o.resume {
		// One shared cache: every unit resumes with the latest ticket.
		cfg.ClientSessionCache = tls.NewLRUClientSessionCache(64)
	}
	// Without a cache Go's client ignores the server's tickets: every
	// connection is a full handshake.
	return cfg, nil
}

func cipherByName(name string) (uint16, bool) {
	for _, s := range tls.CipherSuites() {
		if strings.EqualFold(s.Name, name) {
			return s.ID, true
		}
	}
	return 0, false
}

// tlsMeter is the windows' bookkeeping shared by the goroutines: one mutex,
// taken once per completed request (uncontended in practice: GOMAXPROCS 1).
type tlsMeter struct {
	mu           sync.Mutex
	win          *window // nil during warm-up
	lastStart    time.Time
	lastProgress time.Time
	st           churnStats
	handshakes   uint64
	resumed      uint64
	state        tls.ConnectionState // of the latest completed handshake
	haveState    bool
	stopping     atomic.Bool
	failed       chan error // a fatal error from a goroutine; the first one wins
	conns        sync.Map   // live connections, closed on the way out
}

func newTLSMeter() *tlsMeter {
	return &tlsMeter{lastProgress: time.Now(), failed: make(chan error, 1)}
}

// done records a request (echo) or connection (churn) that ran from start
// to end: counted only if it both began and ended inside the open window.
func (m *tlsMeter) done(start, end time.Time) {
	m.mu.Lock()
	m.lastProgress = end
	if m.win != nil && !start.Before(m.lastStart) {
		m.win.hist.record(uint64(end.Sub(start).Nanoseconds()))
		m.win.requests++
	}
	m.mu.Unlock()
}

func (m *tlsMeter) handshake(c *tls.Conn) {
	cs := c.ConnectionState()
	m.mu.Lock()
	m.handshakes++
	if cs.DidResume {
		m.resumed++
	}
	m.state, m.haveState = cs, true
	m.mu.Unlock()
}

// fatal ends the run with err, unless it is already ending (then the error
// is most likely the connection being closed under the goroutine).
func (m *tlsMeter) fatal(err error) {
	if m.stopping.Load() {
		return
	}
	select {
	case m.failed <- err:
	default:
	}
}

func (m *tlsMeter) closeAll() {
	m.stopping.Store(true)
	m.conns.Range(func(k, _ any) bool {
		k.(net.Conn).Close()
		return true
	})
}

// drive runs the warm-up and the windows, as run() does for the plain modes,
// while the goroutines carry the load; then it fills res.
func (m *tlsMeter) drive(res *result, warmup, duration time.Duration, windows, serverPid int, ioTimeout time.Duration, churn bool) error {
	var done []*window
	nextEdge := time.Now().Add(warmup)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		wait := time.Until(nextEdge)
		if wait > 100*time.Millisecond {
			wait = 100 * time.Millisecond
		}
		if wait < 0 {
			wait = 0
		}
		timer.Reset(wait)
		select {
		case err := <-m.failed:
			return err
		case <-timer.C:
		}
		now := time.Now()
		if !now.Before(nextEdge) {
			m.mu.Lock()
			if m.win != nil {
				if err := m.win.close(serverPid); err != nil {
					m.mu.Unlock()
					return err
				}
				done = append(done, m.win)
				m.win = nil
			}
			if len(done) == windows {
				res.fill(done, serverPid)
				m.report(res, churn)
				m.mu.Unlock()
				return nil
			}
			w, err := openWindow(serverPid)
			if err != nil {
				m.mu.Unlock()
				return err
			}
			m.win, m.lastStart = w, w.t0
			nextEdge = w.t0.Add(duration)
			m.mu.Unlock()
		}
		m.mu.Lock()
		stalled := now.Sub(m.lastProgress) > ioTimeout
		lastErr := m.st.lastErr
		m.mu.Unlock()
		if stalled {
			if !churn {
				return fmt.Errorf("no response completed for %v", ioTimeout)
			}
			msg := "nothing"
			if lastErr != nil {
				msg = lastErr.Error()
			}
			return fmt.Errorf("no connection completed for %v (last error: %s)", ioTimeout, msg)
		}
	}
}

// report adds the TLS fields (and churn's error counts) to res; m.mu held.
func (m *tlsMeter) report(res *result, churn bool) {
	res.TLSHandshakes, res.TLSResumed = m.handshakes, m.resumed
	if m.haveState {
		res.TLSVersion = tls.VersionName(m.state.Version)
		res.TLSCipher = tls.CipherSuiteName(m.state.CipherSuite)
		res.TLSCurve = m.state.CurveID.String()
	}
	if churn {
		res.Errors, res.Refused, res.Timeouts = m.st.errors, m.st.refused, m.st.timeouts
		if m.st.lastErr != nil {
			res.LastError = m.st.lastErr.Error()
		}
	}
}

// tlsDial connects and completes a handshake within deadline. The socket is
// in m.conns from the connect on, so that the end of the run interrupts a
// handshake too; the caller removes it (forget) when done with it.
func (m *tlsMeter) tlsDial(network, target string, cfg *tls.Config, deadline time.Time, reset bool) (*tls.Conn, error) {
	d := net.Dialer{Deadline: deadline}
	raw, err := d.Dial(network, target)
	if err != nil {
		return nil, err
	}
	m.conns.Store(raw, nil)
	if m.stopping.Load() {
		m.forget(raw)
		return nil, errors.New("stopping")
	}
	if tc, ok := raw.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
		if reset {
			// Reset on close: see the comment at the top of churn.go.
			tc.SetLinger(0)
		}
	}
	c := tls.Client(raw, cfg)
	c.SetDeadline(deadline)
	if err := c.Handshake(); err != nil {
		m.forget(raw)
		return nil, fmt.Errorf("handshake: %w", err)
	}
	return c, nil
}

// forget closes a socket and takes it out of m.conns.
func (m *tlsMeter) forget(c net.Conn) {
	c.Close()
	m.conns.Delete(c)
}

// checkEcho verifies the sequence number in the first and last byte.
func checkEcho(in []byte, seq byte) error {
	if in[0] != seq || in[len(in)-1] != seq {
		return errors.New("echo returned different bytes")
	}
	return nil
}

func filled(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'x'
	}
	return b
}

// runTLS is echo mode over TLS: res.Conns connections, each closed-loop.
func runTLS(res *result, addr, unixPath string, warmup, duration time.Duration, windows int, serverPid int, ioTimeout time.Duration, cfg *tls.Config) error {
	network, target, err := checkTarget(addr, unixPath)
	if err != nil {
		return err
	}
	if res.Conns < 1 || res.Size < 1 || windows < 1 {
		return errors.New("conns, size and windows must be positive")
	}
	res.TLS = true
	m := newTLSMeter()
	var wg sync.WaitGroup
	defer func() {
		m.closeAll()
		wg.Wait()
	}()
	conns := make([]*tls.Conn, 0, res.Conns)
	for i := 0; i < res.Conns; i++ {
		c, err := m.tlsDial(network, target, cfg, time.Now().Add(ioTimeout), false)
		if err != nil {
			return fmt.Errorf("connect %d: %w", i, err)
		}
		c.SetDeadline(time.Time{})
		m.handshake(c)
		conns = append(conns, c)
	}
	m.mu.Lock()
	m.lastProgress = time.Now()
	m.mu.Unlock()
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.echoLoop(c, res.Size)
		}()
	}
	return m.drive(res, warmup, duration, windows, serverPid, ioTimeout, false)
}

// largeWrite: above one TLS record the message is written by a second
// goroutine while this one reads the echo, as the raw loop interleaves them:
// a server that stops reading while its output is pending (streams' drain)
// would otherwise deadlock against a client that is still writing.
const largeWrite = 16 * 1024

func (m *tlsMeter) echoLoop(c *tls.Conn, size int) {
	out, in := filled(size), make([]byte, size)
	var (
		seq     byte
		kick    chan struct{}
		written chan error
	)
	if size > largeWrite {
		kick, written = make(chan struct{}), make(chan error, 1)
		var writer sync.WaitGroup
		writer.Add(1)
		defer func() {
			close(kick)
			writer.Wait()
		}()
		go func() {
			defer writer.Done()
			for range kick {
				_, err := c.Write(out)
				written <- err
			}
		}()
	}
	for !m.stopping.Load() {
		seq++
		out[0], out[size-1] = seq, seq
		start := time.Now()
		if kick != nil {
			kick <- struct{}{}
		} else if _, err := c.Write(out); err != nil {
			m.fatal(fmt.Errorf("write: %w", err))
			return
		}
		if _, err := io.ReadFull(c, in); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				err = errors.New("server closed the connection")
			}
			m.fatal(fmt.Errorf("read: %w", err))
			return
		}
		if kick != nil {
			if err := <-written; err != nil {
				m.fatal(fmt.Errorf("write: %w", err))
				return
			}
		}
		if err := checkEcho(in, seq); err != nil {
			m.fatal(err)
			return
		}
		m.done(start, time.Now())
	}
}

// runTLSChurn is churn mode over TLS: res.Conns units, each making one new
// connection after another.
func runTLSChurn(res *result, addr, unixPath string, warmup, duration time.Duration, windows int, serverPid int, ioTimeout time.Duration, cfg *tls.Config) error {
	network, target, err := checkTarget(addr, unixPath)
	if err != nil {
		return err
	}
	if res.Conns < 1 || res.Size < 1 || windows < 1 {
		return errors.New("conns, size and windows must be positive")
	}
	res.TLS = true
	m := newTLSMeter()
	var wg sync.WaitGroup
	defer func() {
		m.closeAll()
		wg.Wait()
	}()
	for i := 0; i < res.Conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.churnLoop(network, target, cfg, res.Size, ioTimeout)
		}()
	}
	return m.drive(res, warmup, duration, windows, serverPid, ioTimeout, true)
}

func (m *tlsMeter) churnLoop(network, target string, cfg *tls.Config, size int, ioTimeout time.Duration) {
	out, in := filled(size), make([]byte, size)
	var seq byte
	for !m.stopping.Load() {
		seq++
		start := time.Now()
		err := m.oneConn(network, target, cfg, out, in, seq, start.Add(ioTimeout))
		end := time.Now()
		if err == nil {
			m.done(start, end)
			continue
		}
		if m.stopping.Load() {
			return
		}
		m.mu.Lock()
		m.st.fail(err)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			m.st.timeouts++
		}
		m.mu.Unlock()
		// A refused connect fails at once; retrying in a tight loop would
		// only burn the generator's CPU (the plain churn retries on its
		// next 100 ms scan).
		if errors.Is(err, syscall.ECONNREFUSED) || end.Sub(start) < time.Millisecond {
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// oneConn is one whole connection: connect, handshake, echo, close.
func (m *tlsMeter) oneConn(network, target string, cfg *tls.Config, out, in []byte, seq byte, deadline time.Time) error {
	c, err := m.tlsDial(network, target, cfg, deadline, true)
	if err != nil {
		return err
	}
	defer func() {
		// close_notify, then the reset close.
		c.Close()
		m.conns.Delete(c.NetConn())
	}()
	m.handshake(c)
	out[0], out[len(out)-1] = seq, seq
	if _, err := c.Write(out); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if _, err := io.ReadFull(c, in); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return errors.New("server closed the connection before the echo")
		}
		return fmt.Errorf("read: %w", err)
	}
	return checkEcho(in, seq)
}

package main

import (
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// echoServer accepts on loopback and echoes each connection until it ends,
// counting connections and how each ended.
type echoServer struct {
	ln       net.Listener
	accepted atomic.Int64
	resets   atomic.Int64 // ended by ECONNRESET, as the churn client's close does
	eofs     atomic.Int64
	other    atomic.Int64
	wg       sync.WaitGroup
}

func startEcho(t *testing.T) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				_, err := io.Copy(c, c)
				switch {
				case err == nil:
					s.eofs.Add(1)
				case errors.Is(err, syscall.ECONNRESET):
					s.resets.Add(1)
				default:
					s.other.Add(1)
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.wg.Wait()
	})
	return s
}

func TestChurnCountsWholeConnections(t *testing.T) {
	s := startEcho(t)
	res := result{Conns: 4, Size: 64}
	err := runChurn(&res, s.ln.Addr().String(), "", 50*time.Millisecond, 200*time.Millisecond, 2, false, 0, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors != 0 {
		t.Fatalf("%d errors, last: %s", res.Errors, res.LastError)
	}
	if res.Requests == 0 || res.RPS <= 0 || len(res.WindowsRPS) != 2 {
		t.Fatalf("no connections counted: %+v", res)
	}
	if res.P50us <= 0 || res.P99us < res.P50us {
		t.Fatalf("bad latencies: p50 %v p99 %v", res.P50us, res.P99us)
	}
	// Every counted connection was a separate accept on the server, and the
	// server saw it end with the reset (or, if the echo goroutine was still
	// writing, an EOF), never a broken echo.
	s.ln.Close()
	s.wg.Wait()
	if got := s.accepted.Load(); got < int64(res.Requests) {
		t.Fatalf("server accepted %d connections, client counted %d", got, res.Requests)
	}
	if s.other.Load() != 0 {
		t.Fatalf("%d connections ended with an unexpected error", s.other.Load())
	}
	if s.resets.Load() == 0 {
		t.Fatalf("no connection ended with a reset (eofs %d)", s.eofs.Load())
	}
}

func TestChurnRefusedIsCountedThenGivesUp(t *testing.T) {
	// A port nothing listens on: every connect is refused.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	// A short run: it completes, and reports the refusals as errors.
	res := result{Conns: 2, Size: 64}
	if err := runChurn(&res, addr, "", 10*time.Millisecond, 150*time.Millisecond, 1, false, 0, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if res.Requests != 0 || res.Errors == 0 || res.Refused != res.Errors {
		t.Fatalf("want only refusals, got %d connections, %d errors, %d refused", res.Requests, res.Errors, res.Refused)
	}
	if !strings.Contains(res.LastError, "refused") {
		t.Fatalf("last error %q", res.LastError)
	}
	// A run longer than -io-timeout without one connection gives up.
	res = result{Conns: 2, Size: 64}
	err = runChurn(&res, addr, "", 10*time.Millisecond, 2*time.Second, 1, false, 0, 300*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "no connection completed") || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("want a give-up error naming the refusal, got %v", err)
	}
}

func TestChurnRefusesNonLoopback(t *testing.T) {
	res := result{Conns: 1, Size: 64}
	if err := runChurn(&res, "192.0.2.1:7", "", 0, time.Millisecond, 1, false, 0, time.Second); err == nil {
		t.Fatal("non-loopback address accepted")
	}
}

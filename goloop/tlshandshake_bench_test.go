package goloop

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Server-side "tls.handshake" rate: full TLS 1.3 handshakes (no
// resumption), ECDSA P-256 and RSA 2048, one at a time and GOMAXPROCS at
// once. The crypto/tls client runs in the same process, so the machine's
// CPUs are shared by both ends (the client skips verification to keep its
// share small).
func BenchmarkTLSHandshakeServer(b *testing.B) {
	pki(b)
	for _, kc := range []struct{ name, file string }{{"ecdsa-p256", sharedECDSA}, {"rsa-2048", sharedRSA}} {
		for _, par := range []int{1, runtime.GOMAXPROCS(0)} {
			b.Run(fmt.Sprintf("%s/goroutines=%d", kc.name, par), func(b *testing.B) {
				id := newCtx(b, ctxReq{"server": true, "cert_chain": []any{map[string]any{"certfile": kc.file}}, "session_tickets": false})
				ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
				if err != nil {
					b.Fatal(err)
				}
				defer ln.Close()
				ccfg := &tls.Config{InsecureSkipVerify: true}
				var next atomic.Int64
				var failed atomic.Value
				one := func() {
					c, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
					if err != nil {
						failed.Store(err)
						return
					}
					s, err := ln.AcceptTCP()
					if err != nil {
						failed.Store(err)
						return
					}
					rc, _ := s.SyscallConn()
					var fd int
					rc.Control(func(x uintptr) { fd, err = unix.Dup(int(x)) })
					tc := tls.Client(c, ccfg)
					done := make(chan error, 1)
					go func() { done <- tc.Handshake() }()
					if _, err := callHandshake(context.Background(), id, fd, true, ""); err != nil {
						failed.Store(err)
					}
					<-done
					c.Close()
					s.Close()
				}
				b.ResetTimer()
				start := time.Now()
				var wg sync.WaitGroup
				for g := 0; g < par; g++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for next.Add(1) <= int64(b.N) {
							one()
						}
					}()
				}
				wg.Wait()
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "handshakes/s")
				if err, _ := failed.Load().(error); err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}

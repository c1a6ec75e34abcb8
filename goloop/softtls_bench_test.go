package goloop

import (
	"net"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkSoftTLSEcho: the TLS echo hot path through Go's record layer
// (softtls.go) on both backends: both ends of a loopback TCP connection
// whose handshake crypto/tls did are soft fds of one backend; the client
// sends a message, the server echoes every chunk it receives as it
// comes, and the client waits for the whole message before the next.
// MB/s counts the bytes both ways.
//
//	go test -run X -bench SoftTLSEcho ./goloop/
func BenchmarkSoftTLSEcho(b *testing.B) {
	for _, kind := range softBackends {
		for _, c := range []ktlsCase{ktlsCases[3], ktlsCases[5], ktlsCases[0]} {
			for _, size := range []int{1 << 10, 64 << 10} {
				b.Run(kind+"/"+c.name+"/"+sizeName(size), func(b *testing.B) { softEcho(b, kind, c, size) })
			}
		}
	}
}

func sizeName(n int) string {
	if n >= 1<<10 {
		return strconv.Itoa(n>>10) + "KiB"
	}
	return strconv.Itoa(n) + "B"
}

// softPair installs soft TLS on both ends of one handshaken connection in
// be: srv (the handshake's server) and cli.
func softPair(b testing.TB, be Backend, c ktlsCase) (srv, cli int32) {
	k := ktlsHandshake(b, c, true, false)
	ps := ktlsParamsFrom(b, c, k)
	ps.Flags = KTLSSoftOnly
	pc := newParams()
	*pc = *ps
	pc.Server = 0
	sfd, err := dupConnFd(k.tcp)
	if err != nil {
		b.Fatal(err)
	}
	cfd, err := dupConnFd(k.peer.NetConn().(*net.TCPConn))
	if err != nil {
		b.Fatal(err)
	}
	srv, cli = int32(sfd), int32(cfd)
	unix.SetsockoptInt(sfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	unix.SetsockoptInt(cfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	subs := []Sub{{Op: OpKTLS, Fd: srv, Token: 1, Ptr: paramsPtr(ps)}, {Op: OpKTLS, Fd: cli, Token: 2, Ptr: paramsPtr(pc)}}
	out := make([]Comp, 16)
	got := 0
	deadline := time.Now().Add(5 * time.Second)
	for got < 2 && time.Now().Before(deadline) {
		n, err := be.Poll(subs, out, 10*time.Millisecond)
		if err != nil {
			b.Fatal(err)
		}
		subs = nil
		for _, x := range out[:n] {
			if x.Kind != EvKTLS || x.Res != 0 || x.Aux != KTLSTX|KTLSRX|KTLSSoftware {
				b.Fatalf("%+v", x)
			}
			got++
		}
	}
	*ps, *pc = KTLSParams{}, KTLSParams{}
	return srv, cli
}

func softEcho(b *testing.B, kind string, c ktlsCase, size int) {
	be, err := NewBackend(kind, Options{BufSize: 16 << 10, BufCount: 64, Entries: 256})
	if err != nil {
		b.Skip(err)
	}
	defer be.Close()
	srv, cli := softPair(b, be, c)
	const (
		tokSrv = iota + 1
		tokCli
		tokEcho
		tokPing
	)
	msg := cBytes(b, size)
	subs := []Sub{{Op: OpRecvStart, Fd: srv, Token: tokSrv}, {Op: OpRecvStart, Fd: cli, Token: tokCli}}
	var echoing []uint32
	out := make([]Comp, 256)
	done, got := 0, 0
	ping := func() {
		subs = append(subs, Sub{Op: OpSend, Fd: cli, Token: tokPing, Ptr: ptrOf(msg), Len: uint32(size)})
	}
	b.SetBytes(int64(2 * size))
	b.ReportAllocs()
	b.ResetTimer()
	ping()
	for done < b.N {
		n, err := be.Poll(subs, out, time.Second)
		if err != nil {
			b.Fatal(err)
		}
		subs = subs[:0]
		if n == 0 {
			b.Fatal("echo stalled")
		}
		for _, x := range out[:n] {
			switch {
			case x.Kind == EvRecv && x.Res <= 0:
				b.Fatalf("recv ended: %+v", x)
			case x.Kind == EvSend && x.Res < 0:
				b.Fatalf("send failed: %+v", x)
			case x.Kind == EvRecv && x.Token == tokSrv:
				subs = append(subs, Sub{Op: OpSend, Fd: srv, Token: tokEcho, Ptr: x.Ptr, Len: uint32(x.Res)})
				echoing = append(echoing, x.Buf)
			case x.Kind == EvSend && x.Token == tokEcho:
				subs = append(subs, Sub{Op: OpBufReturn, Arg: echoing[0]})
				echoing = echoing[1:]
			case x.Kind == EvRecv && x.Token == tokCli:
				subs = append(subs, Sub{Op: OpBufReturn, Arg: x.Buf})
				if got += int(x.Res); got >= size {
					got -= size
					done++
					if done < b.N {
						ping()
					}
				}
			}
		}
	}
	b.StopTimer()
	subs = append(subs, Sub{Op: OpClose, Fd: srv, Token: 10, Arg: CloseAbort}, Sub{Op: OpClose, Fd: cli, Token: 11, Arg: CloseAbort})
	for closing := 2; closing > 0; {
		n, _ := be.Poll(subs, out, time.Second)
		subs = nil
		for _, x := range out[:n] {
			if x.Kind == EvClosed {
				closing--
			}
		}
	}
}

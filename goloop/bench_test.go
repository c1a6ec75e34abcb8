package goloop

import (
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkEcho ping-pongs 1 KiB over a loopback TCP connection whose two
// ends are both driven by the backend: the client sends, the server echoes
// straight out of the receive buffer (zero copy) and gives the buffer back
// when the echo is sent, the client counts the bytes and sends again. One
// op is one round trip, so ns/op is the loop's latency per message.
func BenchmarkEcho(b *testing.B) { benchEachBackend(b, 1) }

// BenchmarkEcho32 runs 32 such connections at once: one op is still one
// round trip, but each Poll call carries the work of many connections,
// which is where batching submissions pays.
func BenchmarkEcho32(b *testing.B) { benchEachBackend(b, 32) }

func benchEachBackend(b *testing.B, conns int) {
	for _, kind := range []string{"epoll", "io_uring", "io_uring-pinned"} {
		b.Run(kind, func(b *testing.B) {
			// The Python loop's shape: one OS thread polls. It matters to
			// io_uring: a multishot request hands its completions to the
			// thread that armed it, and a goroutine that wandered to
			// another thread would wait for that one to wake.
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			if kind == "io_uring-pinned" {
				// The ring may then also defer its work to that thread.
				UringPinned = true
				kind = "io_uring"
			}
			be, err := NewBackend(kind, Options{})
			UringPinned = false
			if err != nil {
				b.Skip(err)
			}
			defer be.Close()
			echo(b, be, conns)
		})
	}
}

func echo(b *testing.B, be Backend, conns int) {
	const size = 1024
	type conn struct {
		srv, cli int32
		got      int
		echoing  []uint32 // buffers being echoed, in send order
	}
	// Tokens: 4*i + role, so a completion names its connection.
	const (
		roleSrv = iota
		roleCli
		roleEcho
		rolePing
	)
	msg := make([]byte, size)
	cs := make([]*conn, conns)
	var subs []Sub
	for i := range cs {
		srv, cli := tcpPair(b)
		cs[i] = &conn{srv: srv, cli: cli}
		tok := uint64(4 * i)
		subs = append(subs,
			Sub{Op: OpRecvStart, Fd: srv, Token: tok + roleSrv},
			Sub{Op: OpRecvStart, Fd: cli, Token: tok + roleCli})
	}
	out := make([]Comp, 256)
	done, started := 0, 0
	ping := func(i int) {
		if started < b.N {
			started++
			subs = append(subs, Sub{Op: OpSend, Fd: cs[i].cli, Token: uint64(4*i) + rolePing, Ptr: ptrOf(msg), Len: size})
		}
	}
	b.SetBytes(2 * size)
	b.ResetTimer()
	for i := range cs {
		ping(i)
	}
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
			i, role := int(x.Token/4), x.Token%4
			c := cs[i]
			switch {
			case x.Kind == EvRecv && x.Res <= 0:
				b.Fatalf("recv ended: %+v", x)
			case x.Kind == EvSend && x.Res < 0:
				b.Fatalf("send failed: %+v", x)
			case x.Kind == EvRecv && role == roleSrv:
				subs = append(subs, Sub{Op: OpSend, Fd: c.srv, Token: uint64(4*i) + roleEcho, Ptr: x.Ptr, Len: uint32(x.Res)})
				c.echoing = append(c.echoing, x.Buf)
			case x.Kind == EvSend && role == roleEcho:
				subs = append(subs, Sub{Op: OpBufReturn, Arg: c.echoing[0]})
				c.echoing = c.echoing[1:]
			case x.Kind == EvRecv && role == roleCli:
				subs = append(subs, Sub{Op: OpBufReturn, Arg: x.Buf})
				if c.got += int(x.Res); c.got >= size {
					c.got -= size
					done++
					ping(i)
				}
			}
		}
	}
	b.StopTimer()
	closing := 0
	for i, c := range cs {
		for _, fd := range []int32{c.srv, c.cli} {
			subs = append(subs, Sub{Op: OpClose, Fd: fd, Token: uint64(4 * i), Arg: CloseAbort})
			closing++
		}
	}
	for closing > 0 {
		n, _ := be.Poll(subs, out, time.Second)
		subs = nil
		for _, x := range out[:n] {
			if x.Kind == EvClosed {
				closing--
			}
		}
	}
}

// tcpPair returns the two ends of a loopback TCP connection, non-blocking,
// with Nagle off as an echo server would have it.
func tcpPair(tb testing.TB) (int32, int32) {
	lfd, port := listenLoopback(tb, 1)
	defer unix.Close(int(lfd))
	cli, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	if err := unix.Connect(cli, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil && err != unix.EINPROGRESS {
		tb.Fatal(err)
	}
	unix.Poll([]unix.PollFd{{Fd: lfd, Events: unix.POLLIN}}, 5000)
	srv, _, err := unix.Accept4(int(lfd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	if err != nil {
		tb.Fatal(err)
	}
	for _, fd := range []int{srv, cli} {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}
	return int32(srv), int32(cli)
}

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
func BenchmarkEcho(b *testing.B) {
	for _, kind := range []string{"epoll", "io_uring", "io_uring-pinned"} {
		b.Run(kind, func(b *testing.B) {
			if kind == "io_uring-pinned" {
				// The Python loop's shape: one OS thread polls, so the ring
				// may defer its work to that thread.
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				UringPinned = true
				kind = "io_uring"
			}
			be, err := NewBackend(kind, Options{})
			UringPinned = false
			if err != nil {
				b.Skip(err)
			}
			defer be.Close()
			srv, cli := tcpPair(b)
			const (
				tokSrv uint64 = iota + 1
				tokCli
				tokEcho
				tokPing
			)
			const size = 1024
			msg := make([]byte, size)
			subs := []Sub{
				{Op: OpRecvStart, Fd: srv, Token: tokSrv},
				{Op: OpRecvStart, Fd: cli, Token: tokCli},
				{Op: OpSend, Fd: cli, Token: tokPing, Ptr: ptrOf(msg), Len: size},
			}
			out := make([]Comp, 64)
			var echoing []uint32 // buffers being echoed, in send order
			got, done := 0, 0
			b.SetBytes(2 * size)
			b.ResetTimer()
			for done < b.N {
				n, err := be.Poll(subs, out, time.Second)
				if err != nil {
					b.Fatal(err)
				}
				subs = subs[:0]
				if n == 0 {
					b.Fatal("echo stalled")
				}
				for _, c := range out[:n] {
					switch {
					case c.Kind == EvRecv && c.Res <= 0:
						b.Fatalf("recv ended: %+v", c)
					case c.Kind == EvSend && c.Res < 0:
						b.Fatalf("send failed: %+v", c)
					case c.Kind == EvRecv && c.Token == tokSrv:
						subs = append(subs, Sub{Op: OpSend, Fd: srv, Token: tokEcho, Ptr: c.Ptr, Len: uint32(c.Res)})
						echoing = append(echoing, c.Buf)
					case c.Kind == EvSend && c.Token == tokEcho:
						subs = append(subs, Sub{Op: OpBufReturn, Arg: echoing[0]})
						echoing = echoing[1:]
					case c.Kind == EvRecv && c.Token == tokCli:
						subs = append(subs, Sub{Op: OpBufReturn, Arg: c.Buf})
						if got += int(c.Res); got >= size {
							got -= size
							if done++; done < b.N {
								subs = append(subs, Sub{Op: OpSend, Fd: cli, Token: tokPing, Ptr: ptrOf(msg), Len: size})
							}
						}
					}
				}
			}
			b.StopTimer()
			for _, fd := range []int32{srv, cli} {
				subs = append(subs, Sub{Op: OpClose, Fd: fd, Token: 100 + uint64(fd), Arg: CloseAbort})
			}
			for closed := 0; closed < 2; {
				n, _ := be.Poll(subs, out, time.Second)
				subs = nil
				closed += countKind(out[:n], EvClosed, 100+uint64(srv)) + countKind(out[:n], EvClosed, 100+uint64(cli))
			}
		})
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

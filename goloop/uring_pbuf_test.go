package goloop

import (
	"crypto/sha256"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The receive buffers a steady stream uses stay few, so they are still in
// cache when the kernel writes them again (uring_pbuf.go): 20 MiB received
// in 100 KiB messages through the default pool of 256 buffers of 64 KiB.
// On io_uring a ring holding the whole pool went through all 256 (16 MiB
// cycled); epoll's pool is a stack and reuses the same one or two. Every
// byte arrives once, in order (checked by hash).
func TestRecvBuffersStayWarm(t *testing.T) {
	for _, kind := range []string{"epoll", "io_uring"} {
		t.Run(kind, func(t *testing.T) {
			b, err := NewBackend(kind, Options{})
			if err != nil {
				t.Skip(err)
			}
			defer b.Close()
			srv, cli := tcpPair(t)
			defer unix.Close(int(cli))
			const msg, total = 100 << 10, 20 << 20
			sent := sha256.New()
			wrote := make(chan struct{})
			go func() {
				// The peer writes blocking, from its own thread.
				defer close(wrote)
				runtime.LockOSThread()
				unix.SetNonblock(int(cli), false)
				buf := make([]byte, msg)
				for off := 0; off < total; off += msg {
					for i := range buf {
						buf[i] = byte((off + i) % 251)
					}
					sent.Write(buf)
					if _, err := unix.Write(int(cli), buf); err != nil {
						return
					}
				}
			}()
			got := sha256.New()
			seen := map[uint32]bool{}
			n := 0
			subs := []Sub{{Op: OpRecvStart, Fd: srv, Token: 1}}
			out := make([]Comp, 64)
			deadline := time.Now().Add(20 * time.Second)
			for n < total {
				if time.Now().After(deadline) {
					t.Fatalf("%d of %d bytes received", n, total)
				}
				k, err := b.Poll(subs, out, 50*time.Millisecond)
				if err != nil {
					t.Fatal(err)
				}
				subs = subs[:0]
				for _, c := range out[:k] {
					if c.Kind != EvRecv || c.Token != 1 {
						continue
					}
					if c.Res <= 0 {
						t.Fatalf("receive ended: %+v", c)
					}
					got.Write(unsafe.Slice((*byte)(unsafe.Pointer(c.Ptr)), c.Res))
					n += int(c.Res)
					seen[c.Buf] = true
					subs = append(subs, Sub{Op: OpBufReturn, Arg: c.Buf})
				}
			}
			collect(t, b, append(subs, Sub{Op: OpClose, Fd: srv, Token: 2}), hasKind(EvClosed, 2))
			<-wrote
			if string(got.Sum(nil)) != string(sent.Sum(nil)) {
				t.Fatal("the bytes received are not the bytes sent")
			}
			if len(seen) > 4*pbufMinDepth {
				t.Fatalf("%d distinct receive buffers for one stream, want at most %d", len(seen), 4*pbufMinDepth)
			}
			t.Logf("%d distinct receive buffers", len(seen))
		})
	}
}

// The ring deepens when receives find it empty, and gets shallow again
// once the load that needed it is gone: 64 connections with data at once
// starve a ring of pbufMinDepth buffers, every one of them still gets its
// bytes, and depth has grown; windows of reaps that take nothing bring it
// back to pbufMinDepth, after which a receive still works.
func TestPbufRingDepthAdapts(t *testing.T) {
	be, err := NewBackend("io_uring", Options{BufSize: 4096, BufCount: 256, Entries: 256})
	if err != nil {
		t.Skip(err)
	}
	defer be.Close()
	b := be.(*uringBackend)
	if b.pbuf.depth != pbufMinDepth || b.pbuf.inRing != pbufMinDepth {
		t.Fatalf("a new ring: depth %d, %d buffers in it; want %d", b.pbuf.depth, b.pbuf.inRing, pbufMinDepth)
	}
	const conns = 64
	var subs []Sub
	peers := map[uint64]int32{}
	for i := 0; i < conns; i++ {
		a, c := socketpair(t)
		defer unix.Close(int(a))
		defer unix.Close(int(c))
		unix.Write(int(c), []byte{byte(i)})
		peers[uint64(100+i)] = c
		subs = append(subs, Sub{Op: OpRecvStart, Fd: a, Token: uint64(100 + i)})
	}
	got := map[uint64]bool{}
	out := make([]Comp, 64)
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < conns {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d connections got their byte (depth %d)", len(got), conns, b.pbuf.depth)
		}
		n, err := b.Poll(subs, out, 10*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		subs = subs[:0]
		for _, c := range out[:n] {
			if c.Kind != EvRecv || c.Res != 1 {
				t.Fatalf("unexpected completion %+v", c)
			}
			if v := *(*byte)(unsafe.Pointer(c.Ptr)); uint64(v)+100 != c.Token {
				t.Fatalf("connection %d got byte %d", c.Token-100, v)
			}
			got[c.Token] = true
			subs = append(subs, Sub{Op: OpBufReturn, Arg: c.Buf})
		}
	}
	pollFor(t, b, subs, time.Millisecond)
	grown := b.pbuf.depth
	if grown <= pbufMinDepth {
		t.Fatalf("depth %d after %d receives at once into a ring of %d", grown, conns, pbufMinDepth)
	}
	for w := 0; b.pbuf.depth > pbufMinDepth; w++ {
		if w > 16 {
			t.Fatalf("depth still %d after %d idle windows", b.pbuf.depth, w)
		}
		for i := 0; i < pbufWindow; i++ {
			b.pbuf.reaped()
		}
	}
	t.Logf("depth %d after the burst, %d once idle", grown, b.pbuf.depth)
	c := peers[100]
	unix.Write(int(c), []byte{7})
	cs := collect(t, b, nil, hasKind(EvRecv, 100))
	if r := cs[len(cs)-1]; r.Res != 1 || *(*byte)(unsafe.Pointer(r.Ptr)) != 7 {
		t.Fatalf("a receive after the ring shrank: %+v", r)
	}
}

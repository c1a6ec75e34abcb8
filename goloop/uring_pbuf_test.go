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
// cache when the kernel writes them again (uring_pbuf.go): 200 messages of
// 100 KiB received through the default pool of 256 buffers of 64 KiB touch
// no more buffers than the ring holds plus those out with the reader. On
// io_uring a ring holding the whole pool went through all 256 (16 MiB
// cycled) where the ring's depth stayed at 16 and the reader held a few;
// epoll's pool is a stack and reuses the same one or two. Every byte
// arrives once, in order (checked byte by byte, and by hash).
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
			const msg, total = 100 << 10, 200 * 100 << 10 // whole messages: the hash covers all that is sent
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
					// A blocking write may still be short (a signal after
					// some bytes went): the rest follows.
					for b := buf; len(b) > 0; {
						k, err := unix.Write(int(cli), b)
						if err == unix.EINTR {
							continue
						}
						if err != nil {
							return
						}
						b = b[k:]
					}
				}
			}()
			got := sha256.New()
			seen := map[uint32]bool{}
			n := 0
			// How many buffers the stream may touch: the ring's depth (at
			// its largest: a reader kept off the CPU lets the kernel empty
			// the ring, and it deepens), those out with the reader (given
			// back at the next Poll) and those the kernel filled meanwhile,
			// not yet reaped (the next Poll's): depth + 2 x the most one
			// Poll answered. The whole pool, cycled first in first out,
			// would be all 256.
			maxDepth, maxOut := 0, 0
			ub, _ := b.(*uringBackend)
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
				if ub != nil {
					maxDepth = max(maxDepth, ub.pbuf.depth)
				}
				maxOut = max(maxOut, k)
				for _, c := range out[:k] {
					if c.Kind != EvRecv || c.Token != 1 {
						continue
					}
					if c.Res <= 0 {
						t.Fatalf("receive ended: %+v", c)
					}
					chunk := unsafe.Slice((*byte)(unsafe.Pointer(c.Ptr)), c.Res)
					for i, v := range chunk {
						if v != byte((n+i)%251) {
							t.Fatalf("byte %d of the stream is %d, want %d (a chunk of %d in buffer %d at %d; %d buffers seen)",
								n+i, v, (n+i)%251, c.Res, c.Buf, i, len(seen))
						}
					}
					got.Write(chunk)
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
			if limit := maxDepth + 2*maxOut; len(seen) > limit {
				t.Fatalf("%d distinct receive buffers for one stream, want at most %d (ring depth up to %d, %d out at once)",
					len(seen), limit, maxDepth, maxOut)
			}
			t.Logf("%d distinct receive buffers (ring depth up to %d, %d out at once)", len(seen), maxDepth, maxOut)
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

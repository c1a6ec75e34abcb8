package goloop

import (
	"bytes"
	"crypto/sha256"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Pipe and terminal fds as the pipe transports use them (docs/subprocess.md):
// every read path (io_uring's multishot read, its poll-then-read fallback
// that ttys take, epoll's read), a write end whose reader goes away, a PTY
// master whose slave closes, and aborts with writes pending.

// forEachPipeBackend runs fn on every backend, and once more on io_uring
// without the multishot read.
func forEachPipeBackend(t *testing.T, fn func(t *testing.T, b Backend)) {
	forEachBackend(t, fn)
	t.Run("io_uring-poll-read", func(t *testing.T) {
		noReadMulti = true
		b, err := NewBackend("io_uring", Options{BufSize: 4096, BufCount: 16, Entries: 64})
		noReadMulti = false
		if err != nil {
			t.Skipf("io_uring unavailable: %v", err)
		}
		defer b.Close()
		fn(t, b)
	})
}

func pipe2(t *testing.T) (r, w int32) {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	return int32(p[0]), int32(p[1])
}

// Several MiB each way through pipes, the reader told up front that its fd
// is not a socket: every byte arrives once, in order, then end of file.
func TestPipeLargeBothWays(t *testing.T) {
	forEachPipeBackend(t, func(t *testing.T, b Backend) {
		r1, w1 := pipe2(t)
		r2, w2 := pipe2(t)
		src := make([]byte, 3<<20)
		for i := range src {
			src[i] = byte(i*7 + i>>11)
		}
		var subs []Sub
		for i := 0; i < len(src); i += 256 << 10 {
			subs = append(subs,
				Sub{Op: OpSend, Fd: w1, Token: 10, Ptr: ptrOf(src[i:]), Len: 256 << 10, Arg: ArgNotSock},
				Sub{Op: OpSend, Fd: w2, Token: 20, Ptr: ptrOf(src[i:]), Len: 256 << 10, Arg: ArgNotSock})
		}
		subs = append(subs,
			Sub{Op: OpClose, Fd: w1, Token: 11}, Sub{Op: OpClose, Fd: w2, Token: 21},
			Sub{Op: OpRecvStart, Fd: r1, Token: 1, Arg: ArgNotSock},
			Sub{Op: OpRecvStart, Fd: r2, Token: 2})
		got := map[uint64][]byte{}
		eof := map[uint64]bool{}
		out := make([]Comp, 64)
		deadline := time.Now().Add(10 * time.Second)
		for !eof[1] || !eof[2] {
			n, err := b.Poll(subs, out, 10*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			subs = nil
			for _, x := range out[:n] {
				switch {
				case x.Kind == EvSend && x.Res != 256<<10:
					t.Fatalf("send %+v", x)
				case x.Kind == EvRecv && x.Res > 0:
					got[x.Token] = append(got[x.Token], unsafe.Slice((*byte)(unsafe.Pointer(x.Ptr)), x.Res)...)
					subs = append(subs, Sub{Op: OpBufReturn, Arg: x.Buf})
				case x.Kind == EvRecv:
					if x.Res < 0 || x.Flags&FlagMore != 0 {
						t.Fatalf("end of read %+v", x)
					}
					eof[x.Token] = true
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("stalled: %d and %d bytes", len(got[1]), len(got[2]))
			}
		}
		want := sha256.Sum256(src)
		for _, tok := range []uint64{1, 2} {
			if sha256.Sum256(got[tok]) != want {
				t.Fatalf("pipe %d: %d bytes, wrong checksum", tok, len(got[tok]))
			}
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: r1, Token: 3}, {Op: OpClose, Fd: r2, Token: 4}},
			func(cs []Comp) bool { return hasKind(EvClosed, 3)(cs) && hasKind(EvClosed, 4)(cs) })
	})
}

// A write to an idle pipe marked ArgNotSock is in the pipe when Poll
// returns, as asyncio's write() has written it before returning: the
// program may read the other end with a blocking read at once.
func TestPipeWriteAtOnce(t *testing.T) {
	forEachPipeBackend(t, func(t *testing.T, b Backend) {
		r, w := pipe2(t)
		defer unix.Close(int(r))
		msg := []byte("at once")
		out := make([]Comp, 8)
		if _, err := b.Poll([]Sub{{Op: OpSend, Fd: w, Token: 1, Ptr: ptrOf(msg), Len: uint32(len(msg)), Arg: ArgNotSock}},
			out, 0); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		n, err := unix.Read(int(r), buf)
		if err != nil || !bytes.Equal(buf[:n], msg) {
			t.Fatalf("read %q, %v", buf[:max(n, 0)], err)
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: w, Token: 2}}, hasKind(EvClosed, 2))
	})
}

// The write end of a pipe whose reader went away: a poll of it for
// readability (what the write pipe transport watches) reports an error,
// and a write fails with EPIPE, never a SIGPIPE that would kill the test.
func TestPipeReaderGone(t *testing.T) {
	forEachPipeBackend(t, func(t *testing.T, b Backend) {
		r, w := pipe2(t)
		collect(t, b, []Sub{{Op: OpPollStart, Fd: w, Token: 1, Arg: PollIn}}, func([]Comp) bool { return true })
		unix.Close(int(r))
		cs := collect(t, b, nil, hasKind(EvPoll, 1))
		for _, c := range cs {
			if c.Kind == EvPoll && (c.Res != 0 || c.Aux&PollErr == 0) {
				t.Fatalf("poll %+v: want PollErr", c)
			}
		}
		msg := []byte("nobody reads")
		cs = collect(t, b, []Sub{{Op: OpSend, Fd: w, Token: 2, Ptr: ptrOf(msg), Len: uint32(len(msg)), Arg: ArgNotSock}},
			hasKind(EvSend, 2))
		for _, c := range cs {
			if c.Kind == EvSend && c.Res != -int32(unix.EPIPE) {
				t.Fatalf("send %+v: want -EPIPE", c)
			}
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: w, Token: 3, Arg: CloseAbort}}, hasKind(EvClosed, 3))
	})
}

// A PTY master whose slave closed reads EIO: the receive ends with it.
func TestPtyMasterEIO(t *testing.T) {
	forEachPipeBackend(t, func(t *testing.T, b Backend) {
		master, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Skip(err)
		}
		if err := unix.IoctlSetPointerInt(master, unix.TIOCSPTLCK, 0); err != nil {
			t.Fatal(err)
		}
		n, err := unix.IoctlGetInt(master, unix.TIOCGPTN)
		if err != nil {
			t.Fatal(err)
		}
		slave, err := unix.Open("/dev/pts/"+itoa(n), unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		tio, err := unix.IoctlGetTermios(slave, unix.TCGETS)
		if err != nil {
			t.Fatal(err)
		}
		tio.Oflag &^= unix.OPOST // raw output: the bytes as written
		tio.Lflag &^= unix.ECHO | unix.ICANON
		if err := unix.IoctlSetTermios(slave, unix.TCSETS, tio); err != nil {
			t.Fatal(err)
		}
		unix.Write(slave, []byte("from the slave"))
		var got []byte
		var subs = []Sub{{Op: OpRecvStart, Fd: int32(master), Token: 1, Arg: ArgNotSock}}
		var end *Comp
		out := make([]Comp, 16)
		deadline := time.Now().Add(5 * time.Second)
		for end == nil {
			k, err := b.Poll(subs, out, 10*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			subs = nil
			for i := range out[:k] {
				x := out[i]
				if x.Kind != EvRecv {
					continue
				}
				if x.Res > 0 {
					got = append(got, unsafe.Slice((*byte)(unsafe.Pointer(x.Ptr)), x.Res)...)
					subs = append(subs, Sub{Op: OpBufReturn, Arg: x.Buf})
					if string(got) == "from the slave" && slave >= 0 {
						unix.Close(slave)
						slave = -1
					}
					continue
				}
				end = &x
			}
			if time.Now().After(deadline) {
				t.Fatalf("got %q, no end", got)
			}
		}
		if string(got) != "from the slave" || end.Res != -int32(unix.EIO) {
			t.Fatalf("got %q, end %+v: want the bytes, then -EIO", got, *end)
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: int32(master), Token: 2}}, hasKind(EvClosed, 2))
	})
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

// An abort of a write pipe whose reader does not read: the writes still
// queued end with -ECANCELED, in order, and EvClosed comes last, once; the
// same after a graceful close that waits behind them (an upgrade).
func TestPipeAbortPendingWrites(t *testing.T) {
	for _, upgrade := range []bool{false, true} {
		forEachPipeBackend(t, func(t *testing.T, b Backend) {
			r, w := pipe2(t)
			defer unix.Close(int(r))
			big := make([]byte, 1<<20)
			subs := []Sub{
				{Op: OpSend, Fd: w, Token: 1, Ptr: ptrOf(big), Len: uint32(len(big)), Arg: ArgNotSock},
				{Op: OpSend, Fd: w, Token: 1, Ptr: ptrOf(big), Len: uint32(len(big)), Arg: ArgNotSock},
			}
			if upgrade {
				subs = append(subs, Sub{Op: OpClose, Fd: w, Token: 1})
			}
			out := make([]Comp, 16)
			for i := 0; i < 3; i++ {
				k, err := b.Poll(subs, out, 10*time.Millisecond)
				if err != nil {
					t.Fatal(err)
				}
				subs = nil
				if k != 0 {
					t.Fatalf("the pipe cannot take 2 MiB: %+v", out[:k])
				}
			}
			arg := CloseAbort
			if upgrade {
				arg |= CloseUpgrade
			}
			cs := collect(t, b, []Sub{{Op: OpClose, Fd: w, Token: 1, Arg: arg}}, hasKind(EvClosed, 1))
			var kinds []uint8
			for _, c := range cs {
				kinds = append(kinds, c.Kind)
				if c.Kind == EvSend && c.Res != -int32(unix.ECANCELED) {
					t.Fatalf("send %+v: want -ECANCELED", c)
				}
			}
			if len(kinds) != 3 || kinds[0] != EvSend || kinds[1] != EvSend || kinds[2] != EvClosed {
				t.Fatalf("completions %+v: want two cancelled sends, then EvClosed", cs)
			}
			// The reader got some bytes, then the end: the write end is closed.
			buf := make([]byte, 1<<16)
			for {
				n, err := unix.Read(int(r), buf)
				if err != nil {
					t.Fatalf("read after abort: %v", err)
				}
				if n == 0 {
					break
				}
			}
		})
	}
}

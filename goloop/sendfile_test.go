package goloop

import (
	"bytes"
	"io"
	"math/rand"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// tempFile is a regular file holding n random bytes.
func tempFile(t *testing.T, n int) (*os.File, []byte) {
	t.Helper()
	data := make([]byte, n)
	rand.New(rand.NewSource(int64(n))).Read(data)
	f, err := os.CreateTemp(t.TempDir(), "sendfile")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, data
}

// drain reads fd (made blocking) in a goroutine until EOF and hands back all of it.
func drain(t *testing.T, fd int32) <-chan []byte {
	t.Helper()
	if err := unix.SetNonblock(int(fd), false); err != nil {
		t.Fatal(err)
	}
	ch := make(chan []byte, 1)
	go func() {
		var all []byte
		buf := make([]byte, 1<<16)
		for {
			n, err := unix.Read(int(fd), buf)
			if err == unix.EINTR {
				continue
			}
			if n <= 0 {
				break
			}
			all = append(all, buf[:n]...)
		}
		ch <- all
	}()
	return ch
}

func compsOf(cs []Comp, tok uint64) []Comp {
	var out []Comp
	for _, c := range cs {
		if c.Token == tok {
			out = append(out, c)
		}
	}
	return out
}

// A sendfile sits in the fd's output queue: after the sends before it, before
// the sends after it, and a graceful close waits for it.
func TestSendfileOrdered(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(c))
		f, data := tempFile(t, 3<<20+17)
		got := drain(t, c)
		head := bytes.Repeat([]byte("A"), 200<<10)
		tail := []byte("the end")
		off, n := 1000, len(data)-5000
		subs := []Sub{
			{Op: OpSend, Fd: a, Token: 1, Ptr: ptrOf(head), Len: uint32(len(head))},
			{Op: OpSendfile, Fd: a, Token: 1, Ptr: uintptr(off), Len: uint32(n), Arg: uint32(f.Fd())},
			{Op: OpSend, Fd: a, Token: 1, Ptr: ptrOf(tail), Len: uint32(len(tail))},
			{Op: OpClose, Fd: a, Token: 1},
		}
		cs := collect(t, b, subs, hasKind(EvClosed, 1))
		mine := compsOf(cs, 1)
		want := []Comp{{Token: 1, Kind: EvSend, Res: int32(len(head))},
			{Token: 1, Kind: EvSendfile, Res: int32(n)},
			{Token: 1, Kind: EvSend, Res: int32(len(tail))},
			{Token: 1, Kind: EvClosed}}
		if len(mine) != len(want) {
			t.Fatalf("completions %+v", mine)
		}
		for i := range want {
			if mine[i] != want[i] {
				t.Fatalf("completion %d: %+v, want %+v", i, mine[i], want[i])
			}
		}
		all := <-got
		exp := append(append(append([]byte{}, head...), data[off:off+n]...), tail...)
		if !bytes.Equal(all, exp) {
			t.Fatalf("peer got %d bytes, want %d (equal prefix: %v)", len(all), len(exp),
				bytes.HasPrefix(exp, all))
		}
		// The file's own position is untouched: offsets are explicit.
		if pos, _ := f.Seek(0, io.SeekCurrent); pos != int64(len(data)) {
			t.Fatalf("file position moved to %d", pos)
		}
	})
}

// Asking for more than the file holds ends at its end: Res says how much.
func TestSendfilePastEOF(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(c))
		f, data := tempFile(t, 10000)
		got := drain(t, c)
		subs := []Sub{
			{Op: OpSendfile, Fd: a, Token: 1, Ptr: 4000, Len: SendfileMax, Arg: uint32(f.Fd())},
			{Op: OpSendfile, Fd: a, Token: 1, Ptr: 20000, Len: 5, Arg: uint32(f.Fd())},
			{Op: OpClose, Fd: a, Token: 1},
		}
		cs := compsOf(collect(t, b, subs, hasKind(EvClosed, 1)), 1)
		if len(cs) != 3 || cs[0].Kind != EvSendfile || cs[0].Res != 6000 ||
			cs[1].Kind != EvSendfile || cs[1].Res != 0 || cs[2].Kind != EvClosed {
			t.Fatalf("completions %+v", cs)
		}
		if all := <-got; !bytes.Equal(all, data[4000:]) {
			t.Fatalf("peer got %d bytes", len(all))
		}
	})
}

// An abort while a sendfile waits for a peer that does not read ends it with
// -ECANCELED and says how far it got; EvClosed follows.
func TestSendfileAbort(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(c))
		f, _ := tempFile(t, 8<<20)
		subs := []Sub{{Op: OpSendfile, Fd: a, Token: 1, Len: 8 << 20, Arg: uint32(f.Fd())}}
		out := make([]Comp, 16)
		n, err := b.Poll(subs, out, 20*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Fatalf("a sendfile to a peer that does not read completed: %+v", out[:n])
		}
		cs := compsOf(collect(t, b, []Sub{{Op: OpClose, Fd: a, Token: 1, Arg: CloseAbort}}, hasKind(EvClosed, 1)), 1)
		if len(cs) != 2 || cs[0].Kind != EvSendfile || cs[0].Res != -int32(unix.ECANCELED) ||
			cs[0].Aux == 0 || cs[0].Aux >= 8<<20 || cs[1].Kind != EvClosed {
			t.Fatalf("completions %+v", cs)
		}
	})
}

// What sendfile(2) refuses (not a regular file, a closed fd) is the
// completion's error, with nothing sent; later sends still go out.
func TestSendfileRefused(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		defer unix.Close(int(c))
		p, q := socketpair(t) // a socket is no file to send from
		defer unix.Close(int(p))
		defer unix.Close(int(q))
		got := drain(t, c)
		msg := []byte("still in order")
		subs := []Sub{
			{Op: OpSendfile, Fd: a, Token: 1, Len: 100, Arg: uint32(p)},
			{Op: OpSendfile, Fd: a, Token: 1, Len: 100, Arg: 1 << 20}, // no such fd
			{Op: OpSend, Fd: a, Token: 1, Ptr: ptrOf(msg), Len: uint32(len(msg))},
			{Op: OpClose, Fd: a, Token: 1},
		}
		cs := compsOf(collect(t, b, subs, hasKind(EvClosed, 1)), 1)
		if len(cs) != 4 || cs[0].Kind != EvSendfile || cs[0].Res >= 0 || cs[0].Aux != 0 ||
			cs[1].Kind != EvSendfile || cs[1].Res != -int32(unix.EBADF) ||
			cs[2].Kind != EvSend || cs[2].Res != int32(len(msg)) || cs[3].Kind != EvClosed {
			t.Fatalf("completions %+v", cs)
		}
		if all := <-got; !bytes.Equal(all, msg) {
			t.Fatalf("peer got %q", all)
		}
	})
}

// A peer that goes away mid-file: EPIPE (never SIGPIPE) with the count so far.
func TestSendfilePeerGone(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		a, c := socketpair(t)
		f, _ := tempFile(t, 8<<20)
		subs := []Sub{{Op: OpSendfile, Fd: a, Token: 1, Len: 8 << 20, Arg: uint32(f.Fd())}}
		out := make([]Comp, 16)
		if _, err := b.Poll(subs, out, 20*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		unix.Close(int(c))
		cs := compsOf(collect(t, b, nil, hasKind(EvSendfile, 1)), 1)
		if len(cs) != 1 || (cs[0].Res != -int32(unix.EPIPE) && cs[0].Res != -int32(unix.ECONNRESET)) || cs[0].Aux == 0 {
			t.Fatalf("completions %+v", cs)
		}
		collect(t, b, []Sub{{Op: OpClose, Fd: a, Token: 1}}, hasKind(EvClosed, 1))
	})
}

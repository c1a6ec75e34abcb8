package goloop

import (
	"bytes"
	"crypto/sha256"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// OpSockSendfile (loop.sock_sendfile): the file's bytes from an offset, at
// once as far as the socket takes them and the rest on writability, with
// the file's own position left alone.
func TestSockSendfileOffsetCountAndEOF(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		f, data := tempFile(t, 5000)
		a, c := socketpair(t)
		defer unix.Close(int(a))
		defer unix.Close(int(c))
		ffd := int32(f.Fd())
		unix.Seek(int(ffd), 7, 0)
		out := make([]Comp, 8)
		// Served at once: answered in the Poll that carries it.
		n, err := b.Poll([]Sub{{Op: OpSockSendfile, Fd: a, Token: 1, Ptr: 100, Len: 1000, Arg: uint32(ffd)}}, out, 0)
		if err != nil || n != 1 || out[0].Kind != EvSock || out[0].Res != 1000 {
			t.Fatalf("at once: %d %v %+v", n, err, out[:n])
		}
		// A count past the end of the file: what there is.
		n, _ = b.Poll([]Sub{{Op: OpSockSendfile, Fd: a, Token: 2, Ptr: 4500, Len: 1000, Arg: uint32(ffd)}}, out, 0)
		if n != 1 || out[0].Token != 2 || out[0].Res != 500 {
			t.Fatalf("past the end: %+v", out[:n])
		}
		got := make([]byte, 2000)
		k, _ := unix.Read(int(c), got)
		if !bytes.Equal(got[:k], append(append([]byte{}, data[100:1100]...), data[4500:]...)) {
			t.Fatalf("bytes differ (%d)", k)
		}
		if pos, _ := unix.Seek(int(ffd), 0, 1); pos != 7 {
			t.Fatalf("file position moved to %d", pos)
		}
	})
}

// A file larger than the socket takes goes out as the peer reads, slowly,
// every byte in order.
func TestSockSendfileLargeSlowPeer(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		f, data := tempFile(t, 3<<20)
		a, c := bigPair(t)
		defer unix.Close(int(a))
		defer unix.Close(int(c))
		want := sha256.Sum256(data)
		done := make(chan [32]byte)
		go func() {
			h := sha256.New()
			buf := make([]byte, 64<<10)
			for total := 0; total < len(data); {
				n, err := unix.Read(int(c), buf)
				if err == unix.EAGAIN {
					time.Sleep(100 * time.Microsecond)
					continue
				}
				if err != nil || n == 0 {
					break
				}
				h.Write(buf[:n])
				total += n
			}
			var s [32]byte
			copy(s[:], h.Sum(nil))
			done <- s
		}()
		cs := collect(t, b, []Sub{{Op: OpSockSendfile, Fd: a, Token: 7, Len: uint32(len(data)), Arg: uint32(f.Fd())}},
			hasKind(EvSock, 7))
		if r, _ := sockComp(cs, 7); r.Res != int32(len(data)) {
			t.Fatalf("%+v", cs)
		}
		if got := <-done; got != want {
			t.Fatal("checksum differs")
		}
	})
}

// A sendfile stopped midway says how far it got (Aux) and sends nothing
// more: the peer gets exactly that many bytes.
func TestSockSendfileStopMidway(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		f, data := tempFile(t, 1<<20)
		a, c := bigPair(t)
		defer unix.Close(int(a))
		defer unix.Close(int(c))
		out := make([]Comp, 8)
		if n, _ := b.Poll([]Sub{{Op: OpSockSendfile, Fd: a, Token: 3, Len: uint32(len(data)), Arg: uint32(f.Fd())}}, out, 0); n != 0 {
			t.Fatalf("%+v", out[:n])
		}
		n, _ := b.Poll([]Sub{{Op: OpSockStop, Fd: a, Token: 3}}, out, 0)
		if n != 1 || out[0].Kind != EvSock || out[0].Res != -int32(unix.ECANCELED) || out[0].Aux == 0 || out[0].Aux >= uint32(len(data)) {
			t.Fatalf("stop: %+v", out[:n])
		}
		sent := int(out[0].Aux)
		var got []byte
		buf := make([]byte, 64<<10)
		for i := 0; i < 50; i++ {
			if n, _ := b.Poll(nil, out, time.Millisecond); n != 0 {
				t.Fatalf("after stop: %+v", out[:n])
			}
			for {
				k, err := unix.Read(int(c), buf)
				if k <= 0 || err != nil {
					break
				}
				got = append(got, buf[:k]...)
			}
		}
		if !bytes.Equal(got, data[:sent]) {
			t.Fatalf("peer read %d, stop said %d", len(got), sent)
		}
	})
}

// A sendfile takes the fd's one send: a sock_sendall after it replaces it
// (-ECANCELED with how far it got), as asyncio's one writer per fd.
func TestSockSendfileReplaced(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		f, data := tempFile(t, 1<<20)
		a, c := bigPair(t)
		defer unix.Close(int(a))
		defer unix.Close(int(c))
		out := make([]Comp, 8)
		b.Poll([]Sub{{Op: OpSockSendfile, Fd: a, Token: 1, Len: uint32(len(data)), Arg: uint32(f.Fd())}}, out, 0)
		msg := heapBuf(4)
		n, _ := b.Poll([]Sub{{Op: OpSockSend, Fd: a, Token: 2, Ptr: ptrOf(msg), Len: 4}}, out, 0)
		if n != 1 || out[0].Token != 1 || out[0].Res != -int32(unix.ECANCELED) || out[0].Aux == 0 {
			t.Fatalf("replaced: %+v", out[:n])
		}
		b.Poll([]Sub{{Op: OpSockStop, Fd: a, Token: 2}}, out, 0)
	})
}

// Errors: a peer gone is -EPIPE (never SIGPIPE); a "file" sendfile(2)
// cannot read from an offset (a pipe) is its -ESPIPE, nothing sent.
func TestSockSendfileErrors(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		f, _ := tempFile(t, 100)
		x, y := socketpair(t)
		defer unix.Close(int(x))
		unix.Close(int(y))
		cs := collect(t, b, []Sub{{Op: OpSockSendfile, Fd: x, Token: 1, Len: 100, Arg: uint32(f.Fd())}}, hasKind(EvSock, 1))
		if r, _ := sockComp(cs, 1); r.Res != -int32(unix.EPIPE) || r.Aux != 0 {
			t.Fatalf("epipe: %+v", cs)
		}
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(p[0])
		defer unix.Close(p[1])
		unix.Write(p[1], []byte("data"))
		a, c := socketpair(t)
		defer unix.Close(int(a))
		defer unix.Close(int(c))
		cs = collect(t, b, []Sub{{Op: OpSockSendfile, Fd: a, Token: 2, Len: 4, Arg: uint32(p[0])}}, hasKind(EvSock, 2))
		if r, _ := sockComp(cs, 2); r.Res != -int32(unix.ESPIPE) || r.Aux != 0 {
			t.Fatalf("pipe: %+v", cs)
		}
	})
}

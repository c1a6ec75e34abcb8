package goloop

import (
	"bytes"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// FuzzSockOps drives both backends with random interleavings of the sock ops
// C may submit for sockets their owner keeps (receive, send, sendfile, stop,
// and replacement by a newer op of the same kind) and of what the peers do
// (write, read, shut down), and checks record.go's contract for them:
//
//   - every op is answered by exactly one EvSock; a stop that finds its op
//     still live is answered in the same Poll call, with -ECANCELED;
//   - a receive reads only while it is live: what the receives returned,
//     followed by what is left in the socket at the end, is exactly what
//     the peer wrote (nothing lost to a stopped receive, nothing twice);
//   - the peer receives exactly, in order, the part of each send or
//     sendfile that its answer says went out (all of it, or Aux bytes of
//     one that was stopped or replaced);
//   - the only error is -ECANCELED, and only for an op that was stopped or
//     replaced; an end of stream comes only after the peer shut down.
func FuzzSockOps(f *testing.F) {
	f.Add([]byte{0, 10, 1, 3, 14, 5, 2, 200, 7, 0, 4, 9, 7, 1, 5, 255, 7, 0})
	f.Add([]byte{1, 255, 1, 255, 11, 7, 7, 1, 5, 80, 3, 0, 5, 255, 7, 1, 0, 4, 12, 0, 7, 1})
	f.Add([]byte{4, 40, 0, 3, 0, 5, 2, 0, 6, 0, 0, 60, 7, 1, 0, 8, 7, 1})
	f.Add([]byte{9, 200, 9, 100, 5, 255, 11, 0, 7, 1, 13, 77, 5, 255, 7, 1, 3, 0})
	f.Fuzz(func(t *testing.T, script []byte) {
		fuzzBackends(t, script, 200, runSockOps)
	})
}

const sockOpsConns = 2

type fuzzSockOp struct {
	conn     int
	recv     bool
	buf      []byte // a receive's memory (kept until its EvSock)
	data     []byte // what a send or sendfile asked to send
	stopped  bool   // stopped or replaced: -ECANCELED is allowed
	answered bool
}

type sockOpsConn struct {
	fd, peer         int32
	recvTok, sendTok uint64 // the live ops, 0: none
	got, peerWrote   []byte
	peerGot          []byte
	sentStream       []byte // each send's sent part, in op order
	sends            []uint64
	shut, sawEOF     bool
}

func runSockOps(t *testing.T, kind string, b Backend, script []byte) {

	// The file sendfile reads: its bytes are known, so what reaches the
	// peer can be checked.
	file := make([]byte, 256<<10)
	for i := range file {
		file[i] = byte(i*7 + i>>9)
	}
	ff, err := os.CreateTemp(t.TempDir(), "sendfile")
	if err != nil {
		t.Fatal(err)
	}
	defer ff.Close()
	if _, err := ff.Write(file); err != nil {
		t.Fatal(err)
	}
	fileFd := uint32(ff.Fd())

	conns := make([]*sockOpsConn, sockOpsConns)
	for i := range conns {
		a, c := socketpair(t)
		conns[i] = &sockOpsConn{fd: a, peer: c}
		defer unix.Close(int(a))
		defer unix.Close(int(c))
	}
	ops := map[uint64]*fuzzSockOp{}
	var next uint64
	var seq byte
	out := make([]Comp, 64)

	poll := func(subs []Sub, timeout time.Duration, mustAnswer []uint64) {
		t.Helper()
		n, err := b.Poll(subs, out, timeout)
		if err != nil {
			t.Fatalf("%s: poll: %v", kind, err)
		}
		seen := map[uint64]bool{}
		for _, c := range out[:n] {
			if c.Kind != EvSock {
				t.Fatalf("%s: unexpected completion %+v", kind, c)
			}
			op := ops[c.Token]
			if op == nil || op.answered {
				t.Fatalf("%s: EvSock for no live op, or twice: %+v", kind, c)
			}
			op.answered = true
			seen[c.Token] = true
			cn := conns[op.conn]
			if c.Res < 0 && (c.Res != -int32(unix.ECANCELED) || !op.stopped) {
				t.Fatalf("%s: op %d (recv %v) failed: %+v", kind, c.Token, op.recv, c)
			}
			if op.recv {
				if cn.recvTok == c.Token {
					cn.recvTok = 0
				}
				switch {
				case c.Res > 0:
					cn.got = append(cn.got, op.buf[:c.Res]...)
				case c.Res == 0:
					if !cn.shut {
						t.Fatalf("%s: end of stream before the peer shut down: %+v", kind, c)
					}
					cn.sawEOF = true
				}
				continue
			}
			if cn.sendTok == c.Token {
				cn.sendTok = 0
			}
			sent := int(c.Res)
			if c.Res < 0 {
				sent = int(c.Aux)
			} else if sent != len(op.data) {
				t.Fatalf("%s: send %d answered %d of %d", kind, c.Token, c.Res, len(op.data))
			}
			if sent > len(op.data) {
				t.Fatalf("%s: send %d says %d sent of %d", kind, c.Token, sent, len(op.data))
			}
			op.data = op.data[:sent]
		}
		for _, tok := range mustAnswer {
			if !ops[tok].answered {
				t.Fatalf("%s: stop of live op %d not answered in its Poll call", kind, tok)
			}
		}
	}
	stop := func(cn *sockOpsConn, tok uint64) []Sub {
		ops[tok].stopped = true
		return []Sub{{Op: OpSockStop, Fd: cn.fd, Token: tok}}
	}
	peerBuf := make([]byte, 64<<10)
	peerRead := func(cn *sockOpsConn, max int) {
		for max > 0 {
			buf := peerBuf
			if max < len(buf) {
				buf = buf[:max]
			}
			k, err := unix.Read(int(cn.peer), buf)
			if k <= 0 || err != nil {
				return
			}
			cn.peerGot = append(cn.peerGot, buf[:k]...)
			max -= k
		}
	}

	for i := 0; i+1 < len(script); i += 2 {
		cn := conns[int(script[i])%sockOpsConns]
		arg := int(script[i+1])
		var subs []Sub
		var must []uint64
		switch (script[i] / sockOpsConns) % 8 {
		case 0: // receive (replacing a live one)
			if cn.recvTok != 0 {
				ops[cn.recvTok].stopped = true
				must = append(must, cn.recvTok)
			}
			next++
			op := &fuzzSockOp{conn: int(script[i]) % sockOpsConns, recv: true, buf: heapBuf(1 + arg%64)}
			ops[next], cn.recvTok = op, next
			subs = []Sub{{Op: OpSockRecv, Fd: cn.fd, Token: next, Ptr: ptrOf(op.buf), Len: uint32(len(op.buf))}}
		case 1, 2: // send or sendfile (replacing a live one)
			if cn.sendTok != 0 {
				ops[cn.sendTok].stopped = true
				must = append(must, cn.sendTok)
			}
			next++
			op := &fuzzSockOp{conn: int(script[i]) % sockOpsConns}
			n := 1 + arg*997
			if script[i]/sockOpsConns%8 == 1 {
				op.data = heapBuf(n)
				for j := range op.data {
					seq++
					op.data[j] = seq
				}
				subs = []Sub{{Op: OpSockSend, Fd: cn.fd, Token: next, Ptr: ptrOf(op.data), Len: uint32(n)}}
			} else {
				off := arg * 509 % len(file)
				if n > len(file)-off {
					n = len(file) - off
				}
				op.data = append([]byte(nil), file[off:off+n]...)
				subs = []Sub{{Op: OpSockSendfile, Fd: cn.fd, Token: next, Ptr: uintptr(off), Len: uint32(n), Arg: fileFd}}
			}
			ops[next], cn.sendTok = op, next
			cn.sends = append(cn.sends, next)
		case 3: // stop the receive
			if cn.recvTok != 0 {
				must = append(must, cn.recvTok)
				subs = stop(cn, cn.recvTok)
			}
		case 4: // stop the send
			if cn.sendTok != 0 {
				must = append(must, cn.sendTok)
				subs = stop(cn, cn.sendTok)
			}
		case 5: // the peer writes
			if !cn.shut {
				w := make([]byte, 1+arg*13)
				for j := range w {
					seq++
					w[j] = seq
				}
				if k, err := unix.Write(int(cn.peer), w); err == nil && k > 0 {
					cn.peerWrote = append(cn.peerWrote, w[:k]...)
				}
			}
		case 6: // the peer reads
			peerRead(cn, 1+arg*1024)
		case 7: // the peer shuts its side down, or time passes
			if arg%4 == 0 && !cn.shut {
				unix.Shutdown(int(cn.peer), unix.SHUT_WR)
				cn.shut = true
			}
		}
		timeout := time.Duration(0)
		if arg%3 == 0 {
			timeout = time.Millisecond
		}
		poll(subs, timeout, must)
	}

	// The end: stop what is live (each answered at once), then read what
	// is left on both sides and compare the streams.
	for _, cn := range conns {
		var subs []Sub
		var must []uint64
		for _, tok := range []uint64{cn.recvTok, cn.sendTok} {
			if tok != 0 {
				subs = append(subs, stop(cn, tok)...)
				must = append(must, tok)
			}
		}
		poll(subs, 0, must)
	}
	for tok, op := range ops {
		if !op.answered {
			t.Fatalf("%s: op %d never answered", kind, tok)
		}
	}
	for i, cn := range conns {
		rest := make([]byte, 64<<10)
		for {
			k, err := unix.Read(int(cn.fd), rest)
			if k <= 0 || err != nil {
				break
			}
			cn.got = append(cn.got, rest[:k]...)
		}
		if !bytes.Equal(cn.got, cn.peerWrote) {
			t.Fatalf("%s: conn %d: received %d bytes (then the socket's rest) != the %d the peer wrote",
				kind, i, len(cn.got), len(cn.peerWrote))
		}
		peerRead(cn, 1<<30)
		var want []byte
		for _, tok := range cn.sends {
			want = append(want, ops[tok].data...)
		}
		if !bytes.Equal(cn.peerGot, want) {
			t.Fatalf("%s: conn %d: the peer got %d bytes, the sends' answers say %d went out",
				kind, i, len(cn.peerGot), len(want))
		}
	}
}

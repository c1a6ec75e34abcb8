package dns

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
)

// UDP queries go through a few long-lived connected sockets per server,
// with answers matched to questions by id and question, instead of a new
// socket per query: socket, connect and close cost more than the query.
// Each socket is retired after retireAfter queries so that source ports
// keep changing (a resolver on one fixed port is easier to spoof), and
// query ids are random.
//
// The questions of one try (A and AAAA of a lookup) leave in one sendmmsg
// and wait together on one channel; a reader goroutine per socket takes
// answers in batches with recvmmsg (batch_linux.go) until the socket is
// empty, and one timer per socket, armed for the earliest deadline,
// fails the questions whose try has timed out.

const (
	socketsPerServer = 4
	maxBatch         = 2 // questions per try that need no allocation
)

var retireAfter = 4096 // a variable for tests

type udpPool struct {
	mu    sync.Mutex
	conns map[string][]*udpConn // by server
	next  uint32
}

var pool = &udpPool{conns: map[string][]*udpConn{}}

// waiter is one question sent and not yet answered.
type waiter struct {
	name     string
	qtype    uint16
	idx      int
	deadline time.Time
	b        *udpBatch
}

type udpResult struct {
	idx int
	msg *mdns.Msg
	err error
}

type udpConn struct {
	c  *net.UDPConn
	rc syscall.RawConn

	mu      sync.Mutex
	pending map[uint16]*waiter
	uses    int
	retired bool
	closed  bool
	timer   *time.Timer // fires at armedAt when armed
	armed   bool
	armedAt time.Time
}

// get returns a socket to server, opening one when the pool is short.
func (p *udpPool) get(server string) (*udpConn, error) {
	p.mu.Lock()
	conns := p.conns[server]
	p.next++
	if len(conns) >= socketsPerServer {
		uc := conns[int(p.next)%len(conns)]
		p.mu.Unlock()
		return uc, nil
	}
	defer p.mu.Unlock()
	raddr, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		return nil, err
	}
	c, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		return nil, err
	}
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, err
	}
	uc := &udpConn{c: c, rc: rc, pending: map[uint16]*waiter{}}
	p.conns[server] = append(conns, uc)
	go uc.read()
	return uc, nil
}

// ReleaseSockets retires every pooled socket: each closes now, or when the
// last question waiting on it is answered or given up. The C ABI calls it
// when the process's last loop closes, so a program that is done with its
// loops holds no resolver sockets; the next lookup opens new ones.
func ReleaseSockets() {
	pool.mu.Lock()
	var all []*udpConn
	for server, conns := range pool.conns {
		all = append(all, conns...)
		delete(pool.conns, server)
	}
	pool.mu.Unlock()
	for _, uc := range all {
		uc.mu.Lock()
		uc.retired = true
		uc.closeIfIdleLocked()
		uc.mu.Unlock()
	}
}

// retire takes uc out of the pool; it closes once nothing waits on it.
func (p *udpPool) retire(server string, uc *udpConn) {
	p.mu.Lock()
	conns := p.conns[server]
	for i, c := range conns {
		if c == uc {
			p.conns[server] = append(conns[:i:i], conns[i+1:]...)
			break
		}
	}
	p.mu.Unlock()
	uc.mu.Lock()
	uc.retired = true
	uc.closeIfIdleLocked()
	uc.mu.Unlock()
}

func (uc *udpConn) closeIfIdleLocked() {
	if uc.retired && len(uc.pending) == 0 && !uc.closed {
		uc.closed = true
		if uc.timer != nil {
			uc.timer.Stop()
		}
		uc.c.Close()
	}
}

// armLocked makes sure the timer fires no later than deadline.
func (uc *udpConn) armLocked(deadline time.Time) {
	if uc.armed && !deadline.Before(uc.armedAt) {
		return
	}
	uc.armed, uc.armedAt = true, deadline
	d := time.Until(deadline)
	if uc.timer == nil {
		uc.timer = time.AfterFunc(d, uc.expire)
	} else {
		uc.timer.Reset(d)
	}
}

// expire fails the questions whose deadline has passed and arms the timer
// for the earliest one left.
func (uc *udpConn) expire() {
	var late []*waiter
	uc.mu.Lock()
	now := time.Now()
	uc.armed = false
	var next time.Time
	for id, w := range uc.pending {
		if !now.Before(w.deadline) {
			delete(uc.pending, id)
			late = append(late, w)
		} else if next.IsZero() || w.deadline.Before(next) {
			next = w.deadline
		}
	}
	if !next.IsZero() && !uc.closed {
		uc.armLocked(next)
	}
	uc.closeIfIdleLocked()
	uc.mu.Unlock()
	for _, w := range late {
		w.b.ch <- udpResult{idx: w.idx, err: errTimeout}
	}
}

// read hands each answer to the question it answers. An error on a
// connected UDP socket (ICMP port unreachable: nothing listens there) is
// no answer to anything in particular, so every question waiting on it
// fails and moves on to the next server, as glibc's do.
func (uc *udpConn) read() {
	rb := newReadBatch()
	var got []*waiter
	var msgs []*mdns.Msg
	for {
		n, err := rb.recv(uc.rc)
		if err != nil {
			err = uc.opError("read", err)
			uc.mu.Lock()
			closed := uc.closed
			ws := uc.pending
			uc.pending = map[uint16]*waiter{}
			uc.mu.Unlock()
			for _, w := range ws {
				w.b.ch <- udpResult{idx: w.idx, err: err}
			}
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		got, msgs = got[:0], msgs[:0]
		for i := 0; i < n; i++ {
			if m := rb.answer(i); m != nil {
				msgs = append(msgs, m)
			}
		}
		if len(msgs) == 0 {
			continue
		}
		uc.mu.Lock()
		for _, m := range msgs {
			q := m.Question[0]
			w := uc.pending[m.Id]
			if w != nil && w.qtype == q.Qtype && (w.name == q.Name || strings.EqualFold(w.name, q.Name)) {
				delete(uc.pending, m.Id)
			} else {
				w = nil // a stray or forged answer: ignored
			}
			got = append(got, w)
		}
		uc.closeIfIdleLocked()
		uc.mu.Unlock()
		for i, w := range got {
			if w != nil {
				w.b.ch <- udpResult{idx: w.idx, msg: msgs[i]}
			}
			got[i], msgs[i] = nil, nil
		}
	}
}

// udpBatch is the questions of one try, sent together to one socket.
type udpBatch struct {
	uc     *udpConn
	n      int // questions
	expect int // results to come through ch
	ws     []waiter
	res    []udpResult
	ch     chan udpResult
	out    sendBatch

	wbuf [maxBatch]waiter
	rbuf [maxBatch]udpResult
}

// Batches that got every answer they waited for are reused: nobody else
// can still hold them. A batch given up on (timeout handled by the
// socket, cancellation) is left to the collector instead, since an answer
// may still be on its way to its channel.
var batchPool = sync.Pool{New: func() any {
	b := &udpBatch{ch: make(chan udpResult, maxBatch)}
	b.out.init()
	return b
}}

// sendUDP sends the questions (name, each of qtypes) to server under fresh
// random ids; wait collects the answers.
func sendUDP(server, name string, qtypes []uint16, edns bool, deadline time.Time) (*udpBatch, error) {
	var b *udpBatch
	if len(qtypes) <= maxBatch {
		b = batchPool.Get().(*udpBatch)
		b.ws, b.res = b.wbuf[:len(qtypes)], b.rbuf[:len(qtypes)]
	} else {
		b = &udpBatch{ch: make(chan udpResult, len(qtypes)),
			ws: make([]waiter, len(qtypes)), res: make([]udpResult, len(qtypes))}
		b.out.init()
	}
	b.n, b.expect = len(qtypes), 0
	for i, qt := range qtypes {
		b.ws[i] = waiter{name: name, qtype: qt, idx: i, deadline: deadline, b: b}
		b.res[i] = udpResult{idx: i, err: errNotYet}
		if err := b.out.pack(i, name, qt, edns); err != nil {
			return nil, err
		}
	}
	var uc *udpConn
	for {
		var err error
		if uc, err = pool.get(server); err != nil {
			return nil, err
		}
		uc.mu.Lock()
		if !uc.closed {
			break
		}
		uc.mu.Unlock() // retired and closed since get: take another
	}
	b.uc = uc
	for i := range b.ws {
		var id uint16
		for {
			id = uint16(rand.Uint32())
			if _, busy := uc.pending[id]; !busy {
				break
			}
		}
		uc.pending[id] = &b.ws[i]
		b.out.setID(i, id)
	}
	before := uc.uses
	uc.uses += b.n
	retire := before < retireAfter && uc.uses >= retireAfter
	uc.armLocked(deadline)
	uc.mu.Unlock()
	if retire {
		pool.retire(server, uc)
	}
	b.expect = b.n
	sent, err := b.out.send(uc.rc, b.n)
	if sent < b.n {
		// The questions not sent fail with the error, unless the reader
		// failed them first (an ICMP error): then their result is on
		// its way to the channel and must be waited for.
		err = uc.opError("write", err)
		uc.mu.Lock()
		for i := sent; i < b.n; i++ {
			id := b.out.id(i)
			if uc.pending[id] == &b.ws[i] {
				delete(uc.pending, id)
				b.res[i].err = err
				b.expect--
			}
		}
		uc.closeIfIdleLocked()
		uc.mu.Unlock()
		if sent == 0 {
			return nil, err // not reused: see batchPool
		}
	}
	return b, nil
}

// wait returns the answer or the error of each question, in qtypes
// order. complete says every answer arrived (the batch may be released).
func (b *udpBatch) wait(ctx context.Context) (res []udpResult, complete bool) {
	for got := 0; got < b.expect; got++ {
		select {
		case r := <-b.ch:
			b.res[r.idx] = r
		case <-ctx.Done():
			b.drop(ctx.Err())
			return b.res, false
		}
	}
	return b.res, true
}

// drop gives up on the questions still unanswered: they fail with err.
func (b *udpBatch) drop(err error) {
	uc := b.uc
	uc.mu.Lock()
	for i := 0; i < b.n; i++ {
		id := b.out.id(i)
		if uc.pending[id] == &b.ws[i] {
			delete(uc.pending, id)
		}
	}
	uc.closeIfIdleLocked()
	uc.mu.Unlock()
	for i := range b.res {
		if b.res[i].err == errNotYet {
			b.res[i].err = err
		}
	}
}

// errNotYet marks a result not delivered (yet).
var errNotYet = errors.New("no answer yet")

func (uc *udpConn) opError(op string, err error) error {
	if err == nil || errors.Is(err, net.ErrClosed) {
		return err
	}
	return &net.OpError{Op: op, Net: "udp", Source: uc.c.LocalAddr(), Addr: uc.c.RemoteAddr(), Err: err}
}

// release hands a batch whose answers all arrived back for reuse; the
// results it returned must no longer be used.
func (b *udpBatch) release() {
	if b.n > maxBatch {
		return
	}
	for i := range b.ws {
		b.ws[i] = waiter{}
		b.res[i] = udpResult{}
	}
	b.uc = nil
	batchPool.Put(b)
}

var errTimeout = errors.New("timeout waiting for the server")

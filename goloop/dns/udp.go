package dns

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// UDP queries go through a few long-lived connected sockets per server,
// with answers matched to questions by id and question, instead of a new
// socket per query: socket, connect and close cost more than the query.
// Each socket is retired after retireAfter queries so that source ports
// keep changing (a resolver on one fixed port is easier to spoof), and
// query ids are random.

const (
	socketsPerServer = 4
	retireAfter      = 4096
	maxUDPAnswer     = 65535
)

type udpPool struct {
	mu    sync.Mutex
	conns map[string][]*udpConn // by server
	next  uint32
}

var pool = &udpPool{conns: map[string][]*udpConn{}}

type waiter struct {
	name  string
	qtype uint16
	ch    chan udpResult
}

type udpResult struct {
	msg *mdns.Msg
	err error
}

type udpConn struct {
	c *net.UDPConn

	mu      sync.Mutex
	pending map[uint16]*waiter
	uses    int
	retired bool
	closed  bool
}

// get returns a socket to server, opening one when the pool is short.
func (p *udpPool) get(server string) (*udpConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	conns := p.conns[server]
	p.next++
	if len(conns) >= socketsPerServer {
		return conns[int(p.next)%len(conns)], nil
	}
	raddr, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		return nil, err
	}
	c, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		return nil, err
	}
	uc := &udpConn{c: c, pending: map[uint16]*waiter{}}
	p.conns[server] = append(conns, uc)
	go uc.read(server)
	return uc, nil
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
		uc.c.Close()
	}
}

// read hands each answer to the query it answers. An error on a connected
// UDP socket (ICMP port unreachable: nothing listens there) is no answer
// to anything in particular, so every query waiting on it fails and moves
// on to the next server, as glibc's do.
func (uc *udpConn) read(server string) {
	buf := make([]byte, maxUDPAnswer)
	for {
		n, err := uc.c.Read(buf)
		if err != nil {
			uc.mu.Lock()
			closed := uc.closed
			ws := uc.pending
			uc.pending = map[uint16]*waiter{}
			uc.mu.Unlock()
			for _, w := range ws {
				w.ch <- udpResult{err: err}
			}
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		m := new(mdns.Msg)
		if m.Unpack(buf[:n]) != nil || len(m.Question) != 1 {
			continue
		}
		uc.mu.Lock()
		w := uc.pending[m.Id]
		if w != nil && strings.EqualFold(w.name, m.Question[0].Name) && w.qtype == m.Question[0].Qtype {
			delete(uc.pending, m.Id)
		} else {
			w = nil // a stray or forged answer: ignored
		}
		uc.closeIfIdleLocked()
		uc.mu.Unlock()
		if w != nil {
			w.ch <- udpResult{msg: m}
		}
	}
}

// udpCall is one question sent and not yet answered.
type udpCall struct {
	uc *udpConn
	id uint16
	w  *waiter
}

// sendUDP sends q to server under a fresh random id; wait collects the
// answer. Sending several questions before waiting for any puts them on
// the wire together.
func sendUDP(q *mdns.Msg, server string) (*udpCall, error) {
	uc, err := pool.get(server)
	if err != nil {
		return nil, err
	}
	w := &waiter{name: q.Question[0].Name, qtype: q.Question[0].Qtype, ch: make(chan udpResult, 1)}
	m := *q // shallow: only the id changes
	uc.mu.Lock()
	if uc.closed {
		uc.mu.Unlock()
		return nil, net.ErrClosed
	}
	for {
		m.Id = uint16(rand.Uint32())
		if _, busy := uc.pending[m.Id]; !busy {
			break
		}
	}
	uc.pending[m.Id] = w
	uc.uses++
	retire := uc.uses == retireAfter
	uc.mu.Unlock()
	if retire {
		pool.retire(server, uc)
	}
	call := &udpCall{uc, m.Id, w}
	buf, err := m.Pack()
	if err == nil {
		_, err = uc.c.Write(buf)
	}
	if err != nil {
		call.drop()
		return nil, err
	}
	return call, nil
}

func (c *udpCall) drop() {
	uc := c.uc
	uc.mu.Lock()
	if uc.pending[c.id] == c.w {
		delete(uc.pending, c.id)
	}
	uc.closeIfIdleLocked()
	uc.mu.Unlock()
}

func (c *udpCall) wait(ctx context.Context, deadline time.Time) (*mdns.Msg, error) {
	select {
	case r := <-c.w.ch:
		return r.msg, r.err
	default:
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case r := <-c.w.ch:
		return r.msg, r.err
	case <-t.C:
		c.drop()
		return nil, errTimeout
	case <-ctx.Done():
		c.drop()
		return nil, ctx.Err()
	}
}

var errTimeout = errors.New("timeout waiting for the server")

// Command holdconns opens idle TCP connections to an echo server, holds them,
// and on request has every one of them echo one message at the same time.
// bench/memory.py drives it over stdin/stdout, one command a line:
//
//	hold N   open connections until N are held; answers {"held":N,...}
//	echo     every held connection sends one -size message (its own
//	         content: the connection's index and a fill byte), reads the
//	         echo back and checks it, all connections at once; answers
//	         {"echoed":N,"errors":E,"seconds":S,"last_error":...}
//	quit     close everything (with a reset: nothing left in TIME_WAIT) and exit
//
// It only connects to loopback addresses: a benchmark tool, not a load tool.
package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	addr := flag.String("addr", "", "server host:port (loopback only)")
	size := flag.Int("size", 1024, "message size of the echo command")
	parallel := flag.Int("parallel", 64, "connects in flight while opening")
	timeout := flag.Duration("timeout", 20*time.Second, "a connect or an echo taking longer is an error")
	flag.Parse()
	host, _, err := net.SplitHostPort(*addr)
	if err != nil || !net.ParseIP(host).IsLoopback() {
		fmt.Fprintln(os.Stderr, "holdconns: -addr must be a loopback host:port")
		os.Exit(2)
	}
	if *size < 8 {
		fmt.Fprintln(os.Stderr, "holdconns: -size must be at least 8")
		os.Exit(2)
	}
	var conns []*net.TCPConn
	out := json.NewEncoder(os.Stdout)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "hold":
			n, err := strconv.Atoi(f[1])
			if err != nil {
				fmt.Fprintln(os.Stderr, "holdconns: hold N")
				os.Exit(2)
			}
			t0 := time.Now()
			conns, err = hold(conns, n, *addr, *parallel, *timeout)
			res := map[string]any{"held": len(conns), "seconds": time.Since(t0).Seconds()}
			if err != nil {
				res["error"] = err.Error()
			}
			out.Encode(res)
		case "echo":
			out.Encode(echo(conns, *size, *timeout))
		case "quit":
			for _, c := range conns {
				c.SetLinger(0)
				c.Close()
			}
			return
		default:
			fmt.Fprintln(os.Stderr, "holdconns: unknown command", f[0])
			os.Exit(2)
		}
	}
}

// hold opens connections until n are held, at most parallel connects at a
// time so that the server's accept backlog never overflows.
func hold(conns []*net.TCPConn, n int, addr string, parallel int, timeout time.Duration) ([]*net.TCPConn, error) {
	need := n - len(conns)
	if need <= 0 {
		return conns, nil
	}
	made := make([]*net.TCPConn, need)
	var firstErr atomic.Value
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{Timeout: timeout}
			for {
				i := int(next.Add(1)) - 1
				if i >= need {
					return
				}
				c, err := d.Dial("tcp", addr)
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				made[i] = c.(*net.TCPConn)
			}
		}()
	}
	wg.Wait()
	for _, c := range made {
		if c != nil {
			conns = append(conns, c)
		}
	}
	if e := firstErr.Load(); e != nil {
		return conns, e.(error)
	}
	return conns, nil
}

func echo(conns []*net.TCPConn, size int, timeout time.Duration) map[string]any {
	var errs atomic.Int64
	var last atomic.Value
	var wg sync.WaitGroup
	start := make(chan struct{})
	t0 := time.Now()
	for i, c := range conns {
		wg.Add(1)
		go func(i int, c *net.TCPConn) {
			defer wg.Done()
			msg := make([]byte, size)
			for k := range msg {
				msg[k] = byte(i*7 + k)
			}
			binary.BigEndian.PutUint32(msg, uint32(i))
			back := make([]byte, size)
			<-start
			c.SetDeadline(time.Now().Add(timeout))
			_, err := c.Write(msg)
			if err == nil {
				_, err = io.ReadFull(c, back)
			}
			if err == nil && string(back) != string(msg) {
				err = fmt.Errorf("connection %d: echo differs", i)
			}
			if err != nil {
				errs.Add(1)
				last.Store(err.Error())
			}
		}(i, c)
	}
	close(start)
	wg.Wait()
	res := map[string]any{"echoed": len(conns) - int(errs.Load()), "errors": errs.Load(),
		"seconds": time.Since(t0).Seconds()}
	if e := last.Load(); e != nil {
		res["last_error"] = e
	}
	return res
}

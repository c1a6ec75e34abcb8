package goloop

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The methods against OpenSSL's s_server and s_client: the handshake, and
// a record each way with the keys from the result (OpenSSL's TLS 1.3 server
// sends two tickets after the handshake, which the reader skips).

const opensslBin = "/usr/bin/openssl"

var opensslCases = []struct {
	name, flag, cipherFlag, cipher string
	version, suite                 uint16
}{
	{"1.2/aes128", "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256", TLS12, 0xc02b},
	{"1.2/chacha", "-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305", TLS12, 0xcca9},
	{"1.3/aes256", "-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384", TLS13, 0x1302},
	{"1.3/chacha", "-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256", TLS13, 0x1303},
}

type opensslProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

func startOpenSSL(t *testing.T, args ...string) *opensslProc {
	t.Helper()
	if _, err := os.Stat(opensslBin); err != nil {
		t.Skip("SKIP: no " + opensslBin)
	}
	p := &opensslProc{cmd: exec.Command(opensslBin, args...), lines: make(chan string, 64)}
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stderr = p.cmd.Stdout
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	t.Cleanup(func() { p.stdin.Close(); p.cmd.Process.Kill(); p.cmd.Wait() })
	return p
}

// wait returns the first output line containing s.
func (p *opensslProc) wait(t *testing.T, s string) string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	var seen []string
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("openssl exited before %q:\n%s", s, strings.Join(seen, "\n"))
			}
			if strings.Contains(l, s) {
				return l
			}
			seen = append(seen, l)
		case <-timeout:
			t.Fatalf("no %q from openssl:\n%s", s, strings.Join(seen, "\n"))
		}
	}
}

// exchangeRaw is exchangeData with an OpenSSL peer: it sends what it reads
// on stdin and prints what it receives.
func exchangeRaw(t *testing.T, r *hsResult, mine *net.TCPConn, p *opensslProc) {
	t.Helper()
	tx, rx := r.layers(t)
	mine.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintln(p.stdin, "from openssl")
	for {
		rec, err := readRawRecord(mine)
		if err != nil {
			t.Fatalf("reading openssl's record: %v", err)
		}
		typ, plain, err := rx.open(rec)
		if err != nil {
			t.Fatalf("opening openssl's record (seq %d): %v", rx.seq-1, err)
		}
		if typ == RecordHandshake && len(plain) > 0 && plain[0] == 4 {
			continue
		}
		if typ != RecordApplicationData || string(plain) != "from openssl\n" {
			t.Fatalf("openssl's record: type %d %q", typ, plain)
		}
		break
	}
	if _, err := mine.Write(tx.seal(RecordApplicationData, []byte("from goloop\n"))); err != nil {
		t.Fatal(err)
	}
	p.wait(t, "from goloop")
}

func TestTLSHandshakeOpenSSLServer(t *testing.T) {
	p := pki(t)
	for _, oc := range opensslCases {
		t.Run(oc.name, func(t *testing.T) {
			srv := startOpenSSL(t, "s_server", "-accept", "0", "-naccept", "1", "-cert", sharedECDSA, oc.flag, oc.cipherFlag, oc.cipher)
			line := srv.wait(t, "ACCEPT")
			port := line[strings.LastIndex(line, ":")+1:]
			c, err := net.Dial("tcp4", "127.0.0.1:"+port)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			mine := c.(*net.TCPConn)
			id := newCtx(t, ctxReq{"cafiles": []string{p.caFile}, "verify_mode": 2, "check_hostname": true, "alpn": []string{"x"}})
			fd := dupFD(t, mine)
			out, err := callHandshake(context.Background(), id, fd, false, "localhost")
			if !dupClosed(fd) {
				t.Fatal("dup open")
			}
			if err != nil {
				t.Fatal(err)
			}
			r := parseResult(t, out)
			if r.p.Version != oc.version || r.p.Suite != oc.suite || r.info.Cipher[0] != oc.cipher {
				t.Fatalf("negotiated %#x %#x %v", r.p.Version, r.p.Suite, r.info.Cipher)
			}
			exchangeRaw(t, r, mine, srv)
		})
	}
}

func TestTLSHandshakeOpenSSLClient(t *testing.T) {
	p := pki(t)
	for _, oc := range opensslCases {
		for _, clientCert := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/client-cert=%v", oc.name, clientCert), func(t *testing.T) {
				ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				req := ctxReq{"server": true, "cert_chain": []any{map[string]any{"certfile": sharedECDSA}}}
				args := []string{"s_client", "-connect", ln.Addr().String(), "-CAfile", p.caFile, "-servername", "localhost",
					"-verify_return_error", "-quiet", oc.flag, oc.cipherFlag, oc.cipher}
				if clientCert {
					req["verify_mode"], req["cafiles"] = 2, []string{p.caFile}
					args = append(args, "-cert", sharedRSA)
				}
				id := newCtx(t, req)
				cli := startOpenSSL(t, args...)
				mine, err := ln.AcceptTCP()
				if err != nil {
					t.Fatal(err)
				}
				defer mine.Close()
				fd := dupFD(t, mine)
				out, err := callHandshake(context.Background(), id, fd, true, "")
				if !dupClosed(fd) {
					t.Fatal("dup open")
				}
				if err != nil {
					t.Fatal(err)
				}
				r := parseResult(t, out)
				if r.p.Version != oc.version || r.p.Suite != oc.suite {
					t.Fatalf("negotiated %#x %#x", r.p.Version, r.p.Suite)
				}
				if clientCert != strings.Contains(string(r.info.PeerCert), `"rsa"`) {
					t.Fatalf("peercert %s", r.info.PeerCert)
				}
				exchangeRaw(t, r, mine, cli)
			})
		}
	}
}

// Command loadgen drives an echo server with closed-loop request/response
// traffic and prints one JSON object describing the timed window.
//
// Each of -conns connections sends a -size message, reads the same number of
// bytes back, and repeats. Requests completed during -warmup are not counted.
// Then -windows timed windows of -duration each follow back to back, and the
// one with the highest throughput is reported. If -server-pid is given, the
// server's CPU time (utime+stime from /proc/PID/stat, all threads) is read at
// the edges of each window, so CPU per request covers exactly the requests
// counted.
//
// With -tls, both modes speak TLS through Go's crypto/tls (see tls.go):
// -tls-version 1.2|1.3, -tls-cipher (1.2 only), -ca FILE to verify the
// server's certificate or -insecure not to, -tls-resume for churn with
// session tickets (off by default: every connection a full handshake).
//
// With -churn, every unit of -conns instead makes a new connection per
// message: connect, send, read the echo, close (with a reset, see churn.go),
// and rps is then connections per second, the latencies those of a whole
// connection, and errors counts connections that failed (the run goes on).
//
// It only talks to loopback addresses or Unix sockets: it is a benchmark
// tool, not a load-testing tool for other machines.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type result struct {
	Mode           string    `json:"mode"`
	Conns          int       `json:"conns"`
	Size           int       `json:"size"`
	Seconds        float64   `json:"seconds"`
	WindowsRPS     []float64 `json:"windows_rps,omitempty"`
	WindowsOther   []float64 `json:"windows_other_cpu,omitempty"`
	OtherCPU       float64   `json:"other_cpu"`
	Requests       uint64    `json:"requests"`
	RPS            float64   `json:"rps"`
	BytesPerSec    float64   `json:"bytes_per_s"`
	P50us          float64   `json:"p50_us"`
	P99us          float64   `json:"p99_us"`
	MaxUs          float64   `json:"max_us"`
	ServerCPUs     float64   `json:"server_cpu_s,omitempty"`
	ServerCPUperRq float64   `json:"server_cpu_us_per_req,omitempty"`
	LoadgenCPUUtil float64   `json:"loadgen_cpu_util"`
	Errors         uint64    `json:"errors"`
	Refused        uint64    `json:"refused,omitempty"`
	Timeouts       uint64    `json:"timeouts,omitempty"`
	LastError      string    `json:"last_error,omitempty"`
	Error          string    `json:"error,omitempty"`
	// -tls only: what was negotiated (on the latest handshake), and how many
	// handshakes the run made and how many of them resumed a session.
	TLS           bool   `json:"tls,omitempty"`
	TLSVersion    string `json:"tls_version,omitempty"`
	TLSCipher     string `json:"tls_cipher,omitempty"`
	TLSCurve      string `json:"tls_curve,omitempty"`
	TLSHandshakes uint64 `json:"tls_handshakes,omitempty"`
	TLSResumed    uint64 `json:"tls_resumed,omitempty"`
}

func main() {
	addr := flag.String("addr", "", "TCP address host:port (loopback only)")
	unixPath := flag.String("unix", "", "Unix socket path (instead of -addr)")
	conns := flag.Int("conns", 10, "concurrent connections")
	size := flag.Int("size", 1024, "message size in bytes")
	warmup := flag.Duration("warmup", time.Second, "warm-up, not counted")
	duration := flag.Duration("duration", 2*time.Second, "length of one timed window")
	spin := flag.Bool("spin", false, "poll without sleeping: the generator answers at once, so the server is what limits")
	windows := flag.Int("windows", 1, "timed windows back to back; the fastest is reported")
	cpus := flag.String("cpus", "0,1", "CPUs whose time other programs take is reported (other_cpu)")
	serverPid := flag.Int("server-pid", 0, "server process whose CPU time to measure")
	ioTimeout := flag.Duration("io-timeout", 10*time.Second, "a request taking longer than this is an error")
	churn := flag.Bool("churn", false, "a new connection per message: connect, send, read the echo, close")
	useTLS := flag.Bool("tls", false, "speak TLS (Go's crypto/tls) to the server, in echo or -churn mode")
	var topt tlsOptions
	flag.StringVar(&topt.version, "tls-version", "1.3", "TLS version: 1.2 or 1.3")
	flag.StringVar(&topt.cipher, "tls-cipher", "", "TLS 1.2 cipher suite (Go's name); default: Go's choice")
	flag.StringVar(&topt.caFile, "ca", "", "with -tls: verify the server's certificate against this PEM CA file")
	flag.BoolVar(&topt.insecure, "insecure", false, "with -tls: do not verify the server's certificate")
	flag.BoolVar(&topt.resume, "tls-resume", false, "with -tls -churn: resume sessions with the server's tickets (default: every connection a full handshake)")
	flag.StringVar(&topt.serverName, "tls-server-name", "localhost", "with -tls: SNI and the name the certificate must carry")
	cpuProfile := flag.String("cpuprofile", "", "write the generator's own CPU profile (pprof) to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		defer pprof.StopCPUProfile()
	}

	// One thread drives every connection through epoll, as the servers do:
	// no goroutine per connection, no scheduler between a wake-up and the
	// next write. That keeps the generator's cost per request well below a
	// server's, which is what lets it measure them. (-tls runs a goroutine
	// per connection instead, see tls.go, still on one P.)
	runtime.GOMAXPROCS(1)
	if !*useTLS {
		runtime.LockOSThread()
	}

	if err := watchCPUs(*cpus); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	res := result{Mode: "echo", Conns: *conns, Size: *size}
	drive := run
	if *churn {
		res.Mode, drive = "churn", runChurn
	}
	if *useTLS {
		cfg, err := topt.config()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		tlsDrive := runTLS
		if *churn {
			tlsDrive = runTLSChurn
		}
		drive = func(res *result, addr, unixPath string, warmup, duration time.Duration, windows int, _ bool, serverPid int, ioTimeout time.Duration) error {
			return tlsDrive(res, addr, unixPath, warmup, duration, windows, serverPid, ioTimeout, cfg)
		}
	} else if topt.resume || topt.caFile != "" || topt.insecure || topt.cipher != "" {
		fmt.Fprintln(os.Stderr, "-tls-* flags, -ca and -insecure need -tls")
		os.Exit(2)
	}
	if err := drive(&res, *addr, *unixPath, *warmup, *duration, *windows, *spin, *serverPid, *ioTimeout); err != nil {
		res.Error = err.Error()
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
	if res.Error != "" {
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func checkTarget(addr, unixPath string) (network, target string, err error) {
	switch {
	case unixPath != "" && addr != "":
		return "", "", errors.New("give -addr or -unix, not both")
	case unixPath != "":
		return "unix", unixPath, nil
	case addr == "":
		return "", "", errors.New("give -addr or -unix")
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "", "", err
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return "", "", fmt.Errorf("refusing non-loopback address %q", addr)
	}
	return "tcp", addr, nil
}

// procCPU returns utime+stime of a whole process (all its threads) in seconds.
func procCPU(pid int) (float64, error) {
	if pid <= 0 {
		return 0, nil
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name is in parentheses and may contain spaces; fields
	// are counted from after its closing parenthesis (field 3 onwards).
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("bad utime/stime")
	}
	return float64(ut+st) / clockTicks, nil
}

// USER_HZ is 100 on every Linux architecture Go supports; /proc reports in it
// regardless of the kernel's internal HZ.
const clockTicks = 100

func selfCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

var watched map[string]bool

func watchCPUs(list string) error {
	watched = map[string]bool{}
	for _, c := range strings.Split(list, ",") {
		if _, err := strconv.Atoi(c); err != nil {
			return fmt.Errorf("bad -cpus %q", list)
		}
		watched["cpu"+c] = true
	}
	return nil
}

// cpusBusy sums the non-idle time of the watched CPUs from /proc/stat, in
// seconds; steal counts as busy, since the host took it from the benchmark.
func cpusBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	var ticks uint64
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || !watched[f[0]] {
			continue
		}
		// user nice system idle iowait irq softirq steal: all but idle, iowait.
		for i, v := range f[1:9] {
			if i == 3 || i == 4 {
				continue
			}
			n, _ := strconv.ParseUint(v, 10, 64)
			ticks += n
		}
	}
	return float64(ticks) / clockTicks
}

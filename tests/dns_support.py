"""A real DNS server for the resolver tests and benchmark: Debian's unbound,
started by hand (never as a system service) with a config and zone written
here, on a loopback address, optionally inside a network namespace whose
/etc/resolv.conf (and /etc/hosts) point the C library at it.
"""
import contextlib
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time

UNBOUND = shutil.which("unbound") or next(
    (p for p in ("/usr/sbin/unbound", "/sbin/unbound") if os.path.exists(p)), None)
IP = shutil.which("ip") or next(
    (p for p in ("/usr/sbin/ip", "/sbin/ip", "/bin/ip") if os.path.exists(p)), None)

ZONE = "example."
# Names the tests rely on. Addresses are in documentation ranges, so that
# nothing routes to them and RFC 6724 sorting keeps the answer order.
ZONE_BODY = """\
$ORIGIN example.
$TTL 300
@ IN SOA ns.example. admin.example. 1 3600 600 86400 30
@ IN NS ns.example.
ns IN A 127.0.0.1
both IN A 192.0.2.10
both IN A 192.0.2.20
both IN AAAA 2001:db8::10
v4 IN A 192.0.2.11
v6 IN AAAA 2001:db8::11
c1 IN CNAME c2
c2 IN CNAME c3
c3 IN CNAME both
dangling IN CNAME nowhere.example.
nodata IN TXT "only text"
mx IN MX 10 mail.example.
mx IN MX 20 mail2.example.
srv IN SRV 1 2 8080 both.example.
txt IN TXT "hello" "world"
sub.deep IN A 192.0.2.30
"""
REV_ZONE = """\
$ORIGIN 7.7.7.in-addr.arpa.
$TTL 300
@ IN SOA ns.example. admin.example. 1 3600 600 86400 30
@ IN NS ns.example.
1 IN PTR one.example.
3 IN PTR three.example.
"""
BIG_COUNT = 120       # A records of big.example: more than UDP carries
HOST_COUNT = 200      # h0..h199.example


def zone_text(bench_names=0):
    lines = [ZONE_BODY]
    lines += [f"big IN A 203.0.113.{i + 1}" for i in range(BIG_COUNT)]
    lines += [f"h{i} IN A 198.51.100.{i % 250 + 1}" for i in range(HOST_COUNT)]
    lines += [f"n{i}.bench IN A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
              for i in range(bench_names)]
    return "\n".join(lines) + "\n"


def bench_name(i):
    return f"n{i}.bench.example"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dns_query_packet(name, qtype=1, ident=0x4242):
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    return struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + q + struct.pack(">HH", qtype, 1)


class _PortTaken(RuntimeError):
    pass


class Unbound:
    """unbound serving the test zones on addr:port (inside netns if given)."""

    def __init__(self, port=None, addr="127.0.0.1", netns=None, bench_names=0, threads=1):
        if UNBOUND is None:
            raise FileNotFoundError("unbound not installed")
        # A free port is only free until someone takes it: when unbound
        # finds the one picked here taken, it starts again on another.
        for attempt in range(5):
            try:
                self._start(port or free_port(), addr, netns, bench_names, threads)
                return
            except _PortTaken:
                if port is not None or attempt == 4:
                    raise

    def _start(self, port, addr, netns, bench_names, threads):
        self.addr, self.netns, self.port = addr, netns, port
        self.dir = tempfile.mkdtemp(prefix="goloop-unbound-")
        with open(os.path.join(self.dir, "example.zone"), "w") as f:
            f.write(zone_text(bench_names))
        with open(os.path.join(self.dir, "rev.zone"), "w") as f:
            f.write(REV_ZONE)
        conf = f"""server:
  interface: {addr}@{self.port}
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{self.dir}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  do-ip6: no
  access-control: 0.0.0.0/0 allow
  rrset-roundrobin: no
  minimal-responses: yes
  num-threads: {threads}
  so-reuseport: yes
  # A burst of a hundred lookups must not overflow the kernel's default
  # receive buffer (about 270 datagrams): lost questions cost a timeout.
  so-rcvbuf: 4m
  so-sndbuf: 4m
  module-config: "iterator"
auth-zone:
  name: "example."
  zonefile: "{self.dir}/example.zone"
  for-downstream: yes
  for-upstream: yes
  fallback-enabled: no
auth-zone:
  name: "7.7.7.in-addr.arpa."
  zonefile: "{self.dir}/rev.zone"
  for-downstream: yes
  for-upstream: yes
  fallback-enabled: no
remote-control:
  control-enable: no
"""
        self.conf = os.path.join(self.dir, "unbound.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        cmd = [UNBOUND, "-d", "-c", self.conf]
        if netns:
            cmd = [IP, "netns", "exec", netns] + cmd
        self.log = open(os.path.join(self.dir, "log"), "w+")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _probe(self, timeout):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(dns_query_packet("ns.example"), (self.addr, self.port))
            return len(s.recv(512)) > 12

    def _wait_ready(self, limit=15.0):
        deadline = time.monotonic() + limit
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                text = self.log.read()
                raise (_PortTaken if "already in use" in text else RuntimeError)(
                    "unbound exited: " + text)
            if self.netns:
                # Its socket lives in the namespace: ask from there.
                r = subprocess.run(
                    [IP, "netns", "exec", self.netns, "/usr/bin/python3", "-c",
                     "import socket,sys;s=socket.socket(2,2);s.settimeout(0.3);"
                     f"s.sendto(bytes.fromhex('{dns_query_packet('ns.example').hex()}'),"
                     f"('{self.addr}',{self.port}));s.recv(512)"],
                    capture_output=True)
                if r.returncode == 0:
                    return
            else:
                try:
                    if self._probe(0.2):
                        return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError("unbound did not answer")
            time.sleep(0.05)

    @property
    def server(self):
        return f"{self.addr}:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def netns_supported():
    """None if network namespaces can be made here, else the reason."""
    if IP is None:
        return "iproute2 (ip) not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"glprobe{os.getpid()}"
    r = subprocess.run([IP, "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return "cannot create a network namespace: " + r.stderr.strip()
    subprocess.run([IP, "netns", "del", name], capture_output=True)
    return None


@contextlib.contextmanager
def netns(resolv_conf, hosts=None, name=None):
    """A network namespace with lo up whose /etc/resolv.conf (and /etc/hosts,
    if given) are the texts given: `ip netns exec` binds /etc/netns/NAME/*
    over /etc/* for the processes it starts."""
    name = name or f"gldns{os.getpid()}"
    etc = f"/etc/netns/{name}"
    subprocess.run([IP, "netns", "del", name], capture_output=True)
    subprocess.run([IP, "netns", "add", name], check=True, capture_output=True)
    try:
        os.makedirs(etc, exist_ok=True)
        with open(os.path.join(etc, "resolv.conf"), "w") as f:
            f.write(resolv_conf)
        if hosts is not None:
            with open(os.path.join(etc, "hosts"), "w") as f:
                f.write(hosts)
        subprocess.run([IP, "netns", "exec", name, IP, "link", "set", "lo", "up"],
                       check=True, capture_output=True)
        yield name
    finally:
        subprocess.run([IP, "netns", "del", name], capture_output=True)
        shutil.rmtree(etc, ignore_errors=True)


def set_resolv_conf(name, text):
    """Replace the namespace's resolv.conf for processes started later."""
    with open(f"/etc/netns/{name}/resolv.conf", "w") as f:
        f.write(text)


def netns_exec(name, argv, **kw):
    return subprocess.run([IP, "netns", "exec", name] + list(argv), **kw)

"""goloop's resolver front (python/goloop/_dns.py) against the C library.

Three layers:
- pure: the parts answered in Python (numeric hosts, bad arguments, the
  nsswitch decision, error mapping) with a loop that must never be asked;
- on a goloop loop: /etc/hosts names, cancellation, the loop staying
  responsive, and the aiodns-style Resolver against unbound on a high port;
- in a network namespace whose resolv.conf points at unbound on
  127.0.0.1:53: a subprocess asks socket.getaddrinfo/getnameinfo and goloop
  the same questions on the same DNS data and both answers are compared.
"""
import asyncio
import ipaddress
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import dns_support  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _goloop_dir():
    # The directory the goloop under test comes from, for child interpreters:
    # the installed package (make test's venv) when there is one, else the
    # sources (a development build made with `make inplace`).
    try:
        import goloop
    except ImportError:
        goloop = None
    path = getattr(goloop, "__file__", None)  # None: the Go package's folder
    if path:
        return os.path.dirname(os.path.dirname(os.path.abspath(path)))
    src = os.path.join(os.path.dirname(HERE), "python")
    if src not in sys.path:
        sys.path.insert(0, src)
    return src


PYDIR = _goloop_dir()

from goloop import _dns  # noqa: E402  (pure Python: importing it starts nothing)

REQUIRED = os.environ.get("GOLOOP_REQUIRED") == "1"


def _goloop():
    try:
        import goloop
        return goloop
    except Exception as e:  # not built yet
        if REQUIRED:
            raise
        pytest.skip(f"goloop not built ({e})")


@pytest.fixture
def gloop():
    goloop = _goloop()
    loop = goloop.new_event_loop()
    yield loop
    loop.close()


def outcome(fn, *args):
    """A comparable summary of a call: its result or its exception."""
    try:
        res = fn(*args)
    except Exception as e:
        return ("err", type(e).__name__, e.args)
    if isinstance(res, list):
        return ("ok", [(repr(f), repr(t), p, c, sa) for f, t, p, c, sa in res])
    return ("ok", res)


async def aoutcome(coro):
    try:
        res = await coro
    except Exception as e:
        return ("err", type(e).__name__, e.args)
    if isinstance(res, list):
        return ("ok", [(repr(f), repr(t), p, c, sa) for f, t, p, c, sa in res])
    return ("ok", res)


class NoGoLoop:
    """A loop that fails the test if anything reaches Go or a thread."""

    def _go_call(self, method, req):
        raise AssertionError(f"Go was asked {method} {req!r}")

    def run_in_executor(self, *a):
        raise AssertionError("the executor was used")


class Done:
    """An awaitable that is already finished."""

    def __init__(self, value=None, exc=None):
        self.value, self.exc = value, exc

    def __await__(self):
        if self.exc is not None:
            raise self.exc
        return self.value
        yield


def run_sync(coro):
    """Drive a coroutine that must finish without awaiting anything."""
    try:
        coro.send(None)
    except StopIteration as e:
        return ("ok", e.value)
    except Exception as e:
        return ("err", type(e).__name__, e.args)
    coro.close()
    raise AssertionError("the coroutine waited for something")


def summarize(o):
    if o[0] == "ok" and isinstance(o[1], list):
        return ("ok", [(repr(f), repr(t), p, c, sa) for f, t, p, c, sa in o[1]])
    return o


@pytest.fixture(autouse=True)
def go_resolver(monkeypatch):
    monkeypatch.setenv("GOLOOP_RESOLVER", "go")


# ---------------------------------------------------------------- pure

NUMERIC_HOSTS = [None, "127.0.0.1", "::1", "fe80::1%lo", "fe80::1%1", "127.1", "0x7f.1",
                 b"10.0.0.1", "::ffff:1.2.3.4", "0.0.0.0", "::", "1.2.3.4", "2001:db8::1"]
PORTS = [None, 0, 80, "80", "http", b"domain", "https", " 80", "+80", 65536, -1,
         "no-such-service", ""]
FAMILIES = [0, socket.AF_INET, socket.AF_INET6, socket.AF_UNIX]
TYPES = [0, socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW, socket.SOCK_SEQPACKET]
PROTOS = [0, socket.IPPROTO_TCP, socket.IPPROTO_UDP, 132]
FLAGS = [0, socket.AI_PASSIVE, socket.AI_CANONNAME, socket.AI_NUMERICSERV,
         socket.AI_V4MAPPED, socket.AI_V4MAPPED | socket.AI_ALL, socket.AI_ADDRCONFIG,
         socket.AI_NUMERICHOST, 0x10000]


def test_numeric_hosts_match_c_without_go():
    rnd = random.Random(1234)
    combos = list(itertools.product(NUMERIC_HOSTS, PORTS, FAMILIES, TYPES, PROTOS, FLAGS))
    cases = rnd.sample(combos, 3000)
    loop = NoGoLoop()
    for args in cases:
        want = outcome(socket.getaddrinfo, *args)
        if want[0] == "err" and want[2][0] == socket.EAI_NONAME and args[0] is None:
            # Both None: goes to Go, which says EAI_NONAME too (tested below).
            continue
        got = summarize(run_sync(_dns.getaddrinfo(loop, *args)))
        assert got == want, args


BAD_ARGS = [
    (1, 80), (1.5, 80), (["localhost"], 80), (bytearray(b"localhost"), 80),
    ("localhost", 1.5), ("localhost", [80]), ("localhost", True),
    ("localhost", 80, "x"), ("localhost", 80, 0, "x"), ("localhost", 80, 0, 0, 0, "x"),
    ("localhost", 80, 2 ** 40), ("localhost", 80, 0, 0, 0, -1),
    ("\udcff", 80), ("bad\u2028name..x", 80), ("xn--" + "a" * 70, 80),
    ("name..example", 80), ("." + "z" * 10, 80), ("z" * 64, 80), ("zz." + "z" * 64, 80),
    ("name\0.example", 80),
    ("localhost", "http", 0, socket.SOCK_RAW), ("localhost", 80, 0, 999),
    ("localhost", 80, 0, 0, 999), ("localhost", "no-such-service"),
    ("localhost", "80x", 0, 0, 0, socket.AI_NUMERICSERV),
    (None, None), ("localhost", 80, 0, 0, 0, socket.AI_CANONNAME | 0x8000),
    (None, 80, 0, 0, 0, socket.AI_CANONNAME), ("localhost", 80, 77),
]


def test_bad_arguments_raise_what_c_raises():
    class Loop(NoGoLoop):
        def _go_call(self, method, req):
            return Done(exc=_goloop_call_error(
                '{"eai": -2, "rcode": -1, "msg": "Name or service not known"}'))

    loop = Loop()
    for args in BAD_ARGS:
        want = outcome(socket.getaddrinfo, *args)
        if want[0] == "ok":
            continue  # a valid name on this machine: not a bad argument
        coro = _dns.getaddrinfo(loop, *args)
        got = asyncio.run(aoutcome(coro))
        assert got == want, args


def _goloop_call_error(text):
    cls = type("GoCallError", (Exception,), {})
    return cls(text)


def test_gai_error_mapping():
    e = _dns._gai_error(_goloop_call_error('{"eai":-5,"rcode":0,"msg":"No address associated with hostname"}'))
    assert isinstance(e, socket.gaierror)
    assert e.args == (socket.EAI_NODATA, "No address associated with hostname")
    e = _dns._gai_error(_goloop_call_error("not json"))
    assert type(e) is OSError


def test_nsswitch_decides(monkeypatch, tmp_path):
    monkeypatch.delenv("GOLOOP_RESOLVER")
    conf = tmp_path / "nsswitch.conf"
    monkeypatch.setattr(_dns, "_NSSWITCH", str(conf))
    monkeypatch.setattr(_dns, "_nss_state", [None, None])
    cases = {
        "hosts: files dns\n": True,
        "passwd: files\nhosts:     files   dns   # comment\n": True,
        "hosts: files mdns4_minimal [NOTFOUND=return] dns\n": False,
        "hosts: files dns myhostname\n": False,
        "hosts: files resolve [!UNAVAIL=return] dns\n": False,
        "hosts: dns files\n": False,
        "passwd: files\n": False,
    }
    for i, (text, want) in enumerate(cases.items()):
        conf.write_text(text + "#" * i)  # a new size each time: re-read
        monkeypatch.setattr(_dns, "_nss_checked", [-10.0])  # and now
        assert _dns.use_go_resolver() is want, text
    conf.unlink()
    monkeypatch.setattr(_dns, "_nss_checked", [-10.0])
    assert _dns.use_go_resolver() is False
    monkeypatch.setenv("GOLOOP_RESOLVER", "go")
    assert _dns.use_go_resolver() is True
    monkeypatch.setenv("GOLOOP_RESOLVER", "system")
    assert _dns.use_go_resolver() is False


def test_system_resolver_uses_executor(monkeypatch):
    monkeypatch.setenv("GOLOOP_RESOLVER", "system")
    calls = []

    class Loop(NoGoLoop):
        def run_in_executor(self, executor, fn, *args):
            calls.append((fn, args))
            return Done(value=fn(*args))

    res = asyncio.run(_dns.getaddrinfo(Loop(), "127.0.0.1", 80))
    assert res == socket.getaddrinfo("127.0.0.1", 80)
    assert calls and calls[0][0] is socket.getaddrinfo


def test_resolver_checks_nameservers():
    for good in ["192.0.2.1", "192.0.2.1:5353", "::1", "[::1]:53", "fe80::1%lo"]:
        assert _dns.Resolver(nameservers=[good]).nameservers == [good]
    for bad in ["bogus", "192.0.2.1:0", "192.0.2.1:x", "[::1", "[::1]x", "1.2.3.4:70000"]:
        with pytest.raises(ValueError):
            _dns.Resolver(nameservers=[bad])
    with pytest.raises(ValueError):
        _dns.Resolver(timeout=0)
    with pytest.raises(ValueError):
        _dns.Resolver(attempts=0)


def test_import_is_light():
    code = ("import sys; sys.path.insert(0, %r); import goloop._dns; "
            "heavy = [m for m in ('goloop._core', 'asyncio', 'ctypes') if m in sys.modules]; "
            "print(heavy)") % PYDIR
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    # goloop/__init__ may import _core (the lead's package), but _dns itself
    # must not need asyncio or ctypes.
    assert "ctypes" not in out.stdout, out


# ---------------------------------------------------------------- on a goloop loop

def hosts_cases():
    """Names of /etc/hosts with the families the file can answer alone
    (anything else would go on to DNS, whose answers differ by machine)."""
    fams = {}
    with open("/etc/hosts") as f:
        for line in f:
            parts = line.split("#", 1)[0].split()
            if len(parts) < 2:
                continue
            try:
                ip = ipaddress.ip_address(parts[0])
            except ValueError:
                continue
            for n in parts[1:]:
                fams.setdefault(n, set()).add(ip.version)
    cases = []
    for name, vs in sorted(fams.items())[:6]:
        for port, typ, flags in itertools.product(
                [None, 80, "http"], [0, socket.SOCK_STREAM],
                [0, socket.AI_CANONNAME, socket.AI_PASSIVE, socket.AI_ADDRCONFIG]):
            cases.append((name, port, 0, typ, 0, flags))
            cases.append((name.upper(), port, 0, typ, 0, flags))
            if 4 in vs:
                cases.append((name, port, socket.AF_INET, typ, 0, flags))
                cases.append((name, port, socket.AF_INET6, typ, 0, flags | socket.AI_V4MAPPED))
            if 6 in vs:
                cases.append((name, port, socket.AF_INET6, typ, 0, flags))
    return cases


def test_hosts_file_parity(gloop):
    async def main():
        for args in hosts_cases():
            want = outcome(socket.getaddrinfo, *args)
            got = await aoutcome(_dns.getaddrinfo(gloop, *args))
            assert got == want, args
        # None host and None port goes all the way to Go and back.
        assert await aoutcome(_dns.getaddrinfo(gloop, None, None)) == \
            outcome(socket.getaddrinfo, None, None)
    gloop.run_until_complete(main())


def test_getaddrinfo_yields_to_the_loop(loop, monkeypatch):
    # On goloop the second and third lookups are answered inside the call
    # (from /etc/hosts, no goroutine); the awaiting task must still yield
    # once, as the executor makes it yield on asyncio and uvloop, so that a
    # task resolving cached names in a loop does not starve the others.
    monkeypatch.setenv("GOLOOP_RESOLVER", "go")

    async def main():
        order = []
        for _ in range(3):
            loop.call_soon(order.append, "callback")
            res = await loop.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
            order.append("answer")
        return order, res
    order, res = loop.run_until_complete(main())
    assert order == ["callback", "answer"] * 3
    assert res == socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)


def test_getnameinfo_local_parity(gloop):
    cases = [(("127.0.0.1", 80), 0), (("127.0.0.1", 80), socket.NI_NUMERICHOST),
             (("127.0.0.1", 53), socket.NI_DGRAM), (("127.0.0.1", 80), socket.NI_NUMERICSERV),
             (("::1", 443, 0, 0), socket.NI_NUMERICHOST), (("127.0.0.1", 80), 0x4000),
             (("127.0.0.1", 80, 0, 0), 0), (("localhost", 80), 0), ("127.0.0.1", 0),
             (("127.0.0.1",), 0), (("::1", 80, 0x100000, 0), 0)]
    async def main():
        for sa, flags in cases:
            want = outcome(socket.getnameinfo, sa, flags)
            got = await aoutcome(_dns.getnameinfo(gloop, sa, flags))
            assert got == want, (sa, flags)
    gloop.run_until_complete(main())


def blackhole():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def test_cancel_and_loop_stays_responsive(gloop):
    hole = blackhole()
    r = _dns.Resolver(nameservers=["127.0.0.1:%d" % hole.getsockname()[1]], timeout=5,
                      attempts=1, loop=gloop)

    async def main():
        ticks = 0
        stop = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not stop.is_set():
                await asyncio.sleep(0.01)
                ticks += 1
        tick_task = asyncio.ensure_future(ticker())
        task = asyncio.ensure_future(r.query("x.example", "A"))
        await asyncio.sleep(0.2)
        assert not task.done()
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - t0 < 0.5
        stop.set()
        await tick_task
        assert ticks >= 5, "the loop was blocked during the lookup"
    try:
        gloop.run_until_complete(main())
    finally:
        hole.close()


CANCEL_CHILD = r"""
import asyncio, json, socket, sys, time
sys.path.insert(0, sys.argv[1])
resolv_conf = sys.argv[2]
hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
hole.bind(("127.0.0.1", 0))
hole.setblocking(False)
with open(resolv_conf, "w") as f:
    f.write("nameserver 127.0.0.1:%d\noptions timeout:5 attempts:1\n" % hole.getsockname()[1])
import goloop
from goloop import _dns
loop = goloop.new_event_loop()

async def main():
    # From /etc/hosts (GOLOOP_HOSTS): teaches _dns that these arguments are
    # valid, so the next name takes the C fast path, never _dns's.
    await loop.getaddrinfo("warm.example", 80, type=socket.SOCK_STREAM)
    async def no_python_path(*a):
        raise AssertionError("took the Python path")
    _dns.getaddrinfo = no_python_path
    task = loop.create_task(loop.getaddrinfo("x.example", 80, type=socket.SOCK_STREAM))
    await loop.sock_recv(hole, 512)  # the question reached the silent server
    in_flight = len(loop._calls)
    t0 = time.monotonic()
    task.cancel()
    try:
        await task
        cancelled = False
    except asyncio.CancelledError:
        cancelled = True
    # Go posts the call's end once the lookup has stopped: within moments
    # if the cancel reached it, after the 5 s timeout otherwise. Nothing
    # signals it to Python code, so look.
    while loop._calls and time.monotonic() - t0 < 4:
        await asyncio.sleep(0.01)
    return {"cancelled": cancelled, "in_flight": in_flight,
            "go_done_after": time.monotonic() - t0, "left": len(loop._calls)}

print(json.dumps(loop.run_until_complete(main())))
"""


def test_cancel_getaddrinfo_stops_go_lookup(tmp_path):
    # goloop only: cancelling the awaiting task must end the lookup in Go
    # too (asyncio and uvloop cannot stop a thread-pool getaddrinfo).
    _goloop()
    hosts = tmp_path / "hosts"
    hosts.write_text("192.0.2.1 warm.example\n")
    script = tmp_path / "child.py"
    script.write_text(CANCEL_CHILD)
    rc = tmp_path / "resolv.conf"
    env = dict(os.environ, GOLOOP_RESOLVER="go", GOLOOP_HOSTS=str(hosts),
               GOLOOP_RESOLV_CONF=str(rc), PYTHONPATH=PYDIR)
    r = subprocess.run(["/usr/bin/python3", str(script), PYDIR, str(rc)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["cancelled"] and got["in_flight"] == 1, got
    assert got["left"] == 0 and got["go_done_after"] < 2.0, got


def test_timeout_is_dns_error(gloop):
    hole = blackhole()
    r = _dns.Resolver(nameservers=["127.0.0.1:%d" % hole.getsockname()[1]], timeout=0.2,
                      attempts=2, loop=gloop)
    t0 = time.monotonic()
    with pytest.raises(_dns.DNSError) as ei:
        gloop.run_until_complete(r.query("x.example", "A"))
    hole.close()
    assert 0.35 < time.monotonic() - t0 < 3
    assert ei.value.rcode is None and ei.value.errno == -1
    assert isinstance(ei.value, OSError)


@pytest.fixture(scope="module")
def unbound():
    if dns_support.UNBOUND is None:
        pytest.skip("unbound binary missing (apt-get install unbound)")
    with dns_support.Unbound() as ub:
        yield ub


def test_resolver_query(gloop, unbound):
    r = _dns.Resolver(nameservers=[unbound.server], timeout=2, loop=gloop)

    async def main():
        a = await r.query("both.example", "A")
        assert [x.host for x in a] == ["192.0.2.10", "192.0.2.20"] and a[0].ttl == 300
        assert [x.host for x in await r.query("both.example", "AAAA")] == ["2001:db8::10"]
        assert (await r.query("c1.example", "CNAME"))[0].cname == "c2.example"
        assert [x.host for x in await r.query("c1.example", "a")] == ["192.0.2.10", "192.0.2.20"]
        mx = await r.query("mx.example", "MX")
        assert [(m.host, m.priority) for m in mx] == [("mail.example", 10), ("mail2.example", 20)]
        srv = (await r.query("srv.example", "SRV"))[0]
        assert (srv.host, srv.port, srv.priority, srv.weight) == ("both.example", 8080, 1, 2)
        assert (await r.query("txt.example", "TXT"))[0].text == "helloworld"
        assert (await r.query("example", "NS"))[0].host == "ns.example"
        assert (await r.query("1.7.7.7.in-addr.arpa", "PTR"))[0].name == "one.example"
        big = await r.query("big.example", "A")  # over TCP: too big for UDP
        assert len(big) == dns_support.BIG_COUNT
        with pytest.raises(_dns.DNSError) as ei:
            await r.query("missing.example", "A")
        assert ei.value.rcode == 3 and ei.value.errno == 3 and ei.value.name == "missing.example"
        with pytest.raises(_dns.DNSError) as ei:
            await r.query("nodata.example", "A")
        assert ei.value.rcode == 0
        with pytest.raises(ValueError):
            await r.query("x.example", "HINFO")
        r.clear_cache()
        assert len(await r.query("both.example", "A")) == 2
        # Many at once: coalesced and concurrent, none lost.
        res = await asyncio.gather(*[r.query(f"h{i}.example", "A")
                                     for i in range(dns_support.HOST_COUNT)])
        assert [x[0].host for x in res] == [f"198.51.100.{i % 250 + 1}"
                                           for i in range(dns_support.HOST_COUNT)]
    gloop.run_until_complete(main())


def test_resolver_failover(gloop, unbound):
    hole = blackhole()
    r = _dns.Resolver(nameservers=["127.0.0.1:%d" % hole.getsockname()[1], unbound.server],
                      timeout=0.3, attempts=1, cache=False, loop=gloop)
    t0 = time.monotonic()
    a = gloop.run_until_complete(r.query("v4.example", "A"))
    hole.close()
    assert a[0].host == "192.0.2.11"
    assert 0.25 < time.monotonic() - t0 < 2


# ---------------------------------------------------------------- against glibc, same DNS data

CHILD = r"""
import json, socket, sys, asyncio
sys.path.insert(0, sys.argv[2])
import goloop
from goloop import _dns
cases = json.load(open(sys.argv[1]))

def norm(res):
    if isinstance(res, list):
        return [[repr(f), repr(t), p, c, list(sa)] for f, t, p, c, sa in res]
    return list(res)

def call(fn, *a):
    try:
        return ["ok", norm(fn(*a))]
    except Exception as e:
        return ["err", type(e).__name__, list(e.args)]

async def acall(coro):
    try:
        return ["ok", norm(await coro)]
    except Exception as e:
        return ["err", type(e).__name__, list(e.args)]

loop = goloop.new_event_loop()
# loop.getaddrinfo goes through the C fast path once _dns has seen the
# arguments accepted; count the lookups it took so the test knows both
# paths were compared.
fast = [0]
def counting_gai_start(*a, _start=loop._gai_start):
    r = _start(*a)
    fast[0] += r is not None
    return r
loop._gai_start = counting_gai_start
out = []
async def main():
    for kind, args in cases:
        if kind == "gai":
            host, port, family, type, proto, flags = args
            via_loop = await acall(loop.getaddrinfo(host, port, family=family, type=type,
                                                    proto=proto, flags=flags))
            out.append([kind, args, call(socket.getaddrinfo, *args),
                        await acall(_dns.getaddrinfo(loop, *args)), via_loop])
        else:
            sa, flags = args
            sa = tuple(sa)
            got = await acall(_dns.getnameinfo(loop, sa, flags))
            out.append([kind, args, call(socket.getnameinfo, sa, flags), got, got])
loop.run_until_complete(main())
print(json.dumps({"results": out, "fast": fast[0]}))
"""

NETNS_HOSTS = """127.0.0.1 localhost
::1 localhost ip6-localhost
192.0.2.50 filehost filehost.example alias
2001:db8::50 filehost
192.0.2.51 v4only
2001:db8::51 v6only
"""

DNS_NAMES = ["both", "both.example", "both.example.", "v4", "v6", "c1", "c1.example",
             "dangling.example", "nodata", "nodata.example", "missing", "missing.example.",
             "big.example", "h7", "h123.example", "sub.deep", "sub.deep.example",
             "filehost", "FileHost.example", "alias", "v4only", "v6only", "localhost",
             "BOTH.EXAMPLE"]


def netns_cases():
    gai = []
    for name in DNS_NAMES:
        for fam, flags in [(0, 0), (0, socket.AI_CANONNAME), (socket.AF_INET, 0),
                           (socket.AF_INET, socket.AI_CANONNAME), (socket.AF_INET6, 0),
                           (socket.AF_INET6, socket.AI_V4MAPPED),
                           (socket.AF_INET6, socket.AI_V4MAPPED | socket.AI_ALL),
                           (0, socket.AI_ADDRCONFIG)]:
            gai.append(["gai", [name, 80, fam, socket.SOCK_STREAM, 0, flags]])
        gai.append(["gai", [name, "http", 0, 0, 0, 0]])
        gai.append(["gai", [name, "domain", 0, socket.SOCK_DGRAM, 0, socket.AI_PASSIVE]])
        gai.append(["gai", [name, None, socket.AF_INET6, 0, socket.IPPROTO_UDP,
                            socket.AI_V4MAPPED | socket.AI_CANONNAME]])
        gai.append(["gai", [name, "no-such-service", 0, 0, 0, 0]])
        gai.append(["gai", [name, "80", 0, 0, 0, socket.AI_NUMERICSERV | socket.AI_NUMERICHOST]])
    gni = []
    for host in ["7.7.7.1", "7.7.7.2", "7.7.7.3", "192.0.2.50", "127.0.0.1", "::1", "2001:db8::50"]:
        for flags in [0, socket.NI_NAMEREQD, socket.NI_DGRAM, socket.NI_NOFQDN,
                      socket.NI_NUMERICSERV]:
            sa = [host, 53] if ":" not in host else [host, 53, 0, 0]
            gni.append(["gni", [sa, flags]])
    return gai + gni


RESOLV_CONFS = {
    "plain": "nameserver 127.0.0.1\nsearch example\n",
    "failover": ("nameserver 127.0.0.2\nnameserver 127.0.0.1\nsearch other.example example\n"
                 "options ndots:2 timeout:1 attempts:2 edns0 single-request\n"),
    "rotate": ("domain example\nnameserver 127.0.0.1\nnameserver 127.0.0.1\n"
               "options rotate ndots:3\n"),
}


def test_same_answers_as_glibc_in_netns(tmp_path):
    goloop = _goloop()
    if dns_support.UNBOUND is None:
        pytest.skip("unbound binary missing (apt-get install unbound)")
    why = dns_support.netns_supported()
    if why:
        pytest.skip(why)
    casefile = tmp_path / "cases.json"
    casefile.write_text(json.dumps(netns_cases()))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, GOLOOP_RESOLVER="go", PYTHONPATH=PYDIR)
    mismatches = []
    with dns_support.netns(RESOLV_CONFS["plain"], hosts=NETNS_HOSTS) as ns:
        with dns_support.Unbound(port=53, netns=ns):
            runs = list(RESOLV_CONFS.items())
            # Last, with addresses on lo that make the answers routable, so
            # that RFC 6724 sorting and AI_ADDRCONFIG have something to do.
            runs.append(("routable", RESOLV_CONFS["plain"]))
            for label, rc in runs:
                if label == "routable":
                    for addr in ("192.0.2.1/24", "198.51.100.1/24", "2001:db8::1/64", "fd00::1/64"):
                        dns_support.netns_exec(ns, [dns_support.IP, "addr", "add", addr, "dev", "lo"],
                                               check=True, capture_output=True)
                dns_support.set_resolv_conf(ns, rc)
                r = dns_support.netns_exec(ns, ["/usr/bin/python3", str(script), str(casefile), PYDIR],
                                           capture_output=True, text=True, env=env, timeout=120)
                assert r.returncode == 0, r.stderr
                reply = json.loads(r.stdout)
                results = reply["results"]
                assert len(results) == len(netns_cases())
                # Most lookups took the C fast path (loop.getaddrinfo); each
                # was also asked through the Python path (_dns.getaddrinfo).
                assert reply["fast"] > len(DNS_NAMES) * 5, reply["fast"]
                for kind, args, want, got, via_loop in results:
                    if want != got:
                        mismatches.append((label, kind, args, want, got))
                    if want != via_loop:
                        mismatches.append((label, "loop." + kind, args, want, via_loop))
                # The data really came from unbound: a DNS-only name resolved.
                assert any(a[0] == "c1.example" and w[0] == "ok" for _, a, w, _, _ in results)
                if label == "routable":
                    # Sorting had work to do: with both families routable,
                    # glibc puts the IPv6 answer (precedence 40) before
                    # the IPv4 ones (10) that DNS listed first.
                    both = [w for _, a, w, _, _ in results
                            if a == ["both.example", 80, 0, int(socket.SOCK_STREAM), 0, 0]]
                    assert both and both[0][1][0][4][0] == "2001:db8::10", both
    assert not mismatches, "\n".join(map(repr, mismatches[:20])) + f"\n({len(mismatches)} in all)"
    del goloop

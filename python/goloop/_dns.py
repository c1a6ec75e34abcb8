"""Name resolution for goloop: getaddrinfo/getnameinfo answered by the Go
resolver (goloop/dns), and an aiodns-style Resolver.

Importing this module is cheap and starts nothing: it needs only a loop
with ``_go_call`` (goloop's) at call time.

How a getaddrinfo call is answered:

1. If the system resolver is chosen (GOLOOP_RESOLVER=system, or
   /etc/nsswitch.conf's ``hosts:`` line is not exactly ``files dns``), it
   runs ``socket.getaddrinfo`` in the loop's default executor, as asyncio
   does.
2. Otherwise ``socket.getaddrinfo`` is first called right here with
   AI_NUMERICHOST added. That call never touches the network: it either
   answers (numeric hosts, None, IPv6 scope ids) or raises exactly what
   the real call would for bad arguments, bad flags, unknown services or
   families. Only EAI_NONAME (the host is a name) goes on to step 3.
3. The Go resolver looks the name up and shapes the result as glibc
   does; addresses come back as raw bytes and _core builds the tuples
   (inet_ntop, the socket module's enums), so they are byte-for-byte what
   the C library gives.

goloop.Loop.getaddrinfo skips steps 1-2 for the common case (a str name
whose other arguments were already seen accepted): the C extension sends
the request itself (LoopCore._gai_start) and settles the future in C.
"""
import json
import os
import re
from operator import index as _index
from time import monotonic as _monotonic
import socket
from collections import namedtuple

from . import _core

__all__ = (
    "getaddrinfo", "getnameinfo", "Resolver", "DNSError", "use_go_resolver",
    "ARecord", "CNAMERecord", "MXRecord", "NSRecord", "PTRRecord",
    "SRVRecord", "TXTRecord",
)

_NSSWITCH = "/etc/nsswitch.conf"
_nss_state = [None, None]  # [(mtime_ns, size, ino), decision]
_nss_checked = [-10.0]     # when nsswitch.conf was last stat'ed (at most once a second)

# Plain ints: IntFlag arithmetic on a negative flags value would turn it
# into a different (positive) mask.
_AI_NUMERICHOST = int(socket.AI_NUMERICHOST)
_EAI_NONAME = int(socket.EAI_NONAME)
_NONAME_NOT_HOST = int(socket.AI_NUMERICSERV) | int(socket.AI_ADDRCONFIG)
_AI_ADDRCONFIG = int(socket.AI_ADDRCONFIG)
_NI_NUMERICHOST = int(socket.NI_NUMERICHOST)
_NI_NUMERICSERV = int(socket.NI_NUMERICSERV)
_NI_NAMEREQD = int(socket.NI_NAMEREQD)
_AF_INET = int(socket.AF_INET)
_AF_INET6 = int(socket.AF_INET6)


def _hosts_sources(text):
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("hosts:"):
            return line[len("hosts:"):].split()
    return None


# os.environ.get costs more than the rest of a cached lookup's Python side
# (its mapping is written in Python); the dict behind it, which os.environ
# keeps current, answers the same for a tenth of that.
_ENV = getattr(os.environ, "_data", None)
_RESOLVER_KEY = (os.environ.encodekey("GOLOOP_RESOLVER")
                 if _ENV is not None and hasattr(os.environ, "encodekey") else None)
_forced_cache = [None, ""]  # [raw value, its meaning]


def _forced_resolver():
    if _RESOLVER_KEY is None:
        return os.environ.get("GOLOOP_RESOLVER", "").strip().lower()
    raw = _ENV.get(_RESOLVER_KEY)
    if raw is not _forced_cache[0]:
        text = os.environ.decodevalue(raw) if raw is not None else ""
        _forced_cache[0], _forced_cache[1] = raw, text.strip().lower()
    return _forced_cache[1]


def use_go_resolver():
    """True when getaddrinfo goes to the Go resolver.

    GOLOOP_RESOLVER=go or =system forces the choice; otherwise Go answers
    only when /etc/nsswitch.conf's hosts line is exactly "files dns" (the
    two sources the Go resolver implements), as Go's own net package
    decides between its resolver and cgo.
    """
    forced = _forced_resolver()
    if forced == "go":
        return True
    if forced == "system":
        return False
    now = _monotonic()
    if now - _nss_checked[0] < 1.0 and _nss_state[1] is not None:
        return _nss_state[1]
    _nss_checked[0] = now
    try:
        st = os.stat(_NSSWITCH)
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        key = None
    if _nss_state[0] != key or _nss_state[1] is None:
        decision = False
        if key is not None:
            try:
                with open(_NSSWITCH, encoding="utf-8", errors="replace") as f:
                    sources = _hosts_sources(f.read())
            except OSError:
                sources = None
            decision = sources == ["files", "dns"]
        _nss_state[0], _nss_state[1] = key, decision
    return _nss_state[1]


_maybe_numeric_str = re.compile(r"[0-9a-fA-FxX.]*\Z").match
_maybe_numeric_bytes = re.compile(rb"[0-9a-fA-FxX.]*\Z").match


def _surely_a_name(host):
    """True when host cannot be a numeric address for glibc (no colon, as
    an IPv6 address has, and a character that inet_aton's decimal, octal
    and 0x forms never have) and, for str, is ASCII with labels the IDNA
    codec accepts (1 to 63 characters; the socket module encodes str hosts
    with it). Anything else takes the slow path, which raises exactly."""
    if isinstance(host, str):
        if ":" in host or _maybe_numeric_str(host) or not host.isascii():
            return False
        labels = host.split(".")
        last = labels.pop()
        return len(last) < 64 and all(0 < len(l) < 64 for l in labels)
    return b":" not in host and not _maybe_numeric_bytes(host)


# (type(port), port, family, type, proto, flags) whose arguments the C
# library accepts: for those, a name goes straight to Go without first
# asking the C library (which would raise EAI_NONAME for it, and a raised
# exception costs more than the rest of the call).
_valid_args = set()


def _arguments_valid(port, family, type, proto, flags):
    """Whether getaddrinfo accepts everything but the host (which must be
    a name): checked once with a numeric host of the family, and
    remembered unless AI_ADDRCONFIG (the interfaces may change)."""
    key = (port.__class__, port, family, type, proto, flags)
    try:
        if key in _valid_args:
            return True
    except TypeError:  # unhashable port: let the C library say why
        return False
    if flags & (_AI_ADDRCONFIG | _AI_NUMERICHOST):
        return False
    stand_in = "::1" if family == _AF_INET6 else "127.0.0.1"
    try:
        socket.getaddrinfo(stand_in, port, family, type, proto, flags | _AI_NUMERICHOST)
    except Exception:
        return False
    if len(_valid_args) > 512:
        _valid_args.clear()
    _valid_args.add(key)
    return True


def _has_go(loop):
    return getattr(loop, "_go_call", None) is not None


def _gai_error(exc):
    """socket.gaierror (or OSError) from a failed Go call's JSON text."""
    try:
        info = json.loads(str(exc))
        code, msg = info["eai"], info["msg"]
    except (ValueError, KeyError, TypeError):
        return OSError(str(exc))
    if code == socket.EAI_SYSTEM:
        return OSError(msg)
    return socket.gaierror(code, msg)


def setup_fast_path(go_call_error):
    """Hand the C fast path (LoopCore._gai_start and the completion that
    builds the tuples) what it needs from here: the set of argument
    combinations already accepted, the enum members socket.getaddrinfo
    returns, and how a failed call's text becomes an exception."""
    def error(kind, text):
        return _gai_error(text) if kind == 1 else go_call_error(text)
    _core._dns_setup(_valid_args, {int(m): m for m in socket.AddressFamily},
                     {int(m): m for m in socket.SocketKind}, error)


async def getaddrinfo(loop, host, port, family=0, type=0, proto=0, flags=0):
    """socket.getaddrinfo's answer, without blocking the loop."""
    if not _has_go(loop) or not use_go_resolver():
        return await loop.run_in_executor(
            None, socket.getaddrinfo, host, port, family, type, proto, flags)
    try:
        flags = int(_index(flags))
    except TypeError:
        # Not an integer: the C call rejects it while parsing its
        # arguments, before any lookup, with the exact exception.
        return socket.getaddrinfo(host, port, family, type, proto, flags)
    if not (host.__class__ in (str, bytes) and _surely_a_name(host)
            and _arguments_valid(port, family, type, proto, flags)):
        try:
            return socket.getaddrinfo(host, port, family, type, proto,
                                      flags | _AI_NUMERICHOST)
        except socket.gaierror as e:
            if e.errno != _EAI_NONAME or flags & _AI_NUMERICHOST or host is None:
                raise
            if flags & _NONAME_NOT_HOST:
                # EAI_NONAME may be about the service (AI_NUMERICSERV) or
                # the interfaces (AI_ADDRCONFIG) rather than the host: it
                # is the final answer if the host alone parses as numeric.
                try:
                    socket.getaddrinfo(host, None, 0, 0, 0, _AI_NUMERICHOST)
                except socket.gaierror:
                    pass
                else:
                    raise
    # host is a name (str or bytes; the probe rejected anything else, and
    # checked its IDNA encoding, which leaves ASCII text as it is). The C
    # library sees strings up to their first NUL.
    if isinstance(host, str):
        hb = (host if host.isascii() else host.encode("idna").decode("ascii")).encode()
    else:
        hb = host
    if b"\0" in hb:
        hb = hb[:hb.index(b"\0")]
    if port is None:
        pb = b"n"
    elif isinstance(port, int):
        pb = b"s%d" % port
    else:
        pb = port.encode() if isinstance(port, str) else port
        pb = b"s" + (pb[:pb.index(b"\0")] if b"\0" in pb else pb)
    # host, service, family, type, proto, flags; see parseAddrinfoRequest.
    req = b"s%s\0%s\0%d\0%d\0%d\0%d" % (hb, pb, family, type, proto, flags)
    try:
        data = await loop._go_call("dns.getaddrinfo", req)
    except Exception as e:
        if _type_name(e) == "GoCallError":
            raise _gai_error(e) from None
        raise
    return _core.addrinfo_decode(data)


def _type_name(e):
    return e.__class__.__name__


async def getnameinfo(loop, sockaddr, flags=0):
    """socket.getnameinfo's answer, without blocking the loop."""
    if not _has_go(loop) or not use_go_resolver():
        return await loop.run_in_executor(None, socket.getnameinfo, sockaddr, flags)
    try:
        flags = int(_index(flags))
    except TypeError:
        return socket.getnameinfo(sockaddr, flags)  # raises while parsing
    if flags & _NI_NUMERICHOST:
        # Nothing to look up but the service, in /etc/services.
        return socket.getnameinfo(sockaddr, flags)
    # Validates the arguments exactly as the real call does, and gives the
    # address and port in numbers.
    numhost, numserv = socket.getnameinfo(
        sockaddr, (flags | _NI_NUMERICHOST | _NI_NUMERICSERV) & ~_NI_NAMEREQD)
    req = json.dumps({"addr": numhost.split("%", 1)[0], "port": int(numserv),
                      "flags": flags})
    try:
        data = await loop._go_call("dns.getnameinfo", req.encode())
    except Exception as e:
        if _type_name(e) == "GoCallError":
            raise _gai_error(e) from None
        raise
    res = json.loads(data)
    return (res["host"] or numhost, res["serv"])


# ---- the aiodns-style API ----

ARecord = namedtuple("ARecord", "host ttl")                  # A and AAAA
CNAMERecord = namedtuple("CNAMERecord", "cname ttl")
MXRecord = namedtuple("MXRecord", "host priority ttl")
NSRecord = namedtuple("NSRecord", "host ttl")
PTRRecord = namedtuple("PTRRecord", "name ttl")
SRVRecord = namedtuple("SRVRecord", "host port priority weight ttl")
TXTRecord = namedtuple("TXTRecord", "text ttl")               # text: the strings joined

_TYPES = ("A", "AAAA", "CNAME", "MX", "TXT", "SRV", "NS", "PTR")

_RCODE_TEXT = {
    0: "DNS server returned answer with no data",
    1: "DNS server claims query was misformatted",
    2: "DNS server returned general failure",
    3: "Domain name not found",
    4: "DNS server does not implement requested operation",
    5: "DNS server refused query",
}


class DNSError(OSError):
    """A failed Resolver.query.

    ``args`` is ``(code, message)``; ``code`` (also ``errno``) is the DNS
    response code when a server answered (3 NXDOMAIN, 2 SERVFAIL, 5 REFUSED,
    0 for an answer without records of the type: NODATA), or -1 when no
    server answered in time. ``rcode`` is the same code, None for no
    answer; ``name`` is the name asked.
    """

    def __init__(self, code, message, name=None):
        super().__init__(code, message)
        self.rcode = code if code >= 0 else None
        self.name = name


def _record(t, r):
    if t in ("A", "AAAA"):
        return ARecord(r["host"], r["ttl"])
    if t == "CNAME":
        return CNAMERecord(r["host"], r["ttl"])
    if t == "MX":
        return MXRecord(r["host"], r.get("priority", 0), r["ttl"])
    if t == "NS":
        return NSRecord(r["host"], r["ttl"])
    if t == "PTR":
        return PTRRecord(r["host"], r["ttl"])
    if t == "SRV":
        return SRVRecord(r["host"], r.get("port", 0), r.get("priority", 0),
                         r.get("weight", 0), r["ttl"])
    return TXTRecord("".join(r.get("text") or ()), r["ttl"])


def _check_nameserver(s):
    """"addr", "v4addr:port" or "[v6addr]:port", else ValueError."""
    import ipaddress
    host, port = s, None
    if s.startswith("["):
        host, sep, rest = s[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad nameserver {s!r}")
        port = rest[1:] or None
    elif s.count(":") == 1:
        host, port = s.split(":")
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        if port is not None and not 0 < int(port) < 65536:
            raise ValueError
    except ValueError:
        raise ValueError(f"bad nameserver {s!r}: want an IP address, "
                         "optionally with a port ('192.0.2.1:53', '[2001:db8::1]:53')") from None
    return s


class Resolver:
    """DNS queries for aiodns users, answered by goloop's Go resolver.

    ``Resolver(nameservers=None, timeout=None, attempts=None, cache=True,
    loop=None)``: nameservers are "addr" or "addr:port" strings ("[v6]:port"
    for IPv6 with a port); None means resolv.conf's. timeout (seconds per
    try) and attempts default to resolv.conf's. With cache=True answers are
    kept as long as their TTL (negative ones per RFC 2308).
    ``await r.query(name, type)`` asks for one of A, AAAA, CNAME, MX, TXT,
    SRV, NS, PTR, with no search list and no /etc/hosts, and returns a list
    of records (ARecord, MXRecord, ...); it raises DNSError.
    """

    def __init__(self, nameservers=None, timeout=None, attempts=None,
                 cache=True, loop=None):
        if nameservers is not None:
            if isinstance(nameservers, str):
                nameservers = [nameservers]
            nameservers = [_check_nameserver(str(s)) for s in nameservers]
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive")
        if attempts is not None and attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._opts = {
            "nameservers": nameservers or [],
            "timeout": float(timeout or 0),
            "attempts": int(attempts or 0),
            "cache": bool(cache),
        }
        self._loop = loop
        self._clear = False

    @property
    def nameservers(self):
        return list(self._opts["nameservers"])

    def clear_cache(self):
        """Forget cached answers; takes effect before the next query."""
        self._clear = True

    async def query(self, name, type):
        t = str(type).upper()
        if t not in _TYPES:
            raise ValueError(f"unsupported query type {type!r}")
        if isinstance(name, bytes):
            name = name.decode("ascii")
        if not isinstance(name, str):
            raise TypeError("name must be str")
        name = name.encode("idna").decode("ascii") if name else name
        loop = self._loop
        if loop is None:
            import asyncio
            loop = asyncio.get_running_loop()
        if not _has_go(loop):
            raise RuntimeError("goloop.Resolver needs a goloop event loop")
        req = dict(self._opts, name=name, type=t)
        if self._clear:
            req["clear"] = True
            self._clear = False
        try:
            data = await loop._go_call("dns.query", json.dumps(req).encode())
        except Exception as e:
            if _type_name(e) != "GoCallError":
                raise
            try:
                info = json.loads(str(e))
            except ValueError:
                raise DNSError(-1, str(e), name) from None
            rcode = info.get("rcode", -1)
            if info.get("eai") == socket.EAI_SYSTEM:
                raise DNSError(-1, info.get("msg", str(e)), name) from None
            if rcode < 0:
                raise DNSError(-1, "Timeout while contacting DNS servers", name) from None
            raise DNSError(rcode, _RCODE_TEXT.get(rcode, f"DNS error rcode {rcode}"),
                           name) from None
        return [_record(t, r) for r in json.loads(data)]

"""goloop.TLSContext: TLS whose handshakes run on Go's crypto/tls in
goroutines (in parallel with the loop and with each other), after which the
kernel (kernel TLS) or Go's own record layer does the records. It mirrors
the ssl.SSLContext methods a server or client sets up with, and is accepted
wherever ssl= is on goloop's loop (docs/gotls.md).

What is here runs once per context or once per connection: building the Go
context (the "tls.context" method, answered at once), starting the
"tls.handshake" call on a duplicate of the connection's fd, and turning Go's
answer into what ssl would give (get_extra_info values, ssl's exceptions)."""
import base64
import json
import os
import ssl
import struct
import weakref

_GL_KTLS_SIZE = 232   # sizeof(gl_ktls), pybind/goloop.h
# tls.handshake's request (docs/gotls.md): context id, fd, server; then the
# server_hostname's bytes.
_HS_REQUEST = struct.Struct("<QiB")

_VERSIONS = {
    ssl.TLSVersion.MINIMUM_SUPPORTED: 0,
    ssl.TLSVersion.MAXIMUM_SUPPORTED: 0,
    ssl.TLSVersion.TLSv1_2: 0x0303,
    ssl.TLSVersion.TLSv1_3: 0x0304,
}


class TLSContext:
    """A TLS context for goloop's loop whose handshakes Go does.

    TLSContext(ssl.PROTOCOL_TLS_SERVER) or TLSContext(ssl.PROTOCOL_TLS_CLIENT),
    with ssl.SSLContext's defaults for each (a client verifies the server's
    certificate and host name). TLS 1.2 and 1.3 with AEAD cipher suites."""

    def __init__(self, protocol):
        if protocol == ssl.PROTOCOL_TLS_SERVER:
            self._server = True
            self._verify_mode = ssl.CERT_NONE
            self._check_hostname = False
        elif protocol == ssl.PROTOCOL_TLS_CLIENT:
            self._server = False
            self._verify_mode = ssl.CERT_REQUIRED
            self._check_hostname = True
        else:
            raise ValueError("goloop.TLSContext: protocol must be ssl.PROTOCOL_TLS_SERVER "
                             "or ssl.PROTOCOL_TLS_CLIENT")
        self._protocol = protocol
        self._chain = []
        self._cafiles, self._capaths, self._cadata = [], [], []
        self._default_certs = False
        self._alpn = []
        self._min = ssl.TLSVersion.MINIMUM_SUPPORTED
        self._max = ssl.TLSVersion.MAXIMUM_SUPPORTED
        self._go = None        # (loop's weak reference, context id) once built
        self._dirty = True

    def __repr__(self):
        side = "server" if self._server else "client"
        return f"<goloop.TLSContext {side}>"

    def __bool__(self):
        return True

    # ---- ssl.SSLContext's setup methods ----

    @property
    def protocol(self):
        return self._protocol

    def load_cert_chain(self, certfile, keyfile=None, password=None):
        certfile = os.fspath(certfile)
        keyfile = None if keyfile is None else os.fspath(keyfile)
        if callable(password):
            password = password()
        if isinstance(password, bytes):
            password = password.decode("utf-8", "surrogateescape")
        elif password is not None and not isinstance(password, str):
            raise TypeError("password should be a string or callable")
        for f in (certfile, keyfile):
            if f is not None:
                _check_file(f)
        self._chain.append({"certfile": os.path.abspath(certfile),
                        "keyfile": keyfile and os.path.abspath(keyfile),
                        "password": password})
        self._changed()

    def load_verify_locations(self, cafile=None, capath=None, cadata=None):
        if cafile is None and capath is None and cadata is None:
            raise TypeError("cafile, capath and cadata cannot be all omitted")
        if cafile is not None:
            cafile = os.fspath(cafile)
            _check_file(cafile)
            self._cafiles.append(os.path.abspath(cafile))
        if capath is not None:
            capath = os.fspath(capath)
            _check_file(capath)
            self._capaths.append(os.path.abspath(capath))
        if cadata is not None:
            if isinstance(cadata, str):
                self._cadata.append(cadata)
            elif isinstance(cadata, (bytes, bytearray, memoryview)):
                self._cadata.append(base64.b64encode(bytes(cadata)).decode())
            else:
                raise TypeError("cadata should be an ASCII string or a bytes-like object")
        self._changed()

    def load_default_certs(self, purpose=ssl.Purpose.SERVER_AUTH):
        if not isinstance(purpose, ssl._ASN1Object):
            raise TypeError(purpose)
        self._default_certs = True
        self._changed()

    def set_default_verify_paths(self):
        self._default_certs = True
        self._changed()

    def set_alpn_protocols(self, alpn_protocols):
        protos = []
        for p in alpn_protocols:
            b = p.encode("ascii")
            if not 0 < len(b) <= 255:
                raise ValueError("ALPN protocols must be 1 to 255 in length")
            protos.append(p)
        self._alpn = protos
        self._changed()

    @property
    def verify_mode(self):
        return self._verify_mode

    @verify_mode.setter
    def verify_mode(self, value):
        value = ssl.VerifyMode(value)
        if value == ssl.CERT_NONE and self._check_hostname:
            raise ValueError("Cannot set verify_mode to CERT_NONE when check_hostname is enabled.")
        self._verify_mode = value
        self._changed()

    @property
    def check_hostname(self):
        return self._check_hostname

    @check_hostname.setter
    def check_hostname(self, value):
        value = bool(value)
        if value and self._verify_mode == ssl.CERT_NONE:
            self._verify_mode = ssl.CERT_REQUIRED   # what ssl does
        self._check_hostname = value
        self._changed()

    @property
    def minimum_version(self):
        return self._min

    @minimum_version.setter
    def minimum_version(self, value):
        self._min = _version(value)
        self._changed()

    @property
    def maximum_version(self):
        return self._max

    @maximum_version.setter
    def maximum_version(self, value):
        self._max = _version(value)
        self._changed()

    def wrap_bio(self, *args, **kwargs):
        raise TypeError("goloop.TLSContext does its handshakes in Go: it works as ssl= of "
                        "goloop's loop only, not with ssl's objects")

    wrap_socket = wrap_bio

    # ---- Go's side ----

    def _changed(self):
        self._dirty = True

    def _go_id(self, loop):
        """The Go context for these settings, built (again) when they changed.
        Raises what ssl would for a file it cannot load."""
        # Go's contexts are the process's, not a loop's: one id serves every
        # loop; the loop is kept (weakly) only to free the id later.
        if not self._dirty and self._go is not None:
            return self._go[1]
        req = json.dumps({
            "server": self._server, "cert_chain": self._chain,
            "cafiles": self._cafiles, "capaths": self._capaths, "cadata": self._cadata,
            "default_certs": self._default_certs, "verify_mode": int(self._verify_mode),
            "check_hostname": self._check_hostname, "alpn": self._alpn,
            "min_version": _VERSIONS[self._min], "max_version": _VERSIONS[self._max],
            "session_tickets": True,
        }).encode()
        r = loop._go_call_quick("tls.context", req, True)
        if r is None:
            raise RuntimeError("goloop.TLSContext: Go did not answer tls.context")
        ok, data = r
        if not ok:
            raise _load_error(data.decode("utf-8", "replace"))
        self._free()
        self._go = (weakref.ref(loop), int(data))
        self._dirty = False
        return self._go[1]

    def _free(self):
        go, self._go = self._go, None
        if go is not None:
            loop = go[0]()
            if loop is not None and not loop.is_closed():
                loop._go_call_quick("tls.context.free", str(go[1]).encode())

    def __del__(self):
        try:
            self._free()
        except Exception:
            pass


def _check_file(path):
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such file or directory", path)


def _version(value):
    value = ssl.TLSVersion(value)
    if value not in _VERSIONS:
        raise ValueError(f"goloop.TLSContext supports TLS 1.2 and 1.3, not {value.name}")
    return value


def _load_error(text):
    """The exception for Go's error text from tls.context (docs/gotls.md)."""
    return _go_error(text) or ssl.SSLError(1, text)


def _os_error(rest):
    num, _, msg = rest.partition(":")
    if num.isdigit():
        return OSError(int(num), msg)   # its subclass by errno, as OSError picks
    return OSError(rest)


def _ssl_error(text):
    """ssl.SSLError with the library and reason of Go's "[LIB: REASON] text"."""
    e = ssl.SSLError(1, text)
    if text.startswith("[") and "]" in text:
        head = text[1:text.index("]")]
        lib, _, reason = head.partition(": ")
        e.library, e.reason = lib, reason or None
    return e


def _go_error(text):
    kind, _, rest = text.partition(":")
    if kind == "os":
        return _os_error(rest)
    if kind == "value":
        return ValueError(rest)
    if kind == "ssl":
        return _ssl_error(rest)
    return None


class TLSObject:
    """get_extra_info('ssl_object') of a goloop.TLSContext connection: the
    query methods of ssl.SSLObject, answered from Go's handshake."""

    def __init__(self, context, server_side, server_hostname):
        self._context = context
        self._server_side = server_side
        self._server_hostname = server_hostname
        self._info = None

    @property
    def context(self):
        return self._context

    @property
    def server_side(self):
        return self._server_side

    @property
    def server_hostname(self):
        return self._server_hostname

    @property
    def session_reused(self):
        return bool(self._info and self._info.get("resumed"))

    @property
    def session(self):
        return None

    def getpeercert(self, binary_form=False):
        if self._info is None:
            raise ValueError("handshake not done yet")
        if binary_form:
            der = self._info.get("peer_der")
            return None if der is None else base64.b64decode(der)
        return _peercert(self._info.get("peercert"))

    def cipher(self):
        return None if self._info is None else tuple(self._info["cipher"])

    def shared_ciphers(self):
        return None

    def version(self):
        return None if self._info is None else self._info["version"]

    def selected_alpn_protocol(self):
        return None if self._info is None else self._info.get("alpn")

    def selected_npn_protocol(self):
        return None

    def compression(self):
        return None

    def pending(self):
        return 0

    def get_channel_binding(self, cb_type="tls-unique"):
        if cb_type != "tls-unique":
            raise ValueError(f"Unsupported channel binding type {cb_type}")
        return None


def _tuples(v):
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def _peercert(d):
    if d is None:
        return None
    return {k: _tuples(v) for k, v in d.items()}


# ---- the handshake (_core.TLSProtocol calls go_start) ----

def go_start(proto, loop, fd):
    """Start Go's handshake on a duplicate of fd; the future of the call,
    which the protocol cancels if the connection ends first."""
    obj = proto._sslobj
    cid = obj.context._go_id(loop)
    dup = os.dup(fd)   # Go's from the call's start: it closes it, once
    req = _HS_REQUEST.pack(cid, dup, obj.server_side) + (obj.server_hostname or "").encode()
    try:
        fut = loop._go_call("tls.handshake", req)
    except BaseException:
        os.close(dup)
        raise
    fut.add_done_callback(lambda f: _finished(proto, obj, f))
    return fut


def _finished(proto, obj, fut):
    if fut.cancelled():
        return   # the connection ended first; Go closed its fd
    exc = fut.exception()
    if exc is not None:
        proto._go_failed(handshake_error(str(exc)))
        return
    result = fut.result()
    obj._info = json.loads(result[_GL_KTLS_SIZE:])
    cipher = tuple(obj._info["cipher"])
    proto._go_done(result, _peercert(obj._info.get("peercert")), cipher, obj)


# OpenSSL's reason names for the alerts a peer sends, so that a program that
# looks at SSLError.reason sees what ssl would show.
_ALERTS = {
    10: "SSLV3_ALERT_UNEXPECTED_MESSAGE", 20: "SSLV3_ALERT_BAD_RECORD_MAC",
    40: "SSLV3_ALERT_HANDSHAKE_FAILURE", 42: "SSLV3_ALERT_BAD_CERTIFICATE",
    43: "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", 44: "SSLV3_ALERT_CERTIFICATE_REVOKED",
    45: "SSLV3_ALERT_CERTIFICATE_EXPIRED", 46: "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    47: "SSLV3_ALERT_ILLEGAL_PARAMETER", 48: "TLSV1_ALERT_UNKNOWN_CA",
    49: "TLSV1_ALERT_ACCESS_DENIED", 50: "TLSV1_ALERT_DECODE_ERROR",
    51: "TLSV1_ALERT_DECRYPT_ERROR", 70: "TLSV1_ALERT_PROTOCOL_VERSION",
    71: "TLSV1_ALERT_INSUFFICIENT_SECURITY", 80: "TLSV1_ALERT_INTERNAL_ERROR",
    112: "TLSV1_UNRECOGNIZED_NAME", 116: "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    120: "TLSV1_ALERT_NO_APPLICATION_PROTOCOL",
}


def handshake_error(text):
    """The exception ssl would raise for Go's handshake error text
    (docs/gotls.md: verify:, alert:, eof:, cancelled:, ssl:, os:, value:)."""
    kind, _, rest = text.partition(":")
    if kind == "verify":
        code, _, message = rest.partition(":")
        e = ssl.SSLCertVerificationError(
            1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
        e.reason, e.library = "CERTIFICATE_VERIFY_FAILED", "SSL"
        e.verify_code = int(code) if code.isdigit() else 1
        e.verify_message = message
        return e
    if kind == "alert":
        num, _, message = rest.partition(":")
        reason = _ALERTS.get(int(num) if num.isdigit() else -1, "TLSV1_ALERT_UNKNOWN")
        e = ssl.SSLError(1, f"[SSL: {reason}] {message}")
        e.reason, e.library = reason, "SSL"
        return e
    if kind == "eof":
        # What asyncio's SSLProtocol gives for an EOF during the handshake.
        return ConnectionResetError(f"Connection lost during the TLS handshake: {rest}")
    if kind == "cancelled":
        return ConnectionAbortedError("TLS handshake cancelled")
    return _go_error(text) or _ssl_error(text)

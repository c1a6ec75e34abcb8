"""python -m goloop [--json]: what goloop runs on here.

goloop's and Go's versions, the backend a new loop gets and why
(GOLOOP_BACKEND, or auto-detection and what it found), the io_uring features
the backend relies on as the kernel reports them, and whether kernel TLS is
available. For bug reports and for checking a deployment; exit status 0
unless no loop can be made at all.
"""
import errno
import json
import os
import platform
import socket
import sys

import goloop
from goloop import _dns

# linux/tcp.h; Python's socket module does not name it.
TCP_ULP = 31


def ktls_status():
    """(available, how): whether this kernel can put a TCP socket into
    kernel TLS. The tls module shows in /sys/module/tls (and, per network
    namespace, /proc/net/tls_stat) once loaded; otherwise asking for the
    "tls" upper layer on a connected loopback socket is the real test (the
    kernel loads the module on demand where it may)."""
    if os.path.exists("/proc/net/tls_stat") or os.path.isdir("/sys/module/tls"):
        return True, "tls module loaded"
    try:
        with socket.create_server(("127.0.0.1", 0)) as ln, \
                socket.create_connection(ln.getsockname()) as c:
            a, _ = ln.accept()
            a.close()
            c.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
    except OSError as exc:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        if exc.errno == errno.ENOENT:
            return False, f"no tls module in this kernel (TCP_ULP: {name})"
        return False, f"TCP_ULP \"tls\" refused: {name} {exc.strerror}"
    return True, "TCP_ULP \"tls\" accepted"


def gather():
    env_backend = os.environ.get("GOLOOP_BACKEND", "")
    info = {
        "goloop": goloop.__version__,
        "package": os.path.dirname(goloop.__file__),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "GOLOOP_BACKEND": env_backend or None,
    }
    loop = loop_error = None
    try:
        loop = goloop.new_event_loop()
    except Exception as exc:  # a forced backend this kernel lacks, a bad name
        loop_error = f"{type(exc).__name__}: {exc}"
    probe = loop
    if probe is None:
        try:  # the features probe needs a loop of any kind
            probe = goloop.Loop(backend="epoll")
        except Exception:
            probe = None
    features = None
    if probe is not None:
        try:
            features = json.loads(probe.run_until_complete(
                probe._go_call("goloop.features", b"")))
        finally:
            probe.close()
    if loop is not None and loop is not probe:
        loop.close()
    uring = (features or {}).get("io_uring", {})
    if loop_error:
        backend, why = None, loop_error
    elif env_backend:
        backend, why = loop.backend, f"GOLOOP_BACKEND={env_backend}"
    elif uring.get("usable"):
        backend, why = loop.backend, "auto-detected: io_uring is usable"
    else:
        backend = loop.backend
        why = f"auto-detected: io_uring unavailable ({uring.get('error', 'unknown')})"
    ktls, ktls_how = ktls_status()
    info.update({
        "go": features and f"{features['go_version']} {features['goos']}/{features['goarch']}",
        "kernel": (features or {}).get("kernel") or platform.release(),
        "backend": backend,
        "backend_reason": why,
        "io_uring": uring or None,
        "ktls": ktls,
        "ktls_reason": ktls_how,
        "resolver": "go" if _dns.use_go_resolver() else "system",
        "GOLOOP_RESOLVER": os.environ.get("GOLOOP_RESOLVER") or None,
    })
    return info


def _yes(v):
    return {True: "yes", False: "no", None: "unknown"}[v]


def render(info):
    lines = [
        f"goloop {info['goloop']} ({info['package']})",
        f"python: {info['python']}",
        f"go: {info['go'] or 'unknown (no loop could be made)'}",
        f"kernel: {info['kernel']}",
        f"backend: {info['backend'] or 'none'} ({info['backend_reason']})",
    ]
    u = info["io_uring"] or {}
    if u:
        state = "usable" if u.get("usable") else f"unavailable ({u.get('error')})"
        lines.append(f"io_uring: {state}")
        if u.get("io_uring_disabled") is not None:
            lines.append(f"  kernel.io_uring_disabled: {u['io_uring_disabled']}")
        if u.get("setup_flags") is not None:
            lines.append(f"  setup flags: {' '.join(u['setup_flags']) or '-'}")
        for key, label in (("multishot_accept", "multishot accept"),
                           ("multishot_recv", "multishot recv"),
                           ("provided_buffer_rings", "provided buffer rings"),
                           ("send_zc", "send_zc")):
            lines.append(f"  {label}: {_yes(u.get(key))}")
        if u.get("probe_error"):
            lines.append(f"  probe error: {u['probe_error']}")
    lines.append(f"kernel TLS: {'available' if info['ktls'] else 'unavailable'} "
                 f"({info['ktls_reason']})")
    forced = info["GOLOOP_RESOLVER"]
    lines.append(f"resolver: {info['resolver']} "
                 f"({'GOLOOP_RESOLVER=' + forced if forced else 'from /etc/nsswitch.conf'})")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    as_json = "--json" in argv
    info = gather()
    try:
        print(json.dumps(info, indent=2) if as_json else render(info), flush=True)
    except BrokenPipeError:  # `python -m goloop | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0 if info["backend"] else 1


if __name__ == "__main__":
    sys.exit(main())

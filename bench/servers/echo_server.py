"""Echo server for the loop benchmark, one process per (loop, variant).

    python echo_server.py --loop goloop|uvloop|asyncio
                          --variant protocol|buffered|streams|sockets
                          (--port N | --unix PATH) [--tls CERT:KEY]

Each variant is the idiomatic way to write an echo with that asyncio API, so the
benchmark compares what applications actually run. The server listens on
127.0.0.1 only and runs until it is killed.

--tls CERT:KEY serves TLS: an ssl.SSLContext(PROTOCOL_TLS_SERVER) with that
certificate chain and key (PEM files), handed to create_server /
start_server as ssl=, for the protocol, buffered and streams variants. The
sockets variant has no TLS (the loop's sock_* methods move raw bytes) and
refuses --tls. With GOLOOP_BENCH_TLS=go in its environment (suite.py
--tls-goloop-env GOLOOP_BENCH_TLS=go) goloop serves with a goloop.TLSContext
instead: Go's handshakes and records.
"""

import argparse
import asyncio
import os
import socket
import ssl
import sys

from loops import new_loop

READ_SIZE = 256 * 1024


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        self.transport.write(data)


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buf = bytearray(READ_SIZE)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        # Slicing a bytearray copies: the transport may keep what it cannot
        # send yet, and the next read reuses self.buf.
        self.transport.write(self.buf[:nbytes])


async def serve_protocol(loop, args, factory):
    if args.unix:
        return await loop.create_unix_server(factory, args.unix, backlog=1024, ssl=args.ssl)
    return await loop.create_server(factory, "127.0.0.1", args.port, backlog=1024, ssl=args.ssl)


async def echo_stream(reader, writer):
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve_streams(loop, args):
    if args.unix:
        return await asyncio.start_unix_server(echo_stream, args.unix, backlog=1024, ssl=args.ssl)
    return await asyncio.start_server(echo_stream, "127.0.0.1", args.port, backlog=1024,
                                      ssl=args.ssl)


async def echo_sock(loop, conn):
    try:
        while True:
            data = await loop.sock_recv(conn, READ_SIZE)
            if not data:
                break
            await loop.sock_sendall(conn, data)
    except ConnectionError:
        pass
    finally:
        conn.close()


async def serve_sockets(loop, args):
    if args.unix:
        try:
            os.unlink(args.unix)
        except FileNotFoundError:
            pass
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(args.unix)
    else:
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", args.port))
    lsock.listen(1024)
    lsock.setblocking(False)
    tasks = set()
    while True:
        conn, _ = await loop.sock_accept(lsock)
        conn.setblocking(False)
        if conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = loop.create_task(echo_sock(loop, conn))
        tasks.add(t)
        t.add_done_callback(tasks.discard)


async def main(loop, args):
    if args.variant == "protocol":
        server = await serve_protocol(loop, args, EchoProtocol)
    elif args.variant == "buffered":
        server = await serve_protocol(loop, args, EchoBufferedProtocol)
    elif args.variant == "streams":
        server = await serve_streams(loop, args)
    else:
        await serve_sockets(loop, args)
        return
    async with server:
        await server.serve_forever()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loop", required=True, choices=["goloop", "uvloop", "asyncio"])
    p.add_argument("--variant", required=True,
                   choices=["protocol", "buffered", "streams", "sockets"])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int)
    where.add_argument("--unix")
    p.add_argument("--tls", metavar="CERT:KEY",
                   help="serve TLS with this certificate chain and key (not with --variant sockets)")
    args = p.parse_args(argv)
    args.ssl = None
    if args.tls:
        if args.variant == "sockets":
            p.error("--variant sockets has no TLS (sock_* methods move raw bytes)")
        cert, sep, key = args.tls.partition(":")
        if not sep or not cert or not key:
            p.error("--tls wants CERT:KEY")
        if os.environ.get("GOLOOP_BENCH_TLS") == "go" and args.loop == "goloop":
            import goloop   # Go's handshakes and records (goloop.TLSContext)
            args.ssl = goloop.TLSContext(ssl.PROTOCOL_TLS_SERVER)
        else:
            args.ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        args.ssl.load_cert_chain(cert, key)
    return args


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    loop = new_loop(args.loop)
    asyncio.set_event_loop(loop)
    loop.run_until_complete(main(loop, args))

"""Chaos and soak: many echo connections while callbacks pause and resume reading,
switch protocols, cut connections and replace the server; and long echo transfers
through Protocol, BufferedProtocol and streams servers. Every connection keeps a
running checksum (BLAKE2b) of what it sent, of what its server side received and of
what came back.

Chaos checks, per connection:
  - nothing cut it: the echo and the server side's bytes equal what was sent (count
    and checksum: each byte reached its own connection, once, in order), and each end
    saw connection_lost(None) exactly once;
  - abort()/close() cut it (either end): both are a prefix of what was sent;
  - it raced a server.close() (server_close_in_cb): refused, or never accepted and
    nothing echoed, or accepted and then as any other;
  - the protocol contract: no data callback while reading is paused, after the
    transport's close()/abort() or after connection_lost; a connection is accepted by
    the server whose port it connected to.

Seeded: GOLOOP_CHAOS_SEED replays a run (the seed is printed past pytest's capture at
the start, so even a crash shows it, and is in every failure message).
GOLOOP_CHAOS_SCALE, GOLOOP_CHAOS_ACTIONS and GOLOOP_SOAK_BYTES size and select the
work (see chaos_support.py); GOLOOP_CHAOS_TRACE=path appends each chaos action to that
file as it happens, for finding the action a crash followed. The chaos actions
(GOLOOP_CHAOS_ACTIONS takes a comma list of them; default all):

  from a call_later timer, on a random live connection:
    pause               pause_reading() its client or server transport,
                        resume_reading() a little later (call_later)
    switch              set_protocol() on its server transport to an echo protocol of
                        the other kind (Protocol <-> BufferedProtocol), state carried
    abort, close        abort() or close() its client or server transport
    rotate              close the server once no connect is in flight to it, open a
                        new one on a new port; later clients connect there
  from inside a server protocol's data_received() / buffer_updated():
    pause_in_cb         pause_reading() itself, resume_reading() later
    switch_in_cb        set_protocol() to the other kind
    abort_in_cb, close_in_cb
                        abort() or close() its own transport
    server_close_in_cb  server.close() at once, connects in flight or not; then a new
                        server as for rotate
"""

import asyncio
import os
import random

import pytest

from bounded import run
from chaos_support import (KEEP_LIMIT, ByteStream, Tally, env_actions, env_float,
                           env_seed, env_size, explain_mismatch)

SEED = env_seed()
SCALE = env_float("GOLOOP_CHAOS_SCALE", 1.0)
BACKEND = os.environ.get("GOLOOP_BACKEND", "default")

TIMER_ACTIONS = ("pause", "switch", "abort", "close", "rotate")
CALLBACK_ACTIONS = ("pause_in_cb", "switch_in_cb", "abort_in_cb", "close_in_cb",
                    "server_close_in_cb")
ACTIONS = env_actions(TIMER_ACTIONS + CALLBACK_ACTIONS)
# How often each action is drawn, relative to the others of its site.
WEIGHTS = {"pause": 6, "switch": 6, "abort": 1, "close": 1, "rotate": 1,
           "pause_in_cb": 6, "switch_in_cb": 6, "abort_in_cb": 1, "close_in_cb": 1,
           "server_close_in_cb": 2}

N_CONNS = max(1, round(64 * SCALE))
MAX_CONN_BYTES = max(1, int((2 << 20) * SCALE))
CONCURRENCY = max(4, N_CONNS // 3)
MAX_CUTS = max(1, N_CONNS // 4)
MAX_ROTATIONS = max(2, round(4 * SCALE))  # of each of rotate and server_close_in_cb
TICK = 0.0005           # mean time between timer actions
CALLBACK_CHANCE = 0.05  # chance that a server data callback does a chaos action
PAUSE_FOR = 0.004       # a pause lasts up to this long
CHAOS_DEADLINE = 20 + 10 * SCALE * SCALE

SOAK_BYTES = env_size("GOLOOP_SOAK_BYTES", 32 << 20)
SOAK_CONNS = 4
SOAK_MAX_MESSAGE = 256 << 10
SOAK_WINDOW = 4 << 20   # a protocol client is never further ahead of its echo
SOAK_DEADLINE = 30 + SOAK_BYTES / (4 << 20)


TRACE_PATH = os.environ.get("GOLOOP_CHAOS_TRACE", "")
# Opened before any test takes its fd snapshot, so it is no loop's leak.
_trace_file = open(TRACE_PATH, "a", buffering=1) if TRACE_PATH else None


def trace(line):
    """With GOLOOP_CHAOS_TRACE=path, every chaos action is appended to that file and
    flushed at once: after a crash its last lines name the action that preceded it."""
    if _trace_file is not None:
        _trace_file.write(line + "\n")


_announced = False


def announce(capsys, what):
    """Print the seed past pytest's capture, once per run and before anything runs:
    a crash (segfault) loses the captured output, and with it the seed."""
    global _announced
    trace(what)
    if not _announced:
        _announced = True
        with capsys.disabled():
            print(f"\n[test_chaos: GOLOOP_CHAOS_SEED={SEED}]", flush=True)


def replay_hint(soak=False):
    actions = ",".join(ACTIONS) or "none"
    knobs = (f"GOLOOP_SOAK_BYTES={SOAK_BYTES}" if soak else
             f"GOLOOP_CHAOS_SCALE={SCALE} GOLOOP_CHAOS_ACTIONS={actions}")
    backend = f"GOLOOP_BACKEND={BACKEND} " if BACKEND != "default" else ""
    return (f"seed={SEED} backend={BACKEND}; replay with {backend}"
            f"GOLOOP_CHAOS_SEED={SEED} {knobs}")


class Violations:
    """Breaches of the protocol contract, counted by kind: (callbacks, bytes)."""

    def __init__(self):
        self.seen = {}

    def add(self, what, nbytes=0):
        calls, total = self.seen.get(what, (0, 0))
        self.seen[what] = (calls + 1, total + nbytes)

    def lines(self):
        return [f"{what}: {calls} times, {total} B" if total else f"{what}: {calls} times"
                for what, (calls, total) in self.seen.items()]


def collect_exceptions(loop):
    seen = []

    def handler(lp, ctx):
        seen.append(f"{ctx.get('message')}: {ctx.get('exception')!r}")
    loop.set_exception_handler(handler)
    return seen


# -- chaos: the server side --------------------------------------------------------

class ServerSide:
    """One accepted connection's state, shared by whichever echo protocol the
    transport currently has (set_protocol swaps the protocol, not this)."""

    def __init__(self, chaos, index, gen):
        self.chaos = chaos
        self.index = index
        self.gen = gen  # which server accepted it
        self.rng = random.Random(f"{chaos.seed}:server:{index}")
        self.transport = None
        self.peername = None
        self.conn = None  # the client Conn, once matched by address
        self.recv = Tally(keep=chaos.keep)
        self.kinds = []   # "P" (Protocol) / "B" (BufferedProtocol), in order
        self.paused = False
        self.closed_by_us = None
        self.lost = chaos.loop.create_future()
        self.lost_count = 0
        self.lost_exc = None
        self.violations = Violations()
        self.log = []

    def new_protocol(self, buffered):
        self.kinds.append("B" if buffered else "P")
        return EchoBuffered(self) if buffered else EchoPlain(self)

    def made(self, transport):
        self.transport = transport
        self.peername = transport.get_extra_info("peername")
        self.chaos.server_made(self)

    def data(self, proto, data):
        kind = type(proto).__name__
        if self.closed_by_us:
            self.violations.add(f"server {kind}: data after {self.closed_by_us}", len(data))
            return
        if self.paused:
            self.violations.add(f"server {kind}: data while reading was paused", len(data))
        if self.lost_count:
            self.violations.add(f"server {kind}: data after connection_lost", len(data))
        self.recv.add(data)
        if not self.transport.is_closing():
            self.transport.write(data)
        self.chaos.in_callback(self, proto)

    def eof(self):
        return None  # close once everything is echoed

    def connection_lost(self, exc):
        self.lost_count += 1
        self.lost_exc = exc
        if not self.lost.done():
            self.lost.set_result(exc)

    def tag(self):
        return f"server side #{self.index} ({'>'.join(self.kinds)}, server {self.gen})"


class EchoPlain(asyncio.Protocol):
    def __init__(self, side):
        self.side = side

    def connection_made(self, transport):
        self.side.made(transport)

    def data_received(self, data):
        self.side.data(self, data)

    def eof_received(self):
        return self.side.eof()

    def connection_lost(self, exc):
        self.side.connection_lost(exc)


class EchoBuffered(asyncio.BufferedProtocol):
    """get_buffer hands out 1..4096 bytes, sometimes a bytearray, sometimes a
    memoryview into a larger one."""

    def __init__(self, side):
        self.side = side
        self.store = bytearray(8192)
        self.buf = None

    def connection_made(self, transport):
        self.side.made(transport)

    def get_buffer(self, sizehint):
        rng = self.side.rng
        n = rng.randint(1, 4096)
        if rng.random() < 0.5:
            self.buf = bytearray(n)
        else:
            off = rng.randint(0, len(self.store) - n)
            self.buf = memoryview(self.store)[off:off + n]
        return self.buf

    def buffer_updated(self, nbytes):
        if not 0 < nbytes <= len(self.buf):
            self.side.violations.add(f"buffer_updated({nbytes}) for a buffer of "
                                     f"{len(self.buf)} B")
        self.side.data(self, bytes(self.buf[:nbytes]))

    def eof_received(self):
        return self.side.eof()

    def connection_lost(self, exc):
        self.side.connection_lost(exc)


# -- chaos: the client side --------------------------------------------------------

class Conn:
    """One client connection: what it sent, what came back, and what chaos did."""

    def __init__(self, chaos, index):
        self.chaos = chaos
        self.index = index
        rng = random.Random(f"{chaos.seed}:conn:{index}")
        self.stream = ByteStream(f"{chaos.seed}:data:{index}",
                                 rng.randint(1, MAX_CONN_BYTES))
        self.pace = random.Random(f"{chaos.seed}:pace:{index}")
        self.window = rng.choice((4096, 32768, 131072))
        self.sent = Tally()
        self.echoed = Tally(keep=chaos.keep)
        self.transport = None
        self.sockname = None
        self.gen = None
        self.side = None
        self.cut = None        # what cut it short, if anything did
        self.closed_by_us = None
        self.log = []
        self.paused = False
        self.write_resumed = None
        self.lost = chaos.loop.create_future()
        self.lost_count = 0
        self.lost_exc = None
        self.error = None
        self.raced = None      # the server closed while this one was connecting
        self.refused = None    # ... and refused it: an allowed outcome then
        self.stranded = False  # ... or connected, never accepted: we gave up on it
        self.eof_sent = False
        self.violations = Violations()
        self._waiter = None
        self._want = 0

    def done(self):
        return self.lost_count > 0

    def can_write(self):
        return (self.cut is None and not self.lost_count and self.transport is not None
                and not self.transport.is_closing())

    def wake(self):
        w = self._waiter
        if w is not None and not w.done() and (
                self.echoed.n >= self._want or self.lost_count or self.cut):
            w.set_result(None)

    async def echo_reaches(self, n):
        """Wait until n bytes came back, the connection is lost or was cut."""
        self._want = n
        while self.echoed.n < n and not self.lost_count and not self.cut:
            self._waiter = self.chaos.loop.create_future()
            await self._waiter

    def tag(self):
        return f"conn #{self.index}"


class Client(asyncio.Protocol):
    def __init__(self, conn):
        self.conn = conn

    def connection_made(self, transport):
        self.conn.transport = transport

    def data_received(self, data):
        c = self.conn
        if c.paused:
            c.violations.add("client: data while reading was paused", len(data))
        if c.closed_by_us:
            c.violations.add(f"client: data after {c.closed_by_us}", len(data))
        if c.lost_count:
            c.violations.add("client: data after connection_lost", len(data))
        c.echoed.add(data)
        c.wake()

    def eof_received(self):
        return None

    def connection_lost(self, exc):
        c = self.conn
        c.lost_count += 1
        c.lost_exc = exc
        if not c.lost.done():
            c.lost.set_result(exc)
        c.chaos.client_lost(c)
        if c.write_resumed is not None and not c.write_resumed.done():
            c.write_resumed.set_result(None)
        c.wake()

    def pause_writing(self):
        self.conn.write_resumed = self.conn.chaos.loop.create_future()

    def resume_writing(self):
        if self.conn.write_resumed is not None and not self.conn.write_resumed.done():
            self.conn.write_resumed.set_result(None)


# -- chaos: the harness ------------------------------------------------------------

class Chaos:
    def __init__(self, loop, seed, actions):
        self.loop = loop
        self.seed = seed
        self.rng = random.Random(f"{seed}:chaos")
        self.keep = N_CONNS * MAX_CONN_BYTES // 2 <= KEEP_LIMIT
        self.timer_actions = [a for a in actions if a in TIMER_ACTIONS]
        self.timer_weights = [WEIGHTS[a] for a in self.timer_actions]
        self.cb_actions = [a for a in actions if a in CALLBACK_ACTIONS]
        self.cb_weights = [WEIGHTS[a] for a in self.cb_actions]
        self.conns = [Conn(self, i) for i in range(N_CONNS)]
        self.sides = []
        self.servers = []
        self.server = None
        self.addr = None
        self.gen = 0
        self.rotating = False
        self.gate = None             # resolved when a rotation has finished
        self.rotation_task = None
        self.cuts = 0
        self.raced_gens = set()      # servers closed while connects were in flight
        self.connecting = set()      # Conns whose create_connection has not returned
        self.unmatched = {}          # client sockname -> Conn without its server side yet
        self.unclaimed = {}          # server peername -> ServerSide without its client yet
        self._quiet = None
        self.next_index = 0
        self.finished = False
        self.stats = dict.fromkeys(actions, 0)
        self.orphans = 0
        self.stage = "start"
        self.settled = None
        self.errors = []
        self.tick_handle = None
        self.log = []

    def tag(self):
        return f"server {self.gen}"

    # servers

    def factory(self, gen):
        def make():
            side = ServerSide(self, len(self.sides), gen)
            self.sides.append(side)
            return side.new_protocol(buffered=side.rng.random() < 0.5)
        return make

    async def open_server(self):
        self.gen += 1
        srv = await self.loop.create_server(self.factory(self.gen), "127.0.0.1", 0,
                                            backlog=128)
        self.servers.append(srv)
        self.server = srv
        self.addr = srv.sockets[0].getsockname()

    def quiet(self):
        """No connect in flight to the current server, none unaccepted by it.
        Connections that raced an earlier server's close do not count: that server
        may have dropped them without closing them (asyncio does, see check())."""
        return (all(c.raced is not None for c in self.connecting)
                and all(c.raced is not None for c in self.unmatched.values()))

    def check_quiet(self):
        if self._quiet is not None and not self._quiet.done() and self.quiet():
            self._quiet.set_result(None)

    async def wait_quiet(self):
        while not self.quiet():
            self._quiet = self.loop.create_future()
            await self._quiet

    def begin_rotation(self):
        self.rotating = True
        self.gate = self.loop.create_future()

    async def finish_rotation(self, wait):
        try:
            if wait:
                await self.wait_quiet()
                self.server.close()
            await self.open_server()
        except Exception as exc:
            self.errors.append(f"rotation failed: {exc!r}")
            raise
        finally:
            self.rotating = False
            if not self.gate.done():
                self.gate.set_result(None)

    async def gate_open(self):
        while self.rotating:
            await self.gate

    def can_rotate(self, action):
        # The k-th rotation of each kind waits until k / (MAX_ROTATIONS + 1) of the
        # clients have started, so later clients meet later servers.
        done = self.stats[action]
        return (not self.rotating and not self.finished and done < MAX_ROTATIONS
                and self.next_index * (MAX_ROTATIONS + 1) >= len(self.conns) * (done + 1))

    # matching the two ends of a connection by address

    def server_made(self, side):
        conn = self.unmatched.pop(side.peername, None)
        if conn is None:
            self.unclaimed[side.peername] = side
        else:
            self.link(conn, side)
        self.check_quiet()

    def client_made(self, conn):
        side = self.unclaimed.pop(conn.sockname, None)
        if side is None:
            self.unmatched[conn.sockname] = conn
        else:
            self.link(conn, side)

    def stranded(self, conn):
        """Connected to a server that closed while it connected, and not accepted."""
        return conn.raced is not None and conn.side is None and conn.transport is not None

    def poke(self):
        """Resolve `settled` once every connection has finished except stranded ones
        (their server may never accept nor close them: nothing else would end them)."""
        fut = self.settled
        if fut is None or fut.done() or self.next_index < len(self.conns):
            return
        waiting = [c for c in self.conns if not (c.done() or c.refused or c.error)]
        if waiting and all(self.stranded(c) for c in waiting):
            fut.set_result(waiting)

    def client_lost(self, conn):
        # A connection reset by its closing server before it was accepted never
        # gets a server side.
        if self.unmatched.get(conn.sockname) is conn:
            del self.unmatched[conn.sockname]
            self.check_quiet()
        self.poke()

    def link(self, conn, side):
        conn.side = side
        side.conn = conn
        if side.gen != conn.gen:
            conn.violations.add(f"connected to server {conn.gen}, accepted by "
                                f"server {side.gen}")

    # clients

    async def worker(self):
        while self.next_index < len(self.conns):
            conn = self.conns[self.next_index]
            self.next_index += 1
            try:
                await self.client(conn)
            except Exception as exc:
                if conn.raced is not None and conn.transport is None and isinstance(
                        exc, (ConnectionRefusedError, ConnectionResetError)):
                    conn.refused = f"{type(exc).__name__}: {exc}"
                else:
                    conn.error = f"{type(exc).__name__}: {exc}"
                if conn.transport is not None:
                    conn.transport.abort()
                self.poke()

    async def client(self, conn):
        await self.gate_open()
        conn.gen = self.gen
        self.connecting.add(conn)
        try:
            tr, _ = await self.loop.create_connection(lambda: Client(conn), *self.addr)
        finally:
            self.connecting.discard(conn)
        conn.sockname = tr.get_extra_info("sockname")
        self.client_made(conn)
        self.check_quiet()
        self.poke()
        for chunk in conn.stream.chunks():
            if not conn.can_write():
                break
            tr.write(chunk)
            conn.sent.add(chunk)
            if conn.write_resumed is not None and not conn.write_resumed.done():
                await conn.write_resumed
            if conn.sent.n - conn.echoed.n > conn.window:
                await conn.echo_reaches(conn.sent.n - conn.window // 2)
            elif conn.pace.random() < 0.5:
                await asyncio.sleep(0)
        if conn.can_write():
            tr.write_eof()
            conn.eof_sent = True
        await conn.lost

    # chaos

    def note(self, action, target, detail=""):
        self.stats[action] += 1
        target.log.append(f"{action}{detail}")
        if TRACE_PATH:
            trace(f"  {action}{detail} on {target.tag()}")

    def live(self):
        return [c for c in self.conns if c.side is not None and not c.done()
                and c.cut is None]

    def tick(self):
        if self.finished:
            return
        try:
            if self.timer_actions:
                action = self.rng.choices(self.timer_actions, self.timer_weights)[0]
                self.timer_action(action)
        except Exception as exc:
            self.errors.append(f"timer action failed: {exc!r}")
        self.tick_handle = self.loop.call_later(self.rng.uniform(0, 2 * TICK), self.tick)

    def timer_action(self, action):
        if action == "rotate":
            if self.can_rotate(action):
                self.begin_rotation()
                self.note(action, self)
                self.rotation_task = self.loop.create_task(self.finish_rotation(wait=True))
            return
        live = self.live()
        if not live:
            return
        conn = self.rng.choice(live)
        side = conn.side
        if action == "pause":
            if self.rng.random() < 0.5:
                self.pause(conn, action)
            else:
                self.pause(side, action)
        elif action == "switch":
            if not side.lost_count:
                self.switch(side, action)
        elif action in ("abort", "close"):
            if self.cuts < MAX_CUTS:
                target = conn if self.rng.random() < 0.5 else side
                self.cut(conn, target, action)

    def in_callback(self, side, proto):
        if (not self.cb_actions or self.finished or side.lost_count
                or side.transport.is_closing() or self.rng.random() >= CALLBACK_CHANCE):
            return
        action = self.rng.choices(self.cb_actions, self.cb_weights)[0]
        if action == "pause_in_cb":
            self.pause(side, action)
        elif action == "switch_in_cb":
            self.switch(side, action)
        elif action in ("abort_in_cb", "close_in_cb"):
            conn = side.conn
            if (conn is not None and conn.cut is None and not conn.done()
                    and self.cuts < MAX_CUTS):
                self.cut(conn, side, action)
        elif action == "server_close_in_cb":
            # Not gated like rotate: connects may be in flight to this server. A
            # connection the server had not accepted yet is refused or reset; one it
            # had accepted carries on as any other.
            if self.can_rotate(action) and (self.connecting or self.rng.random() < 0.05):
                self.begin_rotation()
                racing = self.connecting | set(self.unmatched.values())
                for conn in racing:
                    conn.raced = self.gen
                self.raced_gens.add(self.gen)
                self.note(action, side, f" (server {self.gen}, {len(racing)} "
                          "connections racing it)")
                self.server.close()
                self.rotation_task = self.loop.create_task(self.finish_rotation(wait=False))

    def pause(self, who, action):
        """who is a Conn (client end) or a ServerSide."""
        tr = who.transport
        if who.paused or tr is None or tr.is_closing() or who.lost_count:
            return
        tr.pause_reading()
        who.paused = True
        self.note(action, who, " client" if isinstance(who, Conn) else " server")

        def resume():
            who.paused = False
            if not tr.is_closing() and not who.lost_count:
                tr.resume_reading()
        self.loop.call_later(self.rng.uniform(0, PAUSE_FOR), resume)

    def switch(self, side, action):
        buffered = side.kinds[-1] == "P"
        side.transport.set_protocol(side.new_protocol(buffered))
        self.note(action, side, " to " + side.kinds[-1])

    def cut(self, conn, target, action):
        how = "abort" if action.startswith("abort") else "close"
        end = "client" if target is conn else "server"
        self.cuts += 1
        conn.cut = f"{action} ({end} end)"
        target.closed_by_us = f"{how}()"
        self.note(action, conn, f" {end}")
        getattr(target.transport, how)()
        conn.wake()

    # the run

    async def main(self):
        await self.open_server()
        self.tick_handle = self.loop.call_later(self.rng.uniform(0, 2 * TICK), self.tick)
        self.stage = "clients"
        self.settled = self.loop.create_future()
        clients = asyncio.gather(*(self.worker() for _ in range(CONCURRENCY)))
        try:
            await asyncio.wait([clients, self.settled], return_when=asyncio.FIRST_COMPLETED)
            if not clients.done():
                self.stage = "stranded"
                for conn in self.settled.result():
                    conn.stranded = True
                    conn.transport.abort()
                await clients
        finally:
            self.finished = True
            self.tick_handle.cancel()
        self.stage = "last rotation"
        if self.rotation_task is not None:
            await self.rotation_task
        self.stage = "server sides lost"
        # A protocol whose connection_made never came has no connection to lose
        # (asyncio makes the protocol, then drops it, when server.close() overtakes
        # an accept).
        await asyncio.gather(*(side.lost for side in self.sides
                               if side.transport is not None))
        self.stage = "servers closed"
        self.server.close()
        for srv in self.servers:
            await srv.wait_closed()
        self.stage = "done"

    def cleanup(self):
        """After a failed run: abort what is left so the loop can close."""
        self.finished = True
        if self.tick_handle is not None:
            self.tick_handle.cancel()
        for c in self.conns:
            if c.transport is not None and not c.done():
                c.transport.abort()
        for s in self.sides:
            if s.transport is not None and not s.lost_count:
                s.transport.abort()
        for srv in self.servers:
            srv.close()

    # the verdict

    def check(self):
        problems = []
        others = [(c.tag(), c.stream) for c in self.conns]
        for c in self.conns:
            where = c.tag()
            if c.error:
                problems.append(f"{where}: {c.error}")
                continue
            if c.refused:
                continue  # refused by a server closing while it connected: allowed
            side = c.side
            if side is not None:
                where += f" [{'>'.join(side.kinds)}, server {side.gen}]"
            chaos = ", ".join(c.log + (side.log if side else [])) or "none"
            if c.lost_count != 1:
                problems.append(f"{where}: client connection_lost called "
                                f"{c.lost_count} times")
            for v in c.violations.lines() + (side.violations.lines() if side else []):
                problems.append(f"{where}: {v}")
            if side is None:
                # Only a connection that raced a server.close() may go unaccepted:
                # reset by the closing listener, it can have had no echo.
                if c.raced is None:
                    problems.append(f"{where}: its server side never got connection_made "
                                    f"(server {c.gen})")
                elif c.echoed.n:
                    problems.append(f"{where}: never accepted (its server {c.raced} was "
                                    f"closing) yet {c.echoed} came back")
                continue
            if side.lost_count != 1:
                problems.append(f"{where}: server connection_lost called "
                                f"{side.lost_count} times")
            for what, tally in (("echoed", c.echoed), ("server received", side.recv)):
                if c.cut is None:
                    ok = tally.n == c.sent.n and tally.digest() == c.sent.digest()
                    want = f"{c.sent}"
                else:
                    ok = (tally.n <= c.sent.n
                          and tally.digest() == c.stream.prefix_digest(tally.n))
                    want = f"a prefix of {c.sent} (cut: {c.cut})"
                if not ok:
                    detail = ""
                    if tally.data is not None:
                        detail = "; " + explain_mismatch(
                            what, c.stream, tally.data,
                            [o for o in others if o[0] != c.tag()])
                    problems.append(f"{where}: {what} {tally}, expected {want}{detail}; "
                                    f"chaos: {chaos}")
            if c.cut is None and c.lost_exc is not None:
                problems.append(f"{where}: connection_lost({c.lost_exc!r}) though nothing "
                                f"cut it; chaos: {chaos}")
        for s in self.sides:
            if s.conn is not None:
                continue
            # Only a server closed while connects were in flight may make a protocol
            # for a connection it then drops (asyncio does: Server._attach() asserts
            # the server is open) or accept one whose client was already reset.
            if s.gen in self.raced_gens and not s.recv.n and not s.lost_count:
                self.orphans += 1
                continue
            problems.append(f"{s.tag()} (peer {s.peername}, connection_made "
                            f"{'called' if s.transport else 'never called'}, "
                            f"{s.recv.n} B received) matches no client connection")
        problems.extend(self.errors)
        return problems

    def summary(self):
        intact = sum(1 for c in self.conns if c.cut is None and c.side is not None)
        raced = sum(1 for c in self.conns if c.raced is not None and c.side is None)
        stranded = sum(1 for c in self.conns if c.stranded)
        return (f"{len(self.conns)} connections ({intact} left alone, {raced} not "
                f"accepted by a closing server ({stranded} of them neither accepted nor "
                f"closed), {self.orphans} protocols it dropped), "
                f"{sum(c.sent.n for c in self.conns)} B sent, "
                f"{len(self.servers)} servers, actions: {self.stats}")

    def progress(self):
        """Where each unfinished connection stands (for a timeout report)."""
        out = []
        for c in self.conns:
            if c.refused or c.error or (
                    c.done() and (c.side is None or c.side.lost_count)):
                continue
            s = c.side
            out.append(
                f"{c.tag()}: sent {c.sent.n}/{c.stream.total} eof_sent={c.eof_sent} "
                f"echoed {c.echoed.n} lost={c.lost_count} cut={c.cut} raced={c.raced} "
                f"paused={c.paused} connected={c.transport is not None} server: "
                + (f"{'>'.join(s.kinds)} recv {s.recv.n} paused={s.paused} "
                   f"lost={s.lost_count} closing={s.transport.is_closing()}"
                   if s is not None else "none")
                + f" chaos: {', '.join(c.log[-8:])}")
        for s in self.sides:
            if s.conn is None and not s.lost_count:
                out.append(f"{s.tag()}: peer {s.peername} unmatched, recv {s.recv.n}, "
                           f"transport {s.transport!r}")
        out.append(f"connecting={len(self.connecting)} unmatched={len(self.unmatched)} "
                   f"rotating={self.rotating} next={self.next_index} stage={self.stage} "
                   f"rotation task={self.rotation_task}")
        return out


@pytest.mark.timeout(CHAOS_DEADLINE + 30)
def test_chaos_echo(loop, loop_name, capsys):
    chaos = Chaos(loop, SEED, ACTIONS)
    exceptions = collect_exceptions(loop)
    head = f"chaos on {loop_name}, {replay_hint()}"
    announce(capsys, head)
    print(head)
    try:
        run(loop, chaos.main(), timeout=CHAOS_DEADLINE)
    except asyncio.TimeoutError:
        state = "\n  ".join(chaos.progress()[:40])
        chaos.cleanup()
        run(loop, asyncio.sleep(0.1))
        pytest.fail(f"{head}: not done after {CHAOS_DEADLINE} s; {chaos.summary()}; "
                    f"unfinished:\n  {state}", pytrace=False)
    except BaseException:
        chaos.cleanup()
        run(loop, asyncio.sleep(0.1))
        raise
    problems = chaos.check() + [f"exception handler: {e}" for e in exceptions]
    print(chaos.summary())
    assert not problems, (f"{head}: {len(problems)} problems; {chaos.summary()}\n  "
                          + "\n  ".join(problems[:40]))


# -- soak --------------------------------------------------------------------------

def soak_share(i):
    """The bytes soak connection i sends: SOAK_BYTES split over SOAK_CONNS."""
    return SOAK_BYTES // SOAK_CONNS + (i < SOAK_BYTES % SOAK_CONNS)


def soak_size(rng):
    """1 B .. 256 KiB, log-uniform: as many small messages as large ones."""
    return min(SOAK_MAX_MESSAGE, int(2 ** rng.uniform(0, 18)))


class SoakStream:
    """A connection's outgoing messages: slices at random offsets of a seeded pool
    (making 1 GiB of fresh random bytes would cost more than moving them)."""

    def __init__(self, key, total):
        rng = random.Random(key + ":pool")
        self.pool = memoryview(rng.randbytes((1 << 20) + SOAK_MAX_MESSAGE))
        self.key = key
        self.total = total

    def messages(self):
        rng = random.Random(self.key)
        left = self.total
        while left > 0:
            n = min(left, soak_size(rng))
            off = rng.randrange(len(self.pool) - n)
            yield self.pool[off:off + n]
            left -= n


class SoakServerSide:
    def __init__(self, loop, rng, buffered):
        self.loop = loop
        self.rng = rng
        self.buffered = buffered
        self.transport = None
        self.recv = Tally()
        self.paused = False
        self.pauses = 0
        self.violations = Violations()
        self.lost = loop.create_future()

    def data(self, data):
        if self.paused:
            self.violations.add("data while reading was paused", len(data))
        self.recv.add(data)
        self.transport.write(data)
        if not self.paused and self.rng.random() < 1 / 32:
            self.transport.pause_reading()
            self.paused = True
            self.pauses += 1
            self.loop.call_later(self.rng.uniform(0, 0.002), self.resume)

    def resume(self):
        self.paused = False
        if not self.transport.is_closing():
            self.transport.resume_reading()


class SoakPlain(asyncio.Protocol):
    def __init__(self, side):
        self.side = side

    def connection_made(self, transport):
        self.side.transport = transport

    def data_received(self, data):
        self.side.data(data)

    def connection_lost(self, exc):
        self.side.lost.set_result(exc)


class SoakBuffered(asyncio.BufferedProtocol):
    def __init__(self, side):
        self.side = side
        self.store = bytearray(SOAK_MAX_MESSAGE)
        self.n = 0

    def connection_made(self, transport):
        self.side.transport = transport

    def get_buffer(self, sizehint):
        rng = self.side.rng
        self.n = (rng.randint(1, 4096) if rng.random() < 0.3
                  else rng.randint(16 << 10, SOAK_MAX_MESSAGE))
        return memoryview(self.store)[:self.n]

    def buffer_updated(self, nbytes):
        if not 0 < nbytes <= self.n:
            self.side.violations.add(f"buffer_updated({nbytes}) for a buffer of {self.n} B")
        self.side.data(bytes(self.store[:min(nbytes, self.n)]))

    def connection_lost(self, exc):
        self.side.lost.set_result(exc)


class SoakClient(asyncio.Protocol):
    def __init__(self, loop):
        self.loop = loop
        self.echoed = Tally()
        self.lost = loop.create_future()
        self.waiter = None
        self.want = 0
        self.write_resumed = None

    def data_received(self, data):
        self.echoed.add(data)
        w = self.waiter
        if w is not None and self.echoed.n >= self.want and not w.done():
            w.set_result(None)

    def connection_lost(self, exc):
        self.lost.set_result(exc)
        for w in (self.waiter, self.write_resumed):
            if w is not None and not w.done():
                w.set_result(None)

    def pause_writing(self):
        self.write_resumed = self.loop.create_future()

    def resume_writing(self):
        if self.write_resumed is not None and not self.write_resumed.done():
            self.write_resumed.set_result(None)

    async def echo_reaches(self, n):
        while self.echoed.n < n and not self.lost.done():
            self.want = n
            self.waiter = self.loop.create_future()
            await self.waiter


async def soak_protocol_client(loop, addr, stream):
    tr, pr = await loop.create_connection(lambda: SoakClient(loop), *addr)
    sent = Tally()
    for msg in stream.messages():
        if pr.lost.done():
            break
        tr.write(msg)
        sent.add(msg)
        if pr.write_resumed is not None and not pr.write_resumed.done():
            await pr.write_resumed
        if sent.n - pr.echoed.n > SOAK_WINDOW:
            await pr.echo_reaches(sent.n - SOAK_WINDOW // 2)
    if not pr.lost.done():
        tr.write_eof()
    exc = await pr.lost
    return sent, pr.echoed, exc


async def soak_stream_client(addr, stream):
    reader, writer = await asyncio.open_connection(*addr)
    sent, echoed = Tally(), Tally()

    async def send():
        for msg in stream.messages():
            writer.write(msg)
            sent.add(msg)
            await writer.drain()
        writer.write_eof()

    async def receive():
        while data := await reader.read(1 << 20):
            echoed.add(data)

    try:
        await asyncio.gather(send(), receive())
    finally:
        writer.close()
        await writer.wait_closed()
    return sent, echoed, None


@pytest.mark.timeout(SOAK_DEADLINE + 30)
@pytest.mark.parametrize("kind", ["protocol", "buffered", "streams"])
def test_soak_echo(loop, loop_name, kind, capsys):
    exceptions = collect_exceptions(loop)
    head = f"soak {kind} on {loop_name}, {SOAK_BYTES} B, {replay_hint(soak=True)}"
    announce(capsys, head)
    print(head)
    sides = []
    stream_servers = []

    def factory():
        rng = random.Random(f"{SEED}:soak-server:{kind}:{len(sides)}")
        side = SoakServerSide(loop, rng, kind == "buffered")
        sides.append(side)
        return SoakBuffered(side) if side.buffered else SoakPlain(side)

    async def handle(reader, writer):
        # The streams server: reads of random sizes, echo, drain; its transport's
        # reading is paused now and then (on top of StreamReader's own pausing).
        rng = random.Random(f"{SEED}:soak-server:{kind}:{len(stream_servers)}")
        stream_servers.append(Tally())
        recv = stream_servers[-1]
        tr = writer.transport

        def resume():
            if not tr.is_closing():
                tr.resume_reading()
        try:
            while data := await reader.read(rng.randint(1, SOAK_MAX_MESSAGE)):
                recv.add(data)
                writer.write(data)
                if rng.random() < 1 / 32:
                    tr.pause_reading()
                    loop.call_later(rng.uniform(0, 0.002), resume)
                await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()

    async def go():
        if kind == "streams":
            srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        else:
            srv = await loop.create_server(factory, "127.0.0.1", 0)
        addr = srv.sockets[0].getsockname()
        streams = [SoakStream(f"{SEED}:soak:{kind}:{i}", soak_share(i))
                   for i in range(SOAK_CONNS)]
        try:
            if kind == "streams":
                results = await asyncio.gather(*(soak_stream_client(addr, s)
                                                 for s in streams))
            else:
                results = await asyncio.gather(*(soak_protocol_client(loop, addr, s)
                                                 for s in streams))
                await asyncio.gather(*(side.lost for side in sides))
        finally:
            srv.close()
            await srv.wait_closed()
        return results

    results = run(loop, go(), timeout=SOAK_DEADLINE)
    problems = []
    for i, (sent, echoed, exc) in enumerate(results):
        if (sent.n != soak_share(i) or echoed.n != sent.n
                or echoed.digest() != sent.digest()):
            problems.append(f"connection {i}: sent {sent} (of {soak_share(i)}), "
                            f"echoed {echoed}")
        if exc is not None:
            problems.append(f"connection {i}: connection_lost({exc!r})")
    # The server sides, in accept order, must have received what the clients sent.
    server_recv = [s.recv for s in sides] if kind != "streams" else stream_servers
    got = sorted((t.n, t.digest()) for t in server_recv)
    want = sorted((sent.n, sent.digest()) for sent, _, _ in results)
    if got != want:
        problems.append(f"server sides received {got}, clients sent {want}")
    for i, side in enumerate(sides):
        problems.extend(f"server side {i}: {v}" for v in side.violations.lines())
    problems.extend(f"exception handler: {e}" for e in exceptions)
    assert not problems, f"{head}:\n  " + "\n  ".join(problems)


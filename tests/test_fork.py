"""fork() and the Go runtime (goloop only).

These tests are goloop-only because they are about goloop's own constraint: a Go
runtime cannot survive fork() (the child has no Go threads). `import goloop` must not
start it, so a process that forks before making its first loop has healthy children;
a child forked after the runtime started must refuse to make or run a goloop loop with
a RuntimeError that says why. Each scenario runs in a fresh interpreter so the test
process itself never forks with a live Go runtime.
"""

import os
import subprocess
import sys
import textwrap

import pytest

import loops


def _run_script(body, **env_overrides):
    env = dict(os.environ, **env_overrides)
    pkg_dir = os.path.dirname(os.path.dirname(loops.goloop.__file__))
    env["PYTHONPATH"] = pkg_dir + os.pathsep + env.get("PYTHONPATH", "")
    script = textwrap.dedent("""
        import asyncio, os, sys
        def child_exit(code):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        def wait_child(pid):
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)
        class Rec(asyncio.Protocol):
            # Keeps what arrives; made and lost are futures on the loop.
            def __init__(self, loop):
                self.data = b""
                self.made = loop.create_future()
                self.lost = loop.create_future()
            def connection_made(self, tr): self.made.set_result(tr)
            def data_received(self, data): self.data += data
            def connection_lost(self, exc): self.lost.set_result(exc)
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=60, cwd="/")


def test_fork_before_first_loop_gives_healthy_child(goloop):
    res = _run_script("""
        import goloop
        pid = os.fork()
        if pid == 0:
            try:
                loop = goloop.new_event_loop()
                r = loop.run_until_complete(asyncio.sleep(0.01, "child ok"))
                loop.close()
                print(r)
                child_exit(0)
            except BaseException as e:
                print("child failed:", repr(e))
                child_exit(1)
        code = wait_child(pid)
        # The parent, which never started the runtime before forking, works too.
        loop = goloop.new_event_loop()
        print(loop.run_until_complete(asyncio.sleep(0, "parent ok")))
        loop.close()
        sys.exit(code)
    """)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "child ok" in res.stdout and "parent ok" in res.stdout


def test_new_loop_in_child_after_runtime_started_raises(goloop):
    res = _run_script("""
        import goloop
        loop = goloop.new_event_loop()
        loop.run_until_complete(asyncio.sleep(0))
        pid = os.fork()
        if pid == 0:
            try:
                goloop.new_event_loop()
            except RuntimeError as e:
                print("RuntimeError:", e)
                child_exit(0)
            except BaseException as e:
                print("wrong exception:", repr(e))
                child_exit(2)
            print("no exception")
            child_exit(1)
        code = wait_child(pid)
        # The parent's loop is unaffected by the fork.
        print(loop.run_until_complete(asyncio.sleep(0, "parent ok")))
        loop.close()
        sys.exit(code)
    """)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "parent ok" in res.stdout
    message = res.stdout.split("RuntimeError:", 1)[1].lower()
    assert "fork" in message, res.stdout


def test_inherited_loop_in_child_refuses_to_run(goloop):
    res = _run_script("""
        import goloop
        loop = goloop.new_event_loop()
        loop.run_until_complete(asyncio.sleep(0))
        pid = os.fork()
        if pid == 0:
            coro = asyncio.sleep(0)
            try:
                loop.run_until_complete(coro)
            except RuntimeError as e:
                print("RuntimeError:", e)
                child_exit(0)
            except BaseException as e:
                print("wrong exception:", repr(e))
                child_exit(2)
            print("no exception")
            child_exit(1)
        code = wait_child(pid)
        loop.close()
        sys.exit(code)
    """)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "fork" in res.stdout.split("RuntimeError:", 1)[1].lower(), res.stdout


@pytest.mark.parametrize("backend", ["io_uring", "epoll"])
def test_child_tearing_down_inherited_loop_leaves_parent_intact(goloop, backend):
    # A child forked after the first loop that closes its inherited server and loop,
    # or just looks at them (repr), must not call into Go: under io_uring its
    # submission would land in the ring it shares with the parent, and the parent
    # then spun forever in its next close.
    res = _run_script("""
        import goloop, socket
        class Echo(asyncio.Protocol):
            def connection_made(self, tr): self.tr = tr
            def data_received(self, data): self.tr.write(data)
        loop = goloop.new_event_loop()
        server = loop.run_until_complete(loop.create_server(Echo, "127.0.0.1", 0))
        addr = server.sockets[0].getsockname()
        pid = os.fork()
        if pid == 0:
            try:
                repr(loop)
                server.close()
                loop.close()
            except BaseException as e:
                print("child:", repr(e))
            child_exit(0)
        code = wait_child(pid)
        async def check():
            r, w = await asyncio.open_connection(*addr)
            w.write(b"ping")
            data = await r.readexactly(4)
            w.close()
            await w.wait_closed()
            server.close()
            await server.wait_closed()
            return data
        print("parent:", loop.run_until_complete(asyncio.wait_for(check(), 10)))
        loop.close()
        print("parent closed")
        sys.exit(code)
    """, GOLOOP_BACKEND=backend)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "parent: b'ping'" in res.stdout and "parent closed" in res.stdout, res.stdout + res.stderr


def test_import_does_not_start_go_runtime(goloop):
    # Observable effect of a started Go runtime: extra OS threads. Importing goloop
    # must leave the interpreter single-threaded.
    res = _run_script("""
        import goloop
        print(len(os.listdir("/proc/self/task")))
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "1", res.stdout


@pytest.mark.parametrize("backend", ["io_uring", "epoll"])
def test_child_dropping_inherited_pipe_transports_leaves_parent_intact(goloop, backend):
    # Pipe transports hold a duplicate of the pipe's fd that Go owns. A child forked
    # with them open that closes them and the loop must not call into Go (its copy of
    # the io_uring ring is the parent's) and must close its own copies, not the
    # parent's: the parent then still moves bytes both ways and sees its EOFs.
    res = _run_script("""
        import gc, goloop
        loop = goloop.new_event_loop()
        Proto = lambda: Rec(loop)
        r1, w1 = os.pipe()   # the parent writes w1 (transport), reads r1 by hand
        r2, w2 = os.pipe()   # the parent reads r2 (transport), writes w2 by hand
        async def setup():
            wt, wp = await loop.connect_write_pipe(Proto, os.fdopen(w1, "wb", 0))
            rt, rp = await loop.connect_read_pipe(Proto, os.fdopen(r2, "rb", 0))
            return wt, wp, rt, rp
        wt, wp, rt, rp = loop.run_until_complete(setup())
        pid = os.fork()
        if pid == 0:
            try:
                repr(wt), repr(rt)
                wt.write(b"never sent")
                wt.close()
                rt.close()
                del wt, wp, rt, rp
                loop.close()
                gc.collect()
                os.close(r1)
                os.close(w2)
            except BaseException as e:
                print("child:", repr(e))
            child_exit(0)
        code = wait_child(pid)
        async def check():
            wt.write(b"to r1")
            got = os.read(r1, 100)
            os.write(w2, b"to r2")
            os.close(w2)
            assert await rp.lost is None, "read pipe"
            wt.close()
            assert await wp.lost is None, "write pipe"
            assert os.read(r1, 100) == b"", "EOF on r1"
            return got, rp.data
        print("parent:", loop.run_until_complete(asyncio.wait_for(check(), 10)))
        loop.close()
        print("parent closed")
        sys.exit(code)
    """, GOLOOP_BACKEND=backend)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "child:" not in res.stdout, res.stdout + res.stderr
    assert "parent: (b'to r1', b'to r2')" in res.stdout, res.stdout + res.stderr
    assert "parent closed" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("backend", ["io_uring", "epoll"])
@pytest.mark.parametrize("child_does", ["close transports", "close loop", "drop everything"])
def test_child_lets_go_of_inherited_connections(goloop, backend, child_does):
    # A server's accepted transports and create_connection's own transports have no
    # socket object until the program asks for one: their fds are bare. A child forked
    # with them open that closes them, or only closes the inherited loop, or drops it
    # all, must close its copies of those fds: while a copy lives, the parent's close
    # sends no FIN and the peer never sees EOF. The child stays alive while the parent
    # checks, as a worker process would.
    res = _run_script("""
        import gc, goloop
        loop = goloop.new_event_loop()
        Peer = lambda: Rec(loop)
        accepted = []
        def serve():
            p = Peer()
            accepted.append(p)
            return p
        async def setup():
            server = await loop.create_server(serve, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            conns = []
            for _ in range(2):
                c, cp = await loop.create_connection(Peer, "127.0.0.1", port)
                conns.append((c, cp))
            while len(accepted) < 2:
                await asyncio.sleep(0)
            servs = [(await p.made, p) for p in accepted]
            return server, conns, servs
        server, conns, servs = loop.run_until_complete(setup())
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                how = %r
                if how == "close transports":
                    for tr, _ in conns + servs:
                        tr.close()
                    loop.close()
                elif how == "close loop":
                    loop.close()
                else:
                    del conns[:], servs[:], accepted[:], server, loop
                gc.collect()
                os.write(ready_w, b"x")
                os.read(go_r, 1)  # alive until the parent has looked
            except BaseException as e:
                print("child:", repr(e))
            child_exit(0)
        assert os.read(ready_r, 1) == b"x"
        async def check():
            # conn 0: the parent closes its client end; its server end sees EOF.
            # conn 1: the parent closes its server end; its client end sees EOF.
            (c0, _), (c1, cp1) = conns
            (s0, sp0), (s1, _) = servs
            c0.close()
            s1.close()
            await asyncio.wait_for(sp0.lost, 10)
            await asyncio.wait_for(cp1.lost, 10)
            return "both ends saw EOF"
        try:
            print("parent:", loop.run_until_complete(check()))
        except asyncio.TimeoutError:
            print("parent: no EOF while the child lives")
        os.write(go_w, b"x")
        code = wait_child(pid)
        server.close()
        loop.close()
        sys.exit(code)
    """ % child_does, GOLOOP_BACKEND=backend)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "child:" not in res.stdout, res.stdout + res.stderr
    assert "parent: both ends saw EOF" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("backend", ["io_uring", "epoll"])
def test_child_takes_over_an_inherited_connection(goloop, backend):
    # The worker pattern: a child asks an accepted transport (no socket object yet)
    # for its socket, answers on a duplicate with blocking calls, and closes both.
    # The parent's client end gets the child's bytes, then EOF.
    res = _run_script("""
        import goloop
        loop = goloop.new_event_loop()
        serve = Rec(loop)
        async def setup():
            server = await loop.create_server(lambda: serve, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            c, cp = await loop.create_connection(lambda: Rec(loop), "127.0.0.1", port)
            return server, c, cp, await serve.made
        server, c, cp, s = loop.run_until_complete(setup())
        pid = os.fork()
        if pid == 0:
            try:
                own = s.get_extra_info("socket").dup()  # a transport's socket stays non-blocking
                own.setblocking(True)
                own.sendall(b"from the child")
                own.close()
                s.close()
            except BaseException as e:
                print("child:", repr(e))
            child_exit(0)
        code = wait_child(pid)
        s.close()  # the parent's copy
        async def check():
            await asyncio.wait_for(cp.lost, 10)
            return cp.data
        print("parent:", loop.run_until_complete(check()))
        c.close()
        server.close()
        loop.close()
        sys.exit(code)
    """, GOLOOP_BACKEND=backend)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "child:" not in res.stdout, res.stdout + res.stderr
    assert "parent: b'from the child'" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("backend", ["io_uring", "epoll"])
@pytest.mark.parametrize("child_does", ["close endpoint", "close loop", "drop everything"])
def test_child_lets_go_of_inherited_datagram_endpoints(goloop, backend, child_does):
    # An open datagram endpoint is always receiving, so Go's pin holds it; in a child
    # nothing will ever answer, and a child that closes it, closes the inherited loop or
    # drops both must release its copy of the fd: while the copy lives, the port stays
    # bound and the parent cannot bind it again after closing its endpoint.
    res = _run_script("""
        import gc, goloop, socket
        loop = goloop.new_event_loop()
        class Proto(asyncio.DatagramProtocol):
            def __init__(self): self.lost = loop.create_future()
            def connection_lost(self, exc): self.lost.set_result(exc)
        tr, proto = loop.run_until_complete(
            loop.create_datagram_endpoint(Proto, local_addr=("127.0.0.1", 0)))
        port = tr.get_extra_info("sockname")[1]
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                how = %r
                if how == "close endpoint":
                    tr.close()
                    loop.close()
                elif how == "close loop":
                    loop.close()
                else:
                    del tr, proto, loop
                gc.collect()
                os.write(ready_w, b"x")
                os.read(go_r, 1)
            except BaseException as e:
                print("child:", repr(e))
            child_exit(0)
        assert os.read(ready_r, 1) == b"x"
        tr.close()
        loop.run_until_complete(asyncio.wait_for(proto.lost, 10))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind(("127.0.0.1", port))
            print("parent: bound again")
        except OSError as e:
            print("parent:", e)
        s.close()
        os.write(go_w, b"x")
        code = wait_child(pid)
        loop.close()
        sys.exit(code)
    """ % child_does, GOLOOP_BACKEND=backend)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "child:" not in res.stdout, res.stdout + res.stderr
    assert "parent: bound again" in res.stdout, res.stdout + res.stderr

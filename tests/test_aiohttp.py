"""aiohttp, a target workload, end to end on each loop: a server with a dynamic
route and a static file, and aiohttp's own client against it."""
import os

import pytest

from bounded import run

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402


def test_aiohttp_server_and_client(loop, tmp_path):
    blob = os.urandom(300_000)
    (tmp_path / "blob.bin").write_bytes(blob)

    async def hello(request):
        return web.Response(text="Hello, World!")

    async def echo(request):
        return web.Response(body=await request.read())

    async def go():
        app = web.Application()
        app.router.add_get("/", hello)
        app.router.add_post("/echo", echo)
        # A static file: aiohttp tries loop.sendfile() and must get a working
        # answer or NotImplementedError, never a server error.
        app.router.add_get("/blob", lambda r: web.FileResponse(tmp_path / "blob.bin"))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(3):  # keep-alive: one connection, several requests
                    async with session.get(f"http://127.0.0.1:{port}/") as r:
                        assert r.status == 200
                        assert await r.text() == "Hello, World!"
                payload = os.urandom(200_000)
                async with session.post(f"http://127.0.0.1:{port}/echo", data=payload) as r:
                    assert await r.read() == payload
                async with session.get(f"http://127.0.0.1:{port}/blob") as r:
                    assert r.status == 200
                    assert await r.read() == blob
        finally:
            await runner.cleanup()

    run(loop, go(), timeout=30)

"""aiohttp "hello" server for the loop benchmark.

    python http_server.py --loop goloop|uvloop|asyncio --port N

One route, GET / -> "Hello, World!", no access log (logging would dominate and
measure the logging module, not the loop). Listens on 127.0.0.1 until killed.
"""

import argparse
import asyncio
import sys

from aiohttp import web

from loops import new_loop


async def hello(request):
    return web.Response(text="Hello, World!")


async def main(port):
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loop", required=True, choices=["goloop", "uvloop", "asyncio"])
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(sys.argv[1:])
    loop = new_loop(args.loop)
    asyncio.set_event_loop(loop)
    loop.run_until_complete(main(args.port))

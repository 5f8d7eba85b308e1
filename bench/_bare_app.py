"""The live-query benchmark's baseline, run as its own process: a bare aiohttp app whose one
handler answers both count routes with the same JSON shape as headcount's (the time formatted
the same way), and nothing else: no middleware, no actors, no topology. Served like
``headcount serve`` serves (an AppRunner without access log). Prints its URL, then runs until
terminated."""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import web

from headcount.clock import now_ms
from headcount.domain.timefmt import format_ms


async def count(request: web.Request) -> web.Response:
    body: dict[str, object] = {
        "space_id": request.match_info["space_id"],
        "ts": format_ms(now_ms()),
    }
    if request.path.startswith("/spaces/"):
        body |= {"count": 7, "entrances": 12, "exits": 5}
    else:
        body["count"] = 7
    return web.json_response(body)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.add_routes(
        [web.get("/spaces/{space_id}/count", count), web.get("/space/{space_id}/count", count)]
    )
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"http://127.0.0.1:{args.port}", flush=True)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())

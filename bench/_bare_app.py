"""The live-query benchmark's limit, run as its own process: a bare aiohttp app whose handlers
answer headcount's live routes (``/spaces/{id}/count``, the seed's ``/space/{id}/count`` and
``/spaces``) with the same JSON shapes (the time formatted the same way), and nothing else: no
middleware, no token check, no actors, no topology. Served like ``headcount serve`` serves (an
AppRunner without access log). Prints its URL, then runs until terminated."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable

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


def spaces_handler(spaces: int) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``/spaces`` for ``spaces`` spaces named as bench/_harness.topology_toml names them."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "spaces": [
                    {
                        "id": f"S{s}",
                        "name": f"Space {s}",
                        "parent": None,
                        "capacity": None,
                        "count": 7,
                    }
                    for s in range(spaces)
                ]
            }
        )

    return handler


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--spaces", type=int, default=10, help="spaces /spaces lists")
    args = parser.parse_args()
    app = web.Application()
    app.add_routes(
        [
            web.get("/spaces/{space_id}/count", count),
            web.get("/space/{space_id}/count", count),
            web.get("/spaces", spaces_handler(args.spaces)),
        ]
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

"""A webhook receiver for tests: an aiohttp server on a free port that answers 500 to the
first ``fail`` requests, then 200, and keeps every request it got."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from headcount.ingest.broker import free_port

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Request:
    body: bytes
    headers: dict[str, str]
    status: int


@dataclass
class Receiver:
    fail: int = 0
    requests: list[Request] = field(default_factory=list)
    url: str = ""

    @property
    def accepted(self) -> list[Request]:
        return [r for r in self.requests if r.status == 200]

    async def handle(self, request: web.Request) -> web.Response:
        status = 500 if len(self.requests) < self.fail else 200
        self.requests.append(Request(await request.read(), dict(request.headers), status))
        return web.Response(status=status, text="no" if status == 500 else "ok")


@asynccontextmanager
async def receiving(fail: int = 0) -> AsyncIterator[Receiver]:
    receiver = Receiver(fail=fail)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port(HOST)
    await web.TCPSite(runner, HOST, port).start()
    receiver.url = f"http://{HOST}:{port}/hook"
    try:
        yield receiver
    finally:
        await runner.cleanup()

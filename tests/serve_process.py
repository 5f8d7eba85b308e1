"""``headcount serve`` as a subprocess for end-to-end tests: its own store and HTTP port, a
broker by URL, a log file to show when something goes wrong."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp

from headcount.ingest.broker import free_port


async def wait_healthy(
    url: str, process: asyncio.subprocess.Process, *, timeout_s: float = 30
) -> bool:
    """Wait until the service at ``url`` says it is healthy (True), or its process ended or
    the time ran out (False)."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline and process.returncode is None:
            try:
                async with http.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return True
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    return False


async def stop_serving(process: asyncio.subprocess.Process) -> str:
    """Stop a service started with ``stderr=PIPE`` as a person would (SIGTERM, unless it has
    already ended) and return its log; fails with the log unless it ended with status 0."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    assert process.stderr is not None
    log = (await process.stderr.read()).decode()
    assert await process.wait() == 0, log
    return log


class ServeProcess:
    """``headcount serve --topology TOPOLOGY`` on ``broker_url``, with a SQLite store in ``tmp``
    or the store at ``store_url``."""

    def __init__(
        self,
        tmp: Path,
        topology: Path,
        broker_url: str,
        client_id: str,
        *,
        store_url: str | None = None,
    ) -> None:
        self.http = f"http://127.0.0.1:{free_port()}"
        self.store_url = store_url or f"sqlite+aiosqlite:///{tmp / 'store.db'}"
        self.args = [
            sys.executable, "-m", "headcount", "serve",
            "--topology", str(topology),
            "--store", self.store_url,
            "--broker", broker_url,
            "--client-id", client_id,
            "--http-port", self.http.rsplit(":", 1)[1],
        ]  # fmt: skip
        self.log = tmp / "service.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.args, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
        if not await wait_healthy(self.http, self.process):
            await self.stop()
            raise AssertionError(f"service did not start:\n{self.log.read_text()}")

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), 30)

    async def get(self, path: str) -> tuple[int, object]:
        """``GET path``: the status and the body (parsed when it is JSON)."""
        async with aiohttp.ClientSession() as http, http.get(self.http + path) as response:
            body = await response.text()
            if response.content_type == "application/json":
                return response.status, json.loads(body)
            return response.status, body

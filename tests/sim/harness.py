"""``headcount serve`` in a subprocess on free ports, and ``headcount simulate`` in-process, for
the simulator's end-to-end tests."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from headcount.cli import build_parser
from headcount.domain.timefmt import format_ms
from headcount.ingest import wire
from headcount.ingest.mqtt import parse_broker_url
from tests.serve_process import ServeProcess


def dpu_url(broker_url: str) -> str:
    """The broker as DPUs reach it: anonymously, like real ones (amqtt would also check the
    service's password with Argon2 on every connection, on the test's own event loop)."""
    address = parse_broker_url(broker_url)
    return f"mqtt://{address.host}:{address.port}"


async def forget_status(broker_url: str, dpu_ids: Iterable[str]) -> None:
    """Clear the retained status of these DPUs: the Mosquitto is shared across runs."""
    address = parse_broker_url(broker_url)
    async with aiomqtt.Client(
        address.host, address.port, username=address.username, password=address.password
    ) as client:
        for dpu_id in dpu_ids:
            await client.publish(wire.status_topic(dpu_id), b"", qos=1, retain=True)


@dataclass(frozen=True)
class Simulated:
    """What ``headcount simulate`` returned and printed."""

    code: int
    summary: dict[str, Any]
    err: str


def parse(*argv: str | Path) -> argparse.Namespace:
    """``headcount simulate ARGV``'s arguments, parsed by ``headcount``'s own parser."""
    return build_parser().parse_args(["simulate", *(str(arg) for arg in argv)])


async def simulate(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> Simulated:
    """``headcount simulate ARGV`` in this process and event loop."""
    args = parse(*argv)
    capsys.readouterr()
    code = await args.handler(args)
    out, err = capsys.readouterr()
    return Simulated(code, json.loads(out), err)


class Service(ServeProcess):
    """``headcount serve`` on a topology file, entered as a context, with one HTTP session
    for the many counts a simulated day is checked with."""

    def __init__(self, tmp: Path, topology: Path, broker_url: str, client_id: str) -> None:
        super().__init__(tmp, topology, broker_url, client_id)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Service:
        await self.start()
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()
        await self.stop()

    async def count(self, space_id: str, ts: str | None = None) -> int:
        """``GET /spaces/{id}/count[?ts=]``'s count."""
        assert self._session is not None
        query = "" if ts is None else f"?ts={ts}"
        async with self._session.get(f"{self.http}/spaces/{space_id}/count{query}") as response:
            body = await response.json()
            assert response.status == 200, body
            count: int = body["count"]
            return count

    async def settle_deliveries(
        self, expected: dict[str, dict[str, int]], timeout: float = 30.0
    ) -> None:
        """Wait until ``GET /dpus`` shows each DPU's delivery report as ``expected`` (its
        ``sent``, ``stored`` and ``missing``): the final statuses have been compared."""
        assert self._session is not None
        found: dict[str, object] = {}
        try:
            async with asyncio.timeout(timeout):
                while found != expected:
                    async with self._session.get(f"{self.http}/dpus") as response:
                        body = await response.json()
                    found = {
                        d["id"]: d["delivery"] and {k: d["delivery"][k] for k in expected[d["id"]]}
                        for d in body["dpus"]
                        if d["id"] in expected
                    }
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(f"deliveries {found}, expected {expected}") from None

    async def settle(
        self, expected: dict[str, int], at: int | None = None, timeout: float = 30.0
    ) -> None:
        """Wait until the counts are ``expected`` (ingest has caught up): the live counts, or
        with ``at`` (ms) the counts at that moment."""
        ts = None if at is None else format_ms(at)
        counts: dict[str, int] = {}
        try:
            async with asyncio.timeout(timeout):
                while counts != expected:
                    counts = {space_id: await self.count(space_id, ts) for space_id in expected}
                    await asyncio.sleep(0.1)
        except TimeoutError:
            when = "live" if ts is None else f"at {ts}"
            raise AssertionError(
                f"counts {when} {counts}, expected {expected}\n{self.log.read_text()[-5000:]}"
            ) from None

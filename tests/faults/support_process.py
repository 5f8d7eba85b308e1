"""What the process-fault tests share: a small building and its events (planned by the
simulator's planner), a QoS 1 publisher that sends them again until the broker acknowledges
them, the project's Mosquitto settings, and the tally of a run: events sent, events in the
store, lost, doubled, and the live and historical answers against the reference fold.

A fault test starts every server it breaks (``tests/servers.py``), injects the fault many
times while the publisher sends, stops the publisher, then counts. Every event the broker
acknowledged must end in the store exactly once and in every answer, whatever was killed.

``HEADCOUNT_FAULTS_SCALE`` (default 1) multiplies the events sent and the faults injected, for
a longer run by hand, without the suite's per-test timeout:
``HEADCOUNT_FAULTS_SCALE=5 .venv/bin/python -m pytest tests/faults --timeout 0 -s`` (``-s``
shows each test's figures).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import aiomqtt
from sqlalchemy import func, select

from headcount.domain.events import Traversal
from headcount.domain.timefmt import format_ms, parse_iso
from headcount.domain.topology import Topology
from headcount.eventstore.engine import read_transaction
from headcount.eventstore.schema import traversals
from headcount.eventstore.store import EventStore
from headcount.ingest import wire
from headcount.ingest.mqtt import Backoff, parse_broker_url
from tests.serve_process import ServeProcess
from tests.sim.reference import HOUR, MINUTE, expected_counts, plan_run

STORED = "headcount_events_ingested_total"
RECEIVED = "headcount_mqtt_messages_total"
ROOT = Path(__file__).resolve().parents[2]
SCALE_ENV = "HEADCOUNT_FAULTS_SCALE"
#: A fixed simulated morning: the answers never depend on today's date.
START = "2024-03-05T08:00:00Z"
SEED = 20261130

#: A building with a lobby, an office and a meeting room, four DPUs, no daily reset (so the
#: live counts after the run are the fold of everything sent, whatever the date).
TOPOLOGY = """
[[spaces]]
id = "HQ"
name = "Headquarters"

[[spaces]]
id = "L"
name = "Lobby"
parent = "HQ"

[[spaces]]
id = "O"
name = "Office"
parent = "HQ"

[[spaces]]
id = "M"
name = "Meeting room"
parent = "HQ"

[[doorways]]
id = "front"
name = "Front door"
links = [{ space = "HQ", sensor_placement = 1 }, { space = "L", sensor_placement = 1 }]

[[doorways]]
id = "side"
name = "Side door"
links = [{ space = "HQ", sensor_placement = 1 }, { space = "O", sensor_placement = 1 }]

[[doorways]]
id = "office"
name = "Office door"
links = [{ space = "O", sensor_placement = 1 }, { space = "L", sensor_placement = -1 }]

[[doorways]]
id = "meeting"
name = "Meeting room door"
links = [{ space = "M", sensor_placement = 1 }, { space = "L", sensor_placement = -1 }]
""" + "".join(
    f'\n[[assignments]]\ndpu = "dpu-{d}"\ndoorway = "{d}"\nvalid_from = "2020-01-01T00:00:00Z"\n'
    for d in ("front", "side", "office", "meeting")
)

TOPOLOGY_SPACES = ("HQ", "L", "O", "M")


def scale() -> int:
    """How many times the default size to run (``HEADCOUNT_FAULTS_SCALE``, default 1)."""
    text = os.environ.get(SCALE_ENV, "1")
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{SCALE_ENV}={text!r}: give a whole number of at least 1") from None
    if value < 1:
        raise ValueError(f"{SCALE_ENV}={text!r}: give a whole number of at least 1")
    return value


def mosquitto_config() -> str:
    """The project's ``broker_config/mosquitto.conf`` (persistence on, queues sized for an
    outage of the service), for a Mosquitto a test starts."""
    return (ROOT / "broker_config" / "mosquitto.conf").read_text(encoding="utf-8")


def write_topology(tmp: Path) -> Path:
    path = tmp / "topology.toml"
    path.write_text(TOPOLOGY, encoding="utf-8")
    return path


class Publisher:
    """A DPU gateway publishing ``events`` in order, one message each at QoS 1 (every
    ``batch_every``-th message an array of the next few events), about ``rate`` messages a
    second, over a persistent session (``clean_session=False`` under ``client_id``).

    An event is *sent* once the broker acknowledged its message; a publish that fails or is
    not acknowledged within ``timeout`` is sent again over a new connection, so after
    :meth:`run` every event of :attr:`sent` was accepted by the broker at least once (QoS 1:
    maybe twice). :meth:`run` ends when ``stop`` is set (after the publish in progress is
    acknowledged) or when every event is sent."""

    def __init__(
        self,
        broker_url: str,
        events: Sequence[Traversal],
        *,
        rate: float,
        client_id: str = "faults-gateway",
        batch_every: int = 25,
        timeout: float = 2.0,
    ) -> None:
        self.address = parse_broker_url(broker_url)
        self.events = list(events)
        self.rate = rate
        self.client_id = client_id
        self.batch_every = batch_every
        self.timeout = timeout
        self.sent: list[Traversal] = []
        self.reconnections = 0
        self.republished = 0

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(initial=0.05, maximum=0.5).delays()
        while len(self.sent) < len(self.events) and not stop.is_set():
            try:
                await self._connected(stop)
            except (aiomqtt.MqttError, TimeoutError):
                self.reconnections += 1
                await asyncio.sleep(next(backoff))

    async def _connected(self, stop: asyncio.Event) -> None:
        async with aiomqtt.Client(
            self.address.host,
            self.address.port,
            identifier=self.client_id,
            clean_session=False,
            timeout=self.timeout,
        ) as client:
            message = 0
            while len(self.sent) < len(self.events) and not stop.is_set():
                chunk = self._next_chunk(batch=message % self.batch_every == self.batch_every - 1)
                payload = wire.encode(chunk if len(chunk) > 1 else chunk[0])
                try:
                    await client.publish(
                        wire.traversals_topic(chunk[0].dpu_id),
                        payload,
                        qos=1,
                        timeout=self.timeout,
                    )
                except (aiomqtt.MqttError, TimeoutError):
                    self.republished += len(chunk)
                    raise
                self.sent.extend(chunk)
                message += 1
                await asyncio.sleep(1 / self.rate)

    async def report(self) -> None:
        """Publish each DPU's delivery report (retained status): the distinct traversals the
        broker acknowledged, as DPU firmware reports them."""
        by_dpu: dict[str, list[int]] = {}
        for t in self.sent:
            by_dpu.setdefault(t.dpu_id, []).append(t.seq)
        async with aiomqtt.Client(self.address.host, self.address.port) as client:
            for dpu_id, seqs in sorted(by_dpu.items()):
                report = wire.Report(sent=len(set(seqs)), first=min(seqs), seq=max(seqs))
                await client.publish(
                    wire.status_topic(dpu_id),
                    wire.encode_status(True, report),
                    qos=1,
                    retain=True,
                )

    def _next_chunk(self, *, batch: bool) -> list[Traversal]:
        """The next event, or with ``batch`` up to five next events of the same DPU (an array
        is one DPU's backlog)."""
        first = self.events[len(self.sent)]
        chunk = [first]
        for event in self.events[len(self.sent) + 1 : len(self.sent) + 5 if batch else 0]:
            if event.dpu_id != first.dpu_id:
                break
            chunk.append(event)
        return chunk


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 30.0, what: str = "the condition"
) -> None:
    """Return once ``await check()`` holds (polled); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(0.02)


async def metric(service: ServeProcess, name: str) -> float:
    """The value of an unlabelled metric of the running service (0 when not yet there)."""
    async with aiohttp.ClientSession() as http, http.get(f"{service.http}/metrics") as response:
        text = await response.text()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def stores_more(service: ServeProcess, than: float, *, timeout: float = 30.0) -> float:
    """Wait until the service has stored more than ``than`` new traversals since it started
    (``headcount_events_ingested_total``); that number."""
    stored = than

    async def more() -> bool:
        nonlocal stored
        stored = await metric(service, STORED)
        return stored > than

    await wait_until(more, timeout=timeout, what=f"the service storing more than {than:g} events")
    return stored


def plan_events(people: int) -> list[Traversal]:
    """The events ``people`` produce walking around the building for eight simulated hours
    from :data:`START`, in the order the DPUs would send them (the simulator's own planner,
    no faults)."""
    run = plan_run(TOPOLOGY, people=people, seed=SEED, start=parse_iso(START), duration=8 * HOUR)
    return [send.traversal for send in run.schedule.sends]


@dataclass(frozen=True)
class Tally:
    """A fault test's figures."""

    what: str
    faults: int
    sent: int
    stored: int
    lost: int
    doubled: int
    #: Answers (live and historical) that differ from the reference fold, as text.
    wrong: tuple[str, ...] = ()

    def __str__(self) -> str:
        return (
            f"{self.what}: faults injected {self.faults}, events sent {self.sent},"
            f" stored {self.stored}, lost {self.lost}, doubled {self.doubled},"
            f" wrong answers {len(self.wrong)}" + "".join(f"\n  {w}" for w in self.wrong[:20])
        )

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.doubled == 0 and not self.wrong


async def missing_reported(service: ServeProcess, dpu_ids: Iterable[str]) -> dict[str, int]:
    """What the service says is missing of each DPU's reported deliveries (``/dpus/{id}``)."""
    found = {}
    async with aiohttp.ClientSession() as http:
        for dpu_id in dpu_ids:
            async with http.get(f"{service.http}/dpus/{dpu_id}") as response:
                delivery = (await response.json())["delivery"]
            found[dpu_id] = -1 if delivery is None else delivery["missing"]
    return found


async def stored_keys(store_url: str) -> Counter[tuple[str, int]]:
    """How many rows the store holds for each (dpu_id, seq)."""
    query = select(traversals.c.dpu_id, traversals.c.seq, func.count()).group_by(
        traversals.c.dpu_id, traversals.c.seq
    )
    async with await EventStore.open(store_url) as store, read_transaction(store.engine) as conn:
        return Counter({(r[0], r[1]): r[2] for r in await conn.execute(query)})


async def count(
    http: aiohttp.ClientSession, service: ServeProcess, space: str, ts: str = ""
) -> int:
    query = f"?ts={ts}" if ts else ""
    async with http.get(f"{service.http}/spaces/{space}/count{query}") as response:
        body = await response.json()
        assert response.status == 200, body
        value: int = body["count"]
        return value


async def settle_live(
    service: ServeProcess, expected: dict[str, int], *, timeout: float = 60
) -> dict[str, int]:
    """Wait until the live counts are ``expected`` (ingest caught up) or ``timeout`` passes;
    the last counts seen."""
    deadline = time.monotonic() + timeout
    got: dict[str, int] = {}
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            got = {space: await count(http, service, space) for space in expected}
            if got == expected:
                break
            await asyncio.sleep(0.2)
    return got


async def tally(
    what: str,
    faults: int,
    service: ServeProcess,
    store_url: str,
    sent: list[Traversal],
) -> Tally:
    """Count a run once the simulator ended: wait for the live counts to reach the reference
    fold of ``sent``, then compare the store and historical answers (every 30 simulated
    minutes) with it."""
    topology = Topology.from_toml(TOPOLOGY)
    spaces = sorted(topology.spaces)
    start = parse_iso(START)
    end = max(t.ts for t in sent)
    expected = {s: expected_counts(topology, sent, s, [end])[0] for s in spaces}
    wrong: list[str] = []
    live = await settle_live(service, expected)
    wrong += [f"live {s}: {live.get(s)} != {n}" for s, n in expected.items() if live.get(s) != n]
    times = [*range(start + 30 * MINUTE, end, 30 * MINUTE), end]
    async with aiohttp.ClientSession() as http:
        for space in spaces:
            for at, n in zip(times, expected_counts(topology, sent, space, times), strict=True):
                got = await count(http, service, space, format_ms(at))
                if got != n:
                    wrong.append(f"{space} at {format_ms(at)}: {got} != {n}")
    rows = await stored_keys(store_url)
    keys = {t.key for t in sent}
    return Tally(
        what=what,
        faults=faults,
        sent=len(keys),
        stored=sum(1 for k in rows if k in keys),
        lost=len(keys - rows.keys()),
        doubled=sum(n - 1 for n in rows.values()),
        wrong=tuple(wrong + [f"stored but never sent: {k}" for k in sorted(rows.keys() - keys)]),
    )

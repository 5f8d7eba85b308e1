"""Outputs: what MQTT out (with Home Assistant discovery), capacity alerts and a webhook whose
receiver always fails cost the counting, against the same counting without them, in one run.

    python bench/outputs.py [--quick] [--events N] [--rounds N]

One process, as in ``headcount serve``: the actors of 100 spaces (capacity 100, alert at 0.9)
over a SQLite store, a private broker (Mosquitto when installed, else amqtt) in a process of
its own, and a local receiver that answers 500 to every webhook POST. Each round stores N new
traversals (people walking in and out around each space's alert level, so alerts fire often),
then times handing them to the actors in batches of 1,000 (giving up the loop after each, as
ingest does at each commit) until every mailbox is drained. Each round runs three ways in
turn: without outputs (the limit); with a consumer of the change feed that does nothing (what
the feed itself costs the actors: they build a change per event only while someone listens);
and with the outputs attached to the feed (after which the publisher is let finish before the
next round). The figure is the events
folded per second with outputs; the ratios are that over the limit's and over the bare
feed's, the median of the rounds (min, max); goal: at least 0.9 of the bare feed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from _harness import free_port
from _service import private_broker
from aiohttp import web

from headcount.actors import ActorSystem
from headcount.clock import now_ms
from headcount.domain.events import Direction, Traversal
from headcount.domain.topology import Topology
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.ingest.mqtt import parse_broker_url
from headcount.metrics import Metrics
from headcount.outputs.config import Webhook
from headcount.outputs.follow import SUBSCRIPTION_SIZE, Outputs
from headcount.outputs.mqtt import MqttOut
from headcount.outputs.webhooks import Retry, Webhooks

SPACES = 100
CAPACITY = 100
BATCH = 1000


def topology() -> Topology:
    parts = []
    for s in range(SPACES):
        parts.append(
            f'[[spaces]]\nid = "S{s}"\nname = "Space {s}"\ncapacity = {CAPACITY}\n'
            f'alert_at = 0.9\n[[doorways]]\nid = "D{s}"\nname = "Door {s}"\n'
            f'links = [{{ space = "S{s}", sensor_placement = 1 }}]\n'
            f'[[assignments]]\ndpu = "dpu{s}"\ndoorway = "D{s}"\n'
            'valid_from = "2000-01-01T00:00:00Z"\n'
        )
    return Topology.from_toml("\n".join(parts))


class Walk:
    """People in and out of each space, the count wandering around the alert level."""

    def __init__(self, start_ms: int) -> None:
        self.rng = random.Random(5)
        self.count = [0] * SPACES
        self.seq = [0] * SPACES
        self.ts = start_ms

    def events(self, n: int) -> list[Traversal]:
        out = []
        for _ in range(n):
            s = self.rng.randrange(SPACES)
            low, high = CAPACITY - 20, CAPACITY - 5  # the alert at 90, cleared at 85
            c = self.count[s]
            up = c < low or (c <= high and self.rng.random() < 0.5)
            direction: Direction = 1 if up else -1
            self.count[s] = max(0, c + direction)
            self.seq[s] += 1
            self.ts += 1
            out.append(Traversal(f"dpu{s}", self.seq[s], self.ts, direction))
        return out


@contextlib.asynccontextmanager
async def failing_receiver() -> AsyncIterator[str]:
    async def refuse(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/hook", refuse)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


async def fold_round(system: ActorSystem, store: EventStore, walk: Walk, n: int) -> float:
    """Store ``n`` new traversals, then time the actors folding them; events per second."""
    traversals = walk.events(n)
    stored: list[Traversal] = []
    for start in range(0, n, 5000):
        stored.extend((await store.log.append(traversals[start : start + 5000])).new)
    started = time.perf_counter()
    for start in range(0, n, BATCH):
        await system.route(stored[start : start + BATCH])
        await asyncio.sleep(0)  # ingest gives up the loop at each commit: the actors fold
    await system.drain()
    return n / (time.perf_counter() - started)


async def with_bare_feed(system: ActorSystem, store: EventStore, walk: Walk, n: int) -> float:
    """:func:`fold_round` with a subscriber to the change feed that only reads."""
    subscription = system.changes.subscribe(maxsize=SUBSCRIPTION_SIZE)  # as the outputs

    async def read() -> None:
        async for _ in subscription:
            pass

    reader = asyncio.create_task(read())
    try:
        return await fold_round(system, store, walk, n)
    finally:
        subscription.close()
        await reader


async def run(events: int, rounds: int, workdir: Path) -> None:
    start = now_ms() - 86_400_000  # a day ago: every event is in the past, in time order
    walk = Walk(start)
    metrics = Metrics()
    async with (
        private_broker(workdir) as broker_url,
        failing_receiver() as hook_url,
        await EventStore.open(f"sqlite+aiosqlite:///{workdir / 'bench.db'}") as store,
    ):
        system = ActorSystem(History(store, topology()), clock=lambda: walk.ts)
        async with system.running():
            await fold_round(system, store, walk, min(events, 5000))  # warm-up
            limit: list[float] = []
            feed: list[float] = []
            figure: list[float] = []
            for _ in range(rounds):
                limit.append(await fold_round(system, store, walk, events))
                feed.append(await with_bare_feed(system, store, walk, events))
                mqtt = MqttOut(
                    parse_broker_url(broker_url),
                    system.topology,
                    client_id=f"bench-out-{free_port()}",
                    homeassistant=True,
                )
                webhooks = Webhooks(
                    [Webhook("failing", hook_url, None, "bench-secret-0123456789")],
                    metrics=metrics,
                    retry=Retry(attempts=3),
                )
                outputs = Outputs(
                    system, system.changes, metrics=metrics, mqtt=mqtt, webhooks=webhooks
                )
                task = asyncio.create_task(outputs.run())
                await asyncio.wait_for(mqtt.connected.wait(), 30)
                figure.append(await fold_round(system, store, walk, events))
                await asyncio.sleep(1.5)  # the throttled last states go out
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    ratios = [f / lim for f, lim in zip(figure, limit, strict=True)]
    feed_ratios = [f / b for f, b in zip(figure, feed, strict=True)]

    def sample(name: str, **labels: str) -> float:
        values = [
            s.value
            for m in metrics.registry.collect()
            for s in m.samples
            if s.name == f"headcount_{name}_total"
            and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        return sum(values)

    print(f"python bench/outputs.py --events {events} --rounds {rounds}")
    broker = "mosquitto" if shutil.which("mosquitto") else "amqtt"
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores,"
        f" {platform.python_implementation()} {platform.python_version()}, broker {broker}"
    )
    print(f"limit (no outputs):        {statistics.median(limit):10,.0f} events/s folded")
    print(f"bare change feed:          {statistics.median(feed):10,.0f} events/s folded")
    print(f"with outputs:              {statistics.median(figure):10,.0f} events/s folded")
    print(
        f"ratio to the limit:        {statistics.median(ratios):.2f}"
        f" (min {min(ratios):.2f}, max {max(ratios):.2f})"
    )
    print(
        f"ratio to the bare feed:    {statistics.median(feed_ratios):.2f}"
        f" (min {min(feed_ratios):.2f}, max {max(feed_ratios):.2f}; goal >= 0.9)"
    )
    print(
        f"alerts raised: {sample('alerts'):,.0f}; webhook attempts failed:"
        f" {sample('webhook_failures'):,.0f}; alerts dropped:"
        f" {sample('webhook_dropped'):,.0f} (the receiver always fails)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run, in seconds")
    parser.add_argument("--events", type=int, default=None, help="traversals per round")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    events = args.events or (5_000 if args.quick else 50_000)
    rounds = args.rounds or (1 if args.quick else 5)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="headcount-bench-outputs-") as tmp:
        asyncio.run(run(events, rounds, Path(tmp)))


if __name__ == "__main__":
    main()

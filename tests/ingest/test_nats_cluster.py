"""``headcount serve`` on a clustered broker: a three-node NATS cluster with its MQTT gateway
(tests/nats_fixtures.py) and a PostgreSQL store.

The simulator's DPUs reach the cluster through one address that spreads their connections over
the nodes (``RoundRobinProxy``, as a load balancer does), so a simulated day goes in through
every node; the service subscribes through one node. Mid-burst one node the DPUs use is
stopped: its DPUs reconnect to another node and upload what they buffered. Afterwards the
store holds every event the DPUs sent exactly once, and the service's answers, live and past,
are the simulator's truth.

Then the issue's end-to-end test, sharded: three ``serve --shard I/3`` and a standby, the
shards too behind the spreading address, on NATS and (lighter: one broker, no node to stop)
on a Mosquitto of the test's own; a shard killed with SIGKILL and a NATS node stopped while
the day goes in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from headcount.domain.timefmt import format_ms
from headcount.domain.topology import Topology
from headcount.eventstore.engine import read_transaction
from headcount.eventstore.schema import traversals
from headcount.eventstore.store import EventStore
from headcount.sim.truth import Truth
from tests.conftest import _create_postgres_database, _drop_postgres_database
from tests.nats_fixtures import NatsCluster, RoundRobinProxy
from tests.servers import run_blocking
from tests.sim.harness import Service, Simulated, simulate
from tests.sim.reference import headquarters
from tests.sim.test_acceptance import RUN, SKEW_MS, after_the_day, samples

#: Seconds into the simulated day's real run (about ten seconds) at which a node is stopped.
FAULT_AFTER_S = 3.0


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A new database on the shared test server (skipped without its URL)."""
    url = await _create_postgres_database()
    try:
        yield url
    finally:
        await _drop_postgres_database(url)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path / "nats") as started:
        yield started


class StoreService(Service):
    """``headcount serve`` for the simulator's tests, on the store at ``store_url``, with more
    flags (``--shard I/N``)."""

    def __init__(
        self,
        tmp: Path,
        topology: Path,
        broker_url: str,
        client_id: str,
        *,
        store_url: str,
        extra: Sequence[str] = (),
    ) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        super().__init__(tmp, topology, broker_url, client_id)
        self.store_url = store_url
        self.args[self.args.index("--store") + 1] = store_url
        self.args += list(extra)


Fault = Callable[[], Coroutine[Any, Any, None]]


@contextlib.asynccontextmanager
async def simulated_day(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, dpu_broker: str, prefix: str
) -> AsyncIterator[tuple[list[str | Path], Path]]:
    """Plan the acceptance test's day with its faults (--dry-run): yields the simulator's
    arguments for the real run and the topology file the service starts with."""
    (tmp_path / "hq.toml").write_text(headquarters(prefix=prefix))
    args: list[str | Path] = [
        "--topology", tmp_path / "hq.toml",
        *RUN,
        "--broker", dpu_broker,
        "--truth", tmp_path / "truth.csv",
        "--write-topology", tmp_path / "simulated.toml",
        "--out", tmp_path / "events.jsonl",
    ]  # fmt: skip
    planned = await simulate(capsys, *args, "--dry-run")
    assert planned.code == 0, planned.err
    yield args, tmp_path / "simulated.toml"


async def run_with_fault(
    capsys: pytest.CaptureFixture[str], args: Sequence[str | Path], fault: Fault
) -> Simulated:
    """Run the simulator; ``fault`` runs ``FAULT_AFTER_S`` seconds in, while it publishes."""

    async def later() -> None:
        await asyncio.sleep(FAULT_AFTER_S)
        await fault()

    injecting = asyncio.create_task(later(), name="fault")
    try:
        ran = await simulate(capsys, *args)
    finally:
        await injecting  # a failed fault fails the test
    assert ran.code == 0, ran.err
    assert ran.summary["buffered"] == 0
    return ran


def sent_events(tmp_path: Path) -> set[tuple[str, int]]:
    """The distinct (dpu_id, seq) the DPUs sent (a duplicate is written twice)."""
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    return {(e["dpu_id"], e["seq"]) for e in map(json.loads, lines)}


async def stored_events(store_url: str) -> set[tuple[str, int]]:
    async with await EventStore.open(store_url) as store, read_transaction(store.engine) as conn:
        rows = await conn.execute(select(traversals.c.dpu_id, traversals.c.seq))
        keys = {(r.dpu_id, r.seq) for r in rows}
        total = (await conn.execute(select(func.count()).select_from(traversals))).scalar_one()
    assert total == len(keys)
    return keys


async def assert_stored_as_sent(tmp_path: Path, ran: Simulated, store_url: str) -> None:
    """Every event the simulator sent is stored, once, and nothing else (lost 0, doubled 0)."""
    sent = sent_events(tmp_path)
    assert len(sent) == ran.summary["events"] > 500
    stored = await stored_events(store_url)
    assert stored == sent, (
        f"sent {len(sent)}, stored {len(stored)}, lost {len(sent - stored)},"
        f" not sent {len(stored - sent)}"
    )


async def assert_true_counts(
    services: Sequence[Service], ran: Simulated, topology: Topology, truth: Truth
) -> int:
    """Every service answers every space as the truth says: at the end of the day, live (the
    daily resets since included), and every half hour of the day where clock skew cannot
    change the answer. Returns how many answers were compared."""
    final = {space_id: truth.final(space_id) for space_id in truth.spaces}
    live = {s: 0 if topology.space(s).daily_reset else final[s] for s in truth.spaces}
    compared = 0
    for service in services:
        await service.settle(final, at=after_the_day(ran), timeout=60)
        await service.settle(live, timeout=60)
        for space_id in truth.spaces:
            passages = [ts for ts, _ in truth.changes(space_id)[1:]]
            for at in samples(truth.start):
                if any(abs(ts - at) <= SKEW_MS for ts in passages):
                    continue
                answer = await service.count(space_id, format_ms(at))
                assert answer == truth.count(space_id, at), (service.http, space_id, format_ms(at))
                compared += 1
    return compared


async def test_a_day_through_every_node_with_one_stopped_mid_burst_is_counted_exactly(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    postgres_url: str,
    cluster: NatsCluster,
) -> None:
    n1, n2, n3 = cluster.nodes
    async with (
        RoundRobinProxy([n.mqtt_port for n in cluster.nodes]) as front,
        simulated_day(capsys, tmp_path, front.url, "nats-") as (args, topology_file),
    ):
        service = StoreService(
            tmp_path / "service",
            topology_file,
            n1.mqtt_url,
            "headcount-nats-test",
            store_url=postgres_url,
        )
        async with service:

            async def stop_a_dpu_node() -> None:
                assert front.connections[n2.mqtt_port] > 0, front.connections
                await run_blocking(lambda: cluster.stop_node(1))

            ran = await run_with_fault(capsys, args, stop_a_dpu_node)
            # The DPUs went in through every node, and n2's came back through the others.
            assert set(front.connections) == {n.mqtt_port for n in (n1, n2, n3)}
            assert ran.summary["reconnections"] > 0, ran.summary
            topology = Topology.from_toml(topology_file.read_text())
            truth = Truth.load(tmp_path / "truth.csv")
            assert await assert_true_counts([service], ran, topology, truth) > 300
        await assert_stored_as_sent(tmp_path, ran, postgres_url)


class ShardService(StoreService):
    """``headcount serve --shard I/N`` under its own session, ``headcount-shard-I``."""

    def __init__(
        self, tmp: Path, topology: Path, broker_url: str, store_url: str, shard: str
    ) -> None:
        super().__init__(
            tmp, topology, broker_url, "unused", store_url=store_url, extra=["--shard", shard]
        )
        at = self.args.index("--client-id")
        del self.args[at : at + 2]

    async def shard(self) -> object:
        """What ``/healthz`` says of the shard this process owns or waits for."""
        _, body = await self.get("/healthz")
        assert isinstance(body, dict), body
        return body.get("shard")


@contextlib.asynccontextmanager
async def broker_for(kind: str, tmp_path: Path) -> AsyncIterator[tuple[str, Fault]]:
    """The broker of a sharded run: the URL DPUs and shards connect to, and the broker's own
    fault mid-burst (a NATS node stopped; nothing for the single Mosquitto)."""
    if kind == "mosquitto":
        from tests.servers import MosquittoServer

        config = (Path(__file__).parents[2] / "broker_config" / "mosquitto.conf").read_text()
        with MosquittoServer(tmp_path / "mosquitto", config) as mosquitto:

            async def nothing() -> None:
                return None

            yield mosquitto.url, nothing
        return
    with NatsCluster(tmp_path / "nats") as cluster:
        async with RoundRobinProxy([n.mqtt_port for n in cluster.nodes]) as front:

            async def stop_a_node() -> None:
                await run_blocking(lambda: cluster.stop_node(1))

            yield front.url, stop_a_node


@pytest.mark.parametrize("broker", ["nats", "mosquitto"])
async def test_three_shards_and_a_standby_count_a_day_exactly_through_a_kill_and_a_node_stop(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, postgres_url: str, broker: str
) -> None:
    """The issue's end-to-end test. Three shards (shard 0 owns five of the eight spaces) and a
    standby for shard 0; the DPUs and the shards all reach the broker through one address
    (on NATS, spread over the nodes). While the day goes in, shard 0's owner is killed with
    SIGKILL (the standby takes the shard over and resumes its session) and one NATS node is
    stopped (its clients reconnect to the others). Afterwards every process answers every
    space, live and at every half hour, as the truth says, and the store holds each event sent
    exactly once."""
    async with (
        broker_for(broker, tmp_path) as (url, broker_fault),
        simulated_day(capsys, tmp_path, url, "shards-") as (args, topology_file),
        contextlib.AsyncExitStack() as stack,
    ):
        processes = {
            name: ShardService(tmp_path / name, topology_file, url, postgres_url, spec)
            for name, spec in [("s0", "0/3"), ("s1", "1/3"), ("s2", "2/3"), ("standby", "0/3")]
        }
        for name in ("s0", "s1", "s2", "standby"):
            await stack.enter_async_context(processes[name])
        assert await processes["standby"].shard() == {"index": 0, "count": 3, "role": "standby"}
        standby = processes["standby"]

        async def faults() -> None:
            await processes["s0"].stop(signal.SIGKILL)
            await asyncio.sleep(1.0)
            await broker_fault()

        ran = await run_with_fault(capsys, args, faults)
        async with asyncio.timeout(60):
            while await standby.shard() != {"index": 0, "count": 3, "role": "owner"}:
                await asyncio.sleep(0.1)
        topology = Topology.from_toml(topology_file.read_text())
        truth = Truth.load(tmp_path / "truth.csv")
        alive = [processes[name] for name in ("s1", "s2", "standby")]
        assert await assert_true_counts(alive, ran, topology, truth) > 3 * 300
        await assert_stored_as_sent(tmp_path, ran, postgres_url)

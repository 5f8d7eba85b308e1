"""End to end, sharded: ``headcount serve --shard I/N`` processes on one store and one broker
(a Mosquitto of the test's own), DPUs as plain MQTT clients, answers over HTTP from every
process compared with the fold of what was sent."""

from __future__ import annotations

import asyncio
import csv
import random
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest

from headcount.domain.events import Traversal, space_delta
from headcount.domain.shards import shard_of
from headcount.domain.timefmt import format_ms, parse_iso, to_ms
from headcount.domain.topology import Topology
from headcount.eventstore.store import EventStore
from headcount.ingest import wire
from headcount.ingest.credentials import issue
from headcount.ingest.mqtt import parse_broker_url
from tests.serve_process import ServeProcess
from tests.servers import MosquittoServer

SECOND = 1000
#: A fixed start, an hour long: no answer depends on today's date.
START = to_ms(datetime(2026, 1, 5, 8, tzinfo=UTC))
SPACES = ["A", "B", "C", "D"]  # shards of 2: A, C and D are 1, B is 0
#: Doorways: the outside into A; A-B; B-C; C-D; the outside into D. Each DPU hangs inside the
#: first space it names.
DOORS = {"x": ("A",), "ab": ("A", "B"), "bc": ("B", "C"), "cd": ("C", "D"), "y": ("D",)}
PROJECT_CONF = Path(__file__).resolve().parent.parent / "broker_config" / "mosquitto.conf"


def topology_toml() -> str:
    lines = [f'[[spaces]]\nid = "{s}"\nname = "Space {s}"\n' for s in SPACES]
    for door, spaces in DOORS.items():
        links = [f'{{ space = "{spaces[0]}", sensor_placement = 1 }}']
        if len(spaces) > 1:
            links.append(f'{{ space = "{spaces[1]}", sensor_placement = -1 }}')
        lines.append(
            f'[[doorways]]\nid = "{door}"\nname = "Door {door}"\nlinks = [{", ".join(links)}]\n'
        )
        lines.append(f'[[assignments]]\ndpu = "dpu-{door}"\ndoorway = "{door}"')
        lines.append('valid_from = "2018-01-01T00:00:00Z"\n')
    return "\n".join(lines)  # fmt: skip


@dataclass(frozen=True)
class Site:
    """A topology, its spaces, and the window the past answers are asked about."""

    toml: str
    start: int

    @property
    def topology(self) -> Topology:
        return Topology.from_toml(self.toml)

    @property
    def spaces(self) -> list[str]:
        return list(self.topology.spaces)

    def truth(self, events: Iterable[Traversal]) -> dict[str, dict[str, int]]:
        """The fold by hand: every space's count, entrances and exits."""
        topology = self.topology
        state = {s: {"count": 0, "entrances": 0, "exits": 0} for s in topology.spaces}
        for t in sorted(set(events), key=lambda t: (t.ts, t.dpu_id, t.seq)):
            for link in topology.links_at(t.dpu_id, t.ts):
                delta = space_delta(t.direction, link.sensor_placement)
                s = state[link.space_id]
                s["count"] = max(0, s["count"] + delta)
                s["entrances" if delta > 0 else "exits"] += 1
        return state


SYNTHETIC = Site(topology_toml(), START)
SEED_DIR = Path(__file__).resolve().parent.parent / "examples" / "seed"
#: The seed: A is shard 1 of 2, B shard 0; doorway Z (DPU 423) joins them.
SEED = Site((SEED_DIR / "topology.toml").read_text(), to_ms(datetime(2018, 2, 26, tzinfo=UTC)))


def seed_traversals() -> list[Traversal]:
    """The seed export's rows as the traversals DPUs would have sent (seq as import derives
    it), in time order."""
    with (SEED_DIR / "dpu_data.csv").open(newline="", encoding="utf-8") as handle:
        rows = {(r["timestamp"], int(r["direction"]), r["dpu_id"]) for r in csv.DictReader(handle)}
    events = []
    for text, direction, dpu_id in rows:
        ts = parse_iso(text)
        seq = 2 * ts + (1 if direction > 0 else 0)
        events.append(Traversal(dpu_id, seq, ts, 1 if direction > 0 else -1))
    return sorted(events, key=lambda t: (t.ts, t.dpu_id, t.seq))


def traffic(rng: random.Random, first_seq: int, n: int, start: int) -> list[Traversal]:
    """``n`` traversals spread over the DPUs, mostly inward so the counts stay above 0."""
    dpus = [f"dpu-{door}" for door in DOORS]
    return [
        Traversal(rng.choice(dpus), first_seq + i, start + i * SECOND, rng.choice([1, 1, -1]))
        for i in range(n)
    ]


class Shard(ServeProcess):
    def __init__(
        self, tmp: Path, site: Site, name: str, broker: str, store: str, extra: Sequence[str]
    ) -> None:
        folder = tmp / name
        folder.mkdir()
        topology = tmp / "topology.toml"
        topology.write_text(site.toml)
        super().__init__(folder, topology, broker, "unused", store_url=store)
        self.site = site
        client = self.args.index("--client-id")
        del self.args[client : client + 2]  # each shard's own default, headcount-shard-I
        self.args += extra

    async def shard(self) -> object:
        """What ``/healthz`` says of the shard; ``None`` while it answers 503 (recovering)."""
        status, body = await self.get("/healthz")
        assert isinstance(body, dict), body
        return body.get("shard") if status == 200 else None

    async def answers(self) -> dict[str, object]:
        """What this process answers on every read route, live and past."""
        found: dict[str, object] = {}
        spaces, start = self.site.spaces, self.site.start
        window = f"start_time={format_ms(start)}&end_time={format_ms(start + 86_400 * SECOND)}"
        for path in [
            "/spaces",
            *(f"/spaces/{s}" for s in spaces),
            *(f"/spaces/{s}/events?{window}&page_size=50" for s in spaces),
            *(f"/spaces/{s}/resets?{window}" for s in spaces),
            *(f"/space/{s}/count" for s in spaces),
            *(f"/spaces/{s}/count" for s in spaces),
            *(f"/spaces/{s}/count?ts={format_ms(start + 1800 * SECOND)}" for s in spaces),
            *(f"/spaces/{s}/count?ts={format_ms(start + 86_400 * SECOND)}" for s in spaces),
            f"/counts?{'&'.join(f'space_id={s}' for s in spaces)}"
            f"&start_time={format_ms(start)}&end_time={format_ms(start + 86_400 * SECOND)}"
            "&interval=1h",
        ]:
            status, body = await self.get(path)
            assert status == 200, (path, body)
            if isinstance(body, dict):
                body.pop("ts", None)  # a live answer is timed at the answer
            found[path] = body
        return found


def live_counts(answers: dict[str, object]) -> dict[str, dict[str, int]]:
    result = {}
    for s in [
        p.split("/")[2] for p in answers if p.startswith("/spaces/") and p.endswith("/count")
    ]:
        body = answers[f"/spaces/{s}/count"]
        assert isinstance(body, dict)
        result[s] = {k: body[k] for k in ("count", "entrances", "exits")}
    return result


async def settled(processes: Sequence[Shard], expected: dict[str, dict[str, int]]) -> None:
    """Wait until every process answers ``expected`` live, and every route the same."""
    seen: list[dict[str, object]] = []
    try:
        async with asyncio.timeout(60):
            while True:
                seen = [await p.answers() for p in processes]
                if all(live_counts(a) == expected for a in seen) and all(
                    a == seen[0] for a in seen
                ):
                    return
                await asyncio.sleep(0.2)
    except TimeoutError:
        logs = "\n".join(p.log.read_text() for p in processes)
        raise AssertionError(
            f"expected {expected}, got {[live_counts(a) for a in seen]}\n{logs}"
        ) from None


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterable[MosquittoServer]:
    with MosquittoServer(tmp_path / "mosquitto", PROJECT_CONF.read_text()) as server:
        yield server


@pytest.fixture
async def dpu(mosquitto: MosquittoServer) -> AsyncIterator[aiomqtt.Client]:
    address = parse_broker_url(mosquitto.url)
    async with aiomqtt.Client(address.host, address.port, identifier="dpus") as client:
        yield client


async def send(client: aiomqtt.Client, events: Iterable[Traversal]) -> None:
    for t in events:
        await client.publish(wire.traversals_topic(t.dpu_id), wire.encode(t), qos=1)


async def stored(store_url: str) -> int:
    async with await EventStore.open(store_url) as store:
        return await store.log.count_traversals()


def seed_batches() -> tuple[list[Traversal], list[Traversal]]:
    events = seed_traversals()
    half = len(events) // 2
    return events[:half], events[half:]


def synthetic_batches() -> tuple[list[Traversal], list[Traversal]]:
    rng = random.Random(13)
    return traffic(rng, 1, 300, START), traffic(rng, 1000, 300, START + 600 * SECOND)


@pytest.mark.parametrize(
    ("site", "batches"),
    [(SEED, seed_batches), (SYNTHETIC, synthetic_batches)],
    ids=["seed", "four-spaces"],
)
async def test_two_shards_and_a_standby_answer_the_truth_through_a_kill(
    tmp_path: Path,
    store_url: str,
    mosquitto: MosquittoServer,
    dpu: aiomqtt.Client,
    site: Site,
    batches: Callable[[], tuple[list[Traversal], list[Traversal]]],
) -> None:
    assert {shard_of(s, 2) for s in site.spaces} == {0, 1}, "spaces must fall on both shards"
    processes = {
        name: Shard(tmp_path, site, name, mosquitto.url, store_url, ["--shard", spec])
        for name, spec in [("zero", "0/2"), ("one", "1/2"), ("standby", "1/2")]
    }
    try:
        for name in ("zero", "one", "standby"):
            await processes[name].start()
        assert await processes["standby"].shard() == {"index": 1, "count": 2, "role": "standby"}
        assert await processes["one"].shard() == {"index": 1, "count": 2, "role": "owner"}
        sent, more = batches()
        await send(dpu, sent)
        await send(dpu, sent[::7])  # redeliveries: the store keeps one of each
        await settled(list(processes.values()), site.truth(sent))

        # The owner of shard 1 dies at once; the broker queues its session's messages.
        await processes["one"].stop(signal.SIGKILL)
        killed = time.monotonic()
        await send(dpu, more)
        standby = processes["standby"]
        async with asyncio.timeout(60):
            while await standby.shard() != {"index": 1, "count": 2, "role": "owner"}:
                await asyncio.sleep(0.1)
        took_over = time.monotonic() - killed
        alive = [processes["zero"], standby]
        await settled(alive, site.truth(sent + more))
        caught_up = time.monotonic() - killed
        assert await stored(store_url) == len(set(sent + more))  # nothing lost or doubled
        # A new standby for the shard waits, answering like the others, and stops cleanly.
        again = Shard(tmp_path, site, "again", mosquitto.url, store_url, ["--shard", "1/2"])
        processes["again"] = again
        await again.start()
        assert await again.shard() == {"index": 1, "count": 2, "role": "standby"}
        await settled([*alive, again], site.truth(sent + more))
        assert await again.stop(signal.SIGTERM) == 0
        print(  # shown with -rP: what a take-over took here
            f"take-over: owner after {took_over:.2f} s, every answer right after"
            f" {caught_up:.2f} s ({len(more)} events sent meanwhile)"
        )
    finally:
        for process in processes.values():
            if process.process is not None:
                await process.stop(signal.SIGKILL)


async def test_one_shard_answers_as_no_shards_do(
    tmp_path: Path, mosquitto: MosquittoServer, dpu: aiomqtt.Client
) -> None:
    plain = Shard(
        tmp_path,
        SYNTHETIC,
        "plain",
        mosquitto.url,
        f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}",
        ["--client-id", "plain"],
    )
    one = Shard(
        tmp_path,
        SYNTHETIC,
        "one",
        mosquitto.url,
        f"sqlite+aiosqlite:///{tmp_path / 'one.db'}",
        ["--shard", "0/1", "--client-id", "one"],
    )
    try:
        await plain.start()
        await one.start()
        sent = traffic(random.Random(7), 1, 200, START)
        await send(dpu, sent)
        await settled([plain, one], SYNTHETIC.truth(sent))
        assert await one.shard() == {"index": 0, "count": 1, "role": "owner"}
    finally:
        await plain.stop(signal.SIGKILL)
        await one.stop(signal.SIGKILL)


async def test_two_shards_with_dpu_credentials_on_mosquitto_answer_the_truth(
    tmp_path: Path, store_url: str, auth_dir: Path
) -> None:
    """``--dpu-auth`` on a Mosquitto started with the files ``dpus credentials`` wrote: each
    shard's session, its MQTT out and its follower of the other shard's states are three
    connections with the one service account, and each DPU logs in with its own."""
    passwords = issue(SEED.topology.dpu_ids(), auth_dir)
    project = [
        line
        for line in PROJECT_CONF.read_text().splitlines()
        if not line.startswith("allow_anonymous")
    ]
    config = "\n".join(project) + "\n" + (auth_dir / "mosquitto.conf").read_text()
    with MosquittoServer(tmp_path / "mosquitto", config) as mosquitto:
        processes = [
            Shard(
                tmp_path,
                SEED,
                name,
                mosquitto.url,
                store_url,
                [*flags, "--dpu-auth", str(auth_dir)],
            )
            for name, flags in [("zero", ["--shard", "0/2"]), ("one", ["--shard", "1/2"])]
        ]
        try:
            for process in processes:
                await process.start()
            events = seed_traversals()
            for dpu_id in sorted({t.dpu_id for t in events}):
                async with aiomqtt.Client(
                    "127.0.0.1",
                    mosquitto.port,
                    username=dpu_id,
                    password=passwords[dpu_id],
                    identifier=dpu_id,
                ) as client:
                    await send(client, [t for t in events if t.dpu_id == dpu_id])
            # Each process answers the other shard's live counts from the states it follows.
            await settled(processes, SEED.truth(events))
            assert await stored(store_url) == len(set(events))
        finally:
            for process in processes:
                await process.stop(signal.SIGKILL)

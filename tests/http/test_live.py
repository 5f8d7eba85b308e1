"""Live push over WebSocket (/live) and Server-Sent Events (/live/sse): the current state
first, then every change with its cause; bad messages, slow clients, tokens."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType, WSServerHandshakeError, web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from headcount.actors import ActorSystem, Cause, Change
from headcount.domain.events import Reset, Traversal
from headcount.domain.timefmt import format_ms, parse_iso
from headcount.domain.topology import Topology
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.http import live
from headcount.http.auth import AUTH, Auth
from headcount.http.keys import ACTORS, CHANGES, CLOCK, DPUS, HISTORY, METRICS, STORE
from headcount.http.live import LiveChange
from headcount.http.openapi import document
from headcount.http.routes import add_routes
from headcount.http.tokens import Scope, Tokens, add_token
from headcount.ingest.dpus import DpuRegistry
from headcount.metrics import Metrics
from tests.actors.test_changes import DAILY
from tests.mqtt_fixtures import MqttNames
from tests.sim.harness import Service as ServeProcessService
from tests.sim.test_acceptance import after_the_day, planned_and_run

SEED_TOPOLOGY = Path(__file__).resolve().parents[2] / "examples" / "seed" / "topology.toml"
NOW = 1_700_000_000_000
MINUTE = 60_000
SYSTEM = web.AppKey[ActorSystem]("test_live_system")
#: No wall-clock bound on the push: only a guard so a broken test ends.
GUARD_S = 60


def state(space_id: str, count: int, entrances: int, exits: int) -> dict[str, Any]:
    return {"space_id": space_id, "ts": format_ms(NOW), "count": count,
            "entrances": entrances, "exits": exits, "cause": "state"}  # fmt: skip


def change(space_id: str, ts: int, count: int, ins: int, outs: int, cause: str) -> dict[str, Any]:
    return {"space_id": space_id, "ts": format_ms(ts), "count": count,
            "entrances": ins, "exits": outs, "cause": cause}  # fmt: skip


def live_app(
    store: EventStore,
    auth: Auth | None = None,
    *,
    topology_text: str | None = None,
    clock: Callable[[], int] = lambda: NOW,
) -> web.Application:
    """The API over the seed topology (or ``topology_text``) under ``clock``."""

    async def resources(app: web.Application) -> AsyncIterator[None]:
        text = SEED_TOPOLOGY.read_text() if topology_text is None else topology_text
        topology = Topology.from_toml(text, source="test")
        history = History(store, topology)
        system = ActorSystem(history, window_ms=5 * MINUTE, clock=clock, daily_reset_tick_s=0.01)
        app[STORE], app[HISTORY], app[ACTORS], app[SYSTEM] = store, history, system, system
        app[CHANGES], app[CLOCK] = system.changes, clock
        app[DPUS], app[METRICS] = DpuRegistry(), Metrics()
        async with system.running():
            yield

    app = web.Application()
    if auth is not None:
        app[AUTH] = auth
    app.cleanup_ctx.append(resources)
    add_routes(app)
    return app


@dataclass
class Service:
    client: TestClient[web.Request, web.Application]
    store: EventStore
    system: ActorSystem

    async def feed(self, events: Iterable[Traversal]) -> None:
        await self.system.route((await self.store.log.append(events)).new)
        await self.system.drain()


@pytest.fixture
async def service(store: EventStore, aiohttp_client: AiohttpClient) -> Service:
    client = await aiohttp_client(live_app(store))
    return Service(client, store, client.app[SYSTEM])


def documented(message: Any) -> Any:
    """``message``, checked against the document's model when it is a state or a change."""
    if isinstance(message, dict) and "cause" in message:
        LiveChange.model_validate(message)
    return message


async def receive(ws: ClientWebSocketResponse) -> Any:
    return documented(await asyncio.wait_for(ws.receive_json(), GUARD_S))


async def subscribe(ws: ClientWebSocketResponse, spaces: list[str] | str) -> list[Any]:
    """Subscribe; the acknowledgement and the states that follow it."""
    await ws.send_json({"subscribe": spaces})
    ack = await receive(ws)
    assert ack == {"subscribed": spaces}
    n = 2 if spaces == "*" else len(spaces)
    return [await receive(ws) for _ in range(n)]


# -- WebSocket -----------------------------------------------------------------------------


async def test_state_first_then_each_change_with_its_cause(service: Service) -> None:
    await service.feed([Traversal("283", 1, NOW - 10 * MINUTE, 1)])
    async with service.client.ws_connect("/live") as ws:
        assert await subscribe(ws, ["A"]) == [state("A", 1, 1, 0)]
        await service.feed([Traversal("283", 2, NOW - 2 * MINUTE, 1)])
        assert await receive(ws) == change("A", NOW - 2 * MINUTE, 2, 2, 0, "traversal")
        await service.system.reset(Reset("A", NOW - MINUTE, 10))
        assert await receive(ws) == change("A", NOW - MINUTE, 10, 2, 0, "reset")
        # Late, within the actor's window: dated by the newest event the state holds.
        await service.feed([Traversal("283", 3, NOW - 90_000, -1)])
        assert await receive(ws) == change("A", NOW - MINUTE, 10, 2, 1, "correction")
        # Older than the actor's window: folded from the store, dated by the newest event.
        await service.feed([Traversal("283", 4, NOW - 9 * MINUTE, 1)])
        assert await receive(ws) == change("A", NOW - MINUTE, 10, 3, 1, "correction")
        live_a = service.system.live("A")
        assert (live_a.count, live_a.entrances, live_a.exits) == (10, 3, 1)


async def test_the_subscription_can_change(service: Service) -> None:
    async with service.client.ws_connect("/live") as ws:
        assert await subscribe(ws, ["A"]) == [state("A", 0, 0, 0)]
        assert await subscribe(ws, ["B"]) == [state("B", 0, 0, 0)]
        await service.feed([Traversal("283", 1, NOW - 1000, 1)])  # A only: not sent
        await service.feed([Traversal("423", 1, NOW - 900, -1)])  # A to B
        assert await receive(ws) == change("B", NOW - 900, 1, 1, 0, "traversal")
        assert await subscribe(ws, "*") == [state("A", 0, 1, 1), state("B", 1, 1, 0)]
        await service.feed([Traversal("283", 2, NOW - 800, 1)])
        assert await receive(ws) == change("A", NOW - 800, 1, 2, 1, "traversal")


@pytest.mark.parametrize(
    ("message", "says"),
    [
        ("not json", "Expecting value"),
        ("[1, 2]", "one key, 'subscribe'"),
        ('{"subscribe": ["A"], "also": 1}', "one key, 'subscribe'"),
        ('{"subscribe": "A"}', "a list of space ids"),
        ('{"subscribe": [1]}', "a list of space ids"),
        ('{"subscribe": ["A", "Nowhere"]}', "no such space: 'Nowhere'"),
        pytest.param("[" * 100_000 + "]" * 100_000, "nests too deep", id="deep"),
    ],
)
async def test_a_bad_message_is_answered_and_the_socket_stays(
    service: Service, message: str, says: str
) -> None:
    async with service.client.ws_connect("/live") as ws:
        assert await subscribe(ws, ["A"]) == [state("A", 0, 0, 0)]
        await ws.send_str(message)
        answer = await receive(ws)
        assert says in answer["error"]
        assert '{"subscribe": ["A", "B"]}' in answer["error"] or "unchanged" in answer["error"]
        # The old subscription still holds, and a good message still works.
        await service.feed([Traversal("283", 1, NOW - 1000, 1)])
        assert await receive(ws) == change("A", NOW - 1000, 1, 1, 0, "traversal")
        assert await subscribe(ws, ["B"]) == [state("B", 0, 0, 0)]


async def test_binary_is_refused_politely(service: Service) -> None:
    async with service.client.ws_connect("/live") as ws:
        await ws.send_bytes(b'{"subscribe": "*"}')
        assert "JSON text" in (await receive(ws))["error"]
        assert not ws.closed


async def test_a_client_that_falls_behind_is_closed_and_counting_goes_on(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "QUEUE", 2)
    async with service.client.ws_connect("/live") as ws, service.client.ws_connect("/live") as ok:
        await subscribe(ws, ["A"])
        monkeypatch.setattr(live, "QUEUE", 100)
        await subscribe(ok, ["A"])
        # Five changes at once, before the push can send one (as the actors would publish
        # them for five spaces of one batch).
        for n in range(1, 6):
            service.system.changes.publish(Change("A", NOW, n, n, 0, Cause.TRAVERSAL))
        closing = await asyncio.wait_for(ws.receive(), GUARD_S)
        assert closing.type is WSMsgType.CLOSE
        assert closing.data == 1013
        assert closing.extra == "fell more than 2 changes behind; reconnect"
        assert [(await receive(ok))["count"] for _ in range(5)] == [1, 2, 3, 4, 5]
        await service.feed([Traversal("283", 1, NOW - 1000, 1)])  # counting goes on
        assert (await receive(ok))["count"] == 1
        assert service.system.live("A").count == 1


async def test_heartbeats_keep_a_quiet_socket_and_drop_a_dead_one(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server pings every ``HEARTBEAT_S``: a client that answers stays subscribed through
    quiet spells; one that never answers is closed and its subscription released. (aiohttp
    waits half the interval for the pong: a second leaves a loaded machine ample time.)"""
    monkeypatch.setattr(live, "HEARTBEAT_S", 1.0)
    async with service.client.ws_connect("/live", autoping=False) as ws:
        await subscribe(ws, ["A"])
        for _ in range(2):  # two quiet spells, each ended by a ping we answer
            ping = await asyncio.wait_for(ws.receive(), GUARD_S)
            assert ping.type is WSMsgType.PING
            await ws.pong(ping.data)
        await service.feed([Traversal("283", 1, NOW - 1000, 1)])
        while (message := await asyncio.wait_for(ws.receive(), GUARD_S)).type is WSMsgType.PING:
            await ws.pong(message.data)
        assert documented(message.json()) == change("A", NOW - 1000, 1, 1, 0, "traversal")
    async with service.client.ws_connect("/live", autoping=False) as dead:
        await subscribe(dead, ["A"])
        assert service.system.changes.subscribers == 1
        while (await asyncio.wait_for(dead.receive(), GUARD_S)).type is WSMsgType.PING:
            pass  # never answered: the server gives up on this client
        assert dead.closed
    async with asyncio.timeout(GUARD_S):
        while service.system.changes.subscribers:
            await asyncio.sleep(0.01)
    await service.feed([Traversal("283", 2, NOW - 900, 1)])  # counting goes on
    assert service.system.live("A").count == 2


async def test_sse_sends_a_comment_through_quiet_spells(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "HEARTBEAT_S", 0.05)
    async with service.client.get("/live/sse?space_id=A") as response:
        assert await events(response, 1) == [("message", state("A", 0, 0, 0))]
        # The blank line that ends the state's event, then two quiet spells' comments.
        lines = [await asyncio.wait_for(response.content.readline(), GUARD_S) for _ in range(5)]
        assert lines == [b"\n", *[b": keep-alive\n", b"\n"] * 2]
        await service.feed([Traversal("283", 1, NOW - 1000, 1)])
        assert await events(response, 1) == [
            ("message", change("A", NOW - 1000, 1, 1, 0, "traversal"))
        ]


async def test_the_upgrade_needs_a_read_token(
    store: EventStore, tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    file = tmp_path / "tokens.toml"
    read = add_token(file, "display", Scope.READ)
    client = await aiohttp_client(live_app(store, Auth(Tokens.load(file))))
    with pytest.raises(WSServerHandshakeError) as refused:
        await client.ws_connect("/live")
    assert refused.value.status == 401
    sse = await client.get("/live/sse")
    assert sse.status == 401
    async with client.ws_connect("/live", headers={"Authorization": f"Bearer {read}"}) as ws:
        assert await subscribe(ws, ["A"]) == [state("A", 0, 0, 0)]


async def test_a_plain_get_is_refused_as_json(service: Service) -> None:
    response = await service.client.get("/live")
    assert response.status == 400
    assert response.content_type == "application/json"


async def test_the_daily_reset_is_pushed_under_a_frozen_clock(
    store: EventStore, aiohttp_client: AiohttpClient
) -> None:
    now = [parse_iso("2026-03-28T02:59:00Z")]  # 03:59 in Berlin
    app = live_app(store, topology_text=DAILY, clock=lambda: now[0])
    client = await aiohttp_client(app)
    await app[SYSTEM].route((await store.log.append([Traversal("7", 1, now[0] - 1000, 1)])).new)
    await app[SYSTEM].drain()
    async with client.ws_connect("/live") as ws:
        await ws.send_json({"subscribe": ["Hall"]})
        assert await receive(ws) == {"subscribed": ["Hall"]}
        assert (await receive(ws))["count"] == 1
        now[0] = parse_iso("2026-03-28T03:00:05Z")  # the clock passes 04:00 in Berlin
        assert await receive(ws) == {
            "space_id": "Hall", "ts": "2026-03-28T03:00:00.000Z", "count": 0,
            "entrances": 1, "exits": 0, "cause": "daily_reset",
        }  # fmt: skip


# -- Server-Sent Events --------------------------------------------------------------------


async def events(response: Any, n: int) -> list[tuple[str, Any]]:
    """The next ``n`` events of an SSE stream: (event name, JSON data)."""
    out: list[tuple[str, Any]] = []
    name = "message"
    while len(out) < n:
        line = (await asyncio.wait_for(response.content.readline(), GUARD_S)).decode()
        if line.startswith("event: "):
            name = line[len("event: ") :].strip()
        elif line.startswith("data: "):
            out.append((name, documented(json.loads(line[len("data: ") :]))))
            name = "message"
    return out


async def test_sse_state_first_then_changes(service: Service) -> None:
    await service.feed([Traversal("423", 1, NOW - 5000, 1)])  # A to B: B 0, A 1
    async with service.client.get("/live/sse", params=[("space_id", "B")]) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        assert await events(response, 1) == [("message", state("B", 0, 0, 1))]
        await service.feed([Traversal("423", 2, NOW - 4000, -1)])
        assert await events(response, 1) == [
            ("message", change("B", NOW - 4000, 1, 1, 1, "traversal"))
        ]


async def test_sse_every_space_without_space_id(service: Service) -> None:
    async with service.client.get("/live/sse") as response:
        assert await events(response, 2) == [
            ("message", state("A", 0, 0, 0)),
            ("message", state("B", 0, 0, 0)),
        ]


async def test_sse_refuses_unknown_and_empty_spaces(service: Service) -> None:
    unknown = await service.client.get("/live/sse?space_id=A&space_id=Nowhere")
    assert unknown.status == 404
    assert await unknown.json() == {"detail": "Not found."}
    empty = await service.client.get("/live/sse?space_id=")
    assert empty.status == 400
    assert "space_id" in (await empty.json())["detail"]


async def test_sse_slow_client_is_told_and_dropped(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "QUEUE", 2)
    async with service.client.get("/live/sse?space_id=A") as response:
        assert await events(response, 1) == [("message", state("A", 0, 0, 0))]
        for n in range(1, 6):
            service.system.changes.publish(Change("A", NOW, n, n, 0, Cause.TRAVERSAL))
        await service.feed([Traversal("283", 1, NOW - 1000, 1)])
        assert await events(response, 1) == [
            ("closed", {"error": "fell more than 2 changes behind; reconnect"})
        ]
        assert (await asyncio.wait_for(response.content.read(), GUARD_S)).strip() == b""  # ended
    assert service.system.live("A").count == 1


# -- a simulated day with faults -----------------------------------------------------------


class WatchedService(ServeProcessService):
    """``headcount serve`` with a WebSocket client subscribed to every space from before the
    day starts, keeping the last message per space."""

    async def __aenter__(self) -> WatchedService:
        await super().__aenter__()
        self.last: dict[str, Any] = {}
        self.messages = 0
        self._ws_session = aiohttp.ClientSession()
        self._ws = await self._ws_session.ws_connect(f"{self.http}/live")
        await self._ws.send_json({"subscribe": "*"})
        assert (await receive(self._ws)) == {"subscribed": "*"}
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for message in self._ws:
            body = message.json()
            assert "error" not in body, body
            self.last[body["space_id"]] = body
            self.messages += 1
        raise AssertionError(f"the WebSocket closed: {self._ws.close_code}")

    async def __aexit__(self, *exc: object) -> None:
        self._reader.cancel()
        await asyncio.wait([self._reader])
        await self._ws.close()
        await self._ws_session.close()
        await super().__aexit__(*exc)


async def test_after_a_simulated_day_the_last_message_is_the_live_count_and_the_truth(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, broker_url: str, mqtt_names: MqttNames
) -> None:
    run = planned_and_run(capsys, tmp_path, broker_url, mqtt_names, service_class=WatchedService)
    async with run as (ran, service, topology, truth):
        assert isinstance(service, WatchedService)
        final = {space_id: truth.final(space_id) for space_id in truth.spaces}
        await service.settle(final, at=after_the_day(ran))
        # Live, the spaces with a daily reset were emptied by the resets since the day.
        live_truth = {s: 0 if topology.space(s).daily_reset else final[s] for s in truth.spaces}
        await service.settle(live_truth)
        pushed: dict[str, int] = {}
        async with asyncio.timeout(GUARD_S):
            while pushed != live_truth:
                pushed = {s: service.last[s]["count"] for s in truth.spaces if s in service.last}
                await asyncio.sleep(0.05)
        assert {s: await service.count(s) for s in truth.spaces} == pushed
        assert service.messages > ran.summary["events"] // 2
        assert not service._reader.done()


async def test_shutting_down_ends_every_push(service: Service) -> None:
    async with (
        service.client.ws_connect("/live") as ws,
        service.client.get("/live/sse?space_id=A") as sse,
    ):
        await subscribe(ws, ["A"])
        assert await events(sse, 1) == [("message", state("A", 0, 0, 0))]
        await live._close_all(service.client.app)
        closing = await asyncio.wait_for(ws.receive(), GUARD_S)
        assert (closing.type, closing.data) == (WSMsgType.CLOSE, 1001)
        assert (await asyncio.wait_for(sse.content.read(), GUARD_S)).strip() == b""


@pytest.mark.skipif(not hasattr(socket, "TCP_CORK"), reason="TCP_CORK is Linux's")
def test_frames_for_one_client_are_held_and_sent_together() -> None:
    """Several changes queued for a client: its connection is corked while they are written
    (one segment, not one each) and uncorked after, also when a write fails; one change alone
    is written as it is."""
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as sock,
    ):
        request = cast(
            web.Request,
            SimpleNamespace(transport=SimpleNamespace(get_extra_info={"socket": sock}.get)),
        )

        def corked() -> int:
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK)

        with live._corked(request, more=False):
            assert corked() == 0
        with live._corked(request, more=True):
            assert corked() == 1
        assert corked() == 0
        with pytest.raises(ConnectionResetError), live._corked(request, more=True):
            raise ConnectionResetError
        assert corked() == 0


async def test_sse_head_answers_the_headers_alone(service: Service) -> None:
    response = await service.client.head("/live/sse?space_id=A")
    assert response.status == 200
    assert response.content_type == "text/event-stream"


def test_the_document_describes_both_routes() -> None:
    paths = document()["paths"]
    assert "101" in paths["/live"]["get"]["responses"]
    sse = paths["/live/sse"]["get"]
    assert set(sse["responses"]["200"]["content"]) == {"text/event-stream"}
    assert [p["name"] for p in sse["parameters"]] == ["space_id"]
    assert "404" in sse["responses"]

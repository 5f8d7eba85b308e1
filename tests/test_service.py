"""The service's parts as one supervision tree: a failing part stops all of them, a stop
stops them in order. Preflight: an HTTP API beyond loopback needs tokens or a flag."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from headcount.actors import ActorSystem
from headcount.domain.events import Traversal
from headcount.domain.topology import Topology, TopologyChoice
from headcount.errors import ConfigError
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.http.tokens import Scope, add_token
from headcount.ingest.broker import free_port
from headcount.ingest.credentials import issue
from headcount.service import (
    EMBEDDED_AUTH_DPUS,
    ServiceFailedError,
    Settings,
    _prepare_store,
    preflight,
    run_parts,
    storm_warning,
)

SEED = Path(__file__).resolve().parent.parent / "examples" / "seed" / "topology.toml"
NOW = 1_700_000_000_000


class FailingIngest:
    """An ingest that fails once it has run for a moment."""

    async def run(self) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("the broker connection broke for good")


class RecordingIngest:
    """An ingest that runs until cancelled and says when it was."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def run(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.log.append("ingest cancelled")
            raise


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[ActorSystem]:
    """Actors over the seed topology and a new SQLite store (the tree does not depend on the
    backend)."""
    async with await EventStore.open(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}") as store:
        topology = Topology.from_toml(SEED.read_text())
        yield ActorSystem(History(store, topology), clock=lambda: NOW)


async def test_a_failing_part_stops_every_part_and_says_which(system: ActorSystem) -> None:
    await system.recover()
    async with asyncio.timeout(10):  # the actors, which run until cancelled, were cancelled
        with pytest.raises(ServiceFailedError, match="the broker connection broke") as raised:
            await run_parts(system, FailingIngest(), asyncio.Event())
    assert isinstance(raised.value.__cause__, RuntimeError)


async def test_a_stop_stops_ingest_first_then_drains_the_actors_and_writes_snapshots(
    system: ActorSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    log: list[str] = []
    write_snapshots = system.write_snapshots

    async def recorded_write_snapshots() -> int:
        log.append(f"snapshots written, live A={system.live('A').count}")
        return await write_snapshots()

    monkeypatch.setattr(system, "write_snapshots", recorded_write_snapshots)
    store = system.history.store
    await system.recover()
    stop = asyncio.Event()
    parts = asyncio.create_task(run_parts(system, RecordingIngest(log), stop))
    stored = await store.log.append([Traversal("283", 1, NOW - 1000, 1)])
    await system.route(stored.new)  # in a mailbox when the stop comes
    stop.set()
    async with asyncio.timeout(10):
        await parts
    assert log == ["ingest cancelled", "snapshots written, live A=1"]


async def test_background_parts_run_beside_ingest_and_stop_with_it(system: ActorSystem) -> None:
    log: list[str] = []
    await system.recover()
    stop = asyncio.Event()
    background = [("dpu-health", RecordingIngest(log))]
    parts = asyncio.create_task(
        run_parts(system, RecordingIngest(log), stop, background=background)
    )
    await asyncio.sleep(0)
    names = {task.get_name() for task in asyncio.all_tasks()}
    assert {"ingest", "dpu-health", "actors"} <= names
    stop.set()
    async with asyncio.timeout(10):
        await parts
    assert log == ["ingest cancelled", "ingest cancelled"]


class RecordingOutputs:
    """Outputs that run until cancelled and say what the live count was then."""

    def __init__(self, log: list[str], system: ActorSystem) -> None:
        self.log = log
        self.system = system

    async def run(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.log.append(f"outputs cancelled, live A={self.system.live('A').count}")
            raise


async def test_a_stop_cancels_the_outputs_once_the_actors_have_drained(
    system: ActorSystem,
) -> None:
    log: list[str] = []
    store = system.history.store
    await system.recover()
    stop = asyncio.Event()
    outputs = RecordingOutputs(log, system)
    parts = asyncio.create_task(run_parts(system, RecordingIngest(log), stop, outputs=outputs))
    stored = await store.log.append([Traversal("283", 1, NOW - 1000, 1)])
    await system.route(stored.new)
    stop.set()
    async with asyncio.timeout(10):
        await parts
    assert log == ["ingest cancelled", "outputs cancelled, live A=1"]


def test_a_config_file_that_cannot_be_used_is_refused_naming_the_flag(tmp_path: Path) -> None:
    config = tmp_path / "headcount.toml"
    config.write_text('[[webhooks]]\nurl = "https://x/"\nspaces = "*"\nsecret = "short"\n')
    with pytest.raises(ConfigError, match=f"--config {config}: webhooks\\[0\\]: secret must be"):
        preflight(settings(config=config))
    with pytest.raises(ConfigError, match="cannot read it"):
        preflight(settings(config=tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="--publish-interval 0 must be above 0"):
        preflight(settings(publish_interval=0))


# -- preflight: the HTTP API beyond loopback ----------------------------------------------------


def settings(**given: Any) -> Settings:
    """Free ports; the embedded broker's own rule beyond loopback is tested below, not here."""
    return Settings(
        http_port=free_port(), mqtt_port=free_port(), insecure_open_broker=True, **given
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_tokens(host: str) -> None:
    preflight(settings(host=host))


@pytest.mark.parametrize("host", ["0.0.0.0", "", "192.0.2.1"])
def test_beyond_loopback_without_tokens_is_refused_naming_both_flags(host: str) -> None:
    with pytest.raises(ConfigError) as refused:
        preflight(settings(host=host))
    message = str(refused.value)
    assert f"--host {host} would open the HTTP API beyond this machine" in message
    assert "--tokens FILE" in message
    assert "--insecure-open-api" in message


def test_beyond_loopback_with_tokens_or_the_explicit_flag_is_let_through(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    add_token(tokens, "grafana", Scope.READ)
    preflight(settings(host="0.0.0.0", tokens=tokens))
    preflight(settings(host="0.0.0.0", insecure_open_api=True))


def test_a_tokens_file_that_cannot_be_used_is_refused_before_anything_opens(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"^--tokens: cannot read the tokens file .*missing"):
        preflight(settings(tokens=tmp_path / "missing.toml"))
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"^--tokens: tokens file .* holds no token"):
        preflight(settings(tokens=empty))


# --- the embedded broker beyond loopback -------------------------------------------------------


def open_settings() -> Settings:
    """Settings listening on every address (beyond loopback), on free ports; the HTTP API's
    own rule beyond loopback is tested above, not here."""
    return Settings(
        host="0.0.0.0", http_port=free_port(), mqtt_port=free_port(), insecure_open_api=True
    )


def test_the_embedded_broker_beyond_loopback_needs_dpu_auth_or_a_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        preflight(open_settings())
    assert "--dpu-auth DIR" in str(refused.value)
    assert "--insecure-open-broker" in str(refused.value)
    preflight(replace(open_settings(), insecure_open_broker=True))
    issue(["283"], tmp_path / "auth")
    preflight(replace(open_settings(), dpu_auth=tmp_path / "auth"))
    preflight(replace(open_settings(), host="127.0.0.1"))  # the demo's loopback: as before
    external = replace(open_settings(), broker_url="mqtt://broker.example:1883")
    preflight(external)  # an external broker guards itself


def test_dpu_auth_without_credentials_says_how_to_make_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="headcount dpus credentials --out"):
        preflight(Settings(http_port=free_port(), mqtt_port=free_port(), dpu_auth=tmp_path))


def test_many_dpu_accounts_on_the_embedded_broker_point_to_a_broker_of_its_own() -> None:
    assert storm_warning(EMBEDDED_AUTH_DPUS - 1) is None
    warning = storm_warning(1_000)
    assert warning is not None
    assert warning.startswith("1,000 DPU accounts log in to the broker inside this service")
    assert "'headcount broker --dpu-auth DIR'" in warning


async def test_the_topology_document_is_recorded_then_let_go(tmp_path: Path) -> None:
    """``serve`` records the file's document as the store's topology, then holds the parsed
    topology only (the text of 100,000 spaces is 32 MB)."""
    document = SEED.read_text()
    choice = TopologyChoice(Topology.from_toml(document), document, "the seed file")
    async with await EventStore.open(f"sqlite+aiosqlite:///{tmp_path / 's.db'}") as store:
        await _prepare_store(Settings(), choice, store)
        assert await store.topologies.current() == (document, "the seed file")
    assert choice.document is None

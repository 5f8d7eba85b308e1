"""DPU identity on the broker, end to end, on the embedded amqtt (``serve --dpu-auth``) and on
a Mosquitto the test starts with the files ``headcount dpus credentials`` wrote: a DPU cannot
publish as another, wrong passwords and anonymous clients are refused, the simulator logs in
per DPU, and nobody but the service gets the service's session."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from headcount.domain.events import Traversal
from headcount.domain.timefmt import parse_iso
from headcount.domain.topology import Topology
from headcount.ingest import wire
from headcount.ingest.broker import EmbeddedBroker, free_port
from headcount.ingest.credentials import SERVICE_USERNAME, issue
from headcount.ingest.mqtt import BrokerAddress, Received, Subscriber, parse_broker_url
from headcount.sim.errors import SimulatorError
from headcount.sim.truth import Truth
from tests.servers import MosquittoServer
from tests.sim.harness import Service, simulate

SEED = Path(__file__).resolve().parent.parent / "examples" / "seed" / "topology.toml"
BROKERS = ["amqtt", "mosquitto"]
TS = parse_iso("2024-03-05T09:00:00Z")
SERVICE_CLIENT_ID = "headcount-service"


@dataclass(frozen=True)
class Broker:
    kind: str
    host: str
    port: int
    passwords: dict[str, str]

    def as_user(self, username: str | None, password: str | None = None) -> BrokerAddress:
        return BrokerAddress(self.host, self.port, username, password)

    def as_dpu(self, dpu_id: str) -> BrokerAddress:
        return self.as_user(dpu_id, self.passwords[dpu_id])


class AuthService(Service):
    """``headcount serve --dpu-auth DIR --mqtt-out``: with the embedded broker on
    ``mqtt_port``, or on ``broker_url`` (no user: the service account comes from DIR). MQTT
    out is a second connection with the service's account, beside its session."""

    def __init__(self, tmp: Path, auth: Path, *, broker_url: str | None, mqtt_port: int) -> None:
        super().__init__(tmp, SEED, broker_url or "", SERVICE_CLIENT_ID)
        if broker_url is None:
            at = self.args.index("--broker")
            del self.args[at : at + 2]
            self.args += ["--mqtt-port", str(mqtt_port)]
        self.args += ["--dpu-auth", str(auth), "--mqtt-out"]


@pytest.fixture(params=BROKERS, ids=BROKERS)
async def served(
    request: pytest.FixtureRequest, tmp_path: Path, auth_dir: Path
) -> AsyncIterator[tuple[Broker, AuthService]]:
    """The service with DPU credentials on: amqtt inside it, or a Mosquitto of the test's."""
    passwords = issue(Topology.from_toml(SEED.read_text()).dpu_ids(), auth_dir)
    async with AsyncExitStack() as stack:
        if request.param == "amqtt":
            port = free_port()
            service = AuthService(tmp_path, auth_dir, broker_url=None, mqtt_port=port)
        else:
            config = (auth_dir / "mosquitto.conf").read_text()
            server = stack.enter_context(MosquittoServer(tmp_path / "mosquitto", config))
            port = server.port
            service = AuthService(tmp_path, auth_dir, broker_url=server.url, mqtt_port=0)
        await stack.enter_async_context(service)
        yield Broker(request.param, "127.0.0.1", port, passwords), service


async def publish(address: BrokerAddress, client_id: str, *messages: tuple[str, bytes]) -> None:
    async with aiomqtt.Client(
        address.host,
        address.port,
        username=address.username,
        password=address.password,
        identifier=client_id,
    ) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


async def refused(address: BrokerAddress, client_id: str, *, clean: bool = True) -> bool:
    """Whether the broker refuses this CONNECT."""
    try:
        async with aiomqtt.Client(
            address.host,
            address.port,
            username=address.username,
            password=address.password,
            identifier=client_id,
            clean_session=clean,
        ):
            return False
    except aiomqtt.MqttCodeError:
        return True


async def test_a_dpu_cannot_publish_as_another_and_counts_nothing(
    served: tuple[Broker, AuthService],
) -> None:
    broker, service = served
    spoof = wire.encode(Traversal("423", 1, TS, 1), with_dpu_id=False)  # A +1, B -1
    own = wire.encode(Traversal("283", 1, TS + 1000, 1), with_dpu_id=True)  # A +1
    await publish(
        broker.as_dpu("283"),
        "283",
        (wire.traversals_topic("423"), spoof),  # refused by the broker's ACL
        (wire.traversals_topic("283"), own),  # the same connection's next message
    )
    # Messages of one connection reach the service in order: once 283's own event counted,
    # the spoof would have been too. A is 1 (283's +1); with the spoof it would be 2.
    await service.settle({"A": 1, "B": 0})
    _, dpu = await service.get("/dpus/423")
    assert isinstance(dpu, dict)
    assert dpu["last_seq"] is None


async def test_mqtt_out_publishes_beside_the_services_session(
    served: tuple[Broker, AuthService],
) -> None:
    broker, service = served
    event = wire.encode(Traversal("283", 1, TS, 1), with_dpu_id=True)  # A +1
    await publish(broker.as_dpu("283"), "283", (wire.traversals_topic("283"), event))
    await service.settle({"A": 1})
    reader = broker.as_user(SERVICE_USERNAME, broker.passwords[SERVICE_USERNAME])
    async with aiomqtt.Client(
        reader.host,
        reader.port,
        username=reader.username,
        password=reader.password,
        identifier=f"{SERVICE_CLIENT_ID}-reader",
    ) as client:
        await client.subscribe("headcount/spaces/A/state", qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                if json.loads(message.payload)["count"] == 1:
                    break
    # The session was never replaced: a second event is counted too.
    second = wire.encode(Traversal("283", 2, TS + 1000, 1), with_dpu_id=True)
    await publish(broker.as_dpu("283"), "283", (wire.traversals_topic("283"), second))
    await service.settle({"A": 2})


async def test_wrong_passwords_and_anonymous_clients_cannot_connect(
    served: tuple[Broker, AuthService],
) -> None:
    broker, _ = served
    assert await refused(broker.as_user("283", "not-the-password"), "283")
    assert await refused(broker.as_user("283", broker.passwords["423"]), "283")
    assert await refused(broker.as_user(None), "283")
    assert await refused(broker.as_user(SERVICE_USERNAME, "guess"), SERVICE_CLIENT_ID)
    assert not await refused(broker.as_dpu("283"), "283")
    # A DPU's account may use its own id as client id and no other (Mosquitto: the dynamic
    # security plugin's client id of the account).
    assert await refused(broker.as_dpu("283"), "423")
    if broker.kind == "amqtt":  # (on Mosquitto this would replace the running service)
        service = broker.as_user(SERVICE_USERNAME, broker.passwords[SERVICE_USERNAME])
        assert await refused(service, "283")  # nor the service a DPU's


async def test_the_simulator_logs_in_per_dpu_and_is_counted(
    served: tuple[Broker, AuthService], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broker, service = served
    credentials = tmp_path / "dpus.tsv"
    credentials.write_text("".join(f"{n}\t{p}\n" for n, p in broker.passwords.items()))
    ran = await simulate(
        capsys,
        "--topology", SEED,
        "--start", "2024-03-05T06:00:00Z",
        "--duration", "6h",
        "--people", "30",
        "--speed", "20000",
        "--seed", "7",
        "--truth", tmp_path / "truth.csv",
        "--broker", f"mqtt://{broker.host}:{broker.port}",
        "--credentials", credentials,
    )  # fmt: skip
    assert ran.code == 0, ran.err
    assert ran.summary["acknowledged"] == ran.summary["events"] > 20
    truth = Truth.load(tmp_path / "truth.csv")
    await service.settle({space: truth.final(space) for space in ("A", "B")})
    _, status = await service.get("/dpus/283")
    assert isinstance(status, dict)
    assert status["last_seq"] is not None


async def test_the_simulator_without_a_password_for_a_dpu_says_which(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "dpus.tsv").write_text("283\tsecret\n")
    args: list[str | Path] = [
        "--topology", SEED, "--start", "2024-03-05T06:00:00Z", "--duration", "1h",
    ]  # fmt: skip
    with pytest.raises(SimulatorError, match="no password for DPU 423"):
        await simulate(
            capsys, *args, "--broker", f"mqtt://127.0.0.1:{free_port()}",
            "--credentials", tmp_path / "dpus.tsv",
        )  # fmt: skip


# --- the service's session ---------------------------------------------------------------------


@pytest.fixture(params=BROKERS, ids=BROKERS)
async def broker_alone(
    request: pytest.FixtureRequest, tmp_path: Path, auth_dir: Path
) -> AsyncIterator[tuple[Broker, BrokerAddress]]:
    """A broker with DPU credentials on, and the service's address on it."""
    passwords = issue(["283"], auth_dir)
    if request.param == "amqtt":
        async with EmbeddedBroker(port=0, data_dir=tmp_path / "b", dpu_auth=auth_dir) as amqtt:
            yield Broker("amqtt", amqtt.host, amqtt.port, passwords), parse_broker_url(amqtt.url)
        return
    config = (auth_dir / "mosquitto.conf").read_text()
    with MosquittoServer(tmp_path / "mosquitto", config) as server:
        broker = Broker("mosquitto", "127.0.0.1", server.port, passwords)
        yield broker, broker.as_user(SERVICE_USERNAME, passwords[SERVICE_USERNAME])


async def received(subscriber: Subscriber, count: int) -> list[Received]:
    messages: list[Received] = []
    async with asyncio.timeout(20):
        async for message in subscriber.messages():
            messages.append(message)
            await subscriber.ack(message)
            if len(messages) == count:
                return messages
    raise AssertionError("unreachable: messages() never ends")


async def test_nobody_but_the_service_gets_its_session(
    broker_alone: tuple[Broker, BrokerAddress],
) -> None:
    broker, service = broker_alone
    topics = [wire.SUBSCRIPTION]
    async with Subscriber(service, client_id=SERVICE_CLIENT_ID, topics=topics):
        pass  # the persistent session exists, subscribed; the service is now away
    payloads = [wire.encode(Traversal("283", seq, TS + seq, 1)) for seq in range(5)]
    await publish(
        broker.as_dpu("283"), "283", *[(wire.traversals_topic("283"), p) for p in payloads]
    )
    intruders = [
        (broker.as_user(None), True),
        (broker.as_user(None), False),
        (broker.as_user(SERVICE_USERNAME, "guess"), True),
        (broker.as_user(SERVICE_USERNAME, "guess"), False),
    ]
    for address, clean in intruders:
        assert await refused(address, SERVICE_CLIENT_ID, clean=clean), (address, clean)
    for clean in (True, False):
        # A DPU's account with the service's client id: refused by both brokers.
        assert await refused(broker.as_dpu("283"), SERVICE_CLIENT_ID, clean=clean)
    async with Subscriber(service, client_id=SERVICE_CLIENT_ID, topics=topics) as subscriber:
        got = await received(subscriber, len(payloads))
    assert [m.payload for m in got] == payloads


async def test_the_services_connections_live_side_by_side_and_follow_its_states(
    broker_alone: tuple[Broker, BrokerAddress],
) -> None:
    """The service opens several connections with its one account (its subscriber, MQTT out,
    a sharded process's follower of the other shards' states): none may replace another, and
    the follower may read the states the service publishes under ``headcount/``."""
    broker, service = broker_alone
    state_topic = "headcount/spaces/A/state"
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                aiomqtt.Client(
                    service.host,
                    service.port,
                    username=service.username,
                    password=service.password,
                    identifier=client_id,
                )
            )
            for client_id in (SERVICE_CLIENT_ID, f"{SERVICE_CLIENT_ID}-out", "follower")
        ]
        subscriber, publisher, follower = clients
        await subscriber.subscribe(wire.SUBSCRIPTION, qos=1)
        await publisher.publish(state_topic, b'{"count": 3}', qos=1, retain=True)
        await follower.subscribe("headcount/spaces/+/state", qos=1)
        await publish(
            broker.as_dpu("283"),
            "283",
            (wire.traversals_topic("283"), wire.encode(Traversal("283", 1, TS, 1))),
        )
        async with asyncio.timeout(10):
            async for message in follower.messages:
                assert (str(message.topic), message.payload) == (state_topic, b'{"count": 3}')
                break
            async for message in subscriber.messages:
                assert str(message.topic) == wire.traversals_topic("283")
                break
        # Every connection is still the one it was: a replaced one would have been dropped.
        await publisher.publish(state_topic, b'{"count": 4}', qos=1, retain=True)
        async with asyncio.timeout(10):
            async for message in follower.messages:
                assert message.payload == b'{"count": 4}'
                break

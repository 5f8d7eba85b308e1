"""The embedded amqtt broker: ports, credentials, anonymous DPUs, config overrides."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import quote

import aiomqtt
import pytest

from headcount.ingest.broker import (
    PASSWORD_ENV,
    BrokerError,
    Credentials,
    EmbeddedBroker,
    free_port,
)
from headcount.ingest.mqtt import Subscriber, parse_broker_url

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = ROOT / "broker_config" / "amqtt.yaml"


async def connect(port: int, username: str | None = None, password: str | None = None) -> None:
    async with aiomqtt.Client(
        "127.0.0.1", port, username=username, password=password, identifier="probe"
    ):
        pass


async def test_starts_on_a_free_port_and_lets_the_service_in(tmp_path: Path) -> None:
    port = free_port()
    async with EmbeddedBroker(port=port, data_dir=tmp_path) as broker:
        credentials = broker.service_credentials()
        assert credentials.username == "headcount"
        assert broker.url == (
            f"mqtt://headcount:{quote(credentials.password, safe='')}@127.0.0.1:{port}"
        )
        await connect(port, credentials.username, credentials.password)
        assert "headcount:$argon2" in (tmp_path / "broker.passwd").read_text()


async def test_port_zero_picks_a_free_port() -> None:
    async with EmbeddedBroker(port=0) as broker:
        assert broker.port > 0
        await connect(broker.port)


async def test_a_taken_port_is_a_clear_error() -> None:
    async with EmbeddedBroker(port=0) as first:
        with pytest.raises(BrokerError, match=f"port {first.port} .* already in use"):
            async with EmbeddedBroker(port=first.port):
                pass
        await connect(first.port)  # the first broker is unharmed


async def test_a_wrong_service_password_is_refused() -> None:
    async with EmbeddedBroker(port=0) as broker:
        with pytest.raises(aiomqtt.MqttError):
            await connect(broker.port, "headcount", "not-the-password")
        with pytest.raises(aiomqtt.MqttError):
            await connect(broker.port, "someone-else", broker.service_credentials().password)


async def test_anonymous_dpus_reach_the_service() -> None:
    async with EmbeddedBroker(port=0) as broker:
        topic = "dpus/283/traversals"
        address = parse_broker_url(broker.url)
        async with Subscriber(address, client_id="svc", topics=[topic]) as sub:
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="dpu-283") as dpu:
                await dpu.publish(topic, b"traversal", qos=1)
            async with asyncio.timeout(5):
                received = await anext(sub.messages())
            await sub.ack(received)
    assert received.payload == b"traversal"


async def test_password_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "p@ss word")
    async with EmbeddedBroker(port=0) as broker:
        assert broker.service_credentials() == Credentials("headcount", "p@ss word")
        assert broker.url.startswith("mqtt://headcount:p%40ss%20word@")
        await connect(broker.port, "headcount", "p@ss word")


def stored_hash(data_dir: Path, username: str) -> str:
    lines = (data_dir / "broker.passwd").read_text().splitlines()
    return next(line.partition(":")[2] for line in lines if line.startswith(f"{username}:"))


async def test_a_password_made_at_random_is_hashed_light_and_one_given_strong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's own password, 144 random bits, gets Argon2 at its lightest (8 KiB):
    the defaults held 64 MiB at start and again at its connection, the peak of a restart at
    100,000 spaces. A password the operator gives keeps the defaults (64 MiB, three passes).
    Both let the service in and nobody else."""
    made, given = tmp_path / "made", tmp_path / "given"
    async with EmbeddedBroker(port=0, data_dir=made) as broker:
        credentials = broker.service_credentials()
        assert stored_hash(made, "headcount").startswith("$argon2id$v=19$m=8,t=1,p=1$")
        await connect(broker.port, credentials.username, credentials.password)
        with pytest.raises(aiomqtt.MqttError):
            await connect(broker.port, "headcount", credentials.password[:-1])
    monkeypatch.setenv(PASSWORD_ENV, "chosen by hand")
    async with EmbeddedBroker(port=0, data_dir=given) as broker:
        assert stored_hash(given, "headcount").startswith("$argon2id$v=19$m=65536,t=3,p=4$")
        await connect(broker.port, "headcount", "chosen by hand")


def test_credentials_repr_hides_the_password() -> None:
    assert "secret" not in repr(Credentials("headcount", "secret"))


async def test_the_shipped_config_starts(tmp_path: Path) -> None:
    port = free_port()
    async with EmbeddedBroker(port=port, config_file=SHIPPED_CONFIG, data_dir=tmp_path) as broker:
        await connect(port)  # DPUs, anonymous
        credentials = broker.service_credentials()
        await connect(port, credentials.username, credentials.password)


async def test_a_config_file_can_require_credentials_from_dpus(tmp_path: Path) -> None:
    dpu_users = tmp_path / "dpus.passwd"
    dpu_users.write_text("# DPU accounts would be listed here\n")
    config = tmp_path / "amqtt.yaml"
    config.write_text(
        f"""
listeners:
  default:
    bind: 127.0.0.1:{free_port()}
plugins:
  headcount.ingest.broker.ServiceAuthPlugin:
    allow_anonymous: false
    password_file: {dpu_users}
"""
    )
    async with EmbeddedBroker(config_file=config, data_dir=tmp_path / "data") as broker:
        with pytest.raises(aiomqtt.MqttError):
            await connect(broker.port)
        credentials = broker.service_credentials()
        await connect(broker.port, credentials.username, credentials.password)
    assert dpu_users.read_text() == "# DPU accounts would be listed here\n"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("listeners: [", "cannot read"),
        ("- a list", "must be a mapping"),
        ("listeners:\n  default:\n    bind: nowhere\n", "not HOST:PORT"),
        (
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n",
            "service's session anonymous",
        ),
    ],
    ids=["yaml", "not-a-mapping", "bind", "anonymous-plugin"],
)
def test_a_bad_config_file_is_a_clear_error(tmp_path: Path, content: str, problem: str) -> None:
    config = tmp_path / "amqtt.yaml"
    config.write_text(content)
    with pytest.raises(BrokerError, match=problem):
        EmbeddedBroker(config_file=config)


def test_a_config_file_that_is_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "amqtt.yaml"
    config.write_bytes(b"listeners:\n  default:\n    bind: 127.0.0.1:1883 # \xff\n")
    with pytest.raises(BrokerError, match=r"cannot read the broker config .*utf-8"):
        EmbeddedBroker(config_file=config)


async def test_an_unknown_setting_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "amqtt.yaml"
    config.write_text("no_such_setting: 1\n")
    with pytest.raises(BrokerError, match="cannot start the embedded MQTT broker"):
        async with EmbeddedBroker(port=0, config_file=config):
            pass

"""pytest plugin for tests that need an MQTT broker; register it with
``pytest_plugins = ["tests.mqtt_fixtures"]``. Test modules need not import it: the
fixtures carry everything (``MqttNames`` is importable for type hints).

``broker_url`` runs a test on each broker: the embedded amqtt broker, started on a free port
for the test; a real Mosquitto named by ``$HEADCOUNT_TEST_MQTT_URL`` (skipped when unset;
CI sets it), configured as the machine has it (Debian's stock limits); and a Mosquitto started
once per session from the project's ``broker_config/mosquitto.conf`` (the layout the README
recommends) on a free port, its persistence in a temporary directory (skipped when Mosquitto is
not installed). The Mosquittos are shared, so ``mqtt_names`` (and its shortcuts ``mqtt_topic``
and ``mqtt_client_id``) gives names unique to the test, and the persistent sessions of the
client ids it handed out are dropped after the test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest

from headcount.ingest.broker import EmbeddedBroker
from headcount.ingest.mqtt import parse_broker_url

MQTT_ENV = "HEADCOUNT_TEST_MQTT_URL"
BROKERS = ["amqtt", "mosquitto", "mosquitto-project"]
#: Every broker_url parameter that is a Mosquitto.
MOSQUITTOS = ["mosquitto", "mosquitto-project"]
PROJECT_CONF = Path(__file__).resolve().parent.parent / "broker_config" / "mosquitto.conf"


@pytest.fixture(scope="session")
def project_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mqtt://`` of a Mosquitto run from broker_config/mosquitto.conf for the whole session."""
    from tests.servers import MosquittoServer  # skips when Mosquitto is not installed

    config = PROJECT_CONF.read_text(encoding="utf-8")
    with MosquittoServer(tmp_path_factory.mktemp("mosquitto-project"), config) as server:
        yield server.url


@pytest.fixture(params=BROKERS, ids=BROKERS)
async def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """``mqtt://...`` of a broker for this test, with the service's credentials if it has any.
    The test's parameter (``amqtt``, ``mosquitto`` or ``mosquitto-project``) says which broker
    it is."""
    if request.param == "amqtt":
        async with EmbeddedBroker(port=0, data_dir=tmp_path / "broker") as broker:
            yield broker.url
        return
    if request.param == "mosquitto-project":
        yield request.getfixturevalue("project_mosquitto")
        return
    url = os.environ.get(MQTT_ENV)
    if not url:
        pytest.skip(f"Mosquitto tests need {MQTT_ENV}, e.g. mqtt://127.0.0.1:1883 (CI sets it)")
    yield url


@dataclass(frozen=True)
class MqttNames:
    """Names unique to one test: its DPU id, topics and client ids."""

    token: str
    used_client_ids: set[str] = field(default_factory=set, compare=False, repr=False)

    @property
    def dpu_id(self) -> str:
        return f"test-{self.token}"

    def topic(self, dpu_id: str | None = None) -> str:
        """The traversals topic of ``dpu_id`` (default: this test's DPU)."""
        return f"dpus/{dpu_id or self.dpu_id}/traversals"

    def client_id(self, role: str = "service") -> str:
        """A client id for ``role``; its persistent session is dropped after the test."""
        client_id = f"headcount-test-{self.token}-{role}"
        self.used_client_ids.add(client_id)
        return client_id


@pytest.fixture
async def mqtt_names(broker_url: str) -> AsyncIterator[MqttNames]:
    names = MqttNames(uuid.uuid4().hex[:12])
    yield names
    address = parse_broker_url(broker_url)
    for client_id in sorted(names.used_client_ids):
        async with aiomqtt.Client(
            address.host,
            address.port,
            username=address.username,
            password=address.password,
            identifier=client_id,
            clean_session=True,
        ):
            pass


@pytest.fixture
def mqtt_topic(mqtt_names: MqttNames) -> str:
    """The traversals topic of this test's DPU."""
    return mqtt_names.topic()


@pytest.fixture
def mqtt_client_id(mqtt_names: MqttNames) -> str:
    """The client id of this test's service subscriber."""
    return mqtt_names.client_id()

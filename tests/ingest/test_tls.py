"""MQTT over TLS with certificates made in the test: the embedded broker's listener, a Mosquitto
with a TLS listener, and the clear errors for an untrusted certificate, a certificate of
another name, plaintext on a TLS port and TLS on a plaintext port."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aiomqtt
import pytest

from headcount.errors import ConfigError
from headcount.ingest.broker import EmbeddedBroker
from headcount.ingest.mqtt import (
    BrokerAddress,
    Subscriber,
    SubscriberError,
    parse_broker_url,
    tls_context,
)
from headcount.ingest.tls import ClientTls, ServerTls
from tests.certificates import Certificates, make_certificates
from tests.servers import MosquittoServer

# paho leaves the socket of a failed TLS handshake to the garbage collector (see connect_error).
pytestmark = pytest.mark.filterwarnings("ignore:unclosed <ssl.SSLSocket:ResourceWarning")


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    """Certificates for ``localhost`` and 127.0.0.1."""
    return make_certificates(tmp_path / "certs", "localhost", "127.0.0.1")


@pytest.fixture
async def tls_broker(tmp_path: Path, certificates: Certificates) -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker(port=0, data_dir=tmp_path / "broker", tls=certificates.server) as b:
        yield b


async def receive_one(address: BrokerAddress, publisher: BrokerAddress, topic: str) -> bytes:
    """Subscribe at ``address``, publish once at ``publisher``, return what arrived."""
    async with Subscriber(address, client_id=f"tls-{topic}", topics=[topic]) as subscriber:
        async with aiomqtt.Client(
            publisher.host,
            publisher.port,
            username=publisher.username,
            password=publisher.password,
            tls_context=tls_context(publisher),
        ) as client:
            await client.publish(topic, b"over tls", qos=1)
        async with asyncio.timeout(10):
            received = await anext(subscriber.messages())
        await subscriber.ack(received)
    return received.payload


async def connect_error(address: BrokerAddress) -> str:
    with pytest.raises(SubscriberError) as caught:
        async with Subscriber(address, client_id="tls-refused", topics=["t"]):
            pass
    error = str(caught.value)
    # paho leaves the socket of a failed TLS handshake for the garbage collector, which warns
    # (ResourceWarning) whenever it gets to it: collect it now, while that is expected.
    del caught
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    return error


async def test_the_embedded_broker_serves_tls_to_the_service_and_to_dpus(
    tls_broker: EmbeddedBroker, certificates: Certificates
) -> None:
    service = tls_broker.service_address()
    assert service.tls is not None
    dpu = parse_broker_url(f"mqtts://localhost:{tls_broker.port}?ca={certificates.ca}")
    assert await receive_one(service, dpu, "dpus/7/traversals") == b"over tls"


async def test_the_service_trusts_its_own_broker_whatever_name_the_certificate_carries(
    tmp_path: Path,
) -> None:
    """A certificate for the building's public name, signed by a CA this machine does not
    know: the service inside the process still connects, to 127.0.0.1, trusting exactly that
    certificate; a client trusting the system's CAs does not."""
    files = make_certificates(tmp_path / "certs", "broker.example.com")
    async with EmbeddedBroker(port=0, data_dir=tmp_path / "broker", tls=files.server) as broker:
        service = broker.service_address()
        assert (service.host, service.port) == ("127.0.0.1", broker.port)
        assert await receive_one(service, service, "dpus/8/traversals") == b"over tls"
        error = await connect_error(parse_broker_url(f"mqtts://127.0.0.1:{broker.port}"))
        assert "not trusted" in error
        assert "?ca=FILE" in error


async def test_the_broker_url_of_a_tls_broker_trusts_its_certificate(
    tls_broker: EmbeddedBroker, certificates: Certificates
) -> None:
    url = tls_broker.url
    assert url.startswith("mqtts://headcount:")
    assert url.endswith(f"@127.0.0.1:{tls_broker.port}?ca={quote(str(certificates.chain))}")
    address = parse_broker_url(url)
    assert await receive_one(address, address, "dpus/9/traversals") == b"over tls"


async def test_an_untrusted_certificate_is_refused_naming_the_ca_parameter(
    tls_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    stranger = make_certificates(tmp_path / "other", "localhost")  # another CA
    url = f"mqtts://127.0.0.1:{tls_broker.port}?ca={stranger.ca}"
    error = await connect_error(parse_broker_url(url))
    assert "certificate" in error
    assert "not trusted" in error
    assert "?ca=FILE" in error


async def test_a_certificate_for_another_name_is_refused_saying_so(
    tmp_path: Path,
) -> None:
    files = make_certificates(tmp_path / "certs", "broker.example.com")
    async with EmbeddedBroker(port=0, data_dir=tmp_path / "broker", tls=files.server) as broker:
        error = await connect_error(
            parse_broker_url(f"mqtts://127.0.0.1:{broker.port}?ca={files.ca}")
        )
    assert "does not carry that name" in error
    assert "127.0.0.1" in error


async def test_plaintext_on_the_tls_port_is_refused_pointing_to_mqtts(
    tls_broker: EmbeddedBroker,
) -> None:
    error = await connect_error(BrokerAddress("127.0.0.1", tls_broker.port))
    assert "use an mqtts:// broker URL" in error


async def test_tls_on_a_plaintext_port_is_refused_pointing_to_mqtt(tmp_path: Path) -> None:
    async with EmbeddedBroker(port=0, data_dir=tmp_path / "broker") as plain:
        error = await connect_error(parse_broker_url(f"mqtts://127.0.0.1:{plain.port}"))
    assert "use an mqtt:// URL, not mqtts://" in error


async def test_mosquitto_with_a_tls_listener(tmp_path: Path, certificates: Certificates) -> None:
    """A Mosquitto of the test's own, TLS only: the subscriber and a DPU trust its private CA
    by ``?ca=``; without it the certificate is refused, and plaintext is too."""
    options = [f"certfile {certificates.chain}", f"keyfile {certificates.key}"]
    # Started as root, Mosquitto becomes the user 'mosquitto', who may not read pytest's
    # private temporary directory; 'user root' keeps it as it was started (else ignored).
    config = "allow_anonymous true\nuser root\n"
    with MosquittoServer(tmp_path / "mosquitto", config, listener_options=options) as mosquitto:
        url = f"mqtts://localhost:{mosquitto.port}?ca={certificates.ca}"
        address = parse_broker_url(url)
        assert await receive_one(address, address, "dpus/10/traversals") == b"over tls"
        untrusted = await connect_error(parse_broker_url(f"mqtts://localhost:{mosquitto.port}"))
        assert "not trusted" in untrusted
        plaintext = await connect_error(BrokerAddress("127.0.0.1", mosquitto.port))
        assert "use an mqtts:// broker URL" in plaintext


def test_a_key_that_is_not_the_certificates_is_a_config_error(tmp_path: Path) -> None:
    one = make_certificates(tmp_path / "one", "localhost")
    other = make_certificates(tmp_path / "other", "localhost")
    with pytest.raises(ConfigError, match="--mqtt-tls-cert and --mqtt-tls-key"):
        ServerTls(one.chain, other.key).check()
    with pytest.raises(ConfigError, match="--mqtt-tls-cert and --mqtt-tls-key"):
        ServerTls(tmp_path / "missing.pem", one.key).check()
    ServerTls(one.chain, one.key).check()


def test_a_missing_ca_file_is_a_config_error_naming_the_parameter(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"check \?ca= in the mqtts:// broker URL"):
        tls_context(parse_broker_url(f"mqtts://h?ca={tmp_path / 'missing.pem'}"))


def test_a_certificate_file_without_a_certificate_is_a_config_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="--mqtt-tls-cert"):
        ServerTls(empty, empty).first_certificate()


def test_pinning_trusts_the_first_certificate_only(certificates: Certificates) -> None:
    """The chain file's intermediates must not become trust anchors of a connection that
    checks no host name: only the broker's own certificate does."""
    pem = certificates.server.first_certificate()
    assert pem.count("BEGIN CERTIFICATE") == 1
    assert certificates.chain.read_text().startswith(pem)
    context = tls_context(BrokerAddress("h", tls=ClientTls(pinned_pem=pem)))
    assert context is not None
    assert context.cert_store_stats()["x509"] == 1
    assert not context.check_hostname

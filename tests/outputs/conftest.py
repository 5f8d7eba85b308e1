from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from headcount.outputs.payloads import Topics


@pytest.fixture(scope="package")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The port of a Mosquitto of these tests' own (started once for them)."""
    from tests.servers import MosquittoServer  # skips when Mosquitto is not installed

    with MosquittoServer(tmp_path_factory.mktemp("mosquitto-out")) as server:
        yield server.port


@pytest.fixture
def topics() -> Topics:
    """Topics of this test's own."""
    token = uuid.uuid4().hex[:10]
    return Topics(root=f"hc-{token}", discovery=f"ha-{token}")

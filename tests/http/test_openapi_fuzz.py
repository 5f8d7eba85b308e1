"""Schemathesis over ``/openapi.json`` against a running service: ``headcount serve --demo``
as a subprocess on free ports (its own SQLite store with the seed's 530 events, its embedded
broker). Every generated request must get an answer that the document describes: no 5xx,
status codes, content types, headers and bodies as documented.

The service runs with API tokens (``--tokens FILE``, a read token), as a deployment beyond
loopback must: every generated request carries the token, and the same generated requests
without it must all be 401, but ``/healthz``'s.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import pytest
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

from headcount.http.limits import Limits
from headcount.http.openapi import document
from headcount.http.tokens import Scope, add_token
from headcount.ingest.broker import free_port
from tests.fuzzing import fuzz

#: Generated cases per operation (every operation of the document but the live push's two).
CASES_PER_OPERATION: Final = 20
#: The fields a schema-valid request can still get wrong against another field or the clock.
CROSS_FIELD: Final = ("end_time: ", "ts: ")
#: What a schema-valid request may still get (no token's scope, no such space or DPU, a
#: conflicting reset, a rate limit); 5xx fail the built-in checks.
ACCEPTED_REFUSALS: Final = frozenset({401, 403, 404, 409, 429})
#: The routes open without a token.
OPEN_PATHS: Final = frozenset({"/healthz"})


@dataclass(frozen=True)
class Service:
    url: str
    #: What every request with the token carries.
    auth: dict[str, str]


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A running ``headcount serve --demo --tokens FILE`` (seed topology and data)."""
    tmp = tmp_path_factory.mktemp("service")
    token = add_token(tmp / "tokens.toml", "schemathesis", Scope.READ)
    http = free_port()
    log = tmp / "service.log"
    args = [
        sys.executable, "-m", "headcount", "serve", "--demo",
        "--store", f"sqlite+aiosqlite:///{tmp / 'store.db'}",
        "--http-port", str(http), "--mqtt-port", str(free_port()),
        "--tokens", str(tmp / "tokens.toml"),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{http}"
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while _status(f"{url}/healthz") != 200:
            assert process.poll() is None, f"the service ended:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the service did not start:\n{log.read_text()}"
            time.sleep(0.1)
        yield Service(url, {"Authorization": f"Bearer {token}"})
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text, text
    assert token not in text


def test_the_service_serves_this_document(service: Service) -> None:
    request = urllib.request.Request(f"{service.url}/openapi.json", headers=service.auth)
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.load(response) == document()


#: The operations come from the document the service serves (checked above), so that pytest
#: can list one test per operation before the service runs.
#: Valid requests and invalid ones (malformed ids and times, wrong types): both must get a
#: documented answer.
#: The live push never ends an answer (a stream, a WebSocket): tests/http/test_live.py covers it.
schema = schemathesis.openapi.from_dict(document()).exclude(path_regex="^/live")
schema.config.generation.update(
    modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
)


@schema.parametrize()
@fuzz(CASES_PER_OPERATION)
def test_every_answer_matches_the_document(case: Any, service: Service) -> None:
    response = case.call_and_validate(
        base_url=service.url, headers=service.auth, excluded_checks=[positive_data_acceptance]
    )
    # A request the document allows may still break a rule between two fields, which a schema
    # cannot state (end_time after start_time, a window of at most so many days, a reset no
    # later than now): that 400 names the field, as the description does.
    # Any other refusal of a schema-valid request fails, as schemathesis's own check would.
    if case.meta.generation.mode == schemathesis.GenerationMode.POSITIVE:
        if response.status_code == 400:
            detail = response.json()["detail"]
            assert detail.startswith(CROSS_FIELD), detail
        else:
            assert response.status_code < 400 or response.status_code in ACCEPTED_REFUSALS, (
                response.status_code,
                response.text,
            )


@schema.parametrize()
@fuzz(CASES_PER_OPERATION // 2)
def test_without_a_token_every_route_but_healthz_is_401(case: Any, service: Service) -> None:
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    response = case.call(base_url=service.url)
    if case.operation.path in OPEN_PATHS and case.method.upper() == "GET":
        assert response.status_code != 401  # (another method on it is 401: no route matched)
    elif _parameters(response.request.url) > Limits().query_params:
        assert response.status_code == 400, response.text  # the query limit comes first
    else:
        assert response.status_code == 401, response.text
        [challenge] = response.headers["www-authenticate"]  # schemathesis: lower case, lists
        assert challenge.startswith("Bearer")
        assert "detail" in response.json()


def _parameters(url: str | None) -> int:
    """How many query parameters the request as sent has, counted as the server counts them
    (the case's own query says nothing of values the client drops or repeats)."""
    return len(parse_qsl(urlsplit(url or "").query, keep_blank_values=True))


#: Generated ids almost never name a space or DPU the seed has: these requests make sure the
#: documented 200 answers (with the seed's data) are checked too, now and in the past.
SEED_REQUESTS: Final = [
    (path, params, query)
    for path, params in [
        ("/space/{space_id}/count", {"space_id": "A"}),
        ("/spaces/{space_id}/count", {"space_id": "B"}),
        ("/spaces/{space_id}", {"space_id": "A"}),
        ("/dpus/{dpu_id}", {"dpu_id": "423"}),
        ("/dpus/{dpu_id}/health", {"dpu_id": "283"}),
    ]
    for query in [{}, {"ts": "2018-02-27T00:00:00Z"}, {"ts": "2018-02-26T09:00:00+01:00"}]
    if "count" in path or not query
] + [
    (f"/spaces/{{space_id}}/{what}", {"space_id": space}, {**window, **more})
    for what, more in [("events", {"page_size": "3"}), ("events", {"order": "asc"}), ("resets", {})]
    for space in ("A", "B")
    for window in [{"start_time": "2018-02-26T00:00:00Z", "end_time": "2018-02-27T00:00:00Z"}]
]


@pytest.mark.parametrize(
    ("path", "params", "query"),
    [
        pytest.param(*request, id=f"{request[0]}-{request[1]}-{request[2]}")
        for request in SEED_REQUESTS
    ],
)
def test_the_seeds_own_ids_are_answered_as_documented(
    service: Service, path: str, params: dict[str, str], query: dict[str, str]
) -> None:
    case = schema[path]["GET"].Case(path_parameters=params, query=query)
    response = case.call_and_validate(base_url=service.url, headers=service.auth)
    assert response.status_code == 200

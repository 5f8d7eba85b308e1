from __future__ import annotations

import asyncio
import json
import logging
import random

import pytest

from headcount.ingest.mqtt import Backoff
from headcount.metrics import Metrics
from headcount.outputs.alerts import Alert, AlertState
from headcount.outputs.config import Webhook
from headcount.outputs.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Retry,
    Webhooks,
    signature,
    verify,
)
from tests.outputs.receiver import receiving
from tests.polling import eventually

SECRET = "0123456789abcdef-secret"
NOW_MS = 1_764_500_000_000


def alert(space_id: str = "A", state: AlertState = AlertState.OVER, ts: int = 1) -> Alert:
    return Alert(space_id, ts, state, 10, 10, 10)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(f"headcount_{name}_total", labels) or 0.0


class Sleeps:
    """An injected sleep: records each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    body = b'{"a":1}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature(SECRET, "1700000000", body) == f"sha256={expected}"
    assert verify(SECRET, "1700000000", body, f"sha256={expected}")
    assert not verify(SECRET, "1700000001", body, f"sha256={expected}")
    assert not verify("another-secret-xxxx", "1700000000", body, f"sha256={expected}")


async def test_a_failing_receiver_gets_the_alert_once_it_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "headcount.outputs.webhooks")
    metrics = Metrics()
    sleeps = Sleeps()
    async with receiving(fail=3) as receiver:
        hook = Webhook("ops", receiver.url, None, SECRET)
        webhooks = Webhooks(
            [hook],
            metrics=metrics,
            retry=Retry(attempts=5, backoff=Backoff(initial=1.0, maximum=8.0)),
            clock=lambda: NOW_MS,
            sleep=sleeps,
            rng=random.Random(7),
        )
        async with asyncio.TaskGroup() as tasks:
            delivering = tasks.create_task(webhooks.run())
            webhooks.notify(alert())  # returns at once: nothing is sent in the caller's time
            assert receiver.requests == []
            await eventually(lambda: len(receiver.accepted) == 1, what="the delivery")
            delivering.cancel()
    assert [r.status for r in receiver.requests] == [500, 500, 500, 200]
    deliveries = {r.headers[DELIVERY_HEADER] for r in receiver.requests}
    assert len(deliveries) == 1  # one alert, the same id on every attempt
    got = receiver.accepted[0]
    assert json.loads(got.body) == json.loads(alert().payload())
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers[TIMESTAMP_HEADER] == str(NOW_MS // 1000)
    assert verify(SECRET, got.headers[TIMESTAMP_HEADER], got.body, got.headers[SIGNATURE_HEADER])
    # Full jitter under a doubling bound: 1, 2, 4.
    assert len(sleeps.delays) == 3
    assert all(0 <= d <= bound for d, bound in zip(sleeps.delays, [1, 2, 4], strict=True))
    assert sample(metrics, "webhook_failures", webhook="ops") == 3
    assert sample(metrics, "webhook_deliveries", webhook="ops") == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "logged once per outage, not per attempt"
    assert "webhook ops (http://127.0.0.1" in warnings[0].getMessage()
    assert SECRET not in caplog.text
    assert any("delivers again, after 3 failed attempts" in r.getMessage() for r in caplog.records)


async def test_attempts_are_bounded_and_the_queue_drops_the_oldest() -> None:
    metrics = Metrics()
    sleeps = Sleeps()
    async with receiving(fail=1000) as receiver:
        webhooks = Webhooks(
            [Webhook("dead", receiver.url, frozenset({"A"}), SECRET)],
            metrics=metrics,
            retry=Retry(attempts=2, queue=2),
            clock=lambda: NOW_MS,
            sleep=sleeps,
        )
        for ts in range(1, 6):
            webhooks.notify(alert(ts=ts))  # before the worker runs: 3 oldest make room
        webhooks.notify(alert("B"))  # a space this webhook does not want
        async with asyncio.TaskGroup() as tasks:
            delivering = tasks.create_task(webhooks.run())
            await eventually(lambda: len(receiver.requests) == 4, what="2 alerts x 2 attempts")
            await eventually(
                lambda: sample(metrics, "webhook_dropped", webhook="dead", reason="attempts") == 2
            )
            delivering.cancel()
    sent = [json.loads(r.body)["ts"] for r in receiver.requests]
    assert sent == ["1970-01-01T00:00:00.004Z"] * 2 + ["1970-01-01T00:00:00.005Z"] * 2
    assert sample(metrics, "webhook_dropped", webhook="dead", reason="queue_full") == 3
    assert sample(metrics, "webhook_failures", webhook="dead") == 4
    assert sample(metrics, "webhook_deliveries", webhook="dead") == 0


async def test_an_unreachable_receiver_is_a_failure_not_a_crash() -> None:
    from headcount.ingest.broker import free_port

    metrics = Metrics()
    url = f"http://127.0.0.1:{free_port('127.0.0.1')}/nobody"
    webhooks = Webhooks(
        [Webhook("gone", url, None, SECRET)],
        metrics=metrics,
        retry=Retry(attempts=3),
        sleep=Sleeps(),
    )
    webhooks.notify(alert())
    async with asyncio.TaskGroup() as tasks:
        delivering = tasks.create_task(webhooks.run())
        await eventually(
            lambda: sample(metrics, "webhook_dropped", webhook="gone", reason="attempts") == 1
        )
        delivering.cancel()
    assert sample(metrics, "webhook_failures", webhook="gone") == 3


def test_the_readme_shows_a_receiver_check_that_accepts_our_signature() -> None:
    import re
    from pathlib import Path

    import time_machine

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    code = next(block for block in blocks if "X-Headcount-Signature" in block)
    namespace: dict[str, object] = {}
    exec(code, namespace)
    readme_verify = namespace["verify"]
    assert callable(readme_verify)
    body = alert().payload()
    ts = str(NOW_MS // 1000)
    headers = {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: signature(SECRET, ts, body)}
    old = str(NOW_MS // 1000 - 3600)
    stale = {TIMESTAMP_HEADER: old, SIGNATURE_HEADER: signature(SECRET, old, body)}
    with time_machine.travel(NOW_MS / 1000 + 10, tick=False):  # the receiver's clock
        assert readme_verify(SECRET, headers, body)
        assert not readme_verify(SECRET, headers, body + b" ")
        assert not readme_verify(SECRET, stale, body)

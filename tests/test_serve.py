"""``headcount serve`` as a person runs it: the demo, taken ports, a clean stop, tokens, TLS; and
``headcount broker``, the embedded broker in a process of its own."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import aiomqtt
import msgpack
import pytest

from headcount.domain.timefmt import format_ms, parse_iso
from headcount.http.tokens import Scope, add_token
from headcount.ingest.broker import free_port
from headcount.ingest.credentials import issue
from headcount.ingest.mqtt import parse_broker_url, tls_context
from headcount.sim.truth import Truth
from tests.certificates import make_certificates
from tests.serve_process import stop_serving, wait_healthy
from tests.sim.harness import simulate


def serve(*args: str, tmp: Path) -> list[str]:
    return [
        sys.executable, "-m", "headcount", "serve",
        "--store", f"sqlite+aiosqlite:///{tmp / 'store.db'}", *args,
    ]  # fmt: skip


def refusal(command: list[str]) -> str:
    """Run ``command``, which must be refused as a usage error (exit 2) in one line; the line."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_taken_port_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for flag in ("--http-port", "--mqtt-port"):
            other = "--mqtt-port" if flag == "--http-port" else "--http-port"
            line = refusal(serve("--demo", flag, port, other, str(free_port()), tmp=tmp_path))
            assert port in line
            assert flag in line


def test_configuration_errors_name_their_own_flag_before_the_store_is_touched(
    tmp_path: Path,
) -> None:
    """Each configuration problem names its own cause and flag, and is found before the
    store is opened or the demo imported (no store file is made)."""
    cases = {
        "--broker-config": ["--broker-config", str(tmp_path / "missing.yaml")],
        "--broker": ["--broker", "http://127.0.0.1:1883"],
    }
    for flag, args in cases.items():
        line = refusal(serve("--demo", *args, "--http-port", str(free_port()), tmp=tmp_path))
        assert f"check {flag}" in line
        assert "port" not in line.replace("--mqtt-port", ""), line
        assert not (tmp_path / "store.db").exists(), flag


async def test_demo_serves_the_seed_and_stops_cleanly(tmp_path: Path) -> None:
    http = free_port()
    process = await asyncio.create_subprocess_exec(
        *serve("--demo", "--http-port", str(http), "--mqtt-port", str(free_port()), tmp=tmp_path),
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{http}"
    try:
        assert await wait_healthy(url, process)
        # The seed: 11 in A at midnight of 2018-02-27 (see the CLI tests for the fold).
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url}/space/A/count?ts=2018-02-27T00:00:00Z") as response,
        ):
            assert await response.json() == {
                "space_id": "A",
                "ts": "2018-02-27T00:00:00.000Z",
                "count": 11,
            }
        # Refused by aiohttp before the application sees it: JSON all the same, not logged.
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url}/spaces/{'x' * 9_000}") as response,
        ):
            assert response.status == 400
            assert "too long" in (await response.json())["detail"]
    finally:
        log = await stop_serving(process)
    assert "demo: imported 530 seed events" in log
    assert "Traceback" not in log
    assert " ERROR " not in log


async def test_broker_runs_alone_for_a_service_in_another_process(tmp_path: Path) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "headcount", "broker", "--mqtt-port", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "HEADCOUNT_BROKER_PASSWORD"},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        url = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
        address = parse_broker_url(url)
        assert (address.host, address.port, address.username) == ("127.0.0.1", port, "headcount")
        async with aiomqtt.Client(
            address.host, address.port, username=address.username, password=address.password
        ) as service:
            await service.subscribe("dpus/+/traversals", qos=1)
            async with aiomqtt.Client(address.host, address.port) as dpu:  # anonymous
                await dpu.publish("dpus/7/traversals", b"x", qos=1)
            async with asyncio.timeout(10):
                message = await anext(aiter(service.messages))
            assert (str(message.topic), message.payload) == ("dpus/7/traversals", b"x")
    finally:
        log = await stop_serving(process)
    assert f"MQTT broker on 127.0.0.1:{port}" in log


def test_an_open_host_without_tokens_is_one_line_naming_both_flags(tmp_path: Path) -> None:
    line = refusal(
        serve("--demo", "--host", "0.0.0.0", "--http-port", str(free_port()),
              "--mqtt-port", str(free_port()), "--insecure-open-broker", tmp=tmp_path)
    )  # fmt: skip
    assert "--tokens" in line
    assert "--insecure-open-api" in line
    assert not (tmp_path / "store.db").exists()


async def test_with_tokens_only_healthz_and_open_metrics_answer_without_one(
    tmp_path: Path,
) -> None:
    """``serve --tokens``: the API refuses requests without a token, serves one with it, and
    ``replay --verify --service`` reaches it with ``HEADCOUNT_TOKEN``; no token in the log."""
    tokens = tmp_path / "tokens.toml"
    read = add_token(tokens, "grafana", Scope.READ)
    http = free_port()
    command = serve("--demo", "--tokens", str(tokens), "--open-metrics", "--http-port", str(http),
                    "--mqtt-port", str(free_port()), tmp=tmp_path)  # fmt: skip
    command.insert(command.index("serve"), "-v")  # debug: the refusals are logged too
    process = await asyncio.create_subprocess_exec(*command, stderr=asyncio.subprocess.PIPE)
    url = f"http://127.0.0.1:{http}"
    try:
        assert await wait_healthy(url, process)  # /healthz needs no token
        async with aiohttp.ClientSession(url) as session:
            async with session.get("/spaces") as response:
                assert response.status == 401
            async with session.get("/metrics") as response:
                assert response.status == 200
            headers = {"Authorization": f"Bearer {read}"}
            async with session.get("/spaces", headers=headers) as response:
                assert response.status == 200
        replay = [sys.executable, "-m", "headcount", "replay", "--verify", "--service", url,
                  "--store", f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "HEADCOUNT_TOKEN"}
        refused = await asyncio.to_thread(
            subprocess.run, replay, capture_output=True, text=True, timeout=60, env=env
        )
        assert refused.returncode == 1, refused.stderr
        assert "refused its live counts with no token (401" in refused.stderr
        assert "give a token with --token or HEADCOUNT_TOKEN" in refused.stderr
        verified = await asyncio.to_thread(
            subprocess.run, replay, capture_output=True, text=True, timeout=60,
            env={**env, "HEADCOUNT_TOKEN": read},
        )  # fmt: skip
        assert verified.returncode == 0, verified.stderr
        assert read not in verified.stdout + verified.stderr
    finally:
        log = await stop_serving(process)
    assert "api_tokens=1 (open: /healthz, /metrics)" in log
    assert read not in log
    assert "Traceback" not in log


def test_beyond_loopback_without_dpu_auth_is_refused_naming_both_flags(tmp_path: Path) -> None:
    for command in (
        serve("--demo", "--host", "0.0.0.0", "--http-port", str(free_port()), tmp=tmp_path),
        [sys.executable, "-m", "headcount", "broker", "--host", "0.0.0.0"],
    ):
        line = refusal([*command, "--mqtt-port", str(free_port())])
        assert "--dpu-auth DIR" in line
        assert "--insecure-open-broker" in line
        assert not (tmp_path / "store.db").exists()


async def test_broker_with_dpu_auth_admits_dpu_accounts_only(tmp_path: Path) -> None:
    passwords = issue(["283"], tmp_path / "auth")
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "headcount", "broker", "--mqtt-port", str(port),
        "--dpu-auth", str(tmp_path / "auth"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        async with asyncio.timeout(30):
            while b"MQTT broker on" not in await process.stderr.readline():
                pass
        service = ("headcount", passwords["headcount"], "headcount-service")
        async with aiomqtt.Client(
            "127.0.0.1", port, username=service[0], password=service[1], identifier=service[2]
        ) as client:
            await client.subscribe("dpus/#", qos=1)
            async with aiomqtt.Client(
                "127.0.0.1", port, username="283", password=passwords["283"], identifier="283"
            ) as dpu:
                await dpu.publish("dpus/283/traversals", b"x", qos=1)
            async with asyncio.timeout(10):
                message = await anext(aiter(client.messages))
            assert (str(message.topic), message.payload) == ("dpus/283/traversals", b"x")
        try:
            async with aiomqtt.Client("127.0.0.1", port, identifier="anonymous"):
                raise AssertionError("an anonymous client was let in")
        except aiomqtt.MqttCodeError:
            pass
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.stdout is not None
        printed = (await process.stdout.read()).decode()
        assert await process.wait() == 0
    assert printed == ""  # the service's password is in the directory, not printed


async def test_serve_and_the_simulator_over_tls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The embedded broker over TLS only: the service connects to it inside its process, the
    simulated DPUs by ``mqtts://`` trusting the test's private CA, and the counts are the
    truth. The certificate names ``localhost``, not 127.0.0.1, where the service connects."""
    certs = make_certificates(tmp_path / "certs", "localhost")
    port = free_port()
    args: list[str | Path] = [
        "--spaces", "3", "--people", "30", "--seed", "7",
        "--start", "2024-03-05T08:00:00Z", "--duration", "4h", "--speed", "3600",
        "--truth", tmp_path / "truth.csv", "--write-topology", tmp_path / "topology.toml",
        "--broker", f"mqtts://localhost:{port}?ca={certs.ca}",
    ]  # fmt: skip
    planned = await simulate(capsys, *args, "--dry-run")
    http = free_port()
    process = await asyncio.create_subprocess_exec(
        *serve(
            "--topology", str(tmp_path / "topology.toml"),
            "--http-port", str(http), "--mqtt-port", str(port),
            "--mqtt-tls-cert", str(certs.chain), "--mqtt-tls-key", str(certs.key),
            tmp=tmp_path,
        ),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{http}"
    try:
        assert await wait_healthy(url, process)
        with socket.create_connection(("127.0.0.1", port)) as plain:  # TLS only: no MQTT
            plain.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
            plain.settimeout(10)
            assert plain.recv(4) == b""  # closed, no CONNACK
        ran = await simulate(capsys, *args)
        assert ran.code == 0, ran.err
        assert ran.summary["acknowledged"] == planned.summary["events"] > 0
        truth = Truth.load(tmp_path / "truth.csv")
        at = format_ms(parse_iso(ran.summary["end"]))
        expected = {space_id: truth.final(space_id) for space_id in truth.spaces}
        counts: dict[str, int] = {}
        async with aiohttp.ClientSession() as session, asyncio.timeout(30):
            while counts != expected:  # until ingest has stored every event
                for space_id in expected:
                    async with session.get(f"{url}/spaces/{space_id}/count?ts={at}") as response:
                        counts[space_id] = (await response.json())["count"]
                await asyncio.sleep(0.1)
    finally:
        log = await stop_serving(process)
    assert f"embedded MQTT broker on 127.0.0.1:{port} (TLS)" in log
    assert "Traceback" not in log


def test_tls_flags_come_in_pairs_and_must_fit(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "certs", "localhost")
    other = make_certificates(tmp_path / "other", "localhost")
    cases = {
        "--mqtt-tls-cert needs --mqtt-tls-key": ["--mqtt-tls-cert", str(certs.chain)],
        "--mqtt-tls-key needs --mqtt-tls-cert": ["--mqtt-tls-key", str(certs.key)],
        "check --mqtt-tls-cert and --mqtt-tls-key": [
            "--mqtt-tls-cert", str(certs.chain), "--mqtt-tls-key", str(other.key),
        ],
        "check ?ca= in the mqtts:// broker URL": [
            "--broker", f"mqtts://localhost?ca={tmp_path / 'missing.pem'}",
        ],
    }  # fmt: skip
    for problem, args in cases.items():
        line = refusal(serve("--demo", *args, "--http-port", str(free_port()), tmp=tmp_path))
        assert problem in line
        assert not (tmp_path / "store.db").exists(), problem


async def test_broker_alone_over_tls_prints_an_mqtts_url_that_works(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "certs", "127.0.0.1")
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "headcount", "broker", "--mqtt-port", str(port),
        "--mqtt-tls-cert", str(certs.chain), "--mqtt-tls-key", str(certs.key),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "HEADCOUNT_BROKER_PASSWORD"},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        url = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
        assert url.startswith("mqtts://headcount:")
        address = parse_broker_url(url)
        async with aiomqtt.Client(
            address.host,
            address.port,
            username=address.username,
            password=address.password,
            tls_context=tls_context(address),
        ) as service:
            await service.subscribe("dpus/+/traversals", qos=1)
            await service.publish("dpus/7/traversals", b"x", qos=1)
            async with asyncio.timeout(10):
                message = await anext(aiter(service.messages))
            assert message.payload == b"x"
    finally:
        await stop_serving(process)


def test_a_bad_config_file_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    config = tmp_path / "headcount.toml"
    config.write_text('[[webhooks]]\nurl = "ftp://x/"\nspaces = "*"\nsecret = "0123456789abcdef"\n')
    line = refusal(
        serve("--demo", "--config", str(config), "--http-port", str(free_port()),
              "--mqtt-port", str(free_port()), tmp=tmp_path)
    )  # fmt: skip
    assert f"--config {config}" in line
    assert "is not an http:// or https:// URL" in line
    assert not (tmp_path / "store.db").exists()


async def test_mqtt_out_and_home_assistant_on_the_embedded_broker(tmp_path: Path) -> None:
    """``serve --homeassistant``: retained states, discovery configs and availability on the
    service's own broker; a traversal moves the state; a clean stop says offline."""
    http, mqtt = free_port(), free_port()
    command = serve("--demo", "--homeassistant", "--publish-interval", "0.2",
                    "--http-port", str(http), "--mqtt-port", str(mqtt), tmp=tmp_path)  # fmt: skip
    process = await asyncio.create_subprocess_exec(*command, stderr=asyncio.subprocess.PIPE)
    seen: dict[str, list[bytes]] = {}

    async def until(topic: str, n: int = 1) -> list[bytes]:
        async with asyncio.timeout(30):
            async for message in watcher.messages:
                assert isinstance(message.payload, bytes)
                seen.setdefault(message.topic.value, []).append(message.payload)
                if len(seen.get(topic, [])) >= n:
                    return seen[topic]
        raise AssertionError("the messages ended")

    try:
        assert await wait_healthy(f"http://127.0.0.1:{http}", process)
        async with aiomqtt.Client("127.0.0.1", mqtt) as watcher:
            await watcher.subscribe([("headcount/#", 1), ("homeassistant/#", 1)])
            await until("headcount/status")
            config = json.loads((await until("homeassistant/sensor/headcount_A/config"))[0])
            assert config["state_topic"] == "headcount/spaces/A/state"
            before = json.loads((await until("headcount/spaces/A/state"))[0])
            assert set(before) == {"count", "ts", "capacity", "utilization", "entrances", "exits"}
            now = int(time.time() * 1000)
            async with aiomqtt.Client("127.0.0.1", mqtt) as dpu:
                event = {"seq": now, "ts": now, "direction": 1}
                await dpu.publish("dpus/283/traversals", msgpack.packb(event), qos=1)
            after = json.loads((await until("headcount/spaces/A/state", 2))[-1])
            assert after["count"] == before["count"] + 1
            assert seen["headcount/status"] == [b"online"]
        log = await stop_serving(process)
        assert "outputs: mqtt=on homeassistant=on webhooks=0" in log
        assert "Traceback" not in log
    finally:
        if process.returncode is None:
            await stop_serving(process)

"""A three-node NATS cluster with JetStream and the MQTT gateway, of the test's own: one
``nats-server`` process per node on free loopback ports, each with its own JetStream store
under the test's temporary directory, routes to the other two, and an ``mqtt`` listener.

This is how headcount is tested on a clustered MQTT broker: DPUs and services may connect to
any node; a node may be stopped, killed and started again while the other two keep the
cluster (JetStream's streams behind the MQTT sessions have three replicas, so two nodes are a
quorum). The machine's own NATS (port 4222) is never touched. When ``nats-server`` is not
installed the test is skipped with the reason; ``.ci/run`` requires it, so in CI it runs.

Use the ``nats_cluster`` fixture (register ``pytest_plugins = ["tests.nats_fixtures"]`` or
import it), or ``NatsCluster`` as a context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import pytest

from headcount.ingest.broker import free_port
from tests.servers import HOST, wait_port

__all__ = ["NatsCluster", "NatsNode", "RoundRobinProxy", "nats_binary", "nats_cluster"]

CLUSTER_NAME = "headcount-test"
READY_TIMEOUT_S = 60.0
#: How long the MQTT gateway waits for a PUBACK before it delivers a message again, even to a
#: session that has reconnected meanwhile (NATS's default is 30 s; shorter keeps tests quick).
ACK_WAIT = "4s"
REPLICAS = 3


def nats_binary() -> str:
    """The ``nats-server`` binary, or the test is skipped with what to install."""
    found = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
    )
    if found is None:
        pytest.skip(
            "this test starts its own NATS cluster: install nats-server (Debian: nats-server)"
        )
    return found


@dataclass
class NatsNode:
    """One node: its name, ports (client, cluster routes, MQTT, HTTP monitoring), files and
    process."""

    name: str
    directory: Path
    client_port: int = field(default_factory=lambda: free_port(HOST))
    cluster_port: int = field(default_factory=lambda: free_port(HOST))
    mqtt_port: int = field(default_factory=lambda: free_port(HOST))
    monitor_port: int = field(default_factory=lambda: free_port(HOST))
    process: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.directory / "nats.conf"

    @property
    def log(self) -> Path:
        return self.directory / "nats.log"

    @property
    def mqtt_url(self) -> str:
        """``mqtt://`` of this node's MQTT gateway."""
        return f"mqtt://{HOST}:{self.mqtt_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def config(self, peers: list[NatsNode], ack_wait: str = ACK_WAIT, mqtt_extra: str = "") -> str:
        routes = ", ".join(f'"nats-route://{HOST}:{p.cluster_port}"' for p in peers)
        return (
            f'server_name: "{self.name}"\n'
            f'listen: "{HOST}:{self.client_port}"\n'
            f'http: "{HOST}:{self.monitor_port}"\n'
            f'log_file: "{self.log}"\n'
            f'jetstream {{ store_dir: "{self.directory / "jetstream"}" }}\n'
            f'cluster {{ name: "{CLUSTER_NAME}", listen: "{HOST}:{self.cluster_port}",'
            f" routes: [{routes}] }}\n"
            # Three replicas of the gateway's streams, named: the gateway would otherwise take
            # the count of the nodes it knows when its first client connects (two, had one node
            # not yet joined), and two replicas lose their quorum with one node down.
            f'mqtt {{ listen: "{HOST}:{self.mqtt_port}", ack_wait: "{ack_wait}",'
            f" stream_replicas: {REPLICAS}{mqtt_extra} }}\n"
        )

    def monitor(self, path: str) -> tuple[int, dict[str, object]]:
        """``GET`` the monitoring endpoint ``path``: status and JSON (empty when down)."""
        url = f"http://{HOST}:{self.monitor_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")
        except (OSError, ValueError):
            return 0, {}


class NatsCluster:
    """Three ``nats-server`` nodes (``n1``..``n3``) in ``directory``, clustered, with
    JetStream and MQTT. ``start`` waits until every running node is healthy and the JetStream
    meta group has a leader; ``stop``/``kill``/``start_node`` act on one node.

    The methods are synchronous (a test calls them from its loop through
    ``tests.servers.run_blocking`` when the wait matters)."""

    def __init__(
        self, directory: Path, size: int = 3, *, ack_wait: str = ACK_WAIT, mqtt_extra: str = ""
    ) -> None:
        """``mqtt_extra``: more settings for the ``mqtt`` block (``, consumer_replicas: 1``)."""
        self.binary = nats_binary()
        self.nodes = [NatsNode(f"n{i + 1}", directory / f"n{i + 1}") for i in range(size)]
        for node in self.nodes:
            node.directory.mkdir(parents=True, exist_ok=True)
            peers = [p for p in self.nodes if p is not node]
            node.conf.write_text(node.config(peers, ack_wait, mqtt_extra), encoding="utf-8")

    @property
    def mqtt_urls(self) -> list[str]:
        return [node.mqtt_url for node in self.nodes]

    def start(self) -> None:
        for node in self.nodes:
            self._spawn(node)
        self.wait_ready()
        # The gateway makes its JetStream streams when the first MQTT client connects, which
        # takes seconds on a busy machine: long enough for a client's CONNECT to time out.
        # A first connection here, so that the cluster handed over is ready for MQTT.
        for node in self.nodes:
            mqtt_connects(node.mqtt_port, f"ready-{node.name}")

    def start_node(self, index: int) -> None:
        """Start node ``index`` again (after ``stop_node`` or ``kill_node``) and wait until the
        cluster, that node included, is ready."""
        self._spawn(self.nodes[index])
        self.wait_ready()

    def stop_node(self, index: int) -> None:
        """SIGTERM node ``index`` (a clean shutdown: it leaves the cluster) and wait."""
        node = self.nodes[index]
        if node.process is not None and node.running:
            node.process.terminate()
            node.process.wait(timeout=30)

    def kill_node(self, index: int) -> None:
        """SIGKILL node ``index``: a crash."""
        node = self.nodes[index]
        if node.process is not None and node.running:
            node.process.kill()
            node.process.wait(timeout=30)

    def _spawn(self, node: NatsNode) -> None:
        assert not node.running, f"{node.name} is already running"
        node.process = subprocess.Popen(
            [self.binary, "-c", str(node.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(node.mqtt_port, alive=lambda: node.running)
        except AssertionError:
            raise AssertionError(f"{node.name} did not start:\n{self.log_text()}") from None

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until every running node answers ``/healthz`` with 200 (JetStream current), sees
        the others as routes, and the meta group has a leader."""
        running = [n for n in self.nodes if n.running]
        deadline = time.monotonic() + timeout_s
        problem = "not asked yet"
        while time.monotonic() < deadline:
            problem = self._not_ready(running)
            if not problem:
                return
            time.sleep(0.2)
        raise AssertionError(f"the NATS cluster is not ready: {problem}\n{self.log_text()}")

    @staticmethod
    def _not_ready(running: list[NatsNode]) -> str:
        for node in running:
            status, body = node.monitor("/healthz")
            if status != 200:
                return f"{node.name} /healthz: {status} {body}"
            _, routes = node.monitor("/routez")
            num_routes = routes.get("num_routes", 0)
            if not isinstance(num_routes, int) or num_routes < len(running) - 1:
                return f"{node.name} has {num_routes} routes"
            _, jsz = node.monitor("/jsz")
            meta = jsz.get("meta_cluster")
            if not isinstance(meta, dict) or not meta.get("leader"):
                return f"{node.name} sees no JetStream meta leader"
        return ""

    def log_text(self, tail: int = 3000) -> str:
        parts = []
        for node in self.nodes:
            text = node.log.read_text(errors="replace") if node.log.exists() else ""
            parts.append(f"--- {node.name} ---\n{text[-tail:]}")
        return "\n".join(parts)

    def close(self) -> None:
        for index in range(len(self.nodes)):
            self.kill_node(index)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A fresh three-node NATS cluster with JetStream and MQTT, ready; killed after the test."""
    with NatsCluster(tmp_path / "nats") as cluster:
        yield cluster


def mqtt_connects(port: int, client_id: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Block until an MQTT 3.1.1 CONNECT (clean session) on ``port`` is accepted."""
    name = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(name).to_bytes(2, "big") + name
    connect = bytes([0x10, len(body)]) + body
    deadline = time.monotonic() + timeout_s
    answer = b""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=10) as conn:
                conn.sendall(connect)
                answer = conn.recv(4)
                if answer[:1] == b"\x20" and answer[3:4] == b"\x00":
                    conn.sendall(b"\xe0\x00")  # DISCONNECT
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"no MQTT CONNACK on {HOST}:{port} (last answer {answer!r})")


class RoundRobinProxy:
    """A TCP front for the cluster's MQTT listeners, as a load balancer or a DNS name with
    several addresses is in a real deployment: each new connection goes to the next node (in
    turn) that accepts it, so the clients behind one URL spread over the nodes, and a client
    cut off by a node that stopped reconnects to another. Runs on the test's event loop.

    ``connections`` counts the connections each node (by port) was given."""

    def __init__(self, ports: Sequence[int]) -> None:
        self.ports = list(ports)
        self.port = 0
        self.connections: Counter[int] = Counter()
        self._turn = itertools.cycle(range(len(self.ports)))
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in self.ports:
            port = self.ports[next(self._turn)]
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(HOST, port)
            except OSError:
                continue
            self.connections[port] += 1
            pipes = [
                asyncio.create_task(_pipe(reader, upstream_writer)),
                asyncio.create_task(_pipe(upstream_reader, writer)),
            ]
            self._pipes.update(pipes)
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                    self._pipes.discard(pipe)
                for w in (writer, upstream_writer):
                    w.close()
            return
        writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()

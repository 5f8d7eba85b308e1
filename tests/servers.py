"""Servers a test starts, owns and may restart, stop, kill or break: a Mosquitto and a
PostgreSQL cluster, each on a free loopback port in the test's temporary directory.

The machine's shared Mosquitto and PostgreSQL serve every test at once and are never
restarted; a test that needs a server to fail uses one of these. When the binaries are missing
(a laptop without Mosquitto or PostgreSQL installed) the test is skipped with the reason;
``.ci/run`` requires them, so in CI nothing here skips.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import pytest

from headcount.ingest.broker import free_port

__all__ = ["MosquittoServer", "PostgresCluster", "wait_port"]

HOST = "127.0.0.1"


def wait_port(
    port: int, *, timeout_s: float = 20, alive: Callable[[], bool] = lambda: True
) -> None:
    """Block until something accepts TCP connections on ``HOST:port``."""
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        with socket.socket() as probe:
            probe.settimeout(0.2)
            if probe.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing accepts connections on {HOST}:{port}")


class MosquittoServer:
    """``mosquitto -c`` with ``config`` (the listener line is added) on a free port in
    ``directory``; persistence, when the config asks for it, goes to ``directory``.

    ``start``/``stop``/``restart``/``kill`` are synchronous: they are quick and a test calls
    them between awaits. Use as a context manager or call ``stop`` at the end.
    """

    def __init__(self, directory: Path, config: str = "allow_anonymous true\n") -> None:
        binary = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if binary is None:
            pytest.skip("this test starts its own Mosquitto: install mosquitto (Debian: mosquitto)")
        self.binary = binary
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port(HOST)
        self.conf = directory / "mosquitto.conf"
        self.log = directory / "mosquitto.log"
        lines = [
            line
            for line in config.splitlines()
            if not line.strip().startswith(("listener", "persistence_location", "log_dest"))
        ]
        if os.geteuid() == 0 and not any(line.strip().startswith("user ") for line in lines):
            # As root Mosquitto switches to the user "mosquitto", who cannot write the test's
            # private directory: no log, and no persistence file saved on the way out.
            lines.append("user root")
        lines += [
            f"listener {self.port} {HOST}",
            f"persistence_location {directory}/",
            f"log_dest file {self.log}",
        ]
        self.conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(
                self.port, alive=lambda: self.process is not None and self.process.poll() is None
            )
        except AssertionError:
            raise AssertionError(f"mosquitto did not start:\n{self.log_text()}") from None

    def stop(self) -> None:
        """SIGTERM and wait: Mosquitto saves its persistence file on the way out."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)

    def kill(self) -> None:
        """SIGKILL: whatever Mosquitto held in memory and had not saved is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=20)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _postgres_bin() -> Path:
    root = Path("/usr/lib/postgresql")
    versions = sorted(
        (p for p in root.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1]
    found = shutil.which("initdb")
    if found is None:
        pytest.skip("this test starts its own PostgreSQL: install the server (initdb, pg_ctl)")
    return Path(found).parent


class PostgresCluster:
    """A PostgreSQL cluster of the test's own (``initdb`` + ``pg_ctl``) on a free port, trust
    auth, socket and data in ``directory``. As root, the server runs as the ``postgres`` user
    (PostgreSQL refuses to run as root), in a directory of its own under the system's temporary
    directory (pytest's is private to root), removed on exit.

    ``url`` is an asyncpg SQLAlchemy URL of the ``postgres`` database.
    """

    def __init__(self, directory: Path) -> None:
        self.bin = _postgres_bin()
        self._user: str | None = None
        self._own_directory = False
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root needs a 'postgres' user to run the test's cluster")
            self._user = "postgres"
            directory = Path(tempfile.mkdtemp(prefix="headcount-test-pg-"))
            shutil.chown(directory, self._user)
            self._own_directory = True
        self.directory = directory
        self.data = directory / "data"
        self.port = free_port(HOST)
        self.log = directory / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@{HOST}:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        command = [str(a) for a in args]
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        return subprocess.run(command, check=check, capture_output=True, timeout=120)

    def init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C",
        )  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses={HOST} -c fsync=on"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False
        )

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash: recovery replays the WAL at the next start)."""
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().splitlines()[0])
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.05)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def __enter__(self) -> Self:
        self.init()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop("immediate")
        self.kill()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


async def run_blocking(call: Callable[[], object]) -> None:
    """Run one of the blocking calls above (start, stop, restart, kill) from a test's loop."""
    await asyncio.to_thread(call)

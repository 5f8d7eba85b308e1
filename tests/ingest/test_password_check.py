"""Password checks of the embedded broker: off the event loop, Argon2 once per password, and a
storm of connections with credentials that leaves the loop free."""

from __future__ import annotations

import asyncio
import struct
import threading
from pathlib import Path

import aiomqtt
import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from headcount.ingest._password_check import PasswordChecker
from headcount.ingest.broker import EmbeddedBroker


class SlowVerifier:
    """A verifier that blocks its thread until released and records where it ran."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.threads: list[int] = []

    def __call__(self, password: str, stored: str) -> bool:
        self.threads.append(threading.get_ident())
        self.release.wait(10)
        return stored == f"hash of {password}"


async def test_the_slow_check_runs_in_a_thread_while_the_loop_goes_on() -> None:
    verifier = SlowVerifier()
    checker = PasswordChecker(verifier)
    checking = asyncio.create_task(checker.check("dpu1", "pw", "hash of pw"))
    ticks = 0
    while not verifier.threads:  # the check has started
        await asyncio.sleep(0.001)
    for _ in range(20):  # the loop turns while the verifier blocks its thread
        await asyncio.sleep(0)
        ticks += 1
    assert not checking.done()
    verifier.release.set()
    assert await checking
    assert ticks == 20
    assert verifier.threads != [threading.get_ident()]
    checker.close()


async def test_a_password_that_passed_is_not_verified_again() -> None:
    verifier = SlowVerifier()
    verifier.release.set()
    checker = PasswordChecker(verifier)
    assert await checker.check("dpu1", "pw", "hash of pw")
    assert await checker.check("dpu1", "pw", "hash of pw")
    assert checker.slow_checks == 1
    # Another password for that user fails at once: it cannot match what "pw" matched.
    assert not await checker.check("dpu1", "other", "hash of pw")
    assert checker.slow_checks == 1
    # A new hash in the password file (the password was changed) is verified afresh.
    assert await checker.check("dpu1", "new", "hash of new")
    assert checker.slow_checks == 2
    assert not await checker.check("dpu1", "pw", "hash of new")  # the old password
    assert checker.slow_checks == 2
    checker.close()


async def test_a_password_that_failed_is_verified_every_time() -> None:
    verifier = SlowVerifier()
    verifier.release.set()
    checker = PasswordChecker(verifier)
    for _ in range(3):
        assert not await checker.check("dpu1", "wrong", "hash of pw")
    assert checker.slow_checks == 3
    assert await checker.check("dpu1", "pw", "hash of pw")
    checker.close()


def connect_packet(n: int, password: str) -> bytes:
    def string(text: str) -> bytes:
        return struct.pack("!H", len(text)) + text.encode()

    body = string("MQTT") + bytes([4, 0b1100_0010]) + struct.pack("!H", 60)
    body += string(f"storm-{n}") + string(f"dpu{n}") + string(password)
    return bytes([0x10, len(body)]) + body


async def test_a_connect_storm_with_credentials_leaves_the_loop_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten DPUs connect at once with real Argon2 hashes: on the loop, that was at least ten
    times 0.16 s in one pass. Now every Argon2 check runs off the loop's thread, once per
    DPU, and every DPU gets its CONNACK; a DPU connecting again is not verified again."""
    dpus = 10
    hashed = PasswordHash((Argon2Hasher(),)).hash("pw")
    passwd = tmp_path / "dpus.passwd"
    passwd.write_text("".join(f"dpu{n}:{hashed}\n" for n in range(dpus)))
    config = tmp_path / "broker.yaml"
    config.write_text(
        "plugins:\n  headcount.ingest.broker.ServiceAuthPlugin:\n"
        f"    allow_anonymous: false\n    password_file: {passwd}\n"
    )
    verified_on: list[int] = []  # the thread of each Argon2 check
    verify = PasswordHash.verify

    def recorded(self: PasswordHash, password: str, stored: str) -> bool:
        verified_on.append(threading.get_ident())
        return verify(self, password, stored)

    monkeypatch.setattr(PasswordHash, "verify", recorded)
    async with EmbeddedBroker(port=0, data_dir=tmp_path / "broker", config_file=config) as b:

        async def connect(n: int) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
            writer.write(connect_packet(n, "pw"))
            try:
                return await reader.readexactly(4)
            finally:
                writer.close()
                await writer.wait_closed()

        storm = await asyncio.gather(*(connect(n) for n in range(dpus)))
        assert storm == [b"\x20\x02\x00\x00"] * dpus  # every one accepted
        assert len(verified_on) == dpus
        assert threading.get_ident() not in verified_on  # none on the loop's thread
        async with aiomqtt.Client("127.0.0.1", b.port, username="dpu0", password="pw"):
            pass
        assert len(verified_on) == dpus  # remembered: no Argon2 the second time
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", b.port, username="dpu0", password="bad"):
                pass

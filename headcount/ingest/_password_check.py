"""Password checks for the embedded broker: off its event loop, and Argon2 once per password.

amqtt's FileAuthPlugin verifies each CONNECT's password with Argon2 (pwdlib's defaults: 64 MiB,
3 passes; 0.16 s to 0.7 s of CPU) on the event loop, and runs every waiting CONNECT in one pass
of the loop: 1,000 DPUs connecting at once froze the broker, and the service around it when the
broker runs inside it, for minutes (bench/connect_storm.py, BENCHMARKS.md). Here:

- Argon2 runs in one worker thread (argon2-cffi releases the GIL), so the loop keeps serving
  the API and ingest, and a storm takes at most one core however many connect at once. On
  Linux that thread runs at a lower priority (nice +10): hashing gets the CPU that counting
  and the API leave.
- A password that passed Argon2 is remembered as an HMAC-SHA256 under a key made at start and
  kept in memory only; the same user with the same password (a DPU reconnecting) is checked
  against it in microseconds. The entry is tied to the stored hash, so a changed password
  file is verified again. A different password for a remembered user fails without Argon2:
  it cannot match a hash the remembered one matched.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from amqtt.plugins.authentication import FileAuthPlugin
from amqtt.session import Session

__all__ = ["PASSWORD_THREAD_NICE", "PasswordChecker", "PasswordFileAuthPlugin"]

#: How much lower the password thread's priority is than the rest of the process.
PASSWORD_THREAD_NICE = 10


class PasswordChecker:
    """Checks passwords against stored hashes with ``verify`` (slow, thread-safe), in one
    worker thread, remembering each user's last password that passed."""

    def __init__(self, verify: Callable[[str, str], bool]) -> None:
        self._verify = verify
        self._key = secrets.token_bytes(32)
        self._passed: dict[str, tuple[str, bytes]] = {}  # user: (stored hash, HMAC of password)
        self._worker = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="broker-passwords", initializer=_yield_the_cpu
        )
        self.slow_checks = 0  # how many went through ``verify``, for tests and curiosity

    async def check(self, username: str, password: str, stored: str) -> bool:
        """Whether ``password`` is ``username``'s, whose hash is ``stored``."""
        digest = hmac.new(self._key, password.encode(), hashlib.sha256).digest()
        passed = self._passed.get(username)
        if passed is not None and passed[0] == stored:
            return hmac.compare_digest(passed[1], digest)
        self.slow_checks += 1
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._worker, self._verify, password, stored)
        if ok:
            self._passed[username] = (stored, digest)
        return ok

    def close(self) -> None:
        """Forget every password; a check still running finishes in its thread."""
        self._passed.clear()
        self._worker.shutdown(wait=False, cancel_futures=True)


def _yield_the_cpu() -> None:
    """Lower this thread's priority (Linux: a thread's nice value is its own)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PASSWORD_THREAD_NICE)


class PasswordFileAuthPlugin(FileAuthPlugin):  # type: ignore[misc]  # amqtt's base is untyped
    """amqtt's FileAuthPlugin (the same password file and answers), its checks made by a
    :class:`PasswordChecker`."""

    def __init__(self, context: object) -> None:
        super().__init__(context)
        self.passwords = PasswordChecker(self.pwd_hasher.verify)

    async def authenticate(self, *, session: Session) -> bool | None:
        if not session:
            return False
        if not session.username:
            return None  # not ours to decide, as in FileAuthPlugin
        stored = self._users.get(session.username)
        if not stored:
            return False
        return await self.passwords.check(session.username, session.password or "", stored)

    async def close(self) -> None:
        self.passwords.close()
        await super().close()

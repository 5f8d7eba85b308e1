"""The embedded MQTT broker: amqtt, run inside the headcount process.

The configuration is built here in code, so it works from an installed package with no files
beside it; ``broker_config/amqtt.yaml`` is the documented example of an override file
(``--broker-config FILE``) whose keys are merged over these defaults.

Authentication: by default DPUs connect anonymously (no username); the service connects as its
own user from a password file written at start. The service must not be anonymous: amqtt keeps
QoS 1 messages for a disconnected persistent session only when that session authenticated.
With ``dpu_auth`` (``--dpu-auth DIR``, files from ``headcount dpus credentials``) every client
needs an account: anonymous clients are refused, a DPU may publish only under its own id and
must use its id as client id, and only the service's account may use any other client id, so
nobody else can take over the service's session (see ``_amqtt_sessions``).
Passwords are checked off the event loop, Argon2 once per password (``_password_check``).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import secrets
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import yaml  # type: ignore[import-untyped]  # types-PyYAML is not a dependency
from amqtt.broker import Broker
from amqtt.session import Session
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from headcount.errors import HeadcountError
from headcount.ingest import (
    _amqtt_admission,
    _amqtt_redelivery,
    _amqtt_sessions,
    _amqtt_topics,
    credentials,
)
from headcount.ingest._password_check import PasswordFileAuthPlugin
from headcount.ingest.mqtt import BrokerAddress
from headcount.ingest.tls import CA_PARAMETER, ClientTls, ServerTls

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1883
SERVICE_USERNAME = credentials.SERVICE_USERNAME
PASSWORD_ENV = "HEADCOUNT_BROKER_PASSWORD"
AUTH_PLUGIN = f"{__name__}.ServiceAuthPlugin"
ACL_PLUGIN = f"{_amqtt_sessions.__name__}.TopicAclPlugin"
ANONYMOUS_PLUGIN = "amqtt.plugins.authentication.AnonymousAuthPlugin"
SESSION_EXPIRY_SECONDS = 7 * 24 * 3600

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "PASSWORD_ENV",
    "SERVICE_USERNAME",
    "BrokerError",
    "Credentials",
    "EmbeddedBroker",
    "ServiceAuthPlugin",
    "exposure_problem",
    "free_port",
    "is_loopback",
]


class BrokerError(HeadcountError):
    """The embedded broker could not start; the amqtt or OS error is chained as ``__cause__``."""


@dataclass(frozen=True)
class Credentials:
    """A username and password for the broker (the password is kept out of ``repr``)."""

    username: str
    password: str = field(repr=False)


def exposure_problem(host: str, *, dpu_auth: Path | None, insecure_open: bool) -> str | None:
    """Why the embedded broker must not listen on ``host`` as configured, or None: beyond
    loopback it needs DPU credentials (``--dpu-auth``) or ``--insecure-open-broker``."""
    if dpu_auth is not None or insecure_open or is_loopback(host):
        return None
    return (
        f"the embedded MQTT broker would listen on {host}, beyond this machine, and let anyone"
        " there publish as any DPU; give the DPUs accounts with --dpu-auth DIR (made by"
        " 'headcount dpus credentials --out DIR'), or pass --insecure-open-broker to accept"
        " anonymous DPUs from the network"
    )


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address: only this machine can
    reach a listener there (``False`` for a name that does not resolve)."""
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return bool(found) and all(ipaddress.ip_address(a[4][0]).is_loopback for a in found)


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


def _below_ephemeral() -> range:
    """Ports under the kernel's ephemeral range: the outgoing connections of other programs
    never take one of these, as they may take a port the kernel picks for ``bind(0)``."""
    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(min(20000, low // 2), low)


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nobody listens on right now, never the same one twice in this process.

    It comes from below the ephemeral range, so no outgoing connection (of this process or
    another) can take it between this check and the caller's bind; another listener still
    could: good enough for tests and local runs, where the alternative is a fixed port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    candidates = _below_ephemeral()
    for _ in range(200):
        port = candidates[secrets.randbelow(len(candidates))]
        if port in _handed_out:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        chosen: int = probe.getsockname()[1]
        return chosen


class ServiceAuthPlugin(PasswordFileAuthPlugin):
    """amqtt authentication: a client without a username is anonymous and let in when
    ``allow_anonymous`` (DPUs); a client with a username must match the password file.

    With ``own_client_ids`` (``--dpu-auth``) a client id belongs to one account: a DPU's
    account (any user but ``service_user``) must connect with its own id as client id, and
    only ``service_user`` may use any other client id (the service's). :meth:`admit` applies
    all of it before amqtt touches the session of that client id (``_amqtt_sessions``).

    amqtt's own AnonymousAuthPlugin marks *every* session anonymous when anonymous access is
    on, even one with valid credentials, and amqtt drops the offline queue of anonymous
    sessions; this plugin keeps authenticated sessions non-anonymous.
    """

    @dataclass
    class Config:
        password_file: str | None = None
        allow_anonymous: bool = True
        own_client_ids: bool = False
        service_user: str = SERVICE_USERNAME

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        # Clients admitted by a full check in admit(), whose authenticate() then need not
        # hash their password again: (client id, username, password) -> pending count.
        self._admitted: dict[tuple[str, str, str], int] = {}

    async def admit(self, session: Session) -> bool:
        """The whole check, from the CONNECT alone, when client ids belong to accounts; else
        (DPUs anonymous) admit, and leave it to :meth:`authenticate` as amqtt does."""
        if not self.config.own_client_ids:
            return True
        admitted = await self._check(session)
        if admitted:
            key = _admission(session)
            self._admitted[key] = self._admitted.get(key, 0) + 1
            if len(self._admitted) > 10_000:  # connections that died before authenticate()
                self._admitted.clear()
        return admitted

    async def authenticate(self, *, session: Session) -> bool:
        key = _admission(session)
        pending = self._admitted.pop(key, 0)
        if pending > 1:
            self._admitted[key] = pending - 1
        if pending:
            return True
        return await self._check(session)

    async def _check(self, session: Session) -> bool:
        username = session.username
        if not username:
            session.is_anonymous = True
            return bool(self.config.allow_anonymous)
        if self.config.own_client_ids and not self._may_use(username, session.client_id):
            self.context.logger.warning(
                "refused %r: client id %r belongs to another account (a DPU's client id is"
                " its DPU id)",
                username,
                session.client_id,
            )
            return False
        return bool(await super().authenticate(session=session))

    def _may_use(self, username: str, client_id: str | None) -> bool:
        if username == self.config.service_user:
            return client_id not in self._users or client_id == username
        return client_id == username


def _admission(session: Session) -> tuple[str, str, str]:
    return (session.client_id or "", session.username or "", session.password or "")


class EmbeddedBroker:
    """An amqtt broker serving on ``host:port`` for as long as the context is entered.

    ``host``/``port`` left as ``None`` come from ``config_file`` or default to
    127.0.0.1:1883; port 0 means "pick a free port now". The service user is ``username``
    with ``password``, else ``$HEADCOUNT_BROKER_PASSWORD``, else a password generated for
    this object. The password file (an Argon2 hash) goes in ``data_dir`` or a temporary
    directory removed on exit. With ``dpu_auth``, a directory ``headcount dpus credentials``
    wrote, the DPU accounts, topic ACL and service password come from there, and anonymous
    clients are refused. The broker keeps sessions in memory only: whatever it holds
    is lost when the process stops. While it runs, a QoS 1 message stays queued for a persistent
    session until that session acknowledges it, across reconnections (amqtt 0.12 alone forgets
    it after 5 s or when the connection drops: see ``_amqtt_redelivery``). The object may be
    entered again after it exits (a restart on the same port with the same credentials).
    With ``tls`` the listener speaks MQTT over TLS only, with that certificate and key.
    """

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        config_file: Path | None = None,
        data_dir: Path | None = None,
        username: str = SERVICE_USERNAME,
        password: str | None = None,
        dpu_auth: Path | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        self._dpu_auth = credentials.load(dpu_auth) if dpu_auth is not None else None
        if self._dpu_auth is not None:
            password = self._dpu_auth.service_password
        self._overrides = _read_overrides(config_file) if config_file else {}
        bind_host, bind_port = _configured_bind(self._overrides)
        self.host = host if host is not None else bind_host
        requested = port if port is not None else bind_port
        self.port = requested if requested != 0 else free_port(self.host)
        given = password or os.environ.get(PASSWORD_ENV)
        self._credentials = Credentials(username, given or secrets.token_urlsafe(18))
        #: The password was made here, random: see :func:`_write_password_file`.
        self._random_password = not given
        self._data_dir = data_dir
        self.tls = tls
        self._temp_dir: Path | None = None
        self._broker: Any = None

    def service_credentials(self) -> Credentials:
        """The username and password the headcount service connects with."""
        return self._credentials

    @property
    def url(self) -> str:
        """``mqtt://user:password@host:port`` for the service; a wildcard bind address is
        replaced by the loopback address, since the service runs on this machine. With TLS,
        ``mqtts://...?ca=CERT``: it trusts the broker's certificate file, which must then name
        that host (see :meth:`service_address` for a connection that need not)."""
        user = quote(self._credentials.username, safe="")
        password = quote(self._credentials.password, safe="")
        if self.tls is None:
            return f"mqtt://{user}:{password}@{self._local_host}:{self.port}"
        ca = quote(str(self.tls.cert_file.resolve()))
        return f"mqtts://{user}:{password}@{self._local_host}:{self.port}?{CA_PARAMETER}={ca}"

    def service_address(self) -> BrokerAddress:
        """Where the service in this process connects, as its own user; with TLS it trusts
        exactly this broker's certificate, whatever host names it carries."""
        pinned = ClientTls(pinned_pem=self.tls.first_certificate()) if self.tls else None
        return BrokerAddress(
            self._local_host,
            self.port,
            self._credentials.username,
            self._credentials.password,
            tls=pinned,
        )

    @property
    def _local_host(self) -> str:
        return DEFAULT_HOST if self.host in ("", "0.0.0.0", "::") else self.host

    async def __aenter__(self) -> Self:
        try:
            config = await asyncio.to_thread(self._prepare)
            _amqtt_redelivery.install()
            _amqtt_topics.install()
            _amqtt_sessions.install()
            _amqtt_admission.install()
            self._broker = Broker(config)
            await self._broker.start()
        except Exception as e:
            # amqtt raises its own Exception subclasses, dacite's and OSError, and reading the
            # password file OSError: all mean the broker did not start, which is what matters.
            self._broker = None
            self._remove_temp_dir()
            raise _start_error(self.host, self.port, e) from e
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        broker, self._broker = self._broker, None
        try:
            if broker is not None:
                await broker.shutdown()
        finally:
            self._remove_temp_dir()

    def _prepare(self) -> dict[str, Any]:
        """Write the password file and return the amqtt configuration (blocking: hashes)."""
        directory = self._data_dir
        if directory is None:
            directory = self._temp_dir = Path(tempfile.mkdtemp(prefix="headcount-broker-"))
        directory.mkdir(parents=True, exist_ok=True)
        config = _merge(_default_config(), self._overrides)
        listener = config["listeners"]["default"]
        listener["bind"] = f"{self.host}:{self.port}"
        if self.tls is not None:
            listener.update(
                ssl=True, certfile=str(self.tls.cert_file), keyfile=str(self.tls.key_file)
            )
        auth = config["plugins"][AUTH_PLUGIN] = dict(config["plugins"].get(AUTH_PLUGIN) or {})
        if self._dpu_auth is not None:
            auth.update(
                password_file=str(self._dpu_auth.amqtt_passwd),
                allow_anonymous=False,
                own_client_ids=True,
                service_user=self._credentials.username,
            )
            config["plugins"][ACL_PLUGIN] = dict(self._dpu_auth.acl)
        passwd = directory / "broker.passwd"
        _write_password_file(
            passwd,
            self._credentials,
            auth.get("password_file"),
            random_password=self._random_password,
        )
        auth["password_file"] = str(passwd)
        return config

    def _remove_temp_dir(self) -> None:
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None


def _default_config() -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{DEFAULT_HOST}:{DEFAULT_PORT}"}},
        "session_expiry_interval": SESSION_EXPIRY_SECONDS,
        "plugins": {AUTH_PLUGIN: {"allow_anonymous": True}},
    }


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` laid over it, mappings merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_overrides(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise BrokerError(f"cannot read the broker config {path}: {e}") from e
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise BrokerError(f"the broker config {path} must be a mapping of amqtt settings")
    plugins = loaded.get("plugins")
    if plugins is not None and not isinstance(plugins, dict):
        raise BrokerError(f"in {path}, 'plugins' must be a mapping of plugin path to settings")
    if plugins and ANONYMOUS_PLUGIN in plugins:
        raise BrokerError(
            f"in {path}: remove {ANONYMOUS_PLUGIN}; it would make the service's session anonymous,"
            " and amqtt keeps no messages for an anonymous session while it is away"
            f" (anonymous DPUs are {AUTH_PLUGIN}'s allow_anonymous)"
        )
    return loaded


def _configured_bind(overrides: dict[str, Any]) -> tuple[str, int]:
    bind = str(_merge(_default_config(), overrides)["listeners"]["default"]["bind"])
    host, _, port = bind.rpartition(":")
    try:
        return host, int(port)
    except ValueError:
        raise BrokerError(f"the broker listener bind {bind!r} is not HOST:PORT") from None


#: Argon2 at its lightest (8 KiB, one pass): for a password of 144 random bits made by the
#: service for itself, which no guessing can find however fast each guess.
_RANDOM_PASSWORD_HASH = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=8, parallelism=1),))


def _write_password_file(
    path: Path, service: Credentials, extra: str | None, *, random_password: bool
) -> None:
    """The service user's line, after the lines of the operator's own password file (DPU
    users, when anonymous access is off). A password the operator chose is hashed with
    Argon2's defaults (64 MiB, three passes: slow to guess); one the service made at random,
    with the lightest Argon2: the defaults cost 64 MiB at start and again at the service's own
    connection, the peak of a restart's memory at 100,000 spaces (BENCHMARKS.md)."""
    lines = Path(extra).read_text(encoding="utf-8").splitlines() if extra else []
    hasher = _RANDOM_PASSWORD_HASH if random_password else PasswordHash((Argon2Hasher(),))
    hashed = hasher.hash(service.password)
    lines = [line for line in lines if line.partition(":")[0].strip() != service.username]
    lines.append(f"{service.username}:{hashed}")
    path.touch(mode=0o600, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _start_error(host: str, port: int, error: Exception) -> BrokerError:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
            return BrokerError(
                f"cannot start the embedded MQTT broker: port {port} on {host} is already in"
                " use (another broker running? pick another port or point headcount at it)"
            )
        cause = cause.__cause__
    return BrokerError(f"cannot start the embedded MQTT broker on {host}:{port}: {error}")

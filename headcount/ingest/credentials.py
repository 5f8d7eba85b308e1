"""DPU identity on the broker: one account per DPU, plus the service's own, as broker files.

:func:`issue` makes a random password for every DPU that has none yet (and for the service
account ``headcount``), and writes into one directory what each broker needs; the passwords
themselves are returned once, to be printed, and kept only as hashes:

- ``amqtt.passwd``: ``user:hash`` lines, Argon2 (pwdlib), for the embedded broker;
- ``amqtt-acl.yaml``: the embedded broker's topic ACL, who may publish and subscribe where;
- ``mosquitto.passwd``: ``user:$7$...`` lines, Mosquitto 2's PBKDF2-SHA512 format, the record
  of every account's hash that the next run keeps;
- ``mosquitto-dynsec.json``: the same accounts for Mosquitto 2's dynamic security plugin, the
  one way Mosquitto ties a client id to an account: a DPU logs in only with its own id as
  client id and publishes only under ``dpus/ITS_ID/``; the service, with any client id (it
  has several connections), reads ``dpus/#`` and ``headcount/#`` (other shards' states) and
  writes ``headcount/#`` and ``homeassistant/#``;
- ``mosquitto.conf``: the lines to add to a Mosquitto configuration (no anonymous clients, the
  plugin and that file);
- ``service.password`` (mode 0600): the service account's password, which the service reads.

Every file is written whole to a temporary file in the directory and renamed over the old
one, so a reader sees the old file or the new, never half of one. Run again, it keeps every
existing account and adds the DPUs that have none; ``rotate`` gives the named accounts new
passwords.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import tempfile
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import yaml  # type: ignore[import-untyped]  # types-PyYAML is not a dependency
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from headcount.errors import ConfigError

__all__ = [
    "AMQTT_ACL",
    "AMQTT_PASSWD",
    "MOSQUITTO_ACL",
    "MOSQUITTO_CONF",
    "MOSQUITTO_DYNSEC",
    "MOSQUITTO_PASSWD",
    "SERVICE_PASSWORD",
    "SERVICE_USERNAME",
    "DpuAuth",
    "issue",
    "load",
    "mosquitto_hash",
    "mosquitto_verify",
]

#: The service's account on the broker.
SERVICE_USERNAME: Final = "headcount"
AMQTT_PASSWD: Final = "amqtt.passwd"
AMQTT_ACL: Final = "amqtt-acl.yaml"
MOSQUITTO_PASSWD: Final = "mosquitto.passwd"
MOSQUITTO_ACL: Final = "mosquitto.acl"
MOSQUITTO_CONF: Final = "mosquitto.conf"
MOSQUITTO_DYNSEC: Final = "mosquitto-dynsec.json"
#: Where distributions install Mosquitto 2's dynamic security plugin (Debian's first).
_DYNSEC_PLUGINS: Final = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/lib64/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)
SERVICE_PASSWORD: Final = "service.password"

#: What the service may do: read every DPU topic, publish under ``headcount/`` (MQTT out)
#: and read there (a sharded process follows the other shards' states), publish under
#: ``homeassistant/`` (Home Assistant's discovery configs).
SERVICE_SUBSCRIBE: Final = "dpus/#"
SERVICE_PUBLISH: Final = "headcount/#"
SERVICE_DISCOVERY: Final = "homeassistant/#"
#: Mosquitto 2's ``mosquitto_passwd`` defaults: PBKDF2-SHA512, 101 rounds, 12-byte salt.
_PBKDF2_ROUNDS: Final = 101
_SALT_BYTES: Final = 12
_PASSWORD_BYTES: Final = 18  # 24 URL-safe characters, 144 random bits

_argon2 = PasswordHash((Argon2Hasher(),))


@dataclass(frozen=True)
class DpuAuth:
    """What a broker run with ``--dpu-auth DIR`` reads from ``DIR``."""

    directory: Path
    service_password: str = field(repr=False)
    #: ``amqtt-acl.yaml``: ``publish_acl`` and ``subscribe_acl``, username to topic filters.
    acl: Mapping[str, Mapping[str, list[str]]]

    @property
    def amqtt_passwd(self) -> Path:
        return self.directory / AMQTT_PASSWD

    @property
    def dpus(self) -> int:
        """How many DPU accounts there are (the service's is not one)."""
        return sum(1 for user in self.acl["publish_acl"] if user != SERVICE_USERNAME)


def mosquitto_hash(password: str, *, salt: bytes | None = None) -> str:
    """``$7$101$salt$hash``: what Mosquitto 2's ``mosquitto_passwd`` writes (base64 of a
    12-byte salt and of PBKDF2-HMAC-SHA512 over the password, 64 bytes)."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, _PBKDF2_ROUNDS)
    encoded = base64.b64encode(salt).decode("ascii"), base64.b64encode(digest).decode("ascii")
    return f"$7${_PBKDF2_ROUNDS}${encoded[0]}${encoded[1]}"


def mosquitto_verify(password: str, hashed: str) -> bool:
    """Whether ``hashed`` (``$7$rounds$salt$hash``) is ``password``'s."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit():
        return False
    try:
        salt, expected = base64.b64decode(parts[3]), base64.b64decode(parts[4])
    except ValueError:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, int(parts[2]))
    return secrets.compare_digest(digest, expected)


def issue(
    dpu_ids: Iterable[str], directory: Path, *, rotate: Collection[str] = ()
) -> dict[str, str]:
    """Write the broker files for ``dpu_ids`` into ``directory`` and return the passwords
    made now, account name to password (the service's under :data:`SERVICE_USERNAME`).

    Accounts already in ``directory`` keep their passwords, but those named in ``rotate``
    get new ones. Raises :class:`ConfigError` for a DPU id no broker file can hold, or a
    ``rotate`` name that is neither a DPU of ``dpu_ids`` nor the service account.
    """
    wanted = sorted(set(dpu_ids))
    _check_ids(wanted)
    unknown = sorted(set(rotate) - set(wanted) - {SERVICE_USERNAME})
    if unknown:
        raise ConfigError(
            f"--rotate {', '.join(unknown)}: no such DPU in the topology; name a DPU of the"
            f" topology or {SERVICE_USERNAME!r} (the service account)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    amqtt = _read_passwd(directory / AMQTT_PASSWD)
    mosquitto = _read_passwd(directory / MOSQUITTO_PASSWD)
    service = _read_service_password(directory)
    made: dict[str, str] = {}
    for name in [SERVICE_USERNAME, *wanted]:
        kept = name in amqtt and name in mosquitto and name not in rotate
        if name == SERVICE_USERNAME:
            kept = kept and service is not None and mosquitto_verify(service, mosquitto[name])
        if kept:
            continue
        password = secrets.token_urlsafe(_PASSWORD_BYTES)
        made[name] = password
        amqtt[name] = _argon2.hash(password)
        mosquitto[name] = mosquitto_hash(password)
        if name == SERVICE_USERNAME:
            service = password
    accounts = sorted(amqtt)  # DPUs no longer in the topology keep their accounts
    _write(directory / AMQTT_PASSWD, _passwd_text(amqtt, accounts), 0o640)
    # Readable by all: Mosquitto reads them after dropping to its own user; they hold only
    # hashes of random passwords.
    _write(directory / MOSQUITTO_PASSWD, _passwd_text(mosquitto, accounts), 0o644)
    dpus = [name for name in accounts if name != SERVICE_USERNAME]
    _write(directory / AMQTT_ACL, _amqtt_acl_text(dpus), 0o640)
    (directory / MOSQUITTO_ACL).unlink(missing_ok=True)  # what Mosquitto read before dynsec
    _write(directory / MOSQUITTO_DYNSEC, _dynsec_text(mosquitto, dpus), 0o644)
    _write(directory / MOSQUITTO_CONF, _mosquitto_conf_text(directory.resolve()), 0o644)
    if SERVICE_USERNAME in made:
        _write(directory / SERVICE_PASSWORD, made[SERVICE_USERNAME] + "\n", 0o600)
    return made


def load(directory: Path) -> DpuAuth:
    """Read what the embedded broker needs from a directory :func:`issue` wrote;
    :class:`ConfigError` saying what is missing or unreadable."""
    password = _read_service_password(directory)
    if password is None or not (directory / AMQTT_PASSWD).is_file():
        raise ConfigError(
            f"--dpu-auth {directory}: no DPU credentials there (expected {SERVICE_PASSWORD}"
            f" and {AMQTT_PASSWD}); make them with 'headcount dpus credentials --out {directory}'"
        )
    try:
        acl = yaml.safe_load((directory / AMQTT_ACL).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"--dpu-auth {directory}: cannot read {AMQTT_ACL}: {e}") from e
    if not isinstance(acl, dict) or set(acl) != {"publish_acl", "subscribe_acl"}:
        raise ConfigError(
            f"--dpu-auth {directory}: {AMQTT_ACL} must map publish_acl and subscribe_acl;"
            " run 'headcount dpus credentials' again to rewrite it"
        )
    outdated = (directory / MOSQUITTO_ACL).exists() or SERVICE_PUBLISH not in (
        acl["subscribe_acl"].get(SERVICE_USERNAME) or []
    )
    if outdated:
        # The files before the dynamic security plugin: on Mosquitto every connection of the
        # service got the client id 'headcount' and replaced the others, and neither broker
        # let the service read headcount/# (a shard following the others' states).
        raise ConfigError(
            f"--dpu-auth {directory}: these files were written by an older 'headcount dpus"
            f" credentials'; run 'headcount dpus credentials --out {directory}' again (every"
            " password is kept) and give Mosquitto the new mosquitto.conf lines"
        )
    return DpuAuth(directory, password, acl)


def _check_ids(dpu_ids: list[str]) -> None:
    problems = []
    for dpu_id in dpu_ids:
        if dpu_id == SERVICE_USERNAME or dpu_id.startswith(f"{SERVICE_USERNAME}-"):
            # A DPU's client id is its id: it must not be one of the service's (headcount,
            # headcount-out, headcount-shard-I, ...).
            problems.append(f"DPU {dpu_id!r} has the service account's name or its prefix")
        elif ":" in dpu_id or dpu_id != dpu_id.strip() or not dpu_id.isprintable():
            problems.append(
                f"DPU {dpu_id!r} cannot be a broker username (no ':', no surrounding"
                " blanks, printable characters only)"
            )
    if problems:
        raise ConfigError("; ".join(problems) + "; rename it in the topology")


def _read_passwd(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e
    users = {}
    for line in text.splitlines():
        name, sep, hashed = line.strip().partition(":")
        if sep and not name.startswith("#"):
            users[name] = hashed
    return users


def _read_service_password(directory: Path) -> str | None:
    try:
        return (directory / SERVICE_PASSWORD).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read {directory / SERVICE_PASSWORD}: {e.strerror}") from e


def _passwd_text(hashes: Mapping[str, str], accounts: list[str]) -> str:
    return "".join(f"{name}:{hashes[name]}\n" for name in accounts)


def _amqtt_acl_text(dpus: list[str]) -> str:
    acl = {
        "publish_acl": {
            SERVICE_USERNAME: [SERVICE_PUBLISH, SERVICE_DISCOVERY],
            **{dpu: [f"dpus/{dpu}/#"] for dpu in dpus},
        },
        "subscribe_acl": {SERVICE_USERNAME: [SERVICE_SUBSCRIBE, SERVICE_PUBLISH]},
    }
    header = (
        "# Written by 'headcount dpus credentials': the embedded broker's topic ACL.\n"
        "# A DPU publishes only under dpus/ITS_ID/ and subscribes to nothing; the service\n"
        "# subscribes to dpus/# and headcount/# and publishes under headcount/ and\n"
        "# homeassistant/.\n"
        "# Anonymous clients: nothing.\n"
    )
    body: str = yaml.safe_dump(acl, sort_keys=True, default_flow_style=False)
    return header + body


def _dynsec_text(hashes: Mapping[str, str], dpus: list[str]) -> str:
    """The dynamic security plugin's file: one client and one role per DPU, the service's."""

    def client(name: str, role: str, client_id: str | None) -> dict[str, object]:
        _, _, rounds, salt, digest = hashes[name].split("$")
        entry: dict[str, object] = {
            "username": name,
            "salt": salt,
            "password": digest,
            "iterations": int(rounds),
            "roles": [{"rolename": role}],
        }
        if client_id is not None:
            entry["clientid"] = client_id  # dynsec refuses this account any other client id
        return entry

    def allow(acltype: str, topic: str) -> dict[str, object]:
        return {"acltype": acltype, "topic": topic, "allow": True}

    document = {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": [
            client(SERVICE_USERNAME, SERVICE_USERNAME, None),
            *(client(dpu, f"dpu-{dpu}", dpu) for dpu in dpus),
        ],
        "groups": [],
        "roles": [
            {
                "rolename": SERVICE_USERNAME,
                "acls": [
                    allow("subscribePattern", SERVICE_SUBSCRIBE),
                    allow("subscribePattern", SERVICE_PUBLISH),
                    allow("publishClientSend", SERVICE_PUBLISH),
                    allow("publishClientSend", SERVICE_DISCOVERY),
                ],
            },
            *(
                {"rolename": f"dpu-{dpu}", "acls": [allow("publishClientSend", f"dpus/{dpu}/#")]}
                for dpu in dpus
            ),
        ],
    }
    return json.dumps(document, indent=2) + "\n"


def _dynsec_plugin() -> str:
    for candidate in _DYNSEC_PLUGINS:
        if Path(candidate).is_file():
            return candidate
    return _DYNSEC_PLUGINS[0]


def _mosquitto_conf_text(directory: Path) -> str:
    return f"""\
# Written by 'headcount dpus credentials': add these lines to mosquitto.conf (Mosquitto 2).
# Mosquitto must be able to read {MOSQUITTO_DYNSEC} (it drops to its own user): it holds
# only hashes. The plugin's path is where this machine's package put it (Debian's otherwise):
# check it on the broker's machine.
# Every client needs an account: DPUs log in with their DPU id as username and client id.
allow_anonymous false
# Mosquitto 2's password_file and acl_file cannot tie a client id to an account, and whoever
# connects with a session's client id takes that session (with a clean session, deletes it
# and the QoS 1 messages queued for the service). The dynamic security plugin can: a DPU's
# account may use only its own id as client id, so only the service's account (several
# connections, each with its own client id) may use any other.
plugin {_dynsec_plugin()}
plugin_opt_config_file {directory / MOSQUITTO_DYNSEC}
"""


def _write(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` with ``text`` atomically: a temporary file beside it, renamed."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

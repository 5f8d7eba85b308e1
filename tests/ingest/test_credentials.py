"""DPU credentials: the broker files, re-running, rotating, and a real Mosquitto reading them."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import aiomqtt
import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from headcount.errors import ConfigError
from headcount.ingest import credentials
from headcount.ingest.credentials import SERVICE_USERNAME, issue, load, mosquitto_hash
from tests.servers import MosquittoServer

ARGON2 = PasswordHash((Argon2Hasher(),))


def passwd(path: Path) -> dict[str, str]:
    return dict(line.split(":", 1) for line in path.read_text().splitlines())


def test_mosquitto_hash_is_pbkdf2_sha512_in_mosquitto_2_format() -> None:
    # The salt and expected digest are computed independently: openssl-style PBKDF2 vectors
    # would need a library; hashlib's own is what Mosquitto's OpenSSL call computes.
    import base64
    import hashlib

    salt = bytes(range(12))
    hashed = mosquitto_hash("secret", salt=salt)
    _, seven, rounds, salt_b64, digest_b64 = hashed.split("$")
    assert (seven, rounds) == ("7", "101")
    assert base64.b64decode(salt_b64) == salt
    assert base64.b64decode(digest_b64) == hashlib.pbkdf2_hmac("sha512", b"secret", salt, 101)
    assert credentials.mosquitto_verify("secret", hashed)
    assert not credentials.mosquitto_verify("Secret", hashed)


def test_issue_writes_every_file_with_a_password_per_account(tmp_path: Path) -> None:
    made = issue(["423", "283"], tmp_path / "auth")
    assert sorted(made) == ["283", "423", SERVICE_USERNAME]
    assert len(set(made.values())) == 3
    auth = tmp_path / "auth"
    amqtt, mosquitto = passwd(auth / "amqtt.passwd"), passwd(auth / "mosquitto.passwd")
    for name, password in made.items():
        assert ARGON2.verify(password, amqtt[name])
        assert credentials.mosquitto_verify(password, mosquitto[name])
        assert password not in (auth / "amqtt.passwd").read_text()
    assert (auth / "service.password").read_text().strip() == made[SERVICE_USERNAME]
    assert stat.S_IMODE((auth / "service.password").stat().st_mode) == 0o600
    acl = load(auth).acl
    assert acl["publish_acl"] == {
        "283": ["dpus/283/#"],
        "423": ["dpus/423/#"],
        SERVICE_USERNAME: ["headcount/#", "homeassistant/#"],
    }
    assert acl["subscribe_acl"] == {SERVICE_USERNAME: ["dpus/#", "headcount/#"]}
    dynsec = json.loads((auth / "mosquitto-dynsec.json").read_text())
    clients = {c["username"]: c for c in dynsec["clients"]}
    assert sorted(clients) == sorted(made)
    for name, client in clients.items():  # the same hash as mosquitto.passwd's
        assert mosquitto[name] == f"$7${client['iterations']}${client['salt']}${client['password']}"
    # A DPU may use only its own id as client id; the service, any (several connections).
    assert {name: c.get("clientid") for name, c in clients.items()} == {
        "283": "283",
        "423": "423",
        SERVICE_USERNAME: None,
    }
    roles = {
        r["rolename"]: [(a["acltype"], a["topic"]) for a in r["acls"]] for r in dynsec["roles"]
    }
    assert roles["dpu-283"] == [("publishClientSend", "dpus/283/#")]
    assert ("subscribePattern", "headcount/#") in roles[SERVICE_USERNAME]
    conf = (auth / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf
    assert "use_username_as_clientid" not in conf  # it breaks the service's connections
    assert f"plugin_opt_config_file {auth.resolve() / 'mosquitto-dynsec.json'}" in conf
    assert [p.name for p in auth.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_running_again_keeps_passwords_and_adds_new_dpus(tmp_path: Path) -> None:
    first = issue(["283"], tmp_path)
    before = (tmp_path / "amqtt.passwd").read_text()
    again = issue(["283", "423"], tmp_path)
    assert sorted(again) == ["423"]
    amqtt = passwd(tmp_path / "amqtt.passwd")
    assert ARGON2.verify(first["283"], amqtt["283"])
    assert ARGON2.verify(first[SERVICE_USERNAME], amqtt[SERVICE_USERNAME])
    assert before.splitlines()[0] in (tmp_path / "amqtt.passwd").read_text()
    assert load(tmp_path).service_password == first[SERVICE_USERNAME]
    assert load(tmp_path).dpus == 2  # the service's account is not a DPU's
    assert issue(["283", "423"], tmp_path) == {}


def test_rotate_replaces_one_password(tmp_path: Path) -> None:
    first = issue(["283", "423"], tmp_path)
    rotated = issue(["283", "423"], tmp_path, rotate=["283"])
    assert sorted(rotated) == ["283"]
    amqtt, mosquitto = passwd(tmp_path / "amqtt.passwd"), passwd(tmp_path / "mosquitto.passwd")
    assert not ARGON2.verify(first["283"], amqtt["283"])
    assert ARGON2.verify(rotated["283"], amqtt["283"])
    assert credentials.mosquitto_verify(rotated["283"], mosquitto["283"])
    assert ARGON2.verify(first["423"], amqtt["423"])
    service = issue(["283", "423"], tmp_path, rotate=[SERVICE_USERNAME])
    assert load(tmp_path).service_password == service[SERVICE_USERNAME]


@pytest.mark.parametrize(
    ("dpu_ids", "rotate", "says"),
    [
        pytest.param(["283"], ["999"], "--rotate 999: no such DPU", id="rotate-unknown"),
        pytest.param(["a:b"], [], "'a:b' cannot be a broker username", id="colon"),
        pytest.param([SERVICE_USERNAME], [], "the service account's name", id="service-name"),
        pytest.param(["headcount-out"], [], "the service account's name", id="service-prefix"),
    ],
)
def test_unusable_input_is_refused_and_writes_nothing(
    tmp_path: Path, dpu_ids: list[str], rotate: list[str], says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        issue(dpu_ids, tmp_path / "auth", rotate=rotate)
    assert not (tmp_path / "auth").exists()


@pytest.mark.parametrize("old", ["mosquitto.acl", "amqtt-acl.yaml"])
def test_files_of_an_older_version_are_refused_until_written_again(
    tmp_path: Path, old: str
) -> None:
    made = issue(["283"], tmp_path)
    if old == "mosquitto.acl":  # beside a mosquitto.conf with use_username_as_clientid
        (tmp_path / old).write_text("pattern write dpus/%u/#\n")
    else:  # the service could subscribe to dpus/# only
        before, _, after = (tmp_path / old).read_text().rpartition("  - headcount/#\n")
        (tmp_path / old).write_text(before + after)
    with pytest.raises(ConfigError, match="older 'headcount dpus credentials'"):
        load(tmp_path)
    assert issue(["283"], tmp_path) == {}  # written again, every password kept
    assert load(tmp_path).service_password == made[SERVICE_USERNAME]
    assert not (tmp_path / "mosquitto.acl").exists()


def test_load_names_the_command_when_the_directory_has_no_credentials(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="headcount dpus credentials --out"):
        load(tmp_path)


async def connect(port: int, username: str | None, password: str | None, client_id: str) -> None:
    async with aiomqtt.Client(
        "127.0.0.1", port, username=username, password=password, identifier=client_id
    ):
        pass


async def test_a_real_mosquitto_accepts_the_generated_files(tmp_path: Path, auth_dir: Path) -> None:
    made = issue(["283"], auth_dir)
    config = (auth_dir / "mosquitto.conf").read_text()
    with MosquittoServer(tmp_path / "mosquitto", config) as server:
        await connect(server.port, "283", made["283"], "283")
        await connect(server.port, SERVICE_USERNAME, made[SERVICE_USERNAME], "headcount")
        for username, password in [("283", "wrong"), (None, None), ("423", made["283"])]:
            with pytest.raises(aiomqtt.MqttCodeError):
                await connect(server.port, username, password, "x")

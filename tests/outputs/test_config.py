from __future__ import annotations

from pathlib import Path

import pytest

from headcount.errors import ConfigError
from headcount.outputs.config import ServiceConfig, Webhook, load_config

SECRET = "s3cret-s3cret-s3cret"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "headcount.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_webhooks_are_read(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            f'[[webhooks]]\nurl = "https://hooks.example.com/a?x=1"\nspaces = "*"\n'
            f'secret = "{SECRET}"\n'
            f'[[webhooks]]\nname = "ops"\nurl = "http://127.0.0.1:9/b"\nspaces = ["A", "B"]\n'
            f'secret = "{SECRET}"\n',
        )
    )
    assert config == ServiceConfig(
        (
            Webhook("hooks.example.com", "https://hooks.example.com/a?x=1", None, SECRET),
            Webhook("ops", "http://127.0.0.1:9/b", frozenset({"A", "B"}), SECRET),
        )
    )
    assert SECRET not in repr(config)
    assert config.webhooks[1].wants("A")
    assert not config.webhooks[1].wants("C")
    assert config.webhooks[0].wants("C")


def test_an_empty_file_has_no_webhooks(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == ServiceConfig()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("[[webhooks]\n", ["is not valid TOML"], id="toml"),
        pytest.param("hooks = 1\n", ["unknown key 'hooks'"], id="top-level-key"),
        pytest.param("webhooks = 1\n", ["webhooks must be [[webhooks]] tables"], id="not-tables"),
        pytest.param(
            f'[[webhooks]]\nurl = "ftp://x/"\nspaces = "*"\nsecret = "{SECRET}"\n',
            ["webhooks[0]: url 'ftp://x/' is not an http:// or https:// URL"],
            id="scheme",
        ),
        pytest.param(
            f'[[webhooks]]\nurl = "http://x:port/"\nspaces = "*"\nsecret = "{SECRET}"\n',
            ["is not an http:// or https:// URL"],
            id="bad-port",
        ),
        pytest.param(
            '[[webhooks]]\nurl = "http://x/"\nspaces = "*"\nsecret = "short"\n',
            ["secret must be a string of at least 16 characters"],
            id="short-secret",
        ),
        pytest.param(
            f'[[webhooks]]\nurl = "http://x/"\nspaces = []\nsecret = "{SECRET}"\n',
            ["spaces [] must be a non-empty list of space ids"],
            id="no-spaces",
        ),
        pytest.param(
            f'[[webhooks]]\nurl = "http://x/"\nsecret = "{SECRET}"\n',
            ["spaces None must be"],
            id="spaces-missing",
        ),
        pytest.param(
            f'[[webhooks]]\nurl = "http://x/"\nspaces = "*"\nsecret = "{SECRET}"\nsecrte = 1\n',
            ["unknown key 'secrte'"],
            id="typo",
        ),
        pytest.param(
            f'[[webhooks]]\nname = "a b"\nurl = "http://x/"\nspaces = "*"\nsecret = "{SECRET}"\n',
            ["name 'a b' must be 1 to 64 letters"],
            id="bad-name",
        ),
        pytest.param(
            f'[[webhooks]]\nurl = "http://x/"\nspaces = "*"\nsecret = "{SECRET}"\n' * 2,
            ["two webhooks are named 'x'"],
            id="same-name",
        ),
        pytest.param(
            '[[webhooks]]\nurl = 1\nspaces = "*"\n',
            ["url 1 is not", "secret must be"],
            id="every-problem-at-once",
        ),
    ],
)
def test_bad_files_are_refused_naming_the_flag_and_the_fix(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    message = str(refused.value)
    assert f"--config {path}" in message
    for part in expected:
        assert part in message


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config(tmp_path / "nope.toml")


def test_unknown_spaces_are_refused_once_the_topology_is_known() -> None:
    config = ServiceConfig((Webhook("ops", "http://x/", frozenset({"A", "Q"}), SECRET),))
    config.check_spaces(["A", "Q"], "--config f")
    with pytest.raises(ConfigError, match="space 'Q' is not in the topology"):
        config.check_spaces(["A"], "--config f")

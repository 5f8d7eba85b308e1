"""The tokens file: made by add_token with hashes only, read back, every problem reported."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from headcount.errors import ConfigError
from headcount.http.tokens import PREFIX, Scope, Tokens, add_token


def test_add_token_appends_a_hash_to_a_file_only_its_owner_reads(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    first = add_token(path, "grafana", Scope.READ)
    second = add_token(path, "ops", Scope.WRITE)
    assert first != second
    assert first.startswith(PREFIX)
    assert len(first) > 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert first not in text
    assert second not in text
    assert hashlib.sha256(first.encode()).hexdigest() in text
    tokens = Tokens.load(path)
    assert [(t.name, t.scope) for t in tokens.tokens] == [
        ("grafana", Scope.READ),
        ("ops", Scope.WRITE),
    ]
    found = tokens.find(second)
    assert found is not None
    assert found.name == "ops"
    assert tokens.find(second + "x") is None


def test_add_token_keeps_what_the_file_holds(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(
        "# made by hand\n[[token]]\nname = 'old'\nscope = 'read'\nsha256 = '" + "a" * 64 + "'"
    )
    add_token(path, "new", Scope.READ)
    assert path.read_text().startswith("# made by hand\n")
    assert [t.name for t in Tokens.load(path).tokens] == ["old", "new"]


@pytest.mark.parametrize("name", ["", "has space", 'quote"', "x" * 65, "é"])
def test_add_token_refuses_a_name_that_cannot_name_it(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="letters, digits"):
        add_token(tmp_path / "tokens.toml", name, Scope.READ)
    assert not (tmp_path / "tokens.toml").exists()


def test_add_token_refuses_a_name_taken_and_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    add_token(path, "grafana", Scope.READ)
    before = path.read_text()
    with pytest.raises(ConfigError, match="has a token named 'grafana' already"):
        add_token(path, "grafana", Scope.WRITE)
    assert path.read_text() == before
    path.write_text("[[token]\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        add_token(path, "ops", Scope.READ)


GOOD = "a" * 64


@pytest.mark.parametrize(
    ("text", "said"),
    [
        pytest.param("", ["holds no token", "headcount tokens add"], id="empty"),
        pytest.param("[[token]\n", ["is not valid TOML"], id="not-toml"),
        pytest.param("token = 1\n", ["must be [[token]] tables"], id="not-tables"),
        pytest.param(
            f"[[token]]\nname = 'a'\nscope = 'admin'\nsha256 = '{GOOD}'\n",
            ["token 'a': scope must be 'read' or 'write', not 'admin'"],
            id="scope",
        ),
        pytest.param(
            "[[token]]\nname = 'a'\nscope = 'read'\nsha256 = 'secret'\n",
            ["token 'a': sha256 must be 64 lowercase hex digits"],
            id="not-a-hash",
        ),
        pytest.param(
            "[[token]]\nscope = 'read'\ntoken = 'hc_x'\n",
            ["token 1: unknown key 'token'", "token 1: missing 'name'", "missing 'sha256'"],
            id="keys",
        ),
        pytest.param(
            f"[[token]]\nname = 'a'\nscope = 'read'\nsha256 = '{GOOD}'\n"
            f"[[token]]\nname = 'a'\nscope = 'write'\nsha256 = '{'b' * 64}'\n"
            f"[[token]]\nname = 'c'\nscope = 'read'\nsha256 = '{GOOD}'\n",
            ["token 'a': the name is used twice", "two tokens have the same sha256"],
            id="twice",
        ),
        pytest.param(
            f"other = 1\n[[token]]\nname = 'bad name'\nscope = 'read'\nsha256 = '{GOOD}'\n",
            ["unknown key 'other'", "token 1: name must be"],
            id="every-problem-at-once",
        ),
    ],
)
def test_a_file_that_cannot_be_used_says_why(tmp_path: Path, text: str, said: list[str]) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        Tokens.load(path)
    message = str(raised.value)
    assert str(path) in message
    for part in said:
        assert part in message


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the tokens file .*missing.toml: No such"):
        Tokens.load(tmp_path / "missing.toml")


def test_a_file_that_cannot_be_written_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot write the tokens file .*: No such file"):
        add_token(tmp_path / "missing-folder" / "tokens.toml", "grafana", Scope.READ)

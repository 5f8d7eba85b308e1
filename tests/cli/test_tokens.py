"""``headcount tokens add``: a token printed once, its hash kept in a file only its owner reads."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from headcount.http.tokens import Scope, Tokens
from tests.cli.support import run


def test_add_prints_a_token_once_and_keeps_its_hash(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "tokens.toml"
    added = run(capsys, "tokens", "add", "grafana", "--scope", "read", "--file", path)
    assert added.code == 0, added.err
    [token] = added.out.splitlines()  # stdout is the token alone, for $(...) and pipes
    assert token.startswith("hc_")
    assert "grafana" in added.err
    assert "shown only this once" in added.err
    assert "Restart" in added.err
    assert token not in added.err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token not in path.read_text()
    assert hashlib.sha256(token.encode()).hexdigest() in path.read_text()

    second = run(capsys, "tokens", "add", "ops", "--scope", "write", "--file", path)
    assert second.code == 0, second.err
    tokens = Tokens.load(path)
    assert [(t.name, t.scope) for t in tokens.tokens] == [
        ("grafana", Scope.READ),
        ("ops", Scope.WRITE),
    ]
    found = tokens.find(second.out.strip())
    assert found is not None
    assert found.name == "ops"


def test_the_file_defaults_to_the_environment_then_tokens_toml(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(capsys, "tokens", "add", "here", "--scope", "read").code == 0
    assert [t.name for t in Tokens.load(tmp_path / "tokens.toml").tokens] == ["here"]
    monkeypatch.setenv("HEADCOUNT_TOKENS", str(tmp_path / "env.toml"))
    assert run(capsys, "tokens", "add", "there", "--scope", "read").code == 0
    assert [t.name for t in Tokens.load(tmp_path / "env.toml").tokens] == ["there"]


def test_a_file_others_can_read_is_warned_about(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text("")
    path.chmod(0o644)
    added = run(capsys, "tokens", "add", "grafana", "--scope", "read", "--file", path)
    assert added.code == 0
    assert f"warning: {path} is readable by others (mode 644); 'chmod 600' it" in added.err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        pytest.param(["add", "bad name", "--scope", "read"], "letters, digits", id="name"),
        pytest.param(["add", "x", "--scope", "admin"], "invalid choice: 'admin'", id="scope"),
        pytest.param(["add", "x"], "--scope", id="no-scope"),
    ],
)
def test_refusals_exit_2_and_write_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], said: str
) -> None:
    try:
        result = run(capsys, "tokens", *argv)
        code, err = result.code, result.err
    except SystemExit as e:  # argparse's own refusals
        code, err = int(str(e.code)), capsys.readouterr().err
    assert code == 2
    assert said in err
    assert not (tmp_path / "tokens.toml").exists()


def test_a_name_taken_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, "tokens", "add", "grafana", "--scope", "read").code == 0
    before = (tmp_path / "tokens.toml").read_text()
    again = run(capsys, "tokens", "add", "grafana", "--scope", "write")
    assert again.code == 2
    assert again.out == ""
    assert "has a token named 'grafana' already" in again.err
    assert (tmp_path / "tokens.toml").read_text() == before

"""The ``headcount`` command itself: help, no command, and the real console script in a
subprocess (most other tests call :func:`headcount.cli.main` in-process: it runs its own event
loop, so the tests are plain functions)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from headcount.cli import build_parser, main
from headcount.cli.common import UsageError
from headcount.errors import (
    ConfigError,
    HeadcountError,
    InvalidTimestampError,
    PortTakenError,
    StoreBusyError,
    TopologyError,
    UnknownSpaceError,
)
from tests.cli.support import SEED_CSV, SEED_TOPOLOGY, expected_count, help_text, ms, run


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for command in ("import", "count", "migrate"):
        assert command in out


def test_import_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["import", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for option in ("--strict", "--snapshot-every", "--topology", "--store"):
        assert option in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"headcount {metadata.version('headcount')}\n"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "says"),
    [
        ("import", "it becomes the store's current topology"),
        ("serve", "it becomes the store's current topology"),
        ("replay", "a replay makes it the store's current topology; --verify and --dry-run only"),
        ("count", "the count is folded under it and the store's current topology is left"),
    ],
)
def test_each_command_says_what_becomes_of_its_topology(
    capsys: pytest.CaptureFixture[str], command: str, says: str
) -> None:
    assert f"(env HEADCOUNT_TOPOLOGY); {says}" in help_text(capsys, command)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UsageError("--at: no such moment"), 2),
        (ConfigError("cannot read --broker-config x.yaml"), 2),
        (PortTakenError("port 8080 is taken; choose another with --http-port"), 2),
        (UnknownSpaceError("Nowhere"), 2),
        (InvalidTimestampError("'yesterday' is not ISO-8601"), 2),
        (StoreBusyError("the store is busy"), 1),
        (TopologyError(["topology.toml: doorway X links no space"]), 1),
        (HeadcountError("the work failed"), 1),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_errors_exit_2_for_what_was_given_1_for_the_rest_said_once(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    error: HeadcountError,
    code: int,
) -> None:
    async def fails(_args: argparse.Namespace) -> int:
        raise error

    monkeypatch.setattr("headcount.cli.count.run", fails)
    result = run(capsys, "count", "A")
    assert (result.code, result.out) == (code, "")
    assert result.err == f"headcount count: {error}\n"


# --- the real console script -----------------------------------------------------------------


def _command() -> list[str]:
    """The installed ``headcount`` script of this interpreter's environment, else the same entry
    point through ``python -c``."""
    script = shutil.which("headcount", path=str(Path(sys.executable).parent)) or shutil.which(
        "headcount"
    )
    if script is not None:
        return [script]
    return [sys.executable, "-c", "from headcount.cli import main; raise SystemExit(main())"]


def _subprocess(tmp_path: Path, *argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_command(), *(str(arg) for arg in argv)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def test_console_script_import_and_count(db: str, tmp_path: Path) -> None:
    imported = _subprocess(tmp_path, "import", SEED_CSV, "--topology", SEED_TOPOLOGY, "--store", db)
    assert imported.returncode == 0, imported.stderr
    summary = json.loads(imported.stdout)
    assert (summary["rows"], summary["stored"]) == (563, 530)

    at = "2018-02-26T17:00:00Z"
    counted = _subprocess(tmp_path, "count", "B", "--at", at, "--store", db)
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout) == {
        "space_id": "B",
        "ts": "2018-02-26T17:00:00.000Z",
        "count": expected_count("B", ms(at)),
    }


def test_console_script_version(tmp_path: Path) -> None:
    said = _subprocess(tmp_path, "--version")
    assert said.returncode == 0, said.stderr
    assert said.stdout.split() == ["headcount", metadata.version("headcount")]


def test_console_script_errors_without_traceback(db: str, tmp_path: Path) -> None:
    bad_at = _subprocess(
        tmp_path,
        "count",
        "A",
        "--at",
        "2018-02-26T17:00",
        "--topology",
        SEED_TOPOLOGY,
        "--store",
        db,
    )
    assert bad_at.returncode != 0
    assert "offset" in bad_at.stderr
    assert "Traceback" not in bad_at.stderr
    assert bad_at.stdout == ""

    unknown = _subprocess(tmp_path, "count", "Nowhere", "--topology", SEED_TOPOLOGY, "--store", db)
    assert unknown.returncode == 2
    assert "'Nowhere'" in unknown.stderr
    assert "Traceback" not in unknown.stderr


# --- logging ---------------------------------------------------------------------------------


@pytest.fixture
def logger_levels() -> Iterator[None]:
    """Restore the levels ``main`` sets on the root logger and the noisy libraries."""
    loggers = [logging.getLogger(name) for name in ("", "amqtt", "transitions", "alembic")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


@pytest.mark.usefixtures("logger_levels")
@pytest.mark.parametrize(("verbose", "level"), [((), logging.WARNING), (("-v",), logging.DEBUG)])
def test_offline_commands_log_warnings_or_with_v_debug(
    capsys: pytest.CaptureFixture[str], db: str, verbose: tuple[str, ...], level: int
) -> None:
    assert run(capsys, *verbose, "migrate", "--store", db).code == 0
    assert logging.getLogger().level == level
    for noisy in ("amqtt", "transitions", "alembic"):
        assert logging.getLogger(noisy).level == level


def test_long_running_commands_log_info() -> None:
    """``serve`` and ``broker`` say what they do while they run (see tests/test_serve.py for
    the lines themselves); the offline commands and ``simulate`` only warn."""
    parser = build_parser()
    assert parser.parse_args(["serve"]).log_level == logging.INFO
    assert parser.parse_args(["broker"]).log_level == logging.INFO
    for argv in (["count", "A"], ["migrate"], ["replay"], ["import", "x.csv"], ["simulate"]):
        assert getattr(parser.parse_args(argv), "log_level", logging.WARNING) == logging.WARNING

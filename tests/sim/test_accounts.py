"""The simulator's DPU passwords: the lines ``headcount dpus credentials`` prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from headcount.sim.accounts import CREDENTIALS_FILE, read_credentials
from headcount.sim.errors import SimulatorError


def test_reads_the_printed_lines_from_a_file_or_a_directory(tmp_path: Path) -> None:
    text = "headcount\tservice-secret\n283\ts3cr:t\n\n423\tother\n"
    (tmp_path / "printed.tsv").write_text(text)
    (tmp_path / CREDENTIALS_FILE).write_text(text)
    expected = {"headcount": "service-secret", "283": "s3cr:t", "423": "other"}
    assert read_credentials(tmp_path / "printed.tsv") == expected
    assert read_credentials(tmp_path) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        pytest.param("283 secret\n", "line 1: expected 'dpu_id<TAB>password'", id="no-tab"),
        pytest.param("283\tok\n\tpass\n", "line 2", id="no-dpu-id"),
    ],
)
def test_a_line_that_is_not_id_tab_password_is_named(tmp_path: Path, text: str, says: str) -> None:
    (tmp_path / "c.tsv").write_text(text)
    with pytest.raises(SimulatorError, match=says):
        read_credentials(tmp_path / "c.tsv")


def test_a_missing_file_says_which(tmp_path: Path) -> None:
    with pytest.raises(SimulatorError, match=f"cannot read --credentials {tmp_path / 'none'}"):
        read_credentials(tmp_path / "none")

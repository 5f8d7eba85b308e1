"""The simulated DPUs' broker accounts: the passwords ``headcount dpus credentials`` printed."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from headcount.sim.errors import SimulatorError

__all__ = ["CREDENTIALS_FILE", "read_credentials"]

#: What ``--credentials DIR`` reads in ``DIR``: the lines ``headcount dpus credentials`` printed.
CREDENTIALS_FILE: Final = "credentials.tsv"


def read_credentials(path: Path) -> dict[str, str]:
    """DPU id to password from ``dpu_id<TAB>password`` lines (``path``, or its
    :data:`CREDENTIALS_FILE` if it is a directory); :class:`SimulatorError` if unreadable."""
    if path.is_dir():
        path = path / CREDENTIALS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SimulatorError(f"cannot read --credentials {path}: {e.strerror}") from e
    passwords: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        dpu_id, tab, password = line.partition("\t")
        if not tab or not dpu_id or not password:
            raise SimulatorError(
                f"--credentials {path}, line {number}: expected 'dpu_id<TAB>password', as"
                " 'headcount dpus credentials' prints them"
            )
        passwords[dpu_id] = password
    return passwords

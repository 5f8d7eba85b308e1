"""The topology loader under fuzzing: generated near-miss files (wrong types, missing and
unknown keys, bad ids, time zones, times and placements, broken TOML, bytes that are not
UTF-8) give a topology or a :class:`TopologyError` listing problems, never another
exception; and a command given such a file ends with exit code 1 or 2 and a message.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Final

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from headcount.domain.topology import Topology, document_text
from headcount.errors import TopologyError
from tests.cli.support import run
from tests.fuzzing import fuzz

#: Generated files per run: loaded directly, and through ``headcount import``.
FILES: Final = 1000
COMMANDS: Final = 20

#: TOML values, right for some keys and wrong for others.
values = st.sampled_from(
    [
        '"A"', '"B"', '"X"', '"Z"', '"283"', '""', '"Europe/Paris"', '"UTC"', '"Mars/Olympus"',
        '"../../etc/passwd"', '"Europe/Paris\\u0000"', '"04:00"', '"24:00"', '"4:00"', "04:00:00",
        "04:00:30", "1", "-1", "0", "2", "1.0", "true", "-5", "9223372036854775807", "1e400",
        "nan", '"2018-01-01T00:00:00Z"', '"2018-01-01T00:00:00"', "2018-01-01T00:00:00Z",
        "2018-01-01T00:00:00", "2018-01-01", '"0001-01-01T00:00:00Z"', "9999-12-31T23:59:59Z",
        '"0001-01-01T00:00:00+01:00"', "[]", "[1, 2]", "{}", '{ space = "A" }',
        '[{ space = "A", sensor_placement = 1 }]', '[{ space = "B", sensor_placement = -1 }]',
        '[{ space = "A", sensor_placement = 0 }]', '[{ space = "Q", sensor_placement = 1 }]',
        '[{ space = "A", sensor_placement = 1 }, { space = "A", sensor_placement = 1 }]',
        '["A"]', '"\\udcff"', '"' + "x" * 300 + '"', '"a\\nb"', "= broken", '"unclosed',
    ]
)  # fmt: skip
KEYS: Final = {
    "spaces": [
        "id",
        "name",
        "parent",
        "time_zone",
        "daily_reset",
        "capacity",
        "alert_at",
        "allow_negative",
    ],
    "doorways": ["id", "name", "links"],
    "assignments": ["dpu", "doorway", "valid_from", "valid_until"],
}
keys = {
    table: st.sampled_from([*names, "ID", "colour", "valid_form", "spaces"])
    for table, names in KEYS.items()
}


@st.composite
def tables(draw: st.DrawFn, name: str) -> str:
    lines = [draw(st.sampled_from([f"[[{name}]]", f"[{name}]", f"[[{name}.x]]"]))]
    for key in draw(st.lists(keys[name], max_size=6)):
        lines.append(f"{key} = {draw(values)}")
    return "\n".join(lines)


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.sampled_from(list(KEYS)).flatmap(tables), max_size=7))
    text = "\n\n".join(parts) + "\n"
    data = text.encode("utf-8")
    damage = draw(st.sampled_from(["none"] * 5 + ["not-utf8", "bom", "cut", "bytes"]))
    if damage == "not-utf8":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + b"\xff" + data[at:]
    elif damage == "bom":
        data = b"\xef\xbb\xbf" + data
    elif damage == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif damage == "bytes":
        data = draw(st.binary(max_size=64))
    return data


SEED_TEXT = (Path(__file__).resolve().parents[2] / "examples/seed/topology.toml").read_bytes()


@fuzz(FILES)
@given(documents())
@example(SEED_TEXT)
@example(SEED_TEXT + b'\n[[spaces]]\nid = "\xff"\n')
@example(b'[[spaces]]\nid = "A"\ntime_zone = "Europe/Paris\\u0000"\n')
def test_any_file_loads_or_lists_its_problems(data: bytes) -> None:
    try:
        topology = Topology.from_toml(document_text(data, source="t.toml"), source="t.toml")
    except TopologyError as error:
        problems = error.problems
    else:
        assert Topology.from_toml(topology.to_toml()) == topology
        return
    assert problems
    assert all(problem.startswith("t.toml: ") for problem in problems)


def test_a_file_that_is_not_utf8_is_a_topology_error() -> None:
    with pytest.raises(TopologyError) as caught:
        document_text(b'[[spaces]]\nid = "\xff"\n', source="t.toml")
    assert caught.value.problems == [
        "t.toml: is not UTF-8 text (byte 0xff at offset 17); save the file as UTF-8."
    ]


@fuzz(COMMANDS)
@given(documents())
@example(data=b'[[spaces]]\nid = "\xff"\n')
def test_a_command_given_any_file_never_shows_a_traceback(
    capsys: pytest.CaptureFixture[str], data: bytes
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "topology.toml"
        path.write_bytes(data)
        export = Path(folder) / "export.csv"
        export.write_text("timestamp,direction,dpu_id\n2018-02-26T17:00:00Z,1,283\n")
        store = f"sqlite+aiosqlite:///{Path(folder) / 's.db'}"
        result = run(capsys, "import", export, "--store", store, "--topology", path)
    assert result.code in (0, 1, 2)
    assert "Traceback" not in result.err
    if result.code:
        assert result.err.startswith("headcount import: ")

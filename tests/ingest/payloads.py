"""Generated MQTT input for the fuzz tests: payloads, topics and status texts, right, nearly
right and plainly wrong, with an independent statement of the wire contract to judge them by.

A payload comes with the object it was packed from (``None`` for bytes that were not packed
from one: random, truncated, mutated, hand-made headers), so a test can say exactly whether
:func:`headcount.ingest.wire.decode` must accept it.
"""

from __future__ import annotations

import math
import struct
from typing import Final

import msgpack  # type: ignore[import-untyped, unused-ignore]
from hypothesis import strategies as st

from headcount.ingest.wire import MAX_DPU_ID_LEN, Reason

#: The reasons :func:`decode` may give; the others belong to screening, topics and status.
STRUCTURAL: Final = frozenset(
    {
        Reason.NOT_MSGPACK,
        Reason.BAD_SHAPE,
        Reason.BAD_FIELD,
        Reason.BAD_DIRECTION,
        Reason.OVERSIZE,
        Reason.TOO_MANY,
    }
)
KEYS: Final = ("seq", "ts", "direction")

#: Integers at the edges of msgpack's encodings and of the contract's ranges.
EDGE_INTS: Final = (
    0, 1, -1, 2, -2, 127, 128, 255, 256, 2**15, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
    2**53 - 1, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**31), -(2**63),
    1_519_634_762_903, 1_700_000_000_000,
)  # fmt: skip
EDGE_FLOATS: Final = (0.0, -0.0, 1.0, -1.0, 0.5, math.nan, math.inf, -math.inf, 2.0**53, 1e300)

ints = st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.sampled_from(EDGE_INTS)
floats = st.floats() | st.sampled_from(EDGE_FLOATS)
#: msgpack extension types (the timestamp type -1 included) and timestamps from the distant past
#: to the far future.
exts = st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=16))
timestamps = st.builds(
    msgpack.Timestamp,
    st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.sampled_from([0, -1, 2**32, 2**34]),
    st.integers(min_value=0, max_value=999_999_999),
)
texts = (
    st.text(max_size=12)
    | st.sampled_from(KEYS)
    | st.sampled_from(["x" * 255, "x" * 256, "x" * 257, "Seq", "seq ", "dirección"])
)
scalars = (
    st.none() | st.booleans() | ints | floats | texts | st.binary(max_size=12) | exts | timestamps
)
#: Map keys msgpack can pack: the contract's, near misses, and non-string keys.
map_keys = st.sampled_from(KEYS) | texts | st.sampled_from([b"seq", 1, None, True, 1.5])
objects = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(map_keys, children, max_size=4)
    ),
    max_leaves=8,
)
#: Field values that are right, nearly right (booleans, floats, edges) or plainly wrong.
field_values = ints | st.sampled_from([True, False, 1.0, -1.0]) | objects


@st.composite
def near_miss_events(draw: st.DrawFn) -> dict[object, object]:
    """An event map with each field right or wrong, and keys sometimes missing or extra."""
    event: dict[object, object] = {
        "seq": draw(st.integers(0, 2**63 - 1) | field_values),
        "ts": draw(st.integers(0, 2**53 - 1) | field_values),
        "direction": draw(st.sampled_from([1, -1]) | field_values),
    }
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=3, unique=True)):
        if draw(st.integers(0, 3)) == 0:
            del event[key]
    event.update(draw(st.dictionaries(map_keys, scalars, max_size=2)))
    return event


valid_events = st.fixed_dictionaries(
    {
        "seq": st.integers(0, 2**63 - 1) | st.sampled_from([0, 2**63 - 1]),
        "ts": st.integers(0, 2**53 - 1) | st.sampled_from([0, 2**53 - 1]),
        "direction": st.sampled_from([1, -1]),
    }
)
events = valid_events | near_miss_events()
payload_objects = (
    events
    | st.lists(events, max_size=6)
    | st.lists(st.lists(events, max_size=2), min_size=1, max_size=2)  # nested arrays
    | objects
)


def pack(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


#: Headers that declare a string, binary, extension, array or map of any length, followed by
#: fewer bytes than declared (or any bytes at all).
_HEADERS: Final = (b"\xd9", b"\xda", b"\xdb", b"\xc4", b"\xc5", b"\xc6", b"\xdc", b"\xdd",
                   b"\xde", b"\xdf", b"\xc7", b"\xc8", b"\xc9", b"\xd4", b"\xd8")  # fmt: skip


@st.composite
def big_headers(draw: st.DrawFn) -> bytes:
    header = draw(st.sampled_from(_HEADERS))
    size = {0xD9: 1, 0xC4: 1, 0xC7: 1, 0xDA: 2, 0xC5: 2, 0xC8: 2, 0xDC: 2, 0xDE: 2}.get(
        header[0], 4
    )
    if header[0] in (0xD4, 0xD8):  # fixext: no length, a type byte
        size = 0
    length = draw(st.integers(0, 2 ** (8 * size) - 1)).to_bytes(size, "big") if size else b""
    ext_type = (
        draw(st.binary(min_size=1, max_size=1))
        if header[0] in (0xC7, 0xC8, 0xC9, 0xD4, 0xD8)
        else b""
    )
    prefix = draw(st.sampled_from([b"", b"\x81\xa3seq", b"\x91", b"\x83\xa3seq\x01\xa2ts"]))
    return prefix + header + length + ext_type + draw(st.binary(max_size=32))


@st.composite
def raw_timestamps(draw: st.DrawFn) -> bytes:
    """msgpack timestamp extensions (type -1) with any bytes: invalid nanoseconds included."""
    body = draw(st.binary(min_size=4, max_size=4) | st.binary(min_size=8, max_size=8)
                | st.binary(min_size=12, max_size=12))  # fmt: skip
    head = {4: b"\xd6\xff", 8: b"\xd7\xff", 12: b"\xc7\x0c\xff"}[len(body)]
    return b"\x83\xa3seq\x01\xa9direction\x01\xa2ts" + head + body


@st.composite
def single_floats(draw: st.DrawFn) -> bytes:
    """An event whose field is a 32-bit float, which Python never packs by itself."""
    field = draw(st.sampled_from(KEYS))
    value = b"\xca" + struct.pack(">f", draw(st.floats(width=32)))
    others = b"".join(pack(k) + pack(1) for k in KEYS if k != field)
    return b"\x83" + pack(field) + value + others


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A packed payload truncated, extended, or with bytes replaced, inserted or removed."""
    data = bytearray(pack(draw(valid_events | st.lists(valid_events, min_size=1, max_size=3))))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "append"]))
        byte = draw(st.integers(0, 255))
        if action == "replace" and at < len(data):
            data[at] = byte
        elif action == "insert":
            data.insert(at, byte)
        elif action == "delete" and at < len(data):
            del data[at]
        elif action == "truncate":
            del data[at:]
        elif action == "append":
            data += draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@st.composite
def deep_nesting(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(1, 5000))
    return b"\x91" * depth + pack(draw(valid_events))


unpacked_payloads = (
    st.binary(max_size=64) | big_headers() | raw_timestamps() | single_floats() | mutated()
    | deep_nesting()
)  # fmt: skip


def is_valid_event(obj: object) -> bool:
    """The contract for one event map, stated independently of the decoder."""
    if not isinstance(obj, dict) or set(obj) != set(KEYS):
        return False
    seq, ts, direction = obj["seq"], obj["ts"], obj["direction"]
    return (
        type(seq) is int and 0 <= seq < 2**63
        and type(ts) is int and 0 <= ts < 2**53
        and type(direction) is int and direction in (1, -1)
    )  # fmt: skip


def is_valid_payload(obj: object, max_batch: int) -> bool:
    if isinstance(obj, list):
        return 0 < len(obj) <= max_batch and all(is_valid_event(item) for item in obj)
    return is_valid_event(obj)


# --- topics and status -------------------------------------------------------------------------

_LEVEL_CHARS = st.characters(codec="utf-8") | st.sampled_from(["/", "+", "#", "\x00", "\n", " "])
dpu_ids = (
    st.text(_LEVEL_CHARS, max_size=8)
    | st.sampled_from(["283", "423", "999", "d" * MAX_DPU_ID_LEN, "d" * (MAX_DPU_ID_LEN + 1)])
    | st.integers(MAX_DPU_ID_LEN - 1, MAX_DPU_ID_LEN + 1).map(lambda n: "é" * n)
)
kinds = st.sampled_from(["traversals", "status", "Traversals", "", "traversals/x", "events"])


def _as_received(raw: bytes) -> str:
    """A topic as the MQTT layer hands it over: bytes that are not UTF-8 as lone surrogates."""
    return raw.decode("utf-8", "surrogateescape")


topics = (
    st.builds(lambda dpu, kind: f"dpus/{dpu}/{kind}", dpu_ids, kinds)
    | st.text(max_size=40)
    | st.builds(
        lambda raw, kind: _as_received(b"dpus/" + raw + b"/" + kind.encode()),
        st.binary(min_size=1, max_size=8),
        kinds,
    )
    | st.binary(max_size=40).map(_as_received)
)


def is_valid_dpu_id(dpu_id: str) -> bool:
    """The topic level rule, stated independently: 1 to 64 printable characters of valid
    UTF-8, none of them '/', '+' or '#'."""
    try:
        dpu_id.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return (
        0 < len(dpu_id) <= MAX_DPU_ID_LEN
        and dpu_id.isprintable()
        and not any(char in dpu_id for char in "/+#")
    )


FULLWIDTH: Final = "\uff2f\uff2e\uff2c\uff29\uff2e\uff25"  # ONLINE in fullwidth letters
status_payloads = (
    st.binary(max_size=300)
    | st.builds(
        lambda before, word, after: (before + word + after).encode("utf-8"),
        st.sampled_from(["", " ", "\t", "\r\n", "\x00", "\u00a0", "\u2028"]),
        st.sampled_from(["online", "offline", "ONLINE", "Offline", "onl1ne", "on line", FULLWIDTH]),
        st.sampled_from(["", " ", "\n", "\x00", "!", "\u3000"]),
    )
    | st.sampled_from(["online", "offline"]).map(pack)
    | st.fixed_dictionaries(
        {},
        optional={
            "state": st.sampled_from(["online", "offline", "ONLINE", "away", 1, None]),
            "first": st.none() | st.integers(-2, 2**64 - 1) | st.sampled_from([1.5, "1", True]),
            "seq": st.none() | st.integers(-2, 2**64 - 1) | st.sampled_from([2.0, "9", False]),
            "sent": st.none() | st.integers(-2, 2**64 - 1) | st.sampled_from([0.0, "3", True]),
            "extra": st.integers(-(2**63), 2**64 - 1),
        },
    ).map(pack)
)

"""The MQTT wire contract: topics, msgpack payloads, status payloads, per-event screening."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headcount.domain.events import Direction, Traversal
from headcount.domain.timefmt import format_ms, parse_iso
from headcount.domain.topology import Topology
from headcount.errors import HeadcountError
from headcount.ingest import wire
from headcount.ingest.wire import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_SKEW_MS,
    SUBSCRIPTION,
    Reason,
    Rejection,
    WireError,
    decode,
    decode_status,
    encode,
    parse_topic,
    screen,
    status_topic,
    traversals_topic,
)

if TYPE_CHECKING:
    from collections.abc import Callable

_T = TypeVar("_T")
SEED = Path(__file__).resolve().parents[2] / "examples" / "seed" / "topology.toml"
T2018 = parse_iso("2018-01-01T00:00:00Z")
FEB = parse_iso("2018-02-26T17:00:00Z")

#: The README's byte example: ``{"seq": 1, "ts": 1519634762903, "direction": 1}``, i.e. DPU
#: traversal number 1 at 2018-02-26T08:46:02.903Z, walking toward the DPU. Byte by byte:
#:   83                             map of 3 entries
#:   a3 73 65 71                    str "seq"
#:   01                             1
#:   a2 74 73                       str "ts"
#:   cf 00 00 01 61 d1 4a 4c 97     uint 64: 1519634762903 (milliseconds need more than 32 bits)
#:   a9 64 69 72 65 63 74 69 6f 6e  str "direction"
#:   01                             1
EXAMPLE = Traversal("283", 1, 1519634762903, 1)
EXAMPLE_HEX = (
    "83 a3 73 65 71 01 a2 74 73 cf 00 00 01 61 d1 4a 4c 97 a9 64 69 72 65 63 74 69 6f 6e 01"
)

STRUCTURAL = frozenset(
    {
        Reason.NOT_MSGPACK,
        Reason.BAD_SHAPE,
        Reason.BAD_FIELD,
        Reason.BAD_DIRECTION,
        Reason.OVERSIZE,
        Reason.TOO_MANY,
        Reason.DPU_MISMATCH,  # decode() refuses a payload with such an event whole
    }
)


def pack(obj: object) -> bytes:
    """Hand-built payloads, independent of :func:`encode`."""
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def event(**fields: object) -> dict[str, object]:
    """A valid event map, with ``fields`` replaced (or removed when given as ``...``)."""
    data: dict[str, object] = {"seq": 7, "ts": FEB, "direction": 1}
    data.update(fields)
    return {key: value for key, value in data.items() if value is not ...}


def rejection_of(payload: bytes, **limits: int) -> Rejection:
    with pytest.raises(WireError) as caught:
        decode("283", payload, **limits)
    return caught.value.rejection


def attempt(call: Callable[[], _T]) -> _T | Rejection:
    """The call's result, or the rejection of the WireError it raised (any other error escapes)."""
    try:
        return call()
    except WireError as error:
        return error.rejection


def seed() -> Topology:
    return Topology.from_toml(SEED.read_text(encoding="utf-8"), source=str(SEED))


# --- strategies --------------------------------------------------------------------------------

seqs = st.integers(min_value=0, max_value=2**63 - 1)
timestamps = st.integers(min_value=0, max_value=2**53 - 1)
DIRECTIONS: tuple[Direction, ...] = (1, -1)
directions = st.sampled_from(DIRECTIONS)


@st.composite
def traversals(draw: st.DrawFn, dpu_id: str = "283") -> Traversal:
    return Traversal(dpu_id, draw(seqs), draw(timestamps), draw(directions))


msgpack_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
msgpack_objects = st.recursive(
    msgpack_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["seq", "ts", "direction"]) | st.text(max_size=6), children, max_size=4
        )
    ),
    max_leaves=20,
)
#: Field values that are right, nearly right (bools, floats, edges) or plain wrong.
field_values = (
    st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.sampled_from([0, 1, -1, 2, 2**53 - 1, 2**53, 2**63 - 1, 2**63, True, False, 1.0, -1.0])
    | msgpack_objects
)
event_like = st.fixed_dictionaries(
    {"seq": field_values | seqs, "ts": field_values | timestamps, "direction": field_values},
    optional={
        "extra": msgpack_scalars,
        "dpu_id": st.sampled_from(["283", "423"]) | msgpack_scalars,
    },
)
payload_objects = event_like | st.lists(event_like, max_size=4) | msgpack_objects


def is_valid_event(obj: object) -> bool:
    """An independent statement of the contract for one event map."""
    if not isinstance(obj, dict) or set(obj) - {"dpu_id"} != {"seq", "ts", "direction"}:
        return False
    if obj.get("dpu_id", "283") != "283":  # decoded as DPU 283's: it may name only 283
        return False
    seq, ts, direction = obj["seq"], obj["ts"], obj["direction"]
    return (
        type(seq) is int
        and 0 <= seq < 2**63
        and type(ts) is int
        and 0 <= ts < 2**53
        and type(direction) is int
        and direction in (1, -1)
    )


def is_valid_payload(obj: object) -> bool:
    if isinstance(obj, list):
        return 0 < len(obj) <= DEFAULT_MAX_BATCH and all(is_valid_event(item) for item in obj)
    return is_valid_event(obj)


# --- the reason codes and the error ------------------------------------------------------------


def test_reason_codes_are_stable_snake_case() -> None:
    assert {reason.name: reason.value for reason in Reason} == {
        "NOT_MSGPACK": "not_msgpack",
        "BAD_SHAPE": "bad_shape",
        "BAD_FIELD": "bad_field",
        "BAD_DIRECTION": "bad_direction",
        "OVERSIZE": "oversize",
        "TOO_MANY": "too_many",
        "UNKNOWN_DPU": "unknown_dpu",
        "FUTURE_TS": "future_ts",
        "BAD_TOPIC": "bad_topic",
        "BAD_STATUS": "bad_status",
        "DPU_MISMATCH": "dpu_mismatch",
        "UNSTORABLE": "unstorable",
        "RATE_LIMITED": "rate_limited",
    }
    assert f"{Reason.FUTURE_TS}" == "future_ts"


def test_wire_error_carries_its_rejection() -> None:
    rejection = rejection_of(pack(event(direction=2)))
    assert rejection == Rejection(Reason.BAD_DIRECTION, "direction is 2; expected 1 or -1")
    error = WireError(rejection)
    assert isinstance(error, HeadcountError)
    assert error.rejection is rejection
    assert str(error) == rejection.detail
    assert rejection.event is None
    with pytest.raises(AttributeError):
        rejection.detail = "changed"  # type: ignore[misc]


# --- encoding and the round trip ---------------------------------------------------------------


def test_encode_matches_the_documented_bytes() -> None:
    expected = bytes.fromhex(EXAMPLE_HEX)
    assert len(expected) == 29
    assert encode(EXAMPLE) == expected
    assert msgpack.unpackb(expected) == {"seq": 1, "ts": 1519634762903, "direction": 1}
    assert format_ms(EXAMPLE.ts) == "2018-02-26T08:46:02.903Z"
    assert decode("283", expected) == [EXAMPLE]
    # The DPU id is not in the payload: the topic decides it.
    assert decode("423", expected) == [Traversal("423", 1, 1519634762903, 1)]


def test_encode_sequence_is_an_array_even_of_one() -> None:
    assert encode([EXAMPLE]) == b"\x91" + bytes.fromhex(EXAMPLE_HEX)
    assert encode((EXAMPLE, EXAMPLE)) == b"\x92" + bytes.fromhex(EXAMPLE_HEX) * 2


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param([], id="empty-batch"),
        pytest.param(Traversal("283", -1, FEB, 1), id="negative-seq"),
        pytest.param(Traversal("283", 2**63, FEB, 1), id="seq-too-large"),
        pytest.param(Traversal("283", 1, 2**53, 1), id="ts-too-large"),
        pytest.param(Traversal("283", 1, FEB, 2), id="direction-2"),  # type: ignore[arg-type]
        pytest.param([EXAMPLE, Traversal("283", 1, -5, 1)], id="bad-event-in-batch"),
    ],
)
def test_encode_refuses_what_decode_would_refuse(bad: Traversal | list[Traversal]) -> None:
    with pytest.raises(ValueError, match="cannot encode"):
        encode(bad)


@given(traversals(dpu_id="dpu-7"))
def test_round_trip_single(traversal: Traversal) -> None:
    payload = encode(traversal)
    assert payload[0] == 0x83  # one map, three entries
    assert decode("dpu-7", payload) == [traversal]


@given(st.lists(traversals(dpu_id="dpu-7"), min_size=1, max_size=40))
def test_round_trip_batch(batch: list[Traversal]) -> None:
    assert decode("dpu-7", encode(batch)) == batch


@given(traversals(), st.text(min_size=1, max_size=8))
def test_dpu_id_comes_from_the_caller_only(traversal: Traversal, dpu_id: str) -> None:
    (decoded,) = decode(dpu_id, encode(traversal))
    assert decoded.dpu_id == dpu_id
    assert (decoded.seq, decoded.ts, decoded.direction) == (
        traversal.seq,
        traversal.ts,
        traversal.direction,
    )


def test_any_integer_encoding_is_accepted() -> None:
    # Firmware may use fixed-width types: int64 for seq, uint64 for ts, int8 for direction.
    payload = (
        b"\x83"
        + b"\xa3seq"
        + b"\xd3"
        + (5).to_bytes(8, "big", signed=True)
        + b"\xa2ts"
        + b"\xcf"
        + FEB.to_bytes(8, "big")
        + b"\xa9direction"
        + b"\xd0\xff"
    )
    assert decode("283", payload) == [Traversal("283", 5, FEB, -1)]


def test_key_order_does_not_matter() -> None:
    payload = pack({"direction": -1, "ts": FEB, "seq": 3})
    assert decode("283", payload) == [Traversal("283", 3, FEB, -1)]


def test_largest_values_are_accepted() -> None:
    payload = pack({"seq": 2**63 - 1, "ts": 2**53 - 1, "direction": -1})
    assert decode("283", payload) == [Traversal("283", 2**63 - 1, 2**53 - 1, -1)]
    assert decode("283", pack(event(seq=0, ts=0))) == [Traversal("283", 0, 0, 1)]


# --- one payload per rejection reason ----------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason", "says"),
    [
        pytest.param(b"", Reason.NOT_MSGPACK, "empty", id="empty-payload"),
        pytest.param(b"\xc1", Reason.NOT_MSGPACK, "no msgpack type", id="never-used-byte"),
        pytest.param(pack(event())[:-1], Reason.NOT_MSGPACK, "incomplete", id="truncated"),
        pytest.param(pack(event()) + b"\xc0", Reason.NOT_MSGPACK, "after", id="trailing-nil"),
        pytest.param(pack(event()) * 2, Reason.NOT_MSGPACK, "after", id="two-maps-back-to-back"),
        pytest.param(b"\x81\xa3\xff\xfe\xfd\x01", Reason.NOT_MSGPACK, "UTF-8", id="bad-utf8-key"),
        pytest.param(pack({1: 2}), Reason.NOT_MSGPACK, "key", id="int-map-key"),
        pytest.param(b"\x91" * 5000 + b"\xc0", Reason.NOT_MSGPACK, "nested", id="too-deep"),
        pytest.param(pack(5), Reason.BAD_SHAPE, "is an integer 5", id="int"),
        pytest.param(pack(None), Reason.BAD_SHAPE, "payload is nil", id="nil"),
        pytest.param(pack("online"), Reason.BAD_SHAPE, "a string 'online'", id="str"),
        pytest.param(pack(b"\x00"), Reason.BAD_SHAPE, "binary data", id="bin"),
        pytest.param(pack([]), Reason.BAD_SHAPE, "empty array", id="empty-array"),
        pytest.param(
            pack([1, 2]),
            Reason.BAD_SHAPE,
            "event 0: the event is an integer 1, not a map",
            id="ints",
        ),
        pytest.param(pack([[event()]]), Reason.BAD_SHAPE, "not a map", id="nested-array"),
        pytest.param(pack(event(ts=...)), Reason.BAD_SHAPE, "missing key(s) 'ts'", id="no-ts"),
        pytest.param(pack({}), Reason.BAD_SHAPE, "'direction', 'seq', 'ts'", id="empty-map"),
        pytest.param(pack(event(dpu="283")), Reason.BAD_SHAPE, "unexpected", id="extra-dpu-key"),
        pytest.param(
            pack({b"seq": 1, "ts": FEB, "direction": 1}),
            Reason.BAD_SHAPE,
            "unexpected key(s) b'seq'",
            id="binary-key",
        ),
        pytest.param(pack(event(seq=-1)), Reason.BAD_FIELD, "seq is -1", id="seq-negative"),
        pytest.param(pack(event(seq=2**63)), Reason.BAD_FIELD, "too large", id="seq-2**63"),
        pytest.param(pack(event(seq=2**64 - 1)), Reason.BAD_FIELD, "too large", id="seq-uint64"),
        pytest.param(pack(event(seq="7")), Reason.BAD_FIELD, "seq is a string '7'", id="seq-str"),
        pytest.param(pack(event(seq=7.0)), Reason.BAD_FIELD, "seq is a float 7.0", id="seq-float"),
        pytest.param(pack(event(seq=None)), Reason.BAD_FIELD, "seq is nil", id="seq-nil"),
        pytest.param(pack(event(ts=-1)), Reason.BAD_FIELD, "ts is -1", id="ts-negative"),
        pytest.param(pack(event(ts=2**53)), Reason.BAD_FIELD, "too large", id="ts-2**53"),
        pytest.param(pack(event(ts=1.5e12)), Reason.BAD_FIELD, "ts is a float", id="ts-float"),
        pytest.param(pack(event(ts="2018-02-26")), Reason.BAD_FIELD, "ts is a string", id="ts-str"),
        pytest.param(
            pack(event(ts=msgpack.Timestamp(1519634762, 903_000_000))),
            Reason.BAD_FIELD,
            "ts is a msgpack timestamp",
            id="ts-msgpack-timestamp-ext",
        ),
        pytest.param(pack(event(direction=0)), Reason.BAD_DIRECTION, "is 0", id="direction-0"),
        pytest.param(pack(event(direction=2)), Reason.BAD_DIRECTION, "is 2", id="direction-2"),
        pytest.param(pack(event(direction=-2)), Reason.BAD_DIRECTION, "is -2", id="direction--2"),
        pytest.param(
            pack(event(direction=1.0)), Reason.BAD_DIRECTION, "a float 1.0", id="dir-float"
        ),
        pytest.param(pack(event(direction="in")), Reason.BAD_DIRECTION, "a string", id="dir-str"),
        pytest.param(
            pack(event(direction=None)), Reason.BAD_DIRECTION, "direction is nil", id="dir-nil"
        ),
        pytest.param(
            pack([event(), event(direction=2)] * 3000),
            Reason.BAD_DIRECTION,
            "event 1: direction is 2",
            id="first-bad-event-named",
        ),
        pytest.param(b"\x00" * 1_048_577, Reason.OVERSIZE, "1048577 bytes", id="oversize"),
        pytest.param(pack([event()] * 10_001), Reason.TOO_MANY, "10001", id="too-many"),
    ],
)
def test_each_reason(payload: bytes, reason: Reason, says: str) -> None:
    rejection = rejection_of(payload)
    assert rejection.reason is reason
    assert says in rejection.detail
    assert "expected" in rejection.detail or reason in {Reason.OVERSIZE, Reason.TOO_MANY}
    assert rejection.event is None


def test_detail_names_the_event_index_in_a_batch() -> None:
    batch = [event(seq=0), event(seq=1), event(seq=2), event(seq=3, direction=2), event(seq=4)]
    assert rejection_of(pack(batch)) == Rejection(
        Reason.BAD_DIRECTION, "event 3: direction is 2; expected 1 or -1"
    )
    assert rejection_of(pack(event(direction=2))).detail == "direction is 2; expected 1 or -1"


def test_one_bad_event_refuses_the_whole_payload() -> None:
    good = [event(seq=n) for n in range(10)]
    assert len(decode("283", pack(good))) == 10
    assert rejection_of(pack([*good, event(seq=-1)])).reason is Reason.BAD_FIELD


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        pytest.param({"seq": True}, Reason.BAD_FIELD, id="seq-true"),
        pytest.param({"seq": False}, Reason.BAD_FIELD, id="seq-false"),
        pytest.param({"ts": True}, Reason.BAD_FIELD, id="ts-true"),
        pytest.param({"ts": False}, Reason.BAD_FIELD, id="ts-false"),
        pytest.param({"direction": True}, Reason.BAD_DIRECTION, id="direction-true"),
        pytest.param({"direction": False}, Reason.BAD_DIRECTION, id="direction-false"),
    ],
)
def test_booleans_are_not_integers(fields: dict[str, object], reason: Reason) -> None:
    payload = pack(event(**fields))
    assert b"\xc2" in payload or b"\xc3" in payload  # msgpack really sent a bool
    rejection = rejection_of(payload)
    assert rejection.reason is reason
    assert "is a boolean" in rejection.detail


def test_true_is_refused_even_though_it_equals_one() -> None:
    assert decode("283", pack(event(direction=1))) == [Traversal("283", 7, FEB, 1)]
    assert rejection_of(pack(event(direction=True))).reason is Reason.BAD_DIRECTION


# --- limits ------------------------------------------------------------------------------------


def test_oversize_boundary() -> None:
    payload = pack(event())
    assert decode("283", payload, max_payload=len(payload)) == [Traversal("283", 7, FEB, 1)]
    rejection = rejection_of(payload, max_payload=len(payload) - 1)
    assert rejection.reason is Reason.OVERSIZE
    assert f"{len(payload)} bytes" in rejection.detail


def _unpack_must_not_run(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("msgpack.unpackb was called")


def test_oversize_is_checked_before_unpacking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(msgpack, "unpackb", _unpack_must_not_run)
    rejection = rejection_of(pack([event()] * 100), max_payload=100)
    assert rejection.reason is Reason.OVERSIZE
    assert rejection_of(b"\xc1" * 2000, max_payload=1000).reason is Reason.OVERSIZE


def test_batch_limit_boundary() -> None:
    assert len(decode("283", pack([event(seq=n) for n in range(3)]), max_batch=3)) == 3
    rejection = rejection_of(pack([event(seq=n) for n in range(4)]), max_batch=3)
    assert rejection.reason is Reason.TOO_MANY
    assert "4 events" in rejection.detail
    assert "at most 3" in rejection.detail


def test_default_batch_limit_boundary() -> None:
    batch = [event(seq=n) for n in range(DEFAULT_MAX_BATCH)]
    assert len(decode("283", pack(batch))) == DEFAULT_MAX_BATCH


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b"\x9f", id="fixarray-15"),
        pytest.param(b"\xdc\xff\xff", id="array16-65535"),
        pytest.param(b"\xdd\xff\xff\xff\xff", id="array32-4294967295"),
    ],
)
def test_array_length_is_checked_before_unpacking(
    header: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(msgpack, "unpackb", _unpack_must_not_run)
    assert rejection_of(header, max_batch=10).reason is Reason.TOO_MANY


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\xdd\xff\xff\xff\xff", id="array32-header-only"),
        pytest.param(b"\xdf\xff\xff\xff\xff", id="map32-header-only"),
        pytest.param(b"\xdb\xff\xff\xff\xff", id="str32-header-only"),
        pytest.param(b"\xc6\xff\xff\xff\xff", id="bin32-header-only"),
        pytest.param(b"\xc9\xff\xff\xff\xff\x01", id="ext32-header-only"),
        pytest.param(b"\x81\xdb\xff\xff\xff\xff", id="map-with-str32-key"),
        pytest.param(b"\x91" * 1_000_000, id="million-nested-arrays"),
        pytest.param(b"\xdc\x27\x10" + b"\x80" * 10_000, id="10000-empty-maps"),
        pytest.param(b"\x81\xa3seq" + b"\xdc\x27\x10" + b"\x90" * 10_000, id="seq-as-big-array"),
    ],
)
def test_hostile_headers_are_refused_cheaply(payload: bytes) -> None:
    assert rejection_of(payload).reason in STRUCTURAL


def test_long_strings_are_not_read() -> None:
    rejection = rejection_of(pack(event(seq="x" * 1000)))
    assert rejection.reason is Reason.NOT_MSGPACK
    assert "beyond the reading limits (1000 exceeds max_str_len(256))" in rejection.detail


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        pytest.param({"max_payload": 0}, "max_payload=0", id="zero-payload"),
        pytest.param({"max_batch": 0}, "max_batch=0", id="zero-batch"),
    ],
)
def test_limits_must_be_positive(limits: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode("283", pack(event()), **limits)


# --- hostile input never raises anything but WireError -----------------------------------------


@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_wire_error(payload: bytes) -> None:
    result = attempt(lambda: decode("283", payload))
    if isinstance(result, Rejection):
        assert result.reason in STRUCTURAL
        assert result.detail
    else:
        assert all(type(e.seq) is int and e.direction in (1, -1) for e in result)


@given(payload_objects)
def test_msgpack_objects_decode_exactly_when_the_contract_says(obj: object) -> None:
    payload = pack(obj)
    result = attempt(lambda: decode("283", payload))
    if isinstance(result, Rejection):
        assert result.reason in STRUCTURAL
        assert not is_valid_payload(obj)
    else:
        assert is_valid_payload(obj)
        maps = obj if isinstance(obj, list) else [obj]
        sent = [{k: v for k, v in m.items() if k != "dpu_id"} for m in maps if isinstance(m, dict)]
        assert [{"seq": e.seq, "ts": e.ts, "direction": e.direction} for e in result] == sent
        assert all(e.dpu_id == "283" for e in result)


@given(payload_objects, st.integers(min_value=1, max_value=64), st.integers(1, 3))
def test_small_limits_raise_only_wire_error(obj: object, max_payload: int, max_batch: int) -> None:
    payload = pack(obj)
    result = attempt(lambda: decode("283", payload, max_payload=max_payload, max_batch=max_batch))
    if isinstance(result, Rejection):
        assert result.reason in STRUCTURAL
    else:
        assert len(payload) <= max_payload
        assert 1 <= len(result) <= max_batch


# --- topics ------------------------------------------------------------------------------------


def test_topic_builders_and_filters() -> None:
    assert traversals_topic("283") == "dpus/283/traversals"
    assert status_topic("283") == "dpus/283/status"
    assert SUBSCRIPTION == "dpus/#"
    assert parse_topic(traversals_topic("283")) == ("283", "traversals")
    assert parse_topic(status_topic("283")) == ("283", "status")


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        pytest.param("dpus/283/traversals", ("283", "traversals"), id="traversals"),
        pytest.param("dpus/423/status", ("423", "status"), id="status"),
        pytest.param("dpus/lobby-east.2/status", ("lobby-east.2", "status"), id="punctuation"),
        pytest.param("dpus/Zähler 1/traversals", ("Zähler 1", "traversals"), id="unicode-space"),
        pytest.param("dpus/" + "d" * 64 + "/status", ("d" * 64, "status"), id="64-chars"),
    ],
)
def test_parse_topic_accepts(topic: str, expected: tuple[str, str]) -> None:
    assert parse_topic(topic) == expected


@pytest.mark.parametrize(
    "topic",
    [
        pytest.param("", id="empty"),
        pytest.param("dpus/283", id="no-kind"),
        pytest.param("dpus//traversals", id="empty-dpu-id"),
        pytest.param("dpus/+/traversals", id="the-filter-itself"),
        pytest.param("dpus/a+b/traversals", id="plus-in-id"),
        pytest.param("dpus/#/status", id="hash-as-id"),
        pytest.param("dpus/" + "d" * 65 + "/status", id="65-chars"),
        pytest.param("dpus/283/traversals/more", id="extra-level"),
        pytest.param("dpus/283/traversals/", id="trailing-slash"),
        pytest.param("/dpus/283/traversals", id="leading-slash"),
        pytest.param("dpu/283/traversals", id="wrong-prefix"),
        pytest.param("dpus/283/Traversals", id="kind-case"),
        pytest.param("dpus/283/events", id="unknown-kind"),
        pytest.param("spaces/A/count", id="other-topic"),
        pytest.param("dpus/" + "d" * 10_000 + "/traversals", id="10000-chars"),
        pytest.param("dpus/a\x00b/traversals", id="nul"),
        pytest.param("dpus/a\nb/status", id="newline"),
        pytest.param(b"dpus/\xff/traversals".decode("utf-8", "surrogateescape"), id="not-utf8"),
    ],
)
def test_parse_topic_refuses(topic: str) -> None:
    with pytest.raises(WireError) as caught:
        parse_topic(topic)
    assert caught.value.rejection.reason is Reason.BAD_TOPIC
    assert "expected" in caught.value.rejection.detail


@pytest.mark.parametrize(
    "dpu_id",
    [
        pytest.param("", id="empty"),
        pytest.param("a/b", id="slash"),
        pytest.param("+", id="plus"),
        pytest.param("#", id="hash"),
        pytest.param("d" * 65, id="65-chars"),
        pytest.param("a\x00", id="nul"),
        pytest.param("\udcff", id="not-utf8"),
    ],
)
def test_topic_builders_refuse_unusable_ids(dpu_id: str) -> None:
    for build in (traversals_topic, status_topic):
        with pytest.raises(WireError) as caught:
            build(dpu_id)
        assert caught.value.rejection.reason is Reason.BAD_TOPIC


@given(st.text(max_size=80))
def test_parse_topic_raises_only_wire_error(topic: str) -> None:
    result = attempt(lambda: parse_topic(topic))
    if isinstance(result, Rejection):
        assert result.reason is Reason.BAD_TOPIC
    else:
        dpu_id, kind = result
        built = traversals_topic(dpu_id) if kind == "traversals" else status_topic(dpu_id)
        assert built == topic


# --- status ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "online"),
    [
        pytest.param(b"online", True, id="online"),
        pytest.param(b"offline", False, id="offline"),
        pytest.param(b"ONLINE", True, id="upper"),
        pytest.param(b"Offline", False, id="title"),
        pytest.param(b"  online\r\n", True, id="whitespace"),
        pytest.param(b"\toffline ", False, id="tab"),
    ],
)
def test_decode_status_accepts(payload: bytes, online: bool) -> None:
    assert decode_status(payload) == wire.Status(online)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"   ", id="blank"),
        pytest.param(b"on", id="prefix"),
        pytest.param(b"online offline", id="both"),
        pytest.param(b"1", id="one"),
        pytest.param(b"true", id="true"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(pack("online"), id="msgpack-str"),
        pytest.param(b"online\x00", id="nul"),
        pytest.param(b" " * 1000 + b"online", id="too-long"),
    ],
)
def test_decode_status_refuses(payload: bytes) -> None:
    with pytest.raises(WireError) as caught:
        decode_status(payload)
    assert caught.value.rejection.reason is Reason.BAD_STATUS
    assert "'online' or 'offline'" in caught.value.rejection.detail


@given(st.binary(max_size=300))
def test_decode_status_raises_only_wire_error(payload: bytes) -> None:
    result = attempt(lambda: decode_status(payload))
    if isinstance(result, Rejection):
        assert result.reason is Reason.BAD_STATUS
    elif payload.strip().lower() not in {b"online", b"offline"}:
        assert isinstance(msgpack.unpackb(payload), dict)  # a status map, by chance


@given(
    st.booleans(),
    st.integers(0, 2**63 - 1),
    st.integers(0, 2**63 - 1),
    st.integers(1, 2**63 - 1),
)
def test_status_map_round_trips(online: bool, a: int, b: int, sent: int) -> None:
    first, seq = min(a, b), max(a, b)
    report = wire.Report(min(sent, seq - first + 1), first, seq)
    assert decode_status(wire.encode_status(online, report)) == wire.Status(online, report)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param({"state": "online"}, wire.Status(True), id="no-report"),
        pytest.param(
            {"state": "offline", "sent": 0, "first": None, "seq": None},
            wire.Status(False, wire.Report(0)),
            id="nothing-sent",
        ),
        pytest.param({"state": "online", "sent": 0}, wire.Status(True, wire.Report(0)), id="bare"),
        pytest.param(
            {"state": "online", "first": 5, "seq": 9, "sent": 5, "battery": 80},
            wire.Status(True, wire.Report(5, 5, 9)),
            id="unknown-key-ignored",
        ),
    ],
)
def test_status_map_accepts(data: dict[str, Any], expected: wire.Status) -> None:
    assert decode_status(pack(data)) == expected


def test_plain_status_encodes_as_old_firmware_sends_it() -> None:
    assert wire.encode_status(True) == b"online"
    assert wire.encode_status(False) == b"offline"


@pytest.mark.parametrize(
    ("data", "says"),
    [
        pytest.param({"seq": 1}, "state is nil", id="no-state"),
        pytest.param({"state": "asleep"}, "state is a string 'asleep'", id="bad-state"),
        pytest.param({"state": "online", "sent": -1}, "sent is -1", id="negative"),
        pytest.param({"state": "online", "sent": True}, "sent is a boolean", id="bool"),
        pytest.param(
            {"state": "online", "sent": 2, "first": 9, "seq": 3}, "first <= seq", id="order"
        ),
        pytest.param(
            {"state": "online", "sent": 6, "first": 5, "seq": 9}, "at most", id="too-many"
        ),
        pytest.param({"state": "online", "sent": 3}, "sent 0 with first", id="no-range"),
        pytest.param({"state": "online", "sent": 0, "first": 1, "seq": 1}, "sent 0", id="zero"),
        pytest.param({"state": "online", "seq": 2**63}, "too large", id="seq-range"),
    ],
)
def test_status_map_refuses(data: dict[str, Any], says: str) -> None:
    with pytest.raises(WireError) as caught:
        decode_status(pack(data))
    assert caught.value.rejection.reason is Reason.BAD_STATUS
    assert says in caught.value.rejection.detail


def test_truncated_status_map_is_refused() -> None:
    with pytest.raises(WireError) as caught:
        decode_status(pack({"state": "online", "sent": 1, "first": 1, "seq": 1})[:-1])
    assert caught.value.rejection.reason is Reason.BAD_STATUS
    assert "not readable msgpack" in caught.value.rejection.detail


# --- screening against the topology and the clock ----------------------------------------------


NOW = FEB + 3_600_000


def test_screen_keeps_assigned_events_in_order() -> None:
    events = [Traversal("423", 2, FEB, 1), Traversal("283", 1, FEB, -1)]
    assert screen(events, seed(), now=NOW) == (events, [])
    assert screen([], seed(), now=NOW) == ([], [])


def test_screen_refuses_an_unknown_dpu() -> None:
    stray = Traversal("999", 5, FEB, 1)
    kept, refused = screen([stray], seed(), now=NOW)
    assert kept == []
    (rejection,) = refused
    assert rejection.reason is Reason.UNKNOWN_DPU
    assert rejection.event == stray
    assert "'999'" in rejection.detail
    assert format_ms(FEB) in rejection.detail
    assert "add an assignment" in rejection.detail
    assert "appears in no assignment" in rejection.detail


def test_screen_refuses_a_dpu_before_its_valid_from() -> None:
    early = Traversal("423", 1, T2018 - 1, 1)
    first = Traversal("423", 2, T2018, 1)
    kept, refused = screen([early, first], seed(), now=NOW)
    assert kept == [first]
    (rejection,) = refused
    assert rejection.reason is Reason.UNKNOWN_DPU
    assert rejection.event == early
    assert "2017-12-31T23:59:59.999Z" in rejection.detail
    assert "other times" in rejection.detail
    assert "add an assignment" in rejection.detail


def test_screen_future_boundary() -> None:
    limit = Traversal("283", 1, NOW + DEFAULT_MAX_SKEW_MS, 1)
    beyond = Traversal("283", 2, NOW + DEFAULT_MAX_SKEW_MS + 1, 1)
    kept, refused = screen([limit, beyond], seed(), now=NOW)
    assert kept == [limit]
    assert refused == [Rejection(Reason.FUTURE_TS, refused[0].detail, beyond)]
    detail = refused[0].detail
    assert "300001 ms" in detail
    assert "DPU clock" in detail
    assert format_ms(beyond.ts) in detail


def test_screen_with_its_own_skew() -> None:
    events = [Traversal("283", 1, NOW, 1), Traversal("283", 2, NOW + 1, 1)]
    kept, refused = screen(events, seed(), now=NOW, max_skew_ms=0)
    assert kept == events[:1]
    assert [r.event for r in refused] == events[1:]
    assert refused[0].reason is Reason.FUTURE_TS


def test_screen_keeps_the_rest_of_the_batch() -> None:
    events = [
        Traversal("283", 1, FEB, 1),
        Traversal("999", 1, FEB, 1),
        Traversal("423", 1, FEB, -1),
        Traversal("283", 2, NOW + 10 * DEFAULT_MAX_SKEW_MS, 1),
        Traversal("423", 2, FEB + 1, 1),
    ]
    kept, refused = screen(events, seed(), now=NOW)
    assert kept == [events[0], events[2], events[4]]
    assert [(r.reason, r.event) for r in refused] == [
        (Reason.UNKNOWN_DPU, events[1]),
        (Reason.FUTURE_TS, events[3]),
    ]


def test_screen_survives_timestamps_beyond_the_calendar() -> None:
    far = Traversal("283", 1, 2**53 - 1, 1)
    kept, refused = screen([far], seed(), now=NOW)
    assert kept == []
    assert refused[0].reason is Reason.FUTURE_TS
    assert str(2**53 - 1) in refused[0].detail


def test_wire_module_imports_nothing_that_does_io() -> None:
    tree = ast.parse(Path(wire.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {
        "__future__",
        "collections.abc",
        "dataclasses",
        "enum",
        "reprlib",
        "typing",
        "msgpack",
        "headcount.domain.events",
        "headcount.domain.timefmt",
        "headcount.domain.topology",
        "headcount.errors",
    }


# --- the optional dpu_id of an event -----------------------------------------------------------


def test_an_event_naming_its_own_dpu_is_kept() -> None:
    payload = pack([event(seq=1, dpu_id="283"), event(seq=2)])
    assert wire.decode_batch("283", payload) == (
        [Traversal("283", 1, FEB, 1), Traversal("283", 2, FEB, 1)],
        [],
    )


def test_an_event_naming_another_dpu_is_refused_alone() -> None:
    payload = pack([event(seq=1), event(seq=2, dpu_id="283"), event(seq=3)])
    kept, refused = wire.decode_batch("423", payload)
    assert kept == [Traversal("423", 1, FEB, 1), Traversal("423", 3, FEB, 1)]
    [rejection] = refused
    assert rejection.reason is Reason.DPU_MISMATCH
    assert rejection.event == Traversal("423", 2, FEB, 1)
    assert "dpus/423/traversals" in rejection.detail
    assert "'283'" in rejection.detail


def test_decode_refuses_a_payload_with_a_mismatched_event_whole() -> None:
    with pytest.raises(WireError) as caught:
        decode("423", pack(event(dpu_id="283")))
    assert caught.value.rejection.reason is Reason.DPU_MISMATCH


def test_a_dpu_id_that_is_not_a_string_is_a_bad_field() -> None:
    with pytest.raises(WireError) as caught:
        wire.decode_batch("283", pack(event(dpu_id=283)))
    assert caught.value.rejection.reason is Reason.BAD_FIELD
    assert "dpu_id is an integer 283" in caught.value.rejection.detail


def test_encode_with_dpu_id_round_trips() -> None:
    traversal = Traversal("283", 7, FEB, -1)
    payload = wire.encode([traversal], with_dpu_id=True)
    assert msgpack.unpackb(payload) == [{"seq": 7, "ts": FEB, "direction": -1, "dpu_id": "283"}]
    assert wire.decode_batch("283", payload) == ([traversal], [])


_FIELD_VALUES = st.one_of(
    st.sampled_from([0, 1, -1, 2, wire.SEQ_LIMIT - 1, wire.SEQ_LIMIT, wire.TS_LIMIT - 1]),
    st.sampled_from([wire.TS_LIMIT, True, False, 1.0, -1.0, None, "1", b"1", [1]]),
    st.integers(),
)


@given(
    st.dictionaries(
        st.sampled_from(["seq", "ts", "direction", "dpu_id", "other"]), _FIELD_VALUES, max_size=5
    )
    | _FIELD_VALUES
)
def test_the_quick_reading_takes_only_what_the_full_one_takes_as_it(item: object) -> None:
    """Decoding reads a well-formed event without the field checks' calls; whatever it takes
    that way, the full reading (which names what is wrong) takes as the same traversal."""
    quick = wire._well_formed("283", item)
    if quick is not None:
        assert wire._read_event("283", item) == (quick, None)
    elif isinstance(item, dict) and item.keys() == {"seq", "ts", "direction"}:
        with pytest.raises(wire.WireError):
            wire._read_event("283", item)

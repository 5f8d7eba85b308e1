"""The wire decoder under fuzzing: 13,500 generated inputs per run, 10,000 of them payloads,
none may escape as anything but a :class:`WireError` with a reason, and every accepted payload
round-trips.

The example counts are fixed here (not left to a Hypothesis profile) so that every run, in CI
and on a laptop, tries the same number: see ``FUZZED_PAYLOADS`` and ``FUZZED``. Each test
stops at its ``max_examples`` (``pytest --hypothesis-show-statistics`` says "Stopped because
settings.max_examples=..."), so these are the counts tried, not bounds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

import msgpack  # type: ignore[import-untyped, unused-ignore]
from hypothesis import example, given, settings
from hypothesis import strategies as st

from headcount.domain.events import Traversal
from headcount.domain.timefmt import parse_iso
from headcount.domain.topology import Topology
from headcount.ingest.wire import (
    DEFAULT_MAX_BATCH,
    MAX_DPU_ID_LEN,
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
from tests.conftest import SEED
from tests.fuzzing import fuzz
from tests.ingest.payloads import (
    STRUCTURAL,
    is_valid_dpu_id,
    is_valid_payload,
    pack,
    payload_objects,
    status_payloads,
    topics,
    unpacked_payloads,
)

_T = TypeVar("_T")

#: Examples per test. Their sum is what one run fuzzes.
EXAMPLES: Final = {
    "packed": 3500,
    "unpacked": 3500,
    "limits": 1000,
    "status": 2000,
    "topics": 3000,
    "screen": 500,
}
#: The tests whose input is a payload's bytes (traversals or status), as the issue counts.
PAYLOAD_TESTS: Final = ("packed", "unpacked", "limits", "status")
FUZZED_PAYLOADS: Final = sum(EXAMPLES[name] for name in PAYLOAD_TESTS)
FUZZED: Final = sum(EXAMPLES.values())


def fuzz_as(name: str) -> settings:
    return fuzz(EXAMPLES[name])


def attempt(call: Callable[[], _T]) -> _T | Rejection:
    """The call's result, or the rejection of the WireError it raised; any other exception
    escapes and fails the test."""
    try:
        return call()
    except WireError as error:
        return error.rejection


def refused_properly(rejection: Rejection, reasons: frozenset[Reason]) -> None:
    assert rejection.reason in reasons
    assert rejection.detail.strip()
    assert rejection.event is None


def round_trips(dpu_id: str, events: list[Traversal]) -> None:
    assert events
    assert all(e.dpu_id == dpu_id for e in events)
    assert decode(dpu_id, encode(events)) == events
    if len(events) == 1:
        assert decode(dpu_id, encode(events[0])) == events


def test_the_run_fuzzes_at_least_10000_payloads() -> None:
    # Topics and decoded batches are fuzzed besides, but they are not payloads.
    assert FUZZED_PAYLOADS >= 10_000


@fuzz_as("packed")
@given(
    payload_objects,
    # decode takes the id as given (parse_topic checks it): a few valid ones at the limits.
    st.sampled_from(["283", "d" * MAX_DPU_ID_LEN, "\u00e9" * MAX_DPU_ID_LEN, "Z\u00e4hler 1"]),
)
@example({"seq": 1, "ts": msgpack.Timestamp(2**62, 0), "direction": 1}, "283")
@example({"seq": 2**63 - 1, "ts": 2**53 - 1, "direction": -1}, "d" * MAX_DPU_ID_LEN)
@example({"seq": 1, "ts": 1, "direction": 1.0}, "283")
@example({"seq": 1, "ts": 1, "direction": True}, "283")
@example([[{"seq": 1, "ts": 1, "direction": 1}]], "283")
def test_packed_objects_are_accepted_exactly_when_the_contract_says(
    obj: object, dpu_id: str
) -> None:
    payload = pack(obj)
    result = attempt(lambda: decode(dpu_id, payload))
    if isinstance(result, Rejection):
        refused_properly(result, STRUCTURAL)
        assert not is_valid_payload(obj, DEFAULT_MAX_BATCH)
        return
    assert is_valid_payload(obj, DEFAULT_MAX_BATCH)
    maps = obj if isinstance(obj, list) else [obj]
    assert [{"seq": e.seq, "ts": e.ts, "direction": e.direction} for e in result] == maps
    round_trips(dpu_id, result)


@fuzz_as("unpacked")
@given(unpacked_payloads)
@example(b"\x91" * 5000 + pack({"seq": 1, "ts": 1, "direction": 1}))
@example(b"\x83\xa3seq\x01\xa9direction\x01\xa2ts\xd7\xff\xff\xff\xff\xff\xff\xff\xff\xff")
@example(b"\xc7\xff\xff")
def test_any_bytes_raise_only_wire_error(payload: bytes) -> None:
    result = attempt(lambda: decode("283", payload))
    if isinstance(result, Rejection):
        refused_properly(result, STRUCTURAL)
    else:
        round_trips("283", result)


@fuzz_as("limits")
@given(
    payload_objects.map(pack) | unpacked_payloads,
    st.integers(min_value=1, max_value=80),
    st.integers(min_value=1, max_value=4),
)
def test_small_limits_raise_only_wire_error(
    payload: bytes, max_payload: int, max_batch: int
) -> None:
    result = attempt(lambda: decode("283", payload, max_payload=max_payload, max_batch=max_batch))
    if isinstance(result, Rejection):
        refused_properly(result, STRUCTURAL)
        if len(payload) > max_payload:
            assert result.reason is Reason.OVERSIZE
    else:
        assert len(payload) <= max_payload
        assert 1 <= len(result) <= max_batch


@fuzz_as("topics")
@given(topics)
@example("dpus/" + "é" * MAX_DPU_ID_LEN + "/traversals")
@example(b"dpus/\xed\xa0\x80/status".decode("utf-8", "surrogateescape"))
def test_topics_parse_or_raise_bad_topic(topic: str) -> None:
    result = attempt(lambda: parse_topic(topic))
    if isinstance(result, Rejection):
        refused_properly(result, frozenset({Reason.BAD_TOPIC}))
        return
    dpu_id, kind = result
    assert is_valid_dpu_id(dpu_id)
    assert (traversals_topic if kind == "traversals" else status_topic)(dpu_id) == topic


#: First bytes of a msgpack map (fixmap, map 16, map 32).
_MAP_HEADS: Final = {bytes([b]) for b in (*range(0x80, 0x90), 0xDE, 0xDF)}


@fuzz_as("status")
@given(status_payloads)
def test_status_payloads_decode_or_raise_bad_status(payload: bytes) -> None:
    result = attempt(lambda: decode_status(payload))
    if isinstance(result, Rejection):
        refused_properly(result, frozenset({Reason.BAD_STATUS}))
    elif result.report is not None or payload[:1] in _MAP_HEADS:  # a status map
        state = msgpack.unpackb(payload)["state"]
        assert result.online is (state.casefold() == "online")
        if result.report is not None:
            report = result.report
            assert report.sent == (0 if report.first is None else report.sent)
            if report.first is not None and report.seq is not None:
                assert 0 <= report.first <= report.seq < 2**63
                assert report.sent <= report.seq - report.first + 1
    else:
        word = payload.decode("utf-8").strip().casefold()
        assert result.online is (word == "online")
        assert result.report is None
        assert word in {"online", "offline"}


SEED_TOPOLOGY = Topology.from_toml((SEED / "topology.toml").read_text(encoding="utf-8"))
T2018 = parse_iso("2018-01-01T00:00:00Z")


@fuzz_as("screen")
@given(
    st.lists(
        st.builds(
            Traversal,
            st.sampled_from(["283", "423", "999"]),
            st.integers(0, 2**63 - 1),
            st.integers(0, 2**53 - 1) | st.integers(T2018 - 1000, T2018 + 1000),
            st.sampled_from([1, -1]),
        ),
        max_size=8,
    ),
    st.integers(0, 2**53 - 1),
    st.integers(0, 2**40),
)
def test_screening_splits_any_decoded_batch(
    batch: list[Traversal], now: int, max_skew_ms: int
) -> None:
    kept, refused = screen(batch, SEED_TOPOLOGY, now=now, max_skew_ms=max_skew_ms)
    assert len(kept) + len(refused) == len(batch)
    assert all(r.reason in {Reason.FUTURE_TS, Reason.UNKNOWN_DPU} and r.detail for r in refused)
    assert [t for t in batch if t in kept] == kept
    assert [r.event for r in refused] == [t for t in batch if t not in kept]
    for t in kept:
        assert t.ts - now <= max_skew_ms
        assert SEED_TOPOLOGY.assignment_at(t.dpu_id, t.ts) is not None

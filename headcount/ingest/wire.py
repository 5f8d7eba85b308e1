"""The MQTT wire contract between DPU firmware and headcount, and its checks.

A DPU publishes on ``dpus/{dpu_id}/traversals`` (QoS 1) a msgpack payload: one traversal, a map
``{"seq": int, "ts": int, "direction": 1 or -1}`` with ``ts`` in integer milliseconds since the
Unix epoch (UTC), or a non-empty array of such maps (its backlog). The DPU id comes from the
topic: 1 to 64 printable characters (no control characters, valid UTF-8) without ``/``,
``+`` or ``#``.

A DPU's status rides on ``dpus/{dpu_id}/status`` (retained; ``offline`` as plain text is the
DPU's MQTT last will), in one of two forms:

* the UTF-8 text ``online`` or ``offline`` (any case, surrounding whitespace allowed): what old
  firmware sends, and the last will;
* a msgpack map ``{"state": "online" or "offline", "first": int, "seq": int, "sent": int}``:
  the status with the DPU's delivery report, sent with every status change and as a heartbeat
  (every 30 s or so while it has sent something new). ``sent`` is how many distinct
  traversals the broker has acknowledged (PUBACK received) with ``first <= seq' <= seq``:
  each seq is counted once however often it was sent again; ``seq`` is the highest of them,
  ``first`` the seq the count starts at. With ``sent`` 0, ``first`` and ``seq`` are nil or
  absent. Other keys are ignored, so later firmware may add some.

  The count may start anywhere: a DPU that keeps it across reboots (in flash, with its seq)
  keeps ``first``; one that loses it starts afresh, ``sent`` 0 and ``first`` the next seq it
  publishes. headcount compares ``sent`` with the traversals it stored for that DPU with seq in
  ``[first, seq]``: the difference is what was lost on the way (the broker dropped it) or
  refused into quarantine, reported per DPU (``/dpus/{id}``, ``headcount_dpu_missing_events``).
  A DPU must never start its seq again from a lower value: stored keys would collide (the
  store keeps the first and quarantines the rest as conflicts); if it does, the report shows
  them as missing.

Only DPUs the topology knows are marked online (and have their reports compared); a status
from any other is counted and otherwise ignored.

An event map may also carry ``"dpu_id": str``, the id of the DPU that made it (defence in
depth: the broker already lets a DPU publish only under its own id when it has credentials).
When present it must equal the topic's DPU id; an event claiming another DPU is refused alone
(``DPU_MISMATCH``) and the rest of its payload kept. Firmware should send it.

headcount subscribes to everything under ``dpus/`` (:data:`SUBSCRIPTION`), so that nothing
published there goes unseen: a message on any other topic (``dpus/283/traversals/extra``, a
topic that is not valid UTF-8) is refused into quarantine as ``BAD_TOPIC``.

Two levels of checks, each with a stable :class:`Reason` code:

* :func:`decode_batch` refuses a payload that is structurally wrong as a whole, by raising
  :class:`WireError`; nothing in it is used. An event that claims another DPU than the
  topic's comes back as a :class:`Rejection` (:func:`decode` refuses the whole payload).
* :func:`screen` checks decoded traversals one by one against the topology and the clock; the
  refused ones come back as :class:`Rejection` values and the rest of the batch is kept.

Pure functions: no I/O, no asyncio.

About 650 lines, over this project's usual 400, on purpose: it is the contract firmware
authors read, and every rule of it (topics, payload shape, field limits, screening, reason
codes) is easier to keep consistent, and to find, in one module.
"""

from __future__ import annotations

import reprlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, Literal

import msgpack  # type: ignore[import-untyped, unused-ignore]

from headcount.domain.events import Direction, Traversal
from headcount.domain.timefmt import format_ms
from headcount.errors import HeadcountError

if TYPE_CHECKING:
    from headcount.domain.topology import Topology

TRAVERSALS_TOPIC: Final = "dpus/{dpu_id}/traversals"
STATUS_TOPIC: Final = "dpus/{dpu_id}/status"
#: The topic filter headcount subscribes to: both kinds of DPU topic, and every other topic
#: under ``dpus/``, which is refused (``BAD_TOPIC``) rather than never seen.
SUBSCRIPTION: Final = "dpus/#"

#: Largest traversals payload accepted, in bytes; checked before anything is unpacked.
DEFAULT_MAX_PAYLOAD: Final = 1_048_576
#: Most traversals accepted in one payload.
DEFAULT_MAX_BATCH: Final = 10_000
#: How far ahead of the server clock an event's ``ts`` may be, in milliseconds.
DEFAULT_MAX_SKEW_MS: Final = 5 * 60_000

#: Longest DPU id, in characters.
MAX_DPU_ID_LEN: Final = 64
#: Exclusive upper bound of ``seq``: it must fit a signed 64-bit column.
SEQ_LIMIT: Final = 2**63
#: Exclusive upper bound of ``ts``: every value below it is exact in a double (JSON, JavaScript).
TS_LIMIT: Final = 2**53

TopicKind = Literal["traversals", "status"]

_KEYS: Final = frozenset({"seq", "ts", "direction"})
#: Keys an event map may carry besides :data:`_KEYS`.
_OPTIONAL_KEYS: Final = frozenset({"dpu_id"})
_EXPECTED: Final = (
    'expected one msgpack map {"seq": int, "ts": int, "direction": 1 or -1}'
    ' (optionally "dpu_id": str) or a non-empty array of such maps'
)
# Reading limits for msgpack. A valid payload holds only short string keys, small maps and one
# top-level array; these bounds keep a hostile header from making the unpacker allocate more
# than the payload could ever justify.
_MAX_STR_LEN: Final = 256
_MAX_BIN_LEN: Final = 256
_MAX_EXT_LEN: Final = 256
_MAX_MAP_LEN: Final = 64
# A status payload longer than this cannot be "online"/"offline" with reasonable whitespace.
_MAX_STATUS_LEN: Final = 256
_FORBIDDEN_IN_DPU_ID: Final = ("/", "+", "#")

_preview_repr = reprlib.Repr()
_preview_repr.maxlevel = 2
_preview_repr.maxstring = 40
_preview_repr.maxother = 40
_preview_repr.maxlist = 4
_preview_repr.maxdict = 4


class Reason(StrEnum):
    """Why input was refused. The values are stable: metric labels and quarantine rows use them."""

    #: Not readable msgpack: empty, malformed, truncated, trailing bytes, invalid UTF-8, a
    #: non-string map key, or a string, binary, map or array longer than the reading limits.
    NOT_MSGPACK = "not_msgpack"
    #: Valid msgpack of the wrong shape: not a map or an array of maps, an empty array, or an
    #: event map with missing, extra or non-string keys.
    BAD_SHAPE = "bad_shape"
    #: ``seq`` or ``ts`` of the wrong type or out of range.
    BAD_FIELD = "bad_field"
    #: ``direction`` other than exactly 1 or -1.
    BAD_DIRECTION = "bad_direction"
    #: The payload is larger than the payload limit.
    OVERSIZE = "oversize"
    #: The payload holds more events than the batch limit.
    TOO_MANY = "too_many"
    #: The DPU has no assignment in the topology at the event's ``ts``.
    UNKNOWN_DPU = "unknown_dpu"
    #: The event's ``ts`` is further ahead of the server clock than the tolerated skew.
    FUTURE_TS = "future_ts"
    #: The MQTT topic is not one of headcount's DPU topics.
    BAD_TOPIC = "bad_topic"
    #: A status payload other than ``online``, ``offline`` or a status map (see the module doc).
    BAD_STATUS = "bad_status"
    #: The event's ``dpu_id`` is not the DPU id of the topic it was published on.
    DPU_MISMATCH = "dpu_mismatch"
    #: A message the store refused to hold as it was (a value it cannot store): kept in
    #: quarantine in a minimal form instead (see ``headcount.ingest.pipeline``).
    UNSTORABLE = "unstorable"
    #: The DPU sent more messages than its rate limit allows (see
    #: ``headcount.ingest.ratelimit``); the message was acknowledged and not stored.
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Refused input: a stable reason code and a sentence saying what was wrong and what is
    expected. ``event`` is the refused traversal when the check was per event (:func:`screen`).
    """

    reason: Reason
    detail: str
    event: Traversal | None = None


class WireError(HeadcountError):
    """Input that breaks the wire contract; ``rejection`` says why. The message is the detail."""

    def __init__(self, rejection: Rejection) -> None:
        self.rejection = rejection
        super().__init__(rejection.detail)


def _refuse(reason: Reason, detail: str) -> WireError:
    return WireError(Rejection(reason, detail))


def _preview(value: object) -> str:
    """A short, bounded ``repr`` for error messages (hostile input may be large or deep)."""
    return _preview_repr.repr(value)


def _described(value: object) -> str:
    """A value for an error message in msgpack's words: ``a string '7'``, ``nil``."""
    if value is None:
        return "nil"
    kinds: list[tuple[type, str]] = [
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (bytes, "binary data"),
        (list, "an array"),
        (dict, "a map"),
        (msgpack.Timestamp, "a msgpack timestamp"),
        (msgpack.ExtType, "a msgpack extension"),
    ]
    kind = next((text for cls, text in kinds if isinstance(value, cls)), type(value).__name__)
    return f"{kind} {_preview(value)}"


# --- topics ------------------------------------------------------------------------------------


def _dpu_id_problem(dpu_id: str) -> str | None:
    """Why ``dpu_id`` cannot be a topic level, or None if it can."""
    if not dpu_id:
        return "the DPU id is empty"
    if len(dpu_id) > MAX_DPU_ID_LEN:
        return f"the DPU id is {len(dpu_id)} characters long; at most {MAX_DPU_ID_LEN} are allowed"
    for char in _FORBIDDEN_IN_DPU_ID:
        if char in dpu_id:
            return f"the DPU id {_preview(dpu_id)} contains {char!r}, which MQTT topics reserve"
    for char in dpu_id:
        if 0xD800 <= ord(char) <= 0xDFFF:  # how an undecodable topic byte arrives
            return f"the DPU id {_preview(dpu_id)} is not valid UTF-8"
        if not char.isprintable():
            return f"the DPU id {_preview(dpu_id)} contains the unprintable character {char!r}"
    return None


def _topic(template: str, dpu_id: str) -> str:
    problem = _dpu_id_problem(dpu_id)
    if problem is not None:
        raise _refuse(
            Reason.BAD_TOPIC,
            f"cannot build a topic: {problem}; expected 1 to {MAX_DPU_ID_LEN} printable"
            " characters without '/', '+' or '#'",
        )
    return template.format(dpu_id=dpu_id)


def traversals_topic(dpu_id: str) -> str:
    """``dpus/{dpu_id}/traversals``; :class:`WireError` (``BAD_TOPIC``) for an unusable id."""
    return _topic(TRAVERSALS_TOPIC, dpu_id)


def status_topic(dpu_id: str) -> str:
    """``dpus/{dpu_id}/status``; :class:`WireError` (``BAD_TOPIC``) for an unusable id."""
    return _topic(STATUS_TOPIC, dpu_id)


def parse_topic(topic: str) -> tuple[str, TopicKind]:
    """The DPU id and the kind of a DPU topic.

    ``"dpus/283/traversals"`` gives ``("283", "traversals")``. Anything else raises
    :class:`WireError` with ``BAD_TOPIC``.
    """
    expected = "expected 'dpus/{dpu_id}/traversals' or 'dpus/{dpu_id}/status'"
    levels = topic.split("/")
    if len(levels) != 3 or levels[0] != "dpus":
        raise _refuse(Reason.BAD_TOPIC, f"topic {_preview(topic)} is not a DPU topic; {expected}")
    _, dpu_id, kind = levels
    if kind == "traversals":
        found: TopicKind = "traversals"
    elif kind == "status":
        found = "status"
    else:
        raise _refuse(
            Reason.BAD_TOPIC,
            f"topic {_preview(topic)} ends in {_preview(kind)}; {expected}",
        )
    problem = _dpu_id_problem(dpu_id)
    if problem is not None:
        raise _refuse(
            Reason.BAD_TOPIC,
            f"topic {_preview(topic)}: {problem}; expected 1 to {MAX_DPU_ID_LEN} printable"
            " characters without '/', '+' or '#'",
        )
    return dpu_id, found


# --- traversals payloads -----------------------------------------------------------------------


def _int_field(name: str, value: object, limit: int, expected: str) -> int:
    """``value`` if it is an integer in ``[0, limit)`` (a bool is not); else BAD_FIELD."""
    # ``type(...) is int`` rather than isinstance: True is an int to Python but not on the wire.
    if type(value) is not int:
        problem = f"{name} is {_described(value)}"
    elif value < 0:
        problem = f"{name} is {value}, which is negative"
    elif value >= limit:
        problem = f"{name} is {value}, which is too large"
    else:
        return value
    raise _refuse(Reason.BAD_FIELD, f"{problem}; expected {expected}")


def _check_event(dpu_id: str, seq: object, ts: object, direction: object) -> Traversal:
    """A Traversal from the three fields; :class:`WireError` naming the first bad one."""
    checked_seq = _int_field("seq", seq, SEQ_LIMIT, "an integer 0 <= seq < 2**63")
    checked_ts = _int_field(
        "ts", ts, TS_LIMIT, "an integer 0 <= ts < 2**53, milliseconds since the Unix epoch (UTC)"
    )
    checked_direction: Direction
    if type(direction) is int and direction == 1:
        checked_direction = 1
    elif type(direction) is int and direction == -1:
        checked_direction = -1
    else:
        shown = str(direction) if type(direction) is int else _described(direction)
        raise _refuse(Reason.BAD_DIRECTION, f"direction is {shown}; expected 1 or -1")
    return Traversal(dpu_id, checked_seq, checked_ts, checked_direction)


def _well_formed(dpu_id: str, item: object) -> Traversal | None:
    """The event of a map with exactly ``seq``, ``ts`` and ``direction``, each right; else
    ``None``, and :func:`_read_event` says what is wrong. What nearly every message holds,
    checked without a call per field (a third of decoding's cost per event)."""
    if type(item) is not dict or len(item) != 3:
        return None
    seq = item.get("seq")
    ts = item.get("ts")
    direction = item.get("direction")
    if (
        type(seq) is int
        and type(ts) is int
        and type(direction) is int
        and 0 <= seq < SEQ_LIMIT
        and 0 <= ts < TS_LIMIT
    ):
        if direction == 1:
            return Traversal(dpu_id, seq, ts, 1)
        if direction == -1:
            return Traversal(dpu_id, seq, ts, -1)
    return None


def _read_event(dpu_id: str, item: object) -> tuple[Traversal, Rejection | None]:
    """The event, and a ``DPU_MISMATCH`` rejection of it if it claims another DPU."""
    if not isinstance(item, dict):
        raise _refuse(
            Reason.BAD_SHAPE,
            f"the event is {_described(item)}, not a map; {_EXPECTED}",
        )
    keys = set(item)
    if not keys >= _KEYS or not keys <= _KEYS | _OPTIONAL_KEYS:
        problems = []
        missing = sorted(_KEYS - keys)
        if missing:
            problems.append("missing key(s) " + ", ".join(repr(key) for key in missing))
        extra = sorted(_preview(key) for key in keys - _KEYS - _OPTIONAL_KEYS)
        if extra:
            more = f" and {len(extra) - 4} more" if len(extra) > 4 else ""
            problems.append("unexpected key(s) " + ", ".join(extra[:4]) + more)
        raise _refuse(
            Reason.BAD_SHAPE,
            f"the event map has {' and '.join(problems)};"
            ' expected the string keys "seq", "ts" and "direction", and optionally "dpu_id"',
        )
    event = _check_event(dpu_id, item["seq"], item["ts"], item["direction"])
    claimed = item.get("dpu_id", dpu_id)
    if type(claimed) is not str:
        raise _refuse(
            Reason.BAD_FIELD,
            f"dpu_id is {_described(claimed)}; expected a string, the DPU id of the topic",
        )
    if claimed == dpu_id:
        return event, None
    topic = TRAVERSALS_TOPIC.format(dpu_id=dpu_id)
    return event, Rejection(
        Reason.DPU_MISMATCH,
        f"{_describe(event)} on topic {_preview(topic)} says it comes from"
        f" DPU {_preview(claimed)}; a DPU publishes only under its own id, so check which"
        " credentials and topic that DPU's firmware uses",
        event,
    )


def _declared_array_length(payload: bytes) -> int | None:
    """The element count in a top-level msgpack array header, read without unpacking."""
    if not payload:
        return None
    first = payload[0]
    if 0x90 <= first <= 0x9F:  # fixarray
        return first & 0x0F
    if first == 0xDC and len(payload) >= 3:  # array 16
        return int.from_bytes(payload[1:3], "big")
    if first == 0xDD and len(payload) >= 5:  # array 32
        return int.from_bytes(payload[1:5], "big")
    return None


def _unpack(payload: bytes, max_batch: int) -> Any:
    """``msgpack.unpackb`` with bounded reading; every failure becomes ``NOT_MSGPACK``."""
    if not payload:
        raise _refuse(Reason.NOT_MSGPACK, f"the payload is empty; {_EXPECTED}")
    try:
        return msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=min(_MAX_STR_LEN, len(payload)),
            max_bin_len=min(_MAX_BIN_LEN, len(payload)),
            max_ext_len=min(_MAX_EXT_LEN, len(payload)),
            max_map_len=min(_MAX_MAP_LEN, len(payload)),
            max_array_len=min(max_batch, len(payload)),
        )
    except msgpack.ExtraData:
        raise _refuse(
            Reason.NOT_MSGPACK,
            f"the payload has bytes after its first msgpack object; {_EXPECTED}, nothing after it",
        ) from None
    # msgpack documents that unpacking may raise exceptions outside its own hierarchy
    # (ValueError, TypeError, UnicodeDecodeError, ...); none of them may leave this function.
    except Exception as exc:
        raise _refuse(
            Reason.NOT_MSGPACK, f"the payload is not readable msgpack: {_why(exc)}; {_EXPECTED}"
        ) from None


def _why(exc: Exception) -> str:
    """What an unpacking failure means, in words."""
    if isinstance(exc, msgpack.StackError):
        return "it is nested too deeply"
    if isinstance(exc, msgpack.FormatError):
        return "it contains a byte that begins no msgpack type"
    if isinstance(exc, UnicodeDecodeError):
        return "a string in it is not valid UTF-8"
    message = " ".join(str(exc).split())
    if len(message) > 120:
        message = message[:117] + "..."
    if "exceeds max_" in message:
        return f"it declares a string, binary, map or array beyond the reading limits ({message})"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def decode(
    dpu_id: str,
    payload: bytes,
    *,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> list[Traversal]:
    """The traversals in a ``dpus/{dpu_id}/traversals`` payload, in payload order: what
    :func:`decode_batch` keeps, and a :class:`WireError` for the whole payload if it refused
    an event (one claiming another DPU)."""
    events, refused = decode_batch(dpu_id, payload, max_payload=max_payload, max_batch=max_batch)
    if refused:
        raise WireError(refused[0])
    return events


def decode_batch(
    dpu_id: str,
    payload: bytes,
    *,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> tuple[list[Traversal], list[Rejection]]:
    """The traversals in a ``dpus/{dpu_id}/traversals`` payload, in payload order, and the
    events refused alone: those whose ``dpu_id`` is not the topic's (``DPU_MISMATCH``).

    ``dpu_id`` comes from the topic (see :func:`parse_topic`); every traversal returned, kept
    or refused, carries it. Anything structurally wrong refuses the whole payload with
    :class:`WireError`; no other exception escapes, whatever the bytes. The size is checked
    before anything is unpacked, and so is the declared length of a top-level array. For a
    batch the detail names the index of the first bad event.
    """
    if max_payload < 1 or max_batch < 1:
        raise ValueError(f"limits must be positive, got {max_payload=} and {max_batch=}")
    if len(payload) > max_payload:
        raise _refuse(
            Reason.OVERSIZE,
            f"the payload is {len(payload)} bytes; at most {max_payload} bytes are accepted,"
            " so split the backlog into several payloads",
        )
    declared = _declared_array_length(payload)
    if declared is not None and declared > max_batch:
        raise _refuse(
            Reason.TOO_MANY,
            f"the payload holds an array of {declared} events; at most {max_batch} are accepted"
            " in one payload, so split the backlog into several payloads",
        )
    data = _unpack(payload, max_batch)
    events: list[Traversal] = []
    refused: list[Rejection] = []
    if isinstance(data, dict):
        event = _well_formed(dpu_id, data)
        if event is not None:
            return [event], []
        event, rejection = _read_event(dpu_id, data)
        return ([], [rejection]) if rejection else ([event], [])
    if not isinstance(data, list):
        raise _refuse(
            Reason.BAD_SHAPE,
            f"the payload is {_described(data)}; {_EXPECTED}",
        )
    if not data:
        raise _refuse(Reason.BAD_SHAPE, f"the payload is an empty array; {_EXPECTED}")
    if len(data) > max_batch:  # the header check above should have caught this already
        raise _refuse(
            Reason.TOO_MANY,
            f"the payload holds {len(data)} events; at most {max_batch} are accepted",
        )
    for index, item in enumerate(data):
        event = _well_formed(dpu_id, item)
        if event is not None:
            events.append(event)
            continue
        try:
            event, rejection = _read_event(dpu_id, item)
        except WireError as error:
            raise _refuse(
                error.rejection.reason, f"event {index}: {error.rejection.detail}"
            ) from None
        if rejection is None:
            events.append(event)
        else:
            refused.append(rejection)
    return events, refused


def _plain(traversal: Traversal, with_dpu_id: bool) -> dict[str, int | str]:
    try:
        _check_event(traversal.dpu_id, traversal.seq, traversal.ts, traversal.direction)
    except WireError as error:
        raise ValueError(f"cannot encode {traversal!r}: {error.rejection.detail}") from None
    plain: dict[str, int | str] = {
        "seq": traversal.seq,
        "ts": traversal.ts,
        "direction": traversal.direction,
    }
    if with_dpu_id:
        plain["dpu_id"] = traversal.dpu_id
    return plain


def encode(traversals: Traversal | Sequence[Traversal], *, with_dpu_id: bool = False) -> bytes:
    """The wire payload for one traversal (a map) or a sequence of them (an array of maps).

    ``dpu_id`` travels in the topic; ``with_dpu_id`` also puts it in each event map, as
    firmware should (see the module doc). Raises ValueError for an empty
    sequence or a traversal :func:`decode` would refuse (seq, ts or direction out of range);
    batch and size limits are the caller's to respect.
    """
    if isinstance(traversals, Traversal):
        data: object = _plain(traversals, with_dpu_id)
    else:
        if not traversals:
            raise ValueError("cannot encode an empty batch: the wire refuses empty arrays")
        data = [_plain(traversal, with_dpu_id) for traversal in traversals]
    packed: bytes = msgpack.packb(data, use_bin_type=True)
    return packed


# --- status payloads ---------------------------------------------------------------------------

_STATUS_EXPECTED: Final = (
    "expected the UTF-8 text 'online' or 'offline', or a msgpack map"
    ' {"state": "online" or "offline", "first": int, "seq": int, "sent": int}'
)


@dataclass(frozen=True, slots=True)
class Report:
    """A DPU's delivery report: ``sent`` distinct traversals acknowledged by the broker with
    ``first <= seq' <= seq`` (``first`` and ``seq`` None when ``sent`` is 0)."""

    sent: int
    first: int | None = None
    seq: int | None = None

    def __post_init__(self) -> None:
        if self.sent < 0:
            raise ValueError(f"sent must not be negative, got {self.sent}")
        if (self.sent == 0) != (self.first is None) or (self.first is None) != (self.seq is None):
            raise ValueError(f"first and seq go with a positive sent, got {self}")
        if self.first is not None and self.seq is not None:
            if not 0 <= self.first <= self.seq < SEQ_LIMIT:
                raise ValueError(f"need 0 <= first <= seq < 2**63, got {self}")
            if self.sent > self.seq - self.first + 1:
                raise ValueError(f"{self.sent} distinct seqs cannot fit in [first, seq]: {self}")


@dataclass(frozen=True, slots=True)
class Status:
    """A decoded status message: ``online``, and the delivery report if it carried one."""

    online: bool
    report: Report | None = None


def decode_status(payload: bytes) -> Status:
    """The status in a ``dpus/{dpu_id}/status`` payload: the text ``online``/``offline`` (any
    case, surrounding whitespace allowed) or a status map (see the module doc).

    Anything else raises :class:`WireError` with ``BAD_STATUS``.
    """
    if len(payload) > _MAX_STATUS_LEN:
        raise _refuse(
            Reason.BAD_STATUS,
            f"the status payload is {len(payload)} bytes long; {_STATUS_EXPECTED}",
        )
    payload = bytes(payload)
    if payload and (0x80 <= payload[0] <= 0x8F or payload[0] in (0xDE, 0xDF)):  # a msgpack map
        return _status_map(payload)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(
            Reason.BAD_STATUS,
            f"the status payload {_preview(payload)} is not UTF-8 text; {_STATUS_EXPECTED}",
        ) from None
    online = _state(text.strip().casefold())
    if online is None:
        raise _refuse(
            Reason.BAD_STATUS, f"the status payload is {_preview(text)}; {_STATUS_EXPECTED}"
        )
    return Status(online)


def _state(word: object) -> bool | None:
    return True if word == "online" else False if word == "offline" else None


def _status_map(payload: bytes) -> Status:
    try:
        data = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            max_str_len=_MAX_STR_LEN,
            max_bin_len=_MAX_BIN_LEN,
            max_ext_len=_MAX_EXT_LEN,
            max_map_len=_MAX_MAP_LEN,
            max_array_len=_MAX_MAP_LEN,
        )
    except Exception as exc:  # every unpacking failure, as in _unpack
        raise _refuse(
            Reason.BAD_STATUS,
            f"the status map is not readable msgpack: {_why(exc)}; {_STATUS_EXPECTED}",
        ) from None
    online = _state(data.get("state"))
    if online is None:
        raise _refuse(
            Reason.BAD_STATUS,
            f"the status map's state is {_described(data.get('state'))}; {_STATUS_EXPECTED}",
        )
    if all(data.get(name) is None for name in ("sent", "first", "seq")):
        return Status(online)
    sent = _status_int(data, "sent")
    first, seq = _status_int(data, "first"), _status_int(data, "seq")
    try:
        report = Report(0 if sent is None else sent, first, seq)
    except ValueError:
        raise _refuse(
            Reason.BAD_STATUS,
            f"the status map says sent={sent}, first={first}, seq={seq}; expected first <= seq"
            " and sent at most seq - first + 1, or sent 0 with first and seq nil",
        ) from None
    return Status(online, report)


def _status_int(data: dict[Any, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    try:
        return _int_field(name, value, SEQ_LIMIT, "an integer 0 <= value < 2**63")
    except WireError as error:
        raise _refuse(Reason.BAD_STATUS, f"the status map's {error.rejection.detail}") from None


def encode_status(online: bool, report: Report | None = None) -> bytes:
    """A status payload: the plain text old firmware sends when ``report`` is None, else the
    status map with the report."""
    state = "online" if online else "offline"
    if report is None:
        return state.encode()
    data = {"state": state, "first": report.first, "seq": report.seq, "sent": report.sent}
    packed: bytes = msgpack.packb(data, use_bin_type=True)
    return packed


# --- per-event screening -----------------------------------------------------------------------


def _describe(traversal: Traversal) -> str:
    return f"DPU {traversal.dpu_id!r} seq {traversal.seq}"


def _when(ms: int) -> str:
    """ISO-8601 UTC for ``ms``, or the raw number when it is beyond what datetime can show."""
    try:
        return format_ms(ms)
    except (OverflowError, ValueError):
        return f"{ms} ms after the Unix epoch"


def screen(
    traversals: Sequence[Traversal],
    topology: Topology,
    *,
    now: int,
    max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
) -> tuple[list[Traversal], list[Rejection]]:
    """Split decoded traversals into those to store and those to refuse, keeping order.

    An event is refused (and carried in its :class:`Rejection`) when its ``ts`` is more than
    ``max_skew_ms`` after ``now`` (``FUTURE_TS``; exactly ``now + max_skew_ms`` is accepted), or
    when its DPU has no assignment in ``topology`` at its ``ts`` (``UNKNOWN_DPU``). The clock is
    checked first: a DPU whose clock runs far ahead is told so, not that it is unassigned.
    """
    kept: list[Traversal] = []
    refused: list[Rejection] = []
    for traversal in traversals:
        skew = traversal.ts - now
        if skew > max_skew_ms:
            refused.append(
                Rejection(
                    Reason.FUTURE_TS,
                    f"{_describe(traversal)}: ts {_when(traversal.ts)} is {skew} ms"
                    f" ({skew / 1000:.3f} s) ahead of the server clock ({_when(now)});"
                    f" at most {max_skew_ms} ms is tolerated, so check the DPU clock (NTP)",
                    traversal,
                )
            )
        elif topology.assignment_at(traversal.dpu_id, traversal.ts) is None:
            when = _when(traversal.ts)
            if topology.knows_dpu(traversal.dpu_id):
                known = "its assignments cover other times only"
            else:
                known = "it appears in no assignment"
            refused.append(
                Rejection(
                    Reason.UNKNOWN_DPU,
                    f"{_describe(traversal)}: the topology assigns DPU {traversal.dpu_id!r} to no"
                    f" doorway at {when} ({known});"
                    f" add an assignment of DPU {traversal.dpu_id!r} to a doorway covering"
                    f" {when} to the topology",
                    traversal,
                )
            )
        else:
            kept.append(traversal)
    return kept, refused

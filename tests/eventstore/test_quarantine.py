"""Quarantine on both backends: whatever a stranger publishes, its entry fits the store; and
what the store refuses for its content is told apart from a store that is down."""

from __future__ import annotations

import pytest

from headcount.domain.events import Traversal
from headcount.errors import StoreDataError, StoreError
from headcount.eventstore.engine import translate_errors, write_transaction
from headcount.eventstore.quarantine import MAX_ORIGIN, MAX_PAYLOAD_KEPT, MAX_REASON, fitting
from headcount.eventstore.records import QuarantineEntry
from headcount.eventstore.schema import quarantine, traversals
from headcount.eventstore.store import EventStore
from tests.store_readers import quarantined

NOW = 1_700_000_000_000
NOT_UTF8 = b"dpus/\xff\xfe/traversals".decode("utf-8", "surrogateescape")  # as MQTT hands it on

#: What issue 9 saw published, as the entries ingest makes of it.
HOSTILE = {
    "10000-char-dpu-id": QuarantineEntry(
        origin="mqtt:dpus/" + "d" * 10_000 + "/traversals",
        reason="bad_topic: topic 'dpus/dddd...' is 10,000 characters long",
        payload=b"\x81\xa3seq\x01",
        received_at=NOW,
    ),
    "nul-in-topic": QuarantineEntry(
        origin="mqtt:dpus/28\x003/traversals",
        reason="bad_topic: topic 'dpus/28\\x003/traversals' contains '\x00'",
        payload=b"\x00\x00",
        received_at=NOW,
    ),
    "10mb-payload": QuarantineEntry(
        origin="mqtt:dpus/283/traversals",
        reason="oversize: the payload is 10,000,000 bytes",
        payload=b"\x93" + b"\xab" * 9_999_999,
        received_at=NOW,
    ),
    "not-utf8": QuarantineEntry(
        origin=f"mqtt:{NOT_UTF8}",
        reason=f"bad_topic: topic {NOT_UTF8} is not valid UTF-8",
        payload=b"\xff\xfe\xc3\x28 not utf-8 either",
        received_at=NOW,
    ),
}


def printable(text: str) -> bool:
    return text.isprintable() and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_fitting_bounds_and_cleans_every_entry(name: str) -> None:
    entry = HOSTILE[name]
    fitted = fitting(entry)
    assert printable(fitted.origin)
    assert len(fitted.origin) <= MAX_ORIGIN
    assert printable(fitted.reason)
    assert len(fitted.reason) <= MAX_REASON
    assert fitted.payload == entry.payload[:MAX_PAYLOAD_KEPT]
    assert fitted.received_at == entry.received_at
    if len(entry.payload) > MAX_PAYLOAD_KEPT:
        assert "[payload: first 4,096 of 10,000,000 bytes kept]" in fitted.reason


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_hostile_entries_are_stored(store: EventStore, name: str) -> None:
    entry = HOSTILE[name]
    await store.quarantine.add([entry])
    # And with traversals, in the one transaction of an append.
    result = await store.log.append([Traversal("283", 1, NOW, 1)], quarantine=[entry])
    assert len(result.new) == 1
    assert await quarantined(store) == [fitting(entry), fitting(entry)]


async def test_all_of_them_in_one_append(store: EventStore) -> None:
    await store.log.append([Traversal("283", 1, NOW, 1)], quarantine=list(HOSTILE.values()))
    stored = await quarantined(store)
    assert sorted(stored, key=repr) == sorted(map(fitting, HOSTILE.values()), key=repr)


# -- refused data is not a store that is down ----------------------------------------------


async def insert_unfitted(store: EventStore, entry: QuarantineEntry) -> None:
    """What the quarantine did before it made entries fit."""
    async with write_transaction(store.engine) as conn:
        await conn.execute(
            quarantine.insert(),
            [
                {
                    "received_at": entry.received_at,
                    "origin": entry.origin,
                    "reason": entry.reason,
                    "payload": entry.payload,
                }
            ],
        )


async def test_a_value_the_store_cannot_hold_is_a_data_error(store: EventStore) -> None:
    with pytest.raises(StoreDataError) as raised:
        await insert_unfitted(store, HOSTILE["not-utf8"])
    assert raised.value.__cause__ is not None
    row = {"dpu_id": "d", "seq": 2**63, "ts": 1, "direction": 1, "received_at": 1, "late": False}
    async with write_transaction(store.engine) as conn:
        with pytest.raises(StoreDataError):
            async with translate_errors():
                await conn.execute(traversals.insert(), [row])
    assert await quarantined(store) == []


@pytest.mark.parametrize("name", ["10000-char-dpu-id", "nul-in-topic"])
async def test_long_text_and_nul_unfitted(store: EventStore, name: str) -> None:
    if store.engine.dialect.name == "postgresql":
        # VARCHAR(300) and PostgreSQL's UTF-8 check refuse them: the data's fault.
        with pytest.raises(StoreDataError, match="the event store failed"):
            await insert_unfitted(store, HOSTILE[name])
    else:
        await insert_unfitted(store, HOSTILE[name])  # SQLite keeps them as they are
        assert len(await quarantined(store)) == 1


async def test_a_store_that_cannot_be_reached_is_no_data_error() -> None:
    with pytest.raises(StoreError) as raised:
        await EventStore.open("postgresql+asyncpg://postgres@127.0.0.1:1/test")
    assert not isinstance(raised.value, StoreDataError)

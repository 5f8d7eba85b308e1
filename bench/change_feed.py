"""What the change feed costs the actors: CPU per event folded by a space's actor with no
feed, with a feed nobody listens to for that space, and with a subscriber of that space
(its queue never read), rounds interleaved. One event per mailbox drain, so each event that
someone listens to is a change published (the most the feed can cost).

    python bench/change_feed.py [--quick]

Run with ``PYTHONPATH`` pointing at an older checkout to time its actors (only "no feed"
then, if it has none).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import statistics
import tempfile
import time
from pathlib import Path

from headcount.actors.space import SpaceActor
from headcount.domain.events import Delta
from headcount.domain.fold import EMPTY
from headcount.domain.topology import Topology
from headcount.eventstore.store import EventStore
from headcount.history import History

TOPOLOGY = """
[[spaces]]
id = "A"
name = "A"

[[spaces]]
id = "B"
name = "B"
"""


async def per_event_us(history: History, events: int, mode: str) -> float:
    """CPU microseconds per event, from the first event told to the last one folded."""
    options = {}
    if mode != "no feed":
        from headcount.actors.changes import ChangeFeed

        feed = ChangeFeed()
        feed.subscribe(["B"] if mode == "feed, nobody listens" else ["A"], maxsize=events + 1)
        options["changes"] = feed
    actor = SpaceActor("A", history, mailbox_size=events + 1, **options)  # type: ignore[arg-type]
    actor.restore(EMPTY, -(2**62), [])
    task = asyncio.create_task(actor.run())
    started = time.process_time()
    for seq in range(events):
        await actor.tell(Delta(1_000_000 + seq, "d", seq, 1))
        await asyncio.sleep(0)  # the actor folds it alone
    await actor.mailbox.join()
    spent = time.process_time() - started
    task.cancel()
    await asyncio.wait([task])
    return spent / events * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run, in seconds")
    args = parser.parse_args()
    events, rounds = (5_000, 3) if args.quick else (50_000, 7)
    modes = ["no feed"]
    if "changes" in inspect.signature(SpaceActor).parameters:
        modes += ["feed, nobody listens", "feed, subscribed"]
    with tempfile.TemporaryDirectory() as tmp:
        async with await EventStore.open(f"sqlite+aiosqlite:///{Path(tmp) / 's.db'}") as store:
            history = History(store, Topology.from_toml(TOPOLOGY))
            found: dict[str, list[float]] = {mode: [] for mode in modes}
            for _ in range(rounds):
                for mode in modes:
                    found[mode].append(await per_event_us(history, events, mode))
    base = statistics.median(found["no feed"])
    for mode in modes:
        us = statistics.median(found[mode])
        print(f"{mode:<22} {us:6.2f} us/event (median of {rounds}), {us / base:.2f}x no feed")


if __name__ == "__main__":
    asyncio.run(main())

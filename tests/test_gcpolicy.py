"""The collector's setting during long passes: raised for the pass, put back after it."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from headcount.gcpolicy import YOUNG, bulk_pass


@pytest.fixture(autouse=True)
def default_threshold() -> Iterator[None]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*saved)


def test_a_pass_collects_less_often_and_puts_the_setting_back() -> None:
    with bulk_pass():
        assert gc.get_threshold() == (YOUNG, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)


def test_the_setting_comes_back_after_a_failed_pass() -> None:
    with pytest.raises(RuntimeError), bulk_pass():
        raise RuntimeError("the store failed")
    assert gc.get_threshold() == (700, 10, 10)


async def test_passes_that_overlap_put_it_back_when_the_last_one_ends() -> None:
    """Two tasks' passes, the first ending while the second runs: the second keeps the
    raised setting until it ends."""
    first_done = asyncio.Event()
    seen: list[tuple[int, int, int]] = []

    async def first() -> None:
        with bulk_pass():
            await asyncio.sleep(0)
        first_done.set()

    async def second() -> None:
        with bulk_pass():
            await first_done.wait()
            seen.append(gc.get_threshold())

    await asyncio.gather(first(), second())
    assert seen == [(YOUNG, 10, 10)]
    assert gc.get_threshold() == (700, 10, 10)


def test_a_collector_turned_off_or_set_higher_is_left_as_it_is() -> None:
    for setting in ((0, 10, 10), (YOUNG * 2, 10, 10)):
        gc.set_threshold(*setting)
        with bulk_pass():
            assert gc.get_threshold() == setting
        assert gc.get_threshold() == setting

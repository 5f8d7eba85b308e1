"""The cache of checked topologies: a large document is read once, and the cache never
changes an answer or an error."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from headcount.cli import topology_cache
from headcount.cli.topology_cache import CACHE_ENV, cache_dir, read_topology
from headcount.domain.topology import Topology
from headcount.errors import TopologyError

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed" / "topology.toml"


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A cache of its own that keeps every document, however small."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(topology_cache, "_CACHE_FROM_CHARS", 0)
    return tmp_path / "cache"


def document(n: int = 0) -> str:
    """The seed topology, made a different document for each ``n``."""
    return SEED.read_text(encoding="utf-8") + f"\n# version {n}\n"


def entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("topology-*.json"))


def never_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> Topology:
        raise AssertionError("the TOML was read again")

    monkeypatch.setattr(Topology, "from_toml", refuse)


def test_a_document_is_read_once_then_loaded(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = read_topology(document(), source="seed")
    assert len(entries(cache)) == 1
    never_parsed(monkeypatch)
    again = read_topology(document(), source="seed")
    assert again == first
    assert again.fingerprint("A") == first.fingerprint("A")


def test_another_document_is_another_entry_and_the_newest_are_kept(cache: Path) -> None:
    for n in range(6):
        read_topology(document(n), source="seed")
    assert len(entries(cache)) == 4


def test_an_invalid_document_is_refused_as_without_a_cache_and_never_kept(cache: Path) -> None:
    bad = document().replace("sensor_placement = -1", "sensor_placement = 2")
    with pytest.raises(TopologyError) as cached:
        read_topology(bad, source="seed")
    with pytest.raises(TopologyError) as plain:
        Topology.from_toml(bad, source="seed")
    assert cached.value.problems == plain.value.problems
    assert entries(cache) == []


def test_an_unusable_entry_is_read_again_and_replaced(
    cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    expected = read_topology(document(), source="seed")
    [entry] = entries(cache)
    entry.write_text('{"format": "headcount.topology.compact/1", "spaces": [')
    with caplog.at_level(logging.WARNING):
        assert read_topology(document(), source="seed") == expected
    assert f"the cached topology {entry} is unusable" in caplog.text
    assert Topology.from_compact(json.loads(entry.read_text())) == expected


def test_small_documents_and_off_keep_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    read_topology(document(), source="seed")  # a few hundred characters: read at once
    assert not (tmp_path / "cache").exists()
    monkeypatch.setattr(topology_cache, "_CACHE_FROM_CHARS", 0)
    for off in ("off", ""):
        monkeypatch.setenv(CACHE_ENV, off)
        assert cache_dir() is None
        read_topology(document(), source="seed")
    assert not (tmp_path / "cache").exists()


def test_the_default_place_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "headcount"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "headcount"


def test_an_unwritable_cache_only_costs_a_warning(
    cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache.write_text("a file where the directory would be")
    with caplog.at_level(logging.WARNING):
        assert read_topology(document(), source="seed") == Topology.from_toml(document())
    assert "cannot keep the checked topology" in caplog.text

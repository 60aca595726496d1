"""Release retention on both backends: the newest releases stay whole, the rest go."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lunarchive.catalog.gc import collect_releases
from lunarchive.catalog.publish import publish_release, read_current
from lunarchive.catalog.store import Store
from tests.integration.test_publish_protocol import draft, verify

DAY = timedelta(days=1)
START = datetime(2026, 1, 1, tzinfo=UTC)


def releases_in(store: Store) -> set[str]:
    return {info.key.split("/")[1] for info in store.list("releases/") if info.key.count("/") >= 2}


def test_keeps_the_newest_and_deletes_older_releases_whole(store: Store) -> None:
    versions = []
    for n in range(4):
        result = publish_release(store, draft(*[f"v{n}"]), now=START + n * DAY)
        assert result.version is not None
        versions.append(result.version)
    collected = collect_releases(store, keep=2, grace=timedelta(hours=1), now=START + 10 * DAY)
    assert collected.kept == versions[2:]
    assert collected.deleted == versions[:2]
    assert releases_in(store) == set(versions[2:])
    assert verify(store) == versions[3]  # the current release is whole
    current = read_current(store)
    assert current is not None
    assert current[0].previous == versions[2]  # and its predecessor still exists
    again = collect_releases(store, keep=2, grace=timedelta(hours=1), now=START + 10 * DAY)
    assert again.deleted == []
    assert again.objects_deleted == 0


def test_crashed_leftovers_go_after_the_grace_period_only(store: Store) -> None:
    published = publish_release(store, draft("a"), now=START)
    assert published.version is not None
    # a publish that died before its manifest, one old and one in flight
    store.write("releases/20260102T000000Z-dead00/catalog.json", b"{}")
    store.write("releases/20260110T115900Z-live00/catalog.json", b"{}")
    collected = collect_releases(store, keep=1, grace=timedelta(hours=1), now=START + 9.5 * DAY)
    assert collected.deleted == ["20260102T000000Z-dead00"]
    assert collected.young == ["20260110T115900Z-live00"]
    assert releases_in(store) == {published.version, "20260110T115900Z-live00"}
    assert verify(store) == published.version


def test_the_current_release_is_never_collected(store: Store) -> None:
    old = publish_release(store, draft("a"), now=START)
    publish_release(store, draft("b"), now=START + DAY)
    newest = publish_release(store, draft("c"), now=START + 2 * DAY)
    assert old.version is not None
    assert newest.version is not None
    # an operator rolled the pointer back to the oldest release
    pointer, tag = store.read_tagged("releases/latest.json") or (b"", "")
    rolled_back = pointer.replace(newest.version.encode(), old.version.encode())
    store.swap("releases/latest.json", rolled_back, expected_tag=tag)
    collected = collect_releases(store, keep=1, grace=timedelta(0), now=START + 5 * DAY)
    assert collected.kept == [old.version, newest.version]
    assert len(collected.deleted) == 1
    assert verify(store) == old.version


def test_keep_must_hold_the_current_release(store: Store) -> None:
    with pytest.raises(ValueError, match="keep must be at least 1"):
        collect_releases(store, keep=0, grace=DAY)

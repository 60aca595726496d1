"""The publish protocol on both backends: unchanged releases publish nothing, a crash before
the pointer flips leaves the current release intact, and racing publishers never mix."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial

import pystac
import pytest

from lunarchive.catalog.layout import LATEST_KEY
from lunarchive.catalog.publish import ReleaseDraft, draft_release, publish_release, read_current
from lunarchive.catalog.stac import create_catalog
from lunarchive.catalog.store import Store
from lunarchive.schemas.release import ManifestEntry
from tests._race import race


def draft(*titles: str) -> ReleaseDraft:
    """A release of one collection with an item per title (items differ by title)."""
    catalog = create_catalog("test", "publish protocol test")
    collection = pystac.Collection(
        "c",
        "c",
        pystac.Extent(pystac.SpatialExtent([[0, 0, 1, 1]]), pystac.TemporalExtent([[None, None]])),
    )
    for index, title in enumerate(titles):
        item = pystac.Item(
            f"i{index}", {"type": "Point", "coordinates": [0.5, 0.5]}, [0.5, 0.5, 0.5, 0.5],
            datetime(2020, 12, 1, tzinfo=UTC), {"title": title},
        )  # fmt: skip
        collection.add_item(item)
    catalog.add_child(collection)
    return draft_release(catalog, [])


def verify(store: Store) -> str:
    """The current release is whole: every manifest object is there with its checksum."""
    current = read_current(store)
    assert current is not None
    pointer, manifest, _ = current
    for entry in manifest.objects:
        assert store.sha256(entry.key) == entry.sha256, entry.key
    return pointer.version


def test_unchanged_release_publishes_nothing(store: Store) -> None:
    first = publish_release(store, draft("a", "b"))
    before = {info.key: info.size for info in store.list()}
    again = publish_release(store, draft("a", "b"))
    assert first.published
    assert not again.published
    assert again.objects_written == 0
    assert again.version == first.version
    assert {info.key: info.size for info in store.list()} == before


def test_changed_release_links_to_the_previous_one(store: Store) -> None:
    first = publish_release(store, draft("a"), now=datetime(2026, 1, 1, tzinfo=UTC))
    second = publish_release(store, draft("a", "b"), now=datetime(2026, 1, 2, tzinfo=UTC))
    assert second.published
    assert second.previous == first.version
    assert verify(store) == second.version
    assert second.version.startswith("20260102T000000Z-")


def test_a_crash_before_the_swap_leaves_the_current_release(store: Store) -> None:
    published = publish_release(store, draft("a"))
    pointer_before = store.read(LATEST_KEY)

    class Crash(RuntimeError):
        pass

    def crash(*args: object, **kwargs: object) -> None:
        raise Crash("power cut before the pointer flipped")

    original = store.swap
    store.swap = crash  # type: ignore[method-assign]
    with pytest.raises(Crash):
        publish_release(store, draft("a", "b"))
    store.swap = original  # type: ignore[method-assign]
    assert store.read(LATEST_KEY) == pointer_before
    assert verify(store) == published.version
    retried = publish_release(store, draft("a", "b"))  # the next run completes the work
    assert retried.published
    assert verify(store) == retried.version


def test_racing_publishers_one_wins_and_the_release_is_whole(store: Store) -> None:
    publish_release(store, draft("base"))
    drafts = {"x": draft("base", "x"), "y": draft("base", "y")}
    outcome = race({name: partial(publish_release, store, d) for name, d in drafts.items()})
    assert sorted(outcome.values()) in (["refused", "won"], ["won", "won"])
    version = verify(store)
    current = read_current(store)
    assert current is not None
    titles = {e.key for e in current[1].objects if e.key.startswith(f"releases/{version}/c/i1/")}
    assert len(titles) == 1  # the current release is one publisher's, whole


def test_shared_objects_are_listed_in_the_manifest(store: Store) -> None:
    store.write("cubes/c/t/v.zarr/zarr.json", b"{}")
    entry = ManifestEntry(
        key="cubes/c/t/v.zarr/zarr.json", size=2, sha256=store.sha256("cubes/c/t/v.zarr/zarr.json")
    )
    base = draft("a")
    result = publish_release(store, ReleaseDraft(files=base.files, shared=[entry]))
    current = read_current(store)
    assert current is not None
    assert entry in current[1].objects
    assert result.published

"""The batched writes of a release (``Store.create_many``), on both backends: every object the
pointer references is on the store in full, nothing stored is overwritten, and a crashed
attempt of the same release is completed, not refused."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lunarchive.catalog.layout import LATEST_KEY
from lunarchive.catalog.publish import ReleaseDraft, publish_release, read_current
from lunarchive.catalog.store import FolderStore, Store
from lunarchive.schemas.errors import InvalidKey, StoreConflict
from tests.integration.test_publish_protocol import draft


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_create_many_creates_every_object(store: Store) -> None:
    contents = {f"batch/{i}/o{i}.json": f'{{"i": {i}}}'.encode() for i in range(5)}
    objects = [(key, data, sha(data)) for key, data in contents.items()]
    made = store.create_many(objects)
    assert [(info.key, info.size) for info in made] == [(k, len(d)) for k, d, _ in objects]
    for key, data, digest in objects:
        assert store.read(key) == data
        assert store.sha256(key, rehash=True) == digest
    assert sorted(info.key for info in store.list("batch/")) == sorted(k for k, _, _ in objects)


def test_create_many_never_overwrites(store: Store) -> None:
    store.create("batch/b.json", b"old")
    objects = [("batch/a.json", b"a", sha(b"a")), ("batch/b.json", b"new", sha(b"new"))]
    with pytest.raises(StoreConflict):
        store.create_many(objects)
    assert store.read("batch/b.json") == b"old"
    assert {info.key for info in store.list("batch/")} == {"batch/a.json", "batch/b.json"}


def test_folder_create_many_refuses_a_folder_linked_out_of_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store = FolderStore((tmp_path / "store").resolve())
    (tmp_path / "store" / "releases").mkdir(parents=True)
    (tmp_path / "store" / "releases" / "v").symlink_to(outside)
    with pytest.raises(InvalidKey):
        store.create_many([("releases/v/x.json", b"x", sha(b"x"))])
    assert list(outside.iterdir()) == []


def test_every_object_the_pointer_references_is_stored_in_full(store: Store) -> None:
    result = publish_release(store, draft("a", "b", "c"))
    current = read_current(store)
    assert current is not None
    pointer, manifest, _ = current
    assert pointer.version == result.version
    listed = {info.key: info.size for info in store.list(f"releases/{result.version}/")}
    for entry in manifest.objects:
        assert listed[entry.key] == entry.size, entry.key
        assert store.sha256(entry.key, rehash=True) == entry.sha256, entry.key
    own = {e.key for e in manifest.objects}
    assert set(listed) - own == {f"releases/{result.version}/manifest.json"}


def version_of(release: ReleaseDraft, now: datetime, scratch: Path) -> str:
    """The version name a publish of ``release`` at ``now`` gets (found on a scratch store)."""
    version = publish_release(FolderStore(scratch.resolve()), release, now=now).version
    assert version is not None
    return version


def test_a_crashed_attempt_of_the_same_release_is_completed(store: Store, tmp_path: Path) -> None:
    release, now = draft("a", "b"), datetime(2026, 1, 1, tzinfo=UTC)
    version = version_of(release, now, tmp_path / "scratch")
    left = list(release.files.items())[::2]  # what the crashed attempt wrote before dying
    for key, data in left:
        store.create(f"releases/{version}/{key}", data)
    result = publish_release(store, release, now=now)
    assert (result.version, result.published) == (version, True)
    verify_whole(store, version)


def test_a_foreign_object_in_the_new_prefix_stops_the_publish(store: Store, tmp_path: Path) -> None:
    old = publish_release(store, draft("a"), now=datetime(2026, 1, 1, tzinfo=UTC))
    pointer_before = store.read(LATEST_KEY)
    release, now = draft("a", "b"), datetime(2026, 1, 2, tzinfo=UTC)
    version = version_of(release, now, tmp_path / "scratch")
    key = f"releases/{version}/{next(iter(release.files))}"
    store.create(key, b"half an object")
    with pytest.raises(StoreConflict):
        publish_release(store, release, now=now)
    assert store.read(key) == b"half an object"  # never overwritten
    assert store.read(LATEST_KEY) == pointer_before
    verify_whole(store, old.version)


def verify_whole(store: Store, version: str | None) -> None:
    current = read_current(store)
    assert current is not None
    assert current[0].version == version
    for entry in current[1].objects:
        assert store.sha256(entry.key, rehash=True) == entry.sha256, entry.key

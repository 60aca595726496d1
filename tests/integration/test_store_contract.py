"""The storage contract, run unchanged on both backends (a folder and SeaweedFS S3)."""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path
from typing import IO, Any

import pytest

from lunarchive.catalog.store import S3Options, Store, open_store
from lunarchive.schemas.errors import InvalidKey, StoreConflict
from tests._race import race


def keys(store: Store, prefix: str = "") -> list[str]:
    return sorted(info.key for info in store.list(prefix))


def test_write_then_read_back(store: Store, tmp_path: Path) -> None:
    data = bytes(range(256)) * 4099
    info = store.write("a/b/c.bin", data)
    source = tmp_path / "src.bin"
    source.write_bytes(data[::-1])
    store.write_file("a/b/d.bin", source)

    assert info.size == len(data)
    assert store.read("a/b/c.bin") == data
    assert store.read("a/b/d.bin") == data[::-1]
    assert store.sha256("a/b/c.bin") == hashlib.sha256(data).hexdigest()
    assert store.exists("a/b/c.bin")
    assert not store.exists("a/b/missing.bin")
    copy = store.download("a/b/d.bin", tmp_path / "out" / "d.bin")
    assert copy.read_bytes() == data[::-1]


def test_write_replaces_whole_object(store: Store) -> None:
    store.write("k.txt", b"first version, longer")
    store.write("k.txt", b"second")
    assert store.read("k.txt") == b"second"


class _FailingPath(type(Path())):  # type: ignore[misc]
    """A source file whose reading breaks after 1 MiB, as a dying disk or NFS mount would."""

    def open(self, *args: Any, **kwargs: Any) -> IO[bytes]:
        handle = super().open(*args, **kwargs)
        real_read = handle.read
        state = {"served": 0}

        def read(size: int = -1) -> bytes:
            if state["served"] >= 1024 * 1024:
                raise OSError("simulated read failure in the middle of the source")
            block: bytes = real_read(size if size and size > 0 else 256 * 1024)
            state["served"] += len(block)
            return block

        handle.read = read  # type: ignore[method-assign]
        return handle


def test_failed_write_leaves_nothing_visible(store: Store, tmp_path: Path) -> None:
    source = _FailingPath(tmp_path / "big.bin")
    source.write_bytes(b"\x07" * (4 * 1024 * 1024))
    with pytest.raises(OSError, match="simulated read failure"):
        store.write_file("half/written.bin", source)
    assert not store.exists("half/written.bin")
    assert keys(store, "half/") == []
    assert keys(store) == []


def test_failed_write_keeps_the_previous_object(store: Store, tmp_path: Path) -> None:
    store.write("keep/me.bin", b"the stored version")
    source = _FailingPath(tmp_path / "big.bin")
    source.write_bytes(b"\x01" * (3 * 1024 * 1024))
    with pytest.raises(OSError, match="simulated read failure"):
        store.write_file("keep/me.bin", source)
    assert store.read("keep/me.bin") == b"the stored version"
    assert keys(store) == ["keep/me.bin"]


def test_list_by_prefix(store: Store) -> None:
    for key in ("raw/a/1.xml", "raw/a/1.img", "raw/ab/2.xml", "raw/b/3.xml", "cubes/x.json"):
        store.write(key, key.encode())
    assert keys(store, "raw/a/") == ["raw/a/1.img", "raw/a/1.xml"]
    assert keys(store, "raw/a") == ["raw/a/1.img", "raw/a/1.xml", "raw/ab/2.xml"]
    assert keys(store, "raw/") == ["raw/a/1.img", "raw/a/1.xml", "raw/ab/2.xml", "raw/b/3.xml"]
    assert keys(store, "nothing/") == []
    assert len(keys(store)) == 5
    sizes = {info.key: info.size for info in store.list("raw/b/")}
    assert sizes == {"raw/b/3.xml": len(b"raw/b/3.xml")}


def test_create_if_absent_refuses_a_second_create(store: Store) -> None:
    store.create("releases/v1/manifest.json", b"one")
    with pytest.raises(StoreConflict):
        store.create("releases/v1/manifest.json", b"two")
    assert store.read("releases/v1/manifest.json") == b"one"
    assert keys(store) == ["releases/v1/manifest.json"]


def test_swap_with_a_stale_tag_is_refused_and_changes_nothing(store: Store) -> None:
    store.swap("releases/latest.json", b"v1", expected_tag=None)
    _, tag_v1 = store.read_tagged("releases/latest.json") or (b"", "")
    store.swap("releases/latest.json", b"v2", expected_tag=tag_v1)
    with pytest.raises(StoreConflict):
        store.swap("releases/latest.json", b"v3", expected_tag=tag_v1)  # stale
    with pytest.raises(StoreConflict):
        store.swap("releases/latest.json", b"v3", expected_tag=None)  # "absent", but it exists
    assert store.read("releases/latest.json") == b"v2"
    assert keys(store) == ["releases/latest.json"]


def test_two_concurrent_swaps_exactly_one_wins(store: Store) -> None:
    store.swap("releases/latest.json", b"base", expected_tag=None)
    for round_number in range(5):
        _, tag = store.read_tagged("releases/latest.json") or (b"", "")
        names = [f"r{round_number}-a", f"r{round_number}-b"]
        outcome = race(
            {
                name: partial(store.swap, "releases/latest.json", name.encode(), expected_tag=tag)
                for name in names
            }
        )
        winners = [name for name in names if outcome[name] == "won"]
        assert len(winners) == 1, outcome
        assert store.read("releases/latest.json") == winners[0].encode()


@pytest.mark.parametrize(
    "key", ["../escape.txt", "a/../../escape.txt", "/etc/passwd", "a//b", "a/./b", ""]
)
def test_keys_that_escape_the_root_are_refused(store: Store, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.write(key, b"x")
    with pytest.raises(InvalidKey):
        store.create(key, b"x")
    assert keys(store) == []


@pytest.mark.integration
def test_s3_sha256_comes_from_the_write_and_follows_foreign_overwrites(
    s3_url: str, s3_options: S3Options, tmp_path: Path
) -> None:
    """The sha256 recorded at write time answers ``sha256`` with one HEAD; bytes replaced by
    another client (which drops that record) are hashed; ``rehash`` always reads the bytes."""
    import obstore

    from lunarchive.catalog._s3store import SHA256_METADATA, S3Store

    store = open_store(s3_url, s3=s3_options)
    assert isinstance(store, S3Store)
    data = b"lunar regolith " * 1000
    store.write("k/recorded.bin", data)
    head = obstore.get(store.client, "k/recorded.bin", options={"head": True})
    assert head.attributes[SHA256_METADATA] == hashlib.sha256(data).hexdigest()
    assert store.sha256("k/recorded.bin") == hashlib.sha256(data).hexdigest()

    claimed = "0" * 64  # a record that does not match the bytes: only a re-hash can tell
    obstore.put(store.client, "k/claimed.bin", data, attributes={SHA256_METADATA: claimed})
    assert store.sha256("k/claimed.bin") == claimed
    assert store.sha256("k/claimed.bin", rehash=True) == hashlib.sha256(data).hexdigest()

    obstore.put(store.client, "k/recorded.bin", b"replaced by another tool")  # no record
    assert store.sha256("k/recorded.bin") == hashlib.sha256(b"replaced by another tool").hexdigest()
    with pytest.raises(KeyError):
        store.sha256("k/missing.bin")

    big = tmp_path / "big.bin"  # above the single-PUT size: a multipart upload, same record
    big.write_bytes(bytes(range(256)) * (17 * 4096))
    store.write_file("k/big.bin", big)
    head = obstore.get(store.client, "k/big.bin", options={"head": True})
    assert head.attributes[SHA256_METADATA] == hashlib.sha256(big.read_bytes()).hexdigest()
    assert store.read("k/big.bin") == big.read_bytes()

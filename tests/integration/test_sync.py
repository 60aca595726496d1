"""Mirroring releases: incremental, verified, resumable, filtered (issue 8's sync; R6, R18, R19).

Sources are a folder store, SeaweedFS S3, and a folder served over loopback HTTP by a small
server that honours ``Range`` and can misbehave on request. Every test asserts the end state of
the mirror: its pointer, its manifest, and the sha256 of every object, never a timing.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pystac
import pytest

from lunarchive.catalog.layout import LATEST_KEY, manifest_key, release_prefix
from lunarchive.catalog.publish import ITEM_TO_ROOT, draft_release, publish_release, read_current
from lunarchive.catalog.stac import create_catalog
from lunarchive.catalog.store import S3Options, Store, open_store
from lunarchive.catalog.sync import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    STATE_KEY,
    HttpSource,
    StoreSource,
    SyncProgress,
    SyncSource,
    bbox_intersects,
    parse_bbox,
    sync_release,
    verify_mirror,
)
from lunarchive.schemas.errors import InvalidFilter, SourceRefused, TransientError
from lunarchive.schemas.release import ManifestEntry, ReleaseManifest

START = datetime(2026, 1, 1, tzinfo=UTC)
BIG = 3 * 1024 * 1024  # above sync.STREAM_ABOVE: goes through the staging folder


# ----------------------------------------------------------------------------- releases


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def asset_bytes(name: str, size: int = 600) -> bytes:
    return (name.encode() * (size // max(len(name), 1) + 1))[:size]


ItemSpec = tuple[str, str, list[float], dict[str, bytes]]  # id, collection, bbox, assets


def publish(
    store: Store,
    items: list[ItemSpec],
    *,
    when: datetime,
    loose: dict[str, bytes] | None = None,
    title: str = "",
) -> str:
    """Write the assets as shared objects and publish a release whose items point at them.
    ``loose`` objects are in the manifest but referenced by no item."""
    catalog = create_catalog("sync-test", "sync test")
    shared: dict[str, ManifestEntry] = {}
    collections: dict[str, pystac.Collection] = {}
    for item_id, collection_id, bbox, assets in items:
        if collection_id not in collections:
            extent = pystac.Extent(
                pystac.SpatialExtent([[-180, -90, 180, 90]]),
                pystac.TemporalExtent([[None, None]]),
            )
            collections[collection_id] = pystac.Collection(collection_id, collection_id, extent)
        item = pystac.Item(
            item_id,
            {"type": "Point", "coordinates": [bbox[0], bbox[1]]},
            bbox,
            START,
            {"title": f"{item_id}{title}"},
        )
        for name, data in assets.items():
            key = f"raw/test/{item_id}/{name}"
            item.add_asset(name, pystac.Asset(ITEM_TO_ROOT + key))
            shared[key] = put(store, key, data)
        collections[collection_id].add_item(item)
    for collection in collections.values():
        catalog.add_child(collection)
    for key, data in (loose or {}).items():
        shared[key] = put(store, key, data)
    result = publish_release(store, draft_release(catalog, shared.values()), now=when)
    assert result.version is not None
    return result.version


def put(store: Store, key: str, data: bytes) -> ManifestEntry:
    if not store.exists(key) or store.sha256(key) != sha(data):
        store.write(key, data)
    return ManifestEntry(key=key, size=len(data), sha256=sha(data))


def basic_items() -> list[ItemSpec]:
    return [
        ("near", "lro", [0, 0, 10, 10], {"data.bin": asset_bytes("near")}),
        ("far", "lro", [100, -20, 120, 0], {"data.bin": asset_bytes("far")}),
        ("big", "kaguya", [-40, 30, -30, 40], {"cube.bin": random.Random(7).randbytes(BIG)}),
    ]


def manifest_of(store: Store) -> ReleaseManifest:
    current = read_current(store)
    assert current is not None
    return current[1]


def assert_whole(dest: Store, version: str) -> ReleaseManifest:
    """DEST's pointer names ``version`` and every object of its manifest is there, intact."""
    current = read_current(dest)
    assert current is not None
    pointer, manifest, _ = current
    assert pointer.version == version
    assert manifest.version == version
    for entry in manifest.objects:
        assert dest.sha256(entry.key) == entry.sha256, entry.key
    return manifest


def visible_keys(store: Store) -> set[str]:
    return {info.key for info in store.list() if not info.key.startswith(".lunarchive-sync/")}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def source(tmp_path: Path) -> Store:
    return open_store((tmp_path / "source").as_uri())


@pytest.fixture(params=["folder", pytest.param("s3", marks=pytest.mark.integration)])
def dest(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The mirror, on a local folder and on a SeaweedFS bucket prefix."""
    if request.param == "folder":
        return open_store((tmp_path / "mirror").as_uri())
    options: S3Options = request.getfixturevalue("s3_options")
    return open_store(request.getfixturevalue("s3_url"), s3=options)


@pytest.fixture
def folder_dest(tmp_path: Path) -> Store:
    return open_store((tmp_path / "mirror").as_uri())


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    return tmp_path / "staging"


class TreeServer:
    """A folder served over loopback HTTP with ``Range``, logging every request.

    ``faults[key]`` is a list of misbehaviours used up one per request: ``flip`` (one byte
    changed), ``truncate`` (the last byte missing), ``cut`` (the connection drops halfway).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self.faults: dict[str, list[str]] = {}
        self.lock = threading.Lock()
        handler = type("Handler", (_TreeHandler,), {"tree": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def requested(self) -> list[str]:
        return [key for key, _ in self.requests]


class _TreeHandler(BaseHTTPRequestHandler):
    tree: TreeServer

    def do_GET(self) -> None:
        key = unquote(urlparse(self.path).path).lstrip("/")
        byte_range = self.headers.get("Range")
        with self.tree.lock:
            self.tree.requests.append((key, byte_range))
            pending = self.tree.faults.get(key, [])
            fault = pending.pop(0) if pending else ""
        path = self.tree.root / key
        if not key or not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if byte_range:
            match = re.fullmatch(r"bytes=(\d+)-", byte_range)
            assert match is not None, byte_range
            start = int(match[1])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if fault == "flip":
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        elif fault == "truncate":
            body = body[:-1]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault == "cut":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        """Quiet: the test asserts on ``tree.requests``."""


@pytest.fixture
def served(source: Store) -> Iterator[TreeServer]:
    assert isinstance(source.url, str)
    root = Path(unquote(urlparse(source.url).path))
    root.mkdir(parents=True, exist_ok=True)
    server = TreeServer(root)
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()
    thread.join()


@pytest.fixture
def http_source(served: TreeServer) -> Iterator[HttpSource]:
    source = HttpSource(served.url, allow_local=True)
    yield source
    source.close()


class Crash(BaseException):
    """A simulated interruption (like a KeyboardInterrupt): not a per-object failure."""


class Faulty:
    """A source wrapper that serves wrong bytes, fails, or crashes, deterministically."""

    def __init__(
        self,
        inner: SyncSource,
        bad: dict[str, str] | None = None,
        *,
        crash_after: int | None = None,
        once: bool = False,
    ) -> None:
        self.inner = inner
        self.url = inner.url
        self.bad = dict(bad or {})
        self.crash_after = crash_after
        self.once = once
        self.objects_served = 0
        self.lock = threading.Lock()

    def _fault(self, key: str) -> str:
        with self.lock:
            if key == LATEST_KEY or key.endswith("/manifest.json"):
                return ""
            self.objects_served += 1
            if self.crash_after is not None and self.objects_served > self.crash_after:
                raise Crash(f"interrupted while fetching {key}")
            return self.bad.pop(key, "") if self.once else self.bad.get(key, "")

    def read(self, key: str, *, limit: int) -> bytes:
        fault = self._fault(key)
        if fault == "error":
            raise TransientError(f"{key}: simulated connection reset")
        data = self.inner.read(key, limit=limit)
        if fault == "flip":
            return bytes([data[0] ^ 0x01]) + data[1:]
        if fault == "truncate":
            return data[:-1]
        return data

    def fetch(self, key: str, part: Path, *, size: int) -> None:
        fault = self._fault(key)
        if fault == "error":
            raise TransientError(f"{key}: simulated connection reset")
        self.inner.fetch(key, part, size=size)
        if fault in ("flip", "truncate"):
            data = part.read_bytes()
            part.write_bytes(bytes([data[0] ^ 0x01]) + data[1:] if fault == "flip" else data[:-1])


# ----------------------------------------------------------------------------- tests


def test_store_to_mirror_is_whole_and_a_second_sync_moves_nothing(
    source: Store, dest: Store, staging: Path
) -> None:
    version = publish(source, basic_items(), when=START)
    expected = manifest_of(source)
    events: list[SyncProgress] = []

    first = sync_release(source, dest, staging=staging, progress=events.append)

    assert first.version == version
    assert first.complete and first.flipped and first.exit_code() == EXIT_OK
    assert first.objects_transferred == len(expected.objects)
    assert first.bytes_transferred == sum(e.size for e in expected.objects)
    assert first.failed == []
    assert assert_whole(dest, version).objects == expected.objects
    assert events[-1].objects_done == events[-1].objects_total == len(expected.objects)
    assert events[-1].bytes_done == first.bytes_transferred
    assert list(staging.glob("*")) == []  # nothing staged is left behind

    second = sync_release(source, dest, staging=staging)
    assert (second.objects_transferred, second.bytes_transferred) == (0, 0)
    assert second.objects_copied == 0
    assert second.objects_skipped == len(expected.objects)
    assert second.complete and not second.flipped and second.exit_code() == EXIT_OK
    assert_whole(dest, version)


@pytest.mark.integration
def test_s3_source_to_folder(
    s3_url: str, s3_options: S3Options, folder_dest: Store, staging: Path
) -> None:
    s3 = open_store(s3_url, s3=s3_options)
    version = publish(s3, basic_items(), when=START)
    report = sync_release(s3, folder_dest, staging=staging)
    assert report.complete and report.exit_code() == EXIT_OK
    assert assert_whole(folder_dest, version).objects == manifest_of(s3).objects
    again = sync_release(s3, folder_dest, staging=staging)
    assert again.bytes_transferred == 0


def test_http_to_folder_then_nothing_but_the_pointer_and_manifest(
    source: Store, served: TreeServer, http_source: HttpSource, folder_dest: Store, staging: Path
) -> None:
    version = publish(source, basic_items(), when=START)
    report = sync_release(http_source, folder_dest, staging=staging)
    assert report.complete and report.exit_code() == EXIT_OK
    assert assert_whole(folder_dest, version).objects == manifest_of(source).objects

    served.requests.clear()
    again = sync_release(http_source, folder_dest, staging=staging)
    assert (again.objects_transferred, again.bytes_transferred) == (0, 0)
    assert served.requested() == [LATEST_KEY, manifest_key(version)]


def test_a_changed_release_moves_only_the_changed_objects(
    source: Store, served: TreeServer, http_source: HttpSource, folder_dest: Store, staging: Path
) -> None:
    first = publish(source, basic_items(), when=START)
    old = manifest_of(source)
    sync_release(http_source, folder_dest, staging=staging)

    items = [*basic_items(), ("new", "lro", [1, 1, 2, 2], {"data.bin": asset_bytes("new")})]
    second = publish(source, items, when=START + timedelta(days=1))
    new = manifest_of(source)
    old_shas = {e.sha256 for e in old.objects}
    fetched = sorted(e.key for e in new.objects if e.sha256 not in old_shas)
    copied = sorted(e.key for e in new.objects if e.sha256 in old_shas and e not in old.objects)
    assert fetched and copied  # the test means something

    served.requests.clear()
    report = sync_release(http_source, folder_dest, staging=staging)

    assert report.complete and report.flipped
    assert report.objects_transferred == len(fetched)
    assert report.bytes_transferred == sum(e.size for e in new.objects if e.key in fetched)
    assert report.objects_copied == len(copied)
    assert sorted(served.requested()) == sorted([LATEST_KEY, manifest_key(second), *fetched])
    assert_whole(folder_dest, second)
    assert read_current(folder_dest) is not None
    assert folder_dest.exists(manifest_key(first))  # keep=2: the previous release stays


@pytest.mark.parametrize("fault", ["flip", "truncate", "error"])
def test_a_corrupted_object_is_never_placed_and_the_pointer_stays(
    source: Store, dest: Store, staging: Path, fault: str
) -> None:
    """R6: wrong bytes are detected against the manifest, never placed, retried, and
    reported by key; the mirror keeps serving its previous release whole."""
    first = publish(source, basic_items(), when=START)
    sync_release(source, dest, staging=staging)
    items = basic_items()
    items.append(("bad", "lro", [0, 0, 1, 1], {"data.bin": asset_bytes("bad")}))
    items.append(("huge", "lro", [0, 0, 1, 1], {"cube.bin": os.urandom(BIG)}))
    second = publish(source, items, when=START + timedelta(days=1))
    bad = {"raw/test/bad/data.bin": fault, "raw/test/huge/cube.bin": fault}
    pointer_before = dest.read(LATEST_KEY)

    report = sync_release(Faulty(StoreSource(source), bad), dest, staging=staging, retry_delay=0)

    assert sorted(f.key for f in report.failed) == sorted(bad)
    assert all(f.key in f.reason for f in report.failed)  # the error names the key
    assert not report.complete and not report.flipped
    assert report.exit_code() == EXIT_INCOMPLETE
    assert dest.read(LATEST_KEY) == pointer_before
    assert not dest.exists("raw/test/bad/data.bin")
    assert not dest.exists("raw/test/huge/cube.bin")
    assert not dest.exists(manifest_key(second))
    assert_whole(dest, first)

    retried = sync_release(source, dest, staging=staging)  # the source is healthy again
    assert retried.complete and retried.exit_code() == EXIT_OK
    assert retried.objects_transferred == 2  # only the two that failed
    assert_whole(dest, second)


def test_a_pointer_moved_by_another_writer_is_not_overwritten(
    source: Store, dest: Store, staging: Path
) -> None:
    publish(source, basic_items(), when=START)
    sync_release(source, dest, staging=staging)
    second = publish(source, [*basic_items()[:1]], when=START + timedelta(days=1))
    swap = dest.swap

    def racing_swap(key: str, data: bytes, *, expected_tag: str | None) -> Any:
        dest.write(LATEST_KEY, b'{"moved": "by someone else"}')
        return swap(key, data, expected_tag=expected_tag)

    dest.swap = racing_swap  # type: ignore[method-assign]
    report = sync_release(source, dest, staging=staging)
    dest.swap = swap  # type: ignore[method-assign]
    assert [f.key for f in report.failed] == [LATEST_KEY]
    assert not report.complete and report.exit_code() == EXIT_INCOMPLETE
    assert dest.read(LATEST_KEY) == b'{"moved": "by someone else"}'
    assert dest.exists(manifest_key(second))  # the release is there, unreferenced


def test_a_one_off_corruption_is_retried_within_the_sync(
    source: Store, folder_dest: Store, staging: Path
) -> None:
    version = publish(source, basic_items(), when=START)
    bad = {"raw/test/near/data.bin": "flip", "raw/test/big/cube.bin": "truncate"}
    flaky = Faulty(StoreSource(source), bad, once=True)
    report = sync_release(flaky, folder_dest, staging=staging, retry_delay=0)
    assert report.failed == [] and report.complete
    assert flaky.bad == {}  # both faults were served, and both objects re-fetched
    assert_whole(folder_dest, version)


def test_corrupted_bytes_over_http_are_refetched(
    source: Store, served: TreeServer, http_source: HttpSource, folder_dest: Store, staging: Path
) -> None:
    version = publish(source, basic_items(), when=START)
    served.faults = {"raw/test/far/data.bin": ["flip"], "raw/test/big/cube.bin": ["truncate"]}
    report = sync_release(http_source, folder_dest, staging=staging, retry_delay=0)
    assert report.failed == [] and report.complete
    assert served.requested().count("raw/test/far/data.bin") == 2
    assert_whole(folder_dest, version)


def test_an_interrupted_sync_resumes_where_it_stopped(
    source: Store, dest: Store, staging: Path
) -> None:
    loose = {f"tables/t/{n:03}.bin": asset_bytes(f"loose-{n}") for n in range(30)}
    version = publish(source, basic_items(), when=START, loose=loose)
    total = len(manifest_of(source).objects)
    crashing = Faulty(StoreSource(source), crash_after=12)

    with pytest.raises(Crash):
        sync_release(crashing, dest, staging=staging, concurrency=1)
    assert read_current(dest) is None  # nothing is published in the mirror yet
    assert dest.exists(STATE_KEY)  # but what was placed is recorded

    resumed = sync_release(source, dest, staging=staging)
    assert resumed.objects_transferred == total - 12
    assert resumed.objects_skipped == 12
    assert resumed.complete
    assert_whole(dest, version)


def test_a_partial_http_download_resumes_with_range(
    source: Store, served: TreeServer, http_source: HttpSource, folder_dest: Store, staging: Path
) -> None:
    version = publish(source, basic_items(), when=START)
    key = "raw/test/big/cube.bin"
    served.faults = {key: ["cut"]}

    broken = sync_release(http_source, folder_dest, staging=staging, retries=1)
    assert [f.key for f in broken.failed] == [key]
    assert read_current(folder_dest) is None
    assert not folder_dest.exists(key)
    partial = list(staging.glob("*.part"))
    assert len(partial) == 1
    have = partial[0].stat().st_size
    assert 0 < have < BIG

    served.requests.clear()
    resumed = sync_release(http_source, folder_dest, staging=staging)
    assert resumed.complete
    assert (key, f"bytes={have}-") in served.requests
    assert [k for k, _ in served.requests if k == key] == [key]  # one ranged request
    assert_whole(folder_dest, version)
    assert list(staging.glob("*.part")) == []


class CutHalfway(StoreSource):
    """An S3 download that dies halfway, leaving its partial file in the staging folder."""

    def fetch(self, key: str, part: Path, *, size: int) -> None:
        super().fetch(key, part, size=size)
        with part.open("r+b") as handle:
            handle.truncate(size // 2)
        raise TransientError(f"{key}: simulated connection reset halfway")


def test_a_partial_s3_download_resumes_from_its_length(
    s3_url: str, s3_options: S3Options, folder_dest: Store, staging: Path
) -> None:
    s3 = open_store(s3_url, s3=s3_options)
    version = publish(s3, basic_items(), when=START)
    key = "raw/test/big/cube.bin"
    whole = s3.read(key)

    cut = sync_release(CutHalfway(s3), folder_dest, staging=staging, retries=1)
    assert [f.key for f in cut.failed] == [key]
    (part,) = staging.glob("*.part")
    assert part.read_bytes() == whole[: BIG // 2]
    # a resumed fetch keeps the prefix it finds: a wrong one is caught by the sha256 check,
    # the object is not placed, and the partial file is dropped so the next attempt starts over
    part.write_bytes(b"\0" * (BIG // 2))
    refused = sync_release(s3, folder_dest, staging=staging, retries=1)
    assert [f.key for f in refused.failed] == [key]
    assert not folder_dest.exists(key) and read_current(folder_dest) is None
    assert list(staging.glob("*.part")) == []

    sync_release(CutHalfway(s3), folder_dest, staging=staging, retries=1)
    resumed = sync_release(s3, folder_dest, staging=staging, retries=1)
    assert resumed.complete and resumed.objects_transferred == 1
    assert folder_dest.read(key) == whole
    assert_whole(folder_dest, version)
    assert list(staging.glob("*.part")) == []


def test_pruning_keeps_objects_that_kept_releases_share(
    source: Store, dest: Store, staging: Path
) -> None:
    def items(own: str) -> list[ItemSpec]:
        return [
            ("shared", "lro", [0, 0, 1, 1], {"data.bin": asset_bytes("shared by all")}),
            (own, "lro", [0, 0, 1, 1], {"data.bin": asset_bytes(own)}),
        ]

    versions = []
    for day, own in enumerate(["one", "two", "three"]):
        versions.append(publish(source, items(own), when=START + timedelta(days=day)))
        report = sync_release(source, dest, staging=staging, keep=2)
        assert report.complete

    assert report.objects_pruned > 0
    held = visible_keys(dest)
    assert "raw/test/shared/data.bin" in held
    assert "raw/test/one/data.bin" not in held
    assert {"raw/test/two/data.bin", "raw/test/three/data.bin"} <= held
    assert not any(key.startswith(release_prefix(versions[0])) for key in held)
    second = ReleaseManifest.model_validate_json(dest.read(manifest_key(versions[1])))
    for entry in second.objects:  # the previous release is still whole
        assert dest.sha256(entry.key) == entry.sha256, entry.key
    assert_whole(dest, versions[2])


def test_many_small_objects_with_injected_faults(source: Store, dest: Store, staging: Path) -> None:
    """R19 (sync part): 2000 objects, 1 % of them faulty in the first run; the second run
    completes by moving exactly those, the third moves nothing."""
    loose = {
        f"tables/bulk/{n:05}.bin": asset_bytes(f"object {n} ", 200 + n % 300) for n in range(2000)
    }
    version = publish(source, basic_items()[:2], when=START, loose=loose)
    total = len(manifest_of(source).objects)
    chooser = random.Random(8)
    faulty_keys = chooser.sample(sorted(loose), 20)
    bad = {key: ("flip", "truncate", "error")[n % 3] for n, key in enumerate(faulty_keys)}

    first = sync_release(
        Faulty(StoreSource(source), bad), dest, staging=staging, concurrency=16, retry_delay=0
    )
    assert sorted(f.key for f in first.failed) == sorted(faulty_keys)
    assert first.objects_transferred == total - 20
    assert read_current(dest) is None
    assert first.exit_code() == EXIT_INCOMPLETE

    second = sync_release(source, dest, staging=staging, concurrency=16)
    assert second.objects_transferred == 20
    assert second.bytes_transferred == sum(len(loose[key]) for key in faulty_keys)
    assert second.complete and second.exit_code() == EXIT_OK
    assert_whole(dest, version)

    third = sync_release(source, dest, staging=staging, concurrency=16)
    assert (third.objects_transferred, third.bytes_transferred, third.objects_copied) == (0, 0, 0)
    assert third.complete


def test_verify_repairs_damaged_objects(source: Store, dest: Store, staging: Path) -> None:
    version = publish(source, basic_items(), when=START)
    sync_release(source, dest, staging=staging)
    dest.write("raw/test/near/data.bin", b"rotten bytes")
    dest.delete("raw/test/big/cube.bin")

    unrepaired = verify_mirror(dest)
    assert sorted(unrepaired.damaged) == ["raw/test/big/cube.bin", "raw/test/near/data.bin"]
    assert unrepaired.exit_code() == EXIT_INCOMPLETE

    audit = verify_mirror(dest, source, staging=staging)
    assert audit.objects_checked == len(manifest_of(source).objects)
    assert sorted(audit.damaged) == ["raw/test/big/cube.bin", "raw/test/near/data.bin"]
    assert sorted(audit.repaired) == sorted(audit.damaged)
    assert audit.failed == [] and audit.exit_code() == EXIT_OK
    assert_whole(dest, version)
    assert verify_mirror(dest).damaged == []


def test_filter_by_collection_mirrors_the_catalog_and_selected_assets(
    source: Store, dest: Store, staging: Path
) -> None:
    loose = {"tables/lonely.bin": b"referenced by no item"}
    version = publish(source, basic_items(), when=START, loose=loose)
    full = manifest_of(source)

    preview = sync_release(source, dest, staging=staging, collections=["lro"], dry_run=True)
    assert visible_keys(dest) == set()
    report = sync_release(source, dest, staging=staging, collections=["lro"])

    assert report.complete and report.objects_skipped == 0
    held = visible_keys(dest)
    own = {e.key for e in full.objects if e.key.startswith(release_prefix(version))}
    assert own <= held  # the whole catalog: search over the mirror works
    assert {"raw/test/near/data.bin", "raw/test/far/data.bin", "tables/lonely.bin"} <= held
    assert "raw/test/big/cube.bin" not in held  # kaguya's asset is left out
    mirrored = assert_whole(dest, version)  # DEST's manifest lists exactly what it holds
    assert {e.key for e in mirrored.objects} == held - {LATEST_KEY, manifest_key(version)}
    assert preview.objects_transferred == report.objects_transferred
    assert preview.bytes_transferred == report.bytes_transferred

    again = sync_release(source, dest, staging=staging, collections=["lro"])
    assert (again.objects_transferred, again.bytes_transferred) == (0, 0)

    widened = sync_release(source, dest, staging=staging)  # no filter: the rest arrives
    assert widened.objects_transferred == 1
    assert widened.bytes_transferred == BIG
    assert_whole(dest, version)


def test_filter_by_a_bbox_across_the_seam(source: Store, folder_dest: Store, staging: Path) -> None:
    items: list[ItemSpec] = [
        ("east-edge", "lro", [172, -5, 179, 5], {"a.bin": asset_bytes("east")}),
        ("west-edge", "lro", [-179, 0, -171, 8], {"a.bin": asset_bytes("west")}),
        ("astride", "lro", [178, -2, -178, 2], {"a.bin": asset_bytes("astride")}),
        ("centre", "lro", [0, 0, 10, 10], {"a.bin": asset_bytes("centre")}),
        ("too-north", "lro", [175, 40, 176, 50], {"a.bin": asset_bytes("north")}),
    ]
    version = publish(source, items, when=START)
    report = sync_release(source, folder_dest, staging=staging, bbox=parse_bbox("170,-10,-170,10"))
    assert report.complete
    assets = {k for k in visible_keys(folder_dest) if k.startswith("raw/")}
    assert assets == {
        "raw/test/east-edge/a.bin",
        "raw/test/west-edge/a.bin",
        "raw/test/astride/a.bin",
    }
    assert_whole(folder_dest, version)


def test_bbox_geometry_and_parsing() -> None:
    seam = parse_bbox("170,-10,-170,10")
    assert bbox_intersects([175, 0, 176, 1], seam)
    assert bbox_intersects([-175, 0, -174, 1], seam)
    assert not bbox_intersects([160, 0, 170, 1], (-150.0, -5.0, 150.0, 5.0))
    assert not bbox_intersects([0, 0, 10, 10], seam)
    assert bbox_intersects([190, 0, 200, 1], seam)  # 0…360 longitudes wrap
    assert bbox_intersects([0, 0, -5, 1, 1, 5], (0.5, 0.5, 2.0, 2.0))  # 3D bbox
    assert bbox_intersects([10, 0, 20, 1], (-180.0, -90.0, 180.0, 90.0))
    for text in ["1,2,3", "a,b,c,d", "0,50,10,40", "0,-95,10,0"]:
        with pytest.raises(InvalidFilter):
            parse_bbox(text)


def test_a_dry_run_writes_nothing(source: Store, dest: Store, staging: Path) -> None:
    publish(source, basic_items(), when=START)
    expected = manifest_of(source)
    report = sync_release(source, dest, staging=staging, dry_run=True)
    assert report.dry_run and report.exit_code() == EXIT_OK
    assert report.objects_transferred == len(expected.objects)
    assert report.bytes_transferred == sum(e.size for e in expected.objects)
    assert list(dest.list()) == []
    assert not staging.exists()


def test_each_synced_snapshot_is_one_complete_release(
    source: Store, folder_dest: Store, staging: Path
) -> None:
    """R18: a syncer loops while a publisher flips versions."""
    publish(source, basic_items(), when=START)
    published: list[str] = []
    done = threading.Event()

    def publisher() -> None:
        try:
            for day in range(1, 7):
                items = [
                    *basic_items(),
                    (f"day{day}", "lro", [0, 0, 1, 1], {"a.bin": asset_bytes(f"day {day}")}),
                ]
                published.append(publish(source, items, when=START + timedelta(days=day)))
        finally:
            done.set()

    thread = threading.Thread(target=publisher)
    thread.start()
    snapshots = []
    while not done.is_set() or not snapshots or snapshots[-1] != published[-1]:
        report = sync_release(source, folder_dest, staging=staging, concurrency=4)
        assert report.complete, report.summary()
        assert_whole(folder_dest, report.version)
        snapshots.append(report.version)
    thread.join()
    assert snapshots[-1] == published[-1]


def test_source_rules_hold_for_http() -> None:
    with pytest.raises(SourceRefused):
        HttpSource("http://127.0.0.1:9/lunarchive")  # loopback without allow_local
    with pytest.raises(SourceRefused):
        HttpSource("file:///etc")

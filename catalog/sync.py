"""Mirror the current release of a store into another store: incremental, verified, resumable.

How a sync goes (DESIGN.md's publish protocol, seen from the reader's side):

1. read the source's ``releases/latest.json``, then the manifest it names;
2. diff the manifest against DEST's own record of what it holds (``.lunarchive-sync/state.json``
   in DEST: key → sha256 and size of every object a sync placed there and verified), never a
   listing or a re-hash, so a sync with nothing new reads the manifest and moves no byte;
3. transfer what is new or changed, in parallel. Every object is checked against the manifest's
   size and sha256 *before* it is placed: small objects in memory, large ones in a local
   staging folder (where an interrupted HTTP download is resumed with ``Range``). A folder
   places by temp file + rename, S3 by one PUT of verified bytes, so a wrong object is never
   visible. An object that DEST already holds under another key (release files that did not
   change between versions) is copied inside DEST instead of fetched again;
4. write the release's manifest into DEST, then flip DEST's pointer with the store's
   compare-and-swap: a reader of DEST always sees one complete release (RELIABILITY.md R18);
   if any object failed, the pointer is not flipped (R6);
5. prune what only older releases needed, keeping the newest ``keep`` releases whole.

The record is saved periodically and when the run ends (also on an interrupt), so an
interrupted sync continues where it stopped. Filters (``collections``, ``bbox``) select the
*assets*: a filtered mirror holds the release's whole catalog (catalog, collections, every
item's JSON, items.parquet), so search over it works, but only the shared objects (cubes, raw
files, tables) that the selected items and collections reference, plus shared objects that no
item references. DEST's manifest then lists exactly the objects DEST holds, so DEST stays a
valid store that ``verify_mirror`` can audit.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

from lunarchive.catalog._http import HttpTree
from lunarchive.catalog.layout import LATEST_KEY, manifest_key, release_prefix
from lunarchive.catalog.store import S3Options, Store, check_key, json_bytes, open_store
from lunarchive.schemas.errors import (
    ConfigurationError,
    InvalidFilter,
    InvalidKey,
    StoreConflict,
    TransientError,
)
from lunarchive.schemas.release import ManifestEntry, ReleaseManifest, ReleasePointer

__all__ = [
    "EXIT_INCOMPLETE",
    "EXIT_OK",
    "STATE_KEY",
    "FailedObject",
    "HttpSource",
    "StoreSource",
    "SyncProgress",
    "SyncReport",
    "SyncSource",
    "VerifyReport",
    "bbox_intersects",
    "open_source",
    "parse_bbox",
    "sync_release",
    "verify_mirror",
]

STATE_KEY = ".lunarchive-sync/state.json"
EXIT_OK = 0
EXIT_INCOMPLETE = 1  # some object failed, or the pointer could not be flipped

STREAM_ABOVE = 1024 * 1024  # larger objects go through a staging file (resumable)
_MAX_POINTER_BYTES = 64 * 1024
_MAX_MANIFEST_BYTES = 512 * 1024 * 1024
_MAX_CATALOG_DOC_BYTES = 64 * 1024 * 1024
_CHECKPOINT_SECONDS = 5.0
_CHECKPOINT_OBJECTS = 2000
_RESERVED = (".lunarchive-sync/", ".lunarchive-probe/")

Bbox = tuple[float, float, float, float]


# --------------------------------------------------------------------------- sources


@runtime_checkable
class SyncSource(Protocol):
    """Where a release is read from: a store, or a store tree served over HTTP(S)."""

    url: str

    def read(self, key: str, *, limit: int) -> bytes:
        """The whole object (``KeyError`` if missing); refuses one longer than ``limit``."""
        ...

    def fetch(self, key: str, part: Path, *, size: int) -> None:
        """Bring ``part`` up to the object's bytes, resuming from its length where possible."""
        ...


class StoreSource:
    """A folder or S3 store as a sync source; a large object resumes from its partial file
    (on S3 with a ranged GET)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.url = store.url

    def read(self, key: str, *, limit: int) -> bytes:
        data = self.store.read(key)
        if len(data) > limit:
            raise TransientError(f"{self.url}/{key}: longer than the {limit} bytes expected")
        return data

    def fetch(self, key: str, part: Path, *, size: int) -> None:
        self.store.fetch_into(key, part, size=size)


class HttpSource:
    """A store tree published by static HTTP(S) hosting, e.g. ``https://host/lunarchive``."""

    def __init__(self, base_url: str, *, allow_local: bool = False) -> None:
        self.tree = HttpTree(base_url, allow_local=allow_local)
        self.url = self.tree.base_url.rstrip("/")

    def read(self, key: str, *, limit: int) -> bytes:
        return self.tree.read(key, limit=limit)

    def fetch(self, key: str, part: Path, *, size: int) -> None:
        self.tree.fetch(key, part, size=size)

    def close(self) -> None:
        self.tree.close()


def open_source(url: str, *, s3: S3Options | None = None, allow_local: bool = False) -> SyncSource:
    """The source for a URL: ``http(s)://`` (static hosting), else a store URL."""
    if urlparse(url).scheme in ("http", "https"):
        return HttpSource(url, allow_local=allow_local)
    return StoreSource(open_store(url, s3=s3))


# --------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class FailedObject:
    key: str
    reason: str


@dataclass(frozen=True)
class SyncProgress:
    """Cumulative counts after each settled object, and the totals planned."""

    objects_done: int
    bytes_done: int
    objects_total: int
    bytes_total: int


@dataclass
class SyncReport:
    """What one sync did (or, with ``dry_run``, would do)."""

    source: str
    dest: str
    version: str = ""
    dry_run: bool = False
    objects_transferred: int = 0  # fetched from the source (dry run: would be)
    bytes_transferred: int = 0
    objects_copied: int = 0  # already in DEST under another key: copied inside DEST
    bytes_copied: int = 0
    objects_skipped: int = 0  # already held, verified when placed
    objects_pruned: int = 0
    failed: list[FailedObject] = field(default_factory=list)
    flipped: bool = False  # DEST's pointer moved to ``version`` in this run
    complete: bool = False  # DEST's pointer names ``version`` and all its objects are there

    def exit_code(self) -> int:
        """0 when DEST holds the whole release (or a dry run planned cleanly), else 1."""
        if self.failed:
            return EXIT_INCOMPLETE
        return EXIT_OK if self.dry_run or self.complete else EXIT_INCOMPLETE

    def summary(self) -> str:
        verb = "would transfer" if self.dry_run else "transferred"
        text = (
            f"release {self.version}: {verb} {self.objects_transferred} objects "
            f"({self.bytes_transferred} bytes), copied {self.objects_copied} inside the "
            f"mirror, {self.objects_skipped} already there, pruned {self.objects_pruned}"
        )
        if self.failed:
            keys = ", ".join(f.key for f in self.failed[:5])
            more = "…" if len(self.failed) > 5 else ""
            text += f"; {len(self.failed)} FAILED ({keys}{more}): the pointer was not flipped"
        return text


@dataclass
class VerifyReport:
    """A full re-hash audit of a mirror."""

    dest: str
    objects_checked: int = 0
    bytes_checked: int = 0
    damaged: list[str] = field(default_factory=list)  # missing, or wrong size or sha256
    repaired: list[str] = field(default_factory=list)
    failed: list[FailedObject] = field(default_factory=list)  # damaged and not repaired

    def exit_code(self) -> int:
        return EXIT_INCOMPLETE if self.failed else EXIT_OK


# --------------------------------------------------------------------------- DEST's record


@dataclass
class _State:
    """DEST's record: every object a sync placed and verified, and the releases it holds."""

    objects: dict[str, tuple[str, int]] = field(default_factory=dict)  # key -> (sha256, size)
    releases: list[str] = field(default_factory=list)  # complete releases, oldest first
    filters: dict[str, dict[str, Any]] = field(default_factory=dict)  # version -> filter

    def holds(self, entry: ManifestEntry) -> bool:
        return self.objects.get(entry.key) == (entry.sha256, entry.size)

    def to_bytes(self) -> bytes:
        data = {
            "format": 1,
            "releases": self.releases,
            "filters": self.filters,
            "objects": {key: list(value) for key, value in sorted(self.objects.items())},
        }
        return (json.dumps(data, separators=(",", ":")) + "\n").encode()


def _load_state(dest: Store) -> _State:
    """The record; without one (a mirror made by hand, a lost record), DEST's current
    release counts as held if its manifest is readable (``verify_mirror`` audits it)."""
    try:
        data = json.loads(dest.read(STATE_KEY))
        return _State(
            objects={k: (str(v[0]), int(v[1])) for k, v in data["objects"].items()},
            releases=[str(v) for v in data["releases"]],
            filters=dict(data.get("filters", {})),
        )
    except KeyError:
        pass  # no record yet
    except (ValueError, TypeError, AttributeError, IndexError):
        pass  # a damaged record: start again from DEST's current release
    state = _State()
    tagged = dest.read_tagged(LATEST_KEY)
    if tagged is None:
        return state
    pointer = ReleasePointer.model_validate_json(tagged[0])
    manifest_bytes = dest.read(pointer.manifest)
    manifest = ReleaseManifest.model_validate_json(manifest_bytes)
    state.objects = {e.key: (e.sha256, e.size) for e in manifest.objects}
    state.objects[pointer.manifest] = (_sha(manifest_bytes), len(manifest_bytes))
    state.releases = [pointer.version]
    return state


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- filters


def parse_bbox(text: str) -> Bbox:
    """``"west,south,east,north"`` in lunar degrees; west > east crosses the ±180° seam."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise InvalidFilter(f"bbox {text!r}: four numbers west,south,east,north") from None
    if len(values) != 4:
        raise InvalidFilter(f"bbox {text!r}: four numbers west,south,east,north")
    return _checked_bbox(values)


def _checked_bbox(values: Sequence[float]) -> Bbox:
    west, south, east, north = (float(v) for v in values)
    if not (-90 <= south <= north <= 90):
        raise InvalidFilter(f"bbox {list(values)}: latitudes must satisfy -90 ≤ south ≤ north ≤ 90")
    if not (-180 <= west <= 360 and -180 <= east <= 360):
        raise InvalidFilter(f"bbox {list(values)}: longitudes must lie in -180…360")
    return west, south, east, north


def _wrap(lon: float) -> float:
    return ((lon + 180.0) % 360.0) - 180.0


def _lon_spans(west: float, east: float) -> list[tuple[float, float]]:
    """A longitude range as spans within [-180, 180]; west > east crosses the seam."""
    if west <= east and east - west >= 360:
        return [(-180.0, 180.0)]
    w, e = _wrap(west), _wrap(east)
    if e == -180.0 and east > west:
        e = 180.0
    return [(w, e)] if w <= e else [(w, 180.0), (-180.0, e)]


def bbox_intersects(item: Sequence[float], box: Bbox) -> bool:
    """Whether an item's bbox (2D or 3D, either may cross the seam) meets a lunar box."""
    if len(item) == 6:
        item = (item[0], item[1], item[3], item[4])
    if len(item) != 4:
        return False
    west, south, east, north = (float(v) for v in item)
    if north < box[1] or south > box[3]:
        return False
    return any(
        a0 <= b1 and b0 <= a1
        for a0, a1 in _lon_spans(west, east)
        for b0, b1 in _lon_spans(box[0], box[2])
    )


@dataclass(frozen=True)
class _Filter:
    collections: frozenset[str] | None
    bbox: Bbox | None

    @property
    def active(self) -> bool:
        return self.collections is not None or self.bbox is not None

    def describe(self) -> dict[str, Any]:
        return {
            "collections": sorted(self.collections) if self.collections is not None else None,
            "bbox": list(self.bbox) if self.bbox is not None else None,
        }

    def selects_item(self, doc: Mapping[str, Any], collection: str) -> bool:
        if self.collections is not None and collection not in self.collections:
            return False
        if self.bbox is not None:
            bbox = doc.get("bbox")
            return isinstance(bbox, list) and bbox_intersects(bbox, self.bbox)
        return True


def _catalog_doc_kind(key: str, version: str) -> str:
    """``item``, ``collection`` or ``""`` for a key of a release's static tree."""
    parts = key.removeprefix(release_prefix(version)).split("/")
    if len(parts) == 3 and parts[2] == f"{parts[1]}.json":
        return "item"
    if len(parts) == 2 and parts[1] == "collection.json":
        return "collection"
    return ""


def _references(doc: Mapping[str, Any], doc_key: str) -> set[str]:
    """Store keys (or key prefixes, e.g. a Zarr folder) that a STAC document points to."""
    hrefs = [a.get("href") for a in dict(doc.get("assets") or {}).values()]
    hrefs += [
        link.get("href") for link in doc.get("links") or [] if link.get("rel") == "derived_from"
    ]
    found: set[str] = set()
    for href in hrefs:
        if not isinstance(href, str) or urlparse(href).scheme or href.startswith("/"):
            continue
        key = posixpath.normpath(posixpath.join(posixpath.dirname(doc_key), href))
        if not key.startswith("../") and key not in (".", ".."):
            found.add(key.rstrip("/"))
    return found


def _referenced(key: str, refs: set[str]) -> bool:
    """``key`` is a referenced key, or lies under a referenced prefix."""
    if key in refs:
        return True
    cut = key.find("/")
    while cut != -1:
        if key[:cut] in refs:
            return True
        cut = key.find("/", cut + 1)
    return False


def _select(
    manifest: ReleaseManifest,
    chosen: _Filter,
    read_doc: Callable[[ManifestEntry], bytes],
    pool: ThreadPoolExecutor,
) -> list[ManifestEntry]:
    """The release's own files, plus the shared objects the filter selects."""
    own_prefix = release_prefix(manifest.version)
    own = [e for e in manifest.objects if e.key.startswith(own_prefix)]
    docs = [e for e in own if _catalog_doc_kind(e.key, manifest.version)]
    every: set[str] = set()
    selected: set[str] = set()
    for entry, raw in zip(docs, pool.map(read_doc, docs), strict=True):
        doc = json.loads(raw)
        refs = _references(doc, entry.key)
        every |= refs
        collection_dir = entry.key.removeprefix(own_prefix).split("/")[0]
        if _catalog_doc_kind(entry.key, manifest.version) == "item":
            take = chosen.selects_item(doc, str(doc.get("collection") or collection_dir))
        else:
            take = chosen.collections is None or str(doc.get("id")) in chosen.collections
        if take:
            selected |= refs
    shared = [
        e
        for e in manifest.objects
        if not e.key.startswith(own_prefix)
        and (_referenced(e.key, selected) or not _referenced(e.key, every))
    ]
    return own + shared


# --------------------------------------------------------------------------- transfer


@dataclass(frozen=True)
class _Outcome:
    entry: ManifestEntry
    how: str  # "fetched", "copied" or "failed"
    reason: str = ""


class _Mirror:
    """The transfer machinery of one run: source, DEST, record, staging, counters."""

    def __init__(
        self,
        source: SyncSource,
        dest: Store,
        state: _State,
        report: SyncReport,
        *,
        staging: Path,
        retries: int,
        retry_delay: float,
        progress: Callable[[SyncProgress], None] | None,
    ) -> None:
        self.source = source
        self.dest = dest
        self.state = state
        self.report = report
        self.staging = staging
        self.retries = retries
        self.retry_delay = retry_delay
        self.progress = progress
        self._saved_at = time.monotonic()
        self._saved = state.to_bytes()  # what DEST has (or needs no copy of)
        self._unsaved = 0
        self._lock = threading.Lock()
        self._done = (0, 0)  # objects, bytes settled (cumulative over this run's batches)
        self._total = (0, 0)

    # -- planning

    def plan(self, entries: Iterable[ManifestEntry]) -> tuple[list[ManifestEntry], int]:
        """The entries DEST does not hold yet (in manifest order), and how many it holds."""
        todo, held, seen = [], 0, set()
        for entry in entries:
            if entry.key in seen:
                continue
            seen.add(entry.key)
            if self.state.holds(entry):
                held += 1
            else:
                todo.append(entry)
        return todo, held

    def copy_source(self) -> dict[str, str]:
        """sha256 -> a key DEST holds with those bytes (to copy instead of fetch)."""
        return {sha: key for key, (sha, _size) in self.state.objects.items()}

    # -- running

    def run(self, todo: Sequence[ManifestEntry], pool: ThreadPoolExecutor) -> None:
        """Place every entry of ``todo``; record each as it settles."""
        local = self.copy_source()
        self._total = (self._total[0] + len(todo), self._total[1] + sum(e.size for e in todo))
        self._tell()
        futures: list[Future[_Outcome]] = [
            pool.submit(self._place, entry, local.get(entry.sha256)) for entry in todo
        ]
        settled: set[Future[_Outcome]] = set()
        try:
            for future in as_completed(futures):
                outcome = future.result()
                self._settle(outcome)
                settled.add(future)
                self._done = (self._done[0] + 1, self._done[1] + outcome.entry.size)
                self._tell()
        except BaseException:
            self._record_finished(futures, settled)
            raise

    def _record_finished(
        self, futures: list[Future[_Outcome]], settled: set[Future[_Outcome]]
    ) -> None:
        """On an interrupt: stop what has not started, and record what was placed, so the
        next run does not fetch it again."""
        for future in futures:
            future.cancel()
        wait(futures)
        for future in futures:
            if future in settled or future.cancelled() or future.exception() is not None:
                continue
            outcome = future.result()
            if outcome.how != "failed":
                self._settle(outcome)

    def _tell(self) -> None:
        if self.progress is not None:
            self.progress(SyncProgress(*self._done, *self._total))

    def _settle(self, outcome: _Outcome) -> None:
        entry = outcome.entry
        if outcome.how == "failed":
            self.report.failed.append(FailedObject(entry.key, outcome.reason))
            return
        self.state.objects[entry.key] = (entry.sha256, entry.size)
        if outcome.how == "copied":
            self.report.objects_copied += 1
            self.report.bytes_copied += entry.size
        else:
            self.report.objects_transferred += 1
            self.report.bytes_transferred += entry.size
        self._unsaved += 1
        now = time.monotonic()
        if self._unsaved >= _CHECKPOINT_OBJECTS or now - self._saved_at >= _CHECKPOINT_SECONDS:
            self.save()

    def save(self) -> None:
        """Write the record to DEST (a checkpoint: a crash loses at most the last few)."""
        with self._lock:
            data = self.state.to_bytes()
            if data != self._saved:  # a sync with nothing new writes nothing
                self.dest.write(STATE_KEY, data)
                self._saved = data
            self._saved_at = time.monotonic()
            self._unsaved = 0

    def _place(self, entry: ManifestEntry, local_key: str | None) -> _Outcome:
        """One object, verified then placed: copied inside DEST if it holds the bytes,
        else fetched with bounded retries. Any failure becomes a reported outcome: one bad
        object must not stop the others, and it keeps the pointer from flipping."""
        if local_key is not None and local_key != entry.key:
            try:
                self._verified_put(entry, self._from_dest(entry, local_key))
                return _Outcome(entry, "copied")
            except Exception:  # noqa: BLE001 - a damaged local copy: fetch from the source
                pass
        reason = ""
        for attempt in range(self.retries):
            try:
                self._verified_put(entry, self._from_source(entry))
                return _Outcome(entry, "fetched")
            except Exception as exc:  # noqa: BLE001 - reported per object, see docstring
                reason = f"{type(exc).__name__}: {exc}"
                if attempt + 1 < self.retries and self.retry_delay:
                    time.sleep(self.retry_delay * 2**attempt)
        return _Outcome(entry, "failed", reason)

    def _from_source(self, entry: ManifestEntry) -> bytes | Path:
        if entry.size < STREAM_ABOVE:
            return self.source.read(entry.key, limit=entry.size)
        self.staging.mkdir(parents=True, exist_ok=True)
        part = self.staging / _staging_name(entry, "part")
        self.source.fetch(entry.key, part, size=entry.size)
        return part

    def _from_dest(self, entry: ManifestEntry, key: str) -> bytes | Path:
        if entry.size < STREAM_ABOVE:
            return self.dest.read(key)
        self.staging.mkdir(parents=True, exist_ok=True)
        return self.dest.download(key, self.staging / _staging_name(entry, "copy"))

    def _verified_put(self, entry: ManifestEntry, data: bytes | Path) -> None:
        """Check size and sha256 against the manifest, and only then place the object."""
        try:
            if isinstance(data, Path):
                size, sha = data.stat().st_size, _sha_file(data)
            else:
                size, sha = len(data), _sha(data)
            if (size, sha) != (entry.size, entry.sha256):
                raise TransientError(
                    f"{self.source.url}/{entry.key}: got {size} bytes with sha256 {sha}, the "
                    f"manifest says {entry.size} bytes with sha256 {entry.sha256}"
                )
            if isinstance(data, Path):
                self.dest.write_file(entry.key, data, sha256=sha)
            else:
                self.dest.write(entry.key, data, sha256=sha)
        except TransientError:
            if isinstance(data, Path):
                data.unlink(missing_ok=True)  # wrong bytes: the next attempt starts over
            raise
        if isinstance(data, Path):
            data.unlink(missing_ok=True)


def _staging_name(entry: ManifestEntry, kind: str) -> str:
    """Stable across runs (so a partial download is found again), distinct per key."""
    return f"{entry.sha256}-{_sha(entry.key.encode())[:12]}.{kind}"


def _sha_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- sync


def _as_source(source: SyncSource | Store) -> SyncSource:
    return StoreSource(source) if isinstance(source, Store) else source


def _read_release(source: SyncSource) -> tuple[ReleasePointer, bytes, ReleaseManifest]:
    """The source's pointer and the manifest it names, with every key checked (R11)."""
    try:
        pointer = ReleasePointer.model_validate_json(
            source.read(LATEST_KEY, limit=_MAX_POINTER_BYTES)
        )
    except KeyError:
        raise ConfigurationError(f"{source.url} has no {LATEST_KEY}: nothing published") from None
    if pointer.manifest != manifest_key(pointer.version):
        raise InvalidKey(f"{source.url}: the pointer names manifest {pointer.manifest!r}")
    try:
        raw = source.read(pointer.manifest, limit=_MAX_MANIFEST_BYTES)
    except KeyError:
        raise TransientError(f"{source.url}: the pointer names a missing manifest") from None
    manifest = ReleaseManifest.model_validate_json(raw)
    if manifest.version != pointer.version:
        raise InvalidKey(f"{source.url}/{pointer.manifest}: version {manifest.version!r}")
    sha_of: dict[str, str] = {}
    for entry in manifest.objects:
        check_key(entry.key)
        if entry.key == LATEST_KEY or entry.key.startswith(_RESERVED) or entry.key.endswith("/"):
            raise InvalidKey(f"{source.url}: the manifest lists reserved key {entry.key!r}")
        if sha_of.setdefault(entry.key, entry.sha256) != entry.sha256:
            raise InvalidKey(f"{source.url}: the manifest lists {entry.key!r} twice")
    return pointer, raw, manifest


def _default_staging(dest: Store) -> Path:
    tag = hashlib.sha256(dest.url.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "lunarchive-sync" / tag


def sync_release(
    source: SyncSource | Store,
    dest: Store,
    *,
    concurrency: int = 8,
    keep: int = 2,
    collections: Iterable[str] | None = None,
    bbox: Sequence[float] | None = None,
    dry_run: bool = False,
    progress: Callable[[SyncProgress], None] | None = None,
    staging: Path | None = None,
    retries: int = 3,
    retry_delay: float = 0.5,
) -> SyncReport:
    """Make DEST hold the source's current release, whole, then point DEST's pointer at it.

    Raises only when the source's release cannot be read at all (missing pointer, malformed
    manifest, refused URL) or DEST cannot be written; per-object failures are reported in
    ``SyncReport.failed`` and leave DEST's pointer where it was.
    """
    if concurrency < 1 or keep < 1 or retries < 1:
        raise ConfigurationError("concurrency, keep and retries must be at least 1")
    chosen = _Filter(
        frozenset(collections) if collections is not None else None,
        _checked_bbox(bbox) if bbox is not None else None,
    )
    src = _as_source(source)
    pointer, manifest_bytes, manifest = _read_release(src)
    report = SyncReport(source=src.url, dest=dest.url, version=pointer.version, dry_run=dry_run)
    state = _load_state(dest)
    mirror = _Mirror(
        src,
        dest,
        state,
        report,
        staging=staging or _default_staging(dest),
        retries=retries,
        retry_delay=retry_delay,
        progress=progress,
    )
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="sync") as pool:
        try:
            entries = _wanted(mirror, manifest, chosen, pool, dry_run=dry_run)
            todo, held = mirror.plan(entries)
            # held now: skipped, unless placed a moment ago by a filter's catalog phase
            report.objects_skipped = held - report.objects_transferred - report.objects_copied
            if dry_run:
                _count_plan(report, todo, mirror.copy_source())
                return report
            if not report.failed:  # a filter's catalog phase failed: nothing more to try
                mirror.run(todo, pool)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if not dry_run:
                mirror.save()
    if not report.failed:
        _publish_in_dest(mirror, pointer, manifest_bytes, manifest, entries, chosen)
        _prune(mirror, keep)
        mirror.save()
    return report


def _wanted(
    mirror: _Mirror,
    manifest: ReleaseManifest,
    chosen: _Filter,
    pool: ThreadPoolExecutor,
    *,
    dry_run: bool,
) -> list[ManifestEntry]:
    """The manifest entries this mirror should hold."""
    if not chosen.active:
        return list(manifest.objects)
    state, version = mirror.state, manifest.version
    if state.filters.get(version) == chosen.describe() and manifest_key(version) in state.objects:
        # this release was mirrored with this filter already: its DEST manifest is the choice
        held = ReleaseManifest.model_validate_json(mirror.dest.read(manifest_key(version)))
        return list(held.objects)
    own_prefix = release_prefix(version)
    own = [e for e in manifest.objects if e.key.startswith(own_prefix)]
    if not dry_run:
        todo, _ = mirror.plan(own)
        mirror.run(todo, pool)  # the catalog first: it tells which assets are selected
        if mirror.report.failed:
            return own

    def read_doc(entry: ManifestEntry) -> bytes:
        if mirror.state.holds(entry):
            return mirror.dest.read(entry.key)
        return mirror.source.read(entry.key, limit=_MAX_CATALOG_DOC_BYTES)

    return _select(manifest, chosen, read_doc, pool)


def _count_plan(
    report: SyncReport, todo: Sequence[ManifestEntry], local: Mapping[str, str]
) -> None:
    for entry in todo:
        if entry.sha256 in local:
            report.objects_copied += 1
            report.bytes_copied += entry.size
        else:
            report.objects_transferred += 1
            report.bytes_transferred += entry.size


def _publish_in_dest(
    mirror: _Mirror,
    pointer: ReleasePointer,
    manifest_bytes: bytes,
    manifest: ReleaseManifest,
    entries: Sequence[ManifestEntry],
    chosen: _Filter,
) -> None:
    """Write the release's manifest into DEST, then flip DEST's pointer by compare-and-swap."""
    dest, state, report, version = mirror.dest, mirror.state, mirror.report, pointer.version
    if chosen.active:
        held = ReleaseManifest(version=version, created=manifest.created, objects=list(entries))
        manifest_bytes = json_bytes(held.model_dump(mode="json"))
    key = manifest_key(version)
    if state.objects.get(key) != (_sha(manifest_bytes), len(manifest_bytes)):
        dest.write(key, manifest_bytes)
        state.objects[key] = (_sha(manifest_bytes), len(manifest_bytes))
    state.filters[version] = chosen.describe()
    current = dest.read_tagged(LATEST_KEY)
    current_version = ReleasePointer.model_validate_json(current[0]).version if current else None
    if current_version != version:
        new = ReleasePointer(
            version=version, manifest=key, published=pointer.published, previous=current_version
        )
        try:
            dest.swap(
                LATEST_KEY,
                json_bytes(new.model_dump(mode="json")),
                expected_tag=current[1] if current else None,
            )
        except StoreConflict as exc:
            report.failed.append(FailedObject(LATEST_KEY, f"another writer moved it: {exc}"))
            return
        report.flipped = True
    state.releases = [v for v in state.releases if v != version] + [version]
    report.complete = True


def _prune(mirror: _Mirror, keep: int) -> None:
    """Delete what only releases older than the newest ``keep`` needed (manifests first)."""
    if not mirror.report.complete:
        return
    state = mirror.state
    kept, doomed = state.releases[-keep:], state.releases[:-keep]
    needed: set[str] = set()
    for version in kept:
        key = manifest_key(version)
        needed.add(key)
        needed |= {
            e.key for e in ReleaseManifest.model_validate_json(mirror.dest.read(key)).objects
        }
    victims = sorted(key for key in state.objects if key not in needed)
    manifests = {manifest_key(v) for v in doomed}
    for key in sorted(victims, key=lambda k: k not in manifests):
        mirror.dest.delete(key)
        del state.objects[key]
    for version in doomed:
        state.filters.pop(version, None)
    state.releases = kept
    mirror.report.objects_pruned = len(victims)


# --------------------------------------------------------------------------- verify


def verify_mirror(
    dest: Store,
    source: SyncSource | Store | None = None,
    *,
    concurrency: int = 8,
    staging: Path | None = None,
    retries: int = 3,
    retry_delay: float = 0.5,
) -> VerifyReport:
    """Re-hash every object of every release DEST keeps; repair damaged ones from ``source``.

    The expected size and sha256 are DEST's own manifests (the truth a reader relies on); a
    repair fetches the key from the source and places it only if it matches them.
    """
    state = _load_state(dest)
    report = VerifyReport(dest=dest.url)
    expected: dict[str, ManifestEntry] = {}
    for version in state.releases:
        key = manifest_key(version)
        for entry in ReleaseManifest.model_validate_json(dest.read(key)).objects:
            expected[entry.key] = entry
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="verify") as pool:
        audited = list(
            zip(expected.values(), pool.map(_audit(dest), expected.values()), strict=True)
        )
        damaged = [entry for entry, whole in audited if not whole]
        report.objects_checked = len(audited)
        report.bytes_checked = sum(entry.size for entry in expected.values())
        report.damaged = [entry.key for entry in damaged]
        for entry in damaged:
            state.objects.pop(entry.key, None)  # no longer held: never reused as a copy
        if damaged and source is not None:
            sync_report = SyncReport(source="", dest=dest.url)
            mirror = _Mirror(
                _as_source(source),
                dest,
                state,
                sync_report,
                staging=staging or _default_staging(dest),
                retries=retries,
                retry_delay=retry_delay,
                progress=None,
            )
            mirror.run(damaged, pool)
            failed = {f.key for f in sync_report.failed}
            report.repaired = [e.key for e in damaged if e.key not in failed]
            report.failed = sync_report.failed
        elif damaged:
            report.failed = [
                FailedObject(e.key, "damaged; no source to repair from") for e in damaged
            ]
    dest.write(STATE_KEY, state.to_bytes())
    return report


def _audit(dest: Store) -> Callable[[ManifestEntry], bool]:
    def whole(entry: ManifestEntry) -> bool:
        try:
            return dest.sha256(entry.key, rehash=True) == entry.sha256
        except KeyError:
            return False

    return whole

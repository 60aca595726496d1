"""The publish protocol: render a release, write it unreferenced, then flip the pointer.

1. every object of the release under a new version prefix (``If-None-Match: *``);
2. its manifest (key, size, sha256 of every object its catalog needs);
3. a compare-and-swap of ``releases/latest.json``.

A reader that reads the pointer first sees a complete old or a complete new release. A
release whose objects equal the current one's publishes nothing, so reruns write nothing.
"""

from __future__ import annotations

import gc
import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import orjson
import pystac
import stac_geoparquet.arrow

from lunarchive.catalog.layout import LATEST_KEY, manifest_key, release_prefix
from lunarchive.catalog.store import Store, json_bytes
from lunarchive.schemas.errors import StoreConflict
from lunarchive.schemas.release import ManifestEntry, ReleaseManifest, ReleasePointer

__all__ = [
    "ITEM_TO_ROOT",
    "PublishResult",
    "ReleaseDraft",
    "create_once",
    "draft_release",
    "inventory",
    "paused_gc",
    "publish_release",
    "read_current",
]

# The static tree is pystac's layout: releases/<v>/<collection>/<item>/<item>.json, so an item
# reaches the store root by four levels up, and the release root (items.parquet) by two.
ITEM_TO_ROOT = "../../../../"
_RELEASE_TO_ROOT = "../../"
# Threads of the slow path that completes a release a crashed attempt left half written.
_WRITERS = 16
_PLACEHOLDER = "releases/{version}/"


@dataclass(frozen=True)
class ReleaseDraft:
    """A release before it has a version: its own files, and the shared objects it needs."""

    files: Mapping[str, bytes]  # keys relative to releases/<version>/
    shared: Sequence[ManifestEntry]  # cubes, raw assets: keys relative to the store root

    @cached_property
    def sha256(self) -> dict[str, str]:
        """The sha256 of each own file, by key (hashed once: for the identity, the writes
        and the manifest)."""
        return {key: hashlib.sha256(data).hexdigest() for key, data in self.files.items()}

    def identity(self) -> list[tuple[str, int, str]]:
        """What makes two releases the same, whatever their version names."""
        own = [
            (_PLACEHOLDER + key, len(data), self.sha256[key]) for key, data in self.files.items()
        ]
        return sorted(own + [(e.key, e.size, e.sha256) for e in self.shared])


@dataclass(frozen=True)
class PublishResult:
    version: str | None  # None: nothing published yet, and nothing to publish
    published: bool
    objects_written: int
    item_count: int = 0
    previous: str | None = None
    keys: list[str] = field(default_factory=list)


def draft_release(
    catalog: pystac.Catalog,
    shared: Iterable[ManifestEntry],
    extra: Mapping[str, bytes] | None = None,
) -> ReleaseDraft:
    """Render the static tree (relative links), the stac-geoparquet of every item, and the
    ``extra`` files (e.g. queryables; keys relative to the release root)."""
    with paused_gc():
        return _draft(catalog, shared, extra)


def _draft(
    catalog: pystac.Catalog, shared: Iterable[ManifestEntry], extra: Mapping[str, bytes] | None
) -> ReleaseDraft:
    rendered = _render(catalog)
    files = {key: _json_file(document) for key, document in rendered.items()}
    files = dict(sorted(files.items())) | dict(extra or {})
    items = [
        _item_for_release_root(document)
        for key, document in rendered.items()
        if document.get("type") == "Feature"
    ]
    files["items.parquet"] = _geoparquet(items)
    unique = {entry.key: entry for entry in shared}
    return ReleaseDraft(files=files, shared=sorted(unique.values(), key=lambda e: e.key))


# Why not ``catalog.save()``: pystac resolves every structural link through the parent's link
# list, which makes a collection of n items cost O(n²) (100 000 items: hours). The tree is
# pystac's self-contained layout with relative links, so each document's structural links are
# written here from the tree's shape, in the order pystac keeps them, and its other fields are
# pystac's own ``to_dict``.
_STRUCTURAL = frozenset({"root", "parent", "child", "item", "collection", "self"})


def _render(catalog: pystac.Catalog) -> dict[str, dict[str, Any]]:
    """Every document of the tree, keyed relative to the release root."""
    documents: dict[str, dict[str, Any]] = {}
    _render_node(catalog, "catalog.json", None, catalog.title, documents)
    return documents


def _node_file(node: pystac.STACObject) -> str:
    """Where pystac's layout puts a child: in its own folder below its parent's."""
    if isinstance(node, pystac.Item):
        return f"{node.id}/{node.id}.json"
    kind = "collection" if isinstance(node, pystac.Collection) else "catalog"
    return f"{node.id}/{kind}.json"


def _render_node(
    node: pystac.STACObject,
    key: str,
    parent: tuple[str, str | None] | None,  # the parent document's file name and title
    root_title: str | None,
    documents: dict[str, dict[str, Any]],
) -> None:
    folder = key.rpartition("/")[0] + "/" if "/" in key else ""
    depth = key.count("/")
    links: list[dict[str, Any]] = []
    for link in node.links:
        if link.rel not in _STRUCTURAL:
            links.append(link.to_dict(transform_href=False))
        elif link.rel == "root":
            href = ("../" * depth or "./") + "catalog.json"
            links.append(_link("root", href, "application/json", root_title))
        elif link.rel in ("parent", "collection") and parent is not None:
            links.append(_link(link.rel, "../" + parent[0], "application/json", parent[1]))
        elif link.rel in ("child", "item"):
            # an object built in memory is linked already: resolving it again would re-set
            # its parent link, once per item
            child = (link if link.is_resolved() else link.resolve_stac_object()).target
            assert isinstance(child, pystac.STACObject)
            kind = "application/geo+json" if link.rel == "item" else "application/json"
            links.append(_link(link.rel, "./" + _node_file(child), kind, _title(child)))
            name = key.rpartition("/")[2]
            _render_node(child, folder + _node_file(child), (name, _title(node)), root_title,
                         documents)  # fmt: skip
    saved = node.links
    node.links = []
    try:
        document = node.to_dict(include_self_link=False, transform_hrefs=False)
    finally:
        node.links = saved
    document["links"] = links
    documents[key] = document


def _title(node: pystac.STACObject) -> str | None:
    """A link's title: the target's (pystac writes item links without one)."""
    return node.title if isinstance(node, pystac.Catalog) else None


def _link(rel: str, href: str, media_type: str, title: str | None) -> dict[str, Any]:
    link: dict[str, Any] = {"rel": rel, "href": href, "type": media_type}
    if title is not None:
        link["title"] = title
    return link


def _json_file(document: dict[str, Any]) -> bytes:
    """pystac's encoding (which is orjson's, two-space indent), with a final newline."""
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Python's cycle collector off for a while (back on after, if it was on).

    A release is millions of small, acyclic dicts and lists; while they pile up, each full
    collection walks all of them again (and every pystac object held beside them): at
    100 000 items that is most of the time of rendering, validating and writing."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _OwnedItem(dict[str, Any]):
    """An item dict made for one geoparquet conversion and dropped after it.

    stac-geoparquet deep-copies every item before it turns the copy's geometries (the item's,
    ``properties["proj:geometry"]``, each asset's) into WKB; at 100 000 items that copy is
    most of its time. These dicts are ours alone, so a copy of the levels it changes is as
    safe (and if it stops copying, this is simply not called)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return self | {
            "properties": dict(self["properties"]),
            "assets": {name: dict(asset) for name, asset in self["assets"].items()},
        }


def _item_for_release_root(document: dict[str, Any]) -> dict[str, Any]:
    """An item as stored in items.parquet: hrefs relative to the release root."""
    data = _OwnedItem(document)
    data["assets"] = {
        name: asset | {"href": _rebase(asset["href"])} for name, asset in data["assets"].items()
    }
    links = [
        link | {"href": _rebase(link["href"])}
        for link in data["links"]
        if link["rel"] == "derived_from"
    ]
    collection = {"rel": "collection", "href": f"./{data['collection']}/collection.json"}
    data["links"] = [collection, *links]
    return data


def _rebase(href: str) -> str:
    if href.startswith(ITEM_TO_ROOT):
        return _RELEASE_TO_ROOT + href.removeprefix(ITEM_TO_ROOT)
    return href


def _geoparquet(items: list[dict[str, Any]]) -> bytes:
    reader = stac_geoparquet.arrow.parse_stac_items_to_arrow(items)
    with tempfile.TemporaryDirectory(prefix="lunarchive-") as tmp:
        path = Path(tmp) / "items.parquet"
        stac_geoparquet.arrow.to_parquet(reader, path)
        return path.read_bytes()


def inventory(store: Store, prefix: str) -> list[ManifestEntry]:
    """Key, size and sha256 of every object under a prefix (reads each object once)."""
    return [
        ManifestEntry(key=info.key, size=info.size, sha256=store.sha256(info.key))
        for info in store.list(prefix)
    ]


def read_current(store: Store) -> tuple[ReleasePointer, ReleaseManifest, str] | None:
    """The current pointer, its manifest, and the pointer's tag (for the swap)."""
    tagged = store.read_tagged(LATEST_KEY)
    if tagged is None:
        return None
    pointer = ReleasePointer.model_validate_json(tagged[0])
    manifest = ReleaseManifest.model_validate_json(store.read(pointer.manifest))
    return pointer, manifest, tagged[1]


def _identity_of(manifest: ReleaseManifest) -> list[tuple[str, int, str]]:
    own = release_prefix(manifest.version)
    return sorted(
        (
            _PLACEHOLDER + e.key.removeprefix(own) if e.key.startswith(own) else e.key,
            e.size,
            e.sha256,
        )
        for e in manifest.objects
    )


def publish_release(
    store: Store, draft: ReleaseDraft, *, now: datetime | None = None
) -> PublishResult:
    """Publish ``draft`` as the current release, unless it equals the current one.

    Raises StoreConflict when another publisher flipped the pointer first (nothing of this
    release is then referenced; a later run publishes again on top of the winner).
    """
    with paused_gc():
        return _publish(store, draft, now)


def _publish(store: Store, draft: ReleaseDraft, now: datetime | None) -> PublishResult:
    current = read_current(store)
    item_count = sum(1 for key in draft.files if key.count("/") == 2)
    if current and _identity_of(current[1]) == draft.identity():
        return PublishResult(current[0].version, False, 0, item_count, current[0].previous)
    store.check_conditional_writes()
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    digest = hashlib.sha256(json.dumps(draft.identity()).encode()).hexdigest()
    version = f"{now:%Y%m%dT%H%M%SZ}-{digest[:6]}"
    own = _write_own_files(store, release_prefix(version), draft)
    manifest = ReleaseManifest(version=version, created=now, objects=[*own, *draft.shared])
    create_once(store, manifest_key(version), json_bytes(manifest.model_dump(mode="json")))
    previous = current[0].version if current else None
    pointer = ReleasePointer(
        version=version, manifest=manifest_key(version), published=now, previous=previous
    )
    expected_tag = current[2] if current else None
    store.swap(LATEST_KEY, json_bytes(pointer.model_dump(mode="json")), expected_tag=expected_tag)
    keys = [entry.key for entry in own] + [manifest_key(version), LATEST_KEY]
    return PublishResult(version, True, len(keys), item_count, previous, keys)


def _write_own_files(store: Store, prefix: str, draft: ReleaseDraft) -> list[ManifestEntry]:
    """Create the release's own files under its prefix, durable before the manifest names
    them. A file already there (a crashed attempt of the same release in the same second)
    counts as made when its bytes are the same."""
    sha256 = draft.sha256
    try:
        store.create_many((prefix + key, data, sha256[key]) for key, data in draft.files.items())
    except StoreConflict:
        with ThreadPoolExecutor(_WRITERS, thread_name_prefix="lunarchive-publish") as pool:
            return list(
                pool.map(lambda kv: create_once(store, prefix + kv[0], kv[1]), draft.files.items())
            )
    return [
        ManifestEntry(key=prefix + key, size=len(data), sha256=sha256[key])
        for key, data in draft.files.items()
    ]


def create_once(store: Store, key: str, data: bytes) -> ManifestEntry:
    """Create ``key``; the identical object left there by a crashed attempt counts as made."""
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        store.create(key, data)
    except StoreConflict:
        if store.sha256(key) != sha256:
            raise
    return ManifestEntry(key=key, size=len(data), sha256=sha256)

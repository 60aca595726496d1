"""PDS4 collections listed by the PDS Registry Search API (``https://pds.nasa.gov/api/search/1/``).

The documented incremental recipe (SOURCES.md §6.4): resolve the collection's latest LIDVID
(``/products/<collection LID>/latest``); page its members
(``/products/<collection LIDVID>/members``) sorted by
``ops:Harvest_Info.ops:harvest_date_time`` with ``search-after`` and ``limit``, asking only
for the fields the harvester needs; keep the last ``harvest_date_time`` as the checkpoint,
so that the next run pages only what the registry harvested since. A new collection LIDVID
(the inventory changed) pages it again from the start. A product re-harvested by the
registry comes back with a later date but the same LIDVID: the LIDVID is the fingerprint, so
it is not downloaded again.

Each member brings its label's and data files' URLs (``ops:Label_File_Info.ops:file_ref``,
``ops:Data_File_Info.ops:file_ref``, which point at the node's own archive), sizes and
md5s, which are verified. The registry warns that its servers are not fully populated: the
node's collection inventory stays the authority (the ``pds4-inventory`` kind), this kind is
the accelerator. Unverified: ``gt`` filtering on ``harvest_date_time`` (not used), and what
happens when many members share one ``harvest_date_time`` at a page boundary (members with
the checkpoint's exact time are asked for again by re-paging from the start whenever the
collection's LIDVID changes).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, urlencode, urlparse

from lunarchive.flows.source_kinds._base import (
    KindContext,
    Listing,
    PlannedFile,
    ProductPlan,
    selected,
)
from lunarchive.schemas.errors import ProductRejected, TransientError
from lunarchive.schemas.sources import (
    HarvestState,
    ListedFile,
    Pds4SearchApiAccess,
    UpstreamEntry,
)

__all__ = ["HARVEST_TIME", "Pds4SearchApi", "member_entry"]

HARVEST_TIME = "ops:Harvest_Info.ops:harvest_date_time"
_LABEL = "ops:Label_File_Info."
_DATA = "ops:Data_File_Info."
_FIELDS = (
    "lidvid",
    HARVEST_TIME,
    _LABEL + "ops:file_ref",
    _LABEL + "ops:file_size",
    _LABEL + "ops:md5_checksum",
    _DATA + "ops:file_ref",
    _DATA + "ops:file_size",
    _DATA + "ops:md5_checksum",
)
_MAX_PAGE_BYTES = 32 * 1024 * 1024
_MAX_PAGES = 100_000
_JSON = "application/json"


class Pds4SearchApi:
    def list_upstream(self, ctx: KindContext, state: HarvestState) -> Listing:
        access = _access(ctx)
        latest = _json(ctx, f"products/{quote(access.collection)}/latest")
        product = latest["data"][0] if isinstance(latest.get("data"), list) else latest
        collection = product.get("id") if isinstance(product, dict) else None
        if not isinstance(collection, str) or "::" not in collection:
            raise TransientError(f"{access.collection}: the API gave no latest collection LIDVID")
        held = (
            state.inventory
            if state.inventory and state.inventory.selection == ctx.selection
            else None
        )
        entries: dict[str, UpstreamEntry] = {}
        after: str | None = None
        if held and held.checkpoint and held.checkpoint.split("\t", 1)[0] == collection:
            entries = {entry.product_id: entry for entry in held.entries}
            after = held.checkpoint.split("\t", 1)[1] or None
        for _ in range(_MAX_PAGES):
            query = {
                "sort": HARVEST_TIME,
                "limit": str(access.page_size),
                "fields": ",".join(_FIELDS),
            }
            if after:
                query["search-after"] = after
            page = _json(ctx, f"products/{quote(collection)}/members?{urlencode(query)}")
            data = page.get("data")
            if not isinstance(data, list):
                raise TransientError(f"{collection}: a members page without a data list")
            for item in data:
                entry = member_entry(item, where=collection)
                if entry is not None and selected(ctx.spec, entry.product_id):
                    current = entries.get(entry.product_id)
                    if current is None or _vid(entry.version) >= _vid(current.version):
                        entries[entry.product_id] = entry
                stamp = _first(item.get("properties", {}), HARVEST_TIME)
                after = stamp or after
            if len(data) < access.page_size:
                break
        else:
            raise TransientError(f"{collection}: more than {_MAX_PAGES} member pages")
        ordered = tuple(sorted(entries.values(), key=lambda entry: entry.product_id))
        return Listing(ordered, checkpoint=f"{collection}\t{after or ''}")

    def describe(self, ctx: KindContext, entry: UpstreamEntry, folder: Path) -> ProductPlan:
        if not entry.files or entry.path is None:
            raise ProductRejected(f"{entry.product_id}: the API lists no label file for it")
        planned = {}
        for listed in entry.files:
            name = PurePosixPath(urlparse(listed.path).path).name
            if not name or name in planned:
                raise ProductRejected(f"{listed.path}: no file name, or two files named alike")
            planned[name] = PlannedFile(name, listed.path, listed.size, listed.md5)
        label = PurePosixPath(urlparse(entry.path).path).name
        return ProductPlan(label, tuple(planned[name] for name in sorted(planned)))


def _access(ctx: KindContext) -> Pds4SearchApiAccess:
    access = ctx.spec.access
    assert isinstance(access, Pds4SearchApiAccess)
    return access


def _json(ctx: KindContext, relative: str) -> dict[str, Any]:
    url = ctx.base_url + relative
    body = ctx.fetcher.read(url, limit=_MAX_PAGE_BYTES, accept=_JSON).body or b""
    try:
        loaded = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TransientError(f"{url}: not JSON ({exc})") from None
    if not isinstance(loaded, dict):
        raise TransientError(f"{url}: not a JSON object")
    return loaded


def _first(properties: dict[str, Any], name: str) -> str | None:
    values = properties.get(name)
    if isinstance(values, list) and values and isinstance(values[0], str):
        return values[0]
    return values if isinstance(values, str) else None


def _all(properties: dict[str, Any], name: str) -> list[str]:
    values = properties.get(name)
    if isinstance(values, str):
        return [values]
    return [str(v) for v in values] if isinstance(values, list) else []


def _vid(version: str | None) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in (version or "0").split("."))
    except ValueError:
        return (0,)


def _size(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def member_entry(item: Any, *, where: str) -> UpstreamEntry | None:
    """A member of a page as an entry: LID, VID, label and data files (None: not a product)."""
    if not isinstance(item, dict):
        raise TransientError(f"{where}: a member that is not an object")
    properties = item.get("properties") or {}
    lidvid = _first(properties, "lidvid") or item.get("id")
    if not isinstance(lidvid, str) or "::" not in lidvid:
        return None
    lid, _, vid = lidvid.partition("::")
    label = _first(properties, _LABEL + "ops:file_ref")
    files = []
    if label:
        files.append(
            ListedFile(
                path=label,
                size=_size(_first(properties, _LABEL + "ops:file_size")),
                md5=_first(properties, _LABEL + "ops:md5_checksum"),
            )
        )
    refs = _all(properties, _DATA + "ops:file_ref")
    sizes = _all(properties, _DATA + "ops:file_size")
    md5s = _all(properties, _DATA + "ops:md5_checksum")
    for number, ref in enumerate(refs):
        files.append(
            ListedFile(
                path=ref,
                size=_size(sizes[number] if number < len(sizes) else None),
                md5=(md5s[number] if number < len(md5s) else None) or None,
            )
        )
    return UpstreamEntry(
        product_id=lid.lower(),
        version=vid,
        fingerprint=f"lidvid:{lid.lower()}::{vid}",
        path=label,
        files=tuple(files),
    )

"""PDS4 bundles listed by their collection inventories (``collection_*_inventory.csv``).

Each collection label names its inventory in ``File_Area_Inventory`` and says how many
records it has; the inventory lists one member per CR LF line, ``P,<LIDVID>`` for primary
members (``S`` secondary members are other collections' products and are skipped). The
LIDVID is the fingerprint: a new version of a product is a new LIDVID (SOURCES.md §6.3).

The inventory says *what* exists but not *where*: product labels are found by crawling the
collection's folder listing, reading each label not seen before for its LID and VID, and
keeping that map (label path → LIDVID) in the harvest state, so that later runs read only
the labels that are new.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from lxml import etree

from lunarchive.flows.source_kinds._base import (
    MAX_INVENTORY_BYTES,
    MAX_LABEL_BYTES,
    KindContext,
    Listing,
    PlannedFile,
    ProductPlan,
    selected,
    write_staged,
)
from lunarchive.processing.labels import parse_label_bytes
from lunarchive.processing.pds4 import read_pds4
from lunarchive.schemas.errors import ProductRejected, TransientError
from lunarchive.schemas.sources import HarvestState, Pds4InventoryAccess, UpstreamEntry

__all__ = ["Pds4Inventory", "parse_inventory"]


class Pds4Inventory:
    def list_upstream(self, ctx: KindContext, state: HarvestState) -> Listing:
        access = _access(ctx)
        entries: list[UpstreamEntry] = []
        for collection in access.collections:
            entries.extend(_collection_entries(ctx, ctx.url(collection)))
        labels = _locate(ctx, access, state, entries)
        where = {lidvid: path for path, lidvid in labels.items()}
        located = tuple(
            entry.model_copy(update={"path": where.get(_lidvid(entry))})
            for entry in sorted(entries, key=lambda e: (e.product_id, e.version or ""))
        )
        return Listing(located, labels=labels)

    def describe(self, ctx: KindContext, entry: UpstreamEntry, folder: Path) -> ProductPlan:
        if entry.path is None:
            raise TransientError(
                f"{_lidvid(entry)}: listed in the inventory, but no label below the "
                "collection's folder has this LIDVID"
            )
        url = ctx.url(entry.path)
        name = PurePosixPath(entry.path).name
        body = ctx.fetcher.read(url, limit=MAX_LABEL_BYTES).body or b""
        record = read_pds4(write_staged(folder, name, body))
        base = url.rsplit("/", 1)[0] + "/"
        files = [PlannedFile(name, url, len(body), staged=True)]
        files += [
            PlannedFile(part.name, base + part.name, part.size, part.md5)
            for part in record.files
            if part.name != name
        ]
        return ProductPlan(name, tuple(files))


def _access(ctx: KindContext) -> Pds4InventoryAccess:
    access = ctx.spec.access
    assert isinstance(access, Pds4InventoryAccess)
    return access


def _lidvid(entry: UpstreamEntry) -> str:
    return f"{entry.product_id}::{entry.version}" if entry.version else entry.product_id


def _find(root: etree._Element, local: str) -> etree._Element | None:
    found = root.xpath(f".//*[local-name()='{local}']")
    assert isinstance(found, list)
    first = found[0] if found else None
    return first if isinstance(first, etree._Element) else None


def _text(root: etree._Element, local: str) -> str | None:
    element = _find(root, local)
    return element.text.strip() if element is not None and element.text else None


def _collection_entries(ctx: KindContext, label_url: str) -> list[UpstreamEntry]:
    body = ctx.fetcher.read(label_url, limit=MAX_LABEL_BYTES).body or b""
    root = parse_label_bytes(body, name=label_url)
    area = _find(root, "File_Area_Inventory")
    name = _text(area, "file_name") if area is not None else None
    records = _text(area, "records") if area is not None else None
    if not name or "/" in name or name in (".", ".."):
        raise TransientError(f"{label_url}: no File_Area_Inventory naming a bare file")
    inventory_url = label_url.rsplit("/", 1)[0] + "/" + name
    data = ctx.fetcher.read(inventory_url, limit=MAX_INVENTORY_BYTES).body or b""
    members = parse_inventory(
        data, records=int(records) if records and records.isdigit() else None, where=inventory_url
    )
    return [
        UpstreamEntry(
            product_id=lid, version=vid, fingerprint=f"lidvid:{lid}::{vid}" if vid else f"lid:{lid}"
        )
        for lid, vid in members
        if selected(ctx.spec, lid)
    ]


def parse_inventory(
    data: bytes, *, records: int | None, where: str
) -> list[tuple[str, str | None]]:
    """The primary members (LID, VID or None) of a PDS4 collection inventory."""
    lines = [line for line in data.decode("utf-8").splitlines() if line.strip()]
    if records is not None and len(lines) != records:
        raise TransientError(
            f"{where}: {len(lines)} records, the collection label says {records} "
            "(an inventory being rewritten, or a stale label)"
        )
    members = []
    for number, line in enumerate(lines, start=1):
        status, _, reference = line.partition(",")
        status, reference = status.strip().upper(), reference.strip()
        if status == "S" or status.startswith("#"):
            continue
        if status != "P" or not reference.lower().startswith("urn:"):
            raise TransientError(f"{where}, line {number}: not 'P,<LIDVID>' or 'S,<LID>'")
        lid, _, vid = reference.partition("::")
        members.append((lid.lower(), vid or None))
    return members


def _wanted(state: HarvestState, entry: UpstreamEntry) -> bool:
    held = state.products.get(entry.product_id)
    if held is None:
        return True
    gave_up = held.quarantined is not None and held.quarantined.fingerprint == entry.fingerprint
    return not held.holds(entry.fingerprint) and not gave_up


def _locate(
    ctx: KindContext,
    access: Pds4InventoryAccess,
    state: HarvestState,
    entries: list[UpstreamEntry],
) -> dict[str, str]:
    """The label map, extended until every wanted LIDVID has a label (or none is left)."""
    labels = dict(state.labels)
    missing = {_lidvid(e) for e in entries if _wanted(state, e)} - set(labels.values())
    if not missing:
        return labels
    found: list[str] = []
    for collection in access.collections:
        folder = ctx.url(collection).rsplit("/", 1)[0] + "/"
        found += ctx.fetcher.list_directory(folder, depth=access.crawl_depth)
    candidates = [
        ctx.relative(url)
        for url in found
        if url.lower().endswith(".xml") and not PurePosixPath(url).name.startswith("collection")
    ]
    unread = [path for path in candidates if path not in labels]
    # a label replaced in place keeps its path: read again the ones of a wanted LID
    wanted_lids = {lidvid.split("::")[0] for lidvid in missing}
    unread += [p for p, lidvid in labels.items() if lidvid.split("::")[0] in wanted_lids]
    for path in sorted(set(unread)):
        lidvid = _label_lidvid(ctx, path)
        if lidvid is not None:
            labels[path] = lidvid
    return labels


def _label_lidvid(ctx: KindContext, path: str) -> str | None:
    url = ctx.url(path)
    try:
        body = ctx.fetcher.read(url, limit=MAX_LABEL_BYTES).body or b""
        root = parse_label_bytes(body, name=url)
    except ProductRejected:
        return None  # unreadable or vanished: the product it holds stays unlocated
    ident = _find(root, "Identification_Area")
    if ident is None:
        return None
    lid, vid = _text(ident, "logical_identifier"), _text(ident, "version_id")
    if not lid:
        return None
    return f"{lid.lower()}::{vid}" if vid else lid.lower()

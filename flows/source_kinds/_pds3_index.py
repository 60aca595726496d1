"""PDS3 volumes listed by an index table (LOLA's ``index/rdrindex.lbl`` + ``rdrindex.tab``).

The index label says where each column lies (``START_BYTE``/``BYTES``, 1-based, quotes
excluded); rows are fixed-length ASCII ending in CR LF. Columns are found by name, never by
position. A product's fingerprint is its whole row: PDS3 products are replaced in place under
the same name (a new ``PRODUCT_VERSION_ID`` or ``PRODUCT_CREATION_TIME``), so any change in
the row means "fetch again" (SOURCES.md §2.4). The table is fetched with the validators
(ETag / Last-Modified) of the last run, so an unchanged index costs one 304.

PDS3 labels carry no checksum; a detached label's ``RECORD_BYTES`` × ``FILE_RECORDS``
declares its data file's size, and the product reader checks that every object fits.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

with warnings.catch_warnings():
    # pvl 1.3 warns at import when the optional multidict package is absent (harmless)
    warnings.filterwarnings("ignore", "The multidict library is not present", ImportWarning)
    import pvl  # type: ignore[import-untyped]

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
from lunarchive.schemas.errors import ProductRejected, TransientError
from lunarchive.schemas.sources import HarvestState, Pds3IndexAccess, UpstreamEntry

__all__ = ["Pds3Index", "parse_index_label", "parse_index_rows"]

# Pointers to files that live elsewhere on the volume (CATALOG/, LABEL/, DOCUMENT/).
_ELSEWHERE = (".CAT", ".FMT", ".TXT", ".PDF", ".HTM", ".HTML")


class Pds3Index:
    def list_upstream(self, ctx: KindContext, state: HarvestState) -> Listing:
        access = _access(ctx)
        label_url = ctx.url(access.index_label)
        label = ctx.fetcher.read(label_url, limit=MAX_LABEL_BYTES).body or b""
        table_name, columns = parse_index_label(label.decode("latin-1"), where=label_url)
        table_url = _sibling_url(label_url, table_name, access)
        held = (
            state.inventory
            if state.inventory and state.inventory.selection == ctx.selection
            else None
        )
        table = ctx.fetcher.read(
            table_url,
            limit=MAX_INVENTORY_BYTES,
            etag=held.etag if held else None,
            last_modified=held.last_modified if held else None,
        )
        if table.body is None:
            return Listing(None, table.etag, table.last_modified)
        rows = parse_index_rows(table.body, columns, where=table_url)
        return Listing(tuple(_entries(ctx, access, rows)), table.etag, table.last_modified)

    def describe(self, ctx: KindContext, entry: UpstreamEntry, folder: Path) -> ProductPlan:
        access = _access(ctx)
        path = PurePosixPath(entry.path or "")
        label_path = (
            path if path.suffix.lower() == ".lbl" else path.with_suffix(_case(".LBL", access))
        )
        label_url = ctx.url(str(label_path))
        try:
            label = ctx.fetcher.read(label_url, limit=MAX_LABEL_BYTES).body or b""
        except ProductRejected:
            if label_path == path:
                raise
            # no detached label: the data file carries its own (attached PDS3 label)
            return ProductPlan(path.name, (PlannedFile(path.name, ctx.url(str(path))),))
        write_staged(folder, label_path.name, label)
        module = _parse(label.decode("latin-1"), where=label_url)
        pointed = sorted(set(_pointed_files(module)))
        files = [PlannedFile(label_path.name, label_url, len(label), staged=True)]
        for name in pointed:
            local = _case(name, access)
            if local.lower() == label_path.name.lower():
                continue
            size = _declared_size(module, name) if len(pointed) == 1 else None
            files.append(PlannedFile(local, _sibling_url(label_url, name, access), size))
        return ProductPlan(label_path.name, tuple(files))


def _access(ctx: KindContext) -> Pds3IndexAccess:
    access = ctx.spec.access
    assert isinstance(access, Pds3IndexAccess)
    return access


def _case(name: str, access: Pds3IndexAccess) -> str:
    if access.path_case == "lower":
        return name.lower()
    return name.upper() if access.path_case == "upper" else name


def _sibling_url(url: str, name: str, access: Pds3IndexAccess) -> str:
    if "/" in name or "\\" in name or name in ("", ".", ".."):
        raise ProductRejected(f"{url}: {name!r} is not a bare file name (rule R11)")
    return url.rsplit("/", 1)[0] + "/" + _case(name, access)


def _parse(text: str, *, where: str) -> Any:
    try:
        return pvl.loads(text)
    except Exception as exc:  # noqa: BLE001 - pvl raises a zoo of errors on bad labels
        raise ProductRejected(f"{where}: not a readable PDS3 label: {exc}") from None


def parse_index_label(text: str, *, where: str) -> tuple[str, dict[str, tuple[int, int]]]:
    """The table file an index label points to, and each column's (START_BYTE, BYTES)."""
    module = _parse(text, where=where)
    pointer = module.get("^INDEX_TABLE") or module.get("^TABLE")
    table = module.get("INDEX_TABLE") or module.get("TABLE")
    if isinstance(pointer, list | tuple):
        pointer = pointer[0]
    if not isinstance(pointer, str) or table is None:
        raise TransientError(f"{where}: no ^INDEX_TABLE pointer and INDEX_TABLE object")
    columns: dict[str, tuple[int, int]] = {}
    for column in table.getall("COLUMN"):
        try:
            columns[str(column["NAME"])] = (int(column["START_BYTE"]), int(column["BYTES"]))
        except (KeyError, TypeError, ValueError):
            raise TransientError(f"{where}: a COLUMN lacks NAME, START_BYTE or BYTES") from None
    return pointer, columns


def parse_index_rows(
    table: bytes, columns: dict[str, tuple[int, int]], *, where: str
) -> list[dict[str, str]]:
    """Each row of a fixed-width PDS3 index as {column: value}, quotes and padding removed."""
    rows = []
    for number, line in enumerate(table.decode("latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        row = {}
        for name, (start, size) in columns.items():
            if start - 1 + size > len(line):
                raise TransientError(f"{where}, row {number}: shorter than column {name}")
            row[name] = line[start - 1 : start - 1 + size].strip().strip('"').strip()
        rows.append(row)
    return rows


def _entries(
    ctx: KindContext, access: Pds3IndexAccess, rows: list[dict[str, str]]
) -> Iterator[UpstreamEntry]:
    """One entry per selected product; a product listed twice keeps its last row."""
    chosen: dict[str, UpstreamEntry] = {}
    for row in rows:
        path = row.get(access.path_column)
        if not path or not selected(ctx.spec, path):
            continue
        product_id = row.get(access.id_column) or PurePosixPath(path).stem
        text = "\x1f".join(f"{name}={value}" for name, value in sorted(row.items()))
        chosen[product_id] = UpstreamEntry(
            product_id=product_id,
            version=row.get(access.version_column) if access.version_column else None,
            fingerprint="row:" + hashlib.sha256(text.encode()).hexdigest()[:32],
            path=_case(path, access),
        )
    yield from sorted(chosen.values(), key=lambda entry: entry.product_id)


def _blocks(block: Any) -> Iterator[Any]:
    yield block
    for _, value in block.items():
        if isinstance(value, pvl.PVLObject | pvl.PVLGroup):
            yield from _blocks(value)


def _pointed_files(module: Any) -> Iterator[str]:
    """The data files a label's pointers name (catalog and format files excluded)."""
    for block in _blocks(module):
        for key, value in block.items():
            if not key.startswith("^"):
                continue
            name = value[0] if isinstance(value, list | tuple) and value else value
            if isinstance(name, str) and not name.upper().endswith(_ELSEWHERE):
                yield name


def _declared_size(module: Any, name: str) -> int | None:
    """RECORD_BYTES × FILE_RECORDS of the block describing ``name``, when fixed-length."""
    for block in _blocks(module):
        pointer = block.get("^IMAGE") or block.get("^TABLE")
        names = {str(block.get("FILE_NAME", "")).upper()}
        if isinstance(pointer, str):
            names.add(pointer.upper())
        if name.upper() not in names:
            continue
        if str(block.get("RECORD_TYPE", "")).upper() != "FIXED_LENGTH":
            return None
        records, size = block.get("FILE_RECORDS"), block.get("RECORD_BYTES")
        if isinstance(records, int) and isinstance(size, int):
            return records * size
    return None

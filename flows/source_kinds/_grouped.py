"""Products made of files found by a listing (an HTTP directory index, an S3 prefix).

Listings know files, not products. Files are grouped into products by folder and stem
(``DTM_MAP_02_…SC.img`` + ``.lbl``; ``WAC_GLD100_….IMG`` + ``.xml``), and a product starts
from its label, chosen by suffix in the registry's order (by default a PDS4 ``.xml``, else a
PDS3 ``.lbl``), else from its first file (an attached PDS3 label, a GeoTIFF). A PDS4 label
is read before the download, so that the ``file_size`` and ``md5_checksum`` it declares are
verified; it may also name files the listing lacks (they are fetched from beside the label,
and a 404 quarantines the product).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from lxml import etree

from lunarchive.flows.source_kinds._base import (
    MAX_LABEL_BYTES,
    KindContext,
    PlannedFile,
    ProductPlan,
    selected,
    write_staged,
)
from lunarchive.processing.labels import parse_label_bytes
from lunarchive.schemas.errors import ProductRejected
from lunarchive.schemas.sources import ListedFile, UpstreamEntry

__all__ = ["describe_group", "group_entries"]


def _split(name: str, suffixes: tuple[str, ...]) -> tuple[str, str] | None:
    """(stem, suffix) for a file whose name ends in one of ``suffixes`` (any case)."""
    lower = name.lower()
    for suffix in sorted(suffixes, key=len, reverse=True):
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return None


def _label(members: list[tuple[str, ListedFile]], order: tuple[str, ...]) -> ListedFile:
    for wanted in order:
        for suffix, listed in members:
            if suffix == wanted:
                return listed
    return sorted(members, key=lambda member: member[1].path)[0][1]


def group_entries(
    ctx: KindContext,
    files: Iterable[tuple[ListedFile, str]],
    suffixes: tuple[str, ...],
    *,
    labels: tuple[str, ...],
    scheme: str,
) -> tuple[UpstreamEntry, ...]:
    """One entry per selected product; ``files`` pairs each file with its change signal."""
    groups: dict[tuple[str, str], list[tuple[str, ListedFile, str]]] = {}
    for listed, signal in files:
        path = PurePosixPath(listed.path)
        split = _split(path.name, suffixes)
        if split is None:
            continue
        stem, suffix = split
        groups.setdefault((str(path.parent), stem.lower()), []).append((suffix, listed, signal))
    entries = []
    for members in groups.values():
        label = _label([(suffix, listed) for suffix, listed, _ in members], labels)
        if not selected(ctx.spec, label.path):
            continue
        text = "\n".join(
            f"{listed.path}\t{signal}" for _, listed, signal in sorted(members, key=_by_path)
        )
        entries.append(
            UpstreamEntry(
                product_id=_split(PurePosixPath(label.path).name, suffixes)[0],  # type: ignore[index]
                fingerprint=f"{scheme}:" + hashlib.sha256(text.encode()).hexdigest()[:32],
                path=label.path,
                files=tuple(listed for _, listed, _ in sorted(members, key=_by_path)),
            )
        )
    return tuple(sorted(entries, key=lambda entry: (entry.product_id, entry.path or "")))


def _by_path(member: tuple[str, ListedFile, str]) -> str:
    return member[1].path


def describe_group(ctx: KindContext, entry: UpstreamEntry, folder: Path) -> ProductPlan:
    """The product's files, with what the listing and (for PDS4) its label declare."""
    label_path = entry.path or entry.files[0].path
    label = PurePosixPath(label_path).name
    planned = {
        PurePosixPath(listed.path).name: PlannedFile(
            PurePosixPath(listed.path).name, ctx.url(listed.path), listed.size, listed.md5
        )
        for listed in entry.files
    }
    if label.lower().endswith(".xml"):
        url = ctx.url(label_path)
        body = ctx.fetcher.read(url, limit=MAX_LABEL_BYTES).body or b""
        write_staged(folder, label, body)
        beside = url.rsplit("/", 1)[0] + "/"
        for name, size, md5 in declared_files(body, where=url):
            if name == label:
                continue
            listed = planned.get(name)
            planned[name] = PlannedFile(
                name,
                listed.url if listed else beside + name,
                size if size is not None else (listed.size if listed else None),
                md5 or (listed.md5 if listed else None),
            )
        planned[label] = PlannedFile(label, url, len(body), staged=True)
    return ProductPlan(
        label, tuple(planned[name] for name in sorted(planned)), check_identity=False
    )


def declared_files(body: bytes, *, where: str) -> list[tuple[str, int | None, str | None]]:
    """(file_name, file_size, md5_checksum) of every ``File`` a PDS4 label describes.

    Only these are needed before the download; the whole label is read by the product
    reader once the files are here.
    """
    root = parse_label_bytes(body, name=where)
    found = []
    for element in root.iter():
        if not isinstance(element.tag, str) or etree.QName(element).localname != "File":
            continue
        values = {
            etree.QName(child).localname: (child.text or "").strip()
            for child in element
            if isinstance(child.tag, str)
        }
        name = values.get("file_name", "")
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise ProductRejected(f"{where}: File/file_name {name!r} is not a bare file name")
        size = values.get("file_size")
        found.append(
            (
                name,
                int(size) if size and size.isdigit() else None,
                values.get("md5_checksum") or None,
            )
        )
    return found

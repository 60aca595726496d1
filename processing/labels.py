"""PDS4 label facts the pipeline needs, read with a hardened XML parser.

Labels are untrusted input (RELIABILITY.md R10): no DTD, no entities, no network, no huge
trees, and any DOCTYPE is refused outright.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from lxml import etree

from lunarchive.schemas.errors import ProductRejected

__all__ = ["MAX_LABEL_BYTES", "label_time_range", "parse_label"]

MAX_LABEL_BYTES = 16 * 1024 * 1024
_PDS = "{http://pds.nasa.gov/pds4/pds/v1}"
_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"


def parse_label(path: Path, *, max_bytes: int = MAX_LABEL_BYTES) -> etree._Element:
    """The label's root element; refuses oversized labels, DOCTYPEs and entities."""
    size = path.stat().st_size
    if size > max_bytes:
        raise ProductRejected(f"{path.name}: label is {size} bytes, over the {max_bytes} limit")
    data = path.read_bytes()
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        dtd_validation=False,
    )
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise ProductRejected(f"{path.name}: not well-formed XML: {exc}") from None
    if getattr(root.getroottree().docinfo, "doctype", None):
        raise ProductRejected(f"{path.name}: DOCTYPE declarations are refused in labels")
    return root


def label_time_range(path: Path) -> tuple[datetime | None, datetime | None]:
    """``Time_Coordinates`` start and stop as UTC datetimes (None when nil or absent)."""
    root = parse_label(path)
    found = root.find(f".//{_PDS}Time_Coordinates")
    if found is None:
        return None, None
    return _when(found.find(f"{_PDS}start_date_time")), _when(found.find(f"{_PDS}stop_date_time"))


def _when(element: etree._Element | None) -> datetime | None:
    if element is None or element.get(_NIL) == "true" or not (element.text or "").strip():
        return None
    text = (element.text or "").strip()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ProductRejected(f"{element.tag}: {text!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

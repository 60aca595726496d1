"""PDS4 label facts the pipeline needs, read with a hardened XML parser.

Labels are untrusted input (RELIABILITY.md R10): no DTD, no entities, no network, no huge
trees, and any DOCTYPE is refused outright. The label is read with a byte limit before it
is parsed, so an endless or huge file never reaches the parser.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from lxml import etree

from lunarchive.schemas.errors import ProductRejected

__all__ = [
    "MAX_LABEL_BYTES",
    "label_time_range",
    "parse_label",
    "parse_label_bytes",
    "read_label_bytes",
    "time_range",
]

MAX_LABEL_BYTES: Final = 16 * 1024 * 1024
_PDS: Final = "{http://pds.nasa.gov/pds4/pds/v1}"
_NIL: Final = "{http://www.w3.org/2001/XMLSchema-instance}nil"
# Refused before parsing, when the label is in an ASCII-compatible encoding; the parsed
# tree's DOCTYPE is checked as well, for every other encoding.
_DTD_MARKERS: Final = (b"<!DOCTYPE", b"<!ENTITY")


def read_label_bytes(path: Path, *, max_bytes: int = MAX_LABEL_BYTES) -> bytes:
    """The label's bytes, refused when there are more than ``max_bytes`` of them.

    The read itself is bounded, so a file that grows (or a FIFO) cannot exhaust memory.
    """
    with path.open("rb") as stream:
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ProductRejected(
            f"{path.name}: label is over the {max_bytes}-byte limit (rule: labels are bounded)"
        )
    return data


def parse_label_bytes(data: bytes, *, name: str) -> etree._Element:
    """The root element of a label's bytes; refuses DOCTYPEs, entities and malformed XML.

    ``name`` names the label in errors. No DTD is loaded, no entity is expanded, nothing is
    fetched over the network (``xsi:schemaLocation`` is never followed), and libxml2's
    default depth and text-size limits stay on.
    """
    upper = data.upper()
    if any(marker in upper for marker in _DTD_MARKERS):
        raise ProductRejected(
            f"{name}: DOCTYPE or ENTITY declaration (rule: DTDs and entities are refused in labels)"
        )
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        dtd_validation=False,
        remove_comments=True,
    )
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise ProductRejected(f"{name}: not well-formed XML: {exc}") from None
    docinfo = root.getroottree().docinfo
    if getattr(docinfo, "doctype", None) or getattr(docinfo, "internalDTD", None) is not None:
        raise ProductRejected(
            f"{name}: DOCTYPE declaration (rule: DTDs and entities are refused in labels)"
        )
    return root


def parse_label(path: Path, *, max_bytes: int = MAX_LABEL_BYTES) -> etree._Element:
    """The label's root element; refuses oversized labels, DOCTYPEs and entities."""
    return parse_label_bytes(read_label_bytes(path, max_bytes=max_bytes), name=path.name)


def label_time_range(path: Path) -> tuple[datetime | None, datetime | None]:
    """``Time_Coordinates`` start and stop as UTC datetimes (None when nil or absent)."""
    return time_range(parse_label(path), where=path.name)


def time_range(root: etree._Element, *, where: str) -> tuple[datetime | None, datetime | None]:
    """``Time_Coordinates`` start and stop of a parsed label (None when nil or absent)."""
    found = root.find(f".//{_PDS}Time_Coordinates")
    if found is None:
        return None, None
    start = _when(found.find(f"{_PDS}start_date_time"), where=where)
    stop = _when(found.find(f"{_PDS}stop_date_time"), where=where)
    return start, stop


def _when(element: etree._Element | None, *, where: str) -> datetime | None:
    if element is None or element.get(_NIL) == "true" or not (element.text or "").strip():
        return None
    text = (element.text or "").strip()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        tag = etree.QName(element).localname
        raise ProductRejected(
            f"{where}, Time_Coordinates/{tag}: {text!r} (rule: times are ISO 8601)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

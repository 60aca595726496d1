"""What a TIFF file's first image directory says, read without GDAL and without pixels.

:func:`first_image` reads the directory once and gives (:class:`FirstImage`):

* ``geokeys``: the GeoTIFF keys, as raw bytes: what GDAL builds a GeoTIFF's CRS from.
  GDAL builds a lunar GeoTIFF's CRS by looking its citation (``IAU_2015:30100``) up in PROJ's
  database: 5 to 10 ms a file, serialised inside GDAL and PROJ (threads building at once gain
  nothing, measured), and the same work again for every tile of a map. Two files whose
  GeoTIFF keys are the same bytes get the same CRS from GDAL, so the keys identify a CRS
  already built.
* ``data_end``: where the image's last stored block ends, from its tile or strip offsets
  and byte counts: a file shorter than that is cut short, whichever block it cut.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

import numpy as np

__all__ = ["FirstImage", "first_image"]

_GEOKEY_TAGS: Final = (34735, 34736, 34737)  # GeoKeyDirectory, GeoDoubleParams, GeoAsciiParams
_TYPE_BYTES: Final = {
    1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
    16: 8, 17: 8, 18: 8,
}  # fmt: skip
"""Bytes per value of each TIFF field type (BYTE … IFD8)."""
_MAX_ENTRIES: Final = 4096  # more entries than any real first image has: not a TIFF
_BLOCK_TAGS: Final = ((324, 325), (273, 279))  # TileOffsets/ByteCounts, StripOffsets/ByteCounts
_BLOCK_TAG_NUMBERS: Final = tuple(tag for pair in _BLOCK_TAGS for tag in pair)
_INTEGERS: Final = {3: "u2", 4: "u4", 16: "u8"}  # SHORT, LONG, LONG8: offsets and counts
_Entry = tuple[int, int, bytes]  # field type, count, the value's bytes


@dataclass(frozen=True)
class FirstImage:
    """What one read of a TIFF's first image directory gives."""

    geokeys: bytes | None
    """The byte order and the GeoTIFF tags, each with its type and count; None without a
    GeoKeyDirectory."""
    data_end: int | None
    """The byte just past the last stored block (tile or strip): the largest offset plus
    byte count of the blocks (a block a sparse file leaves out has neither); None when the
    block tags cannot be parsed."""


def first_image(path: Path) -> FirstImage | None:
    """:class:`FirstImage` of ``path``, from one read of its directory; None when the file
    is not a TIFF or its directory cannot be parsed."""
    found = _first_image(path, _GEOKEY_TAGS + _BLOCK_TAG_NUMBERS)
    if found is None:
        return None
    order, entries = found
    return FirstImage(_geokeys(order, entries), _data_end(order, entries))


def _geokeys(order: str, entries: dict[int, _Entry]) -> bytes | None:
    if _GEOKEY_TAGS[0] not in entries:
        return None
    tags = b"".join(
        struct.pack(">H", tag) + struct.pack(order + "HQ", kind, count) + data
        for tag, (kind, count, data) in sorted(entries.items())
        if tag in _GEOKEY_TAGS
    )
    return {"<": b"II", ">": b"MM"}[order] + tags


def _data_end(order: str, entries: dict[int, _Entry]) -> int | None:
    for offsets_tag, counts_tag in _BLOCK_TAGS:
        if offsets_tag in entries and counts_tag in entries:
            offsets = _integers(order, entries[offsets_tag])
            counts = _integers(order, entries[counts_tag])
            if offsets is None or counts is None or offsets.shape != counts.shape:
                return None
            stored = counts > 0
            return int((offsets[stored] + counts[stored]).max(initial=0))
    return None


def _integers(order: str, entry: _Entry) -> np.ndarray | None:
    kind, count, data = entry
    code = _INTEGERS.get(kind)
    if code is None:
        return None
    return np.frombuffer(data, dtype=order + code, count=count).astype(np.uint64)


def _first_image(path: Path, tags: tuple[int, ...]) -> tuple[str, dict[int, _Entry]] | None:
    """The byte order (``<`` or ``>``) and the ``tags`` the first image directory holds."""
    try:
        with path.open("rb") as file:
            return _read_first_image(file, tags)
    except (OSError, struct.error, ValueError, OverflowError):
        return None


def _read_first_image(
    file: BinaryIO, tags: tuple[int, ...]
) -> tuple[str, dict[int, _Entry]] | None:
    header = file.read(16)
    order = {b"II": "<", b"MM": ">"}.get(header[:2])
    if order is None:
        return None
    (version,) = struct.unpack(order + "H", header[2:4])
    if version == 42:  # classic TIFF: 32-bit offsets and counts
        (first,) = struct.unpack(order + "I", header[4:8])
        count_format, entry_format, entry_size, inline = "H", "HHII", 12, 4
    elif version == 43:  # BigTIFF: 64-bit
        (first,) = struct.unpack(order + "Q", header[8:16])
        count_format, entry_format, entry_size, inline = "Q", "HHQQ", 20, 8
    else:
        return None
    file_size = os.fstat(file.fileno()).st_size
    file.seek(first)
    count_size = struct.calcsize(count_format)
    (entries,) = struct.unpack(order + count_format, file.read(count_size))
    if entries > _MAX_ENTRIES:
        return None
    table = file.read(entries * entry_size)
    found: dict[int, _Entry] = {}
    for i in range(entries):
        tag, kind, count, value = struct.unpack_from(order + entry_format, table, i * entry_size)
        if tag not in tags:
            continue
        size = _TYPE_BYTES.get(kind, 0) * count
        if size <= inline:  # the value is in the entry itself
            data = table[i * entry_size + entry_size - inline :][:size]
        elif value + size > file_size:  # past the end: cut short, or a count no file holds
            return None
        else:
            file.seek(value)
            data = file.read(size)
            if len(data) != size:
                return None
        found[tag] = (kind, count, data)
    return order, found

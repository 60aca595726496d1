"""The GeoTIFF keys of a TIFF file, as raw bytes: what GDAL builds a GeoTIFF's CRS from.

GDAL builds a lunar GeoTIFF's CRS by looking its citation (``IAU_2015:30100``) up in PROJ's
database: 5 to 10 ms a file, serialised inside GDAL and PROJ (threads building at once gain
nothing, measured), and the same work again for every tile of a map. Two files whose GeoTIFF
keys are the same bytes get the same CRS from GDAL, so the keys identify a CRS already built.
Only the first image's three GeoTIFF tags are read (a few small reads, no pixels).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO, Final

__all__ = ["geokeys"]

_GEOKEY_TAGS: Final = (34735, 34736, 34737)  # GeoKeyDirectory, GeoDoubleParams, GeoAsciiParams
_TYPE_BYTES: Final = {
    1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
    16: 8, 17: 8, 18: 8,
}  # fmt: skip
"""Bytes per value of each TIFF field type (BYTE … IFD8)."""
_MAX_ENTRIES: Final = 4096  # more entries than any real first image has: not a TIFF


def geokeys(path: Path) -> bytes | None:
    """The byte order and the GeoTIFF tags of ``path``'s first image, each with its type and
    count; None when the file is not a TIFF, has no GeoKeyDirectory or cannot be parsed."""
    try:
        with path.open("rb") as file:
            return _geokeys(file)
    except (OSError, struct.error, ValueError):
        return None


def _geokeys(file: BinaryIO) -> bytes | None:
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
    file.seek(first)
    count_size = struct.calcsize(count_format)
    (entries,) = struct.unpack(order + count_format, file.read(count_size))
    if entries > _MAX_ENTRIES:
        return None
    table = file.read(entries * entry_size)
    found: dict[int, bytes] = {}
    for i in range(entries):
        tag, kind, count, value = struct.unpack_from(order + entry_format, table, i * entry_size)
        if tag not in _GEOKEY_TAGS:
            continue
        size = _TYPE_BYTES.get(kind, 0) * count
        if size <= inline:  # the value is in the entry itself
            data = table[i * entry_size + entry_size - inline :][:size]
        else:
            file.seek(value)
            data = file.read(size)
            if len(data) != size:
                return None
        found[tag] = struct.pack(order + "HQ", kind, count) + data
    if _GEOKEY_TAGS[0] not in found:
        return None
    return header[:2] + b"".join(struct.pack(">H", t) + found[t] for t in sorted(found))

"""PDS3 products to :class:`ProductRecord`, always through their label.

Attached labels (the label at the start of the ``.img``; ``^IMAGE`` a record number or a
``<BYTES>`` offset) and detached ones (a ``.lbl`` whose ``^IMAGE`` names a file beside it,
with an optional record or ``<BYTES>`` offset) are both read. No pixel is read: the record
says where the ``IMAGE`` object lies and how to decode it, once it is known to fit its file.

Decisions worth knowing:

* ``OFFSET`` equal to the Moon's radius (LOLA's 1 737 400 m) goes to ``radius_offset_m`` and
  ``offset`` stays 0, so that stored × ``SCALING_FACTOR`` stays a *height* above the reference
  sphere, as the LOLA label's own note says (LUNAR-DATA.md §2.3 pitfall 5).
* 8-bit integers are ``uint8`` whatever their ``SAMPLE_TYPE`` says (LROC EDRs label raw
  counts 0..255 ``LSB_INTEGER``); GDAL does the same.
* ``nodata`` is the label's ``MISSING_CONSTANT`` (or ``NULL``/``CORE_NULL``) only: nothing is
  assumed when the label declares none (GDAL assumes −32768 for 16-bit data).
* Map-projected images: the pixel edge of the upper-left pixel is at
  x = −(``SAMPLE_PROJECTION_OFFSET`` + 0.5) × ``MAP_SCALE``,
  y = (``LINE_PROJECTION_OFFSET`` + 0.5) × ``MAP_SCALE``, as GDAL's PDS driver reads it.
  Images without ``IMAGE_MAP_PROJECTION`` (LROC, Kaguya TC level 2) get no CRS and no
  transform, and a footprint only when the label gives corner or bounding coordinates.
* Only the ``IMAGE`` object is described; other pointed objects (``^GEOMETRIC_DATA_ALTITUDE``
  backplanes, ``^TABLE``, ``^HEADER``) are not part of the record.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import pydantic

from lunarchive.processing import _pvl
from lunarchive.processing._pvl import get, integer, number, text
from lunarchive.processing.arrays import check_array_fits
from lunarchive.schemas.errors import ProductRejected
from lunarchive.schemas.product import ArrayLayout, ByteOrder, Footprint, ProductFile, ProductRecord

__all__ = ["read_pds3"]

# SAMPLE_TYPE -> (numpy kind: i signed, u unsigned, f IEEE float; byte order)
_SAMPLE_TYPES: Final[dict[str, tuple[str, ByteOrder]]] = {
    **dict.fromkeys(("MSB_INTEGER", "SUN_INTEGER", "MAC_INTEGER", "INTEGER"), ("i", "big")),
    **dict.fromkeys(("LSB_INTEGER", "PC_INTEGER", "VAX_INTEGER"), ("i", "little")),
    **dict.fromkeys(
        ("MSB_UNSIGNED_INTEGER", "UNSIGNED_INTEGER", "SUN_UNSIGNED_INTEGER"), ("u", "big")
    ),
    **dict.fromkeys(("MAC_UNSIGNED_INTEGER",), ("u", "big")),
    **dict.fromkeys(
        ("LSB_UNSIGNED_INTEGER", "PC_UNSIGNED_INTEGER", "VAX_UNSIGNED_INTEGER"), ("u", "little")
    ),
    **dict.fromkeys(("IEEE_REAL", "SUN_REAL", "MAC_REAL", "REAL", "FLOAT"), ("f", "big")),
    **dict.fromkeys(("PC_REAL",), ("f", "little")),
}
_BITS: Final = {"i": (8, 16, 32, 64), "u": (8, 16, 32, 64), "f": (32, 64)}
_BAND_STORAGE: Final = {
    "BAND_SEQUENTIAL": ("band", "line", "sample"),
    "LINE_INTERLEAVED": ("line", "band", "sample"),
    "SAMPLE_INTERLEAVED": ("line", "sample", "band"),
}
_CYLINDRICAL: Final = {"SIMPLE CYLINDRICAL", "EQUIRECTANGULAR", "EQUIDISTANT"}
_CODMAC_LEVELS: Final = {"1": "Raw", "2": "Raw", "3": "Calibrated", "4": "Derived", "5": "Derived"}
_CORNERS: Final = ("UPPER_LEFT", "UPPER_RIGHT", "LOWER_RIGHT", "LOWER_LEFT")


def read_pds3(label: Path) -> ProductRecord:
    """The record of the PDS3 product whose label is ``label`` (a ``.lbl`` or an ``.img``).

    Raises :class:`ProductRejected` for a label that does not parse, a target other than the
    Moon, an ``IMAGE`` that does not fit its file, a CRS off the Moon sphere, or a pointer to
    a file that is not beside the label.
    """
    where = label.name
    label_text = _pvl.read_label_text(label)
    module = _pvl.parse_label(label_text, where=where)
    _check_target(module, where=where)
    _refuse_compressed_copy(module, where=where)
    block, image = _image_object(module, where=where)
    data_file, offset = _image_location(label, module, block, where=where)
    layout = _image_layout(image, file=data_file.name, offset=offset, where=f"{where}, IMAGE")
    check_array_fits(layout, file_size=data_file.stat().st_size, where=f"{where}, IMAGE")
    projection = _find_object(module, "IMAGE_MAP_PROJECTION")
    facts = None
    if projection is not None:
        facts = _map_facts(projection, layout, where=f"{where}, IMAGE_MAP_PROJECTION")
    try:
        return ProductRecord(
            format="PDS3",
            product_id=_product_id(module, label),
            version=text(get(module, "PRODUCT_VERSION_ID")),
            mission=text(get(module, "MISSION_NAME")) or text(get(module, "INSTRUMENT_HOST_NAME")),
            instrument=text(get(module, "INSTRUMENT_ID")) or text(get(module, "INSTRUMENT_NAME")),
            product_type=text(get(module, "PRODUCT_TYPE")),
            processing_level=_processing_level(module),
            start=_pvl.timestamp(get(module, "START_TIME"), where=where, key="START_TIME"),
            stop=_pvl.timestamp(get(module, "STOP_TIME"), where=where, key="STOP_TIME"),
            footprint=facts.footprint if facts else _label_footprint(module, where=where),
            crs=facts.crs if facts else None,
            transform=facts.transform if facts else None,
            resolution_m=facts.resolution_m if facts else None,
            files=_product_files(label, data_file, module),
            arrays=(layout,),
            label_file=label.name,
            label_text=label_text,
        )
    except pydantic.ValidationError as exc:
        raise ProductRejected(f"{where}: {_first_error(exc)}") from None


def _refuse_compressed_copy(module: Any, *, where: str) -> None:
    """A ``COMPRESSED_FILE`` label (LOLA's ``LDEM_4_JP2.LBL``) describes two encodings at once.

    Its ``^IMAGE`` names the uncompressed file while its map projection may describe the
    compressed copy: LDEM_4_JP2.LBL says CENTER_LONGITUDE 0, where LDEM_4.IMG's own label
    says 180, a 180° shift (GDAL's drivers disagree on it too). The uncompressed product's
    own label is unambiguous, so that is the one to read.
    """
    compressed = _find_object(module, "COMPRESSED_FILE")
    if compressed is None:
        return
    copy = text(get(compressed, "FILE_NAME")) or "the compressed file"
    original = text(get(_find_object(module, "UNCOMPRESSED_FILE") or {}, "FILE_NAME"))
    raise ProductRejected(
        f"{where}, COMPRESSED_FILE: a label for the compressed copy {copy}, whose map "
        f"projection need not fit {original or 'the uncompressed file'} (rule: read a "
        "product through its own label; for LOLA, the .LBL beside the .IMG)"
    )


def _check_target(module: Any, *, where: str) -> None:
    target = text(get(module, "TARGET_NAME"))
    if target is None or target.upper() != "MOON":
        raise ProductRejected(
            f"{where}, TARGET_NAME: {get(module, 'TARGET_NAME')!r} (rule: the target is the Moon)"
        )


def _blocks(module: Any) -> Iterator[Any]:
    """The label itself, then its objects one level down (``UNCOMPRESSED_FILE`` ...)."""
    yield module
    yield from (value for value in module.values() if isinstance(value, Mapping))


def _image_object(module: Any, *, where: str) -> tuple[Any, Any]:
    """``(block holding the IMAGE object, the IMAGE object)``."""
    for block in _blocks(module):
        image = get(block, "IMAGE")
        if isinstance(image, Mapping):
            return block, image
    raise ProductRejected(f"{where}: no IMAGE object (rule: a PDS3 image product has one)")


def _find_object(module: Any, name: str) -> Any:
    return next(
        (obj for block in _blocks(module) if isinstance(obj := get(block, name), Mapping)), None
    )


def _image_location(label: Path, module: Any, block: Any, *, where: str) -> tuple[Path, int]:
    """The file holding the image and the byte offset of its first sample."""
    key = "^IMAGE"
    pointer = get(block, key) if get(block, key) is not None else get(module, key)
    if pointer is None:
        raise ProductRejected(f"{where}: no ^IMAGE pointer (rule: the label locates the image)")
    name, position = label.name, pointer
    if isinstance(pointer, str):
        name, position = pointer, 1
    elif isinstance(pointer, list | tuple) and not isinstance(pointer, _pvl.Quantity):
        if len(pointer) != 2 or not isinstance(pointer[0], str):
            raise ProductRejected(f"{where}, {key}: {pointer!r} is not (file, offset)")
        name, position = pointer
    record_bytes = get(block, "RECORD_BYTES") or get(module, "RECORD_BYTES")
    offset = _pointer_offset(position, record_bytes, where=f"{where}, {key}")
    if name == label.name:
        return label, offset
    return _pvl.find_sibling(label, name, where=where, key=key), offset


def _pointer_offset(position: Any, record_bytes: Any, *, where: str) -> int:
    """A 1-based record number, or a 1-based ``<BYTES>`` position, as a 0-based byte offset."""
    units = None
    if isinstance(position, _pvl.Quantity):
        position, units = position.value, str(position.units).upper()
    if isinstance(position, bool) or not isinstance(position, int) or position < 1:
        raise ProductRejected(
            f"{where}: {position!r} is not a position from 1 (rule: PDS3 pointers)"
        )
    if units is not None and units.startswith("BYTE"):
        return position - 1
    if position == 1:
        return 0
    if isinstance(record_bytes, bool) or not isinstance(record_bytes, int) or record_bytes < 1:
        raise ProductRejected(
            f"{where}: record {position} but RECORD_BYTES is {record_bytes!r} "
            "(rule: a record pointer needs a positive RECORD_BYTES)"
        )
    return (position - 1) * record_bytes


def _image_layout(image: Any, *, file: str, offset: int, where: str) -> ArrayLayout:
    sizes = {
        key: integer(get(image, key), where=where, key=key) for key in ("LINES", "LINE_SAMPLES")
    }
    sizes["BANDS"] = integer(get(image, "BANDS"), where=where, key="BANDS", default=1)
    for key, size in sizes.items():
        if size < 1:
            raise ProductRejected(f"{where}, {key}: {size} (rule: axis sizes are positive)")
    for key in ("LINE_PREFIX_BYTES", "LINE_SUFFIX_BYTES"):
        if integer(get(image, key), where=where, key=key, default=0) != 0:
            raise ProductRejected(
                f"{where}, {key}: not 0 (rule: only images without line prefixes or suffixes "
                "can be described as one array)"
            )
    dtype, byte_order = _sample_dtype(image, where=where)
    shape, axes = _shape(image, sizes, where=where)
    offset_value = number(get(image, "OFFSET"), where=where, key="OFFSET", default=0.0)
    assert offset_value is not None
    value_offset, radius_offset = _pvl.split_radius_offset(offset_value)
    scale = number(get(image, "SCALING_FACTOR"), where=where, key="SCALING_FACTOR", default=1.0)
    try:
        return ArrayLayout(
            name=text(get(image, "NAME")) or "IMAGE",
            file=file,
            offset_bytes=offset,
            shape=shape,
            axes=axes,
            dtype=dtype,
            byte_order=byte_order,
            scale=scale if scale is not None else 1.0,
            offset=value_offset,
            nodata=_nodata(image, dtype, byte_order, where=where),
            unit=text(get(image, "UNIT")),
            radius_offset_m=radius_offset,
        )
    except pydantic.ValidationError as exc:
        raise ProductRejected(f"{where}: {_first_error(exc)}") from None


def _sample_dtype(image: Any, *, where: str) -> tuple[str, ByteOrder]:
    sample_type = (text(get(image, "SAMPLE_TYPE")) or "").upper().replace(" ", "_")
    bits = integer(get(image, "SAMPLE_BITS"), where=where, key="SAMPLE_BITS")
    if sample_type not in _SAMPLE_TYPES:
        raise ProductRejected(
            f"{where}, SAMPLE_TYPE: {sample_type or None!r} is not a supported type "
            f"(rule: one of {', '.join(sorted(_SAMPLE_TYPES))})"
        )
    kind, byte_order = _SAMPLE_TYPES[sample_type]
    if bits not in _BITS[kind]:
        raise ProductRejected(
            f"{where}, SAMPLE_BITS: {bits} for {sample_type} (rule: one of {_BITS[kind]})"
        )
    if bits == 8:
        return "uint8", byte_order  # as GDAL: 8-bit PDS3 samples are unsigned bytes
    return {"i": "int", "u": "uint", "f": "float"}[kind] + str(bits), byte_order


def _shape(
    image: Any, sizes: dict[str, int], *, where: str
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    if sizes["BANDS"] == 1:
        return (sizes["LINES"], sizes["LINE_SAMPLES"]), ("line", "sample")
    storage = (text(get(image, "BAND_STORAGE_TYPE")) or "BAND_SEQUENTIAL").upper()
    if storage not in _BAND_STORAGE:
        raise ProductRejected(
            f"{where}, BAND_STORAGE_TYPE: {storage!r} (rule: one of {', '.join(_BAND_STORAGE)})"
        )
    axes = _BAND_STORAGE[storage]
    by_axis = {"band": sizes["BANDS"], "line": sizes["LINES"], "sample": sizes["LINE_SAMPLES"]}
    return tuple(by_axis[axis] for axis in axes), axes


def _nodata(image: Any, dtype: str, byte_order: ByteOrder, *, where: str) -> float | None:
    """``MISSING_CONSTANT`` (else ``NULL``, ``CORE_NULL``); a hex bit pattern for floats.

    Float products often give it as ``16#FF7FFFFB#``, which PVL reads as an integer: the
    bits of a float of the array's size, not a number.
    """
    for key in ("MISSING_CONSTANT", "NULL", "CORE_NULL"):
        raw = get(image, key)
        if raw is None or (isinstance(raw, str) and text(raw) is None):
            continue
        value = number(raw, where=where, key=key)
        assert value is not None
        if dtype.startswith("float") and isinstance(raw, int) and abs(raw) >= 2**24:
            size = int(dtype.removeprefix("float")) // 8
            if not 0 <= raw < 2 ** (8 * size):
                raise ProductRejected(f"{where}, {key}: {raw} is not a {dtype} bit pattern")
            fmt = {4: "f", 8: "d"}[size]
            value = struct.unpack(f">{fmt}", raw.to_bytes(size, "big"))[0]
        return value
    return None


def _map_facts(projection: Any, layout: ArrayLayout, *, where: str) -> _pvl.MapFacts:
    kind = (text(get(projection, "MAP_PROJECTION_TYPE")) or "").upper().replace("_", " ")
    direction = (text(get(projection, "POSITIVE_LONGITUDE_DIRECTION")) or "EAST").upper()
    if direction != "EAST":
        raise ProductRejected(
            f"{where}, POSITIVE_LONGITUDE_DIRECTION: {direction} (rule: only east-positive "
            "map projections are read)"
        )
    a = _required(projection, "A_AXIS_RADIUS", where=where, km=True)
    c = number(get(projection, "C_AXIS_RADIUS"), where=where, key="C_AXIS_RADIUS", km=True)
    center_lat = number(get(projection, "CENTER_LATITUDE"), where=where, key="CENTER_LATITUDE")
    center_lon = number(get(projection, "CENTER_LONGITUDE"), where=where, key="CENTER_LONGITUDE")
    lat0, lon0 = center_lat or 0.0, center_lon or 0.0
    body = f"+a={a!r} +b={(c or a)!r}"
    if kind == "SIMPLE CYLINDRICAL":
        proj = f"+proj=eqc +lat_ts=0 +lat_0=0 +lon_0={lon0!r} {body}"
    elif kind in _CYLINDRICAL:
        proj = f"+proj=eqc +lat_ts={lat0!r} +lat_0=0 +lon_0={lon0!r} {body}"
    elif kind == "POLAR STEREOGRAPHIC" or (kind == "STEREOGRAPHIC" and abs(lat0) == 90.0):
        pole = math.copysign(90.0, lat0)
        proj = f"+proj=stere +lat_0={pole!r} +lat_ts={lat0 or pole!r} +lon_0={lon0!r} {body}"
    elif kind == "SINUSOIDAL":
        proj = f"+proj=sinu +lon_0={lon0!r} {body}"
    else:
        raise ProductRejected(
            f"{where}, MAP_PROJECTION_TYPE: {kind or None!r} is not supported (rule: simple "
            "cylindrical, equirectangular, polar stereographic or sinusoidal)"
        )
    crs = _pvl.moon_crs(proj, where=where)
    scale = _map_scale(projection, radius=a, where=where)
    line_offset = _required(projection, "LINE_PROJECTION_OFFSET", where=where)
    sample_offset = _required(projection, "SAMPLE_PROJECTION_OFFSET", where=where)
    transform = (
        scale,
        0.0,
        -(sample_offset + 0.5) * scale,
        0.0,
        -scale,
        (line_offset + 0.5) * scale,
    )
    lines, samples = (layout.shape[layout.axes.index(axis)] for axis in ("line", "sample"))
    return _pvl.map_facts(crs, transform, width=samples, height=lines, where=where)


def _map_scale(projection: Any, *, radius: float, where: str) -> float:
    """``MAP_SCALE`` in m/pixel, else one degree of the sphere over ``MAP_RESOLUTION``."""
    scale = number(get(projection, "MAP_SCALE"), where=where, key="MAP_SCALE", km=True)
    if scale is None:
        resolution = _required(projection, "MAP_RESOLUTION", where=where)
        scale = 2.0 * math.pi * radius / 360.0 / resolution if resolution > 0 else 0.0
    if scale <= 0.0:
        raise ProductRejected(f"{where}, MAP_SCALE: {scale} (rule: pixels have a positive size)")
    return scale


def _required(block: Any, key: str, *, where: str, km: bool = False) -> float:
    value = number(get(block, key), where=where, key=key, km=km)
    if value is None:
        raise ProductRejected(f"{where}, {key}: missing (rule: it is required)")
    return value


def _label_footprint(module: Any, *, where: str) -> Footprint | None:
    """A footprint from the label's corner coordinates, else its bounding coordinates."""
    corners = [
        (get(module, f"{corner}_LONGITUDE"), get(module, f"{corner}_LATITUDE"))
        for corner in _CORNERS
    ]
    if all(lon is not None and lat is not None for lon, lat in corners):
        points = [
            (_coordinate(lon, where, "LONGITUDE"), _coordinate(lat, where, "LATITUDE"))
            for lon, lat in corners
        ]
        return _pvl.corner_footprint(points)
    keys = (
        "WESTERNMOST_LONGITUDE",
        "MINIMUM_LATITUDE",
        "EASTERNMOST_LONGITUDE",
        "MAXIMUM_LATITUDE",
    )
    values = [get(module, key) for key in keys]
    if all(v is not None for v in values):
        west, south, east, north = (
            _coordinate(v, where, k) for v, k in zip(values, keys, strict=True)
        )
        east = east + 360.0 if east < west else east
        return _pvl.corner_footprint([(west, south), (east, south), (east, north), (west, north)])
    return None


def _coordinate(value: Any, where: str, key: str) -> float:
    result = number(value, where=where, key=key)
    limit = 90.0 if key.endswith("LATITUDE") else 360.0
    if result is None or not -limit <= result <= limit:
        raise ProductRejected(f"{where}, {key}: {value!r} (rule: within ±{limit:g}°)")
    return result


def _product_id(module: Any, label: Path) -> str:
    return text(get(module, "PRODUCT_ID")) or label.stem


def _processing_level(module: Any) -> str | None:
    """From DATA_SET_ID's fourth part, the CODMAC level (e.g. ``LRO-L-LOLA-4-GDR-V1.0``)."""
    parts = (text(get(module, "DATA_SET_ID")) or "").split("-")
    return _CODMAC_LEVELS.get(parts[3]) if len(parts) > 3 else None


def _product_files(label: Path, data_file: Path, module: Any) -> tuple[ProductFile, ...]:
    if data_file == label:
        return (ProductFile(name=label.name, role="data"),)
    files = [
        ProductFile(name=label.name, role="label"),
        ProductFile(name=data_file.name, role="data"),
    ]
    for block in _blocks(module):
        name = text(get(block, "FILE_NAME")) if block is not module else None
        if name is None or name.lower() in {f.name.lower() for f in files}:
            continue
        sibling = label.parent / name
        if not _pvl.is_bad_name(name) and sibling.is_file():
            files.append(ProductFile(name=name, role="other"))
    return tuple(files)


def _first_error(exc: pydantic.ValidationError) -> str:
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"]) or "record"
    return f"{field}: {error['msg']} (rule: the canonical product record)"

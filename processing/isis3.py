"""ISIS3 cubes to :class:`ProductRecord`, from the PVL label at the start of the ``.cub``.

The ``Core`` object says where the pixels are (``StartByte``, 1-based), how they are laid out
(``Format`` ``BandSequential`` or ``Tile``), their size (``Dimensions``) and type (``Pixels``).
The ``Mapping`` group, when there is one, gives the CRS and the grid; a cube without it (a
level-1 cube in camera geometry) gets no CRS, no transform and no footprint: nothing is
invented.

Tile cubes store the image in ``TileSamples`` × ``TileLines`` tiles, padded at the right and
bottom edges. Their :class:`ArrayLayout` still gives the *image* shape and the offset of the
first tile: its pixels are not one array in the file and are read through GDAL's ISIS3
driver. Before that, the whole padded tile grid is checked to lie inside the file.

Pixel values: ``Base`` + ``Multiplier`` × stored value. A ``Base`` equal to the Moon's radius
(LOLA and GLD100 cubes store radius) goes to ``radius_offset_m`` and ``offset`` stays 0, so that
the record describes heights above the 1 737 400 m sphere. ``nodata`` is the ISIS ``Null``
special pixel of the type.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import pydantic

from lunarchive.processing import _pvl
from lunarchive.processing._pvl import get, integer, number, text
from lunarchive.processing.arrays import check_array_fits
from lunarchive.schemas.errors import ProductRejected
from lunarchive.schemas.product import ArrayLayout, ByteOrder, ProductFile, ProductRecord

__all__ = ["read_isis3"]

# ISIS pixel type -> (numpy dtype, the ISIS Null special pixel of that type)
_PIXEL_TYPES: Final = {
    "UNSIGNEDBYTE": ("uint8", 0.0),
    "SIGNEDWORD": ("int16", -32768.0),
    "UNSIGNEDWORD": ("uint16", 0.0),
    "REAL": ("float32", -3.4028226550889045e38),  # bits 0xFF7FFFFB
}
_BYTE_ORDERS: Final[dict[str, ByteOrder]] = {"LSB": "little", "MSB": "big"}
_FORMATS: Final = {"BANDSEQUENTIAL", "TILE"}
_AXES: Final = ("Samples", "Lines", "Bands")


def read_isis3(cube: Path) -> ProductRecord:
    """The record of one ISIS3 cube with an attached label.

    Raises :class:`ProductRejected` for a label that does not parse, a target other than the
    Moon, a pixel grid that does not fit the file, or a map projection off the Moon sphere.
    """
    where = cube.name
    label_text = _pvl.read_label_text(cube)
    label = _pvl.parse_label(label_text, where=where)
    isis_cube = get(label, "IsisCube")
    core = get(isis_cube, "Core")
    if not isinstance(core, Mapping):
        raise ProductRejected(f"{where}: no IsisCube/Core object (rule: an ISIS3 cube has one)")
    if get(core, "^Core") is not None:
        raise ProductRejected(f"{where}, ^Core: detached cube data is not read (rule: attached)")
    instrument, archive = get(isis_cube, "Instrument"), get(isis_cube, "Archive")
    mapping = get(isis_cube, "Mapping")
    _check_target(instrument, archive, mapping, where=where)
    layout = _core_layout(core, file=cube.name, where=f"{where}, Core")
    _check_tiles_fit(core, layout, file_size=cube.stat().st_size, where=f"{where}, Core")
    facts = None
    if isinstance(mapping, Mapping):
        facts = _map_facts(mapping, layout, where=f"{where}, Mapping")
    try:
        return ProductRecord(
            format="ISIS3",
            product_id=cube.stem,
            mission=_first_text((instrument, "SpacecraftName"), (archive, "InstrumentHostName")),
            instrument=_first_text((instrument, "InstrumentId"), (archive, "InstrumentId")),
            start=_pvl.timestamp(get(instrument, "StartTime"), where=where, key="StartTime"),
            stop=_pvl.timestamp(get(instrument, "StopTime"), where=where, key="StopTime"),
            footprint=facts.footprint if facts else None,
            crs=facts.crs if facts else None,
            transform=facts.transform if facts else None,
            resolution_m=facts.resolution_m if facts else None,
            files=(ProductFile(name=cube.name, role="data"),),
            arrays=(layout,),
            label_file=cube.name,
            label_text=label_text,
        )
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "record"
        raise ProductRejected(f"{where}: {field}: {error['msg']}") from None


def _first_text(*candidates: tuple[Any, str]) -> str | None:
    return next((t for block, key in candidates if (t := text(get(block, key)))), None)


def _check_target(instrument: Any, archive: Any, mapping: Any, *, where: str) -> None:
    targets = {
        t.upper()
        for block in (instrument, archive, mapping)
        if (t := text(get(block, "TargetName"))) is not None
    }
    if targets != {"MOON"}:
        raise ProductRejected(
            f"{where}, TargetName: {sorted(targets) or None} (rule: the target is the Moon)"
        )


def _core_layout(core: Any, *, file: str, where: str) -> ArrayLayout:
    dimensions, pixels = get(core, "Dimensions"), get(core, "Pixels")
    sizes = {key: integer(get(dimensions, key), where=where, key=key) for key in _AXES}
    for key, size in sizes.items():
        if size < 1:
            raise ProductRejected(f"{where}, {key}: {size} (rule: axis sizes are positive)")
    start = integer(get(core, "StartByte"), where=where, key="StartByte")
    if start < 1:
        raise ProductRejected(f"{where}, StartByte: {start} (rule: a position from 1)")
    pixel_type = (text(get(pixels, "Type")) or "").upper()
    byte_order = (text(get(pixels, "ByteOrder")) or "").upper()
    if pixel_type not in _PIXEL_TYPES:
        raise ProductRejected(
            f"{where}, Pixels/Type: {pixel_type or None!r} (rule: one of UnsignedByte, "
            "SignedWord, UnsignedWord, Real)"
        )
    if byte_order not in _BYTE_ORDERS:
        raise ProductRejected(
            f"{where}, Pixels/ByteOrder: {byte_order or None!r} (rule: Lsb or Msb)"
        )
    dtype, null = _PIXEL_TYPES[pixel_type]
    base = number(get(pixels, "Base"), where=where, key="Base", default=0.0)
    multiplier = number(get(pixels, "Multiplier"), where=where, key="Multiplier", default=1.0)
    offset, radius_offset = _pvl.split_radius_offset(base if base is not None else 0.0)
    shape: tuple[int, ...] = (sizes["Lines"], sizes["Samples"])
    axes: tuple[str, ...] = ("line", "sample")
    if sizes["Bands"] > 1:
        shape, axes = (sizes["Bands"], *shape), ("band", *axes)
    try:
        return ArrayLayout(
            name="Core",
            file=file,
            offset_bytes=start - 1,
            shape=shape,
            axes=axes,
            dtype=dtype,
            byte_order=_BYTE_ORDERS[byte_order],
            scale=multiplier if multiplier is not None else 1.0,
            offset=offset,
            nodata=null,
            radius_offset_m=radius_offset,
        )
    except pydantic.ValidationError as exc:
        raise ProductRejected(f"{where}: {exc.errors()[0]['msg']}") from None


def _check_tiles_fit(core: Any, layout: ArrayLayout, *, file_size: int, where: str) -> None:
    """Check the stored grid (the padded tiles of a Tile cube) against the file and limit."""
    storage = (text(get(core, "Format")) or "").upper()
    if storage not in _FORMATS:
        raise ProductRejected(
            f"{where}, Format: {storage or None!r} (rule: Tile or BandSequential)"
        )
    if storage == "BANDSEQUENTIAL":
        check_array_fits(layout, file_size=file_size, where=where)
        return
    tile = {
        key: integer(get(core, key), where=where, key=key) for key in ("TileSamples", "TileLines")
    }
    if min(tile.values()) < 1:
        raise ProductRejected(f"{where}, {tile}: (rule: tile sizes are positive)")
    lines, samples = layout.shape[-2:]
    padded = (
        math.ceil(lines / tile["TileLines"]) * tile["TileLines"],
        math.ceil(samples / tile["TileSamples"]) * tile["TileSamples"],
    )
    stored = layout.model_copy(update={"shape": (*layout.shape[:-2], *padded)})
    check_array_fits(stored, file_size=file_size, where=f"{where} (tiles)")


def _map_facts(mapping: Any, layout: ArrayLayout, *, where: str) -> _pvl.MapFacts:
    name = text(get(mapping, "ProjectionName")) or ""
    direction = (text(get(mapping, "LongitudeDirection")) or "PositiveEast").upper()
    if direction != "POSITIVEEAST":
        raise ProductRejected(
            f"{where}, LongitudeDirection: {direction} (rule: only PositiveEast cubes are read)"
        )
    a = _required(mapping, "EquatorialRadius", where=where)
    b = number(get(mapping, "PolarRadius"), where=where, key="PolarRadius", default=a)
    lat0 = number(get(mapping, "CenterLatitude"), where=where, key="CenterLatitude", default=0.0)
    lon0 = _required(mapping, "CenterLongitude", where=where)
    body = f"+a={a!r} +b={b!r}"
    match name.upper():
        case "SIMPLECYLINDRICAL":
            proj = f"+proj=eqc +lat_ts=0 +lat_0=0 +lon_0={lon0!r} {body}"
        case "EQUIRECTANGULAR":
            proj = f"+proj=eqc +lat_ts={lat0!r} +lat_0=0 +lon_0={lon0!r} {body}"
        case "POLARSTEREOGRAPHIC":
            pole = math.copysign(90.0, lat0 or 0.0)
            proj = f"+proj=stere +lat_0={pole!r} +lat_ts={lat0 or pole!r} +lon_0={lon0!r} {body}"
        case "SINUSOIDAL":
            proj = f"+proj=sinu +lon_0={lon0!r} {body}"
        case _:
            raise ProductRejected(
                f"{where}, ProjectionName: {name or None!r} is not supported (rule: "
                "SimpleCylindrical, Equirectangular, PolarStereographic or Sinusoidal)"
            )
    crs = _pvl.moon_crs(proj, where=where)
    resolution = _required(mapping, "PixelResolution", where=where)
    x0 = _required(mapping, "UpperLeftCornerX", where=where)
    y0 = _required(mapping, "UpperLeftCornerY", where=where)
    transform = (resolution, 0.0, x0, 0.0, -resolution, y0)
    lines, samples = layout.shape[-2:]
    return _pvl.map_facts(crs, transform, width=samples, height=lines, where=where)


def _required(block: Any, key: str, *, where: str) -> float:
    value = number(get(block, key), where=where, key=key)
    if value is None:
        raise ProductRejected(f"{where}, {key}: missing (rule: it is required)")
    return value

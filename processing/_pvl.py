"""Helpers shared by the label readers: PVL labels, sibling files, map facts, footprints.

PDS3 and ISIS3 labels are PVL text at the start of a file (attached) or in a file of their own
(detached). Everything here treats the label as untrusted: it is read up to a byte limit,
file names it gives must be bare names beside the label, and every failure becomes one
:class:`ProductRejected` line naming the file, the keyword and the rule.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyproj
import shapely.geometry  # type: ignore[import-untyped]
from shapely.geometry.polygon import orient  # type: ignore[import-untyped]

from lunarchive.processing.crs import (
    MOON_RADIUS_M,
    assert_lunar,
    iau_code,
    lunar_footprint,
    moon_geographic,
)
from lunarchive.schemas.errors import ProductRejected
from lunarchive.schemas.product import CrsInfo, Footprint

with warnings.catch_warnings():
    # pvl 1.3 warns at import when the optional multidict package is absent; it changes
    # nothing for reading labels, and under -W error it would fail every import.
    warnings.filterwarnings("ignore", "The multidict library is not present", ImportWarning)
    import pvl  # type: ignore[import-untyped]

__all__ = [
    "MAX_LABEL_BYTES",
    "MapFacts",
    "Quantity",
    "Transform",
    "corner_footprint",
    "find_sibling",
    "get",
    "integer",
    "is_bad_name",
    "map_facts",
    "moon_crs",
    "number",
    "parse_label",
    "read_label_text",
    "split_radius_offset",
    "text",
    "timestamp",
]

Quantity = pvl.collections.Quantity
"""A PVL value with units, e.g. ``3638 <BYTES>`` (a named tuple ``value, units``)."""

Transform = tuple[float, float, float, float, float, float]
"""An affine geotransform ``a, b, c, d, e, f`` (x = a·col + b·row + c, y = d·col + e·row + f)."""

MAX_LABEL_BYTES: Final = 4 * 1024**2  # a PVL label longer than this is refused
# END alone on its line, or followed by padding and then binary data (no line end).
_END: Final = re.compile(
    rb"^[ \t]*END[ \t]*(?:\r?\n|\r|$|(?=[^\x20-\x7e]))", re.IGNORECASE | re.MULTILINE
)
_NO_VALUE: Final = {"", "N/A", "UNK", "NULL", "NONE", "UNKNOWN"}
_BAD_NAME: Final = re.compile(r"[/\\\x00]|^\.\.?$|^[A-Za-z]:|%2e|%2f|%5c", re.IGNORECASE)
_KM_UNITS: Final = ("km", "kilomet")
_M_UNITS: Final = ("m", "met")
_METHOD_NAMES: Final = (
    ("equidistant cylindrical", "Equirectangular"),
    ("polar stereographic", "Polar Stereographic"),
    ("lambert conic conformal", "Lambert Conformal Conic"),
    ("sinusoidal", "Sinusoidal"),
)


def read_label_text(path: Path, *, max_bytes: int = MAX_LABEL_BYTES) -> str:
    """The PVL label at the start of ``path``, up to and including its ``END`` statement.

    Works for attached labels (binary data follows ``END``) and detached ones alike. Only the
    first ``max_bytes`` are read: a label without ``END`` in them is refused.
    """
    try:
        with path.open("rb") as stream:
            head = stream.read(max_bytes)
    except OSError as exc:
        raise ProductRejected(f"{path.name}: cannot be read ({exc.strerror})") from None
    match = _END.search(head)
    if match is None:
        raise ProductRejected(
            f"{path.name}: no END statement in the first {min(len(head), max_bytes)} bytes "
            f"(rule: a PVL label ends with END within {max_bytes} bytes)"
        )
    return head[: match.end()].decode("latin-1")


def parse_label(label_text: str, *, where: str) -> Any:
    """The label parsed by :mod:`pvl` (a ``PVLModule``), or ProductRejected."""
    try:
        return pvl.loads(label_text)
    except (pvl.exceptions.LexerError, pvl.exceptions.ParseError, ValueError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ProductRejected(f"{where}: the PVL label does not parse ({first_line})") from None


def get(block: Any, key: str) -> Any:
    """``block[key]`` (case-insensitive key), or None when absent."""
    if not isinstance(block, Mapping):
        return None
    if key in block:
        return block[key]
    wanted = key.upper()
    return next((value for name, value in block.items() if name.upper() == wanted), None)


def text(value: Any) -> str | None:
    """A keyword value as text; PDS "no value" markers (UNK, N/A, NULL) become None."""
    if value is None:
        return None
    if isinstance(value, list | tuple | set | frozenset):
        return None
    result = " ".join(str(value).split())
    return None if result.upper() in _NO_VALUE else result


def number(
    value: Any,
    *,
    where: str,
    key: str,
    default: float | None = None,
    km: bool = False,
) -> float | None:
    """A keyword value as a float, its unit applied when it is a length.

    ``km=True``: the value is a length whose default unit is km (PDS3 radii and map scales);
    it comes back in metres. Lengths given in metres stay as they are.
    """
    units: str | None = None
    if isinstance(value, Quantity):
        value, units = value.value, str(value.units).strip().lower()
    if value is None or (isinstance(value, str) and text(value) is None):
        return default
    if isinstance(value, str):  # a quoted number, e.g. "7.5808"
        value = _float_or_none(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProductRejected(f"{where}, {key}: {value!r} is not a number")
    result = float(value)
    if not math.isfinite(result):
        raise ProductRejected(f"{where}, {key}: {value!r} is not a finite number")
    if not km:
        return result
    if units is None or units.startswith(_KM_UNITS):
        return result * 1000.0
    if not units.startswith(_M_UNITS):
        raise ProductRejected(f"{where}, {key}: unit {units!r} is not a length in km or m")
    return result


def _float_or_none(raw: str) -> float | None:
    try:
        return float(raw)
    except ValueError:
        return None


def integer(value: Any, *, where: str, key: str, default: int | None = None) -> int:
    """A keyword value that must be a whole number (axis sizes, byte counts)."""
    if isinstance(value, Quantity):
        value = value.value
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProductRejected(f"{where}, {key}: {value!r} is not an integer (rule: it is required)")
    return value


def timestamp(value: Any, *, where: str, key: str) -> datetime | None:
    """A PDS time as an aware UTC datetime (PDS times are UTC); UNK/N/A become None."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raw = text(value)
    if raw is None:
        return None
    try:
        parsed = datetime.fromisoformat(raw.removesuffix("Z"))
    except ValueError:
        raise ProductRejected(f"{where}, {key}: {raw!r} is not a time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def is_bad_name(name: str) -> bool:
    """True for anything but a bare file name (a folder, ``..``, a drive, NUL, escapes)."""
    return not name or bool(_BAD_NAME.search(name)) or name.strip() != name


def find_sibling(label: Path, name: str, *, where: str, key: str) -> Path:
    """The file called ``name`` beside ``label``: a bare name, matched case-insensitively.

    PDS3 names are upper case on the archive and often lower case on disk. Names with a
    folder, ``..``, a drive or a NUL are refused (R11): a label never points outside its
    folder.
    """
    if is_bad_name(name):
        raise ProductRejected(
            f"{where}, {key}: {name!r} is not a bare file name (rule: a label points only "
            "to files beside it)"
        )
    folder = label.parent
    exact = folder / name
    if exact.is_file():
        return exact
    matches = sorted(p for p in folder.iterdir() if p.name.lower() == name.lower() and p.is_file())
    if not matches:
        raise ProductRejected(
            f"{where}, {key}: {name!r} is not beside the label (rule: every file the label "
            "points to is part of the product)"
        )
    return matches[0]


def split_radius_offset(offset: float) -> tuple[float, float | None]:
    """``(offset, radius_offset_m)``: an offset equal to the Moon's radius is set apart.

    LOLA-style labels (PDS3 ``OFFSET``, ISIS ``Base``) give 1 737 400 m, which turns heights
    into planetary radii (LUNAR-DATA.md §2.3 pitfall 5). The record keeps stored × scale a
    height above the reference sphere and records the radius in ``radius_offset_m``.
    """
    if math.isclose(offset, MOON_RADIUS_M, abs_tol=1e-3):
        return 0.0, offset
    return offset, None


def moon_crs(proj4: str, *, where: str) -> pyproj.CRS:
    """A projected CRS from PROJ parameters given by a label, checked to be on the Moon.

    The datum and ellipsoid are named "Moon" so that its WKT says which body it is on.
    """
    try:
        crs = pyproj.CRS.from_proj4(f"{proj4} +units=m +no_defs +type=crs")
    except pyproj.exceptions.CRSError as exc:
        raise ProductRejected(f"{where}: the map projection is not a valid CRS ({exc})") from None
    assert_lunar(crs, where=where)
    definition = crs.to_json_dict()
    base = definition.get("base_crs", {})
    base["name"] = "Moon sphere, planetocentric"
    datum = base.get("datum", {})
    datum["name"] = "Moon"
    if isinstance(datum.get("ellipsoid"), dict):
        datum["ellipsoid"]["name"] = "Moon"
    operation = crs.coordinate_operation
    definition["name"] = f"Moon / {operation.method_name if operation else 'unknown'}"
    return pyproj.CRS.from_json_dict(definition)


@dataclass(frozen=True)
class MapFacts:
    """What a map-projected product's grid tells: CRS, transform, footprint, resolution."""

    crs: CrsInfo
    transform: Transform
    footprint: Footprint
    resolution_m: float


def map_facts(
    crs: pyproj.CRS,
    transform: Transform,
    *,
    width: int,
    height: int,
    where: str,
    wkt2: str | None = None,
) -> MapFacts:
    """CRS info (IAU code by definition), footprint and resolution of a north-up grid."""
    lunar = assert_lunar(crs, where=where)
    a, b, c, d, e, f = transform
    if b != 0.0 or d != 0.0 or a <= 0.0 or e >= 0.0:
        raise ProductRejected(
            f"{where}: geotransform {transform} is rotated or not north-up "
            "(rule: grids are north-up with square-ish pixels)"
        )
    radius = lunar.ellipsoid.semi_major_metre if lunar.ellipsoid else MOON_RADIUS_M
    bounds = _inside_poles(lunar, (c, f + e * height, c + a * width, f), radius=radius)
    bbox, geometry = lunar_footprint(lunar, bounds)
    resolution = a * radius * math.pi / 180.0 if lunar.is_geographic else a
    info = CrsInfo(
        code=iau_code(lunar),
        wkt2=wkt2 or lunar.to_wkt("WKT2_2019"),
        radius_m=radius,
        projection=_projection_name(lunar),
    )
    return MapFacts(info, transform, Footprint(bbox=bbox, geometry=geometry), resolution)


def _inside_poles(
    crs: pyproj.CRS, bounds: tuple[float, float, float, float], *, radius: float
) -> tuple[float, float, float, float]:
    """Bounds cut just inside the poles when y is proportional to latitude.

    Global grids often reach a hair past a pole (GLD100's top edge is at 90.003°). With one
    edge folded onto the pole and the other not, the ring winds round the pole and
    :func:`lunar_footprint` takes it for a polar cap; rows past a pole hold no ground anyway.
    The cut (1e-13 of the pole's y) disappears when the footprint is rounded to 1e-10°.
    """
    method = _projection_name(crs)
    if method == "Geographic":
        limit = 90.0 * (1.0 - 1e-13)
    elif method in ("Equirectangular", "Sinusoidal"):
        limit = radius * math.pi / 2.0 * (1.0 - 1e-13)
    else:
        return bounds
    left, bottom, right, top = bounds
    return (left, max(bottom, -limit), right, min(top, limit))


def _projection_name(crs: pyproj.CRS) -> str:
    if not crs.is_projected or crs.coordinate_operation is None:
        return "Geographic"
    method = crs.coordinate_operation.method_name
    lowered = method.lower()
    return next((name for key, name in _METHOD_NAMES if key in lowered), method)


def corner_footprint(points: Iterable[tuple[float, float]]) -> Footprint:
    """A footprint from (lon, lat) corners given by a label, longitudes put in −180..180.

    The corners, in order round the image, become a polygon. A ring crossing ±180° becomes
    its lunar bounding box, split at the seam by :func:`lunar_footprint`.
    """
    ring = np.array(list(points), dtype=float)
    lons = np.unwrap((ring[:, 0] + 180.0) % 360.0 - 180.0, period=360.0)
    lats = np.clip(ring[:, 1], -90.0, 90.0)
    if lons.min() >= -180.0 and lons.max() <= 180.0:
        polygon = orient(shapely.geometry.Polygon(np.column_stack([lons, lats])), 1.0)
        coords = [[_deg(x), _deg(y)] for x, y in polygon.exterior.coords]
        west, south, east, north = polygon.bounds
        bbox = (_deg(west), _deg(south), _deg(east), _deg(north))
        return Footprint(bbox=bbox, geometry={"type": "Polygon", "coordinates": [coords]})
    bounds = (float(lons.min()), float(lats.min()), float(lons.max()), float(lats.max()))
    bbox2, geometry = lunar_footprint(moon_geographic(), bounds)
    return Footprint(bbox=bbox2, geometry=geometry)


def _deg(value: float) -> float:
    return round(float(value), 10) + 0.0  # + 0.0 turns -0.0 into 0.0

"""Lunar coordinate reference systems: the Moon sphere, IAU_2015 codes and lunar footprints.

The Moon is a sphere of radius 1 737 400 m (IAU 2015). Three traps shape this module
(LUNAR-DATA.md §2.3):

* PROJ refuses Moon↔Earth transforms, so footprints go to IAU_2015:30100, never EPSG:4326;
* IAU_2015:30100 is lat/lon in its definition, so every transformer uses ``always_xy=True``;
* native products carry custom WKT that matches no authority code, and a low
  ``min_confidence`` match is wrong, so codes are found by comparing the projection method,
  its parameters and the radius.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np
import pyproj
import pyproj.database
import pyproj.exceptions
import shapely.affinity  # type: ignore[import-untyped]
import shapely.geometry  # type: ignore[import-untyped]
from shapely.geometry.polygon import orient  # type: ignore[import-untyped]

from lunarchive.schemas.errors import ProductRejected

__all__ = [
    "MOON_RADIUS_M",
    "BBox",
    "CrsLike",
    "Geometry",
    "assert_lunar",
    "crs_of_wkt",
    "iau_code",
    "lunar_footprint",
    "moon_geographic",
    "pole_points",
    "transformer",
]

MOON_RADIUS_M: Final = 1_737_400.0
"""The IAU 2015 mean radius of the Moon, the reference sphere of every lunar CRS here."""

BBox = tuple[float, float, float, float]
"""``(west, south, east, north)``; ``west > east`` when the box crosses ±180° (as in STAC)."""

Geometry = dict[str, Any]
"""A GeoJSON geometry mapping in lunar planetocentric lon/lat degrees."""


class _HasWkt(Protocol):
    def to_wkt(self) -> str: ...


CrsLike = pyproj.CRS | str | _HasWkt
"""Anything :meth:`pyproj.CRS.from_user_input` takes: a pyproj or rasterio CRS, a code, WKT."""

_MOON_CODES: Final = r"301\d\d"  # IAU_2015 body 301: the Moon
_EDGE_POINTS: Final = 51  # points per edge when densifying a footprint (as transform_bounds)
_POLE_POINT_M: Final = 1e-3  # a pole that projects to points this close is one point
_SIMPLIFY_DEG: Final = 1e-7  # ~3 mm on the Moon: drops collinear points from the densified ring
_REL_TOL: Final = 1e-9
_DECIMALS: Final = 10
# On a sphere the "(Spherical)" EPSG methods are the same mathematics as the ellipsoidal ones.
_SPHERICAL_TWINS: Final = {"EPSG:1029": "EPSG:1028", "EPSG:1027": "EPSG:9820"}
_SCALE_PARAMS: Final = {"8805"}  # parameters whose missing value means 1, not 0
_POLAR_B: Final = "EPSG:9829"  # Polar Stereographic (variant B)
_POLAR_A: Final = "EPSG:9810"  # Polar Stereographic (variant A)


@functools.cache
def moon_geographic() -> pyproj.CRS:
    """IAU_2015:30100, Moon (2015) sphere, planetocentric lon/lat (axis order lat, lon).
    Looked up in PROJ's database once (a lookup costs about a millisecond); pyproj's CRS is
    immutable and safe to share between threads."""
    return pyproj.CRS.from_user_input("IAU_2015:30100")


def transformer(source: pyproj.CRS, target: pyproj.CRS) -> pyproj.Transformer:
    """pyproj's ``always_xy`` transformer from ``source`` to ``target``, made once per pair
    of CRSs (PROJ searches its database for the operation: 2 ms a pair, measured; every
    tile of a collection plans with the same pairs). A pyproj Transformer is safe to share
    between threads (each thread gets its own PROJ object)."""
    return _transformer_of_wkt(source.to_wkt(), target.to_wkt())


@functools.lru_cache(maxsize=64)
def _transformer_of_wkt(source: str, target: str) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs(crs_of_wkt(source), crs_of_wkt(target), always_xy=True)


@functools.lru_cache(maxsize=64)
def crs_of_wkt(wkt: str) -> pyproj.CRS:
    """pyproj's CRS of a WKT, parsed once per distinct WKT (a parse costs milliseconds, and
    the tiles of one map, and every chunk plan, share one CRS)."""
    return pyproj.CRS.from_wkt(wkt)


def _as_crs(crs: CrsLike) -> pyproj.CRS:
    """``crs`` as pyproj's CRS: a WKT, or an object that gives one (rasterio's CRS, as
    ``.rio.crs`` returns it), parsed once per distinct WKT."""
    if isinstance(crs, pyproj.CRS):
        return crs
    if not isinstance(crs, str):
        return crs_of_wkt(crs.to_wkt())
    return pyproj.CRS.from_user_input(crs)  # a code, a PROJ string or a WKT


def assert_lunar(crs: CrsLike | None, *, where: str) -> pyproj.CRS:
    """Return ``crs`` as a pyproj CRS if it lies on the 1 737 400 m Moon sphere.

    Raises :class:`ProductRejected` naming ``where`` otherwise: no CRS, a CRS without an
    ellipsoid, or any other body (an Earth CRS above all, LUNAR-DATA.md §2.3 pitfall 1).
    """
    if crs is None:
        raise ProductRejected(f"{where}: no CRS (rule: every product must be georeferenced)")
    try:
        parsed = _as_crs(crs)
    except pyproj.exceptions.CRSError as exc:
        raise ProductRejected(f"{where}: unreadable CRS ({exc})") from None
    ellipsoid = parsed.ellipsoid
    radius = ellipsoid.semi_major_metre if ellipsoid is not None else None
    if radius is None or not math.isclose(radius, MOON_RADIUS_M, abs_tol=1e-3):
        raise ProductRejected(
            f"{where}: CRS {parsed.name!r} has semi-major axis {radius} m "
            f"(rule: lunar CRSs use the {MOON_RADIUS_M:.0f} m Moon sphere)"
        )
    return parsed


def iau_code(crs: CrsLike) -> str | None:
    """The IAU_2015 Moon code whose definition ``crs`` has, e.g. ``"IAU_2015:30110"``, or None.

    Two CRSs match when their radii, prime meridian, axis units, projection method and
    parameters are equal; names and authority identifiers are ignored, because GDAL reads
    lunar products as custom WKT (LUNAR-DATA.md §2.3 pitfall 3). An IAU_2015 Moon code the
    CRS names is only tried first (one definition compared, not all 18 built and compared).
    """
    parsed = _as_crs(crs)
    definition = _definition(parsed)
    claimed = _claimed_moon_code(parsed)
    if claimed is not None and _moon_definition(claimed).matches(definition):
        return claimed  # no two Moon codes share a definition: the one a search would find
    return next((code for code, moon in _moon_definitions() if moon.matches(definition)), None)


def _claimed_moon_code(crs: pyproj.CRS) -> str | None:
    """The IAU_2015 Moon code the CRS names as its identifier, if it names one: ``IAU_2015``
    or ``IAU`` (of version 2015, or none, as WKT1 gives it) and a Moon code."""
    document = crs.to_json_dict()
    for ident in [document["id"]] if "id" in document else document.get("ids", []):
        authority, version = ident.get("authority"), str(ident.get("version", 2015))
        code = str(ident.get("code"))
        if (
            authority in ("IAU", "IAU_2015")
            and version == "2015"
            and re.fullmatch(_MOON_CODES, code)
        ):
            return f"IAU_2015:{code}"
    return None


@functools.cache
def _moon_definition(code: str) -> _Definition:
    """The definition of one IAU_2015 Moon code (all of them: :func:`_moon_definitions`)."""
    return _definition(pyproj.CRS.from_user_input(code))


@dataclass(frozen=True)
class _Definition:
    """What defines a CRS mathematically; names and identifiers are left out on purpose."""

    projected: bool
    numbers: tuple[float, ...]  # semi-axes (m), prime meridian (rad), axis unit factors
    method: str | None  # "EPSG:1028"-style method code, else its lower-case name
    params: dict[str, float]  # EPSG parameter code (else name) -> value in SI units

    def matches(self, other: _Definition) -> bool:
        if (self.projected, self.method) != (other.projected, other.method):
            return False
        if len(self.numbers) != len(other.numbers):
            return False
        if not all(_close(a, b) for a, b in zip(self.numbers, other.numbers, strict=True)):
            return False
        keys = self.params.keys() | other.params.keys()
        return all(
            _close(self.params.get(k, _default(k)), other.params.get(k, _default(k))) for k in keys
        )


@functools.cache
def _moon_definitions() -> tuple[tuple[str, _Definition], ...]:
    infos = pyproj.database.query_crs_info(auth_name="IAU_2015")
    codes = sorted(f"IAU_2015:{i.code}" for i in infos if re.fullmatch(_MOON_CODES, i.code))
    return tuple((code, _moon_definition(code)) for code in codes)


def _definition(crs: pyproj.CRS) -> _Definition:
    ellipsoid, meridian = crs.ellipsoid, crs.prime_meridian
    numbers = (
        ellipsoid.semi_major_metre if ellipsoid else math.nan,
        ellipsoid.semi_minor_metre if ellipsoid else math.nan,
        float(meridian.longitude) * float(meridian.unit_conversion_factor) if meridian else 0.0,
        *sorted(axis.unit_conversion_factor for axis in crs.axis_info),
    )
    method, params = _method_and_params(crs)
    return _Definition(crs.is_projected, numbers, method, params)


def _method_and_params(crs: pyproj.CRS) -> tuple[str | None, dict[str, float]]:
    operation = crs.coordinate_operation if crs.is_projected else None
    if operation is None:
        return None, {}
    method = (
        f"{operation.method_auth_name}:{operation.method_code}"
        if operation.method_code
        else operation.method_name.lower()
    )
    params = {
        (p.code if p.auth_name == "EPSG" else p.name.lower()): float(p.value)
        * p.unit_conversion_factor
        for p in operation.params
    }
    method = _SPHERICAL_TWINS.get(method, method)
    if method == _POLAR_B and math.isclose(abs(params.get("8832", 0.0)), math.pi / 2):
        # Variant B with its standard parallel at the pole is variant A with k0 = 1: what a
        # GeoTIFF round trip turns IAU_2015:30130/30135 into (LUNAR-DATA.md §2.3 pitfall 4).
        method = _POLAR_A
        params = {"8801": params.pop("8832"), "8802": params.pop("8833", 0.0), **params}
    return method, params


def _default(param: str) -> float:
    return 1.0 if param in _SCALE_PARAMS else 0.0


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=1e-9)


def lunar_footprint(crs: CrsLike, bounds: BBox) -> tuple[BBox, Geometry]:
    """Bounding box and GeoJSON geometry, in lunar lon/lat, of ``bounds`` given in ``crs``.

    ``bounds`` is ``(left, bottom, right, top)`` in the CRS's x/y units. The edges are
    densified and transformed to IAU_2015:30100 (x = longitude), longitudes normalised to
    −180..180. A footprint crossing ±180° becomes a MultiPolygon split at the seam, with a
    bbox whose west is greater than its east; a footprint that encloses a pole becomes a
    polygon running to the pole over all longitudes.
    """
    parsed = assert_lunar(crs, where="lunar_footprint")
    ring = _densified_ring(parsed, bounds)
    pole = _enclosed_pole(parsed, bounds)
    if pole is not None:
        return _polar_cap(ring[np.abs(ring[:, 1]) < 90.0], pole=pole)
    unwrapped = np.unwrap(ring[:, 0], period=360.0)
    if np.ptp(unwrapped) >= 360.0 - 1e-6:
        return _full_band(float(ring[:, 1].min()), float(ring[:, 1].max()))
    return _split_at_seam(np.column_stack([unwrapped, ring[:, 1]]))


def _enclosed_pole(crs: pyproj.CRS, bounds: BBox) -> float | None:
    """The pole (±90) that ``bounds`` enclose in ``crs``, or None.

    A pole is enclosed when the CRS maps it to one point (a polar or azimuthal projection)
    lying strictly inside the bounds. A cylindrical CRS maps a pole to a line, so its grids
    never enclose one, even when their edge runs a hair past the pole (LOLA's global grids):
    such a grid is a band over all longitudes, not a cap.
    """
    left, bottom, right, top = bounds
    for pole, x, y in pole_points(crs):
        if left < x < right and bottom < y < top:
            return pole
    return None


def pole_points(crs: pyproj.CRS) -> tuple[tuple[float, float, float], ...]:
    """Each pole (latitude ±90) that ``crs`` maps to one point, with that point's x and y
    (polar and azimuthal projections; a cylindrical CRS maps a pole to a line). Found once
    per CRS."""
    return _pole_points_of_wkt(crs.to_wkt())


@functools.lru_cache(maxsize=64)
def _pole_points_of_wkt(wkt: str) -> tuple[tuple[float, float, float], ...]:
    to_crs = transformer(moon_geographic(), crs_of_wkt(wkt))
    lons = np.array([-180.0, -90.0, 0.0, 90.0])
    found = []
    for pole in (90.0, -90.0):
        xs, ys = to_crs.transform(lons, np.full_like(lons, pole), errcheck=False)
        points = np.column_stack([xs, ys])
        if np.isfinite(points).all() and float(np.ptp(points, axis=0).max()) <= _POLE_POINT_M:
            x, y = points.mean(axis=0)
            found.append((pole, float(x), float(y)))
    return tuple(found)


def _densified_ring(crs: pyproj.CRS, bounds: BBox) -> np.ndarray:
    left, bottom, right, top = bounds
    corners = np.array([(left, bottom), (right, bottom), (right, top), (left, top), (left, bottom)])
    steps = np.linspace(0.0, 1.0, _EDGE_POINTS)[:-1, None]
    xs, ys = np.concatenate([a + (b - a) * steps for a, b in itertools.pairwise(corners)]).T
    lons, lats = transformer(crs, moon_geographic()).transform(xs, ys)
    # Grids a hair wider than the sphere (LOLA's) give latitudes just past the poles.
    ring = np.column_stack([_normalise_lon(np.asarray(lons)), np.clip(lats, -90.0, 90.0)])
    ring = ring[np.isfinite(ring).all(axis=1)]
    return np.vstack([ring, ring[:1]])


def _normalise_lon(lons: np.ndarray) -> np.ndarray:
    wrapped = (lons + 180.0) % 360.0 - 180.0
    return np.where(np.isclose(lons, 180.0), 180.0, wrapped)


def _split_at_seam(ring: np.ndarray) -> tuple[BBox, Geometry]:
    """A footprint from its unwrapped ring (continuous longitudes, maybe beyond ±180)."""
    (west, south), (east, north) = ring.min(axis=0).tolist(), ring.max(axis=0).tolist()
    polygon = shapely.geometry.Polygon(ring).simplify(_SIMPLIFY_DEG)
    if west >= -180.0 and east <= 180.0:
        return _bbox(west, south, east, north), _polygon_geojson(polygon)
    parts = []
    for shift in (-360.0, 0.0, 360.0):
        window = shapely.geometry.box(-180.0 - shift, -90.0, 180.0 - shift, 90.0)
        piece = polygon.intersection(window)
        parts += [shapely.affinity.translate(p, xoff=shift) for p in _polygons(piece)]
    seam_west, seam_east = _normalise_lon(np.array([west, east])).tolist()
    geometry = {"type": "MultiPolygon", "coordinates": [_polygon_rings(p) for p in parts]}
    return _bbox(seam_west, south, seam_east, north), geometry


def _polar_cap(ring: np.ndarray, *, pole: float) -> tuple[BBox, Geometry]:
    """A footprint enclosing a pole: its ring sorted by longitude, closed over the pole."""
    points = np.unique(ring, axis=0)  # sorted by longitude: the ring is star-shaped round the pole
    (lon_a, lat_a), (lon_b, lat_b) = points[0].tolist(), points[-1].tolist()
    seam_lat = lat_b + (lat_a - lat_b) * (180.0 - lon_b) / (lon_a + 360.0 - lon_b)
    edge = [(-180.0, seam_lat), *map(tuple, points.tolist()), (180.0, seam_lat)]
    polygon = shapely.geometry.Polygon([*edge, (180.0, pole), (-180.0, pole)])
    lats = [lat for _, lat in edge]
    south, north = (min(lats), pole) if pole > 0 else (pole, max(lats))
    return _bbox(-180.0, south, 180.0, north), _polygon_geojson(polygon)


def _full_band(south: float, north: float) -> tuple[BBox, Geometry]:
    """A footprint covering every longitude between two latitudes (a global grid)."""
    polygon = shapely.geometry.box(-180.0, south, 180.0, north)
    return _bbox(-180.0, south, 180.0, north), _polygon_geojson(polygon)


def _polygons(geometry: Any) -> list[Any]:
    parts = getattr(geometry, "geoms", [geometry])
    return [p for p in parts if p.geom_type == "Polygon" and p.area > 0]


def _polygon_rings(polygon: Any) -> list[list[list[float]]]:
    oriented = orient(polygon, 1.0)  # RFC 7946: exterior ring counter-clockwise
    rings = (oriented.exterior, *oriented.interiors)
    return [[[_deg(x), _deg(y)] for x, y in ring.coords] for ring in rings]


def _polygon_geojson(polygon: Any) -> Geometry:
    return {"type": "Polygon", "coordinates": _polygon_rings(polygon)}


def _deg(value: float) -> float:
    """Degrees rounded to 1e-10 (3e-3 mm on the Moon): drops noise like 174.99999999999994."""
    return round(float(value), _DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0


def _bbox(west: float, south: float, east: float, north: float) -> BBox:
    return (_deg(west), _deg(south), _deg(east), _deg(north))

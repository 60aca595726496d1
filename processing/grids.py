"""Named lunar grids and their fixed tilings.

A grid is configuration: a name says the CRS, the resolution and the tiling, so that every cube
of a collection lands on the same pixels and an update rebuilds only the tiles it touches.

* ``moon-eqc-<ppd>``: global equirectangular IAU_2015:30110 (centred on 0°), ``ppd`` pixels
  per degree; x runs −180..180° and y −90..90°.
* ``moon-eqc180-<ppd>``: the same on IAU_2015:30115 (centred on 180°, x runs 0..360° E), the
  grid of LOLA's global products.
* ``moon-np-<m>`` / ``moon-sp-<m>``: north / south polar stereographic IAU_2015:30130 /
  30135, ``m`` metres per pixel, a square cap reaching latitude ±60° at its edge midpoints.

Equirectangular tiles span whole degrees that divide 180 (the largest span whose tile is at
most :data:`TILE_TARGET_PX` pixels); polar tiles are :data:`TILE_TARGET_PX` pixels with the
pole at the centre of the middle tile, so that a polar product lands in few tiles. Tile ids
are ``r<row>c<col>`` with three digits each, counted from the top-left tile.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import pyproj
import shapely  # type: ignore[import-untyped]
import shapely.geometry  # type: ignore[import-untyped]
from affine import Affine
from odc.geo.geobox import GeoBox

from lunarchive.processing.crs import MOON_RADIUS_M, BBox, CrsLike, lunar_footprint

__all__ = [
    "EQC_LADDER_PPD",
    "GRID_NAMES",
    "POLAR_LADDER_M",
    "TILE_TARGET_PX",
    "Grid",
    "Tile",
    "named_grid",
    "overlaps",
    "tiles_touching",
]

EQC_LADDER_PPD: Final = (4, 16, 64, 128, 512)
"""The resolutions of the named equirectangular grids, in pixels per degree."""
POLAR_LADDER_M: Final = (7581, 1895, 474, 237, 59)
"""The polar resolutions (m/px): the equatorial pixel of the same rung of the eqc ladder."""
TILE_TARGET_PX: Final = 2048
"""The largest tile edge, in pixels: 16 MiB of float32 per band, 4 × 4 chunks of 512."""
POLAR_CAP_EDGE_LAT: Final = 60.0
"""A polar grid reaches this latitude (absolute) at the midpoints of its edges."""

Kind = Literal["eqc", "eqc180", "np", "sp"]
_CODES: Final[dict[Kind, str]] = {
    "eqc": "IAU_2015:30110",
    "eqc180": "IAU_2015:30115",
    "np": "IAU_2015:30130",
    "sp": "IAU_2015:30135",
}
_NAME: Final = re.compile(r"moon-(eqc|eqc180|np|sp)-([0-9]+(?:\.[0-9]+)?)")
_TILE_ID: Final = re.compile(r"r(\d{3})c(\d{3})")
_DEGREE_M: Final = math.pi * MOON_RADIUS_M / 180.0  # one degree of arc on the Moon sphere

GRID_NAMES: Final = tuple(
    [f"moon-{kind}-{ppd}" for kind in ("eqc", "eqc180") for ppd in EQC_LADDER_PPD]
    + [f"moon-{kind}-{m}" for kind in ("np", "sp") for m in POLAR_LADDER_M]
)
"""The standard named grids (other resolutions parse too, see :func:`named_grid`)."""


@dataclass(frozen=True)
class Tile:
    """One tile of a grid: its id, row and column, and its pixel grid."""

    grid: str
    id: str
    row: int
    col: int
    geobox: GeoBox

    @property
    def crs(self) -> pyproj.CRS:
        return named_grid(self.grid).crs


@dataclass(frozen=True)
class Grid:
    """A lunar grid: CRS, pixel size, origin (top-left corner) and the tiling of its extent."""

    name: str
    crs_code: str
    resolution: float  # metres per pixel, in the CRS's units
    origin: tuple[float, float]  # x, y of the top-left corner of tile r000c000
    shape: tuple[int, int]  # the whole grid, in pixels (rows, columns)
    tile_px: int  # tile edge in pixels; the last row and column may be smaller

    @property
    def crs(self) -> pyproj.CRS:
        return pyproj.CRS.from_user_input(self.crs_code)

    @property
    def tiling(self) -> tuple[int, int]:
        """Number of tile rows and columns."""
        return (-(-self.shape[0] // self.tile_px), -(-self.shape[1] // self.tile_px))

    @property
    def geobox(self) -> GeoBox:
        """The whole grid as one GeoBox."""
        x0, y0 = self.origin
        affine = Affine(self.resolution, 0.0, x0, 0.0, -self.resolution, y0)
        return GeoBox(self.shape, affine, self.crs_code)

    def tile(self, tile_id: str) -> Tile:
        """The tile called ``tile_id`` (``r<row>c<col>``); :class:`KeyError` if there is none."""
        match = _TILE_ID.fullmatch(tile_id)
        rows, cols = self.tiling
        if match is None or not (int(match[1]) < rows and int(match[2]) < cols):
            raise KeyError(f"grid {self.name}: no tile {tile_id!r} (it has {rows} × {cols})")
        return self._tile(int(match[1]), int(match[2]))

    def tiles(self) -> Iterator[Tile]:
        """Every tile, row by row from the top-left."""
        rows, cols = self.tiling
        for row in range(rows):
            for col in range(cols):
                yield self._tile(row, col)

    def _tile(self, row: int, col: int) -> Tile:
        y0, x0 = row * self.tile_px, col * self.tile_px
        height = min(self.tile_px, self.shape[0] - y0)
        width = min(self.tile_px, self.shape[1] - x0)
        geobox = self.geobox[y0 : y0 + height, x0 : x0 + width]
        return Tile(self.name, f"r{row:03d}c{col:03d}", row, col, geobox)


@functools.cache
def named_grid(name: str) -> Grid:
    """The grid called ``name`` (see the module docstring); :class:`KeyError` if unknown."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise KeyError(
            f"unknown grid {name!r} (rule: moon-eqc-<ppd>, moon-eqc180-<ppd>, moon-np-<m> "
            f"or moon-sp-<m>; standard: {', '.join(GRID_NAMES)})"
        )
    kind: Kind = match[1]  # type: ignore[assignment]
    number = float(match[2])
    if number <= 0:
        raise KeyError(f"grid {name!r}: the resolution must be positive")
    if kind in ("eqc", "eqc180"):
        return _eqc_grid(name, kind, number)
    return _polar_grid(name, kind, number)


def _eqc_grid(name: str, kind: Kind, ppd: float) -> Grid:
    if not ppd.is_integer():
        raise KeyError(f"grid {name!r}: pixels per degree must be a whole number")
    spans = [d for d in range(1, 181) if 180 % d == 0 and d * ppd <= TILE_TARGET_PX]
    span = max(spans, default=1)
    resolution = _DEGREE_M / ppd
    return Grid(
        name=name,
        crs_code=_CODES[kind],
        resolution=resolution,
        origin=(-180.0 * _DEGREE_M, 90.0 * _DEGREE_M),
        shape=(int(180 * ppd), int(360 * ppd)),
        tile_px=int(span * ppd),
    )


def _polar_grid(name: str, kind: Kind, resolution: float) -> Grid:
    # Polar stereographic (k0 = 1): a point at colatitude c lies 2R·tan(c/2) from the pole.
    reach = 2.0 * MOON_RADIUS_M * math.tan(math.radians(90.0 - POLAR_CAP_EDGE_LAT) / 2.0)
    half_px = math.ceil(reach / resolution)
    if 2 * half_px <= TILE_TARGET_PX:
        tile_px, size = 2 * half_px, 2 * half_px  # one tile, the pole at its centre
    else:
        tile_px = TILE_TARGET_PX
        side_tiles = 2 * math.ceil((half_px - tile_px / 2) / tile_px) + 1  # odd: pole centred
        size = side_tiles * tile_px
    half = size // 2 * resolution
    return Grid(
        name=name,
        crs_code=_CODES[kind],
        resolution=resolution,
        origin=(-half, half),
        shape=(size, size),
        tile_px=tile_px,
    )


def tiles_touching(grid: Grid, crs: CrsLike, bounds: BBox) -> list[Tile]:
    """The tiles of ``grid`` that a product with ``bounds`` (in ``crs``) overlaps, in id order.

    Overlap is decided on the lunar lon/lat footprints (seams split, polar caps closed over the
    pole, see :func:`lunar_footprint`), with a positive area: tiles that only share an edge
    with the product are left out.
    """
    _, geometry = lunar_footprint(crs, bounds)
    product = shapely.geometry.shape(geometry)
    tiles = list(grid.tiles())
    shapes = _tile_shapes(grid.name)
    overlap = shapely.area(shapely.intersection(shapes, product))
    return [tile for tile, area in zip(tiles, overlap, strict=True) if area > _MIN_OVERLAP_DEG2]


_MIN_OVERLAP_DEG2: Final = 1e-10


def overlaps(tile: Tile, crs: CrsLike, bounds: BBox) -> bool:
    """Whether a product with ``bounds`` (in ``crs``) overlaps ``tile`` (see
    :func:`tiles_touching`)."""
    _, geometry = lunar_footprint(crs, bounds)
    grid = named_grid(tile.grid)
    shape = _tile_shapes(grid.name)[tile.row * grid.tiling[1] + tile.col]
    area = shapely.area(shapely.intersection(shape, shapely.geometry.shape(geometry)))
    return bool(area > _MIN_OVERLAP_DEG2)


@functools.cache
def _tile_shapes(grid_name: str) -> np.ndarray:
    """The lon/lat footprint of every tile of the grid, as a shapely array (tile order)."""
    grid = named_grid(grid_name)
    if grid.crs.is_projected and grid.crs_code in (_CODES["eqc"], _CODES["eqc180"]):
        return np.array([_eqc_box(grid, tile) for tile in grid.tiles()], dtype=object)
    shapes = []
    for tile in grid.tiles():
        left, bottom, right, top = tile.geobox.boundingbox
        _, geometry = lunar_footprint(grid.crs_code, (left, bottom, right, top))
        shapes.append(shapely.geometry.shape(geometry))
    return np.array(shapes, dtype=object)


def _eqc_box(grid: Grid, tile: Tile) -> object:
    """An equirectangular tile in lon/lat: a box (tiles never straddle ±180°, spans divide
    180), shifted into −180..180 for the grid centred on 180°."""
    left, bottom, right, top = (v / _DEGREE_M for v in tile.geobox.boundingbox)
    shift = 180.0 if grid.crs_code == _CODES["eqc180"] else 0.0
    west, east = left + shift, right + shift
    if west >= 180.0 - 1e-9:
        west, east = west - 360.0, east - 360.0
    return shapely.geometry.box(west, max(bottom, -90.0), east, min(top, 90.0))

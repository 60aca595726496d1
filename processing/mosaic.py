"""Mosaic lunar tiles onto one grid, lazily, with dask.

The grid is the union of the tiles on the first tile's pixel grid, in the IAU_2015 CRS whose
definition the first tile's CRS has (so the mosaic carries the canonical CRS, with its code,
rather than a driver's custom WKT). Tiles are reprojected with odc-geo (nearest neighbour)
and combined first-wins: a pixel takes the value of the first tile, in input order, that has
data there.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from typing import Final

import numpy as np
import pyproj
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_reproject
from rasterio.warp import transform_bounds  # type: ignore[import-untyped]

from lunarchive.processing.crs import assert_lunar, iau_code
from lunarchive.schemas.errors import ProductRejected

__all__ = ["CHUNK_PX", "mosaic"]

CHUNK_PX: Final = 256
_DENSIFY_POINTS: Final = 21  # per side, when a tile's outline is taken to another CRS
_SNAP_PX: Final = 1e-6  # pixel-coordinate noise tolerated when snapping to the grid


def mosaic(tiles: Sequence[xr.DataArray]) -> xr.DataArray:
    """Mosaic ``tiles`` (2-D, georeferenced, lunar) into one lazy float32 array, NaN where empty.

    The first tile sets the CRS (it must match an IAU_2015 code, see :func:`iau_code`), the
    resolution and the pixel alignment; the result is chunked 256 × 256, dims ``(y, x)``, and
    nothing is computed here.
    """
    if not tiles:
        raise ValueError("mosaic needs at least one tile")
    first = tiles[0]
    first_crs = assert_lunar(first.rio.crs, where=_tile_name(first, 0))
    code = iau_code(first_crs)
    if code is None:
        raise ProductRejected(
            f"{_tile_name(first, 0)}: CRS {first_crs.name!r} matches no IAU_2015 code "
            "(rule: the first tile sets the mosaic grid, which is an IAU_2015 Moon CRS)"
        )
    grid_crs = pyproj.CRS.from_user_input(code)
    grid = _union_geobox(tiles, crs=grid_crs)
    layers = [_onto_grid(tile, grid, where=_tile_name(tile, i)) for i, tile in enumerate(tiles)]
    merged = functools.reduce(lambda acc, layer: acc.fillna(layer), layers)
    merged = merged.rename(first.name or "mosaic")
    merged.attrs = dict(first.attrs)
    result: xr.DataArray = merged.rio.write_crs(grid_crs).rio.write_transform(grid.affine)
    return result


def _union_geobox(tiles: Sequence[xr.DataArray], *, crs: pyproj.CRS) -> GeoBox:
    """The smallest grid covering every tile, on the first tile's pixel grid, in ``crs``.

    ``crs`` has the first tile's definition (only its name and identifiers may differ), so
    the first tile's transform holds in it.
    """
    x_res, rotation_x, x0, rotation_y, y_res, y0 = tuple(tiles[0].rio.transform())[:6]
    if rotation_x or rotation_y:
        raise ProductRejected(f"{_tile_name(tiles[0], 0)}: rotated grid (rule: north-up tiles)")
    outlines = [
        transform_bounds(tile.rio.crs, crs, *tile.rio.bounds(), densify_pts=_DENSIFY_POINTS)
        for tile in tiles
    ]
    edges = zip(*outlines, strict=True)
    left, bottom, right, top = (
        f(edge) for f, edge in zip((min, min, max, max), edges, strict=True)
    )
    # Pixel edges of the union; float noise on an exactly aligned edge must not add a pixel.
    col0 = math.floor((left - x0) / x_res + _SNAP_PX)
    col1 = math.ceil((right - x0) / x_res - _SNAP_PX)
    row0 = math.floor((top - y0) / y_res + _SNAP_PX)
    row1 = math.ceil((bottom - y0) / y_res - _SNAP_PX)
    affine = Affine(x_res, 0.0, x0 + col0 * x_res, 0.0, y_res, y0 + row0 * y_res)
    return GeoBox((row1 - row0, col1 - col0), affine, crs)


class _DropAlwaysYx(logging.Filter):
    """odc-geo 0.5.3 hands ``always_yx`` to GDAL as a warp option, which GDAL reports as
    unsupported on every chunk: harmless (the option only matters to odc-geo), so not shown."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "ALWAYS_YX" not in record.getMessage()


logging.getLogger("rasterio._env").addFilter(_DropAlwaysYx())


def _onto_grid(tile: xr.DataArray, grid: GeoBox, *, where: str) -> xr.DataArray:
    assert_lunar(tile.rio.crs, where=where)
    if tile.ndim != 2:
        raise ProductRejected(f"{where}: {tile.ndim} dimensions (rule: a mosaic tile is 2-D)")
    layer = xr_reproject(
        tile.astype(np.float32),
        grid,
        resampling="nearest",
        dst_nodata=np.nan,
        chunks=(CHUNK_PX, CHUNK_PX),
    )
    # odc-geo names geographic dims latitude/longitude. (Not with always_yx=True, but odc-geo
    # 0.5.3 also passes always_yx on to GDAL as a warp option, which GDAL logs as unsupported.)
    result: xr.DataArray = layer.rename(dict(zip(layer.dims, ("y", "x"), strict=True)))
    return result


def _tile_name(tile: xr.DataArray, index: int) -> str:
    source = tile.encoding.get("source")
    return f"tile {index}" + (f" ({source})" if source else "")

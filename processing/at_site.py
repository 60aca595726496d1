"""Samples meet orbit: what a published cube shows at a specimen's collection site.

Cubes are tiles of a lunar grid (one store per tile): each site is sampled in the one tile
whose pixel holds it (tiles do not overlap). For every 2-D variable of that tile: the value of
the pixel that contains the site, and the mean, standard deviation, minimum, maximum and count
of the valid pixels whose centres lie within the position-uncertainty disc (measured on the
lunar sphere, so equirectangular and polar grids are treated alike). The containing pixel
always counts as inside the disc, so a site with no stated uncertainty gets that one pixel.

A disc that crosses the tile's edge takes the pixels of the neighbouring tiles of the same grid
too, when they are given (:func:`sample_tiles`, or ``neighbours`` of :func:`sample_cube`); the
row and column reported stay those of the holding tile. Without neighbours the disc stops at
the tile's edge. Discs are not wrapped across ±180° of an equirectangular grid.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyproj
import rioxarray  # noqa: F401 - registers the .rio accessor
import xarray as xr
from zarr.abc.store import Store

from lunarchive.processing.crs import MOON_RADIUS_M, assert_lunar, moon_geographic
from lunarchive.processing.grids import named_grid
from lunarchive.processing.pyramid import open_tile
from lunarchive.schemas.errors import ProductRejected
from lunarchive.schemas.parquet import read_parquet_bytes

__all__ = [
    "AtSite",
    "Site",
    "at_site_from_parquet",
    "at_site_parquet_bytes",
    "open_cube",
    "sample_cube",
    "sample_tiles",
]

_DISC_POINTS: Final = 72  # boundary points used to find the pixel window of a disc
_MOON: Final = pyproj.Geod(a=MOON_RADIUS_M, b=MOON_RADIUS_M)


@dataclass(frozen=True)
class Site:
    """A specimen's collection site: lunar planetocentric degrees, uncertainty in metres."""

    sample_id: str
    lon_deg: float
    lat_deg: float
    uncertainty_m: float | None = None


@dataclass(frozen=True)
class AtSite:
    """One variable of one cube tile at one site (``None``: no valid value there)."""

    sample_id: str
    cube_item: str
    cube_version: str
    variable: str
    units: str | None
    lon_deg: float
    lat_deg: float
    radius_m: float
    row: int
    col: int
    pixel_value: float | None
    mean: float | None
    std: float | None
    minimum: float | None
    maximum: float | None
    count: int
    pixels_in_disc: int
    pixel_size_x_m: float
    pixel_size_y_m: float


def open_cube(zarr_store: Store) -> xr.Dataset:
    """One tile store (:func:`lunarchive.processing.pyramid.write_tile`) at full resolution,
    with its CRS, after refusing chunks that would decode past the limits (R12)."""
    return open_tile(zarr_store)


def sample_cube(
    cube: xr.Dataset,
    sites: Iterable[Site],
    *,
    cube_item: str,
    cube_version: str,
    max_pixels: int,
    neighbours: Sequence[xr.Dataset] = (),
) -> tuple[list[AtSite], list[str]]:
    """The at-site values of every site the cube covers, and the refusals (one sentence each)
    for sites whose disc would need more than ``max_pixels`` pixels.

    ``neighbours`` are other tiles; those on the same grid lend the disc their pixels where
    it crosses the cube's edge (tiles of another grid or CRS are ignored).
    """
    crs = assert_lunar(cube.rio.crs, where=f"cube {cube_item}")
    a, b, c, d, e, f = tuple(cube.rio.transform())[:6]
    if b != 0.0 or d != 0.0:
        raise ProductRejected(f"cube {cube_item}: a rotated grid cannot be sampled at sites")
    grid = _Grid(crs, (a, c, e, f), (cube.rio.height, cube.rio.width))
    others = [(n, offset) for n in neighbours if (offset := grid.offset_of(n)) is not None]
    bounds = grid.extent(cube, [offset for _, offset in others])
    variables = [str(name) for name, v in cube.data_vars.items() if v.dims == ("y", "x")]
    rows: list[dict[str, Any]] = []
    refused: list[str] = []
    for site in sites:
        window = grid.window(site, bounds)
        if window is None:
            continue  # the tile does not cover the site
        (r0, r1, c0, c1), (row, col) = window
        if (r1 - r0) * (c1 - c0) > max_pixels:
            refused.append(
                f"{site.sample_id}: its uncertainty disc ({site.uncertainty_m:g} m) covers "
                f"{(r1 - r0) * (c1 - c0)} pixels of cube {cube_item}, more than {max_pixels} "
                "(rule: LUNARCHIVE_AT_SITE_MAX_PIXELS)"
            )
            continue
        inside = grid.disc(site, (r0, r1, c0, c1), (row, col))
        for name in variables:
            values = _window_values(name, [(cube, (0, 0)), *others], (r0, r1, c0, c1))
            rows.append(
                _summarise(site, values, inside, (row - r0, col - c0))
                | {"row": row, "col": col, "variable": name}
                | {"units": cube[name].attrs.get("units"), "cube_item": cube_item}
                | {"cube_version": cube_version, "pixel_size_x_m": abs(a)}
                | {"pixel_size_y_m": abs(e)}
            )
    return [AtSite(**row) for row in rows], refused


def sample_tiles(
    tiles: Sequence[tuple[xr.Dataset, str, str]], sites: Sequence[Site], *, max_pixels: int
) -> tuple[list[AtSite], list[str]]:
    """:func:`sample_cube` over every tile ``(cube, item id, version)``, each with the others
    as neighbours, so that a disc crossing a tile edge sees the pixels on both sides."""
    rows: list[AtSite] = []
    refused: list[str] = []
    for i, (cube, item, version) in enumerate(tiles):
        found, no = sample_cube(
            cube,
            sites,
            cube_item=item,
            cube_version=version,
            max_pixels=max_pixels,
            neighbours=[other for j, (other, _, _) in enumerate(tiles) if j != i],
        )
        rows += found
        refused += no
    return rows, refused


def _window_values(
    name: str,
    tiles: Sequence[tuple[xr.Dataset, tuple[int, int]]],
    window: tuple[int, int, int, int],
) -> np.ndarray:
    """The window (rows r0..r1, columns c0..c1 of the holding tile's pixel grid) of variable
    ``name``, pieced together from the tiles that cover it (NaN where none does)."""
    r0, r1, c0, c1 = window
    values = np.full((r1 - r0, c1 - c0), np.nan)
    for tile, (dr, dc) in tiles:
        if name not in tile.data_vars or tile[name].dims != ("y", "x"):
            continue
        height, width = tile[name].shape
        top, bottom = max(r0, dr), min(r1, dr + height)
        left, right = max(c0, dc), min(c1, dc + width)
        if top >= bottom or left >= right:
            continue
        piece = tile[name].isel(y=slice(top - dr, bottom - dr), x=slice(left - dc, right - dc))
        values[top - r0 : bottom - r0, left - c0 : right - c0] = np.asarray(
            piece.values, dtype="float64"
        )
    return values


def _summarise(
    site: Site, values: np.ndarray, inside: np.ndarray, at: tuple[int, int]
) -> dict[str, Any]:
    valid = values[inside & np.isfinite(values)]
    pixel = float(values[at])
    return {
        "sample_id": site.sample_id,
        "lon_deg": site.lon_deg,
        "lat_deg": site.lat_deg,
        "radius_m": float(site.uncertainty_m or 0.0),
        "pixel_value": pixel if math.isfinite(pixel) else None,
        "mean": float(valid.mean()) if valid.size else None,
        "std": float(valid.std()) if valid.size else None,
        "minimum": float(valid.min()) if valid.size else None,
        "maximum": float(valid.max()) if valid.size else None,
        "count": int(valid.size),
        "pixels_in_disc": int(inside.sum()),
    }


class _Grid:
    """Pixel geometry of a north-up grid: site → containing pixel, disc → window and mask."""

    def __init__(
        self,
        crs: pyproj.CRS,
        affine: tuple[float, float, float, float],
        shape: tuple[int, int],
    ) -> None:
        self.a, self.c, self.e, self.f = affine
        self.shape = shape
        self.crs = crs
        self.forward = pyproj.Transformer.from_crs(moon_geographic(), crs, always_xy=True)
        self.inverse = pyproj.Transformer.from_crs(crs, moon_geographic(), always_xy=True)

    def _pixel(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.forward.transform(lon, lat)
        return (
            np.floor((np.asarray(y) - self.f) / self.e).astype(int),
            np.floor((np.asarray(x) - self.c) / self.a).astype(int),
        )

    def offset_of(self, other: xr.Dataset) -> tuple[int, int] | None:
        """Where ``other``'s top-left pixel lies in this grid's pixels (rows, columns), when
        ``other`` is a tile of the same grid: same CRS, same pixel size, whole-pixel offset."""
        try:
            crs = pyproj.CRS.from_user_input(other.rio.crs)
        except (pyproj.exceptions.CRSError, TypeError):
            return None
        a, _, c, _, e, f = tuple(other.rio.transform())[:6]
        if not crs.equals(self.crs) or not (
            math.isclose(a, self.a, rel_tol=1e-9) and math.isclose(e, self.e, rel_tol=1e-9)
        ):
            return None
        rows, cols = (f - self.f) / self.e, (c - self.c) / self.a
        if abs(rows - round(rows)) > 1e-6 or abs(cols - round(cols)) > 1e-6:
            return None
        return round(rows), round(cols)

    def extent(
        self, cube: xr.Dataset, offsets: Sequence[tuple[int, int]]
    ) -> tuple[int, int, int, int]:
        """Rows and columns (first, past the last) a disc window may span: the tile alone
        without neighbours; with them, the whole named grid (``lunarchive:grid``)."""
        height, width = self.shape
        if not offsets:
            return 0, height, 0, width
        name = cube.attrs.get("lunarchive:grid")
        if isinstance(name, str):
            try:
                grid = named_grid(name)
            except KeyError:
                grid = None
            if grid is not None:
                x0, y0 = grid.origin
                dr = round((y0 - self.f) / self.e)
                dc = round((x0 - self.c) / self.a)
                return dr, dr + grid.shape[0], dc, dc + grid.shape[1]
        return (
            min(0, *(r for r, _ in offsets)),
            max(height, *(r + height for r, _ in offsets)),
            min(0, *(c for _, c in offsets)),
            max(width, *(c + width for _, c in offsets)),
        )

    def window(
        self, site: Site, bounds: tuple[int, int, int, int]
    ) -> tuple[tuple[int, int, int, int], tuple[int, int]] | None:
        """The disc's pixel window (within ``bounds``) and the pixel holding the site, or
        None when this tile does not hold it."""
        rows, cols = self._pixel(np.array([site.lon_deg]), np.array([site.lat_deg]))
        row, col = int(rows[0]), int(cols[0])
        height, width = self.shape
        if not (0 <= row < height and 0 <= col < width):
            return None
        radius = float(site.uncertainty_m or 0.0)
        if radius <= 0.0:
            return (row, row + 1, col, col + 1), (row, col)
        azimuths = np.linspace(0.0, 360.0, _DISC_POINTS, endpoint=False)
        lons, lats, _ = _MOON.fwd(
            np.full(_DISC_POINTS, site.lon_deg),
            np.full(_DISC_POINTS, site.lat_deg),
            azimuths,
            np.full(_DISC_POINTS, radius),
        )
        ring_rows, ring_cols = self._pixel(np.asarray(lons), np.asarray(lats))
        top, bottom, left, right = bounds
        # one pixel of margin: a centre inside the disc may lie just past a boundary sample
        r0 = max(top, min(int(ring_rows.min()), row) - 1)
        r1 = min(bottom, max(int(ring_rows.max()), row) + 2)
        c0 = max(left, min(int(ring_cols.min()), col) - 1)
        c1 = min(right, max(int(ring_cols.max()), col) + 2)
        return (r0, r1, c0, c1), (row, col)

    def disc(
        self, site: Site, window: tuple[int, int, int, int], at: tuple[int, int]
    ) -> np.ndarray:
        """Which pixels of the window have their centre within the disc (great-circle)."""
        r0, r1, c0, c1 = window
        rows, cols = np.mgrid[r0:r1, c0:c1]
        xs = self.c + self.a * (cols + 0.5)
        ys = self.f + self.e * (rows + 0.5)
        lons, lats = self.inverse.transform(xs.ravel(), ys.ravel())
        _, _, distance = _MOON.inv(
            np.full(xs.size, site.lon_deg), np.full(xs.size, site.lat_deg), lons, lats
        )
        inside = (np.asarray(distance) <= float(site.uncertainty_m or 0.0)).reshape(xs.shape)
        inside[at[0] - r0, at[1] - c0] = True
        return inside


_SCHEMA: Final = pa.schema([
    ("sample_id", pa.string()), ("cube_item", pa.string()), ("cube_version", pa.string()),
    ("variable", pa.string()), ("units", pa.string()), ("lon_deg", pa.float64()),
    ("lat_deg", pa.float64()), ("radius_m", pa.float64()), ("row", pa.int64()),
    ("col", pa.int64()), ("pixel_value", pa.float64()), ("mean", pa.float64()),
    ("std", pa.float64()), ("minimum", pa.float64()), ("maximum", pa.float64()),
    ("count", pa.int64()), ("pixels_in_disc", pa.int64()), ("pixel_size_x_m", pa.float64()),
    ("pixel_size_y_m", pa.float64()),
])  # fmt: skip


def at_site_parquet_bytes(rows: Sequence[AtSite]) -> bytes:
    """Parquet of at-site rows, sorted (sample, cube item, variable): same rows, same bytes."""
    ordered = sorted(rows, key=lambda r: (r.sample_id, r.cube_item, r.variable))
    table = pa.Table.from_pylist([asdict(r) for r in ordered], schema=_SCHEMA)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def at_site_from_parquet(data: bytes) -> list[AtSite]:
    return [AtSite(**row) for row in read_parquet_bytes(data).to_pylist()]

"""Reproject a lazy lunar raster onto a GeoBox, one GDAL warp per output chunk, on Dask.

odc-geo gives the grids (GeoBox) and GDAL (through rasterio) does the resampling arithmetic;
what is ours is the plan: which source window each output chunk needs. odc-geo plans by
projecting chunk outlines, which fails where an outline cannot be projected (a polar chunk
seen from a global equirectangular source: the pole is a line there). Here each output chunk
is sampled on a dense lattice of points, with its edges and, when it holds one, the pole; the
points are taken to source pixel coordinates, and their span plus the kernel's reach is the
window. A chunk whose points all fall outside the source is NaN without reading anything.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import dask
import dask.array
import numpy as np
import pyproj
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from rasterio.enums import Resampling  # type: ignore[import-untyped]
from rasterio.warp import reproject  # type: ignore[import-untyped]

from lunarchive.processing.crs import MOON_RADIUS_M

__all__ = ["SAMPLES_PER_EDGE", "reproject_lazy"]

# dask's functions carry no annotations, which mypy --strict refuses to call: typed as Any.
da: Any = dask.array
_delayed: Any = getattr(dask, "delayed")  # noqa: B009

SAMPLES_PER_EDGE: Final = 33  # lattice points per chunk edge when planning source windows
_KERNEL_PAD_PX: Final = 4  # enough source pixels around the window for lanczos
_WARP_MEM_LIMIT_MB: Final = 1024  # a ceiling for GDAL's chunking, not an allocation
_SNAP_PX: Final = 1e-6  # origin noise tolerated when two sources share a pixel grid


def reproject_lazy(
    source: xr.DataArray, geobox: GeoBox, *, resampling: str, chunk_px: int
) -> xr.DataArray:
    """``source`` (``(y, x)`` or ``(band, y, x)``, float, NaN empty, georeferenced) on
    ``geobox``, as a lazy float32 DataArray chunked ``chunk_px`` (NaN where no source)."""
    return mosaic_lazy([source], geobox, resampling=resampling, chunk_px=chunk_px)


def mosaic_lazy(
    sources: Sequence[xr.DataArray], geobox: GeoBox, *, resampling: str, chunk_px: int
) -> xr.DataArray:
    """``sources`` warped onto ``geobox`` and merged first-wins (a pixel takes the first
    source, in order, with data there), lazily: one task per output chunk, which reads only
    the windows of the sources it needs and stops warping once the chunk is full."""
    if not sources:
        raise ValueError("mosaic_lazy needs at least one source")
    method = Resampling[resampling]
    dst_crs = _crs_of(geobox)
    first = sources[0]
    bands = first.sizes["band"] if first.ndim == 3 else 1
    dst_pixel_m = _pixel_m(dst_crs, geobox.resolution.xy)
    plans = _plans(sources, dst_crs, dst_pixel_m)
    dst_warp_crs = _warp_crs(dst_crs)
    ny, nx = geobox.shape
    rows = []
    for y0 in range(0, ny, chunk_px):
        row = []
        for x0 in range(0, nx, chunk_px):
            part = geobox[y0 : min(y0 + chunk_px, ny), x0 : min(x0 + chunk_px, nx)]
            row.append(_merged_chunk(plans, part, bands, method, dst_warp_crs))
        rows.append(row)
    warped = da.block(rows)
    ys, xs = _centres(geobox)
    coords: dict[str, Any] = {"y": ys, "x": xs}
    if first.ndim == 3:
        coords.update({str(k): v for k, v in first.coords.items() if v.dims == ("band",)})
        coords["band"] = first["band"]
        dims: tuple[str, ...] = ("band", "y", "x")
    else:
        warped = warped[0]
        dims = ("y", "x")
    return xr.DataArray(warped, dims=dims, coords=coords, attrs=dict(first.attrs))


@dataclass(frozen=True)
class _Member:
    data: Any  # dask array (band, y, x) float32
    row: int  # offset of its first pixel in the group's grid
    col: int


@dataclass(frozen=True)
class _SourcePlan:
    """Consecutive sources on one pixel grid (same CRS, resolution and alignment), read as
    one virtual mosaic, first-wins, as gdalbuildvrt would: so that a kernel straddling two
    input tiles sees both, and each output chunk warps once per grid, not once per file."""

    members: tuple[_Member, ...]
    shape: tuple[int, int]
    affine: Affine
    crs_wkt: str
    to_source: pyproj.Transformer
    poles: tuple[tuple[float, float], ...]
    scale: float  # GDAL's XSCALE/YSCALE: output pixels per source pixel, at most 1

    @classmethod
    def of(
        cls, sources: Sequence[xr.DataArray], dst_crs: pyproj.CRS, dst_pixel_m: float
    ) -> _SourcePlan:
        first = sources[0]
        src_crs = pyproj.CRS.from_user_input(first.rio.crs)
        base = first.rio.transform()
        offsets = [_grid_offset(base, source.rio.transform()) for source in sources]
        row0 = min(r for r, _ in offsets)
        col0 = min(c for _, c in offsets)
        members = []
        for source, (r, c) in zip(sources, offsets, strict=True):
            data = da.asarray(source.data).astype(np.float32)
            members.append(_Member(data if data.ndim == 3 else data[None], r - row0, c - col0))
        rows = max(m.row + m.data.shape[-2] for m in members)
        cols = max(m.col + m.data.shape[-1] for m in members)
        return cls(
            members=tuple(members),
            shape=(rows, cols),
            affine=base * Affine.translation(col0, row0),
            crs_wkt=_warp_crs(src_crs),
            to_source=pyproj.Transformer.from_crs(dst_crs, src_crs, always_xy=True),
            poles=tuple(_poles_in(dst_crs)),
            scale=min(1.0, _pixel_m(src_crs, first.rio.resolution()) / dst_pixel_m),
        )

    def window_blocks(self, window: Window) -> list[tuple[Any, int, int]]:
        """The members' parts inside ``window``: (dask block, row, col within the window)."""
        row0, row1, col0, col1 = window
        parts = []
        for m in self.members:
            ny, nx = m.data.shape[-2:]
            r0, r1 = max(row0, m.row), min(row1, m.row + ny)
            c0, c1 = max(col0, m.col), min(col1, m.col + nx)
            if r0 < r1 and c0 < c1:
                block = m.data[:, r0 - m.row : r1 - m.row, c0 - m.col : c1 - m.col]
                parts.append((block, r0 - row0, c0 - col0))
        return parts


def _grid_offset(base: Affine, other: Affine) -> tuple[int, int]:
    """(row, col) of ``other``'s origin on ``base``'s pixel grid; ValueError if off it."""
    col, row = ~base * (other.c, other.f)
    if (other.a, other.b, other.d, other.e) != (base.a, base.b, base.d, base.e) or max(
        abs(col - round(col)), abs(row - round(row))
    ) > _SNAP_PX:
        raise ValueError("not on the same pixel grid")
    return round(row), round(col)


def _plans(
    sources: Sequence[xr.DataArray], dst_crs: pyproj.CRS, dst_pixel_m: float
) -> list[_SourcePlan]:
    """Runs of consecutive sources that share a pixel grid, each as one plan (the order,
    and so the first-wins precedence, is kept)."""
    runs: list[list[xr.DataArray]] = []
    for source in sources:
        if runs and _same_grid(runs[-1][0], source):
            runs[-1].append(source)
        else:
            runs.append([source])
    return [_SourcePlan.of(run, dst_crs, dst_pixel_m) for run in runs]


def _same_grid(a: xr.DataArray, b: xr.DataArray) -> bool:
    if a.ndim != b.ndim or not pyproj.CRS.from_user_input(a.rio.crs).equals(b.rio.crs):
        return False
    try:
        _grid_offset(a.rio.transform(), b.rio.transform())
    except ValueError:
        return False
    return True


def _merged_chunk(
    plans: Sequence[_SourcePlan], part: GeoBox, bands: int, method: Resampling, dst_warp_crs: str
) -> Any:
    shape = (bands, *part.shape)
    sources: list[tuple[list[tuple[Any, int, int]], tuple[int, int], Affine, str, float]] = []
    for plan in plans:
        window = _source_window(part, plan.to_source, plan.affine, plan.shape, list(plan.poles))
        if window is None:
            continue
        parts = plan.window_blocks(window)
        if not parts:
            continue
        row0, row1, col0, col1 = window
        transform = plan.affine * Affine.translation(col0, row0)
        sources.append((parts, (row1 - row0, col1 - col0), transform, plan.crs_wkt, plan.scale))
    if not sources:
        return da.full(shape, np.nan, dtype=np.float32, chunks=shape)
    task = _delayed(_warp_merge)(sources, part.affine, dst_warp_crs, shape, method)
    return da.from_delayed(task, shape=shape, dtype=np.float32)


def _warp_crs(crs: pyproj.CRS) -> str:
    """The CRS as GDAL's warper should get it: a PROJ string when one says exactly the same
    (the lunar CRSs are spheres), else WKT. From WKT, PROJ searches its database for the
    operation on every warp call (18 ms each, measured, most of a 512² warp); a PROJ string
    builds the pipeline directly (3 ms). The CRS written to the cube is never this one."""
    return _warp_crs_of_wkt(crs.to_wkt())


@functools.cache
def _warp_crs_of_wkt(wkt: str) -> str:
    crs = pyproj.CRS.from_wkt(wkt)
    ellipsoid = crs.ellipsoid
    if ellipsoid is None or ellipsoid.semi_major_metre != ellipsoid.semi_minor_metre:
        return wkt
    sphere = f"+R={ellipsoid.semi_major_metre!r}"
    if crs.is_geographic:
        candidate = f"+proj=longlat {sphere} +no_defs"
    elif crs.is_projected and crs.coordinate_operation is not None:
        steps = crs.coordinate_operation.to_proj4().split("+step ")
        last = steps[-1].strip()
        if not last.startswith("+proj=") or crs.axis_info[0].unit_conversion_factor != 1.0:
            return wkt
        if "+R=" not in last:
            last = f"{last} {sphere}"
        candidate = f"{last} +units=m +no_defs"
    else:
        return wkt
    same = pyproj.CRS.from_user_input(candidate).equals(crs, ignore_axis_order=True)
    return candidate if same else wkt


def _pixel_m(crs: pyproj.CRS, resolution: tuple[float, float]) -> float:
    """A nominal pixel size in metres (geographic degrees taken at the equator)."""
    size = math.sqrt(abs(resolution[0] * resolution[1]))
    if crs.is_geographic:
        return size * math.radians(1.0) * MOON_RADIUS_M
    return size * crs.axis_info[0].unit_conversion_factor


def _crs_of(geobox: GeoBox) -> pyproj.CRS:
    if geobox.crs is None:
        raise ValueError("a GeoBox without a CRS cannot be a lunar grid")
    return pyproj.CRS.from_user_input(geobox.crs.to_wkt())


def _centres(geobox: GeoBox) -> tuple[np.ndarray, np.ndarray]:
    a = geobox.affine
    ny, nx = geobox.shape
    return a.f + a.e * (np.arange(ny) + 0.5), a.c + a.a * (np.arange(nx) + 0.5)


def _poles_in(crs: pyproj.CRS) -> list[tuple[float, float]]:
    """Where the poles are in ``crs`` when each is one point there (polar projections)."""
    to_crs = pyproj.Transformer.from_crs("IAU_2015:30100", crs, always_xy=True)
    found = []
    for lat in (90.0, -90.0):
        xs, ys = to_crs.transform([0.0, 90.0, 180.0], [lat] * 3, errcheck=False)
        points = np.column_stack([xs, ys])
        if np.isfinite(points).all() and np.ptp(points, axis=0).max() < 1e-3:
            found.append((float(xs[0]), float(ys[0])))
    return found


Window = tuple[int, int, int, int]  # row0, row1, col0, col1 (end exclusive)


def _source_window(
    part: GeoBox,
    to_source: pyproj.Transformer,
    src_affine: Affine,
    src_shape: tuple[int, ...],
    poles: list[tuple[float, float]],
) -> Window | None:
    """The source pixels that output chunk ``part`` needs, or None if it needs none."""
    left, bottom, right, top = part.boundingbox
    steps = np.linspace(0.0, 1.0, SAMPLES_PER_EDGE)
    gx, gy = np.meshgrid(left + (right - left) * steps, bottom + (top - bottom) * steps)
    xs, ys = gx.ravel(), gy.ravel()
    inside = [(x, y) for x, y in poles if left <= x <= right and bottom <= y <= top]
    if inside:
        xs = np.concatenate([xs, [x for x, _ in inside]])
        ys = np.concatenate([ys, [y for _, y in inside]])
    sx, sy = to_source.transform(xs, ys, errcheck=False)
    cols, rows = ~src_affine * (np.asarray(sx), np.asarray(sy))
    finite = np.isfinite(cols) & np.isfinite(rows)
    if inside:
        rows, cols, finite = _with_pole_lines(rows, cols, finite, src_affine, src_shape, to_source)
    if not finite.any():
        return None
    height, width = src_shape
    row0 = max(0, math.floor(rows[finite].min()) - _KERNEL_PAD_PX)
    row1 = min(height, math.ceil(rows[finite].max()) + _KERNEL_PAD_PX)
    col0 = max(0, math.floor(cols[finite].min()) - _KERNEL_PAD_PX)
    col1 = min(width, math.ceil(cols[finite].max()) + _KERNEL_PAD_PX)
    if col1 - col0 > width / 2:
        # The chunk wraps round the source's seam (a global grid seen from a polar one): its
        # points fall near both edges, and those between the lattice points and the edges
        # are needed too. Half the width or more: read it all.
        col0, col1 = 0, width
    if row0 >= row1 or col0 >= col1:
        return None
    return (row0, row1, col0, col1)


def _with_pole_lines(
    rows: np.ndarray,
    cols: np.ndarray,
    finite: np.ndarray,
    src_affine: Affine,
    src_shape: tuple[int, ...],
    to_source: pyproj.Transformer,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A chunk holding a pole needs every source pixel at the pole's latitude: in a
    cylindrical source the pole is a whole row, whose columns the lattice cannot reach."""
    near = rows[finite]
    width = src_shape[1]
    edge_rows = np.array([near.min(), near.max()])
    all_cols = np.array([0.0, float(width)])
    extra_rows = np.repeat(edge_rows, 2)
    extra_cols = np.tile(all_cols, 2)
    return (
        np.concatenate([rows, extra_rows]),
        np.concatenate([cols, extra_cols]),
        np.concatenate([finite, np.ones(4, dtype=bool)]),
    )


def _warp_merge(
    sources: Sequence[
        tuple[list[tuple[np.ndarray, int, int]], tuple[int, int], Affine, str, float]
    ],
    dst_transform: Affine,
    dst_crs: str,
    shape: tuple[int, ...],
    method: Resampling,
) -> np.ndarray:
    merged = np.full(shape, np.nan, dtype=np.float32)
    layer = np.empty(shape, dtype=np.float32)
    for parts, (rows, cols), transform, crs, scale in sources:
        source = _assemble(parts, (shape[0], rows, cols))
        layer.fill(np.nan)
        # A block without NaN needs no validity mask: GDAL's fast path (as gdalwarp's on
        # inputs without nodata). The output starts NaN either way.
        nodata = np.nan if np.isnan(source).any() else None
        reproject(
            source,
            layer,
            src_transform=transform,
            src_crs=crs,
            src_nodata=nodata,
            dst_transform=dst_transform,
            dst_crs=dst_crs,
            dst_nodata=np.nan,
            resampling=method,
            num_threads=1,
            init_dest_nodata=False,
            # One warp over the whole window: GDAL would otherwise cut a large window into
            # pieces and lose a strip where a piece's outline crosses the source's seam.
            warp_mem_limit=_WARP_MEM_LIMIT_MB,
            # The kernel's reach from the nominal resolutions, not from each chunk's window
            # (GDAL's default), so a chunk's result does not depend on how the tile is cut.
            XSCALE=scale,
            YSCALE=scale,
        )
        np.copyto(merged, layer, where=np.isnan(merged))
        if not np.isnan(merged).any():
            break  # full: later sources cannot change it
    return merged


def _assemble(
    parts: Sequence[tuple[np.ndarray, int, int]], shape: tuple[int, int, int]
) -> np.ndarray:
    """One source window from its members' parts, first-wins (a VRT's mosaic, in memory)."""
    if len(parts) == 1:
        block, row, col = parts[0]
        if block.shape == shape:
            return np.ascontiguousarray(block, dtype=np.float32)
    window = np.full(shape, np.nan, dtype=np.float32)
    for block, row, col in parts:
        target = window[:, row : row + block.shape[1], col : col + block.shape[2]]
        np.copyto(target, block, where=np.isnan(target))
    return window

"""Unit tests of the warp plan (processing/warp.py): what each output chunk's task reads and
how it warps, checked against surfaces whose true values are known at every pixel.

A linear function of longitude and latitude is interpolated exactly by bilinear resampling,
so on an equirectangular grid the output must equal it to float32 precision; a smooth function
of the unit vector (no seam, no polar singularity) checks the polar grids.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pyproj
import pytest
import rasterio  # type: ignore[import-untyped]
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox

from lunarchive.processing import warp
from lunarchive.processing.crs import MOON_RADIUS_M
from lunarchive.processing.pyramid import _write_chunks
from lunarchive.processing.readers import open_dem
from lunarchive.processing.tiles import split_at_antimeridian
from lunarchive.processing.warp import mosaic_lazy

pytestmark = pytest.mark.filterwarnings(
    "ignore:Use `@` matmul instead of `\\*` mul operator:PendingDeprecationWarning"
)
DEGREE_M = math.pi * MOON_RADIUS_M / 180.0


@pytest.fixture(autouse=True)
def dask_on_one_thread() -> Iterator[None]:
    # rasterio's warp silences warnings in a way that is not thread-safe (see test_processing).
    with dask.config.set(scheduler="synchronous"):
        yield


def linear(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    return 3.0 * lon - 2.0 * lat + 100.0


def smooth(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    lon_r, lat_r = np.radians(lon), np.radians(lat)
    vx, vy, vz = np.cos(lat_r) * np.cos(lon_r), np.cos(lat_r) * np.sin(lon_r), np.sin(lat_r)
    result: np.ndarray = 2000.0 * np.sin(3.0 * vx) + 1500.0 * np.cos(2.0 * vy + 0.5) + 1000.0 * vz
    return result


def geographic(
    surface: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    west: float,
    north: float,
    step: float,
    shape: tuple[int, int],
    chunks: int | tuple[int, int],
    reads: list[int] | None = None,
) -> xr.DataArray:
    """A lazy IAU_2015:30100 raster sampling ``surface`` at pixel centres; each computed
    chunk appends its size to ``reads``."""
    height, width = shape
    lons = west + step * (np.arange(width) + 0.5)
    lats = north - step * (np.arange(height) + 0.5)
    values = surface(lons[None, :], lats[:, None]).astype(np.float32)
    data = da.from_array(values, chunks=chunks)
    if reads is not None:

        def counted(block: np.ndarray) -> np.ndarray:
            if block.size:  # not dask's call on an empty array, to learn the output type
                reads.append(block.size)
            return block

        data = data.map_blocks(counted, dtype=np.float32)
    array = xr.DataArray(data, dims=("y", "x"), coords={"y": lats, "x": lons})
    array = array.rio.write_crs("IAU_2015:30100")
    result: xr.DataArray = array.rio.write_transform(Affine(step, 0, west, 0, -step, north))
    return result


def grid(crs: str, *, centre: tuple[float, float], pixel_m: float, size: int) -> GeoBox:
    x, y = centre
    half = size * pixel_m / 2.0
    return GeoBox((size, size), Affine(pixel_m, 0, x - half, 0, -pixel_m, y + half), crs)


def truth(geobox: GeoBox, surface: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    ny, nx = geobox.shape
    cols, rows = np.meshgrid(np.arange(nx) + 0.5, np.arange(ny) + 0.5)
    xs, ys = geobox.affine @ (cols, rows)
    assert geobox.crs is not None
    to_lonlat = pyproj.Transformer.from_crs(geobox.crs.to_wkt(), "IAU_2015:30100", always_xy=True)
    lons, lats = to_lonlat.transform(xs, ys)
    return surface(np.asarray(lons), np.asarray(lats))


def test_each_source_chunk_is_read_once_however_many_output_chunks_need_it() -> None:
    reads: list[int] = []
    source = geographic(
        linear, west=-4.0, north=4.0, step=0.02, shape=(400, 400), chunks=100, reads=reads
    )
    geobox = grid("IAU_2015:30110", centre=(0.0, 0.0), pixel_m=0.02 * DEGREE_M, size=384)
    mosaic = mosaic_lazy([source], geobox, resampling="bilinear", chunk_px=64)
    values = mosaic.values

    # 36 output chunks, most of whose windows straddle two or four 100-pixel source chunks
    # (the kernel's margin too): each of the 16 source chunks is computed exactly once.
    assert mosaic.data.numblocks == (6, 6)
    assert len(reads) == 16
    assert sum(reads) == 400 * 400
    assert np.isfinite(values).all()


def _geotiff_tiles(folder: Path, *, tiles: int, px: int, step: float) -> list[Path]:
    """``tiles`` × ``tiles`` adjacent GeoTIFFs of ``smooth`` (float32, NaN holes) centred on
    (0°, 0°), 256-pixel blocks."""
    paths = []
    west0 = north0 = tiles * px * step / 2.0
    for r in range(tiles):
        for c in range(tiles):
            west, north = -west0 + c * px * step, north0 - r * px * step
            lons = west + step * (np.arange(px) + 0.5)
            lats = north - step * (np.arange(px) + 0.5)
            values = smooth(lons[None, :], lats[:, None]).astype(np.float32)
            values[10:14, 20:40] = np.nan
            path = folder / f"t{r}{c}.tif"
            profile = {"width": px, "height": px, "count": 1, "dtype": "float32"}
            with rasterio.open(
                path, "w", driver="GTiff", crs="IAU_2015:30100", tiled=True, blockxsize=256,
                blockysize=256, transform=Affine(step, 0, west, 0, -step, north), **profile,
            ) as dst:  # fmt: skip
                dst.write(values, 1)
            paths.append(path)
    return paths


@pytest.mark.parametrize("crs", ["IAU_2015:30110", "IAU_2015:30130"])
def test_products_as_opened_are_read_window_by_window_with_the_values_of_chunks(
    tmp_path: Path, crs: str
) -> None:
    sources = [open_dem(p) for p in _geotiff_tiles(tmp_path, tiles=2, px=600, step=0.01)]
    if crs == "IAU_2015:30110":
        geobox = grid(crs, centre=(0.0, 0.0), pixel_m=0.013 * DEGREE_M, size=500)
    else:  # the equator seen from the north pole (twice the scale): a PROJ warp
        equator = -2.0 * MOON_RADIUS_M
        geobox = grid(crs, centre=(0.0, equator), pixel_m=0.026 * DEGREE_M, size=300)
    direct = mosaic_lazy(sources, geobox, resampling="bilinear", chunk_px=128)
    # The same sources after an operation (a new dask array): warped from their chunks.
    chunked = mosaic_lazy([s + 0.0 for s in sources], geobox, resampling="bilinear", chunk_px=128)

    layers = {str(key[0] if isinstance(key, tuple) else key).split("-")[0]
              for key in dict(direct.data.__dask_graph__())}  # fmt: skip
    assert layers == {"warp"}  # no read or cut tasks: each task reads its windows
    assert {"read", "cut"} & {
        str(key[0] if isinstance(key, tuple) else key).split("-")[0]
        for key in dict(chunked.data.__dask_graph__())
    }
    values = direct.values
    assert 0.5 < np.isfinite(values).mean() < 1.0  # the tiles' data and their holes
    np.testing.assert_array_equal(values, chunked.values)


def test_an_equirectangular_source_on_an_equirectangular_grid_warps_as_an_affine_map() -> None:
    source = geographic(linear, west=-4.0, north=4.0, step=0.02, shape=(400, 400), chunks=128)
    geobox = grid("IAU_2015:30110", centre=(1000.0, -2000.0), pixel_m=500.0, size=300)
    dst_crs = pyproj.CRS.from_user_input("IAU_2015:30110")
    plan = warp._plans([source], dst_crs, 500.0, geobox)[0]

    assert plan.linear is not None  # no PROJ pipeline per warp call
    mosaic = mosaic_lazy([source], geobox, resampling="bilinear", chunk_px=128).values
    expected = truth(geobox, linear)
    # Bilinear interpolation of a linear function is exact: float32 rounding only.
    np.testing.assert_allclose(mosaic, expected, rtol=0, atol=1e-3)


def test_a_polar_grid_from_a_cylindrical_source_is_not_an_affine_map() -> None:
    source = geographic(smooth, west=-180.0, north=-80.0, step=0.1, shape=(100, 3600), chunks=600)
    geobox = grid("IAU_2015:30135", centre=(0.0, 0.0), pixel_m=3000.0, size=64)
    dst_crs = pyproj.CRS.from_user_input("IAU_2015:30135")

    assert warp._plans([source], dst_crs, 3000.0, geobox)[0].linear is None


def test_a_chunk_across_the_seam_of_a_global_source_reads_round_it_not_all_of_it() -> None:
    step = 0.05
    source = geographic(
        smooth, west=-180.0, north=-80.0, step=step, shape=(200, 7200), chunks=(200, 900)
    )
    # A south-polar chunk on the 180° meridian, away from the pole: its points fall near
    # both edges of the source.
    to_polar = pyproj.Transformer.from_crs("IAU_2015:30100", "IAU_2015:30135", always_xy=True)
    x, y = to_polar.transform(180.0, -84.0)
    geobox = grid("IAU_2015:30135", centre=(x, y), pixel_m=1500.0, size=64)
    dst_crs = pyproj.CRS.from_user_input("IAU_2015:30135")
    plan = warp._plans([source], dst_crs, 1500.0, geobox)[0]
    window = warp._source_window(geobox, plan)

    assert plan.wraps
    assert window is not None
    _, _, col0, col1 = window
    assert col1 > 7200  # on past the east edge, from the west edge
    assert col1 - col0 < 7200 / 4  # not every column
    cuts = warp._Cuts("cut-test")
    parts = plan.window_parts(window, cuts)
    assert {chunk[-1] for chunk in _source_chunks(parts, cuts)} == {0, 7}

    mosaic = mosaic_lazy([source], geobox, resampling="bilinear", chunk_px=32).values
    assert np.isfinite(mosaic).all()
    assert np.abs(mosaic - truth(geobox, smooth)).max() < 1.0


def test_a_chunk_holding_the_pole_warps_in_pieces_whose_windows_fit_the_budget() -> None:
    step = 0.01
    source = geographic(
        smooth, west=-180.0, north=-88.0, step=step, shape=(200, 36000), chunks=(200, 4000)
    )
    geobox = grid("IAU_2015:30135", centre=(0.0, 0.0), pixel_m=300.0, size=256)
    dst_crs = pyproj.CRS.from_user_input("IAU_2015:30135")
    plans = warp._plans([source], dst_crs, 300.0, geobox)
    pieces = warp._pieces(plans, geobox, (0, 0), 1, warp._warp_crs(dst_crs), warp._Cuts("c"))

    assert len(pieces) > 1
    covered = np.zeros(geobox.shape, dtype=int)
    for row, col, _, (ny, nx), windows in pieces:
        covered[row : row + ny, col : col + nx] += 1
        for _, (rows, cols), *_ in windows:
            assert rows * cols * 4 <= warp._WINDOW_BUDGET_BYTES or min(ny, nx) < 32
    assert (covered == 1).all()  # the pieces tile the chunk

    mosaic = mosaic_lazy([source], geobox, resampling="bilinear", chunk_px=256).values
    assert np.isfinite(mosaic).all()
    assert np.abs(mosaic - truth(geobox, smooth)).max() < 1.0


def _source_chunks(parts: list[Any], cuts: Any) -> list[Any]:
    """The keys of the source chunks a window's parts come from (cut or whole)."""
    return [
        cuts.tasks[ref.key].args[0].key if ref.key in cuts.tasks else ref.key for ref, _, _ in parts
    ]


def test_a_task_takes_a_cut_of_a_chunk_mostly_outside_its_window() -> None:
    source = geographic(linear, west=-4.0, north=4.0, step=0.02, shape=(400, 400), chunks=400)
    geobox = grid("IAU_2015:30110", centre=(0.0, 0.0), pixel_m=0.02 * DEGREE_M, size=64)
    dst_crs = pyproj.CRS.from_user_input("IAU_2015:30110")
    plan = warp._plans([source], dst_crs, 0.02 * DEGREE_M, geobox)[0]
    window = warp._source_window(geobox, plan)
    assert window is not None
    row0, row1, col0, col1 = window
    cuts = warp._Cuts("cut-test")

    [(ref, row, col)] = plan.window_parts(window, cuts)
    # The one 400 × 400 chunk is cut to the window (a copy): the warp task holds that alone.
    cut = cuts.tasks[ref.key]
    assert cut.args[1:] == (row0, row1, col0, col1)
    assert (row, col) == (0, 0)
    assert warp._cut(np.arange(400 * 400).reshape(400, 400), *cut.args[1:]).shape == (
        row1 - row0,
        col1 - col0,
    )

    mosaic = mosaic_lazy([source], geobox, resampling="bilinear", chunk_px=64).values
    np.testing.assert_allclose(mosaic, truth(geobox, linear), rtol=0, atol=1e-3)


def test_write_chunks_keep_dask_chunks_made_of_whole_stored_chunks() -> None:
    assert _write_chunks(((512, 512, 100), (512, 300)), (512, 512)) == (
        (512, 512, 100),
        (512, 300),
    )
    assert _write_chunks(((1024, 1024, 7), (1024,)), (512, 512)) == ((1024, 1024, 7), (1024,))
    # A chunk that ends inside a stored chunk (but for the last): one storage unit each.
    assert _write_chunks(((256, 256, 256), (512,)), (512, 512)) == (512, 512)
    assert _write_chunks(None, (512, 512)) == (512, 512)


def test_split_at_antimeridian_keeps_an_input_inside_the_seam_as_it_is() -> None:
    source = geographic(linear, west=-10.0, north=10.0, step=0.5, shape=(40, 40), chunks=20)
    assert split_at_antimeridian(source) == [source]
    assert split_at_antimeridian(source)[0] is source

    past = geographic(linear, west=170.0, north=10.0, step=0.5, shape=(40, 40), chunks=20)
    pieces = split_at_antimeridian(past)
    assert [p.sizes["x"] for p in pieces] == [20, 20]
    east, west = pieces
    assert float(east["x"].min()) > 170.0 and float(east["x"].max()) < 180.0
    assert float(west["x"].min()) > -180.0 and float(west["x"].max()) < -170.0
    np.testing.assert_array_equal(west.values, past.values[:, 20:])

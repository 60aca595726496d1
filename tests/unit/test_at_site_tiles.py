"""At-site sampling across tile edges: a disc that crosses the edge of the tile holding the
site takes the pixels of the neighbouring tiles of the same grid (processing/at_site.py)."""

from __future__ import annotations

import math

import numpy as np
import pyproj
import pytest
import rioxarray  # noqa: F401 - registers the .rio accessor
import xarray as xr

from lunarchive.processing.at_site import Site, sample_cube, sample_tiles
from lunarchive.processing.crs import MOON_RADIUS_M

DEGREE_M = math.pi * MOON_RADIUS_M / 180.0
PPD = 16
RES = DEGREE_M / PPD
MOON = pyproj.Geod(a=MOON_RADIUS_M, b=MOON_RADIUS_M)


def tile(col0: int, width: int = 10, height: int = 10, crs: str = "IAU_2015:30110") -> xr.Dataset:
    """A tile of moon-eqc-16 whose columns start at global column ``col0`` of the grid's
    row 1440 (the equator); each pixel holds its global column number."""
    cols = col0 + np.arange(width)
    values = np.tile(cols.astype(np.float32), (height, 1))
    values[0, 0] = np.nan  # an empty pixel: never counted
    x = -180.0 * DEGREE_M + (cols + 0.5) * RES
    y = -(np.arange(height) + 0.5) * RES  # from the equator southwards
    data = xr.DataArray(values, dims=("y", "x"), coords={"y": y, "x": x}, attrs={"units": "m"})
    cube = data.to_dataset(name="height").rio.write_crs(crs)
    cube.attrs["lunarchive:grid"] = "moon-eqc-16"
    return cube


def expected(site: Site, tiles: list[xr.Dataset]) -> tuple[float, float, float, int]:
    """Mean, minimum, maximum and count of the valid pixels with their centre in the disc."""
    found = []
    for cube in tiles:
        xs, ys = np.meshgrid(cube["x"].values, cube["y"].values)
        lons, lats = xs / DEGREE_M, ys / DEGREE_M
        _, _, distance = MOON.inv(
            np.full(xs.size, site.lon_deg),
            np.full(xs.size, site.lat_deg),
            lons.ravel(),
            lats.ravel(),
        )
        values = cube["height"].values.ravel().astype(np.float64)
        found.append(values[(distance <= site.uncertainty_m) & np.isfinite(values)])
    inside = np.concatenate(found)
    return float(inside.mean()), float(inside.min()), float(inside.max()), int(inside.size)


@pytest.fixture
def pair() -> list[xr.Dataset]:
    return [tile(1000), tile(1010)]  # side by side: columns 1000..1009 and 1010..1019


def test_a_disc_crossing_the_tile_edge_takes_the_neighbours_pixels(pair: list[xr.Dataset]) -> None:
    # 0.3 px west of the shared edge, 4 px radius: the disc reaches 4 columns into the east tile
    lon = (-180.0 + (1010 - 0.3) / PPD) + 0.0
    site = Site("s1", lon, -4.6 / PPD, uncertainty_m=4 * RES)
    rows, refused = sample_tiles(
        [(pair[0], "west", "v1"), (pair[1], "east", "v1")], [site], max_pixels=10_000
    )
    assert refused == []
    [row] = rows  # sampled once, in the tile holding the site
    assert (row.cube_item, row.row, row.col, row.pixel_value) == ("west", 4, 9, 1009.0)
    mean, low, high, count = expected(site, pair)
    assert (row.minimum, row.maximum, row.count) == (low, high, count)
    assert row.mean == pytest.approx(mean, rel=1e-12)
    assert row.maximum == 1013.0  # columns of the east tile are in the summary
    # without neighbours, the disc stops at the tile's edge (the earlier behaviour)
    [alone], _ = sample_cube(
        pair[0], [site], cube_item="west", cube_version="v1", max_pixels=10_000
    )
    assert alone.maximum == 1009.0
    assert alone.count == expected(site, [pair[0]])[3] < count


def test_a_site_in_the_east_tile_is_reported_there_with_the_west_pixels(
    pair: list[xr.Dataset],
) -> None:
    site = Site("s2", -180.0 + (1010 + 0.4) / PPD, -5.5 / PPD, uncertainty_m=3 * RES)
    rows, _ = sample_tiles(
        [(pair[0], "west", "v1"), (pair[1], "east", "v1")], [site], max_pixels=10_000
    )
    [row] = rows
    assert (row.cube_item, row.row, row.col, row.pixel_value) == ("east", 5, 0, 1010.0)
    mean, low, high, count = expected(site, pair)
    assert (row.minimum, row.maximum, row.count) == (low, high, count) and low == 1007.0
    assert row.mean == pytest.approx(mean, rel=1e-12)


def test_tiles_of_another_grid_lend_no_pixels(pair: list[xr.Dataset]) -> None:
    shifted = tile(1010).assign_coords(x=lambda d: d["x"] + RES / 3)  # not on the same lattice
    other_crs = tile(1010, crs="IAU_2015:30115")
    site = Site("s1", -180.0 + (1010 - 0.3) / PPD, -4.6 / PPD, uncertainty_m=4 * RES)
    for neighbour in (shifted, other_crs):
        [row], _ = sample_cube(
            pair[0], [site], cube_item="w", cube_version="v", max_pixels=10_000,
            neighbours=[neighbour],
        )  # fmt: skip
        assert row.maximum == 1009.0


def test_the_pixel_limit_counts_the_whole_disc_window(pair: list[xr.Dataset]) -> None:
    site = Site("s1", -180.0 + (1010 - 0.3) / PPD, -4.6 / PPD, uncertainty_m=4 * RES)
    rows, refused = sample_tiles(
        [(pair[0], "west", "v1"), (pair[1], "east", "v1")], [site], max_pixels=50
    )
    assert rows == [] and len(refused) == 1 and "more than 50" in refused[0]

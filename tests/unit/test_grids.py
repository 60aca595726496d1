"""Unit tests of lunarchive.processing.grids: named lunar grids, their tilings, touched tiles."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import rasterio  # type: ignore[import-untyped]

from lunarchive.processing.crs import MOON_RADIUS_M, lunar_footprint
from lunarchive.processing.grids import (
    GRID_NAMES,
    TILE_TARGET_PX,
    named_grid,
    overlaps,
    tiles_touching,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:Use `@` matmul instead of `\\*` mul operator:PendingDeprecationWarning"
)
DEGREE_M = math.pi * MOON_RADIUS_M / 180.0


def fixture_bounds(shared: Path, relative: str) -> tuple[object, tuple[float, ...]]:
    with rasterio.open(shared / "fixtures" / "real" / relative) as src:
        return src.crs, tuple(src.bounds)


def test_standard_grids_have_the_ladder_and_bounded_tiles() -> None:
    assert len(GRID_NAMES) == 20
    for name in GRID_NAMES:
        grid = named_grid(name)
        assert grid.tile_px <= TILE_TARGET_PX, name
        rows, cols = grid.tiling
        assert (rows - 1) * grid.tile_px < grid.shape[0] <= rows * grid.tile_px, name
        assert (cols - 1) * grid.tile_px < grid.shape[1] <= cols * grid.tile_px, name
    eqc = named_grid("moon-eqc-64")
    assert eqc.crs_code == "IAU_2015:30110"
    assert eqc.shape == (180 * 64, 360 * 64)
    assert eqc.tile_px == 30 * 64  # 30° tiles: the largest span dividing 180 within 2048 px
    assert eqc.resolution == pytest.approx(DEGREE_M / 64)
    assert named_grid("moon-eqc180-4").crs_code == "IAU_2015:30115"
    assert named_grid("moon-np-474").crs_code == "IAU_2015:30130"
    assert named_grid("moon-sp-474").crs_code == "IAU_2015:30135"


def test_equirectangular_tiles_are_whole_degree_boxes() -> None:
    grid = named_grid("moon-eqc-16")  # 90° tiles of 1440 px
    assert grid.tiling == (2, 4)
    tile = grid.tile("r001c002")
    left, bottom, right, top = tile.geobox.boundingbox
    assert (left / DEGREE_M, bottom / DEGREE_M) == pytest.approx((0.0, -90.0))
    assert (right / DEGREE_M, top / DEGREE_M) == pytest.approx((90.0, 0.0))
    assert tile.geobox.shape == (1440, 1440)
    assert str(tile.geobox.crs) == "IAU_2015:30110"
    assert [t.id for t in grid.tiles()][:3] == ["r000c000", "r000c001", "r000c002"]


def test_polar_grid_has_the_pole_at_the_centre_of_its_middle_tile() -> None:
    grid = named_grid("moon-sp-237")
    assert grid.tiling == (5, 5)
    left, bottom, right, top = grid.tile("r002c002").geobox.boundingbox
    assert left == -right and bottom == -top  # the pole (0, 0) at the centre
    assert right == pytest.approx(TILE_TARGET_PX / 2 * 237.0)
    # The grid's edge midpoints lie at (or just past) latitude −60°.
    reach = 2 * MOON_RADIUS_M * math.tan(math.radians(15.0))
    half = grid.shape[0] / 2 * grid.resolution
    assert reach <= half < reach + grid.tile_px * grid.resolution
    small = named_grid("moon-sp-7581")
    assert small.tiling == (1, 1)
    assert small.origin == (-123 * 7581.0, 123 * 7581.0)


@pytest.mark.parametrize("name", ["moon-mars-4", "moon-eqc-0", "moon-eqc-2.5", "eqc-4"])
def test_unknown_grid_names_are_refused(name: str) -> None:
    with pytest.raises(KeyError):
        named_grid(name)


def test_unknown_tile_ids_are_refused() -> None:
    with pytest.raises(KeyError, match="no tile 'r002c000'"):
        named_grid("moon-eqc-4").tile("r002c000")
    with pytest.raises(KeyError):
        named_grid("moon-eqc-4").tile("../r000c000")


def test_global_lola_product_touches_every_tile_of_the_coarse_grids(shared: Path) -> None:
    crs, bounds = fixture_bounds(shared, "derived/ldem_4_pds4.xml")
    for name in ("moon-eqc-4", "moon-eqc180-4", "moon-eqc-16"):
        grid = named_grid(name)
        assert len(tiles_touching(grid, crs, bounds)) == math.prod(grid.tiling), name
    # Global, so both polar caps: every tile of the coarse polar grids.
    assert [t.id for t in tiles_touching(named_grid("moon-np-7581"), crs, bounds)] == ["r000c000"]


def test_south_polar_product_touches_south_tiles_only(shared: Path) -> None:
    crs, bounds = fixture_bounds(shared, "derived/ldem_4_spole_iau30135.tif")
    assert [t.id for t in tiles_touching(named_grid("moon-sp-7581"), crs, bounds)] == ["r000c000"]
    assert tiles_touching(named_grid("moon-np-7581"), crs, bounds) == []
    # It reaches −48.4°: the southern row of 90° tiles, all longitudes.
    touched = [t.id for t in tiles_touching(named_grid("moon-eqc-16"), crs, bounds)]
    assert touched == ["r001c000", "r001c001", "r001c002", "r001c003"]
    assert len(tiles_touching(named_grid("moon-sp-237"), crs, bounds)) == 25


def test_a_product_across_the_antimeridian_touches_tiles_on_both_sides() -> None:
    # 2° × 2° around (180°, 0°) on the 180°-centred CRS: the seam of the 0°-centred grid.
    bounds = (-DEGREE_M, -DEGREE_M, DEGREE_M, DEGREE_M)
    touched = [t.id for t in tiles_touching(named_grid("moon-eqc-16"), "IAU_2015:30115", bounds)]
    assert touched == ["r000c000", "r000c003", "r001c000", "r001c003"]
    # On the 180°-centred grid the same box sits in the middle: 90..180 and 180..270.
    touched = [t.id for t in tiles_touching(named_grid("moon-eqc180-16"), "IAU_2015:30115", bounds)]
    assert touched == ["r000c001", "r000c002", "r001c001", "r001c002"]


def test_a_tile_sharing_only_an_edge_is_not_touched() -> None:
    grid = named_grid("moon-eqc-4")  # 180° tiles: the edge at 0°
    bounds = (0.0, 0.0, 10 * DEGREE_M, 10 * DEGREE_M)
    assert [t.id for t in tiles_touching(grid, "IAU_2015:30110", bounds)] == ["r000c001"]
    assert not overlaps(grid.tile("r000c000"), "IAU_2015:30110", bounds)
    assert overlaps(grid.tile("r000c001"), "IAU_2015:30110", bounds)


def test_a_global_grid_a_hair_past_one_pole_is_a_band_not_a_cap() -> None:
    half_circle = math.pi * MOON_RADIUS_M
    bounds = (-half_circle, -half_circle / 2 + 10.0, half_circle, half_circle / 2 + 100.0)
    bbox, geometry = lunar_footprint("IAU_2015:30110", bounds)
    assert bbox[0] == -180.0 and bbox[2] == 180.0 and bbox[3] == 90.0
    assert bbox[1] == pytest.approx(-90.0 + 10.0 / DEGREE_M, abs=1e-9)
    assert geometry["type"] == "Polygon"
    lats = [lat for _, lat in geometry["coordinates"][0]]
    assert min(lats) == bbox[1] and max(lats) == 90.0

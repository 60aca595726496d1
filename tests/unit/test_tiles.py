"""Unit tests of per-tile cubes: tiles.py (build), pyramid.py (storage, overviews, R12),
stats.py and quicklook.py, on the real fixtures and on generated input.

Values are checked at known pixels against the source, read without the pipeline (the raw
PDS3 bytes, or GDAL directly); CRSs are read back by xarray and by GDAL's Zarr driver.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pyproj
import pytest
import rasterio  # type: ignore[import-untyped]
import xarray as xr
import zarr
import zarr.storage
from PIL import Image

from lunarchive.processing.crs import MOON_RADIUS_M, iau_code
from lunarchive.processing.grids import Tile, named_grid, tiles_touching
from lunarchive.processing.pyramid import (
    check_stored_chunks,
    multiscales,
    open_tile,
    storage_layout,
    write_tile,
)
from lunarchive.processing.quicklook import quicklook_png
from lunarchive.processing.readers import open_dem
from lunarchive.processing.stats import HISTOGRAM_BUCKETS, band_statistics
from lunarchive.processing.tiles import (
    Layer,
    Limits,
    build_tile,
    check_layer,
    open_bands,
    order_layers,
    split_at_antimeridian,
    tile_identity,
)
from lunarchive.schemas.errors import ProductRejected

pytestmark = pytest.mark.filterwarnings(
    "ignore:Use `@` matmul instead of `\\*` mul operator:PendingDeprecationWarning"
)
DEGREE_M = math.pi * MOON_RADIUS_M / 180.0
LDEM = "pds3/lro_lola_ldem_4/LDEM_4.LBL"
LDEM_FORMS = [LDEM, "derived/ldem_4_pds4.xml", "isis3/ldem_4_reduced.cub"]
SOUTH_POLAR = "derived/ldem_4_spole_iau30135.tif"
KAGUYA_MI = "pds3/kaguya_mi_map_cropped/MI_MAP_03_N51E124N50E125SC_cropped.lbl"
GLD100 = "isis3/WAC_GLD100_V1.0_GLOBAL_with_LOLA_30M_POLE.16bit.reduced.cub"


@pytest.fixture(scope="module", autouse=True)
def dask_on_one_thread() -> Iterator[None]:
    # rasterio's warp silences warnings in a way that is not thread-safe (see test_processing).
    with dask.config.set(scheduler="synchronous"):
        yield


@pytest.fixture(scope="module")
def real(shared: Path) -> Path:
    return shared / "fixtures" / "real"


def ldem_heights(real: Path) -> np.ndarray:
    """LDEM_4 as height (m), straight from the PDS3 bytes: int16 LSB, DN × 0.5."""
    dn = np.fromfile(real / "pds3/lro_lola_ldem_4/LDEM_4.IMG", dtype="<i2").reshape(720, 1440)
    return dn.astype(np.float32) * np.float32(0.5)


def source_raster(path: Path) -> tuple[np.ndarray, rasterio.Affine, pyproj.CRS]:
    """Physical values of band(s), read by GDAL directly: DN × scale (offset − radius)."""
    with rasterio.open(path) as src:
        dn = src.read().astype(np.float64)
        scale = np.asarray(src.scales)[:, None, None]
        offset = np.asarray(src.offsets)[:, None, None]
        offset = np.where(np.isclose(offset, MOON_RADIUS_M), 0.0, offset)
        values = np.where(dn == src.nodata, np.nan, dn * scale + offset)
        return values, src.transform, pyproj.CRS.from_user_input(src.crs)


def pixel_centres(tile: Tile, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    affine = tile.geobox.affine
    return affine.c + (cols + 0.5) * affine.a, affine.f + (rows + 0.5) * affine.e


def nearest_source(
    values: np.ndarray,
    transform: rasterio.Affine,
    crs: pyproj.CRS,
    tile: Tile,
    rows: np.ndarray,
    cols: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The source value under each tile pixel centre, and whether that pixel is unambiguous
    (its centre is not within 0.15 pixel of a source pixel edge) and inside."""
    xs, ys = pixel_centres(tile, rows, cols)
    assert tile.geobox.crs is not None
    to_source = pyproj.Transformer.from_crs(tile.geobox.crs.to_wkt(), crs, always_xy=True)
    sx, sy = to_source.transform(xs, ys)
    col_f, row_f = ~transform @ (np.asarray(sx), np.asarray(sy))
    ny, nx = values.shape[-2:]
    inside = (row_f >= 0) & (row_f < ny) & (col_f >= 0) & (col_f < nx)
    # GDAL warps with an approximate transformer (0.125 px error, as gdalwarp): keep clear.
    margin = 0.15
    clear = (
        inside
        & (np.abs(row_f - np.round(row_f)) > margin)
        & (np.abs(col_f - np.round(col_f)) > margin)
    )
    r = np.clip(np.floor(row_f).astype(int), 0, ny - 1)
    c = np.clip(np.floor(col_f).astype(int), 0, nx - 1)
    return values[..., r, c], clear


def lattice(tile: Tile, step: int = 7) -> tuple[np.ndarray, np.ndarray]:
    ny, nx = tile.geobox.shape
    rows, cols = np.meshgrid(np.arange(3, ny, step), np.arange(5, nx, step), indexing="ij")
    return rows.ravel(), cols.ravel()


def sha256_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def eqc_layer(
    values: np.ndarray,
    *,
    lon0: float,
    lat0: float,
    ppd: int,
    product_id: str,
    acquired: datetime | None = None,
) -> Layer:
    """Generated input on IAU_2015:30110 with its top-left corner at (lon0, lat0)."""
    res = DEGREE_M / ppd
    ny, nx = values.shape
    data = xr.DataArray(
        values.astype(np.float32),
        dims=("y", "x"),
        coords={
            "y": lat0 * DEGREE_M - res * (np.arange(ny) + 0.5),
            "x": lon0 * DEGREE_M + res * (np.arange(nx) + 0.5),
        },
        attrs={"units": "m"},
    )
    data = data.rio.write_crs("IAU_2015:30110").chunk(64)
    return Layer(data, product_id, acquired)


@pytest.fixture(scope="module")
def ldem_tiles(real: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """LDEM_4 (PDS3, 0..360° E) onto both tiles of moon-eqc-4 (−180..180°), written."""
    root = tmp_path_factory.mktemp("ldem-tiles")
    layer = Layer(open_dem(real / LDEM), "LDEM_4", datetime(2017, 9, 15, tzinfo=UTC))
    written = {}
    for tile in named_grid("moon-eqc-4").tiles():
        cube = build_tile([layer], tile, resampling="nearest")
        write_tile(cube, zarr.storage.LocalStore(root / f"{tile.id}.zarr"))
        written[tile.id] = root / f"{tile.id}.zarr"
    return written


# --- values at known pixels ---------------------------------------------------------------


def test_ldem_on_the_zero_centred_grid_moves_half_a_turn(
    real: Path, ldem_tiles: dict[str, Path]
) -> None:
    heights = ldem_heights(real)  # columns run 0..360° E
    west = xr.open_zarr(ldem_tiles["r000c000"], decode_coords="all", consolidated=False)
    east = xr.open_zarr(ldem_tiles["r000c001"], decode_coords="all", consolidated=False)
    # −180..0° is 180..360° E, the source's right half; 0..180° its left half. Exactly.
    assert np.array_equal(west["height"].values, heights[:, 720:])
    assert np.array_equal(east["height"].values, heights[:, :720])
    assert west["height"].attrs["units"] == "m"
    assert west["height"].attrs["reference_radius_m"] == MOON_RADIUS_M
    assert "removed" in west["height"].attrs["comment"]  # LOLA's radius offset → height


@pytest.mark.parametrize("form", LDEM_FORMS)
def test_ldem_forms_give_source_values_at_known_pixels(real: Path, form: str) -> None:
    values, transform, crs = source_raster(real / form)
    layer = Layer(open_dem(real / form), form)
    for tile in named_grid("moon-eqc-4").tiles():
        cube = build_tile([layer], tile, resampling="nearest")
        rows, cols = lattice(tile)
        expected, clear = nearest_source(values[0], transform, crs, tile, rows, cols)
        got = cube["height"].values[rows, cols]
        assert clear.sum() > 1000, form
        assert np.array_equal(got[clear], expected[clear].astype(np.float32)), (form, tile.id)


def test_south_polar_geotiff_onto_the_polar_grid(real: Path) -> None:
    values, transform, crs = source_raster(real / SOUTH_POLAR)
    tile = named_grid("moon-sp-7581").tile("r000c000")
    cube = build_tile([Layer(open_dem(real / SOUTH_POLAR), "spole")], tile, resampling="nearest")
    assert cube.attrs["proj:code"] == "IAU_2015:30135"
    rows, cols = lattice(tile, step=3)
    expected, clear = nearest_source(values[0], transform, crs, tile, rows, cols)
    got = cube["height"].values[rows, cols]
    assert clear.sum() > 5000
    assert np.array_equal(got[clear], expected[clear].astype(np.float32), equal_nan=True)
    # At the pole itself: the tile's centre, four pixels meeting there, all valid.
    centre = cube["height"].values[122:124, 122:124]
    assert np.isfinite(centre).all()


def test_global_product_makes_a_polar_tile_through_the_pole(real: Path) -> None:
    values, transform, crs = source_raster(real / LDEM)
    tile = named_grid("moon-np-7581").tile("r000c000")
    cube = build_tile([Layer(open_dem(real / LDEM), "LDEM_4")], tile, resampling="nearest")
    got = cube["height"].values
    assert np.isfinite(got).all()  # LDEM covers the whole cap: no seam, no hole at the pole
    rows, cols = lattice(tile, step=3)
    expected, clear = nearest_source(values[0], transform, crs, tile, rows, cols)
    assert clear.sum() > 2500
    assert np.array_equal(got[rows, cols][clear], expected[clear].astype(np.float32))


def test_gld100_east_of_180_is_normalised_onto_the_west(real: Path) -> None:
    dem = open_dem(real / GLD100)  # x runs 0..360° E on a 0°-centred CRS
    pieces = split_at_antimeridian(dem)
    assert len(pieces) == 2
    assert float(pieces[1]["x"].max()) < 0.0  # the part past +180° moved to −180..0
    values, transform, crs = source_raster(real / GLD100)
    tile = named_grid("moon-eqc-4").tile("r000c000")  # −180..0°: only there after the shift
    cube = build_tile([Layer(dem, "GLD100")], tile, resampling="nearest")
    rows, cols = lattice(tile)
    shifted = rasterio.Affine.translation(-2 * math.pi * MOON_RADIUS_M, 0.0) * transform
    expected, clear = nearest_source(values[0], shifted, crs, tile, rows, cols)
    got = cube["height"].values[rows, cols]
    assert clear.sum() > 1000
    assert np.array_equal(got[clear], expected[clear].astype(np.float32))
    assert np.isfinite(cube["height"].values).mean() > 0.99


def test_kaguya_mi_gets_a_band_dimension_with_wavelengths(real: Path, tmp_path: Path) -> None:
    bands = open_bands(real / KAGUYA_MI)
    assert bands.dims == ("band", "y", "x")
    grid = named_grid("moon-eqc-2048")  # MI's own 2048 px/deg, shifted half a pixel
    tiles = tiles_touching(grid, bands.rio.crs, bands.rio.bounds())
    assert [t.id for t in tiles] == ["r038c303", "r038c304", "r039c303", "r039c304"]
    tile = grid.tile("r039c304")
    cube = build_tile([Layer(bands, "MI")], tile, variable="reflectance", resampling="bilinear")
    assert cube["reflectance"].dims == ("band", "y", "x")
    assert cube["wavelength"].values.tolist()[:3] == [414.0, 749.0, 901.0]
    write_tile(cube, zarr.storage.LocalStore(tmp_path / "mi.zarr"))
    back = xr.open_zarr(tmp_path / "mi.zarr", decode_coords="all", consolidated=False)
    source, transform, _ = source_raster(real / KAGUYA_MI)
    # Tile pixel centres fall on the source's pixel corners: bilinear is the 2 × 2 mean.
    col0, row0 = ~tile.geobox.affine @ (transform.c, transform.f)
    r0, c0 = round(row0 + 0.5), round(col0 + 0.5)  # the source starts half a pixel out
    for i, j in [(0, 0), (1, 2), (3, 3)]:
        got = back["reflectance"].values[:, r0 + i, c0 + j]
        expected = source[:, i : i + 2, j : j + 2].mean(axis=(1, 2))
        assert np.allclose(got, expected, rtol=1e-5), (i, j)
    assert back["wavelength"].attrs["units"] == "nm"
    stats = band_statistics(back["reflectance"])
    assert [s.wavelength_nm for s in stats][-1] == 1548.0
    # 4 × 4 pixel centres lie between source pixels (GDAL may also keep an edge row).
    assert len({s.valid_count for s in stats}) == 1 and stats[0].valid_count >= 16
    png = quicklook_png(back["reflectance"])
    assert Image.open(io.BytesIO(png)).mode == "RGBA"


# --- overlap rule and provenance ---------------------------------------------------------


def overlapping_pair() -> tuple[Layer, Layer]:
    old = eqc_layer(
        np.full((40, 40), 1.0),
        lon0=10.0,
        lat0=10.0,
        ppd=16,
        product_id="old",
        acquired=datetime(2010, 1, 1, tzinfo=UTC),
    )
    new = eqc_layer(
        np.full((20, 20), 2.0),
        lon0=11.0,
        lat0=9.0,
        ppd=8,
        product_id="new",
        acquired=datetime(2020, 1, 1, tzinfo=UTC),
    )
    return old, new


@pytest.mark.parametrize(
    ("rule", "priority", "winner"),
    [("newest", (), 2.0), ("finest", (), 1.0), ("priority", ("old",), 1.0)],
)
def test_overlap_rule_decides_and_provenance_records_the_order(
    rule: str, priority: tuple[str, ...], winner: float
) -> None:
    old, new = overlapping_pair()
    tile = named_grid("moon-eqc-16").tile("r000c002")  # 0..90° E, 0..90° N
    cube = build_tile([old, new], tile, resampling="nearest", rule=rule, priority=priority)  # type: ignore[arg-type]
    height = cube["height"]
    at = {"x": 12.0 * DEGREE_M, "y": 8.0 * DEGREE_M}  # both cover (12°E, 8°N)
    assert float(height.sel(at, method="nearest")) == winner
    only_old = {"x": 10.25 * DEGREE_M, "y": 9.75 * DEGREE_M}
    assert float(height.sel(only_old, method="nearest")) == 1.0
    order = [entry["product_id"] for entry in cube.attrs["lunarchive:inputs"]]
    assert order == (["new", "old"] if winner == 2.0 else ["old", "new"])
    assert cube.attrs["lunarchive:overlap_rule"] == rule
    assert cube.attrs["lunarchive:inputs"][0]["acquired"].startswith("20")


def test_overlapping_inputs_on_one_grid_merge_first_wins_and_fill_each_other_s_holes() -> None:
    # Same grid (16 px/deg, whole-pixel offsets): read as one mosaic of both inputs' chunks.
    holed = np.full((40, 40), 1.0)
    holed[20:30, 20:30] = np.nan  # 11.25..11.875° E, 8.75..8.125° N
    first = eqc_layer(holed, lon0=10.0, lat0=10.0, ppd=16, product_id="first")
    second = eqc_layer(np.full((40, 40), 2.0), lon0=11.0, lat0=9.0, ppd=16, product_id="second")
    first = Layer(first.data.chunk(16), first.product_id)  # several chunks in each window
    tile = named_grid("moon-eqc-16").tile("r000c002")
    cube = build_tile(
        [first, second], tile, resampling="nearest", rule="priority", priority=("first",)
    )
    height = cube["height"]

    def at(lon: float, lat: float) -> float:
        return float(height.sel({"x": lon * DEGREE_M, "y": lat * DEGREE_M}, method="nearest"))

    assert at(10.3, 9.7) == 1.0  # the first only
    assert at(12.3, 7.7) == 1.0  # both: the first wins
    assert at(11.5, 8.5) == 2.0  # the first's hole, filled by the second
    assert at(13.0, 7.0) == 2.0  # the second only
    assert math.isnan(at(14.0, 9.5))  # neither
    assert int(height.notnull().sum()) == 40 * 40 + 40 * 40 - 24 * 24


def test_inputs_off_the_tile_are_left_out_of_its_provenance() -> None:
    old, new = overlapping_pair()
    far = eqc_layer(np.ones((4, 4)), lon0=-100.0, lat0=-10.0, ppd=16, product_id="far")
    cube = build_tile([far, old, new], named_grid("moon-eqc-16").tile("r000c002"))
    assert {e["product_id"] for e in cube.attrs["lunarchive:inputs"]} == {"old", "new"}
    with pytest.raises(ValueError, match="no input overlaps"):
        build_tile([far], named_grid("moon-eqc-16").tile("r000c002"))


def test_order_is_deterministic_on_ties() -> None:
    a = eqc_layer(np.ones((2, 2)), lon0=0, lat0=0, ppd=4, product_id="b")
    b = eqc_layer(np.ones((2, 2)), lon0=0, lat0=0, ppd=4, product_id="a")
    assert [x.product_id for x in order_layers([a, b], "newest")] == ["a", "b"]
    assert [x.product_id for x in order_layers([a, b], "finest")] == ["a", "b"]


@dataclass(frozen=True)
class Known:
    """What the flow knows of an input before reading it."""

    product_id: str
    acquired: datetime | None
    resolution_m: float
    checksum: str | None


@pytest.mark.parametrize("rule", ["newest", "finest"])
def test_tile_identity_from_facts_is_the_fingerprint_the_build_gives(rule: str) -> None:
    old, new = overlapping_pair()
    tile = named_grid("moon-eqc-16").tile("r000c002")
    cube = build_tile([old, new], tile, rule=rule)  # type: ignore[arg-type]
    facts = [Known(x.product_id, x.acquired, x.resolution_m, x.checksum) for x in (old, new)]
    ordered, fingerprint = tile_identity(
        facts,
        tile,
        variable="height",
        resampling="bilinear",
        rule=rule,  # type: ignore[arg-type]
    )
    assert fingerprint == cube.attrs["lunarchive:fingerprint"]
    assert [f.product_id for f in ordered] == [
        i["product_id"] for i in cube.attrs["lunarchive:inputs"]
    ]
    changed = [facts[0], Known("new", new.acquired, new.resolution_m, "other-bytes")]
    assert (
        tile_identity(
            changed,
            tile,
            variable="height",
            resampling="bilinear",
            rule=rule,  # type: ignore[arg-type]
        )[1]
        != fingerprint
    )


# --- storage: CRS read back, overviews, statistics, quicklook ------------------------------


def test_tile_reads_back_as_the_moon_in_xarray_and_gdal(
    real: Path, ldem_tiles: dict[str, Path]
) -> None:
    path = ldem_tiles["r000c001"]
    back = xr.open_zarr(path, decode_coords="all", consolidated=False)
    assert back.rio.crs == rasterio.crs.CRS.from_user_input("IAU_2015:30110")
    assert back.attrs["proj:code"] == "IAU_2015:30110"
    assert pyproj.CRS.from_wkt(back.attrs["proj:wkt2"]) == pyproj.CRS("IAU_2015:30110")
    assert back.attrs["ssys:targets"] == ["Moon"]
    assert back.attrs["lunarchive:grid"] == "moon-eqc-4"
    tile = named_grid("moon-eqc-4").tile("r000c001")
    with rasterio.open(f'ZARR:"{path}":/height') as src:
        crs = pyproj.CRS.from_user_input(src.crs)
        assert crs.ellipsoid is not None and crs.ellipsoid.semi_major_metre == MOON_RADIUS_M
        assert iau_code(crs) == "IAU_2015:30110"
        assert np.allclose(tuple(src.transform), tuple(tile.geobox.affine), rtol=1e-12, atol=1e-6)
        assert np.array_equal(src.read(1), ldem_heights(real)[:, :720])
    with rasterio.open(f'ZARR:"{path}":/1/height') as src:  # an overview, georeferenced too
        assert iau_code(src.crs) == "IAU_2015:30110"
        assert src.shape == (360, 360)
        assert src.transform.a == pytest.approx(2 * tile.geobox.affine.a)


def test_overviews_are_child_groups_listed_in_multiscales(ldem_tiles: dict[str, Path]) -> None:
    store = zarr.storage.LocalStore(ldem_tiles["r000c000"])
    layout = multiscales(store)["layout"]
    assert [level["asset"] for level in layout] == ["height", "1/height", "2/height"]
    assert [level["proj:shape"] for level in layout] == [[720, 720], [360, 360], [180, 180]]
    assert layout[1]["derived_from"] == "height"
    assert layout[2]["transform"]["scale"] == [2.0, 2.0]
    full = open_tile(store)["height"].values
    half = open_tile(store, level=1)["height"].values
    assert half[10, 20] == pytest.approx(full[20:22, 40:42].mean(), rel=1e-6)
    conventions: Any = zarr.open_group(store, mode="r").attrs.asdict()["zarr_conventions"]
    assert conventions[0]["name"] == "multiscales"


def test_statistics_match_numpy(real: Path, ldem_tiles: dict[str, Path]) -> None:
    height = open_tile(zarr.storage.LocalStore(ldem_tiles["r000c001"]))["height"]
    [stats] = band_statistics(height)
    values = ldem_heights(real)[:, :720].astype(np.float64)
    assert stats.minimum == values.min() and stats.maximum == values.max()
    assert stats.mean == pytest.approx(values.mean(), rel=1e-12)
    assert stats.stddev == pytest.approx(values.std(), rel=1e-9)
    assert stats.valid_count == values.size and stats.valid_percent == 100.0
    expected, _ = np.histogram(values, bins=HISTOGRAM_BUCKETS, range=(values.min(), values.max()))
    assert list(stats.histogram) == expected.tolist()
    band = stats.as_raster_band()
    assert band["histogram"]["count"] == HISTOGRAM_BUCKETS
    assert band["statistics"]["minimum"] == values.min()


def test_statistics_of_an_empty_band_have_no_values() -> None:
    empty = xr.DataArray(np.full((4, 4), np.nan, np.float32), dims=("y", "x"))
    [stats] = band_statistics(empty)
    assert (stats.minimum, stats.valid_count, stats.histogram) == (None, 0, ())
    assert stats.as_raster_band() == {"statistics": {"valid_percent": 0.0}}


def test_quicklook_is_a_small_hillshade_png_and_repeatable(ldem_tiles: dict[str, Path]) -> None:
    store = zarr.storage.LocalStore(ldem_tiles["r000c000"])
    png = quicklook_png(open_tile(store)["height"])
    image = Image.open(io.BytesIO(png))
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert image.mode == "RGBA" and max(image.size) <= 512
    assert image.size == (360, 360)  # 720 px decimated by 2
    grey = np.asarray(image)[..., 0]
    assert grey.std() > 5  # shaded relief, not a flat image
    assert quicklook_png(open_tile(store)["height"]) == png


# --- reliability: R9 and R12 ----------------------------------------------------------------


def test_rebuilding_a_tile_from_unchanged_inputs_is_byte_identical(
    real: Path, tmp_path: Path
) -> None:
    tile = named_grid("moon-sp-1895").tile("r000c000")  # 984 px: two overview levels
    fingerprints = []
    for name in ("a", "b"):
        layer = Layer(open_dem(real / SOUTH_POLAR), "spole", checksum="fd7a55c8")
        cube = build_tile([layer], tile)
        fingerprints.append(cube.attrs["lunarchive:fingerprint"])
        write_tile(cube, zarr.storage.LocalStore(tmp_path / name))
    first, second = sha256_tree(tmp_path / "a"), sha256_tree(tmp_path / "b")
    assert fingerprints[0] == fingerprints[1]  # the flow skips the rebuild on this (R9)
    changed = build_tile([Layer(open_dem(real / SOUTH_POLAR), "spole", checksum="0")], tile)
    assert changed.attrs["lunarchive:fingerprint"] != fingerprints[0]
    assert first == second
    assert "1/height/zarr.json" in first  # overviews included


def test_write_tile_never_replaces_a_tile(real: Path, ldem_tiles: dict[str, Path]) -> None:
    before = sha256_tree(ldem_tiles["r000c000"])
    layer = Layer(open_dem(real / LDEM), "LDEM_4")
    cube = build_tile([layer], named_grid("moon-eqc-4").tile("r000c000"))
    with pytest.raises(FileExistsError):
        write_tile(cube, zarr.storage.LocalStore(ldem_tiles["r000c000"]))
    assert sha256_tree(ldem_tiles["r000c000"]) == before


def test_an_input_past_the_limits_is_refused_before_reading(real: Path) -> None:
    layer = Layer(open_dem(real / LDEM), "LDEM_4")  # 720 × 1440 float32: 4 147 200 bytes
    with pytest.raises(ProductRejected, match=r"LDEM_4: decodes to 4147200 bytes"):
        check_layer(layer, Limits(max_input_bytes=1_000_000))
    rows, cols = layer.data.chunks or ((), ())
    largest = max(rows) * max(cols) * 4  # one read chunk of the 4 MB map: past 1 MB too
    assert largest > 1_000_000
    with pytest.raises(ProductRejected, match=rf"LDEM_4: a chunk decodes to {largest} bytes"):
        build_tile(
            [layer],
            named_grid("moon-eqc-4").tile("r000c000"),
            limits=Limits(max_chunk_bytes=1_000_000),
        )


def test_a_stored_chunk_that_would_decode_past_the_limit_is_refused(tmp_path: Path) -> None:
    store = zarr.storage.LocalStore(tmp_path / "bomb.zarr")
    root = zarr.create_group(store, zarr_format=3)
    # Declares 40 GB chunks; nothing is written, nothing may be decoded.
    root.create_array("height", shape=(100_000, 100_000), chunks=(100_000, 100_000), dtype="f4")
    with pytest.raises(
        ProductRejected, match=r"bomb, array 'height': a chunk of \[100000, 100000\]"
    ):
        open_tile(store, where="bomb")
    check_stored_chunks(store, Limits(max_chunk_bytes=10**11), where="bomb")  # a higher limit


def test_storage_layout_chunks_and_shards() -> None:
    single = storage_layout((2048, 2048))
    assert single.chunks == (512, 512) and single.shards == (2048, 2048)
    assert storage_layout((2048, 2048), shard=False).shards is None
    mi = storage_layout((9, 2048, 2048))
    assert mi.chunks == (9, 512, 512) and mi.shards == (9, 1024, 1024)
    m3 = storage_layout((85, 2048, 2048))
    assert m3.chunks == (85, 128, 128)  # a pixel's spectrum stays one chunk, under 16 MiB
    assert storage_layout((300, 200)).chunks == (300, 200)


def test_sharded_tile_reads_back_in_xarray(real: Path, tmp_path: Path) -> None:
    tile = named_grid("moon-eqc-4").tile("r000c001")
    cube = build_tile([Layer(open_dem(real / LDEM), "LDEM_4")], tile, resampling="nearest")
    write_tile(cube, zarr.storage.LocalStore(tmp_path / "s.zarr"), shard=True)
    back = xr.open_zarr(tmp_path / "s.zarr", decode_coords="all", consolidated=False)
    assert np.array_equal(back["height"].values, ldem_heights(real)[:, :720])
    objects = [p for p in (tmp_path / "s.zarr" / "height" / "c").rglob("*") if p.is_file()]
    assert len(objects) == 1  # one shard instead of 2 × 2 chunks

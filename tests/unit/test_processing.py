"""Unit tests of lunarchive.processing: lunar CRSs, the demo archive, readers, tile cubes.

Offline; the demo archive is generated, and one test reads a real LOLA product from the
shared fixtures folder (``LUNARCHIVE_SHARED_DIR``, default ``../shared`` beside the checkout).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import dask
import numpy as np
import obstore.store
import pyproj
import pytest
import rasterio  # type: ignore[import-untyped]
import xarray as xr
import zarr
import zarr.storage
from rasterio.transform import from_origin  # type: ignore[import-untyped]
from zarr.codecs import ZstdCodec

from lunarchive.processing import crs as crs_module
from lunarchive.processing.crs import (
    MOON_RADIUS_M,
    assert_lunar,
    iau_code,
    lunar_footprint,
    moon_geographic,
)
from lunarchive.processing.cube import build_cube, prepare_for_zarr
from lunarchive.processing.demo_archive import demo_heights_dn, write_demo_archive
from lunarchive.processing.grids import named_grid
from lunarchive.processing.pyramid import ZSTD_LEVEL, write_tile
from lunarchive.processing.readers import open_dem
from lunarchive.processing.tiles import Layer, build_tile
from lunarchive.schemas.errors import ProductRejected

# affine 3 deprecates `Affine * Affine`; odc-geo 0.5.3 and rioxarray 0.23 still use it.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Use `@` matmul instead of `\\*` mul operator:PendingDeprecationWarning"
)
# rasterio 1.5.2 wraps each warp in warnings.catch_warnings() + simplefilter("ignore"), which
# is not thread-safe: on dask's threads it leaks an "ignore every warning" filter (so -W error
# would silently stop working) and lets NotGeoreferencedWarning escape. Tests run dask on one
# thread; test_cube_write_on_dask_threads covers the threaded scheduler.
NOT_GEOREFERENCED_IN_WARP = (
    "ignore:Dataset has no geotransform, gcps, or rpcs:rasterio.errors.NotGeoreferencedWarning"
)

REPO_ROOT = Path(__file__).resolve().parents[2]
TILE = 256
NODATA = -32768
TILE_NAMES = ("dem_t00", "dem_t01", "dem_t10", "dem_t11")


def shared_dir() -> Path:
    """The shared test-data folder; a test that needs it fails loudly when it is missing."""
    configured = Path(os.environ.get("LUNARCHIVE_SHARED_DIR", "../shared"))
    folder = configured if configured.is_absolute() else (REPO_ROOT / configured).resolve()
    if not (folder / "fixtures" / "real").is_dir():
        pytest.fail(
            f"shared test data not found at {folder}: set LUNARCHIVE_SHARED_DIR to the folder "
            "that holds fixtures/real/ (default: ../shared beside the checkout)"
        )
    return folder


def radius_m(crs: pyproj.CRS) -> float:
    ellipsoid = crs.ellipsoid
    assert ellipsoid is not None
    return ellipsoid.semi_major_metre


def expected_heights(dn: np.ndarray) -> np.ndarray:
    return np.where(dn == NODATA, np.nan, dn * 0.5).astype(np.float32)


def tile_dn(name: str) -> np.ndarray:
    row, col = int(name[-2]), int(name[-1])
    return demo_heights_dn()[row * TILE : (row + 1) * TILE, col * TILE : (col + 1) * TILE]


def sha256_tree(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module", autouse=True)
def dask_on_one_thread() -> Iterator[None]:
    with dask.config.set(scheduler="synchronous"):
        yield


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    write_demo_archive(root)
    return root


@pytest.fixture(scope="module")
def demo_tiles(demo_root: Path) -> list[xr.DataArray]:
    return [open_dem(demo_root / "dem" / f"{name}.xml") for name in TILE_NAMES]


# The demo's western half (dem_t00, dem_t10) is tile r011c031 of moon-eqc-512 (56–52°W,
# 46–42°N): rows 1280..1792 and columns 1792..2048 of the tile.
WEST_TILE = "r011c031"
IN_TILE = (slice(1280, 1792), slice(1792, 2048))


def west_tile(demo_tiles: list[xr.DataArray]) -> xr.Dataset:
    layers = [Layer(t, name) for t, name in zip(demo_tiles, TILE_NAMES, strict=True)]
    return build_tile(layers, named_grid("moon-eqc-512").tile(WEST_TILE))


def expected_west_tile() -> np.ndarray:
    tile = np.full((2048, 2048), np.nan)
    tile[IN_TILE] = expected_heights(demo_heights_dn())[:, :TILE]
    return tile


@pytest.fixture(scope="module")
def demo_cube(demo_tiles: list[xr.DataArray]) -> xr.Dataset:
    return west_tile(demo_tiles)


@pytest.fixture(scope="module")
def written_cube(demo_cube: xr.Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cubes") / "dem.zarr"
    write_tile(demo_cube, zarr.storage.LocalStore(path), overviews=False)
    return path


# --- crs -----------------------------------------------------------------------------------


def test_assert_lunar_refuses_an_earth_crs_naming_the_product() -> None:
    with pytest.raises(ProductRejected, match=r"earth\.tif.*6378137"):
        assert_lunar("EPSG:4326", where="earth.tif")
    with pytest.raises(ProductRejected, match=r"nocrs\.tif: no CRS"):
        assert_lunar(None, where="nocrs.tif")
    assert radius_m(assert_lunar("IAU_2015:30110", where="x")) == MOON_RADIUS_M


def test_moon_geographic_is_iau_2015_30100() -> None:
    crs = moon_geographic()
    assert crs.to_authority() == ("IAU_2015", "30100")
    assert radius_m(crs) == MOON_RADIUS_M


def test_a_transformer_is_made_once_per_pair_of_crss_and_transforms_as_pyproj_s() -> None:
    polar = pyproj.CRS.from_user_input("IAU_2015:30135")
    crs_module._transformer_of_wkt.cache_clear()
    made = crs_module.transformer(moon_geographic(), polar)
    again = crs_module.transformer(pyproj.CRS.from_wkt(moon_geographic().to_wkt()), polar)
    back = crs_module.transformer(polar, moon_geographic())
    assert again is made and back is not made
    assert crs_module._transformer_of_wkt.cache_info().misses == 2
    fresh = pyproj.Transformer.from_crs(moon_geographic(), polar, always_xy=True)
    lons, lats = [0.0, 45.0, -120.0], [-89.0, -75.5, -60.0]
    np.testing.assert_array_equal(made.transform(lons, lats), fresh.transform(lons, lats))
    assert np.allclose(back.transform(*made.transform(lons, lats)), (lons, lats))


def test_iau_code_compares_definitions_not_names() -> None:
    fixtures = shared_dir() / "fixtures" / "real"
    with rasterio.open(fixtures / "derived" / "ldem_4_pds4.xml") as src:
        ldem_crs = src.crs  # "Equirectangular MOON", lon_0 = 180, custom WKT
    with rasterio.open(fixtures / "derived" / "ldem_4_spole_iau30135.tif") as src:
        south_polar_crs = src.crs  # read back as Polar Stereographic variant B
    assert iau_code(ldem_crs) == "IAU_2015:30115"
    assert iau_code(south_polar_crs) == "IAU_2015:30135"
    assert iau_code("+proj=eqc +lon_0=0 +R=1737400 +units=m +no_defs") == "IAU_2015:30110"
    assert iau_code("+proj=longlat +R=1737400 +no_defs") == "IAU_2015:30100"
    assert iau_code("+proj=eqc +lon_0=30 +R=1737400 +units=m +no_defs") is None
    assert iau_code("+proj=eqc +lon_0=0 +R=3396190 +units=m +no_defs") is None  # Mars
    assert iau_code("EPSG:4326") is None


def test_iau_code_trusts_a_claimed_identifier_only_when_the_definition_agrees() -> None:
    def claiming(code: int, proj4: str) -> str:
        document = pyproj.CRS.from_proj4(proj4).to_json_dict()
        document.pop("ids", None)
        document["id"] = {"authority": "IAU", "version": 2015, "code": code}
        return json.dumps(document)

    centred_on_180 = "+proj=eqc +lon_0=180 +R=1737400 +units=m +no_defs"
    assert iau_code(claiming(30115, centred_on_180)) == "IAU_2015:30115"
    assert iau_code(claiming(30110, centred_on_180)) == "IAU_2015:30115"  # by definition
    assert iau_code(claiming(30110, "+proj=eqc +lon_0=30 +R=1737400 +units=m")) is None
    assert iau_code(claiming(49910, "+proj=eqc +lon_0=0 +R=3396190 +units=m")) is None
    crs_module._moon_definitions.cache_clear()
    wkt1 = pyproj.CRS("IAU_2015:30135").to_wkt("WKT1_GDAL")  # AUTHORITY["IAU","30135"]
    assert iau_code(wkt1) == "IAU_2015:30135"
    assert crs_module._moon_definitions.cache_info().misses == 0  # the named code, compared
    moon = crs_module._moon_definitions()  # so a claimed code that matches is the only one
    assert len(moon) >= 18
    assert not [(a, b) for a, one in moon for b, other in moon if a < b and one.matches(other)]


def test_lunar_footprint_of_a_plain_tile_is_its_lon_lat_box() -> None:
    metres_per_degree = math.radians(1.0) * MOON_RADIUS_M
    bounds = (10 * metres_per_degree, -5 * metres_per_degree, 12 * metres_per_degree, 0.0)
    bbox, geometry = lunar_footprint("IAU_2015:30110", bounds)
    assert bbox == (10.0, -5.0, 12.0, 0.0)
    assert geometry == {
        "type": "Polygon",
        "coordinates": [[[10.0, -5.0], [12.0, -5.0], [12.0, 0.0], [10.0, 0.0], [10.0, -5.0]]],
    }


def test_lunar_footprint_across_the_antimeridian_is_split() -> None:
    metres_per_degree = math.radians(1.0) * MOON_RADIUS_M
    bounds = (-5 * metres_per_degree, 0.0, 5 * metres_per_degree, 10 * metres_per_degree)
    bbox, geometry = lunar_footprint("IAU_2015:30115", bounds)  # centred on 180°E
    assert bbox == (175.0, 0.0, -175.0, 10.0)
    assert geometry["type"] == "MultiPolygon"
    spans = sorted(
        (min(lon for lon, _ in part[0]), max(lon for lon, _ in part[0]))
        for part in geometry["coordinates"]
    )
    assert spans == [(-180.0, -175.0), (175.0, 180.0)]


def test_lunar_footprint_of_a_polar_cap_runs_to_the_pole() -> None:
    half = 932443.32  # the LOLA south-polar fixture: ±932 km around the pole
    bbox, geometry = lunar_footprint("IAU_2015:30135", (-half, -half, half, half))
    assert bbox[0] == -180.0 and bbox[1] == -90.0 and bbox[2] == 180.0
    assert bbox[3] == pytest.approx(-48.437, abs=1e-3)
    assert geometry["type"] == "Polygon"
    ring = geometry["coordinates"][0]
    assert [-180.0, -90.0] in ring and [180.0, -90.0] in ring
    assert ring[0] == ring[-1]
    assert all(-90.0 <= lat <= bbox[3] + 1e-9 for _, lat in ring)


def test_lunar_footprint_of_a_global_grid_is_the_whole_moon() -> None:
    half_circle = math.pi * MOON_RADIUS_M
    bounds = (-half_circle, -half_circle / 2, half_circle, half_circle / 2)
    bbox, geometry = lunar_footprint("IAU_2015:30115", bounds)
    assert bbox == (-180.0, -90.0, 180.0, 90.0)
    assert geometry["type"] == "Polygon"


# --- demo archive ----------------------------------------------------------------------------


def test_demo_archive_is_byte_identical_on_every_run(tmp_path: Path) -> None:
    first = write_demo_archive(tmp_path / "a")
    write_demo_archive(tmp_path / "b")
    write_demo_archive(tmp_path / "a")  # over an existing archive too
    digests_a, digests_b = sha256_tree(tmp_path / "a"), sha256_tree(tmp_path / "b")
    assert digests_a == digests_b
    assert sorted(digests_a) == [
        *(f"dem/{name}.{ext}" for name in TILE_NAMES for ext in ("img", "xml")),
        "samples/specimens.csv",
    ]
    assert first == sorted(tmp_path / "a" / name for name in digests_a)
    assert sum(path.stat().st_size for path in first) < 1_000_000


def test_demo_labels_have_no_placeholders_and_lower_case_lids(demo_root: Path) -> None:
    for name in TILE_NAMES:
        label = (demo_root / "dem" / f"{name}.xml").read_text("utf-8")
        assert "${" not in label
        lid = f"urn:nasa:pds:lunarchive_demo:data_dem:{name}"
        assert f"<logical_identifier>{lid}</logical_identifier>" in label
        assert "urn:nasa:pds:context:target:satellite.earth.moon" in label
        assert "<cart:Equirectangular>" in label
        assert '<cart:a_axis_radius unit="m">1737400</cart:a_axis_radius>' in label
        assert "<scaling_factor>0.5</scaling_factor>" in label
        assert "<missing_constant>-32768</missing_constant>" in label


# --- readers -------------------------------------------------------------------------------


def test_open_dem_gives_height_in_metres_with_nan_for_nodata(demo_root: Path) -> None:
    height = open_dem(demo_root / "dem" / "dem_t01.xml")
    assert height.dims == ("y", "x")
    assert height.dtype == np.float32
    assert height.chunks is not None  # lazy
    assert height.attrs["units"] == "m"
    assert height.attrs["reference_radius_m"] == MOON_RADIUS_M
    assert iau_code(height.rio.crs) == "IAU_2015:30110"
    # The raw file, read without GDAL: little-endian int16, height = DN × 0.5.
    raw = np.fromfile(demo_root / "dem" / "dem_t01.img", dtype="<i2").reshape(TILE, TILE)
    assert np.array_equal(raw, tile_dn("dem_t01"))
    values = height.values
    assert np.array_equal(values, expected_heights(raw), equal_nan=True)
    assert np.isnan(values).sum() == np.count_nonzero(raw == NODATA) == 24


def test_open_dem_reads_real_lola_radius_product_as_height() -> None:
    label = shared_dir() / "fixtures" / "real" / "derived" / "ldem_4_pds4.xml"
    height = open_dem(label)
    assert height.shape == (720, 1440)
    assert height.attrs["source_value_offset_m"] == MOON_RADIUS_M
    assert "removed" in height.attrs["comment"]
    assert iau_code(height.rio.crs) == "IAU_2015:30115"
    low, high = float(height.min()), float(height.max())
    # LOLA: the deepest point (Antoniadi, about -9.1 km) to the highest (about +10.8 km).
    assert -9_200.0 < low < -8_000.0
    assert 10_000.0 < high < 10_800.0


def test_open_dem_refuses_what_gdal_cannot_open(demo_root: Path) -> None:
    with pytest.raises(ProductRejected, match=r"dem_t00\.img: GDAL cannot open it"):
        open_dem(demo_root / "dem" / "dem_t00.img")  # the data file without its label


def test_open_dem_refuses_an_earth_crs_and_a_missing_crs(tmp_path: Path) -> None:
    data = np.zeros((4, 4), dtype=np.int16)
    earth, bare = tmp_path / "earth.tif", tmp_path / "bare.tif"
    profile = {"driver": "GTiff", "width": 4, "height": 4, "count": 1, "dtype": "int16"}
    with rasterio.open(earth, "w", crs="EPSG:4326", transform=from_origin(0, 4, 1, 1), **profile):
        pass
    with rasterio.open(bare, "w", transform=from_origin(0, 4, 1, 1), **profile) as dst:
        dst.write(data, 1)
    with pytest.raises(ProductRejected, match=r"earth\.tif: CRS 'WGS 84'"):
        open_dem(earth)
    with pytest.raises(ProductRejected, match=r"bare\.tif: no CRS"):
        open_dem(bare)


def test_open_dem_refuses_a_truncated_data_file(demo_root: Path, tmp_path: Path) -> None:
    for suffix in ("xml", "img"):
        (tmp_path / f"dem_t00.{suffix}").write_bytes(
            (demo_root / "dem" / f"dem_t00.{suffix}").read_bytes()
        )
    image = tmp_path / "dem_t00.img"
    image.write_bytes(image.read_bytes()[: TILE * TILE])  # half the lines
    with pytest.raises(ProductRejected, match=r"dem_t00\.xml: the last line"):
        open_dem(tmp_path / "dem_t00.xml")


def grid_tile(values: np.ndarray, *, x0: float, y0: float, res: float = 100.0) -> xr.DataArray:
    ny, nx = values.shape
    tile = xr.DataArray(
        values.astype(np.float32),
        dims=("y", "x"),
        coords={"y": y0 - res * (np.arange(ny) + 0.5), "x": x0 + res * (np.arange(nx) + 0.5)},
        name="height",
    )
    result: xr.DataArray = tile.rio.write_crs("IAU_2015:30110").chunk(2)
    return result


# --- cube ----------------------------------------------------------------------------------


def test_cube_round_trip_in_xarray_keeps_values_crs_and_transform(
    demo_cube: xr.Dataset, written_cube: Path
) -> None:
    back = xr.open_zarr(written_cube, decode_coords="all", consolidated=False)
    assert list(back.data_vars) == ["height"]
    assert np.array_equal(back["height"].values, expected_west_tile(), equal_nan=True)
    assert back.rio.crs == rasterio.crs.CRS.from_user_input("IAU_2015:30110")
    crs = pyproj.CRS.from_user_input(back.rio.crs)
    assert radius_m(crs) == MOON_RADIUS_M
    assert iau_code(crs) == "IAU_2015:30110"
    assert back.rio.transform() == demo_cube.rio.transform()
    assert back.attrs["proj:code"] == "IAU_2015:30110"
    assert back.attrs["ssys:targets"] == ["Moon"]
    assert back.attrs["reference_radius_m"] == MOON_RADIUS_M
    projjson = json.loads(back.attrs["proj:projjson"])
    assert projjson["id"] == {"authority": "IAU", "code": 30110, "version": 2015}
    assert pyproj.CRS.from_wkt(back.attrs["proj:wkt2"]) == pyproj.CRS("IAU_2015:30110")
    assert back["height"].attrs["units"] == "m"


def test_cube_store_is_zarr_v3_with_zstd_and_512_chunks(written_cube: Path) -> None:
    metadata = json.loads((written_cube / "height" / "zarr.json").read_text())
    assert metadata["zarr_format"] == 3
    assert metadata["chunk_grid"]["configuration"]["chunk_shape"] == [512, 512]
    assert [codec["name"] for codec in metadata["codecs"]] == ["bytes", "zstd"]
    assert json.loads((written_cube / "zarr.json").read_text()).get("consolidated_metadata") is None
    chunks = written_cube / "height"
    # Only chunks holding data are stored: the demo covers two chunks of the tile.
    assert sorted(str(p.relative_to(chunks)) for p in (chunks / "c").rglob("*") if p.is_file()) == [
        "c/2/3",
        "c/3/3",
    ]


def test_write_tile_stores_what_xarray_s_to_zarr_stores(
    demo_cube: xr.Dataset, written_cube: Path, tmp_path: Path
) -> None:
    """write_tile has xarray write the metadata and coordinates from a task of the chunks'
    graph: the store is the one xarray's own to_zarr makes, document for document and
    chunk for chunk."""
    direct = tmp_path / "direct.zarr"
    encoding = {"chunks": (512, 512), "compressors": (ZstdCodec(level=ZSTD_LEVEL),)}
    prepare_for_zarr(demo_cube).to_zarr(
        direct, mode="w-", zarr_format=3, consolidated=False, encoding={"height": encoding}
    )

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    ours, theirs = files(written_cube), files(direct)
    assert sorted(ours) == sorted(theirs)
    assert "spatial_ref/zarr.json" in ours and "x/c/0" in ours and "height/c/2/3" in ours
    for name, data in ours.items():
        if name.endswith("zarr.json"):
            document = json.loads(data)
            if name == "zarr.json":  # write_tile adds the multiscales description at the end
                assert document["attributes"].pop("multiscales")["layout"][0]["asset"] == "height"
                del document["attributes"]["zarr_conventions"]
            assert document == json.loads(theirs[name]), name
        else:
            assert data == theirs[name], name


@pytest.mark.parametrize("form", ["folder", "subdataset"])
def test_cube_opens_in_gdal_with_the_moon_crs_and_transform(
    demo_cube: xr.Dataset, written_cube: Path, form: str
) -> None:
    target = str(written_cube) if form == "folder" else f'ZARR:"{written_cube}":/height'
    with rasterio.open(target) as src:
        crs = pyproj.CRS.from_user_input(src.crs)
        transform, values = src.transform, src.read(1)
    assert radius_m(crs) == MOON_RADIUS_M
    assert iau_code(crs) == "IAU_2015:30110"
    # GDAL derives the transform from the x/y coordinate arrays: equal to ~1e-13 relative.
    assert np.allclose(tuple(transform), tuple(demo_cube.rio.transform()), rtol=1e-12, atol=1e-6)
    assert np.array_equal(values, expected_west_tile(), equal_nan=True)


def test_cube_writes_through_obstore_and_pickles(demo_cube: xr.Dataset, tmp_path: Path) -> None:
    store = zarr.storage.ObjectStore(obstore.store.LocalStore(str(tmp_path)))
    write_tile(
        pickle.loads(pickle.dumps(demo_cube)), pickle.loads(pickle.dumps(store)), overviews=False
    )
    back = xr.open_zarr(store, decode_coords="all", consolidated=False)
    assert np.array_equal(back["height"].values, expected_west_tile(), equal_nan=True)
    assert iau_code(back.rio.crs) == "IAU_2015:30110"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "height",
        "spatial_ref",
        "x",
        "y",
        "zarr.json",
    ]


@pytest.mark.filterwarnings(NOT_GEOREFERENCED_IN_WARP)
def test_cube_write_on_dask_threads(demo_tiles: list[xr.DataArray], tmp_path: Path) -> None:
    cube = west_tile(demo_tiles)
    with dask.config.set(scheduler="threads"):
        write_tile(cube, zarr.storage.LocalStore(tmp_path / "dem.zarr"), overviews=False)
    back = xr.open_zarr(tmp_path / "dem.zarr", decode_coords="all", consolidated=False)
    assert np.array_equal(back["height"].values, expected_west_tile(), equal_nan=True)


def test_build_cube_refuses_a_name_that_is_not_an_identifier(demo_cube: xr.Dataset) -> None:
    with pytest.raises(ValueError, match="not a plain identifier"):
        build_cube(demo_cube["height"], name="../height")

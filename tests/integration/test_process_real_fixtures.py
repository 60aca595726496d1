"""The ``process`` flow and ``lunarchive process`` on the real fixtures of ``../shared``.

Each fixture is put into a store the way the harvest engine leaves a product (its files under
``raw/<source>/<product>/<segment>/`` and ``state/harvest/<source>.json`` naming them with
their checksums and the time they were fetched), then processed. Values are checked at known
pixels against the source read by GDAL directly; the CRS is read back by GDAL (rasterio on
the Zarr store) and by xarray (``decode_coords="all"``).

* ``lola``: LOLA LDEM_4 (PDS3) → ``lola-dem`` on moon-eqc-4; then the south-polar GeoTIFF
  joins the source → ``lola-dem-sp`` on moon-sp-7581, the two DEM tiles are kept untouched.
* ``pds4``, ``isis3``, ``gld100``: the other DEM forms, each onto moon-eqc-4.
* ``kaguya`` (through the CLI, published): the Kaguya MI 9-band crop beside LDEM_4 → two
  collections, ``kaguya-9band`` on moon-eqc-2048 (MI's own 2048 px/deg) with a ``band``
  dimension, and ``kaguya-dem``; never one tile of both.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import pytest
import rasterio  # type: ignore[import-untyped]
import rioxarray  # noqa: F401 - registers the .rio accessor
import xarray as xr
from distributed import LocalCluster
from PIL import Image

from lunarchive.catalog.layout import LATEST_KEY
from lunarchive.catalog.store import Store, open_store
from lunarchive.flows._runtime import dask_task_runner, load_settings, prefect_api
from lunarchive.flows.cli_process import raw_products
from lunarchive.flows.harvest_engine import raw_version_key, state_key
from lunarchive.flows.process import process
from lunarchive.processing.crs import MOON_RADIUS_M, iau_code
from lunarchive.processing.grids import Tile, named_grid
from lunarchive.schemas.sources import (
    HarvestState,
    HeldFile,
    HeldVersion,
    ProductState,
)
from tests.unit.test_tiles import source_raster

pytestmark = pytest.mark.filterwarnings(
    "ignore:Use `@` matmul instead of `\\*` mul operator:PendingDeprecationWarning"
)

LDEM = ("pds3/lro_lola_ldem_4/LDEM_4.LBL", "pds3/lro_lola_ldem_4/LDEM_4.IMG")
PDS4 = ("derived/ldem_4_pds4.xml", "derived/ldem_4_pds4.img")
ISIS3 = ("isis3/ldem_4_reduced.cub",)
GLD100 = ("isis3/WAC_GLD100_V1.0_GLOBAL_with_LOLA_30M_POLE.16bit.reduced.cub",)
SOUTH_POLAR = ("derived/ldem_4_spole_iau30135.tif",)
KAGUYA_MI = (
    "pds3/kaguya_mi_map_cropped/MI_MAP_03_N51E124N50E125SC_cropped.lbl",
    "pds3/kaguya_mi_map_cropped/MI_MAP_03_N51E124N50E125SC_cropped.img",
)
MI_WAVELENGTHS = [414.0, 749.0, 901.0, 950.0, 1001.0, 1000.0, 1049.0, 1248.0, 1548.0]
FETCHED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
COMMAND = (
    "import typer; from lunarchive.flows.cli_process import process_command; "
    "typer.run(process_command)"
)


@pytest.fixture(scope="module")
def real(shared: Path) -> Path:
    root = shared / "fixtures" / "real"
    needed = [*LDEM, *PDS4, *ISIS3, *GLD100, *SOUTH_POLAR, *KAGUYA_MI]
    missing = [name for name in needed if not (root / name).is_file()]
    if missing:
        pytest.fail(f"real fixtures missing under {root}: {', '.join(missing)}", pytrace=False)
    return root


@pytest.fixture(scope="module")
def dask_address() -> Iterator[str]:
    """One Dask cluster for every flow run of the module (the CLI is pointed at it too)."""
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield str(cluster.scheduler_address)


@dataclass
class Processed:
    url: str
    store: Store
    result: dict[str, Any]


def harvest(store: Store, source: str, real: Path, products: dict[str, tuple[str, ...]]) -> None:
    """Files and harvest state as the harvest engine leaves them (added to what is held)."""
    key = state_key(source)
    state = (
        HarvestState.model_validate_json(store.read(key))
        if store.exists(key)
        else HarvestState(source=source, kind="listing")
    )
    held = dict(state.products)
    for product_id, names in products.items():
        files = []
        for name in names:
            data = (real / name).read_bytes()
            file_key = raw_version_key(source, product_id, "1", Path(name).name)
            store.write(file_key, data)
            files.append(
                HeldFile(
                    name=Path(name).name,
                    key=file_key,
                    size=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                    md5=hashlib.md5(data).hexdigest(),
                )
            )
        version = HeldVersion(
            version="1", segment="1", fingerprint=product_id, files=tuple(files), fetched=FETCHED
        )
        held[product_id] = ProductState(versions=(version,))
    store.write(key, state.model_copy(update={"products": held}).model_dump_json().encode())


def run_flow(url: str, source: str, address: str, **options: Any) -> dict[str, Any]:
    """The process flow on Dask, as ``lunarchive process`` runs it (in this process)."""
    settings = load_settings(store_url=url, dask_address=address)
    products = raw_products(open_store(url), source)
    with prefect_api(settings):
        on_dask = process.with_options(task_runner=dask_task_runner(settings))  # type: ignore[arg-type]
        result: dict[str, Any] = on_dask(products, source, url, **options)
    return result


def run_cli(url: str, source: str, address: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", COMMAND, source, "--store", url, *args],
        capture_output=True, text=True,
        env={**os.environ, "LUNARCHIVE_DASK_ADDRESS": address,
             "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def snapshot(root: Path, prefix: str) -> dict[str, tuple[str, int]]:
    """Every object under ``prefix`` of a folder store: sha256 and modification time (ns)."""
    return {
        p.relative_to(root).as_posix(): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted((root / prefix).rglob("*"))
        if p.is_file()
    }


def by_tile(result: dict[str, Any], collection: str) -> dict[str, dict[str, Any]]:
    return {c["tile"]: c for c in result["cubes"] if c["collection"] == collection}


def open_cube(store: Store, record: dict[str, Any]) -> xr.Dataset:
    return xr.open_zarr(store.zarr_store(record["key"]), decode_coords="all", consolidated=False)


def nearest_source(
    path: Path, tile: Tile, step: int = 5
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns of a lattice of tile pixels, the source value under each pixel centre,
    and whether that centre is clear of source pixel edges (0.15 px: GDAL's approximate
    transformer) and inside the source."""
    values, transform, crs = source_raster(path)
    ny, nx = tile.geobox.shape
    rows, cols = (a.ravel() for a in np.mgrid[2:ny:step, 3:nx:step])
    affine = tile.geobox.affine
    xs, ys = affine.c + (cols + 0.5) * affine.a, affine.f + (rows + 0.5) * affine.e
    assert tile.geobox.crs is not None
    to_source = pyproj.Transformer.from_crs(tile.geobox.crs.to_wkt(), crs, always_xy=True)
    sx, sy = to_source.transform(xs, ys)
    if crs.is_projected and crs.coordinate_operation.method_code in ("1028", "1029"):
        period = 2 * np.pi * MOON_RADIUS_M  # a 0..360° E source: the same place, one turn on
        left = transform.c
        sx = np.where(np.asarray(sx) < left, np.asarray(sx) + period, sx)
    col_f, row_f = ~transform @ (np.asarray(sx), np.asarray(sy))
    sy_n, sx_n = values.shape[-2:]
    inside = (row_f >= 0) & (row_f < sy_n) & (col_f >= 0) & (col_f < sx_n)
    clear = (
        inside & (np.abs(row_f - np.round(row_f)) > 0.15) & (np.abs(col_f - np.round(col_f)) > 0.15)
    )
    r = np.clip(np.floor(row_f).astype(int), 0, sy_n - 1)
    c = np.clip(np.floor(col_f).astype(int), 0, sx_n - 1)
    return rows, cols, values[0, r, c], clear


def assert_moon_crs(store: Store, record: dict[str, Any], root: Path, code: str) -> None:
    """The tile's CRS as xarray and as GDAL's Zarr driver read it: ``code``, on the Moon."""
    cube = open_cube(store, record)
    assert iau_code(cube.rio.crs) == code
    assert cube.attrs["proj:code"] == code and cube.attrs["ssys:targets"] == ["Moon"]
    variable = record["variable"]
    assert cube[variable].rio.crs is not None and iau_code(cube[variable].rio.crs) == code
    with rasterio.open(f'ZARR:"{root / record["key"]}":/{variable}') as src:
        crs = pyproj.CRS.from_user_input(src.crs)
        assert crs.ellipsoid is not None and crs.ellipsoid.semi_major_metre == MOON_RADIUS_M
        assert iau_code(crs) == code
        assert np.allclose(tuple(src.transform)[:6], record["proj"]["transform"], atol=1e-6)


def ldem_heights(real: Path) -> np.ndarray:
    """LDEM_4 as height (m), straight from the PDS3 bytes: int16 LSB, DN × 0.5, 0..360° E."""
    dn = np.fromfile(real / LDEM[1], dtype="<i2").reshape(720, 1440)
    return dn.astype(np.float32) * np.float32(0.5)


# --- LOLA LDEM_4 (PDS3), then the south-polar GeoTIFF: a polar collection, DEM tiles kept ----


@pytest.fixture(scope="module")
def lola(
    real: Path, dask_address: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Processed, Processed, dict[str, Any], dict[str, Any]]:
    root = tmp_path_factory.mktemp("lola")
    url = root.as_uri()
    store = open_store(url)
    harvest(store, "lola", real, {"LDEM_4": LDEM})
    first = run_flow(url, "lola", dask_address, resampling="nearest")
    before = snapshot(root, "cubes/lola-dem")
    harvest(store, "lola", real, {"ldem_4_spole_iau30135": SOUTH_POLAR})
    second = run_flow(url, "lola", dask_address, resampling="nearest")
    after = snapshot(root, "cubes/lola-dem")
    return Processed(url, store, first), Processed(url, store, second), before, after


def test_ldem_pds3_tiles_hold_the_source_heights(real: Path, lola: Any) -> None:
    first, _, _, _ = lola
    assert first.result["grid"] == "moon-eqc-4"
    assert first.result["collections"]["lola-dem"]["built"] == ["r000c000", "r000c001"]
    tiles = by_tile(first.result, "lola-dem")
    heights = ldem_heights(real)
    west = open_cube(first.store, tiles["r000c000"])["height"]
    east = open_cube(first.store, tiles["r000c001"])["height"]
    assert west.dims == ("y", "x")
    # −180..0° is the source's right half (180..360° E), 0..180° its left half: exactly.
    np.testing.assert_array_equal(west.values, heights[:, 720:])
    np.testing.assert_array_equal(east.values, heights[:, :720])
    assert west.attrs["units"] == "m" and "removed" in west.attrs["comment"]
    assert tiles["r000c000"]["time_basis"] == "observation"
    assert tiles["r000c000"]["start"].startswith("2009-07-13")


def test_ldem_pds3_crs_reads_back_as_the_moon(lola: Any) -> None:
    first, _, _, _ = lola
    root = Path(first.url.removeprefix("file://"))
    for record in by_tile(first.result, "lola-dem").values():
        assert_moon_crs(first.store, record, root, "IAU_2015:30110")


def test_south_polar_product_makes_a_polar_tile_and_the_dem_tiles_are_kept(
    real: Path, lola: Any
) -> None:
    first, second, before, after = lola
    assert second.result["collections"]["lola-dem"]["kept"] == ["r000c000", "r000c001"]
    assert second.result["collections"]["lola-dem"]["built"] == []
    assert after == before  # not one byte of the DEM tiles written again, nor one file touched
    assert by_tile(second.result, "lola-dem") == by_tile(first.result, "lola-dem")
    polar = second.result["collections"]["lola-dem-sp"]
    assert (polar["grid"], polar["built"]) == ("moon-sp-7581", ["r000c000"])
    assert second.result["grid"] is None  # two collections on two grids
    record = by_tile(second.result, "lola-dem-sp")["r000c000"]
    root = Path(second.url.removeprefix("file://"))
    assert_moon_crs(second.store, record, root, "IAU_2015:30135")
    tile = named_grid("moon-sp-7581").tile("r000c000")
    height = open_cube(second.store, record)["height"].values
    rows, cols, expected, clear = nearest_source(real / SOUTH_POLAR[0], tile, step=3)
    assert clear.sum() > 5000
    np.testing.assert_array_equal(height[rows, cols][clear], expected[clear].astype(np.float32))
    assert np.isfinite(height[122:124, 122:124]).all()  # the pole: the tile's centre
    assert record["bbox"][1] == -90.0  # the cap's footprint reaches the pole
    assert (record["time_basis"], record["start"]) == ("harvest", FETCHED.isoformat())


# --- the other DEM forms: PDS4, ISIS3, GLD100 ----------------------------------------------


@pytest.mark.parametrize(
    ("source", "files"), [("pds4", PDS4), ("isis3", ISIS3), ("gld100", GLD100)]
)
def test_dem_forms_give_source_values_at_known_pixels(
    real: Path, dask_address: str, tmp_path: Path, source: str, files: tuple[str, ...]
) -> None:
    url = tmp_path.as_uri()
    store = open_store(url)
    harvest(store, source, real, {source: files})
    result = run_flow(url, source, dask_address, resampling="nearest")
    assert result["grid"] == "moon-eqc-4"
    tiles = by_tile(result, f"{source}-dem")
    assert sorted(tiles) == ["r000c000", "r000c001"]
    checked = 0
    for tile_id, record in tiles.items():
        tile = named_grid("moon-eqc-4").tile(tile_id)
        height = open_cube(store, record)["height"].values
        rows, cols, expected, clear = nearest_source(real / files[0], tile)
        np.testing.assert_array_equal(
            height[rows, cols][clear], expected[clear].astype(np.float32), err_msg=tile_id
        )
        checked += int(clear.sum())
        assert_moon_crs(store, record, tmp_path, "IAU_2015:30110")
        assert record["units"] == "m" and len(record["bands"]) == 1
    assert checked > 2000
    if source == "gld100":  # 0..360° E on a 0°-centred CRS: its east half lands west of 0°
        west = open_cube(store, tiles["r000c000"])["height"].values
        assert np.isfinite(west).mean() > 0.99


# --- Kaguya MI beside LDEM_4, through `lunarchive process --publish` -----------------------


@pytest.fixture(scope="module")
def kaguya(
    real: Path, dask_address: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Store, str, str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("kaguya")
    url = root.as_uri()
    store = open_store(url)
    harvest(store, "kaguya", real, {"MI_MAP_03": KAGUYA_MI, "LDEM_4": LDEM})
    first = run_cli(url, "kaguya", dask_address, "--publish")
    unchanged = snapshot(root, "cubes")
    second = run_cli(url, "kaguya", dask_address)
    assert snapshot(root, "cubes") == unchanged
    records = {}
    for info in store.list("cubes/"):
        if info.key.endswith(".inventory.json"):
            record = json.loads(store.read(info.key))
            records[(record["collection"], record["tile"])] = record
    return root, store, first, second, records


def published_items(store: Store) -> dict[str, dict[str, Any]]:
    pointer = json.loads(store.read(LATEST_KEY))
    manifest = json.loads(store.read(pointer["manifest"]))
    items = {}
    for entry in manifest["objects"]:
        if entry["key"].startswith("releases/") and entry["key"].endswith(".json"):
            document = json.loads(store.read(entry["key"]))
            if document.get("type") == "Feature":
                items[document["id"]] = document | {"_key": entry["key"]}
    return items


def test_kaguya_mi_and_ldem_make_two_collections_never_one_tile(kaguya: Any) -> None:
    _, _, first, second, records = kaguya
    assert "moon-eqc-2048: 2 tile(s), 2 built, 0 unchanged  (kaguya-9band, reflectance)" in first
    assert "moon-eqc-4: 2 tile(s), 2 built, 0 unchanged  (kaguya-dem, height)" in first
    assert "empty      kaguya-9band r038c303" in first  # half a pixel grazes the tiles north
    assert "moon-eqc-2048: 2 tile(s), 0 built, 2 unchanged  (kaguya-9band" in second
    built = {key: r for key, r in records.items() if not r.get("empty")}
    assert sorted(built) == [
        ("kaguya-9band", "r039c303"), ("kaguya-9band", "r039c304"),
        ("kaguya-dem", "r000c000"), ("kaguya-dem", "r000c001"),
    ]  # fmt: skip
    for (collection, _), record in built.items():
        labels = {Path(label).name for label in record["labels"]}
        if collection == "kaguya-dem":
            assert labels == {"LDEM_4.LBL"} and "band" not in record["dimensions"]
        else:
            assert labels == {"MI_MAP_03_N51E124N50E125SC_cropped.lbl"}
            assert record["dimensions"]["band"]["values"] == list(range(1, 10))
    empty = {key for key, r in records.items() if r.get("empty")}
    assert empty == {("kaguya-9band", "r038c303"), ("kaguya-9band", "r038c304")}


def test_kaguya_mi_tile_has_bands_with_wavelengths_and_source_values(
    real: Path, kaguya: Any
) -> None:
    root, store, _, _, records = kaguya
    record = records[("kaguya-9band", "r039c304")]
    cube = open_cube(store, record)
    reflectance = cube["reflectance"]
    assert reflectance.dims == ("band", "y", "x")
    assert cube["wavelength"].values.tolist() == MI_WAVELENGTHS
    assert cube["wavelength"].attrs["units"] == "nm"
    assert_moon_crs(store, record, root, "IAU_2015:30110")
    source, transform, _ = source_raster(real / KAGUYA_MI[0])
    tile = named_grid("moon-eqc-2048").tile("r039c304")
    # MI's pixels are the grid's shifted by half a pixel: the tile's pixel centres fall on
    # the source's pixel corners, and bilinear gives the mean of the 2 × 2 around each.
    col0, row0 = ~tile.geobox.affine @ (transform.c, transform.f)
    r0, c0 = round(row0 + 0.5), round(col0 + 0.5)
    for i, j in [(0, 0), (1, 2), (3, 3), (2, 0)]:
        got = reflectance.values[:, r0 + i, c0 + j]
        expected = source[:, i : i + 2, j : j + 2].mean(axis=(1, 2))
        np.testing.assert_allclose(got, expected, rtol=1e-5, err_msg=f"{i},{j}")
    # per band statistics in the record, from the stored values
    values = reflectance.values.reshape(9, -1).astype(np.float64)
    for band, stats in zip(values, record["bands"], strict=True):
        valid = band[np.isfinite(band)]
        assert stats["statistics"]["minimum"] == valid.min()
        assert stats["statistics"]["maximum"] == valid.max()
        assert stats["statistics"]["mean"] == pytest.approx(valid.mean(), rel=1e-12)
        assert sum(stats["histogram"]["buckets"]) == valid.size >= 16
    assert [b["name"] for b in record["bands"]][:3] == ["MV1", "MV2", "MV3"]
    assert record["time_basis"] == "product creation"
    assert record["start"] == "2015-01-02T01:45:16+00:00"


def test_kaguya_mi_item_carries_eo_and_raster_bands(kaguya: Any) -> None:
    _, store, _, _, records = kaguya
    items = published_items(store)
    item = items["kaguya-9band-r039c304"]
    assert "https://stac-extensions.github.io/eo/v1.1.0/schema.json" in item["stac_extensions"]
    asset = item["assets"]["zarr"]
    eo = asset["eo:bands"]
    assert [b["center_wavelength"] for b in eo] == [w / 1000 for w in MI_WAVELENGTHS]
    assert eo[0] == {"name": "MV1", "center_wavelength": 0.414, "full_width_half_max": 0.02}
    raster = asset["raster:bands"]
    assert len(raster) == 9 and all("center_wavelength" not in b for b in raster)
    stats = records[("kaguya-9band", "r039c304")]["bands"]
    for band, expected in zip(raster, stats, strict=True):
        assert band["statistics"] == expected["statistics"]
        assert band["histogram"] == expected["histogram"]
        assert band["unit"] == "1"
    assert item["properties"]["cube:dimensions"]["band"]["values"] == list(range(1, 10))
    assert "eo:bands" not in items["kaguya-dem-r000c000"]["assets"]["zarr"]
    # each in its own STAC collection, titled for what it holds
    assert item["collection"] == "kaguya-9band"
    assert items["kaguya-dem-r000c000"]["collection"] == "kaguya-dem"
    assert item["properties"]["lunarchive:time_basis"] == "product creation"
    collection = json.loads(store.read(item["_key"].rsplit("/", 2)[0] + "/collection.json"))
    assert collection["title"] == "Multi-band reflectance maps"
    assert item["assets"]["thumbnail"]["title"] == "Quicklook (false colour)"


def test_kaguya_mi_quicklook_is_false_colour(kaguya: Any) -> None:
    _, store, _, _, records = kaguya
    record = records[("kaguya-9band", "r039c304")]
    assert record["quicklook"]["style"] == "false colour"
    image = Image.open(io.BytesIO(store.read(record["quicklook"]["key"])))
    assert image.mode == "RGBA" and max(image.size) <= 512
    rgba = np.asarray(image)
    opaque = rgba[..., 3] == 255
    assert 0 < opaque.sum() < 16  # MI's 5 × 5 pixels seen on a 512-px thumbnail of the tile
    # stretched by the full-resolution statistics: colours, not channels saturated at 0 or 255
    colours = rgba[opaque][:, :3]
    assert not set(np.unique(colours).tolist()) <= {0, 255}
    assert records[("kaguya-dem", "r000c000")]["quicklook"]["style"] == "hillshade"

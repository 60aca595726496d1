"""``lunarchive process`` on per-tile stores: one Zarr v3 store and one STAC item per tile,
and an update that touches one tile rebuilds that tile only (the others keep their keys and
bytes, R9), published by the pointer flip.

The demo archive's four PDS4 products (0.5° each at 512 px/deg around the Chang'e-5 site)
fall on two tiles of ``moon-eqc-512``: r011c031 (52.5–52°W) and r011c032 (52–51.5°W).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyproj
import pytest
import rioxarray  # noqa: F401 - registers the .rio accessor
import xarray as xr
from PIL import Image

from lunarchive.catalog.layout import LATEST_KEY
from lunarchive.catalog.store import Store, open_store
from lunarchive.flows.process import InputFacts, collections_of, default_grid, label_key, plan_tiles
from lunarchive.processing.crs import MOON_RADIUS_M, iau_code
from lunarchive.processing.demo_archive import demo_heights_dn, write_demo_archive
from lunarchive.processing.grids import named_grid

WEST, EAST = "r011c031", "r011c032"
DEGREE_M = np.pi * MOON_RADIUS_M / 180.0
COMMAND = (
    "import typer; from lunarchive.flows.cli_process import process_command; "
    "typer.run(process_command)"
)


def process(url: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", COMMAND, "demo", "--store", url, *args],
        capture_output=True, text=True, env={**os.environ, "LUNARCHIVE_DASK_WORKERS": "2",
             "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def put_product(store: Store, product_id: str, files: list[Path]) -> None:
    for path in files:
        store.write(f"raw/demo/{product_id}/{path.name}", path.read_bytes())


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every object of a folder store: sha256 and modification time (ns)."""
    return {
        p.relative_to(root).as_posix(): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def tiles(store: Store) -> dict[str, dict[str, object]]:
    """The tile records of the current release's cube items, by tile id."""
    pointer = json.loads(store.read(LATEST_KEY))
    manifest = json.loads(store.read(pointer["manifest"]))
    found = {}
    for entry in manifest["objects"]:
        if entry["key"].startswith("cubes/") and entry["key"].endswith(".inventory.json"):
            record = json.loads(store.read(entry["key"]))
            found[record["tile"]] = record
    return found


def heights(store: Store, record: dict[str, object]) -> xr.DataArray:
    cube = xr.open_zarr(
        store.zarr_store(str(record["key"])), decode_coords="all", consolidated=False
    )
    height: xr.DataArray = cube["height"]
    return height


def at(height: xr.DataArray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Values at demo-grid pixels (row, col from the demo's north-west corner, 52.5°W 43.5°N)."""
    x = (-52.5 + (cols + 0.5) / 512.0) * DEGREE_M
    y = (43.5 - (rows + 0.5) / 512.0) * DEGREE_M
    picked = height.sel(
        x=xr.DataArray(x, dims="p"), y=xr.DataArray(y, dims="p"), method="nearest", tolerance=1.0
    )
    return np.asarray(picked.values, dtype="float64")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    write_demo_archive(root)
    return root / "dem"


def newer_copy_of_t00(archive: Path, folder: Path) -> list[Path]:
    """dem_t00 observed again later, 100 m higher: the same file names, a newer stop time."""
    folder.mkdir()
    label = (archive / "dem_t00.xml").read_text()
    assert "2020-12-31T23:59:59Z" in label
    (folder / "dem_t00.xml").write_text(
        label.replace("2020-12-31T23:59:59Z", "2023-06-30T00:00:00Z")
    )
    dn = np.fromfile(archive / "dem_t00.img", dtype="<i2")
    np.testing.assert_array_equal(dn.reshape(256, 256), demo_heights_dn()[:256, :256])
    raised = np.where(dn == -32768, dn, dn + 200).astype("<i2")  # DN × 0.5 m
    raised.tofile(folder / "dem_t00.img")
    return [folder / "dem_t00.xml", folder / "dem_t00.img"]


def test_an_update_rebuilds_only_the_tile_it_touches(archive: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    url = root.as_uri()
    store = open_store(url)
    for row, col in ((0, 0), (0, 1), (1, 0), (1, 1)):
        name = f"dem_t{row}{col}"
        put_product(store, name, [archive / f"{name}.xml", archive / f"{name}.img"])

    first = process(url, "--publish")
    assert "moon-eqc-512: 2 tile(s), 2 built, 0 unchanged" in first
    before = tiles(store)
    assert sorted(before) == [WEST, EAST]
    dn = demo_heights_dn()
    expected = np.where(dn == -32768, np.nan, dn.astype("float64") * 0.5)
    rows, cols = np.mgrid[0:512:7, 0:512:7]
    rows, cols = rows.ravel(), cols.ravel()
    west = cols < 256
    for tile, side in ((WEST, west), (EAST, ~west)):
        got = at(heights(store, before[tile]), rows[side], cols[side])
        np.testing.assert_array_equal(got, expected[rows[side], cols[side]])
    height = heights(store, before[WEST])
    assert iau_code(height.rio.crs) == "IAU_2015:30110"
    assert height.shape == named_grid("moon-eqc-512").tile(WEST).geobox.shape == (2048, 2048)
    # what process learnt of each product: the raw files' checksums, kept for the next run
    facts = json.loads(store.read("state/process/demo/dem_t00.json"))
    sums = {key: sha for key, _, _, sha in facts["files"]}
    assert (
        sums["raw/demo/dem_t00/dem_t00.img"]
        == hashlib.sha256((archive / "dem_t00.img").read_bytes()).hexdigest()
    )
    # one item per tile, with the thumbnail's checksum and the inputs that made the tile
    pointer = json.loads(store.read(LATEST_KEY))
    item_key = f"releases/{pointer['version']}/demo-dem/demo-dem-{WEST}/demo-dem-{WEST}.json"
    item = json.loads(store.read(item_key))
    thumbnail = item["assets"]["thumbnail"]
    png_key = os.path.normpath(f"{item_key.rsplit('/', 1)[0]}/{thumbnail['href']}")
    png = store.read(png_key)
    assert thumbnail["file:checksum"] == "1220" + hashlib.sha256(png).hexdigest()
    assert max(Image.open(io.BytesIO(png)).size) <= 512
    assert [i["product_id"] for i in item["properties"]["lunarchive:inputs"]] == [
        "dem_t00", "dem_t10",
    ]  # fmt: skip
    band = item["assets"]["zarr"]["raster:bands"][0]
    valid = expected[:, :256][np.isfinite(expected[:, :256])]
    assert band["statistics"]["minimum"] == valid.min()
    assert band["statistics"]["maximum"] == valid.max()
    assert sum(band["histogram"]["buckets"]) == valid.size
    assert item["properties"]["cube:dimensions"]["x"]["reference_system"] == "IAU_2015:30110"

    # an update touching the west tile only
    put_product(store, "dem_t00_new", newer_copy_of_t00(archive, tmp_path / "new"))
    east_objects = {
        k: v for k, v in snapshot(root).items() if k.startswith(f"cubes/demo-dem/{EAST}/")
    }
    second = process(url, "--publish")
    assert "moon-eqc-512: 2 tile(s), 1 built, 1 unchanged" in second
    after = tiles(store)
    assert after[EAST]["key"] == before[EAST]["key"]
    assert after[WEST]["key"] != before[WEST]["key"]
    assert {
        k: v for k, v in snapshot(root).items() if k.startswith(f"cubes/demo-dem/{EAST}/")
    } == east_objects  # not one byte written, nor one file touched
    assert store.exists(str(before[WEST]["key"]) + "/zarr.json")  # the old release's tile
    north_west = (rows < 256) & west
    got = at(heights(store, after[WEST]), rows[north_west], cols[north_west])
    np.testing.assert_array_equal(got, expected[rows[north_west], cols[north_west]] + 100.0)
    south_west = (rows >= 256) & west
    got = at(heights(store, after[WEST]), rows[south_west], cols[south_west])
    np.testing.assert_array_equal(got, expected[rows[south_west], cols[south_west]])
    assert [i["product_id"] for i in after[WEST]["inputs"]] == [  # type: ignore[attr-defined]
        "dem_t00_new", "dem_t00", "dem_t10",
    ]  # fmt: skip
    new_pointer = json.loads(store.read(LATEST_KEY))
    assert new_pointer["previous"] == pointer["version"]

    # nothing changed: nothing is read again, nothing written
    unchanged = snapshot(root)
    third = process(url)
    assert "moon-eqc-512: 2 tile(s), 0 built, 2 unchanged" in third
    assert snapshot(root) == unchanged


def test_a_product_gdal_cannot_open_is_quarantined_and_the_rest_built(
    archive: Path, tmp_path: Path
) -> None:
    url = (tmp_path / "store").as_uri()
    store = open_store(url)
    put_product(store, "dem_t01", [archive / "dem_t01.xml", archive / "dem_t01.img"])
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(archive / "dem_t00.xml", broken / "dem_t00.xml")
    (broken / "dem_t00.img").write_bytes(b"\0" * 100)  # truncated
    put_product(store, "dem_t00", [broken / "dem_t00.xml", broken / "dem_t00.img"])
    (tmp_path / "notes.txt").write_text("not a map")
    put_product(store, "notes", [tmp_path / "notes.txt"])
    out = process(url)
    assert "moon-eqc-512: 1 tile(s), 1 built, 0 unchanged" in out
    assert "products of no known kind: notes" in out
    reason = json.loads(store.read("quarantine/demo/dem_t00/reason.json"))
    assert "dem_t00" in reason["reason"]
    markers = [i.key for i in store.list("cubes/demo-dem/") if i.key.endswith(".inventory.json")]
    assert [key.split("/")[2] for key in markers] == [EAST]


def facts(crs: str, resolution_m: float) -> InputFacts:
    return InputFacts(
        source="s", product_id="p", label="raw/s/p/p.xml", files=(),
        crs_wkt=pyproj.CRS(crs).to_wkt(), bounds=(0.0, 0.0, 1.0, 1.0),
        resolution_m=resolution_m, start=None, end=None, checksum="c",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("crs", "resolution_m", "grid"),
    [
        ("IAU_2015:30110", 59.2, "moon-eqc-512"),
        ("IAU_2015:30115", 7580.0, "moon-eqc-4"),
        ("IAU_2015:30100", 240.0, "moon-eqc-128"),
        ("IAU_2015:30135", 240.0, "moon-sp-237"),
        ("IAU_2015:30130", 2000.0, "moon-np-1895"),
        # IAU_2015:30135 as a GeoTIFF reads it back: variant B, the pole as the standard parallel
        ("+proj=stere +lat_0=-90 +lat_ts=-90 +lon_0=0 +R=1737400 +units=m", 7580.8, "moon-sp-7581"),
        # finer than the ladder's finest rung: a grid at the input's own resolution (Kaguya MI)
        ("IAU_2015:30110", 14.806, "moon-eqc-2048"),
        ("IAU_2015:30110", 45.0, "moon-eqc-512"),
        ("IAU_2015:30135", 14.806, "moon-sp-14.8"),
    ],
)
def test_a_collection_without_a_grid_gets_the_nearest_named_one(
    crs: str, resolution_m: float, grid: str
) -> None:
    assert default_grid([facts(crs, resolution_m)]) == grid


def test_product_facts_survive_their_json_and_what_gdal_opens_is_found() -> None:
    known = facts("IAU_2015:30110", 59.2)
    assert InputFacts.from_json(known.to_json()) == known
    spectral = dataclasses.replace(
        known, bands=2, wavelengths=(414.0, 749.0), band_names=("MV1", "MV2"),
        bandwidths=(20.0, 12.0), created=datetime(2015, 1, 2, tzinfo=UTC),
        fetched=datetime(2026, 1, 2, tzinfo=UTC),
    )  # fmt: skip
    assert InputFacts.from_json(spectral.to_json()) == spectral
    assert spectral.kind == (2, (414.0, 749.0)) and known.kind == (1, ())
    assert label_key(["raw/s/p/p.img", "raw/s/p/p.xml"]) == "raw/s/p/p.xml"
    assert label_key(["raw/s/p/LDEM_4.IMG", "raw/s/p/LDEM_4.LBL"]) == "raw/s/p/LDEM_4.LBL"
    assert label_key(["raw/s/p/p.xml"]) is None  # a PDS4 label without its data
    assert label_key(["raw/s/p/notes.txt"]) is None


def test_inputs_of_different_bands_or_poles_never_share_a_collection() -> None:
    dem = dataclasses.replace(facts("IAU_2015:30110", 7580.0), product_id="dem")
    polar = dataclasses.replace(facts("IAU_2015:30135", 7580.0), product_id="polar")
    mi = dataclasses.replace(
        facts("IAU_2015:30110", 14.8), product_id="mi", bands=9, wavelengths=(414.0,) * 9
    )
    m3 = dataclasses.replace(mi, product_id="m3", bands=85, wavelengths=(460.0,) * 85)
    other_mi = dataclasses.replace(mi, product_id="mi2", wavelengths=(415.0,) * 9)
    made = collections_of([dem, polar, mi, m3, other_mi], "s")
    assert {name: (grid, variable, [f.product_id for f in inputs])
            for name, (grid, variable, inputs) in made.items()} == {
        "s-dem": ("moon-eqc-4", "height", ["dem"]),
        "s-dem-sp": ("moon-sp-7581", "height", ["polar"]),
        "s-85band": ("moon-eqc-2048", "reflectance", ["m3"]),
        f"s-9band-{sha6((414.0,) * 9)}": ("moon-eqc-2048", "reflectance", ["mi"]),
        f"s-9band-{sha6((415.0,) * 9)}": ("moon-eqc-2048", "reflectance", ["mi2"]),
    }  # fmt: skip
    declared = collections_of([dem, polar, mi], "s", grid="moon-eqc-16")
    assert {n: (g, [f.product_id for f in i]) for n, (g, _, i) in declared.items()} == {
        "s-dem": ("moon-eqc-16", ["dem", "polar"]), "s-9band": ("moon-eqc-16", ["mi"]),
    }  # fmt: skip
    with pytest.raises(ValueError, match="different bands"):
        plan_tiles([dem, mi], "s-dem", grid="moon-eqc-4", resampling="nearest", rule="newest")


def sha6(wavelengths: tuple[float, ...]) -> str:
    return hashlib.sha256(json.dumps(wavelengths).encode()).hexdigest()[:6]

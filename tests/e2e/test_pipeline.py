"""The whole pipeline, end to end, through the CLI, on a folder store and on SeaweedFS S3.

Each backend gets one store: ``lunarchive demo`` runs twice on it (the second run must write
nothing), then the tests read what was published: the manifest and its checksums, the cube,
the static catalog against the STAC schemas, and searches through ``lunarchive search``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import pytest
import rioxarray  # noqa: F401 - registers the .rio accessor
import xarray as xr

from lunarchive.catalog.layout import LATEST_KEY
from lunarchive.catalog.store import ObjectInfo, S3Options, Store, open_store
from lunarchive.catalog.validate import validate_stac
from lunarchive.processing.crs import MOON_RADIUS_M, iau_code
from lunarchive.processing.demo_archive import demo_heights_dn, write_demo_archive
from lunarchive.schemas.release import ReleaseManifest, ReleasePointer

CLI = str(Path(sys.executable).with_name("lunarchive"))


def lunarchive(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the installed CLI as a user would (its own process, the suite's environment)."""
    done = subprocess.run([CLI, *args], capture_output=True, text=True, env=os.environ.copy())
    if check and done.returncode != 0:
        pytest.fail(f"lunarchive {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done


def snapshot(store: Store) -> dict[str, int]:
    return {info.key: info.size for info in store.list()}


@dataclass
class DemoRuns:
    url: str
    store: Store
    first: str
    second: str
    after_first: dict[str, int]
    after_second: dict[str, int]


@pytest.fixture(
    scope="module", params=["folder", pytest.param("s3", marks=pytest.mark.integration)]
)
def demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> DemoRuns:
    if request.param == "folder":
        url = (tmp_path_factory.mktemp("e2e") / "store").as_uri()
        store = open_store(url)
    else:
        options: S3Options = request.getfixturevalue("s3_options")
        bucket = os.environ["LUNARCHIVE_TEST_S3_BUCKET"]
        url = f"s3://{bucket}/e2e-{os.getpid()}"
        store = open_store(url, s3=options)
    first = lunarchive("demo", "--store", url).stdout
    after_first = snapshot(store)
    second = lunarchive("demo", "--store", url).stdout
    return DemoRuns(url, store, first, second, after_first, snapshot(store))


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo archive as the demo serves it, to compare what was harvested against."""
    root = tmp_path_factory.mktemp("archive")
    write_demo_archive(root)
    return root


def current(store: Store) -> tuple[ReleasePointer, ReleaseManifest]:
    pointer = ReleasePointer.model_validate_json(store.read(LATEST_KEY))
    return pointer, ReleaseManifest.model_validate_json(store.read(pointer.manifest))


def test_harvest_copies_every_archive_file_into_raw_with_its_checksum(
    demo: DemoRuns, archive: Path
) -> None:
    files = sorted(p for p in archive.rglob("*") if p.is_file())
    assert len(files) == 9  # 4 tiles x (label + image) + 1 sample table
    for path in files:
        key = f"raw/demo/{path.name.split('.', 1)[0]}/{path.name}"
        assert demo.store.sha256(key) == hashlib.sha256(path.read_bytes()).hexdigest(), key


def test_release_manifest_lists_every_object_with_size_and_sha256(demo: DemoRuns) -> None:
    pointer, manifest = current(demo.store)
    assert manifest.version == pointer.version
    prefix = f"releases/{pointer.version}/"
    keys = {entry.key for entry in manifest.objects}
    listed = {info.key: info for info in demo.store.list()}
    for entry in manifest.objects:
        info: ObjectInfo = listed[entry.key]
        assert info.size == entry.size, entry.key
        assert demo.store.sha256(entry.key) == entry.sha256, entry.key
    # the release's own files, the cube, and the raw files its items point to
    assert {prefix + "catalog.json", prefix + "items.parquet"} <= keys
    # catalog + 2 collections + 13 items + 2 queryables
    assert len([k for k in keys if k.startswith(prefix) and k.endswith(".json")]) == 18
    cube_objects = [k for k in keys if k.startswith("cubes/demo-dem/mosaic/")]
    assert any(k.endswith(".zarr/zarr.json") for k in cube_objects)
    assert any("/height/c/" in k for k in cube_objects)  # chunks, not only metadata
    assert "raw/demo/specimens/specimens.csv" in keys
    assert {f"raw/demo/dem_t{rc}/dem_t{rc}.xml" for rc in ("00", "01", "10", "11")} <= keys
    # every href of every item resolves to an object of the manifest
    for key in keys:
        if key.startswith(prefix) and key.count("/") == 4:  # releases/v/collection/item/item.json
            item = json.loads(demo.store.read(key))
            base = key.rsplit("/", 1)[0]
            for href in [a["href"] for a in item["assets"].values()] + [
                link["href"] for link in item["links"] if link["rel"] == "derived_from"
            ]:
                target = os.path.normpath(f"{base}/{href}")
                zarr_root = target + "/zarr.json"  # a Zarr asset is a prefix
                assert target in keys or zarr_root in keys, (key, href)


def test_cube_holds_the_demo_heights_on_the_moon_grid(demo: DemoRuns) -> None:
    (cube_key,) = {
        k.split(".zarr/")[0] + ".zarr"
        for k in demo.after_first
        if k.startswith("cubes/")
        if ".zarr/" in k
    }
    cube = xr.open_zarr(demo.store.zarr_store(cube_key), decode_coords="all", consolidated=False)
    crs = pyproj.CRS.from_user_input(cube.rio.crs)
    assert iau_code(crs) == "IAU_2015:30110"
    assert crs.ellipsoid is not None
    assert crs.ellipsoid.semi_major_metre == MOON_RADIUS_M
    assert cube.attrs["proj:code"] == "IAU_2015:30110"
    assert "Moon" in cube.attrs["proj:wkt2"]
    dn = demo_heights_dn()
    expected = np.where(dn == -32768, np.nan, dn.astype("float64") * 0.5)
    heights = cube["height"].values
    assert heights.shape == (512, 512)
    np.testing.assert_array_equal(np.isnan(heights), np.isnan(expected))
    np.testing.assert_allclose(heights, expected, equal_nan=True)


def test_static_catalog_validates_against_the_stac_schemas(demo: DemoRuns, shared: Path) -> None:
    pointer, manifest = current(demo.store)
    documents = [
        json.loads(demo.store.read(e.key))
        for e in manifest.objects
        if e.key.startswith(f"releases/{pointer.version}/")
        and e.key.endswith(".json")
        and not e.key.endswith(("/manifest.json", "/queryables.json"))
    ]
    kinds = sorted(doc["type"] for doc in documents)
    assert kinds == ["Catalog"] + ["Collection"] * 2 + ["Feature"] * 13
    for doc in documents:
        urls = validate_stac(doc, shared / "stac-schemas")
        assert "https://stac-extensions.github.io/ssys/v1.1.1/schema.json" in urls
        if doc["type"] == "Feature":
            assert doc["properties"]["ssys:targets"] == ["Moon"]
    (cube_item,) = [d for d in documents if d.get("collection") == "demo-dem"]
    assert cube_item["properties"]["proj:code"] == "IAU_2015:30110"


def test_collections_publish_their_queryables(demo: DemoRuns, archive: Path) -> None:
    pointer, manifest = current(demo.store)
    keys = {e.key for e in manifest.objects}
    base = f"releases/{pointer.version}/demo-samples/"
    collection = json.loads(demo.store.read(base + "collection.json"))
    (link,) = [
        link for link in collection["links"]
        if link["rel"] == "http://www.opengis.net/def/rel/ogc/1.0/queryables"
    ]  # fmt: skip
    assert os.path.normpath(base + link["href"]) in keys
    queryables = json.loads(demo.store.read(base + "queryables.json"))
    rows = list(csv.DictReader(io.StringIO((archive / "samples" / "specimens.csv").read_text())))
    properties = queryables["properties"]
    assert properties["mission"]["enum"] == sorted({r["mission"] for r in rows})
    masses = [float(r["mass_g"]) for r in rows]
    assert properties["mass_g"] == {
        "type": "number",
        "minimum": min(masses),
        "maximum": max(masses),
    }
    assert properties["datetime"] == {"type": "string", "format": "date-time"}
    assert f"releases/{pointer.version}/demo-dem/queryables.json" in keys


def search(demo: DemoRuns, *args: str) -> list[dict[str, Any]]:
    out = lunarchive("search", "--store", demo.url, "--json", *args).stdout
    features: list[dict[str, Any]] = json.loads(out)["features"]
    return features


def test_search_by_sample_property_place_and_time(demo: DemoRuns, archive: Path) -> None:
    rows = list(csv.DictReader(io.StringIO((archive / "samples" / "specimens.csv").read_text())))
    apollo17 = sorted(r["sample_id"] for r in rows if r["mission"] == "Apollo 17")
    found = search(demo, "--filter", "mission = 'Apollo 17'")
    assert sorted(f["properties"]["sample_id"] for f in found) == apollo17

    heavy = search(demo, "--filter", "mass_g > 1000 AND material = 'rock'")
    expected = sorted(
        r["sample_id"] for r in rows if float(r["mass_g"]) > 1000 and r["material"] == "rock"
    )
    assert sorted(f["properties"]["sample_id"] for f in heavy) == expected

    near_ce5 = search(demo, "--bbox", "-52.5,42.5,-51.5,43.5")
    assert sorted(f["id"] for f in near_ce5) == [
        "demo-dem-mosaic", "specimen-CE5C0400YJFM00505", "specimen-CE5C0400YJFM00505-G1",
    ]  # fmt: skip
    seventies = search(demo, "--datetime", "1972-01-01T00:00:00Z/1972-12-31T23:59:59Z")
    missions = {f["properties"]["mission"] for f in seventies}
    assert missions == {"Apollo 16", "Apollo 17"}
    dems = search(demo, "--collections", "demo-dem")
    assert [f["id"] for f in dems] == ["demo-dem-mosaic"]


def test_malformed_filter_prints_one_line_and_exits_non_zero(demo: DemoRuns) -> None:
    done = lunarchive("search", "--store", demo.url, "--filter", "mission = = 'x'", check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error:")
    assert "Traceback" not in done.stderr


def test_rerun_on_unchanged_input_writes_no_new_objects(demo: DemoRuns) -> None:
    assert demo.after_second == demo.after_first
    assert "unchanged, nothing written" in demo.second
    assert "0 file(s) fetched" in demo.second
    pointer, _ = current(demo.store)
    assert pointer.previous is None  # one release only: the rerun published none


def test_pipeline_quarantines_a_bad_sample_table_and_publishes_the_rest(tmp_path: Path) -> None:
    from lunarchive.flows.demo import serve_folder

    archive = tmp_path / "archive"
    write_demo_archive(archive)
    table = archive / "samples" / "specimens.csv"
    header = table.read_text().splitlines()[0].split(",")
    bad_row = {name: "" for name in header} | {
        "sample_id": "99999", "mission": "Apollo 17", "lat_deg": "123.0", "lon_deg": "30.0",
    }  # fmt: skip
    with table.open("a") as out:
        out.write(",".join(bad_row[name] for name in header) + "\n")
    rows_before_bad = len(table.read_text().splitlines())
    url = (tmp_path / "store").as_uri()
    with serve_folder(archive) as source_url:
        done = lunarchive(
            "pipeline", source_url, "--source", "partner-a", "--store", url,
            "--allow-local-sources",
        )  # fmt: skip
    store = open_store(url)
    reason = json.loads(store.read("quarantine/partner-a/specimens/reason.json"))
    assert reason["rule"] == "ProductRejected"
    assert f"row {rows_before_bad}" in reason["reason"]
    assert "'lat_deg'" in reason["reason"]
    assert reason["files"] == ["raw/partner-a/specimens/specimens.csv"]
    # the original is kept, byte for byte, and the rest of the run was published
    assert store.read("raw/partner-a/specimens/specimens.csv") == table.read_bytes()
    pointer, manifest = current(store)
    prefix = f"releases/{pointer.version}/"
    items = [e.key for e in manifest.objects if e.key.startswith(prefix) and e.key.count("/") == 4]
    assert items == [
        f"releases/{pointer.version}/partner-a-dem/partner-a-dem-mosaic/partner-a-dem-mosaic.json"
    ]
    assert "1 cube(s), 0 sample record(s)" in done.stdout

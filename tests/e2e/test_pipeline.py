"""The whole pipeline, end to end, through the CLI, on a folder store and on SeaweedFS S3.

Each backend gets one store: ``lunarchive demo`` runs twice on it (the second run must write
nothing), then the tests read what was published: the manifest and its checksums, the cube,
the sample tables, the static catalog against the STAC schemas, and searches through
``lunarchive search``. The demo's DEM tiles are harvested over HTTP; its sample drop goes
through ``inbox/demo-lab/<drop>/`` and ``harvest-samples``.
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
from lunarchive.processing.demo_archive import (
    DEMO_ANALYSES,
    demo_heights_dn,
    write_demo_archive,
    write_demo_drop,
)
from lunarchive.schemas.release import ReleaseManifest, ReleasePointer

CLI = str(Path(sys.executable).with_name("lunarchive"))


def lunarchive(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the installed CLI as a user would (its own process, the suite's environment)."""
    done = subprocess.run([CLI, *args], capture_output=True, text=True, env=os.environ.copy())
    if check and done.returncode != 0:
        pytest.fail(f"lunarchive {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done


def snapshot(store: Store) -> dict[str, int]:
    # Every run writes its run report (reports/<run-id>.json, its pictures under
    # reports/<run-id>/) on purpose: those, and only those, are left out here; every other
    # key, other reports/ ones included, counts. The reruns' reports are checked below.
    from lunarchive.schemas.run_report import run_id_of

    def run_report(key: str) -> bool:  # reports/<run-id>.json or reports/<run-id>/<picture>
        parts = key.split("/")
        if len(parts) < 2 or parts[0] != "reports":
            return False
        return run_id_of(f"reports/{parts[1].removesuffix('.json')}.json") is not None

    return {info.key: info.size for info in store.list() if not run_report(info.key)}


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
    files = sorted(p for p in (archive / "dem").rglob("*") if p.is_file())
    assert len(files) == 8  # 4 tiles x (label + image)
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
    # catalog + 4 collections (DEM, Apollo, Luna, Chang'e-5) + 11 items (2 tiles + 9 root
    # specimens) + 4 queryables
    assert len([k for k in keys if k.startswith(prefix) and k.endswith(".json")]) == 20
    cube_objects = [k for k in keys if k.startswith("cubes/demo-dem/r011c03")]
    assert any(k.endswith(".zarr/zarr.json") for k in cube_objects)
    assert any("/height/c/" in k for k in cube_objects)  # chunks, not only metadata
    (table,) = {k.split("/")[2] for k in keys if k.startswith("tables/demo-lab/")}
    tables = f"tables/demo-lab/{table}/"
    assert {tables + "specimens.parquet", tables + "analyses.parquet"} <= keys
    assert tables + "by-specimen/70017.analyses.parquet" in keys
    assert len([k for k in keys if k.startswith(tables + "at-site/")]) == 1
    assert not any(k.startswith(("raw/demo/specimens", "inbox/", "quarantine/")) for k in keys)
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
    tile_keys = sorted(
        {k.split(".zarr/")[0] + ".zarr" for k in demo.after_first if ".zarr/" in k}
    )  # one store per tile of moon-eqc-512: r011c031 (56–52°W), r011c032 (52–48°W)
    assert [k.split("/")[2] for k in tile_keys] == ["r011c031", "r011c032"]
    tiles = [
        xr.open_zarr(demo.store.zarr_store(k), decode_coords="all", consolidated=False)
        for k in tile_keys
    ]
    deg = np.pi * MOON_RADIUS_M / 180.0  # metres per degree of the grid
    cube = xr.combine_by_coords(tiles, combine_attrs="drop_conflicts").sel(
        x=slice(-52.5 * deg, -51.5 * deg), y=slice(43.5 * deg, 42.5 * deg)
    )
    cube.attrs = tiles[0].attrs
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
    assert kinds == ["Catalog"] + ["Collection"] * 4 + ["Feature"] * 11
    for doc in documents:
        urls = validate_stac(doc, shared / "stac-schemas")
        assert "https://stac-extensions.github.io/ssys/v1.1.1/schema.json" in urls
        if doc["type"] == "Feature":
            assert doc["properties"]["ssys:targets"] == ["Moon"]
    tile_items = [d for d in documents if d.get("collection") == "demo-dem"]
    assert len(tile_items) == 2  # one item per tile
    for cube_item in tile_items:
        assert cube_item["properties"]["proj:code"] == "IAU_2015:30110"


def demo_rows(archive: Path, name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((archive / "samples" / name).read_text())))


def roots(archive: Path) -> list[dict[str, str]]:
    """The demo's root specimens: one item each (their splits are described inside it)."""
    return [r for r in demo_rows(archive, "specimens.csv") if not r["parent_id"]]


def test_collections_publish_their_queryables(demo: DemoRuns, archive: Path) -> None:
    pointer, manifest = current(demo.store)
    keys = {e.key for e in manifest.objects}
    base = f"releases/{pointer.version}/apollo-samples/"
    collection = json.loads(demo.store.read(base + "collection.json"))
    (link,) = [
        link for link in collection["links"]
        if link["rel"] == "http://www.opengis.net/def/rel/ogc/1.0/queryables"
    ]  # fmt: skip
    assert os.path.normpath(base + link["href"]) in keys
    queryables = json.loads(demo.store.read(base + "queryables.json"))
    apollo = [r for r in roots(archive) if r["mission"].startswith("Apollo")]
    properties = queryables["properties"]
    assert properties["mission"]["enum"] == sorted({r["mission"] for r in apollo})
    masses = [float(r["mass_g"]) for r in apollo]
    assert properties["mass_g"] == {
        "type": "number",
        "minimum": min(masses),
        "maximum": max(masses),
    }
    bulk_ti = [
        values["TiO2"]
        for sample, material, _, _, _, values, _ in DEMO_ANALYSES
        if sample in {r["sample_id"] for r in apollo}
        and material in ("whole_rock", "bulk_soil")
        and "TiO2" in values
    ]
    assert properties["TiO2_wt_pct"] == {
        "type": "number",
        "minimum": min(bulk_ti),
        "maximum": max(bulk_ti),
        "title": "TiO2, wt% (mean of the detected whole-rock / bulk-soil analyses)",
        "unit": "wt%",
    }
    assert properties["CaO_wt_pct"]["type"] == "number"
    assert properties["datetime"] == {"type": "string", "format": "date-time"}
    for collection_id in ("demo-dem", "luna-samples", "change-5-samples"):
        assert f"releases/{pointer.version}/{collection_id}/queryables.json" in keys


def search(demo: DemoRuns, *args: str) -> list[dict[str, Any]]:
    out = lunarchive("search", "--store", demo.url, "--json", *args).stdout
    features: list[dict[str, Any]] = json.loads(out)["features"]
    return features


def test_search_by_sample_property_place_and_time(demo: DemoRuns, archive: Path) -> None:
    rows = roots(archive)
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
        "demo-dem-r011c031", "demo-dem-r011c032", "specimen-CE5C0400YJFM00505",
    ]  # fmt: skip
    (ce5,) = [f for f in near_ce5 if f["id"] == "specimen-CE5C0400YJFM00505"]
    assert ce5["properties"]["splits"] == ["CE5C0400YJFM00505-G1"]
    seventies = search(demo, "--datetime", "1972-01-01T00:00:00Z/1972-12-31T23:59:59Z")
    missions = {f["properties"]["mission"] for f in seventies}
    assert missions == {"Apollo 16", "Apollo 17"}
    dems = search(demo, "--collections", "demo-dem")
    assert sorted(f["id"] for f in dems) == ["demo-dem-r011c031", "demo-dem-r011c032"]


def test_malformed_filter_prints_one_line_and_exits_non_zero(demo: DemoRuns) -> None:
    done = lunarchive("search", "--store", demo.url, "--filter", "mission = = 'x'", check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error:")
    assert "Traceback" not in done.stderr


def test_rerun_on_unchanged_input_writes_no_new_objects(demo: DemoRuns) -> None:
    assert demo.after_second == demo.after_first
    # ...but for the run report each run writes on purpose (left out of the snapshots)
    from lunarchive.schemas.run_report import run_id_of

    assert len([i for i in demo.store.list("reports/") if run_id_of(i.key)]) == 2
    assert "unchanged, nothing written" in demo.second
    assert "0 file(s) fetched" in demo.second
    pointer, _ = current(demo.store)
    assert pointer.previous is None  # one release only: the rerun published none


def test_pipeline_quarantines_bad_sample_rows_and_drops_and_publishes_the_rest(
    tmp_path: Path,
) -> None:
    from lunarchive.flows.demo import put_drop, serve_folder

    archive = tmp_path / "archive"
    write_demo_archive(archive)
    # partner A: the demo drop with one bad row (its manifest made after, so it checks out)
    drop_a = tmp_path / "drop-a"
    write_demo_drop(drop_a, partner="partner-a")
    table = drop_a / "specimens.csv"
    header = table.read_text().splitlines()[0].split(",")
    bad_row = {name: "" for name in header} | {
        "sample_id": "79999", "mission": "Apollo 17", "lat_deg": "123.0", "lon_deg": "30.0",
    }  # fmt: skip
    with table.open("a") as out:
        out.write(",".join(bad_row[name] for name in header) + "\n")
    bad_row_number = len(table.read_text().splitlines())
    manifest = json.loads((drop_a / "manifest.json").read_text())
    manifest["files"][0]["sha256"] = hashlib.sha256(table.read_bytes()).hexdigest()
    (drop_a / "manifest.json").write_text(json.dumps(manifest))
    # partner B: a drop whose file changed after its manifest was written
    drop_b = tmp_path / "drop-b"
    write_demo_drop(drop_b, partner="partner-b")
    with (drop_b / "analyses.csv").open("a") as out:
        out.write("70017,whole_rock,,,XRF,Demo laboratory,MnO,0.27,wt%,0.01,1SD,x\n")
    url = (tmp_path / "store").as_uri()
    store = open_store(url)
    put_drop(store, drop_a, partner="partner-a", drop="d1")
    put_drop(store, drop_b, partner="partner-b", drop="d1")
    with serve_folder(archive / "dem") as source_url:
        done = lunarchive(
            "pipeline", source_url, "--source", "partner-a", "--store", url,
            "--allow-local-sources",
        )  # fmt: skip
    report_a = json.loads(store.read("inbox/partner-a/d1/report.json"))
    assert report_a["status"] == "accepted_with_rejections"
    assert report_a["counts"]["specimens"] == {"rows": 13, "valid": 12, "rejected": 1}
    (error,) = report_a["errors"]
    assert (error["file"], error["row"], error["column"], error["value"]) == (
        "specimens.csv", bad_row_number, "lat_deg", "123.0",
    )  # fmt: skip
    assert error["rule"] == "latitude_range"
    report_csv = store.read("inbox/partner-a/d1/report.csv").decode().splitlines()
    assert report_csv[0] == "file,sheet,row,column,value,rule,message" and len(report_csv) == 2
    kept = json.loads(store.read("quarantine/partner-a/d1/rejected-rows.json"))
    assert [(r["row"], r["cells"]["sample_id"]) for r in kept["rows"]] == [
        (bad_row_number, "79999")
    ]
    report_b = json.loads(store.read("inbox/partner-b/d1/report.json"))
    assert report_b["status"] == "rejected"
    assert "analyses.csv: SHA-256 is" in report_b["reason"]
    reason = json.loads(store.read("quarantine/partner-b/d1/reason.json"))
    assert reason["rule"] == "DropRejected"
    # the originals are kept, byte for byte, and the rest of the run was published
    assert store.read("inbox/partner-a/d1/specimens.csv") == table.read_bytes()
    assert not store.exists("tables/partner-b/latest.json")
    pointer, manifest_ = current(store)
    prefix = f"releases/{pointer.version}/"
    items = sorted(
        e.key.split("/")[3] for e in manifest_.objects
        if e.key.startswith(prefix) and e.key.count("/") == 4
    )  # fmt: skip
    assert items == sorted(
        ["partner-a-dem-r011c031", "partner-a-dem-r011c032"]
        + [f"specimen-{r['sample_id']}" for r in roots(archive)]
    )
    assert "2 cube(s), 9 sample record(s)" in done.stdout

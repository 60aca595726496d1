"""Run reports: every pipeline run writes reports/<run-id>.json, its coverage pictures and a
Prefect artifact; their figures are checked against what the run left in the store.

The demo runs through the CLI (``lunarchive demo``), as a user runs it, against a real
temporary Prefect server so that the run's artifact can be read back through the Prefect
API: on a folder store twice (the rerun reports nothing new) and on SeaweedFS once.
``lunarchive status`` is then asked, as a subprocess, to show those runs.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from lunarchive.catalog.layout import LATEST_KEY
from lunarchive.catalog.store import S3Options, Store, open_store
from lunarchive.processing.coverage import (
    COLOURS,
    GLOBAL_PX_PER_DEG,
    TileState,
    tile_pixel_box,
)
from lunarchive.processing.grids import named_grid
from lunarchive.schemas.release import ReleaseManifest, ReleasePointer
from lunarchive.schemas.run_report import RunReport, run_id_of
from tests._processes import prefect_server

CLI = str(Path(sys.executable).with_name("lunarchive"))
STAGES = ["harvest", "process", "harvest-samples", "publish"]


def lunarchive(api: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_API_URL": api, "COLUMNS": "200"}
    done = subprocess.run([CLI, *args], capture_output=True, text=True, env=env)
    if check and done.returncode != 0:
        pytest.fail(f"lunarchive {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done


def run_reports(store: Store) -> dict[str, RunReport]:
    return {
        info.key: RunReport.model_validate_json(store.read(info.key))
        for info in store.list("reports/")
        if run_id_of(info.key)
    }


@dataclass
class Runs:
    url: str
    store: Store
    api: str
    reports: list[RunReport]  # oldest first


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with prefect_server(tmp_path_factory.mktemp("prefect")) as url:
        yield url


@pytest.fixture(
    scope="module", params=["folder", pytest.param("s3", marks=pytest.mark.integration)]
)
def runs(
    request: pytest.FixtureRequest, api: str, tmp_path_factory: pytest.TempPathFactory
) -> Runs:
    if request.param == "folder":
        url = (tmp_path_factory.mktemp("reports") / "store").as_uri()
        store = open_store(url)
    else:
        options: S3Options = request.getfixturevalue("s3_options")
        url = f"s3://{os.environ['LUNARCHIVE_TEST_S3_BUCKET']}/reports-{os.getpid()}"
        store = open_store(url, s3=options)
    reports = []
    for _ in range(2 if request.param == "folder" else 1):
        before = set(run_reports(store))
        lunarchive(api, "demo", "--store", url)
        (new,) = set(run_reports(store)) - before  # one report per run
        reports.append(run_reports(store)[new])
    return Runs(url, store, api, reports)


def current(store: Store) -> tuple[ReleasePointer, ReleaseManifest]:
    pointer = ReleasePointer.model_validate_json(store.read(LATEST_KEY))
    return pointer, ReleaseManifest.model_validate_json(store.read(pointer.manifest))


def picture(store: Store, key: str) -> np.ndarray:
    image = Image.open(io.BytesIO(store.read(key)))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def cube_items(store: Store, manifest: ReleaseManifest) -> list[dict[str, Any]]:
    prefix = f"releases/{manifest.version}/"
    items = [
        json.loads(store.read(e.key))
        for e in manifest.objects
        if e.key.startswith(prefix) and e.key.count("/") == 4
    ]
    return [item for item in items if "zarr" in item["assets"]]


def test_first_run_report_matches_the_store(runs: Runs) -> None:
    report = runs.reports[0]
    pointer, manifest = current(runs.store)
    assert report.outcome == "completed" and report.error is None
    assert [s.stage for s in report.stages] == STAGES
    assert all(s.outcome == "completed" and s.seconds > 0 for s in report.stages)
    # per source: the 4 DEM products and the partner's one drop, all new
    by_source = {s.source: s for s in report.sources}
    assert by_source["demo"].model_dump() == {
        "source": "demo", "kind": "archive", "new": 4, "unchanged": 0, "failed": 0,
        "quarantined": 0,
    }  # fmt: skip
    assert (by_source["demo-lab"].new, by_source["demo-lab"].unchanged) == (1, 0)
    # bytes: every raw object was fetched by this run; every release object written by it
    raw = sum(i.size for i in runs.store.list("raw/demo/"))
    assert raw > 0 and report.bytes_fetched == raw
    released = sum(i.size for i in runs.store.list(f"releases/{pointer.version}/"))
    latest = next(i.size for i in runs.store.list(LATEST_KEY))
    assert report.bytes_released == released + latest
    assert report.bytes_moved == raw + released + latest
    # the release and its items
    items = [e for e in manifest.objects if e.key.count("/") == 4 and "releases/" in e.key]
    assert (report.release, report.release_published) == (pointer.version, True)
    assert report.items_published == report.release_items == len(items)
    # tiles: the cubes the release references, all built by this run
    cubes = {e.key.split(".zarr/")[0] + ".zarr" for e in manifest.objects if ".zarr/" in e.key}
    assert set(report.cubes) == cubes
    assert report.tiles == report.tiles_built == len(cubes) > 0


def test_coverage_pictures_show_the_built_tiles_where_the_items_are(runs: Runs) -> None:
    report = runs.reports[0]
    _, manifest = current(runs.store)
    (coverage,) = report.coverage
    assert coverage.collection == "demo-dem"
    assert set(coverage.views) == {"global", "north", "south"}
    view = coverage.views["global"]
    assert view.changed and set(view.changed) == set(view.exists) and not view.failed
    pixels = picture(runs.store, view.picture)
    for item in cube_items(runs.store, manifest):  # the middle of each cube tile's bbox
        west, south, east, north = item["bbox"]
        row = int((90 - (south + north) / 2) * GLOBAL_PX_PER_DEG)
        col = int(((west + east) / 2 + 180) * GLOBAL_PX_PER_DEG)
        assert tuple(pixels[row, col]) == COLOURS["changed"], item["id"]
    grid = named_grid(view.grid)
    for tile in grid.tiles():
        x0, y0, _, _ = tile_pixel_box(grid, tile)
        state: TileState = "changed" if tile.id in view.changed else "absent"
        assert tuple(pixels[y0 + 2, x0 + 2]) == COLOURS[state], tile.id  # inside its border
    for name in ("north", "south"):
        cap = coverage.views[name]
        assert picture(runs.store, cap.picture).shape[2] == 3
        assert cap.grid.startswith("moon-np-" if name == "north" else "moon-sp-")
    assert not coverage.views["south"].exists  # the demo lies at 43° N


def test_the_run_leaves_a_markdown_artifact_on_the_prefect_server(runs: Runs) -> None:
    found = httpx.post(
        f"{runs.api}/artifacts/filter",
        json={"artifacts": {"key": {"any_": ["pipeline-demo"]}, "type": {"any_": ["markdown"]}}},
        timeout=30,
    ).json()
    by_run = {a["flow_run_id"]: a["data"] for a in found}
    for report in runs.reports:
        text = by_run[report.run_id]
        assert f"reports/{report.run_id}.json" in text
        assert f"Bytes moved: {report.bytes_moved}" in text
        assert "| demo | archive |" in text


def test_a_rerun_reports_nothing_new(runs: Runs) -> None:
    if len(runs.reports) < 2:
        assert runs.url.startswith("s3://")  # SeaweedFS runs once; the folder store twice
        return
    first, second = runs.reports
    assert second.run_id != first.run_id and second.started > first.finished
    assert second.outcome == "completed"
    by_source = {s.source: s for s in second.sources}
    assert (by_source["demo"].new, by_source["demo"].unchanged) == (0, 4)
    assert (by_source["demo-lab"].new, by_source["demo-lab"].unchanged) == (0, 1)
    assert (second.bytes_fetched, second.bytes_released, second.bytes_moved) == (0, 0, 0)
    assert (second.release, second.release_published) == (first.release, False)
    assert (second.items_published, second.release_items) == (0, first.release_items)
    assert (second.tiles_built, second.tiles) == (0, first.tiles)
    view = second.coverage[0].views["global"]
    assert view.exists == first.coverage[0].views["global"].exists and not view.changed
    grid = named_grid(view.grid)
    pixels = picture(runs.store, view.picture)
    x0, y0, _, _ = tile_pixel_box(grid, grid.tile(view.exists[0]))
    assert tuple(pixels[y0 + 2, x0 + 2]) == COLOURS["exists"]


def test_status_shows_the_runs_and_the_release(runs: Runs) -> None:
    pointer, manifest = current(runs.store)
    newest = runs.reports[-1]
    items = newest.release_items
    screen = lunarchive(runs.api, "status", "--store", runs.url).stdout
    assert f"release {pointer.version}: {items} items" in screen
    first = runs.reports[0]
    assert f"demo completed: 5 new, 0 quarantined, {first.tiles_built} tiles built" in screen
    assert f"{first.items_published} items published" in screen
    data = json.loads(lunarchive(runs.api, "status", "--store", runs.url, "--json").stdout)
    assert data["release"]["version"] == pointer.version
    assert data["release"]["items"] == items > 0
    assert data["release"]["objects"] == len(manifest.objects)
    assert [r["run_id"] for r in data["runs"]] == [r.run_id for r in reversed(runs.reports)]
    assert {r["outcome"] for r in data["runs"]} == {"completed"}
    release = next(f for f in data["freshness"]["findings"] if f["kind"] == "release")
    assert (release["name"], release["stale"]) == (pointer.version, False)


def test_a_failed_run_still_writes_its_report(api: str, tmp_path: Path) -> None:
    from tests._processes import free_port

    url = (tmp_path / "store").as_uri()
    dead = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    done = lunarchive(api, "pipeline", dead, "--source", "gone", "--store", url,
                      "--allow-local-sources", check=False)  # fmt: skip
    assert done.returncode == 1
    (report,) = run_reports(open_store(url)).values()
    assert report.outcome == "failed" and report.source == "gone"
    assert report.error and "127.0.0.1" in report.error
    assert [(s.stage, s.outcome) for s in report.stages] == [("harvest", "failed")]
    assert (report.bytes_moved, report.release, report.coverage) == (0, None, ())

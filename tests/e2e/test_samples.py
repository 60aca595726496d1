"""Samples through the CLI, on a folder store and on SeaweedFS S3, after ``lunarchive demo``.

CQL2 searches on composition return exactly the specimens whose demo analyses say so
(computed here from the generator's table, independently of the pipeline), and
``lunarchive samples at-site`` prints the cube's pixels at a site, recomputed here from the
demo's heights with great-circle distances on the lunar sphere.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections import defaultdict
from statistics import fmean
from typing import Any

import numpy as np
import pytest

from lunarchive.catalog.store import S3Options, Store, open_store
from lunarchive.processing.crs import MOON_RADIUS_M
from lunarchive.processing.demo_archive import DEMO_ANALYSES, demo_heights_dn
from tests.e2e.test_pipeline import CLI

SAMPLES_CLI = [CLI, "samples"]  # `lunarchive samples ...`
BULK = ("whole_rock", "bulk_soil")


def run(*args: str) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


@pytest.fixture(
    scope="module", params=["folder", pytest.param("s3", marks=pytest.mark.integration)]
)
def demo(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Store]:
    if request.param == "folder":
        url = (tmp_path_factory.mktemp("e2e-samples") / "store").as_uri()
        store = open_store(url)
    else:
        options: S3Options = request.getfixturevalue("s3_options")
        url = f"s3://{os.environ['LUNARCHIVE_TEST_S3_BUCKET']}/e2e-samples-{os.getpid()}"
        store = open_store(url, s3=options)
    run(CLI, "demo", "--store", url)
    return url, store


def search(url: str, text: str, lang: str | None = None) -> list[str]:
    extra = ["--filter-lang", lang] if lang else []
    out = run(CLI, "search", "--store", url, "--json", "--filter", text, *extra)
    features: list[dict[str, Any]] = json.loads(out)["features"]
    return sorted(f["properties"]["sample_id"] for f in features)


def root_of(sample_id: str) -> str:
    return sample_id.split(",")[0].split("-")[0]


def bulk_means(analyte: str) -> dict[str, float]:
    """The mean bulk (whole-rock, bulk-soil) value of an analyte per root specimen."""
    values: dict[str, list[float]] = defaultdict(list)
    for sample, material, _, _, _, measured, _ in DEMO_ANALYSES:
        if material in BULK and analyte in measured:
            values[root_of(sample)].append(measured[analyte])
    return {sample: fmean(v) for sample, v in values.items()}


def test_cql2_finds_high_titanium_samples(demo: tuple[str, Store]) -> None:
    url, _ = demo
    ti = bulk_means("TiO2")
    high = sorted(s for s, v in ti.items() if v > 6)
    assert high == ["10084", "70017", "74220"]  # the generator's intent, checked once
    assert search(url, "TiO2_wt_pct > 6") == high
    as_json = {"op": ">", "args": [{"property": "TiO2_wt_pct"}, 6]}
    assert search(url, json.dumps(as_json), "cql2-json") == high
    assert search(url, "TiO2_wt_pct > 6 AND material = 'rock'") == ["70017"]
    assert search(url, "TiO2_wt_pct < 1") == sorted(s for s, v in ti.items() if v < 1)
    # a glass or mineral analysis does not stand for the specimen: 70017,12's ilmenite
    # (53 wt% TiO2) and 74220's glass beads leave the bulk means as they are
    found = run(CLI, "search", "--store", url, "--json", "--filter", "TiO2_wt_pct > 6")
    means = {
        f["properties"]["sample_id"]: f["properties"]["TiO2_wt_pct"]
        for f in json.loads(found)["features"]
    }
    assert means == {s: pytest.approx(ti[s]) for s in high}


def test_cql2_finds_epma_analyses_from_a_station(demo: tuple[str, Store]) -> None:
    url, _ = demo
    epma = {root_of(s) for s, _, _, _, technique, _, _ in DEMO_ANALYSES if technique == "EPMA"}
    assert epma == {"70017", "74220", "CE5C0400YJFM00505"}
    assert search(url, "analyses_EPMA > 0") == sorted(epma)
    assert search(url, "analyses_EPMA > 0 AND station = 'Apollo 17 Station 4'") == ["74220"]
    assert search(url, "analyses_INAA > 0 AND mission = 'Apollo 17'") == ["70017"]


def expected_at_site(lon: float, lat: float, radius_m: float) -> dict[str, Any]:
    """The demo grid's pixels at a site: the demo's 512 ppd equirectangular grid whose
    north-west corner is 52.5°W, 43.5°N; heights = DN × 0.5 m, −32768 = no data."""
    heights = np.where(
        (dn := demo_heights_dn()) == -32768, np.nan, dn.astype("float64") * 0.5
    )  # fmt: skip
    west_px, north_px = round(-52.5 * 512), round(43.5 * 512)
    row, col = math.floor(north_px - lat * 512), math.floor(lon * 512 - west_px)
    rows, cols = np.mgrid[0 : heights.shape[0], 0 : heights.shape[1]]
    lons = np.radians((west_px + cols + 0.5) / 512)
    lats = np.radians((north_px - rows - 0.5) / 512)
    phi, lam = math.radians(lat), math.radians(lon)
    hav = np.sin((lats - phi) / 2) ** 2 + np.cos(phi) * np.cos(lats) * np.sin((lons - lam) / 2) ** 2
    inside = 2 * MOON_RADIUS_M * np.arcsin(np.sqrt(hav)) <= radius_m
    inside[row, col] = True
    valid = heights[inside & ~np.isnan(heights)]
    return {
        "row": row, "col": col, "pixel_value": heights[row, col], "mean": valid.mean(),
        "std": valid.std(), "minimum": valid.min(), "maximum": valid.max(),
        "count": valid.size, "pixels_in_disc": int(inside.sum()),
    }  # fmt: skip


def at_site(url: str, sample_id: str) -> dict[str, Any]:
    out = run(*SAMPLES_CLI, "at-site", sample_id, "--store", url, "--json")
    document: dict[str, Any] = json.loads(out)
    return document


@pytest.mark.parametrize("sample_id", ["CE5C0400YJFM00505", "CE5C0400YJFM00505-G1"])
def test_at_site_values_are_the_cube_pixels(demo: tuple[str, Store], sample_id: str) -> None:
    url, store = demo
    (cube_version,) = {
        info.key.split("/")[3].removesuffix(".inventory.json")
        for info in store.list("cubes/demo-dem/r011c032/")  # the tile holding 51.92°W
        if info.key.endswith(".inventory.json")
    }
    document = at_site(url, sample_id)
    assert document["item"] == "specimen-CE5C0400YJFM00505"
    (row,) = document["rows"]
    # the demo's Chang'e-5 records: the landing site, 150 m position uncertainty
    expected = expected_at_site(-51.9161, 43.0576, 150.0)
    assert expected["count"] > 9  # a real disc, not only the containing pixel
    assert row["sample_id"] == sample_id
    assert (row["cube_item"], row["cube_version"], row["variable"], row["units"]) == (
        "demo-dem-r011c032", cube_version, "height", "m",
    )  # fmt: skip
    assert row["pixel_size_x_m"] == pytest.approx(2 * math.pi * MOON_RADIUS_M / 360 / 512)
    assert row["radius_m"] == 150.0
    # rows and columns of the tile, whose corner is 46°N 52°W: 1280 rows, 256 columns off
    assert (row["row"] - 1280, row["col"] + 256) == (expected["row"], expected["col"])
    for key in ("count", "pixels_in_disc"):
        assert row[key] == expected[key], key
    for key in ("pixel_value", "mean", "std", "minimum", "maximum"):
        assert row[key] == pytest.approx(expected[key], rel=1e-12), key


def test_at_site_of_a_sample_no_cube_covers_is_empty(demo: tuple[str, Store]) -> None:
    url, _ = demo
    document = at_site(url, "70017,12")
    assert (document["item"], document["rows"]) == ("specimen-70017", [])
    done = subprocess.run(
        [*SAMPLES_CLI, "at-site", "79999", "--store", url],
        capture_output=True, text=True, env=os.environ.copy(),
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: no specimen 79999 in release {document['release']}"
    ]

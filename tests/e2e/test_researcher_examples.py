"""The README's "For researchers" recipes, run as written, so that they stay true.

The blocks are read from README.md (each follows a ``<!-- researcher-example: NAME -->``
marker) and run in a folder holding the demo store at ``./lunarchive-data``, in the order a
researcher would: serve the catalog, search it with pystac-client, mirror it and search the
mirror, open a tile with xarray, load the tiles as one array with odc-stac. Only two things are
replaced: the database URL and the port of the ``serve`` example (a fresh database, a free
port). Each printed result is checked against the store itself.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import xarray as xr

from lunarchive.catalog.search import SearchQuery, search
from lunarchive.catalog.store import open_store
from tests._processes import free_port
from tests.conftest import new_database

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
BIN = Path(sys.executable).parent
MARKER = re.compile(r"<!-- researcher-example: ([a-z-]+) -->\n```(python|sh)\n(.*?)```", re.S)
SERVE_URL = "http://127.0.0.1:8080"


def examples() -> dict[str, tuple[str, str]]:
    found = {name: (lang, code) for name, lang, code in MARKER.findall(README.read_text())}
    expected = {"serve", "pystac-client", "mirror", "search-python", "xarray", "odc-stac"}
    assert set(found) == expected, f"README researcher examples: {sorted(found)}"
    return found


def environment() -> dict[str, str]:
    env = os.environ.copy()
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    return env


def run_python(code: str, cwd: Path, api: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code.replace(SERVE_URL, api)],
        cwd=cwd, capture_output=True, text=True, env=environment(), timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@dataclass
class Demo:
    folder: Path
    api: str


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with new_database() as database:
        yield from _serve_demo(tmp_path_factory, database)


def _serve_demo(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[Demo]:
    folder = tmp_path_factory.mktemp("researcher")
    subprocess.run(
        [str(BIN / "lunarchive"), "demo", "--store", "./lunarchive-data"],
        cwd=folder, check=True, capture_output=True, env=environment(), timeout=900,
    )  # fmt: skip
    lang, code = examples()["serve"]
    assert lang == "sh" and "postgresql://localhost/lunarchive" in code and "8080" in code
    port = free_port()
    command = code.replace("postgresql://localhost/lunarchive", database)
    command = command.replace("--port 8080", f"--port {port}")
    server = subprocess.Popen(
        ["bash", "-c", f"exec {command}"], cwd=folder, env=environment(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, f"lunarchive serve exited: {server.stderr.read()!r}"  # type: ignore[union-attr]
            try:
                if httpx.get(f"{api}/collections", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "lunarchive serve did not answer in 300 s"
            time.sleep(0.5)
        yield Demo(folder, api)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def test_pystac_client_finds_the_high_titanium_basalts(demo: Demo) -> None:
    printed = run_python(examples()["pystac-client"][1], demo.folder, demo.api)
    rows = [line.split() for line in printed.strip().splitlines()]
    store = open_store(str(demo.folder / "lunarchive-data"))
    expected = search(store, SearchQuery(collections=("apollo-samples",), filter="TiO2_wt_pct > 6"))
    by_id = {item.id: item.properties["TiO2_wt_pct"] for item in expected}
    assert by_id and all(value > 6 for value in by_id.values())
    assert [row[0] for row in rows] == sorted(by_id, key=lambda i: -by_id[i])
    assert [float(row[-1]) for row in rows] == sorted(by_id.values(), reverse=True)


def test_the_mirror_is_searched_with_no_server(demo: Demo) -> None:
    done = subprocess.run(
        ["bash", "-e", "-c", examples()["mirror"][1]], cwd=demo.folder,
        capture_output=True, text=True, env=environment(), timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    mirror = open_store(str(demo.folder / "mirror"))
    apollo_17 = search(mirror, SearchQuery(filter="mission = 'Apollo 17'", sortby="id"))
    assert len(apollo_17) >= 2
    for item in apollo_17:
        assert item.id in done.stdout
    printed = run_python(examples()["search-python"][1], demo.folder, demo.api)
    original = search(
        open_store(str(demo.folder / "lunarchive-data")),
        SearchQuery(bbox=(-60, 40, -45, 50), sortby="id"),
    )
    assert [line.split()[0] for line in printed.strip().splitlines()] == [
        item.id for item in original
    ]
    assert {item.collection_id for item in original} >= {"demo-dem", "change-5-samples"}


def test_one_tile_opens_with_xarray_on_the_moon(demo: Demo) -> None:
    test_the_mirror_is_searched_with_no_server(demo)  # the example reads ./mirror
    printed = run_python(examples()["xarray"][1], demo.folder, demo.api)
    tile_id, *rest = printed.split()
    mean = float(rest[-1])
    assert "Moon" in printed and "WGS" not in printed
    tiles = search(
        open_store(str(demo.folder / "mirror")),
        SearchQuery(collections=("demo-dem",), sortby="id"),
    )
    assert tile_id == tiles.items[0].id
    href = tiles.items[0].assets["zarr"].href
    assert href.startswith("file://") and "/mirror/" in href
    with xr.open_zarr(href, consolidated=False) as cube:
        assert mean == pytest.approx(float(cube["height"].mean()), rel=1e-6)


def test_odc_stac_loads_the_tiles_as_one_array(demo: Demo) -> None:
    printed = run_python(examples()["odc-stac"][1], demo.folder, demo.api).strip()
    parsed = re.fullmatch(r"(\d+) \((\d+), (\d+)\) (\S+)", printed)
    assert parsed, printed
    count, rows, columns, mean = parsed.groups()
    store = open_store(str(demo.folder / "lunarchive-data"))
    tiles = search(store, SearchQuery(collections=("demo-dem",)))
    assert int(count) == len(tiles) >= 2
    total, pixels = 0.0, 0
    for tile in tiles:
        with xr.open_zarr(tile.assets["zarr"].href, consolidated=False) as cube:
            values = cube["height"].values
            total += float(np.nansum(values))
            pixels += int(np.count_nonzero(~np.isnan(values)))
    assert int(rows) * int(columns) >= pixels
    assert float(mean) == pytest.approx(total / pixels, rel=1e-5)

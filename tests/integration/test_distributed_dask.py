"""The process stage on a Dask cluster of separate processes (a scheduler and two workers,
as on several machines), reporting to a Prefect server: the same cube as a LocalCluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import rioxarray  # noqa: F401 - registers the .rio accessor
import xarray as xr
from distributed import Client

from lunarchive.catalog.store import open_store
from lunarchive.processing.crs import iau_code
from lunarchive.processing.demo_archive import demo_heights_dn
from tests._processes import dask_cluster, prefect_server

CLI = str(Path(sys.executable).with_name("lunarchive"))


def cube_objects(store_root: Path) -> dict[str, bytes]:
    cubes = store_root / "cubes"
    return {
        p.relative_to(cubes).as_posix(): p.read_bytes() for p in cubes.rglob("*") if p.is_file()
    }


def run_demo(store: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [CLI, "demo", "--store", str(store)], capture_output=True, text=True,
        env={**os.environ, **env},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_process_on_a_cluster_of_processes_builds_the_local_cube(tmp_path: Path) -> None:
    with prefect_server(tmp_path / "prefect") as api:
        env = {"PREFECT_API_URL": api}
        with dask_cluster(tmp_path / "dask", workers=2, env=env) as address:
            out = run_demo(tmp_path / "remote", env | {"LUNARCHIVE_DASK_ADDRESS": address})
            with Client(address) as client:
                executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert "2 cube(s)" in out  # the demo's two tiles of moon-eqc-512
    assert len(executed) == 2
    assert sum(executed.values()) > 0  # the cluster's workers did the work
    local = run_demo(tmp_path / "local", {})  # the LocalCluster default
    assert "2 cube(s)" in local
    remote_cube, local_cube = cube_objects(tmp_path / "remote"), cube_objects(tmp_path / "local")
    assert remote_cube.keys() == local_cube.keys()
    assert remote_cube == local_cube  # byte for byte
    store = open_store((tmp_path / "remote").as_uri())
    west_key, east_key = sorted(
        {k.split(".zarr/")[0] + ".zarr" for k in remote_cube if ".zarr/" in k}
    )  # tiles r011c031 and r011c032; the demo is rows 1280..1792 of each
    west, east = (
        xr.open_zarr(store.zarr_store(f"cubes/{k}"), decode_coords="all", consolidated=False)
        for k in (west_key, east_key)
    )
    assert iau_code(west.rio.crs) == "IAU_2015:30110"
    dn = demo_heights_dn()
    expected = np.where(dn == -32768, np.nan, dn * 0.5)
    got = np.hstack(
        [west["height"].values[1280:1792, 1792:], east["height"].values[1280:1792, :256]]
    )
    np.testing.assert_allclose(got, expected, equal_nan=True)

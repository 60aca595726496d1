"""R7: a Dask worker killed while it writes a tile does not corrupt or lose the tile.

``lunarchive process`` runs on its LocalCluster of one worker process under a nanny (the
default runner, ``LUNARCHIVE_DASK_WORKERS=1``); once a tile store has objects but no
inventory (a write in flight), the worker process is killed with SIGKILL, as the kernel's
OOM killer would. The nanny starts a new worker, the scheduler runs the lost work again, and
the run ends with every tile complete: each store holds exactly the objects its inventory
lists, with those checksums, and the heights of the source. No half-written object is left
behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import xarray as xr

from lunarchive.catalog.store import FolderStore, Store, open_store
from lunarchive.processing.demo_archive import demo_heights_dn, write_demo_archive

COMMAND = (
    "import typer; from lunarchive.flows.cli_process import process_command; "
    "typer.run(process_command)"
)
WAIT_S = 600.0


def in_flight(store: Store) -> str | None:
    """A tile store that has objects but no inventory yet, if there is one."""
    keys = [info.key for info in store.list("cubes/")]
    for key in keys:
        if ".zarr/" in key:
            tile = key.split(".zarr/")[0]
            if tile + ".inventory.json" not in keys:
                return tile
    return None


def worker_pids(run: subprocess.Popen[str]) -> set[int]:
    """The Dask worker processes of the run (its multiprocessing children, not the
    resource tracker or the Prefect server)."""
    found = set()
    for child in psutil.Process(run.pid).children():
        try:
            command = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "spawn_main" in command and "resource_tracker" not in command:
            found.add(child.pid)
    return found


def test_a_worker_killed_mid_write_leaves_only_complete_tiles(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    write_demo_archive(archive)
    url = (tmp_path / "store").as_uri()
    store = open_store(url)
    assert isinstance(store, FolderStore)
    for path in sorted((archive / "dem").iterdir()):
        store.write(f"raw/demo/{path.stem}/{path.name}", path.read_bytes())

    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as stdout_file, err.open("w") as stderr_file:
        run = subprocess.Popen(
            [sys.executable, "-c", COMMAND, "demo", "--store", url],
            stdout=stdout_file, stderr=stderr_file, text=True,
            env={**os.environ, "LUNARCHIVE_DASK_WORKERS": "1",
                 "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + WAIT_S
        caught = None
        while caught is None and run.poll() is None and time.monotonic() < deadline:
            caught = in_flight(store)
            time.sleep(0.02)
        assert caught is not None, "no tile write was seen in flight"
        (victim,) = worker_pids(run)
        os.kill(victim, signal.SIGKILL)
        while run.poll() is None and not worker_pids(run) - {victim}:
            time.sleep(0.1)  # the nanny starts a new worker
        survivors = worker_pids(run)
        run.wait(timeout=WAIT_S)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    stdout = out.read_text()
    assert run.returncode == 0, err.read_text()[-3000:]
    assert survivors and victim not in survivors  # it really died; its nanny started another
    assert "2 tile(s), 2 built" in stdout

    markers = sorted(i.key for i in store.list("cubes/") if i.key.endswith(".inventory.json"))
    assert len(markers) == 2
    assert caught + ".inventory.json" in markers  # the tile being written when killed
    stored = {i.key: i.size for i in store.list("cubes/") if ".zarr/" in i.key}
    listed = {}
    for marker in markers:
        record = json.loads(store.read(marker))
        for entry in record["objects"]:
            listed[entry["key"]] = entry
            assert store.sha256(entry["key"]) == entry["sha256"], entry["key"]
    # every object of every tile store is one its inventory vouches for, and vice versa
    assert set(stored) == {k for k in listed if ".zarr/" in k}
    dn = demo_heights_dn()
    expected = np.where(dn == -32768, np.nan, dn.astype("float64") * 0.5)
    tiles = [
        xr.open_zarr(store.zarr_store(m.removesuffix(".inventory.json") + ".zarr"),
                     decode_coords="all", consolidated=False)["height"]
        for m in markers
    ]  # fmt: skip
    west, east = sorted(tiles, key=lambda t: float(t["x"][0]))
    np.testing.assert_array_equal(west.values[1280:1792, 1792:2048], expected[:, :256])
    np.testing.assert_array_equal(east.values[1280:1792, 0:256], expected[:, 256:])
    assert int(np.isfinite(west.values).sum() + np.isfinite(east.values).sum()) == int(
        np.isfinite(expected).sum()
    )

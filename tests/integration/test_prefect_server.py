"""The pipeline deployed to a real Prefect server on PostgreSQL, run by a process worker.

`infra/prefect_server.py` starts the server (its database on the PostgreSQL that `make test`
makes sure of) and a worker of the `lunarchive` process pool; `infra/prefect.yaml` is deployed
with `prefect deploy`; a run is triggered and watched; its state and task runs are read back
through the Prefect API, and its release from the store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lunarchive.catalog.layout import LATEST_KEY
from lunarchive.catalog.store import open_store
from lunarchive.flows.demo import serve_folder
from lunarchive.processing.demo_archive import write_demo_archive
from lunarchive.schemas.release import ReleaseManifest, ReleasePointer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def prefect_api(fresh_database: str, tmp_path: Path) -> Iterator[str]:
    state = tmp_path / "prefect-server"
    script = str(ROOT / "infra" / "prefect_server.py")
    env = {**os.environ, "LUNARCHIVE_PROJECT_DIR": str(ROOT)}
    env.pop("PREFECT_API_URL", None)
    started = subprocess.run(
        [sys.executable, script, "start", "--state", str(state), "--database-url", fresh_database],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        line = (state / "env").read_text().strip()
        yield line.removeprefix("PREFECT_API_URL=")
    finally:
        subprocess.run([sys.executable, script, "stop", "--state", str(state)], check=False)


def prefect(api: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_API_URL": api, "LUNARCHIVE_PROJECT_DIR": str(ROOT)}
    return subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", *args],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )  # fmt: skip


def api_post(api: str, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{api}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def test_the_pipeline_runs_as_a_deployment_on_a_prefect_server(
    prefect_api: str, tmp_path: Path
) -> None:
    deployed = prefect(
        prefect_api, "deploy", "--prefect-file", "infra/prefect.yaml", "--name", "on-demand"
    )  # the scheduled ones would start runs of their own on this server
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    store_url = (tmp_path / "store").as_uri()
    with tempfile.TemporaryDirectory() as archive:
        write_demo_archive(Path(archive))
        with serve_folder(Path(archive)) as source_url:
            params = {
                "source_url": source_url,
                "source": "demo",
                "store_url": store_url,
                "allow_local_sources": True,
            }
            run = prefect(
                prefect_api, "deployment", "run", "pipeline/on-demand",
                "--params", json.dumps(params), "--watch", "--watch-timeout", "600",
            )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    runs = api_post(prefect_api, "/flow_runs/filter", {"sort": "EXPECTED_START_TIME_ASC"})
    by_name: dict[str, list[dict[str, Any]]] = {}
    for flow_run in runs:
        flow = httpx.get(f"{prefect_api}/flows/{flow_run['flow_id']}", timeout=30).json()
        by_name.setdefault(flow["name"], []).append(flow_run)
    assert {"harvest", "pipeline", "process", "publish"} <= set(by_name)  # and its subflows
    (pipeline_run,) = by_name["pipeline"]
    assert pipeline_run["state"]["type"] == "COMPLETED"
    assert pipeline_run["deployment_id"] is not None
    assert all(r["state"]["type"] == "COMPLETED" for runs_ in by_name.values() for r in runs_)
    task_runs = api_post(prefect_api, "/task_runs/filter", {})
    names = {t["name"].rsplit("-", 1)[0] for t in task_runs}
    assert {"list_source", "harvest_product", "describe_product", "build_tile_cube"} <= names
    assert "publish_catalog" in names
    assert all(t["state"]["type"] == "COMPLETED" for t in task_runs)

    store = open_store(store_url)
    pointer = ReleasePointer.model_validate_json(store.read(LATEST_KEY))
    manifest = ReleaseManifest.model_validate_json(store.read(pointer.manifest))
    for entry in manifest.objects:
        assert store.sha256(entry.key) == entry.sha256

"""``lunarchive serve``: the store's current release, loaded into pgstac, served over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from lunarchive.catalog.publish import publish_release
from lunarchive.catalog.store import open_store
from tests._processes import free_port
from tests.integration.test_publish_protocol import draft

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("lunarchive"))


def lunarchive(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=os.environ.copy())


def test_serve_loads_the_current_release_and_answers_searches(
    fresh_database: str, tmp_path: Path
) -> None:
    store_url = (tmp_path / "store").as_uri()
    store = open_store(store_url)
    first = publish_release(store, draft("crater rim", "mare plain", "ejecta"))
    loaded = lunarchive("serve", "--store", store_url, "--database-url", fresh_database,
                        "--load-only")  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    assert f"release {first.version} loaded: 3 item(s)" in loaded.stderr
    again = lunarchive("serve", "--store", store_url, "--database-url", fresh_database,
                       "--load-only")  # fmt: skip
    assert f"release {first.version} already loaded" in again.stderr

    second = publish_release(store, draft("crater rim", "mare plain"))
    port = free_port()
    server = subprocess.Popen(
        [CLI, "serve", "--store", store_url, "--database-url", fresh_database,
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy(),
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline, "lunarchive serve did not answer"
            time.sleep(0.5)
        found = httpx.get(f"{base}/search", params={"collections": "c"}, timeout=30).json()
        titles = sorted(f["properties"]["title"] for f in found["features"])
        assert titles == ["crater rim", "mare plain"]  # the second release, not the first
        bad = httpx.get(f"{base}/search", params={"filter": "title = = 'x'"}, timeout=30)
        assert bad.status_code == 400
        (asset_free_item,) = [f for f in found["features"] if f["id"] == "i0"]
        assert asset_free_item["collection"] == "c"
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert second.version is not None

"""``lunarchive sync`` through the CLI: a mirror that is complete, searchable and repairable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lunarchive.catalog.layout import LATEST_KEY
from lunarchive.catalog.publish import publish_release, read_current
from lunarchive.catalog.store import open_store
from tests.integration.test_publish_protocol import draft

CLI = str(Path(sys.executable).with_name("lunarchive"))


def lunarchive(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=os.environ.copy())


def test_sync_mirrors_verifies_and_repairs(tmp_path: Path) -> None:
    source = open_store((tmp_path / "source").as_uri())
    published = publish_release(source, draft("crater rim", "mare plain"))
    dest_url = (tmp_path / "mirror").as_uri()

    first = lunarchive("sync", source.url, dest_url)
    assert first.returncode == 0, first.stderr
    mirror = open_store(dest_url)
    assert mirror.read(LATEST_KEY) == source.read(LATEST_KEY)
    current = read_current(mirror)
    assert current is not None
    for entry in current[1].objects:
        assert mirror.sha256(entry.key) == entry.sha256
    assert f"release {published.version}: transferred {len(current[1].objects)} objects" in (
        first.stdout
    )

    again = lunarchive("sync", source.url, dest_url)
    assert again.returncode == 0
    assert "transferred 0 objects (0 bytes)" in again.stdout

    found = lunarchive("search", "--store", dest_url, "--json", "--filter", "title = 'mare plain'")
    assert [f["id"] for f in json.loads(found.stdout)["features"]] == ["i1"]

    damaged = next(e.key for e in current[1].objects if e.key.endswith("catalog.json"))
    (tmp_path / "mirror" / damaged).write_bytes(b"{}")
    audit = lunarchive("sync", source.url, dest_url, "--verify")
    assert audit.returncode == 0, audit.stderr
    assert "1 damaged, 1 repaired, 0 failed" in audit.stdout
    assert mirror.read(damaged) == source.read(damaged)


def test_sync_from_a_missing_release_fails_in_one_line(tmp_path: Path) -> None:
    empty = (tmp_path / "empty").as_uri()
    (tmp_path / "empty").mkdir()
    done = lunarchive("sync", empty, (tmp_path / "mirror").as_uri())
    assert done.returncode != 0
    assert done.stderr.startswith("error: ")
    assert done.stderr.count("\n") == 1

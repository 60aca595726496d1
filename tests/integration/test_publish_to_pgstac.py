"""The publish flow keeps the STAC API on the current release (issue 7, "STAC API").

With ``LUNARCHIVE_DATABASE_URL`` set, each publish loads its release into pgstac right after
the pointer flips, in one transaction: the API served by ``create_app`` over that database
answers with the new release's items and none of the old one's, and a reader searching while
a release loads sees one release or the other, whole. When the load fails (here: the database
named does not exist) the release stays published, the flow says the API is behind, and the
next publish or ``lunarchive serve`` catches up.

The releases are partner sample tables taken in by ``harvest-samples`` (no cube needed): the
first holds split ``70017,1`` (its parent is not in the table, so it is an item of its own) and
``70215``; the second adds ``70017``, which makes ``70017,1`` part of its family: that item is
gone from the second release.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from lunarchive.catalog.api import create_app
from lunarchive.catalog.layout import LATEST_KEY
from lunarchive.catalog.store import Store, open_store
from lunarchive.flows.publish import publish
from lunarchive.schemas.release import ReleasePointer
from tests.integration.test_harvest_samples import GOOD_SPECIMEN, csv_bytes, put_drop, run
from tests.integration.test_search_contract import serve
from tests.integration.test_serve import lunarchive

pytestmark = pytest.mark.integration

PARTNER = "lab-a"
COLLECTION = "apollo-samples"
FIRST = {"specimen-70017-1", "specimen-70215"}
SECOND = {"specimen-70017", "specimen-70215"}


def drop(store: Store, name: str, *sample_ids: str) -> None:
    """A partner drop of Apollo 17 specimens, taken in by the harvest-samples flow."""
    rows = [
        GOOD_SPECIMEN | {"sample_id": sid, "parent_id": "70017", "level": "split"}
        if "," in sid
        else GOOD_SPECIMEN | {"sample_id": sid}
        for sid in sample_ids
    ]
    put_drop(store, PARTNER, name, {"specimens.csv": ("specimens", csv_bytes(rows))})
    (taken,) = run(store)["drops"]
    assert taken["status"] == "accepted", taken


def publish_flow(store: Store) -> dict[str, Any]:
    result: dict[str, Any] = publish({"cubes": [], "unrecognised": []}, PARTNER, store.url)
    return result


def served_ids(client: httpx.Client) -> set[str]:
    found = client.get("/search", params={"collections": COLLECTION, "limit": 100})
    assert found.status_code == 200, found.text
    return {feature["id"] for feature in found.json()["features"]}


@pytest.fixture
def folder_store(tmp_path: Path) -> Store:
    return open_store((tmp_path / "store").as_uri())


@pytest.fixture
def api_database(fresh_database: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The publish flow's database: the one the API serves."""
    monkeypatch.setenv("LUNARCHIVE_DATABASE_URL", fresh_database)
    return fresh_database


def test_each_publish_makes_the_api_serve_its_release(
    folder_store: Store, api_database: str
) -> None:
    store = folder_store
    drop(store, "d1", "70017,1", "70215")
    first = publish_flow(store)
    assert first["published"] and first["item_count"] == 2
    assert first["api"] == {
        "current": first["version"], "served": first["version"], "loaded": True, "error": None,
        "behind": False,
    }  # fmt: skip
    with serve(create_app(api_database)) as client:
        assert served_ids(client) == FIRST
        seen: list[set[str]] = []
        stop = threading.Event()

        def keep_searching() -> None:  # a reader of the API while the second release loads
            while not stop.is_set():
                seen.append(served_ids(client))

        reader = threading.Thread(target=keep_searching)
        reader.start()
        try:
            drop(store, "d2", "70017")
            second = publish_flow(store)
        finally:
            stop.set()
            reader.join(timeout=60)
        assert second["published"] and second["previous"] == first["version"]
        assert second["api"]["served"] == second["version"] and second["api"]["loaded"]
        assert served_ids(client) == SECOND  # the new release; specimen-70017-1 is gone
        gone = client.get(f"/collections/{COLLECTION}/items/specimen-70017-1")
        assert gone.status_code == 404
        item = client.get(f"/collections/{COLLECTION}/items/specimen-70017").json()
        assert item["properties"]["sample_id"] == "70017"
        assert seen and all(ids in (FIRST, SECOND) for ids in seen), seen  # never a mix
    # asset hrefs are absolute, in the store: an API client can fetch them
    hrefs = [asset["href"] for asset in item["assets"].values()]
    assert hrefs and all(href.startswith(store.url.rstrip("/") + "/tables/") for href in hrefs)
    assert all(store.exists(href.removeprefix(store.url.rstrip("/") + "/")) for href in hrefs)


@pytest.mark.parametrize("catch_up", ["next publish", "lunarchive serve"])
def test_a_failed_load_leaves_the_release_published_and_is_caught_up(
    folder_store: Store, api_database: str, monkeypatch: pytest.MonkeyPatch, catch_up: str
) -> None:
    store = folder_store
    drop(store, "d1", "70017,1", "70215")
    first = publish_flow(store)
    assert first["api"]["served"] == first["version"]
    missing = api_database.rsplit("/", 1)[0] + "/lunarchive_no_such_database"
    monkeypatch.setenv("LUNARCHIVE_DATABASE_URL", missing)  # the database is out of reach
    drop(store, "d2", "70017")
    second = publish_flow(store)
    assert second["published"]
    assert ReleasePointer.model_validate_json(store.read(LATEST_KEY)).version == second["version"]
    api = second["api"]
    assert api["behind"] and not api["loaded"] and api["current"] == second["version"]
    assert "lunarchive_no_such_database" in api["error"]
    with serve(create_app(api_database)) as client:
        assert served_ids(client) == FIRST  # the API still serves the first release, whole
        monkeypatch.setenv("LUNARCHIVE_DATABASE_URL", api_database)
        if catch_up == "next publish":
            again = publish_flow(store)  # nothing changed: nothing written, the API loaded
            assert not again["published"] and again["objects_written"] == 0
            assert again["api"] == {
                "current": second["version"], "served": second["version"], "loaded": True,
                "error": None, "behind": False,
            }  # fmt: skip
        else:
            loaded = lunarchive("serve", "--store", store.url, "--database-url", api_database,
                                "--load-only")  # fmt: skip
            assert loaded.returncode == 0, loaded.stderr
            assert f"release {second['version']} loaded: 2 item(s)" in loaded.stderr
        assert served_ids(client) == SECOND

"""The ``pds4-search-api`` kind against a loopback PDS Registry Search API (SOURCES.md §9.5).

The API pages a collection's members by ``harvest_date_time`` from a checkpoint; its file
URLs point at the LOLA mirror on the same server. Runs on a folder store and on SeaweedFS;
every test asserts end states.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from lunarchive.catalog.store import Store
from lunarchive.flows.harvest_engine import load_source, state_key
from lunarchive.schemas.sources import HarvestState, RunCounts
from tests.mirrors import lola, search_api
from tests.mirrors.harness import Harvested, raw_listing, run_harvest, sha
from tests.mirrors.server import MirrorServer, serve

SOURCE = "lola-gdr-api"
LDEM4 = "lro_lola_rdr-data_gridded-ldem_4"
LDEM16 = "urn:nasa:pds:lro_lola_rdr:data_gridded:ldem_16"


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    return tmp_path / "staging"


@pytest.fixture
def api(shared: Path) -> Iterator[MirrorServer]:
    with serve(MirrorServer()) as mirror:
        publish(mirror, shared, 1)
        yield mirror


def publish(mirror: MirrorServer, shared: Path, release: int) -> search_api.SearchApi:
    app = search_api.build_search_api(shared, mirror.url, release)
    mirror.replace(app.files)
    mirror.apps = {search_api.API: app}
    return app


def harvest(store: Store, mirror: MirrorServer, staging: Path) -> Harvested:
    return run_harvest(store, load_source(SOURCE), staging, base_url=mirror.url + search_api.API)


def members_asked(mirror: MirrorServer) -> list[dict[str, list[str]]]:
    return [parse_qs(r.query) for r in mirror.log if r.path.endswith("/members")]


def test_members_are_paged_harvested_verified_and_a_rerun_resumes_from_the_checkpoint(
    store: Store, api: MirrorServer, staging: Path, shared: Path
) -> None:
    first = harvest(store, api, staging)
    assert first.counts == RunCounts(upstream=2, new=2, fetched=1, quarantined=1, missing=1)
    files = search_api.build_search_api(shared, api.url).files
    assert raw_listing(store, SOURCE) == {
        f"raw/{SOURCE}/{LDEM4}/1.0/ldem_4.img": sha(files[lola.ROOT + lola.GDR + "ldem_4.img"]),
        f"raw/{SOURCE}/{LDEM4}/1.0/ldem_4.xml": sha(files[search_api.LABEL_PATH]),
    }
    why: dict[str, Any] = json.loads(
        store.read(f"quarantine/{SOURCE}/lro_lola_rdr-data_gridded-ldem_16-1.0/reason.json")
    )
    assert "ldem_16.img: HTTP 404" in why["reason"]
    (asked,) = members_asked(api)
    assert asked["sort"] == [search_api.TIME] and "search-after" not in asked
    assert "ops:Data_File_Info.ops:md5_checksum" in asked["fields"][0].split(",")
    assert all(r.headers.get("accept") == "application/json" for r in api.log if "/api/" in r.path)
    state = HarvestState.model_validate_json(store.read(state_key(SOURCE)))
    assert state.inventory is not None
    assert (
        state.inventory.checkpoint == f"{search_api.COLLECTION}::1.0\t2024-01-04T10:00:01.000000Z"
    )

    api.log.clear()
    second = harvest(store, api, staging)
    assert second.counts == RunCounts(upstream=2, unchanged=1, quarantined=1, missing=1)
    assert second.writes == []
    (resumed,) = members_asked(api)
    assert resumed["search-after"] == ["2024-01-04T10:00:01.000000Z"]
    assert not [r for r in api.log if r.path.endswith((".img", ".xml"))]


def test_a_reharvested_product_is_not_fetched_again_and_a_new_vid_is(
    store: Store, api: MirrorServer, staging: Path, shared: Path
) -> None:
    harvest(store, api, staging)
    before = raw_listing(store, SOURCE)
    publish(api, shared, 2)  # same LIDVID, later harvest_date_time
    api.log.clear()
    run = harvest(store, api, staging)
    assert run.counts == RunCounts(upstream=2, unchanged=1, quarantined=1, missing=1)
    assert not [r for r in api.log if r.path.endswith(".img")]
    assert raw_listing(store, SOURCE) == before

    publish(api, shared, 3)  # collection 1.1 lists ldem_4::1.1
    run = harvest(store, api, staging)
    assert run.counts == RunCounts(upstream=2, new=1, fetched=1, quarantined=1, missing=1)
    after = raw_listing(store, SOURCE)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(set(after) - set(before)) == [
        f"raw/{SOURCE}/{LDEM4}/1.1/ldem_4.img",
        f"raw/{SOURCE}/{LDEM4}/1.1/ldem_4_v1_1.xml",
    ]
    state = HarvestState.model_validate_json(store.read(state_key(SOURCE)))
    assert [
        v.version for v in state.products[f"urn:nasa:pds:{LDEM4.replace('-', ':')}"].versions
    ] == ["1.0", "1.1"]


def test_the_mirror_answers_kvp_and_404_like_the_api(api: MirrorServer) -> None:
    base = api.url + search_api.API
    kvp = httpx.get(
        base + f"products/{search_api.COLLECTION}::1.0/members",
        headers={"Accept": "application/kvp+json"},
    ).json()
    assert kvp["summary"]["hits"] == 2
    assert [row["lidvid"] for row in kvp["data"]] == [
        f"{search_api.COLLECTION}:ldem_4::1.0",
        f"{LDEM16}::1.0",
    ]
    assert httpx.get(base + "products/urn:nasa:pds:nothing::1.0").status_code == 404

"""The watchdog flow on a real temporary Prefect server: fresh → Completed; a source made
stale, a watched source never harvested, or harvests failing N times in a row → Failed, with
one message naming what is stale (the state the server records, so notifications can fire).

The LOLA source is harvested for real from its loopback mirror; a partner drop sits in the
inbox; a release is published with the publish protocol. "Stale" is reached by asking the
watchdog about a later ``now``, never by waiting.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pystac
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from lunarchive.catalog.publish import draft_release, publish_release
from lunarchive.catalog.store import Store
from lunarchive.flows.demo import DEMO_DROP, DEMO_PARTNER, put_drop
from lunarchive.flows.harvest import harvest_source
from lunarchive.flows.watchdog import INBOX_STATE_KEY, watchdog
from lunarchive.processing.demo_archive import write_demo_drop
from tests._processes import free_port, prefect_server
from tests.mirrors import lola
from tests.mirrors.server import MirrorServer, serve


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with (
        prefect_server(tmp_path_factory.mktemp("prefect")) as url,
        temporary_settings({PREFECT_API_URL: url}),
    ):
        yield url
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)  # while the server still answers
        EventsWorker.drain_all(timeout=10)


@pytest.fixture
def lola_mirror(shared: Path) -> Iterator[MirrorServer]:
    with serve(MirrorServer(files=lola.build_lola(shared).files)) as mirror:
        yield mirror


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.setenv("LUNARCHIVE_HARVEST_STAGING_DIR", str(tmp_path / "staging"))
    monkeypatch.setenv("LUNARCHIVE_HARVEST_BACKOFF_S", "0")
    monkeypatch.setenv("LUNARCHIVE_HARVEST_ATTEMPTS", "1")
    return monkeypatch


def harvest_lola(store: Store, base_url: str) -> Any:
    return harvest_source(
        "lola-gdr",
        store_url=store.url,
        base_url=base_url,
        allow_local_sources=True,
        return_state=True,
    )


def holdings(store: Store, tmp_path: Path, mirror: MirrorServer) -> None:
    """LOLA harvested, one partner drop in the inbox, a release published."""
    assert harvest_lola(store, mirror.url + lola.ROOT).is_completed()
    write_demo_drop(tmp_path / "drop", partner=DEMO_PARTNER)
    put_drop(store, tmp_path / "drop", partner=DEMO_PARTNER, drop=DEMO_DROP)
    assert publish_release(store, draft_release(one_item_catalog(), [])).published


def one_item_catalog() -> pystac.Catalog:
    when = datetime(2021, 1, 15, tzinfo=UTC)
    extent = pystac.Extent(
        pystac.SpatialExtent([[0.0, 0.0, 1.0, 1.0]]), pystac.TemporalExtent([[when, when]])
    )
    collection = pystac.Collection("watched", "A collection to publish.", extent)
    square = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}
    collection.add_item(pystac.Item("tile", square, [0.0, 0.0, 1.0, 1.0], when, {}))
    catalog = pystac.Catalog("watchdog-test", "A release for the watchdog to judge.")
    catalog.add_child(collection)
    return catalog


def run_watchdog(store: Store, now: datetime | None = None) -> Any:
    state = watchdog(store_url=store.url, now=now, return_state=True)
    run_id = state.state_details.flow_run_id
    assert run_id is not None
    with get_client(sync_client=True) as client:  # what the server recorded
        recorded = client.read_flow_run(run_id).state
    assert recorded is not None
    assert (recorded.type, recorded.message) == (state.type, state.message)
    return state


def test_a_source_made_stale_fails_the_watchdog_naming_it(
    api: str, store: Store, lola_mirror: MirrorServer, quick: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    holdings(store, tmp_path, lola_mirror)
    fresh = run_watchdog(store)
    assert fresh.is_completed(), fresh.message
    assert fresh.message == "all fresh: 3 thing(s) watched, none stale"  # lola, inbox, release
    seen = json.loads(store.read(INBOX_STATE_KEY))
    assert set(seen) == {DEMO_PARTNER} and set(seen[DEMO_PARTNER]) == {DEMO_DROP}
    # a year and a day later, with the inbox and release limits out of the way
    quick.setenv("LUNARCHIVE_WATCHDOG_INBOX_CADENCE_DAYS", "1000")
    quick.setenv("LUNARCHIVE_WATCHDOG_RELEASE_MAX_AGE_DAYS", "1000")
    later = datetime.now(UTC) + timedelta(days=366)
    stale = run_watchdog(store, later)
    assert stale.is_failed()
    assert stale.message.startswith("1 stale: source lola-gdr: no new data for 366.0 days")
    assert stale.message.endswith("(expected every 365 days)")
    # a source the operator expects, never harvested, is flagged too
    quick.setenv("LUNARCHIVE_WATCHDOG_SOURCES", '["m3"]')
    expected = run_watchdog(store)
    assert expected.is_failed()
    assert expected.message == "1 stale: source m3: never harvested (expected every 730 days)"


def test_quiet_inbox_and_old_release_are_flagged(
    api: str, store: Store, lola_mirror: MirrorServer, quick: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    holdings(store, tmp_path, lola_mirror)
    assert run_watchdog(store).is_completed()  # notes when the drop was first seen
    quick.setenv("LUNARCHIVE_WATCHDOG_INBOX_CADENCE_DAYS", "30")
    quick.setenv("LUNARCHIVE_WATCHDOG_RELEASE_MAX_AGE_DAYS", "7")
    state = run_watchdog(store, datetime.now(UTC) + timedelta(days=31))
    assert state.is_failed()
    assert state.message.startswith("2 stale: inbox demo-lab: no new drop for 31.0 days")
    assert "; release " in state.message and "(expected within 7 days)" in state.message
    assert "lola-gdr" not in state.message


def test_harvests_failing_n_times_in_a_row_are_flagged(
    api: str, tmp_path: Path, lola_mirror: MirrorServer, quick: pytest.MonkeyPatch
) -> None:
    from lunarchive.catalog.store import open_store

    store = open_store((tmp_path / "store").as_uri())
    quick.setenv("LUNARCHIVE_WATCHDOG_FAILED_RUNS", "2")
    holdings(store, tmp_path, lola_mirror)
    dead = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    assert harvest_lola(store, dead).is_failed()
    assert run_watchdog(store).is_completed()  # one failure: below the limit
    assert harvest_lola(store, dead).is_failed()
    flagged = run_watchdog(store)
    assert flagged.is_failed()
    assert flagged.message == (
        "1 stale: harvests lola-gdr: last 2 harvest-source run(s) failed in a row (flagged at 2)"
    )
    assert harvest_lola(store, lola_mirror.url + lola.ROOT).is_completed()
    assert run_watchdog(store).is_completed()  # a success ends the streak

"""The ``http-listing`` kind against loopback mirrors of JAXA DARTS (Kaguya) and CLPDS (CE-2).

DARTS publishes its SELENE map products as Apache-style directory listings without an index
table and without Range support (SOURCES.md §4, §9.3); CLPDS needs registration (§7, §9.6).
Every test runs on a folder store and on SeaweedFS and asserts end states: objects under
``raw/`` and their checksums, the report's exact counts, what the mirror was asked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lunarchive.catalog.store import Store
from lunarchive.flows.harvest_engine import load_source, state_key
from lunarchive.flows.sources import CredentialsRequired
from lunarchive.schemas.sources import HarvestState, RunCounts
from tests.mirrors import clpds, darts
from tests.mirrors.harness import raw_listing, run_harvest, sha
from tests.mirrors.server import MirrorServer, serve

DTM = "DTM_MAP_02_S69E030S72E033SC"
MI = "MI_MAP_03_N51E124N50E125SC_cropped"


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    return tmp_path / "staging"


@pytest.fixture
def darts_mirror(shared: Path) -> Iterator[MirrorServer]:
    built = darts.build_darts(shared)
    with serve(MirrorServer(files=built.files, modified=built.modified, ranges=False)) as mirror:
        yield mirror


def harvest(store: Store, source: str, mirror: MirrorServer, staging: Path, root: str) -> Any:
    return run_harvest(store, load_source(source), staging, base_url=mirror.url + root)


def dtm(store: Store, mirror: MirrorServer, staging: Path) -> Any:
    return harvest(store, "kaguya-tc-dtm", mirror, staging, darts.ROOT)


def reason(store: Store, source: str, qid: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(store.read(f"quarantine/{source}/{qid}/reason.json"))
    return loaded


def test_kaguya_tiles_are_harvested_and_a_rerun_fetches_and_writes_nothing(
    store: Store, darts_mirror: MirrorServer, staging: Path, shared: Path
) -> None:
    files = darts.build_darts(shared).files
    first = dtm(store, darts_mirror, staging)
    assert first.counts == RunCounts(upstream=1, new=1, fetched=1)
    mi = harvest(store, "kaguya-mi-map", darts_mirror, staging, darts.ROOT)
    assert mi.counts == RunCounts(upstream=1, new=1, fetched=1)
    assert raw_listing(store, "kaguya-tc-dtm") == {
        f"raw/kaguya-tc-dtm/{DTM}/02/{DTM}.{ext}": sha(
            files[darts.ROOT + darts.DTM2 + f"{DTM}.{ext}"]
        )
        for ext in ("img", "lbl")
    }
    assert raw_listing(store, "kaguya-mi-map") == {  # the real MI tile, byte for byte
        f"raw/kaguya-mi-map/{MI}/03/{MI}.{ext}": sha(files[darts.ROOT + darts.MI + f"{MI}.{ext}"])
        for ext in ("img", "lbl")
    }
    state = HarvestState.model_validate_json(store.read(state_key("kaguya-mi-map")))
    held = state.products[MI].versions[0]
    assert held.version == "03"  # the label's PRODUCT_VERSION_ID
    everything = {info.key: info.size for info in store.list()}

    darts_mirror.log.clear()
    second = dtm(store, darts_mirror, staging)
    assert second.counts == RunCounts(upstream=1, unchanged=1)
    assert second.writes == []
    assert {info.key: info.size for info in store.list()} == everything
    assert all(r.path.endswith("/") for r in darts_mirror.log)  # listings only
    assert all(r.headers["user-agent"].startswith("lunarchive/") for r in darts_mirror.log)


def test_a_new_dataset_version_a_new_tile_and_a_tile_replaced_in_place_are_fetched(
    store: Store, darts_mirror: MirrorServer, staging: Path, shared: Path
) -> None:
    dtm(store, darts_mirror, staging)
    before = raw_listing(store, "kaguya-tc-dtm")
    release2 = darts.build_darts(shared, release=2)
    darts_mirror.replace(release2.files, release2.modified)

    run = dtm(store, darts_mirror, staging)
    assert run.counts == RunCounts(upstream=3, new=3, fetched=3)
    after = raw_listing(store, "kaguya-tc-dtm")
    assert {k: v for k, v in after.items() if k in before} == before  # the old version kept
    added = sorted(set(after) - set(before))
    replaced = [k for k in added if k.startswith(f"raw/kaguya-tc-dtm/{DTM}/")]
    assert len(replaced) == 2 and all(k.split("/")[3].startswith("02-") for k in replaced)
    assert sorted(k for k in added if k not in replaced) == [
        "raw/kaguya-tc-dtm/DTM_MAP_02_S72E030S75E033SC/02/DTM_MAP_02_S72E030S75E033SC.img",
        "raw/kaguya-tc-dtm/DTM_MAP_02_S72E030S75E033SC/02/DTM_MAP_02_S72E030S75E033SC.lbl",
        "raw/kaguya-tc-dtm/DTM_MAP_03_S69E030S72E033SC/03/DTM_MAP_03_S69E030S72E033SC.img",
        "raw/kaguya-tc-dtm/DTM_MAP_03_S69E030S72E033SC/03/DTM_MAP_03_S69E030S72E033SC.lbl",
    ]
    new_img = release2.files[darts.ROOT + darts.DTM2 + f"{DTM}.img"]
    assert after[next(k for k in replaced if k.endswith(".img"))] == sha(new_img)

    again = dtm(store, darts_mirror, staging)
    assert again.counts == RunCounts(upstream=3, unchanged=3)
    assert again.writes == []


def test_a_dropped_download_is_fetched_whole_again_when_the_host_ignores_range(
    store: Store, darts_mirror: MirrorServer, staging: Path, shared: Path
) -> None:
    img = darts.ROOT + darts.DTM2 + f"{DTM}.img"
    darts_mirror.fault(img, "drop", "503")
    run = dtm(store, darts_mirror, staging)
    assert run.counts == RunCounts(upstream=1, new=1, fetched=1)
    asked = darts_mirror.requests(f"{DTM}.img")
    assert len(asked) == 3 and "range" in asked[-1].headers  # asked; answered 200 in full
    assert store.sha256(f"raw/kaguya-tc-dtm/{DTM}/02/{DTM}.img") == sha(
        darts.build_darts(shared).files[img]
    )


def test_a_tile_truncated_every_time_is_quarantined_and_the_others_harvested(
    store: Store, darts_mirror: MirrorServer, staging: Path, shared: Path
) -> None:
    release2 = darts.build_darts(shared, release=2)
    darts_mirror.replace(release2.files, release2.modified)
    darts_mirror.fault(
        darts.ROOT + darts.DTM3 + "DTM_MAP_03_S69E030S72E033SC.img", "truncate", "truncate"
    )
    run = dtm(store, darts_mirror, staging)
    assert run.counts == RunCounts(upstream=3, new=3, fetched=2, quarantined=1, missing=1)
    assert run.report.quarantined == ("DTM_MAP_03_S69E030S72E033SC",)
    why = reason(store, "kaguya-tc-dtm", "DTM_MAP_03_S69E030S72E033SC-unversioned")
    assert why["rule"] == "verification"
    assert "DTM_MAP_03_S69E030S72E033SC" in why["reason"]
    assert len(darts_mirror.requests("DTM_MAP_03_S69E030S72E033SC.img")) == 2
    assert len(raw_listing(store, "kaguya-tc-dtm")) == 4

    again = dtm(store, darts_mirror, staging)
    assert again.counts == RunCounts(upstream=3, unchanged=2, quarantined=1, missing=1)
    assert again.writes == []


# --- CLPDS: registration is a setting; a login redirect stops the harvest -------------------


@pytest.fixture
def clpds_mirror() -> Iterator[MirrorServer]:
    mirror = MirrorServer(
        files=clpds.build_clpds(), protected={"/PUBDATA/CE2TMap2015/": clpds.COOKIE}
    )
    with serve(mirror) as served:
        yield served


def test_clpds_without_credentials_stops_at_the_login_redirect_without_retrying(
    store: Store, clpds_mirror: MirrorServer, staging: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LUNARCHIVE_CLPDS_CREDENTIALS", raising=False)
    with pytest.raises(CredentialsRequired, match="redirected to a login page"):
        harvest(store, "clpds-ce2-dom", clpds_mirror, staging, clpds.ROOT)
    assert [r.path for r in clpds_mirror.log] == ["/PUBDATA/", "/PUBDATA/CE2TMap2015/"]
    assert not list(store.list("raw/"))


def test_clpds_with_the_credentials_setting_is_harvested_and_the_secret_stays_on_its_host(
    store: Store, clpds_mirror: MirrorServer, staging: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LUNARCHIVE_CLPDS_CREDENTIALS", ": ".join(clpds.COOKIE))
    run = harvest(store, "clpds-ce2-dom", clpds_mirror, staging, clpds.ROOT)
    assert run.counts == RunCounts(upstream=1, new=1, fetched=1)
    files = clpds.build_clpds()
    prefix = f"raw/clpds-ce2-dom/{clpds.TILE}/unversioned/"
    assert raw_listing(store, "clpds-ce2-dom") == {
        prefix + clpds.TILE + ext: sha(files[clpds.ROOT + clpds.DOM + clpds.TILE + ext])
        for ext in (".lbl", ".tfw", ".tif")
    }
    assert all(r.headers.get("cookie") == clpds.COOKIE[1] for r in clpds_mirror.log)
    document = json.loads(store.read(state_key("clpds-ce2-dom")))
    assert clpds.COOKIE[1] not in json.dumps(document)  # the secret is never stored

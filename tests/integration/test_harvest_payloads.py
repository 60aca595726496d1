"""The ``partner-inbox`` kind: payload teams' drops in ``inbox/<partner>/payload/<drop>/``.

A partner writes its products and then ``manifest.json`` (contract
``payload-manifest.schema.json``) into the archive's own store; the harvester verifies every
file against the manifest's sha256 and size, reads each product (GeoTIFF, PDS4; a bare FITS
file is refused: the installed GDAL has no FITS driver), and keeps it under ``raw/``. Runs on
a folder store and on SeaweedFS; every test asserts end states.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from lunarchive.catalog.store import Store
from lunarchive.flows.harvest_engine import load_source, state_key
from lunarchive.flows.samples import find_new_drops
from lunarchive.schemas.sources import (
    HarvestState,
    PartnerInboxAccess,
    RunCounts,
    SourceSpec,
    stored_payload_manifest_schema,
)
from tests.mirrors import partner
from tests.mirrors.harness import Harvested, raw_listing, run_harvest, sha

SOURCE = "partner-cubesat-team"
DEM = "south-pole-dem"
LID = "urn:lunarchive:fixtures:derived:ldem_4_pds4"


def spec() -> SourceSpec:
    return SourceSpec(
        name=SOURCE,
        title="Example partner payload: a CubeSat team's camera products",
        mission="Chang'e-6 CubeSat (example)",
        instrument="wide-angle camera",
        access=PartnerInboxAccess(partner=partner.PARTNER),
        cadence_days=90,
        licence="CC-BY-4.0",
    )


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    return tmp_path / "staging"


def harvest(store: Store, staging: Path) -> Harvested:
    return run_harvest(store, spec(), staging, base_url=None)


def reason(store: Store, qid: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(store.read(f"quarantine/{SOURCE}/{qid}/reason.json"))
    return loaded


def drop_one(store: Store, shared: Path) -> dict[str, bytes]:
    files, products = partner.real_products(shared)
    partner.write_drop(store, "2026-06-01-a", files, partner.manifest(products))
    return files


def test_a_drop_is_harvested_fits_refused_and_a_rerun_writes_nothing(
    store: Store, staging: Path, shared: Path
) -> None:
    files = drop_one(store, shared)
    first = harvest(store, staging)
    assert first.counts == RunCounts(upstream=3, new=3, fetched=2, quarantined=1, missing=1)
    assert raw_listing(store, SOURCE) == {
        f"raw/{SOURCE}/{DEM}/1/south_pole_dem.tif": sha(files["dem/south_pole_dem.tif"]),
        f"raw/{SOURCE}/{LID.replace(':', '-')}/1.0/ldem_4_pds4.xml": sha(
            files["pds4/ldem_4_pds4.xml"]
        ),
        f"raw/{SOURCE}/{LID.replace(':', '-')}/1.0/ldem_4_pds4.img": sha(
            files["pds4/ldem_4_pds4.img"]
        ),
    }
    assert first.report.quarantined == ("frame-0001",)
    why = reason(store, "frame-0001-1")
    assert why["rule"] == "ProductRejected"
    assert "FITS is not readable here: the GDAL in the installed rasterio wheel" in why["reason"]
    state = HarvestState.model_validate_json(store.read(state_key(SOURCE)))
    held = {f.name: f for f in state.products[DEM].versions[0].files}
    assert held["south_pole_dem.tif"].sha256 == sha(files["dem/south_pole_dem.tif"])
    everything = {info.key: info.size for info in store.list()}

    second = harvest(store, staging)
    assert second.counts == RunCounts(upstream=3, unchanged=2, quarantined=1, missing=1)
    assert second.writes == []
    assert {info.key: info.size for info in store.list()} == everything


def test_payload_and_sample_drops_share_the_inbox_without_ambiguity(
    store: Store, staging: Path, shared: Path
) -> None:
    drop_one(store, shared)
    sample = f"inbox/{partner.PARTNER}/2026-06-02-samples/"
    store.write(sample + "specimens.csv", b"sample_id\n70017\n")
    store.write(sample + "manifest.json", b'{"partner": "cubesat-team"}')
    assert find_new_drops(store) == [(partner.PARTNER, "2026-06-02-samples")]
    run = harvest(store, staging)
    assert run.counts.upstream == 3  # the sample drop is not a payload drop
    assert not any("samples" in key for key in raw_listing(store, SOURCE))
    validator = jsonschema.Draft202012Validator(stored_payload_manifest_schema())
    assert not validator.is_valid(json.loads(store.read(sample + "manifest.json")))
    payload = json.loads(store.read(f"inbox/{partner.PARTNER}/payload/2026-06-01-a/manifest.json"))
    validator.validate(payload)


def test_a_new_version_in_a_later_drop_is_fetched_and_the_old_version_kept(
    store: Store, staging: Path, shared: Path
) -> None:
    drop_one(store, shared)
    harvest(store, staging)
    before = raw_listing(store, SOURCE)
    tif = bytearray((shared / "fixtures/real/derived/ldem_4_spole_iau30135.tif").read_bytes())
    newer = {"south_pole_dem_v2.tif": bytes(tif)}
    product = partner.product(DEM, "2", "geotiff", newer, "south_pole_dem_v2.tif")
    partner.write_drop(
        store, "2026-07-01-b", newer, partner.manifest([product], "2026-07-01T00:00:00Z")
    )
    run = harvest(store, staging)
    assert run.counts == RunCounts(
        upstream=3, new=1, fetched=1, unchanged=1, quarantined=1, missing=1
    )
    after = raw_listing(store, SOURCE)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(set(after) - set(before)) == [f"raw/{SOURCE}/{DEM}/2/south_pole_dem_v2.tif"]
    state = HarvestState.model_validate_json(store.read(state_key(SOURCE)))
    assert [v.version for v in state.products[DEM].versions] == ["1", "2"]


def test_a_checksum_mismatch_quarantines_only_its_product(
    store: Store, staging: Path, shared: Path
) -> None:
    files, products = partner.real_products(shared)
    products[1]["files"][0]["sha256"] = "0" * 64  # pds4/ldem_4_pds4.img
    partner.write_drop(store, "2026-06-01-a", files, partner.manifest(products))
    run = harvest(store, staging)
    assert run.counts == RunCounts(upstream=3, new=3, fetched=1, quarantined=2, missing=2)
    assert run.report.quarantined == ("frame-0001", LID)
    why = reason(store, f"{LID.replace(':', '-')}-1.0")
    assert why["rule"] == "verification"
    assert f"its manifest declares {'0' * 64}" in why["reason"]
    assert store.exists(f"quarantine/{SOURCE}/{LID.replace(':', '-')}-1.0/ldem_4_pds4.img")
    assert sorted(raw_listing(store, SOURCE)) == [f"raw/{SOURCE}/{DEM}/1/south_pole_dem.tif"]


def test_bad_drops_are_quarantined_with_a_reason_and_unfinished_ones_wait(
    store: Store, staging: Path, shared: Path
) -> None:
    files, products = partner.real_products(shared)
    dem_only = {"dem/south_pole_dem.tif": files["dem/south_pole_dem.tif"]}
    wrong = json.loads(partner.manifest(products[:1]))
    wrong["partner"] = "someone-else"
    partner.write_drop(store, "a-wrong-partner", dem_only, json.dumps(wrong).encode())
    partner.write_drop(store, "b-no-kind", dem_only, b'{"partner": "cubesat-team"}')
    missing = partner.product("lost", "1", "geotiff", {"gone.tif": b"x"}, "gone.tif")
    partner.write_drop(store, "c-missing-file", {}, partner.manifest([missing]))
    partner.write_drop(store, "d-unfinished", dem_only, None)  # no manifest yet

    run = harvest(store, staging)
    assert run.counts == RunCounts(upstream=3, new=3, quarantined=3, missing=3)
    assert run.report.quarantined == ("drop-a-wrong-partner", "drop-b-no-kind", "lost")
    assert (
        "partner 'someone-else' is not the inbox's 'cubesat-team'"
        in (reason(store, "drop-a-wrong-partner-unversioned")["reason"])
    )
    assert "kind: Field required" in reason(store, "drop-b-no-kind-unversioned")["reason"]
    assert (
        "gone.tif: listed in the drop's manifest, but not in the drop"
        in (reason(store, "lost-1")["reason"])
    )
    assert store.exists(f"quarantine/{SOURCE}/drop-b-no-kind-unversioned/manifest.json")
    assert not list(store.list("raw/"))


def test_a_partner_source_comes_from_the_extra_registry_folder(tmp_path: Path) -> None:
    (tmp_path / f"{SOURCE}.json").write_text(spec().model_dump_json(exclude_none=True))
    loaded = load_source(SOURCE, tmp_path)
    assert loaded == spec() and loaded.base_url is None

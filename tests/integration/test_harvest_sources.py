"""The harvest engine against loopback mirrors of LOLA (PDS3 index) and M3 (PDS4 inventory).

Every test runs on a local folder and on SeaweedFS S3 (the ``store`` fixture). The mirrors
(``tests/mirrors``) reproduce each archive's layout from the real fixtures and generated
data; faults are injected per request by the mirror server, deterministically. Every test
asserts end states: the objects under ``raw/``, their checksums, the report's exact counts,
what the server was asked.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings
from typer.testing import CliRunner

from lunarchive.catalog.store import Store
from lunarchive.flows._runtime import load_settings, prefect_api
from lunarchive.flows.cli_harvest import harvest_command, status_command
from lunarchive.flows.harvest_engine import (
    HarvestRun,
    HarvestSettings,
    load_registry,
    load_source,
    read_report,
    report_key,
    state_key,
)
from lunarchive.schemas.errors import SourceRefused
from lunarchive.schemas.sources import CompletenessReport, HarvestState, RunCounts
from tests.mirrors import lola, m3
from tests.mirrors.harness import CountingStore
from tests.mirrors.server import MirrorServer, serve

LDEM = "lro/lro-l-lola-3-rdr-v1/lrolol_1xxx/data/lola_gdr/cylindrical/img/"
CALIB = "img/data/pds4/ch1_m3/document/calibration/"


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    return tmp_path / "staging"


def harvest(
    store: Store,
    source: str,
    mirror: MirrorServer,
    staging: Path,
    *,
    allow_local: bool = True,
    clock: datetime | None = None,
) -> tuple[RunCounts, CompletenessReport, CountingStore]:
    """One run of the engine, as the flow runs it, with no waits between retries."""
    counting = CountingStore(store)
    settings = HarvestSettings(harvest_staging_dir=staging, harvest_backoff_s=0, harvest_attempts=4)
    root = lola.ROOT if source == "lola-gdr" else m3.ROOT
    run = HarvestRun.open(
        load_source(source),
        counting,  # type: ignore[arg-type]
        settings=settings,
        allow_local=allow_local,
        timeout_s=10,
        max_bytes=64 * 1024 * 1024,
        base_url=mirror.url + root,
    )
    if clock is not None:
        run.clock = lambda: clock
    try:
        for entry in run.list_upstream():
            run.fetch(entry)
        counts, report = run.finish()
    finally:
        run.close()
    return counts, report, counting


@pytest.fixture
def lola_mirror(shared: Path) -> Iterator[MirrorServer]:
    with serve(MirrorServer(files=lola.build_lola(shared).files)) as mirror:
        yield mirror


@pytest.fixture
def m3_mirror(shared: Path) -> Iterator[MirrorServer]:
    with serve(MirrorServer(files=m3.build_m3(shared).files)) as mirror:
        yield mirror


def raw_listing(store: Store) -> dict[str, str]:
    return {info.key: store.sha256(info.key) for info in store.list("raw/")}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def counts(**given: int) -> RunCounts:
    return RunCounts(**given)


# --- each mirror harvested; a second run fetches nothing and writes nothing -----------------


def test_lola_is_harvested_and_a_rerun_fetches_and_writes_nothing(
    store: Store, lola_mirror: MirrorServer, staging: Path, shared: Path
) -> None:
    first, report, _ = harvest(store, "lola-gdr", lola_mirror, staging)
    assert first == counts(upstream=2, new=2, fetched=2)
    files = lola.build_lola(shared).files
    expected = {
        f"raw/lola-gdr/{pid}/V3.0/{name}": sha(files["/" + LDEM + name])
        for pid, names in (
            ("LDEM_1", ("ldem_1.img", "ldem_1.lbl")),
            ("LDEM_4", ("ldem_4.img", "ldem_4.lbl")),
        )
        for name in names
    }
    assert raw_listing(store) == expected
    assert report.missing == () and report.inventory_products == 2 and report.flags == ()
    everything = {info.key: info.size for info in store.list()}

    lola_mirror.log.clear()
    second, _, counting = harvest(store, "lola-gdr", lola_mirror, staging)
    assert second == counts(upstream=2, unchanged=2)
    assert counting.writes == []
    assert {info.key: info.size for info in store.list()} == everything
    asked = sorted(r.path.rsplit("/", 1)[1] for r in lola_mirror.log)
    assert asked == ["rdrindex.lbl", "rdrindex.tab"]  # the table answered 304
    assert all(r.headers["user-agent"].startswith("lunarchive/") for r in lola_mirror.log)
    assert lola_mirror.requests("rdrindex.tab")[0].headers["if-none-match"]
    stored = read_report(store, "lola-gdr")
    assert stored is not None and stored.counts == first  # the last run that changed anything


def test_m3_is_harvested_and_a_rerun_fetches_and_writes_nothing(
    store: Store, m3_mirror: MirrorServer, staging: Path, shared: Path
) -> None:
    first, report, _ = harvest(store, "m3", m3_mirror, staging)
    assert first == counts(upstream=2, new=2, fetched=2)
    files = m3.build_m3(shared).files
    prefix = "raw/m3/ch1_m3-document-"
    assert raw_listing(store) == {
        f"{prefix}{stem}/1.0/{stem}.{ext}": sha(files[f"/{CALIB}{stem}.{ext}"])
        for stem in ("m3t20070912_rdn_spc", "m3g20081211_rdn_spc")
        for ext in ("xml", "tab")
    }
    state = HarvestState.model_validate_json(store.read(state_key("m3")))
    held = state.products[m3.SYNTHETIC].versions[0]
    assert {f.name: f.md5 for f in held.files}["m3g20081211_rdn_spc.tab"] == (
        "1c2550359badb603bbabd6f009f7cd7b"  # the md5 fixtures/real/README.md lists
    )
    assert report.missing == ()
    everything = {info.key: info.size for info in store.list()}

    m3_mirror.log.clear()
    second, _, counting = harvest(store, "m3", m3_mirror, staging)
    assert second == counts(upstream=2, unchanged=2)
    assert counting.writes == []
    assert {info.key: info.size for info in store.list()} == everything
    assert not [r for r in m3_mirror.log if r.path.endswith((".tab", "_rdn_spc.xml"))]


# --- a changed upstream product is fetched again; the old version is kept -------------------


def test_lola_product_replaced_in_place_is_fetched_again_and_the_old_version_kept(
    store: Store, lola_mirror: MirrorServer, staging: Path, shared: Path
) -> None:
    harvest(store, "lola-gdr", lola_mirror, staging)
    before = raw_listing(store)
    lola_mirror.replace(lola.build_lola(shared, release=2).files)

    run, report, _ = harvest(store, "lola-gdr", lola_mirror, staging)
    assert run == counts(upstream=3, new=2, fetched=2, unchanged=1)
    after = raw_listing(store)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing old touched
    new_files = lola.build_lola(shared, release=2).files
    assert sorted(set(after) - set(before)) == [
        "raw/lola-gdr/LDEM_2/V3.0/ldem_2.img",
        "raw/lola-gdr/LDEM_2/V3.0/ldem_2.lbl",
        "raw/lola-gdr/LDEM_4/V3.1/ldem_4.img",
        "raw/lola-gdr/LDEM_4/V3.1/ldem_4.lbl",
    ]
    assert after["raw/lola-gdr/LDEM_4/V3.1/ldem_4.img"] == sha(new_files["/" + LDEM + "ldem_4.img"])
    assert (
        after["raw/lola-gdr/LDEM_4/V3.0/ldem_4.img"] != after["raw/lola-gdr/LDEM_4/V3.1/ldem_4.img"]
    )
    state = HarvestState.model_validate_json(store.read(state_key("lola-gdr")))
    assert [v.segment for v in state.products["LDEM_4"].versions] == ["V3.0", "V3.1"]
    assert report.flags == () and report.inventory_products == 3


def test_m3_new_vid_is_fetched_into_its_own_version_and_the_old_version_kept(
    store: Store, m3_mirror: MirrorServer, staging: Path, shared: Path
) -> None:
    harvest(store, "m3", m3_mirror, staging)
    before = raw_listing(store)
    m3_mirror.replace(m3.build_m3(shared, release=2).files)

    run, _, _ = harvest(store, "m3", m3_mirror, staging)
    assert run == counts(upstream=2, new=1, fetched=1, unchanged=1)
    after = raw_listing(store)
    assert {k: v for k, v in after.items() if k in before} == before
    prefix = "raw/m3/ch1_m3-document-m3t20070912_rdn_spc/1.1/"
    assert sorted(set(after) - set(before)) == [
        prefix + "m3t20070912_rdn_spc_1_1.tab",
        prefix + "m3t20070912_rdn_spc_1_1.xml",
    ]
    state = HarvestState.model_validate_json(store.read(state_key("m3")))
    assert [v.version for v in state.products[m3.REAL].versions] == ["1.0", "1.1"]


# --- completeness flags ---------------------------------------------------------------------


def test_a_shrinking_inventory_is_flagged_and_the_withdrawn_product_kept(
    store: Store, lola_mirror: MirrorServer, staging: Path, shared: Path
) -> None:
    lola_mirror.replace(lola.build_lola(shared, release=2).files)
    harvest(store, "lola-gdr", lola_mirror, staging)
    lola_mirror.replace(lola.build_lola(shared, release=3).files)

    run, report, counting = harvest(store, "lola-gdr", lola_mirror, staging)
    assert run == counts(upstream=2, unchanged=2)
    assert report.flags == ("inventory-shrank",)
    assert report.withdrawn == ("LDEM_1",)
    assert (report.inventory_products, report.missing) == (2, ())
    assert store.exists("raw/lola-gdr/LDEM_1/V3.0/ldem_1.img")  # raw is never deleted
    assert sorted(counting.writes) == [report_key("lola-gdr"), state_key("lola-gdr")]
    assert read_report(store, "lola-gdr") == report


def test_an_inventory_unchanged_for_longer_than_its_cadence_is_flagged_stale(
    store: Store, m3_mirror: MirrorServer, staging: Path
) -> None:
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    harvest(store, "m3", m3_mirror, staging, clock=long_ago)
    run, report, counting = harvest(store, "m3", m3_mirror, staging)  # today: nothing changed
    assert run == counts(upstream=2, unchanged=2)
    assert counting.writes == []
    assert report.inventory_changed == long_ago
    assert report.flags_at(long_ago + timedelta(days=729)) == ()
    assert report.flags_at(datetime.now(UTC)) == ("stale",)  # cadence: 730 days


# --- faults ---------------------------------------------------------------------------------


def reason(store: Store, source: str, qid: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(store.read(f"quarantine/{source}/{qid}/reason.json"))
    return loaded


def test_a_truncated_file_is_fetched_again(
    store: Store, lola_mirror: MirrorServer, staging: Path
) -> None:
    lola_mirror.fault("/" + LDEM + "ldem_4.img", "truncate")
    run, _, _ = harvest(store, "lola-gdr", lola_mirror, staging)
    assert run == counts(upstream=2, new=2, fetched=2)
    assert len(lola_mirror.requests("ldem_4.img")) == 2
    assert not list(store.list("quarantine/"))


def test_a_file_truncated_every_time_is_quarantined_with_the_reason(
    store: Store, lola_mirror: MirrorServer, staging: Path
) -> None:
    lola_mirror.fault("/" + LDEM + "ldem_4.img", "truncate", "truncate")
    run, report, _ = harvest(store, "lola-gdr", lola_mirror, staging)
    assert run == counts(upstream=2, new=2, fetched=1, quarantined=1, missing=1)
    assert (report.missing, report.quarantined, report.failed) == (("LDEM_4",), ("LDEM_4",), ())
    why = reason(store, "lola-gdr", "LDEM_4-V3.0")
    assert why["rule"] == "verification"
    assert "1036800 bytes, its label declares 2073600" in why["reason"]
    assert store.exists("quarantine/lola-gdr/LDEM_4-V3.0/ldem_4.img")  # the rejected bytes
    assert not any(key.startswith("raw/lola-gdr/LDEM_4/") for key in raw_listing(store))

    again, _, counting = harvest(store, "lola-gdr", lola_mirror, staging)
    assert again == counts(upstream=2, unchanged=1, quarantined=1, missing=1)  # not retried
    assert counting.writes == []


def test_a_wrong_md5_is_fetched_again_then_quarantined(
    store: Store, m3_mirror: MirrorServer, staging: Path
) -> None:
    tab = "/" + CALIB + "m3g20081211_rdn_spc.tab"
    m3_mirror.fault(tab, "corrupt", "corrupt")
    run, report, _ = harvest(store, "m3", m3_mirror, staging)
    assert run == counts(upstream=2, new=2, fetched=1, quarantined=1, missing=1)
    assert report.quarantined == (m3.SYNTHETIC,)
    why = reason(store, "m3", "ch1_m3-document-m3g20081211_rdn_spc-1.0")
    assert why["rule"] == "verification"
    assert "its label declares 1c2550359badb603bbabd6f009f7cd7b" in why["reason"]
    assert len(m3_mirror.requests(tab)) == 2


def test_503s_are_retried_until_the_file_comes(
    store: Store, lola_mirror: MirrorServer, staging: Path
) -> None:
    lola_mirror.fault("/" + LDEM + "ldem_1.img", "503", "429", "503")
    run, _, _ = harvest(store, "lola-gdr", lola_mirror, staging)
    assert run == counts(upstream=2, new=2, fetched=2)
    assert len(lola_mirror.requests("ldem_1.img")) == 4


def test_a_product_failing_transiently_is_failed_and_fetched_by_the_next_run(
    store: Store, lola_mirror: MirrorServer, staging: Path
) -> None:
    lola_mirror.fault("/" + LDEM + "ldem_1.img", *["503"] * 4)  # as many as the attempts
    run, report, _ = harvest(store, "lola-gdr", lola_mirror, staging)
    assert run == counts(upstream=2, new=2, fetched=1, failed=1, missing=1)
    assert (report.failed, report.quarantined) == (("LDEM_1",), ())
    assert not list(store.list("quarantine/"))

    again, report, _ = harvest(store, "lola-gdr", lola_mirror, staging)
    assert again == counts(upstream=2, new=1, fetched=1, unchanged=1)
    assert report.failed == () and report.missing == ()


def test_access_denied_is_left_for_the_next_run_not_quarantined(
    store: Store, lola_mirror: MirrorServer, staging: Path
) -> None:
    lola_mirror.fault("/" + LDEM + "ldem_1.img", *["403"] * 4)
    run, report, _ = harvest(store, "lola-gdr", lola_mirror, staging)
    assert run == counts(upstream=2, new=2, fetched=1, failed=1, missing=1)
    assert report.failed == ("LDEM_1",)
    assert not list(store.list("quarantine/"))


def test_a_404_is_quarantined_and_the_other_products_harvested(
    store: Store, lola_mirror: MirrorServer, staging: Path
) -> None:
    lola_mirror.fault("/" + LDEM + "ldem_1.img", "404")
    run, report, _ = harvest(store, "lola-gdr", lola_mirror, staging)
    assert run == counts(upstream=2, new=2, fetched=1, quarantined=1, missing=1)
    assert report.quarantined == ("LDEM_1",)
    why = reason(store, "lola-gdr", "LDEM_1-V3.0")
    assert why["rule"] == "ProductRejected" and "ldem_1.img: HTTP 404" in why["reason"]
    assert sorted(raw_listing(store)) == [
        "raw/lola-gdr/LDEM_4/V3.0/ldem_4.img",
        "raw/lola-gdr/LDEM_4/V3.0/ldem_4.lbl",
    ]


def test_a_dropped_connection_resumes_with_a_range_request(
    store: Store, lola_mirror: MirrorServer, staging: Path, shared: Path
) -> None:
    lola_mirror.fault("/" + LDEM + "ldem_4.img", "drop")
    run, _, _ = harvest(store, "lola-gdr", lola_mirror, staging)
    assert run == counts(upstream=2, new=2, fetched=2)
    first, second = lola_mirror.requests("ldem_4.img")
    assert "range" not in first.headers
    start = int(second.headers["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 2073600 // 2
    image = lola.build_lola(shared).files["/" + LDEM + "ldem_4.img"]
    assert store.sha256("raw/lola-gdr/LDEM_4/V3.0/ldem_4.img") == sha(image)
    assert not list(staging.rglob("*.part"))


@pytest.mark.parametrize("target", ["http://10.0.0.1/ldem_1.img", "http://169.254.169.254/latest"])
def test_a_redirect_to_a_private_address_is_refused(
    store: Store, lola_mirror: MirrorServer, staging: Path, target: str
) -> None:
    lola_mirror.fault("/" + LDEM + "ldem_1.img", "redirect:" + target)
    run, _, _ = harvest(store, "lola-gdr", lola_mirror, staging)
    assert run == counts(upstream=2, new=2, fetched=1, quarantined=1, missing=1)
    why = reason(store, "lola-gdr", "LDEM_1-V3.0")
    assert why["rule"] == "SourceRefused"
    assert "rule R14" in why["reason"] and target in why["reason"]


def test_a_loopback_source_is_refused_before_connecting_unless_allowed(
    store: Store, lola_mirror: MirrorServer, staging: Path
) -> None:
    with pytest.raises(SourceRefused, match="loopback"):
        harvest(store, "lola-gdr", lola_mirror, staging, allow_local=False)
    assert lola_mirror.log == []
    assert not list(store.list())


def test_a_malformed_label_poisons_only_its_product(
    store: Store, lola_mirror: MirrorServer, staging: Path
) -> None:
    lola_mirror.files["/" + LDEM + "ldem_1.lbl"] = b"PDS_VERSION_ID = PDS3\r\nOBJECT = IMAGE\r\n"
    run, _, _ = harvest(store, "lola-gdr", lola_mirror, staging)
    assert run == counts(upstream=2, new=2, fetched=1, quarantined=1, missing=1)
    assert reason(store, "lola-gdr", "LDEM_1-V3.0")["rule"] == "ProductRejected"


# --- R1: kill the harvester mid-download; the rerun fetches only what was missing ----------

_KILLABLE = """
import sys
from pathlib import Path
from lunarchive.flows._runtime import load_settings, store_for
from lunarchive.flows.harvest_engine import HarvestRun, HarvestSettings, load_source

store_url, base_url, staging = sys.argv[1:]
run = HarvestRun.open(
    load_source("lola-gdr"),
    store_for(load_settings(store_url=store_url)),
    settings=HarvestSettings(harvest_staging_dir=Path(staging), harvest_backoff_s=0),
    allow_local=True, timeout_s=300, max_bytes=2**30, base_url=base_url,
)
for entry in run.list_upstream():
    run.fetch(entry)
    print("stored", entry.product_id, flush=True)
"""


def test_a_killed_harvest_leaves_nothing_partial_and_the_rerun_resumes(
    store: Store, lola_mirror: MirrorServer, staging: Path, shared: Path
) -> None:
    image = "/" + LDEM + "ldem_4.img"
    lola_mirror.fault(image, "stall")
    args = [store.url, lola_mirror.url + lola.ROOT, str(staging)]
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLABLE, *args],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "stored LDEM_1\n"  # products go in id order
        assert lola_mirror.sent.wait(timeout=60)
        part = next(iter(staging.rglob("ldem_4.img.part")), None)
        deadline = time.monotonic() + 60  # a barrier on the file's state, not a timing
        while (part is None or part.stat().st_size < 2073600 // 2) and time.monotonic() < deadline:
            time.sleep(0.05)
            part = next(iter(staging.rglob("ldem_4.img.part")), None)
        assert part is not None and part.stat().st_size == 2073600 // 2
    finally:
        child.kill()
        child.wait()
        lola_mirror.released.set()
    assert sorted(raw_listing(store)) == [
        "raw/lola-gdr/LDEM_1/V3.0/ldem_1.img",
        "raw/lola-gdr/LDEM_1/V3.0/ldem_1.lbl",
    ]
    state = HarvestState.model_validate_json(store.read(state_key("lola-gdr")))
    assert sorted(state.products) == ["LDEM_1"]

    lola_mirror.log.clear()
    run, _, _ = harvest(store, "lola-gdr", lola_mirror, staging)
    assert run == counts(upstream=2, new=1, fetched=1, unchanged=1)
    (resumed,) = lola_mirror.requests("ldem_4.img")
    assert resumed.headers["range"] == f"bytes={2073600 // 2}-"
    files = lola.build_lola(shared).files
    assert raw_listing(store) == {
        f"raw/lola-gdr/{pid}/V3.0/{name}": sha(files["/" + LDEM + name])
        for pid, name in (
            ("LDEM_1", "ldem_1.img"),
            ("LDEM_1", "ldem_1.lbl"),
            ("LDEM_4", "ldem_4.img"),
            ("LDEM_4", "ldem_4.lbl"),
        )
    }


# --- the flow through the CLI commands ------------------------------------------------------


def test_harvest_and_status_commands_run_the_flow_on_both_mirrors(
    store: Store,
    lola_mirror: MirrorServer,
    m3_mirror: MirrorServer,
    staging: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LUNARCHIVE_HARVEST_STAGING_DIR", str(staging))
    monkeypatch.setenv("LUNARCHIVE_HARVEST_BACKOFF_S", "0")
    app = typer.Typer()
    app.command("harvest")(harvest_command)
    app.command("status")(status_command)
    runner = CliRunner()
    # the commands share one temporary Prefect API (each would start its own), given time to
    # start on a loaded test machine (the default 20 s is not always enough)
    with (
        temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 300}),
        prefect_api(load_settings()),
    ):
        for source, mirror, root in (
            ("lola-gdr", lola_mirror, lola.ROOT),
            ("m3", m3_mirror, m3.ROOT),
        ):
            args = ["harvest", source, "--store", store.url, "--base-url", mirror.url + root]
            done = runner.invoke(app, [*args, "--allow-local-sources"])
            assert done.exit_code == 0, done.output
            assert f"{source}: 2 upstream, 2 new, 2 fetched, 0 unchanged" in done.stdout
    status = runner.invoke(app, ["status", "--store", store.url, "--json"])
    assert status.exit_code == 0, status.output
    rows = {row["source"]: row for row in json.loads(status.stdout)}
    assert set(rows) == {spec.name for spec in load_registry()}  # every registered source
    for row in (rows["lola-gdr"], rows["m3"]):
        assert (row["upstream"], row["held"], row["missing"], row["flags"]) == (2, 2, 0, [])
        assert row["last_run"] == counts(upstream=2, new=2, fetched=2).model_dump()
    assert len(raw_listing(store)) == 8

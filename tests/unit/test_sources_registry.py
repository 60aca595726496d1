"""The source registry, its schema, the inventory parsers and the source URL rules."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from lunarchive.catalog.store import FolderStore
from lunarchive.flows.harvest_engine import (
    HarvestRun,
    HarvestSettings,
    load_registry,
    load_source,
    product_key_id,
    raw_version_key,
    source_credentials,
)
from lunarchive.flows.source_kinds._pds3_index import parse_index_label, parse_index_rows
from lunarchive.flows.source_kinds._pds4_inventory import parse_inventory
from lunarchive.flows.sources import Fetcher, HttpPolicy, _parsed, check_source_url
from lunarchive.schemas.errors import ConfigurationError, SourceRefused, TransientError
from lunarchive.schemas.sources import (
    CompletenessReport,
    PayloadManifest,
    RunCounts,
    SourceSpec,
    payload_manifest_json_schema,
    source_json_schema,
    stored_payload_manifest_schema,
    stored_source_schema,
)
from tests.mirrors import lola

REGISTRY = files("lunarchive.flows").joinpath("registry")


def registry_documents() -> dict[str, dict[str, Any]]:
    return {
        item.name: json.loads(item.read_text("utf-8"))
        for item in REGISTRY.iterdir()
        if item.name.endswith(".json")
    }


def test_the_schema_file_is_the_one_the_model_generates() -> None:
    assert stored_source_schema() == source_json_schema()


def test_the_payload_manifest_contract_is_the_one_the_model_generates() -> None:
    assert stored_payload_manifest_schema() == payload_manifest_json_schema()


@pytest.mark.parametrize("name", sorted(registry_documents()))
def test_every_registry_file_validates_against_the_schema_and_the_model(name: str) -> None:
    document = registry_documents()[name]
    jsonschema.Draft202012Validator(stored_source_schema()).validate(document)
    spec = SourceSpec.model_validate(document)
    assert f"{spec.name}.json" == name
    assert spec.base_url is not None  # the real public archive, not a mirror
    assert spec.base_url.startswith("https://")


def test_the_registry_holds_the_sources_with_their_access_patterns() -> None:
    specs = {spec.name: spec for spec in load_registry()}
    assert {name: spec.kind for name, spec in specs.items()} == {
        "lola-gdr": "pds3-index",
        "m3": "pds4-inventory",
        "lola-gdr-api": "pds4-search-api",
        "kaguya-tc-dtm": "http-listing",
        "kaguya-mi-map": "http-listing",
        "lroc-wac-gld100": "s3-prefix",
        "clpds-ce2-dom": "http-listing",
    }
    assert specs["clpds-ce2-dom"].credentials_setting == "LUNARCHIVE_CLPDS_CREDENTIALS"
    assert all(
        spec.notes and "UNVERIFIED" in spec.notes
        for spec in specs.values()
        if spec.name not in ("lola-gdr", "m3")
    )
    assert specs["lola-gdr"].base_url == (
        "https://pds-geosciences.wustl.edu/lro/lro-l-lola-3-rdr-v1/lrolol_1xxx/"
    )


def lola_document() -> dict[str, Any]:
    return registry_documents()["lola-gdr.json"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"password": "hunter2"}, "Extra inputs are not permitted"),
        ({"base_url": "ftp://example.org/x/"}, "String should match pattern"),
        ({"base_url": "https://example.org/no-trailing-slash"}, "String should match pattern"),
        ({"access": {"kind": "pds3-index", "index_label": "../etc/passwd"}}, "relative path"),
        ({"access": {"kind": "ftp-mirror"}}, "does not match any of the expected tags"),
        ({"access": {"kind": "s3-prefix", "prefixes": ["a/b"]}}, "must end with '/'"),
        ({"access": {"kind": "http-listing", "datasets": ["x"], "suffixes": ["IMG"]}}, "suffix"),
        ({"access": {"kind": "partner-inbox", "partner": "p-1"}}, "it has no base_url"),
        ({"base_url": None}, "needs a base_url"),
        ({"cadence_days": 0}, "greater than 0"),
        ({"credentials_setting": "my-token-value"}, "String should match pattern"),
    ],
)
def test_bad_registry_entries_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SourceSpec.model_validate({**lola_document(), **change})


def test_an_extra_registry_folder_replaces_a_builtin_source_by_name(tmp_path: Path) -> None:
    document = {**lola_document(), "cadence_days": 7}
    (tmp_path / "lola-gdr.json").write_text(json.dumps(document))
    assert load_source("lola-gdr", tmp_path).cadence_days == 7
    (tmp_path / "lola-gdr.json").write_text(json.dumps({**document, "name": "other"}))
    with pytest.raises(ConfigurationError, match="names source 'other'"):
        load_source("lola-gdr", tmp_path)
    with pytest.raises(ConfigurationError, match="no source 'nope'"):
        load_source("nope")


def test_harvest_settings_use_the_lunarchive_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUNARCHIVE_HARVEST_PER_HOST", "3")
    monkeypatch.setenv("LUNARCHIVE_HARVEST_VERIFY_ATTEMPTS", "5")
    settings = HarvestSettings()
    assert (settings.harvest_per_host, settings.harvest_verify_attempts) == (3, 5)


def test_keys_keep_every_version_in_its_own_folder() -> None:
    lid = "urn:nasa:pds:ch1_m3:document:m3t20070912_rdn_spc"
    assert product_key_id(lid) == "ch1_m3-document-m3t20070912_rdn_spc"
    assert raw_version_key("m3", lid, "1.1", "a.xml") == (
        "raw/m3/ch1_m3-document-m3t20070912_rdn_spc/1.1/a.xml"
    )
    assert raw_version_key("lola-gdr", "LDEM_4", "V3.0", "ldem_4.img") == (
        "raw/lola-gdr/LDEM_4/V3.0/ldem_4.img"
    )


# --- parsers --------------------------------------------------------------------------------


def test_the_pds3_index_is_read_by_column_name(shared: Path) -> None:
    mirror = lola.build_lola(shared).files
    label = mirror[lola.ROOT + "index/rdrindex.lbl"].decode()
    table_name, columns = parse_index_label(label, where="rdrindex.lbl")
    assert table_name == "RDRINDEX.TAB"
    assert columns["VOLUME_ID"] == (2, 12)
    assert columns["FILE_SPECIFICATION_NAME"] == (17, 72)
    assert columns["MISSION_PHASE_NAME"] == (92, 31)
    assert columns["TARGET_NAME"] == (126, 12)
    rows = parse_index_rows(mirror[lola.ROOT + "index/rdrindex.tab"], columns, where="x")
    ldem4 = next(row for row in rows if row["FILE_SPECIFICATION_NAME"].endswith("LDEM_4.LBL"))
    assert ldem4["PRODUCT_ID"] == "LDEM_4"
    assert ldem4["PRODUCT_VERSION_ID"] == "V3.0"
    assert ldem4["PRODUCT_CREATION_TIME"] == "2017-09-15"  # date only, as in the real index
    assert ldem4["MISSION_PHASE_NAME"] == "SCIENCE MISSION"


def test_a_short_index_row_is_an_error_naming_it() -> None:
    with pytest.raises(TransientError, match="row 2: shorter than column B"):
        parse_index_rows(b'"a","b"\r\n"a"\r\n', {"A": (2, 1), "B": (6, 1)}, where="t")


def test_the_pds4_inventory_keeps_primary_members() -> None:
    data = (
        b"P,urn:nasa:pds:ch1_m3:document:m3t20070912_rdn_spc::1.1\r\n"
        b"S,urn:nasa:pds:context:instrument:m3.ch1-orb::1.0\r\n"
        b"P,urn:nasa:pds:ch1_m3:document:other\r\n"
    )
    assert parse_inventory(data, records=3, where="inv") == [
        ("urn:nasa:pds:ch1_m3:document:m3t20070912_rdn_spc", "1.1"),
        ("urn:nasa:pds:ch1_m3:document:other", None),
    ]
    with pytest.raises(TransientError, match="3 records, the collection label says 4"):
        parse_inventory(data, records=4, where="inv")
    with pytest.raises(TransientError, match="line 1"):
        parse_inventory(b"X,nonsense\r\n", records=None, where="inv")


# --- source URL rules (R14) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allow_local", "message"),
    [
        ("file:///etc/passwd", True, "only http"),
        ("http://127.0.0.1:9/x", False, "loopback"),
        ("http://[::1]:9/x", False, "loopback"),
        ("http://169.254.169.254/latest/meta-data", True, "private, link-local"),
        ("http://10.1.2.3/x", True, "private, link-local"),
        ("http://192.168.0.1/x", True, "private, link-local"),
    ],
)
def test_source_urls_are_refused_by_rule(url: str, allow_local: bool, message: str) -> None:
    with pytest.raises(SourceRefused, match=message):
        check_source_url(url, allow_local=allow_local)


def test_loopback_is_allowed_only_when_local_sources_are() -> None:
    check_source_url("http://127.0.0.1:9/x", allow_local=True)


def test_the_stale_flag_comes_from_the_cadence() -> None:
    from datetime import UTC, datetime, timedelta

    changed = datetime(2026, 1, 1, tzinfo=UTC)
    report = CompletenessReport(
        source="m3",
        kind="pds4-inventory",
        base_url="https://x/",
        cadence_days=30,
        counts=RunCounts(),
        inventory_changed=changed,
        flags=("inventory-shrank",),
    )
    assert report.flags_at(changed + timedelta(days=30)) == ("inventory-shrank",)
    assert report.flags_at(changed + timedelta(days=31)) == ("inventory-shrank", "stale")


# --- the payload manifest, listings, credentials --------------------------------------------


def payload_document() -> dict[str, Any]:
    return {
        "kind": "payload",
        "partner": "cubesat-team",
        "mission": "m",
        "instrument": "i",
        "contact": "a@b.org",
        "licence": "CC-BY-4.0",
        "created": "2026-06-01T00:00:00Z",
        "products": [
            {
                "product_id": "dem",
                "version": "1",
                "format": "geotiff",
                "label": "dem.tif",
                "files": [{"path": "dem.tif", "sha256": "a" * 64, "size": 3}],
            }
        ],
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "samples"}, "Input should be 'payload'"),
        ({"label": "other.tif"}, "is not one of the product's files"),
        ({"format": "pds4"}, "label must end in .xml"),
        ({"files": [{"path": "../dem.tif", "sha256": "a" * 64, "size": 3}]}, "String should match"),
        ({"files": [{"path": "dem.tif", "sha256": "A" * 64, "size": 3}]}, "String should match"),
    ],
)
def test_bad_payload_manifests_are_refused_by_the_model_and_the_contract(
    change: dict[str, Any], message: str
) -> None:
    document = payload_document()
    if "kind" in change:
        document.update(change)
    else:
        document["products"][0].update(change)
    with pytest.raises(ValueError, match=message):
        PayloadManifest.model_validate(document)
    if "label" not in change and "format" not in change:  # cross-field rules are the model's
        validator = jsonschema.Draft202012Validator(stored_payload_manifest_schema())
        assert not validator.is_valid(json.loads(json.dumps(document)))


def test_a_good_payload_manifest_passes_both() -> None:
    document = payload_document()
    jsonschema.Draft202012Validator(stored_payload_manifest_schema()).validate(document)
    assert PayloadManifest.model_validate(document).products[0].files[0].size == 3


def test_listing_text_beside_each_link_is_kept_as_its_change_signal() -> None:
    page = (
        b'<pre><a href="../">Parent Directory</a>\n<a href="a.img">a.img</a>  '
        b'15-Sep-2017 12:00  2.0M\n<a href="b.lbl">b.lbl</a> 01-Jun-2026 00:00 9K\n</pre>'
    )
    parsed = _parsed(page)
    details = [" ".join("".join(parts).split()) for parts in parsed.details]
    assert parsed.hrefs == ["../", "a.img", "b.lbl"]
    assert details == ["", "15-Sep-2017 12:00 2.0M", "01-Jun-2026 00:00 9K"]


def test_credentials_come_from_the_named_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_source("clpds-ce2-dom")
    monkeypatch.delenv("LUNARCHIVE_CLPDS_CREDENTIALS", raising=False)
    assert source_credentials(spec) is None
    monkeypatch.setenv("LUNARCHIVE_CLPDS_CREDENTIALS", "Cookie: SESSION=x")
    assert source_credentials(spec) == ("Cookie", "SESSION=x")
    monkeypatch.setenv("LUNARCHIVE_CLPDS_CREDENTIALS", "just-a-token")
    with pytest.raises(ConfigurationError, match="expected 'Header-Name: value'"):
        source_credentials(spec)


def test_the_fetcher_spaces_requests_to_one_host_by_the_source_interval() -> None:
    now = [100.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    fetcher = Fetcher(HttpPolicy(min_interval_s=30), sleep=sleep, clock=lambda: now[0])
    try:
        for _ in range(3):
            fetcher._space("data.darts.isas.jaxa.jp")
        fetcher._space("pds.mcp.nasa.gov")  # another host is not held back
        now[0] += 45
        fetcher._space("data.darts.isas.jaxa.jp")
    finally:
        fetcher.close()
    assert waits == [30.0, 30.0]


def test_a_source_pace_reaches_its_fetcher(tmp_path: Path) -> None:
    run = HarvestRun.open(
        load_source("kaguya-tc-dtm"),
        FolderStore(tmp_path),
        settings=HarvestSettings(harvest_staging_dir=tmp_path / "staging", harvest_per_host=4),
        allow_local=False,
        timeout_s=10,
        max_bytes=1024,
    )
    try:
        policy = run.ctx.fetcher.policy
        assert (policy.min_interval_s, policy.per_host, policy.needs_login) == (30.0, 1, False)
    finally:
        run.close()

"""The ``harvest-samples`` flow on a folder store and on SeaweedFS: partner drops in ``inbox/``.

The real MoonDB fixtures go in as a partner drop with exact counts; generated drops break
every rule, and their reports name each error; the same drop twice changes nothing; a
corrected re-drop supersedes the rows it names and keeps the older version; embargoed rows
stay out of the public tables and release until the embargo is lifted.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter
from collections.abc import Callable
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from lunarchive.catalog.layout import LATEST_KEY
from lunarchive.catalog.store import Store, open_store
from lunarchive.flows.publish import publish
from lunarchive.flows.samples import harvest_samples
from lunarchive.processing.demo_archive import write_demo_drop
from lunarchive.schemas.release import ReleaseManifest, ReleasePointer
from tests._race import race

TODAY = date(2026, 11, 26)
CONTACT = {"name": "A. Technician", "email": "lab@partner.example"}


def put_drop(
    store: Store,
    partner: str,
    drop: str,
    files: dict[str, tuple[str, bytes]],
    /,
    **manifest: Any,
) -> dict[str, Any]:
    """Write a drop as a partner would: data files, then the manifest (with checksums);
    ``manifest`` overrides its fields."""
    prefix = f"inbox/{partner}/{drop}/"
    for path, (_, data) in files.items():
        store.write(prefix + path, data)
    document = {
        "partner": partner,
        "contact": CONTACT,
        "licence": "CC-BY-4.0",
        "files": [
            {"path": path, "kind": kind, "sha256": hashlib.sha256(data).hexdigest()}
            for path, (kind, data) in files.items()
        ],
    } | manifest
    store.write(prefix + "manifest.json", json.dumps(document, default=str).encode())
    return document


def run(store: Store, today: date = TODAY) -> dict[str, Any]:
    result: dict[str, Any] = harvest_samples(store.url, today=today)
    return result


def listing(store: Store) -> dict[str, str]:
    return {info.key: info.tag or str(info.size) for info in store.list()}


def report(store: Store, partner: str, drop: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(store.read(f"inbox/{partner}/{drop}/report.json"))
    return data


def report_rows(store: Store, partner: str, drop: str) -> list[dict[str, str]]:
    text = store.read(f"inbox/{partner}/{drop}/report.csv").decode()
    return list(csv.DictReader(io.StringIO(text)))


def table(store: Store, partner: str, name: str) -> list[dict[str, Any]]:
    latest = json.loads(store.read(f"tables/{partner}/latest.json"))
    key = f"tables/{partner}/{latest['version']}/{name}"
    rows: list[dict[str, Any]] = pq.read_table(io.BytesIO(store.read(key))).to_pylist()
    return rows


def csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


@pytest.fixture
def restricted(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    """The partner's restricted root: beside a folder store, its own prefix on S3."""
    if store.url.startswith("s3://"):
        monkeypatch.setenv("LUNARCHIVE_RESTRICTED_STORE_URL", store.url + "-restricted-{partner}")
    else:
        monkeypatch.delenv("LUNARCHIVE_RESTRICTED_STORE_URL", raising=False)
    return store


def restricted_store(store: Store, partner: str) -> Store:
    if store.url.startswith("s3://"):
        from lunarchive.flows._runtime import load_settings, store_for

        return store_for(load_settings(store_url=f"{store.url}-restricted-{partner}"))
    return open_store(store.url.rstrip("/") + f"/restricted/{partner}")


# ---------------------------------------------------------------------------------------------
# The real MoonDB fixtures as a partner drop


def test_moondb_drop_goes_in_with_exact_counts_and_twice_changes_nothing(
    store: Store, shared: Path
) -> None:
    moondb = shared / "fixtures" / "real" / "samples" / "moondb"
    files = {
        "rootspecimen.csv": ("specimens", (moondb / "rootspecimen.csv").read_bytes()),
        "MoonDB_0623.xls": ("moondb_submission", (moondb / "MoonDB_0623.xls").read_bytes()),
    }
    put_drop(store, "moondb", "0623", files, dataset="moondb:0623")
    result = run(store)
    (done,) = result["drops"]
    assert done["status"] == "accepted_with_rejections"
    assert done["counts"] == {
        "specimens": {"rows": 2435, "valid": 2416, "rejected": 19},
        "analyses": {"rows": 234, "valid": 234, "rejected": 0},
    }
    saved = report(store, "moondb", "0623")
    assert saved["counts"] == done["counts"]
    assert saved["warnings"] == []  # INAA gives no SiO2: no analysis is complete enough to sum
    errors = report_rows(store, "moondb", "0623")
    assert len(errors) == 19 and len({e["row"] for e in errors}) == 19
    assert all(e["file"] == "rootspecimen.csv" and e["rule"] and e["message"] for e in errors)
    first = errors[0]
    assert (first["row"], first["column"]) == ("49", "pristiny")
    # every rejected row is kept, with its cells and the rules it breaks
    kept = json.loads(store.read("quarantine/moondb/0623/rejected-rows.json"))
    assert sorted(r["row"] for r in kept["rows"]) == sorted(int(e["row"]) for e in errors)
    assert json.loads(store.read("quarantine/moondb/0623/reason.json"))["rule"] == "RowRejected"
    # the valid rows are in the table, and valid + rejected == rows
    specimens, analyses = (
        table(store, "moondb", "specimens.parquet"),
        table(store, "moondb", "analyses.parquet"),
    )
    assert (len(specimens), len(analyses)) == (2416, 234)
    assert len(specimens) + len(kept["rows"]) == 2435
    assert {r["source_drop"] for r in specimens} == {"moondb/0623"}
    assert Counter(a["technique"] for a in analyses) == {"INAA": 234}

    before = listing(store)
    again = run(store)
    assert again["drops"] == [] and listing(store) == before


# ---------------------------------------------------------------------------------------------
# Generated drops that break every rule

_SPECIMEN_HEADER = (
    "sample_id", "parent_id", "level", "mission", "station", "lat_deg", "lon_deg",
    "location_uncertainty_m", "material", "mass_g", "depth_top_cm", "depth_bottom_cm",
    "pristinity_pct", "pristinity_date",
)  # fmt: skip
GOOD_SPECIMEN = {
    "sample_id": "70017", "parent_id": "", "level": "generic", "mission": "Apollo 17",
    "station": "LM", "lat_deg": "20.1908", "lon_deg": "30.77168",
    "location_uncertainty_m": "50", "material": "rock", "mass_g": "2957",
    "depth_top_cm": "", "depth_bottom_cm": "", "pristinity_pct": "90",
    "pristinity_date": "2020-01-01",
}  # fmt: skip
# (changes to a good row, the column and rule each breaks), one rule per row
BROKEN_SPECIMENS = (
    ({"sample_id": "7001x"}, "sample_id", "sample_id_format"),
    ({"sample_id": "70018", "mission": "Apollo 18"}, "mission", "mission_vocabulary"),
    ({"sample_id": "70019", "mission": "Apollo 16"}, "mission", "mission_consistent"),
    ({"sample_id": "70035", "lat_deg": "123"}, "lat_deg", "latitude_range"),
    ({"sample_id": "70036", "lon_deg": "400"}, "lon_deg", "longitude_range"),
    ({"sample_id": "70037", "lon_deg": ""}, "lon_deg", "location_complete"),
    ({"sample_id": "70038", "mass_g": "-3"}, "mass_g", "mass_range"),
    ({"sample_id": "70039", "mass_g": "heavy"}, "mass_g", "number"),
    ({"sample_id": "70055", "depth_top_cm": "30", "depth_bottom_cm": "10"}, "depth_bottom_cm",
     "depth_order"),
    ({"sample_id": "70056", "pristinity_pct": "140"}, "pristinity_pct", "pristinity_range"),
    ({"sample_id": "70057", "material": "cheese"}, "material", "material_vocabulary"),
    ({"sample_id": "70075,3", "parent_id": "70017", "level": "split"}, "parent_id",
     "parent_consistent"),
    ({"sample_id": "70017,4", "parent_id": "70017", "level": "generic"}, "level",
     "level_consistent"),
    ({"sample_id": "70017"}, "sample_id", "specimen_unique"),
    ({"sample_id": ""}, "sample_id", "required"),
)  # fmt: skip
GOOD_ANALYSIS = {
    "sample_id": "70017", "material_analyzed": "whole_rock", "technique": "XRF",
    "analyte": "TiO2", "value": "12.97", "unit": "wt%", "uncertainty": "0.2",
    "uncertainty_type": "1SD", "doi": "",
}  # fmt: skip
BROKEN_ANALYSES = (
    ({"analyte": "Unobtainium"}, "analyte", "analyte_vocabulary"),
    ({"analyte": "MgO", "unit": "furlongs"}, "unit", "unit_vocabulary"),
    ({"analyte": "CaO", "technique": "guessing"}, "technique", "technique_vocabulary"),
    ({"analyte": "FeO", "sample_id": "12002"}, "sample_id", "sample_known"),
    ({"analyte": "Al2O3", "value": "lots"}, "value", "number"),
    ({"analyte": "SiO2", "value": "140"}, "value", "value_range"),
    ({"analyte": "K2O", "doi": "not-a-doi"}, "doi", "doi_format"),
    ({"analyte": "Na2O", "uncertainty_type": "vibes"}, "uncertainty_type",
     "uncertainty_type_vocabulary"),
)  # fmt: skip


def test_broken_rows_are_reported_one_by_one_and_quarantined(store: Store) -> None:
    specimens = [GOOD_SPECIMEN] + [GOOD_SPECIMEN | change for change, _, _ in BROKEN_SPECIMENS]
    analyses = [GOOD_ANALYSIS] + [GOOD_ANALYSIS | change for change, _, _ in BROKEN_ANALYSES]
    files = {
        "specimens.csv": ("specimens", csv_bytes(specimens)),
        "analyses.csv": ("analyses", csv_bytes(analyses)),
    }
    put_drop(store, "lab-b", "bad-rows", files)
    (done,) = run(store)["drops"]
    assert done["counts"] == {
        "specimens": {"rows": 16, "valid": 1, "rejected": 15},
        "analyses": {"rows": 9, "valid": 1, "rejected": 8},
    }
    rows = report_rows(store, "lab-b", "bad-rows")
    expected = {
        ("specimens.csv", str(row), column, rule)
        for row, (_, column, rule) in enumerate(BROKEN_SPECIMENS, start=3)
    } | {
        ("analyses.csv", str(row), column, rule)
        for row, (_, column, rule) in enumerate(BROKEN_ANALYSES, start=3)
    }
    assert {(r["file"], r["row"], r["column"], r["rule"]) for r in rows} == expected
    for row in rows:  # each names the value and says what is wrong in words
        assert row["message"].startswith(f"row {row['row']}, column {row['column']}")
    # the quarantine keeps every rejected row with its cells; the table only the good ones
    kept = json.loads(store.read("quarantine/lab-b/bad-rows/rejected-rows.json"))
    assert len(kept["rows"]) == 23
    assert [r["sample_id"] for r in table(store, "lab-b", "specimens.parquet")] == ["70017"]
    assert [(r["analyte"], r["value"]) for r in table(store, "lab-b", "analyses.parquet")] == [
        ("TiO2", 12.97)
    ]


def test_broken_drops_are_quarantined_whole_with_the_reason(store: Store) -> None:
    good = csv_bytes([GOOD_SPECIMEN])
    files = {"specimens.csv": ("specimens", good)}
    put_drop(store, "lab-c", "d1-checksum", files)
    store.write("inbox/lab-c/d1-checksum/specimens.csv", good + b"70018,,,,,,,,,,,,,\n")
    put_drop(store, "lab-c", "d2-unlisted", files)
    store.write("inbox/lab-c/d2-unlisted/extra.csv", good)
    put_drop(store, "lab-c", "d3-missing", files)
    store.delete("inbox/lab-c/d3-missing/specimens.csv")
    put_drop(store, "lab-c", "d4-partner", files, partner="lab-x")
    put_drop(store, "lab-c", "d5-traversal", files)
    manifest = json.loads(store.read("inbox/lab-c/d5-traversal/manifest.json"))
    manifest["files"][0]["path"] = "../lab-d/specimens.csv"
    store.write("inbox/lab-c/d5-traversal/manifest.json", json.dumps(manifest).encode())
    store.write("inbox/lab-c/d6-not-json/data.csv", good)
    store.write("inbox/lab-c/d6-not-json/manifest.json", b"{partner: lab-c")
    put_drop(store, "lab-c", "d7-no-contact", files, contact=None)
    put_drop(
        store,
        "lab-c",
        "d8-column",
        {"specimens.csv": ("specimens", b"sample_id,colour\n70017,grey\n")},
    )
    result = run(store)
    says = {
        "d1-checksum": "specimens.csv: SHA-256 is",
        "d2-unlisted": "extra.csv: not listed in the manifest",
        "d3-missing": "specimens.csv: listed in the manifest but missing",
        "d4-partner": "partner 'lab-x' is not the inbox's 'lab-c'",
        "d5-traversal": "files.0.path",
        "d6-not-json": "not readable JSON",
        "d7-no-contact": "contact",
    }
    statuses = {d["drop"]: d["status"] for d in result["drops"]}
    assert statuses == dict.fromkeys([*says, "d8-column"], "rejected")
    for drop, text in says.items():
        saved = report(store, "lab-c", drop)
        assert saved["status"] == "rejected" and text in saved["reason"], (drop, saved)
        reason = json.loads(store.read(f"quarantine/lab-c/{drop}/reason.json"))
        assert reason["rule"] == "DropRejected" and text in reason["reason"]
    # an unknown column refuses its file, and the report says which column
    (file,) = report(store, "lab-c", "d8-column")["files"]
    assert file["status"] == "rejected" and "'colour'" in file["reason"]
    # nothing of a bad drop reached a table
    assert not store.exists("tables/lab-c/latest.json")
    assert not any(k.startswith("tables/") for k in listing(store))


# ---------------------------------------------------------------------------------------------
# Supersession, history, embargo


def demo_drop(tmp_path: Path, partner: str) -> dict[str, tuple[str, bytes]]:
    folder = tmp_path / f"drop-{partner}"
    write_demo_drop(folder, partner=partner)
    return {
        "specimens.csv": ("specimens", (folder / "specimens.csv").read_bytes()),
        "analyses.csv": ("analyses", (folder / "analyses.csv").read_bytes()),
    }


def test_a_corrected_redrop_supersedes_the_rows_it_names_and_keeps_history(
    store: Store, tmp_path: Path
) -> None:
    files = demo_drop(tmp_path, "lab-e")
    put_drop(store, "lab-e", "2021-01", files, dataset="demo")
    run(store)
    first = json.loads(store.read("tables/lab-e/latest.json"))
    old_ti = {
        (r["sample_id"], r["technique"]): r["value"]
        for r in table(store, "lab-e", "analyses.parquet")
        if r["analyte"] == "TiO2"
    }
    assert old_ti[("70017", "XRF")] == 12.97
    # the correction: one specimen's mass, one analysis's value (whole rows, as first sent)
    specimen_rows = list(csv.DictReader(io.StringIO(files["specimens.csv"][1].decode())))
    analysis_rows = list(csv.DictReader(io.StringIO(files["analyses.csv"][1].decode())))
    (corrected_specimen,) = [
        r | {"mass_g": "2957.3"} for r in specimen_rows if r["sample_id"] == "70017"
    ]
    (corrected_analysis,) = [
        r | {"value": "12.87"}
        for r in analysis_rows
        if (r["sample_id"], r["technique"], r["analyte"]) == ("70017", "XRF", "TiO2")
    ]
    corrections = {
        "specimens.csv": ("specimens", csv_bytes([corrected_specimen])),
        "analyses.csv": ("analyses", csv_bytes([corrected_analysis])),
    }
    put_drop(store, "lab-e", "2021-02-fix", corrections, dataset="demo")
    (done,) = run(store)["drops"]
    assert done["status"] == "accepted"
    latest = json.loads(store.read("tables/lab-e/latest.json"))
    assert latest["previous"] == first["version"] != latest["version"]
    specimens = {r["sample_id"]: r for r in table(store, "lab-e", "specimens.parquet")}
    assert len(specimens) == 12  # superseded, not added
    assert specimens["70017"]["mass_g"] == 2957.3
    assert specimens["70017"]["source_drop"] == "lab-e/2021-02-fix"
    assert specimens["74220"]["source_drop"] == "lab-e/2021-01"
    analyses = table(store, "lab-e", "analyses.parquet")
    assert len(analyses) == 60
    ti = {(r["sample_id"], r["technique"]): r["value"] for r in analyses if r["analyte"] == "TiO2"}
    assert ti == old_ti | {("70017", "XRF"): 12.87}
    # history: the first version is still there, whole, and named as the previous one
    old = pq.read_table(
        io.BytesIO(store.read(f"tables/lab-e/{first['version']}/analyses.parquet"))
    ).to_pylist()
    assert len(old) == 60 and {a["value"] for a in old if a["analyte"] == "TiO2"} >= {12.97}
    assert [d["drop"] for d in latest["drops"]] == ["lab-e/2021-01", "lab-e/2021-02-fix"]


def release_keys(store: Store) -> tuple[str, list[str]]:
    pointer = ReleasePointer.model_validate_json(store.read(LATEST_KEY))
    manifest = ReleaseManifest.model_validate_json(store.read(pointer.manifest))
    return pointer.version, [entry.key for entry in manifest.objects]


def published_sample_ids(store: Store) -> set[str]:
    _, keys = release_keys(store)
    items = [json.loads(store.read(k)) for k in keys if k.count("/") == 4 and k.endswith(".json")]
    ids = {item["properties"]["sample_id"] for item in items}
    return ids | {s for item in items for s in item["properties"]["splits"]}


def test_embargoed_rows_stay_restricted_until_the_date_passes(
    restricted: Store, tmp_path: Path
) -> None:
    store = restricted
    open_rows = [GOOD_SPECIMEN | {"sample_id": "70215", "mass_g": "8110"}]
    put_drop(store, "lab-f", "a-open", {"specimens.csv": ("specimens", csv_bytes(open_rows))})
    secret = demo_drop(tmp_path, "lab-f")
    until = TODAY + timedelta(days=365)
    put_drop(store, "lab-f", "b-secret", secret, embargo_until=until.isoformat())
    result = run(store)
    assert [d["table"]["restricted"] for d in result["drops"]] == [False, True]
    held = restricted_store(store, "lab-f")
    # public table: only the open row; restricted table: the embargoed drop
    assert [r["sample_id"] for r in table(store, "lab-f", "specimens.parquet")] == ["70215"]
    assert len(table(held, "lab-f", "specimens.parquet")) == 12
    assert len(table(held, "lab-f", "analyses.parquet")) == 60
    publish({"cubes": [], "unrecognised": []}, "lab-f", store.url)
    assert published_sample_ids(store) == {"70215"}
    _, keys = release_keys(store)
    assert not any("restricted" in key for key in keys)
    version, _ = release_keys(store)
    for info in store.list(f"releases/{version}/"):  # nothing public names an embargoed sample
        assert b"74220" not in store.read(info.key), info.key
    if store.url.startswith("s3://"):  # its own root: the public listing never shows it
        assert not any(k.startswith("restricted") for k in listing(store))

    # the day before, nothing moves; on the day, the rows go public and leave the restricted root
    assert run(store, today=until - timedelta(days=1))["lifted"] == []
    assert run(store, today=until)["lifted"] == ["lab-f/b-secret"]
    public = {r["sample_id"] for r in table(store, "lab-f", "specimens.parquet")}
    assert len(public) == 13 and {"70215", "74220", "CE5C0400YJFM00505-G1"} <= public
    assert len(table(store, "lab-f", "analyses.parquet")) == 60
    assert table(held, "lab-f", "specimens.parquet") == []
    publish({"cubes": [], "unrecognised": []}, "lab-f", store.url)
    assert "74220" in published_sample_ids(store)
    assert run(store, today=until)["lifted"] == []  # lifted once


# ---------------------------------------------------------------------------------------------
# Oxide totals across the rows of one analysis


def oxide_analysis(spot: str, technique: str, oxides: dict[str, str]) -> list[dict[str, str]]:
    material = "mineral" if technique == "EPMA" else "whole_rock"
    return [
        {"sample_id": "70017", "material_analyzed": material, "spot_id": spot,
         "technique": technique, "analyte": analyte, "value": value, "unit": "wt%",
         "table_in_ref": spot}
        for analyte, value in oxides.items()
    ]  # fmt: skip


def test_oxide_totals_warn_or_refuse_and_the_report_says_why(store: Store) -> None:
    analyses = [
        # rows 2-7: a pyroxene spot adding up to 98.3 wt% (EPMA window 97-101.5): fine
        *oxide_analysis("px1", "EPMA", {"SiO2": "50.1", "TiO2": "1.2", "Al2O3": "2.0",
                                        "FeO": "18.0", "MgO": "15.0", "CaO": "12.0"}),
        # rows 8-12: 86 wt%: kept, with a warning
        *oxide_analysis("px2", "EPMA", {"SiO2": "45.0", "Al2O3": "2.0", "FeO": "15.0",
                                        "MgO": "14.0", "CaO": "10.0"}),
        # rows 13-17: 113 wt%, more than the whole sample: refused
        *oxide_analysis("wr1", "XRF", {"SiO2": "47.8", "Al2O3": "27.0", "FeO": "17.8",
                                       "MgO": "10.0", "CaO": "10.4"}),
        # rows 18-20: INAA without SiO2, a partial analysis: not summed
        *oxide_analysis("wr2", "INAA", {"FeO": "0.2", "CaO": "18.0", "Na2O": "0.4"}),
    ]  # fmt: skip
    files = {
        "specimens.csv": ("specimens", csv_bytes([GOOD_SPECIMEN])),
        "analyses.csv": ("analyses", csv_bytes(analyses)),
    }
    put_drop(store, "lab-o", "totals", files)
    (done,) = run(store)["drops"]
    assert done["status"] == "accepted_with_rejections"
    assert done["counts"]["analyses"] == {"rows": 19, "valid": 14, "rejected": 5}
    saved = report(store, "lab-o", "totals")
    (warning,) = saved["warnings"]
    assert (warning["file"], warning["rows"], warning["rule"], warning["value"]) == (
        "analyses.csv", [8, 9, 10, 11, 12], "oxide_total", "86.00 wt%",
    )  # fmt: skip
    assert warning["message"].startswith(
        "rows 8, 9, 10, 11, 12: the major oxides of sample 70017 (mineral, table px2) add up "
        "to 86.00 wt% (SiO2 45 + Al2O3 2 + FeO 15 + MgO 14 + CaO 10); a complete EPMA "
        "analysis adds up to 97-101.5 wt%. The rows are kept"
    )
    assert [(e["row"], e["rule"]) for e in saved["errors"]] == [
        (n, "oxide_total") for n in range(13, 18)
    ]
    assert all("113.00 wt%" in e["message"] for e in saved["errors"])
    # the spreadsheet names both: a line per refused row, a line for the warning
    lines = report_rows(store, "lab-o", "totals")
    assert [(r["row"], r["rule"]) for r in lines] == [
        *((str(n), "oxide_total") for n in range(13, 18)),
        ("8, 9, 10, 11, 12", "oxide_total"),
    ]
    assert lines[-1]["message"].startswith("WARNING (rows kept): rows 8, 9, 10, 11, 12: ")
    kept = json.loads(store.read("quarantine/lab-o/totals/rejected-rows.json"))
    assert sorted(r["row"] for r in kept["rows"]) == list(range(13, 18))
    in_table = table(store, "lab-o", "analyses.parquet")
    assert Counter(r["table_in_ref"] for r in in_table) == {"px1": 6, "px2": 5, "wr2": 3}


# ---------------------------------------------------------------------------------------------
# Embargo lift: rows take their place by when their drop came, not by when the embargo ends


def test_an_embargo_lift_never_overwrites_a_newer_public_row(restricted: Store) -> None:
    store = restricted
    until = TODAY + timedelta(days=30)

    def specimens(*rows: tuple[str, str]) -> dict[str, tuple[str, bytes]]:
        data = csv_bytes([GOOD_SPECIMEN | {"sample_id": i, "mass_g": m} for i, m in rows])
        return {"specimens.csv": ("specimens", data)}

    # 1: an embargoed drop says 70017 weighs 100 g (and 70215 8110 g)
    put_drop(store, "lab-g", "a-secret", specimens(("70017", "100"), ("70215", "8110")),
             embargo_until=until.isoformat())  # fmt: skip
    run(store)
    # 2: later, a public drop corrects 70017 to 2957 g; and 74220 is first published at 10 g
    put_drop(store, "lab-g", "b-open", specimens(("70017", "2957"), ("74220", "10")))
    run(store)
    # 3: later still, an embargoed drop corrects 74220 to 12 g
    put_drop(store, "lab-g", "c-secret", specimens(("74220", "12")),
             embargo_until=until.isoformat())  # fmt: skip
    run(store)
    assert {r["sample_id"]: r["mass_g"] for r in table(store, "lab-g", "specimens.parquet")} == {
        "70017": 2957.0, "74220": 10.0,
    }  # fmt: skip

    assert run(store, today=until)["lifted"] == ["lab-g/a-secret", "lab-g/c-secret"]
    public = {r["sample_id"]: r for r in table(store, "lab-g", "specimens.parquet")}
    assert {i: (r["mass_g"], r["source_drop"]) for i, r in public.items()} == {
        "70017": (2957.0, "lab-g/b-open"),  # newer than the lifted row: stays
        "70215": (8110.0, "lab-g/a-secret"),
        "74220": (12.0, "lab-g/c-secret"),  # the lifted row is the newer: it supersedes
    }
    latest = json.loads(store.read("tables/lab-g/latest.json"))
    assert [d["drop"] for d in latest["drops"]] == [
        "lab-g/b-open", "lab-g/a-secret", "lab-g/c-secret",
    ]  # fmt: skip
    received = {d["drop"]: d["received"] for d in latest["drops"]}
    assert received["lab-g/a-secret"] < received["lab-g/b-open"] < received["lab-g/c-secret"]
    assert table(restricted_store(store, "lab-g"), "lab-g", "specimens.parquet") == []


# ---------------------------------------------------------------------------------------------
# Two runs at once: both drops end up in the table


def specimen_drop(ids: list[str]) -> dict[str, tuple[str, bytes]]:
    rows = [GOOD_SPECIMEN | {"sample_id": i} for i in ids]
    return {"specimens.csv": ("specimens", csv_bytes(rows))}


def test_two_concurrent_runs_keep_both_drops(store: Store) -> None:
    first, second = ["70017", "70018", "70019"], ["74220", "74235"]
    put_drop(store, "lab-r", "d1", specimen_drop(first))
    put_drop(store, "lab-r", "d2", specimen_drop(second))
    results: dict[str, dict[str, Any]] = {}

    def contender(name: str) -> Callable[[], None]:
        def go() -> None:
            results[name] = run(store)

        return go

    outcome = race({"one": contender("one"), "two": contender("two")})
    assert outcome == {"one": "won", "two": "won"}
    assert all(r["waiting"] == [] for r in results.values())
    ids = [r["sample_id"] for r in table(store, "lab-r", "specimens.parquet")]
    assert sorted(ids) == sorted(first + second)  # nothing lost, nothing twice
    latest = json.loads(store.read("tables/lab-r/latest.json"))
    assert sorted(d["drop"] for d in latest["drops"]) == ["lab-r/d1", "lab-r/d2"]
    for drop in ("d1", "d2"):
        assert report(store, "lab-r", drop)["status"] == "accepted"
    assert run(store)["drops"] == []


def test_two_drops_merged_at_once_both_reach_the_table(store: Store) -> None:
    """Each contender merges a different drop into the same table: one of them must re-read
    the other's version and merge again."""
    from lunarchive.flows._runtime import load_settings
    from lunarchive.flows.samples import process_drop

    drops = {f"d{n}": [f"7{n}{k:03d}" for k in range(1, 4)] for n in range(1, 5)}  # 71001.. 74003
    for drop, ids in drops.items():
        put_drop(store, "lab-s", drop, specimen_drop(ids))
    settings = load_settings(store_url=store.url)
    outcome = race(
        {drop: partial(process_drop.fn, settings, "lab-s", drop, TODAY) for drop in drops}
    )
    assert outcome == dict.fromkeys(drops, "won")
    ids = [r["sample_id"] for r in table(store, "lab-s", "specimens.parquet")]
    assert sorted(ids) == sorted(i for group in drops.values() for i in group)
    latest = json.loads(store.read("tables/lab-s/latest.json"))
    assert sorted(d["drop"] for d in latest["drops"]) == [f"lab-s/{d}" for d in sorted(drops)]
    assert latest["counts"] == {"specimens": 12, "analyses": 0}
    # the history is a chain of four versions, each one drop more than the one before
    chain, version = [], latest["version"]
    while version is not None:
        record = json.loads(store.read(f"tables/lab-s/{version}/table.json"))
        chain.append(record["counts"]["specimens"])
        version = record["previous"]
    assert chain == [12, 9, 6, 3]


# ---------------------------------------------------------------------------------------------
# Lunar meteorites: catalogued by when they were found


def test_lunar_meteorites_are_catalogued_by_find_date(store: Store) -> None:
    meteorite = {"mission": "Lunar meteorite", "material": "rock", "found_year": "",
                 "found_date": "", "lat_deg": "", "lon_deg": "", "mass_g": "100"}  # fmt: skip
    rows = [
        GOOD_SPECIMEN | {"found_year": "", "found_date": ""},
        GOOD_SPECIMEN | meteorite | {"sample_id": "ALHA81005", "found_date": "1982-01-18"},
        GOOD_SPECIMEN | meteorite | {"sample_id": "NWA 032", "found_year": "1999"},
        GOOD_SPECIMEN | meteorite | {"sample_id": "Dhofar 025"},  # says not when: refused
    ]
    for row in rows[1:]:
        row.update(station="", location_uncertainty_m="", pristinity_date="")
    put_drop(store, "lab-m", "finds", {"specimens.csv": ("specimens", csv_bytes(rows))})
    (done,) = run(store)["drops"]
    assert done["counts"]["specimens"] == {"rows": 4, "valid": 3, "rejected": 1}
    (error,) = report(store, "lab-m", "finds")["errors"]
    assert (error["row"], error["column"], error["rule"]) == (5, "found_year", "found_required")

    result = publish({"cubes": [], "unrecognised": []}, "lab-m", store.url)
    assert result["uncatalogued"] == [] and result["samples"] == 3
    _, keys = release_keys(store)
    collection = json.loads(store.read(next(k for k in keys if k.endswith(
        "/lunar-meteorites/collection.json"))))  # fmt: skip
    assert collection["extent"]["spatial"]["bbox"] == [[-180.0, -90.0, 180.0, 90.0]]
    assert collection["extent"]["temporal"]["interval"] == [
        ["1982-01-18T00:00:00Z", "1999-12-31T23:59:59Z"]
    ]
    items = {
        item["properties"]["sample_id"]: item
        for item in (json.loads(store.read(k)) for k in keys if "/lunar-meteorites/" in k)
        if item.get("type") == "Feature"
    }
    assert sorted(items) == ["ALHA81005", "NWA 032"]
    found = items["ALHA81005"]["properties"]
    assert (found["datetime"], found["found_date"], found["ssys:targets"]) == (
        "1982-01-18T00:00:00Z", "1982-01-18", ["Moon"],
    )  # fmt: skip
    year = items["NWA 032"]["properties"]
    assert (year["datetime"], year["start_datetime"], year["end_datetime"]) == (
        None, "1999-01-01T00:00:00Z", "1999-12-31T23:59:59Z",
    )  # fmt: skip
    for item in items.values():  # somewhere on the Moon: the whole Moon, and it says why
        assert item["geometry"]["coordinates"] == [
            [[-180.0, -90.0], [180.0, -90.0], [180.0, 90.0], [-180.0, 90.0], [-180.0, -90.0]]
        ]
        assert item["bbox"] == [-180.0, -90.0, 180.0, 90.0]
        assert item["properties"]["location_source"] == "unknown_launch_site"
        assert item["properties"]["mission"] == "Lunar meteorite"
    assert published_sample_ids(store) == {"70017", "ALHA81005", "NWA 032"}

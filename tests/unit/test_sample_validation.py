"""Partner sample tables: the real MoonDB fixtures, the demo, and generated broken tables.

Counts are derived from the files themselves (the csv module, xlrd) and then asserted exactly;
every rejected row names file, row, column, value and rule.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from collections import Counter
from datetime import date, datetime
from pathlib import Path
from typing import Any

import geopandas as gpd
import jsonschema
import openpyxl  # type: ignore[import-untyped]
import pyarrow.parquet as pq
import pytest
import xlrd  # type: ignore[import-untyped]

from lunarchive.processing import samples
from lunarchive.processing.crs import MOON_RADIUS_M, assert_lunar
from lunarchive.processing.demo_archive import write_demo_archive
from lunarchive.processing.samples import (
    SourceRow,
    analyses_from_parquet,
    analyses_parquet_bytes,
    analyses_to_parquet,
    check_drop_files,
    check_oxide_totals,
    merge_drop_entries,
    merge_rows,
    normalise_value,
    oxide_totals,
    read_csv_rows,
    read_drop_manifest,
    read_json_rows,
    read_moondb_submission,
    read_table,
    read_xlsx_rows,
    rejected_rows,
    specimens_from_geoparquet,
    specimens_geoparquet_bytes,
    specimens_to_geoparquet,
    validate_analyses,
    validate_specimens,
)
from lunarchive.schemas.errors import ProductRejected
from lunarchive.schemas.samples import Analysis, RowError, Specimen, contract

DROP = "inbox/moondb/0623"


@pytest.fixture(scope="module")
def moondb(shared: Path) -> Path:
    folder = shared / "fixtures" / "real" / "samples" / "moondb"
    assert folder.is_dir(), f"{folder} is missing"
    return folder


def _dicts(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _without_source(records: list[Any]) -> list[dict[str, Any]]:
    return [record.model_dump(exclude={"source"}) for record in records]


# ---------------------------------------------------------------------------------------------
# The real MoonDB fixtures


@pytest.fixture(scope="module")
def root_csv(moondb: Path) -> tuple[list[Specimen], list[RowError]]:
    data = (moondb / "rootspecimen.csv").read_bytes()
    return validate_specimens(read_table(data, file="rootspecimen.csv"), source=DROP)


def test_rootspecimen_csv_counts(
    moondb: Path, root_csv: tuple[list[Specimen], list[RowError]]
) -> None:
    rows = _dicts(moondb / "rootspecimen.csv")
    assert len(rows) == 2435
    # Independently: the catalogue's pristinity is a percentage, and 19 rows exceed 100.
    over = {
        number: row for number, row in enumerate(rows, start=2)
        if row["pristiny"] and float(row["pristiny"]) > 100
    }  # fmt: skip
    assert len(over) == 19
    valid, rejected = root_csv
    assert (len(valid), rejected_rows(rejected), len(rejected)) == (2416, 19, 19)
    assert {(e.row, e.column, e.value, e.rule) for e in rejected} == {
        (number, "pristiny", row["pristiny"], "pristinity_range") for number, row in over.items()
    }
    first = min(rejected, key=lambda e: e.row)
    assert (first.file, first.sheet, first.row) == ("rootspecimen.csv", None, 49)
    assert first.message == (
        "row 49, column pristiny: 112.5 is not a percentage (must be between 0 and 100)"
    )
    assert {s.sample_id for s in valid} == {r["sample_num"] for r in rows} - {
        r["sample_num"] for r in over.values()
    }


def test_rootspecimen_values_are_mapped(
    moondb: Path, root_csv: tuple[list[Specimen], list[RowError]]
) -> None:
    rows = {row["sample_num"]: row for row in _dicts(moondb / "rootspecimen.csv")}
    valid = {s.sample_id: s for s in root_csv[0]}
    s = valid["70017"]
    assert (s.mission, s.material, s.mass_g, s.level, s.parent_id) == (
        "Apollo 17", "rock", float(rows["70017"]["weight"]), "generic", None,
    )  # fmt: skip
    assert s.source.model_dump() == {
        "drop": DROP, "file": "rootspecimen.csv", "sheet": None,
        "row": list(rows).index("70017") + 2,
    }  # fmt: skip
    assert valid["10001"].pristinity_date == date(2008, 1, 10)
    assert valid["10001"].comment == "?RESIDUE"
    luna = valid["L1608"]
    assert (luna.mission, luna.collection_method, luna.collection_method_code) == (
        "Luna 16", "drill_core", "DDC_SSSR",
    )  # fmt: skip
    assert (luna.material, luna.landmark) == ("core", "MARE FECUNDITATIS")
    methods = Counter(s.collection_method for s in valid.values())
    codes = Counter(r["sampling_technique"] for r in rows.values() if r["sample_num"] in valid)
    assert methods["rake"] == codes["RAKE_NASA"]
    assert methods["drive_tube"] == codes["DDTC_NASA"] + codes["SDTC_NASA"]
    assert methods["drill_core"] == codes["DDC_NASA"] + codes["DDC_SSSR"]
    materials = Counter(s.material for s in valid.values())
    sources = Counter(r["material"] for r in rows.values() if r["sample_num"] in valid)
    assert materials == {"rock": sources["ROCK"], "soil": sources["SOIL"], "core": sources["COM"]}
    assert all(s.location is None for s in valid.values())  # the catalogue gives no positions
    validator = jsonschema.Draft202012Validator(contract("specimen"))
    for specimen in valid.values():
        validator.validate(specimen.model_dump(mode="json"))


def test_rootspecimen_xls_reads_as_the_csv(
    moondb: Path, root_csv: tuple[list[Specimen], list[RowError]]
) -> None:
    book = xlrd.open_workbook(str(moondb / "rootspecimen.xls"))
    assert book.sheet_by_name("SPECIMENS").nrows == 2436  # header + 2435
    rows = read_table((moondb / "rootspecimen.xls").read_bytes(), file="rootspecimen.xls")
    assert len(rows) == 2435 and rows[0].sheet == "SPECIMENS"
    valid, rejected = validate_specimens(rows, source=DROP)
    assert (len(valid), rejected_rows(rejected)) == (2416, 19)
    assert _without_source(valid) == _without_source(root_csv[0])
    assert [(e.row, e.column, e.rule) for e in rejected] == [
        (e.row, e.column, e.rule) for e in root_csv[1]
    ]
    assert str(rejected[0]).startswith("rootspecimen.xls [SPECIMENS], row 49, column pristiny:")


@pytest.fixture(scope="module")
def long_csv(moondb: Path) -> tuple[list[Analysis], list[RowError]]:
    data = (moondb / "moondb_0623_rocks_long.csv").read_bytes()
    rows = read_table(data, file="moondb_0623_rocks_long.csv")
    return validate_analyses(rows, source=DROP, dataset="moondb:0623")


def test_moondb_long_csv_counts_and_values(
    moondb: Path, long_csv: tuple[list[Analysis], list[RowError]]
) -> None:
    rows = _dicts(moondb / "moondb_0623_rocks_long.csv")
    assert len(rows) == 234
    valid, rejected = long_csv
    assert (len(valid), rejected) == (234, [])
    assert len({a.analysis_id for a in valid}) == 234
    assert Counter(a.unit for a in valid) == Counter(r["unit"] for r in rows)
    assert {a.sample_id for a in valid} == {r["specimen"] for r in rows}
    for analysis, row in zip(valid, rows, strict=True):
        # ppm and wt% are already canonical here: the values pass through unchanged.
        assert analysis.value == analysis.value_original == float(row["value"])
        assert analysis.unit == analysis.unit_original == row["unit"]
        expected = float(row["uncertainty"]) if row["uncertainty"] else None
        assert analysis.uncertainty == expected
        assert analysis.uncertainty_type == ("unknown" if expected is not None else None)
        assert (analysis.technique, analysis.material_analyzed) == ("INAA", "whole_rock")
        assert analysis.citation is not None
        assert analysis.citation.table_title == "COMPOSITIONS OF FAN AND RELATED MATERIALS"
    first = valid[0]
    assert (first.sample_id, first.analyte, first.value, first.uncertainty) == (
        "15415,177", "La", 0.13, 0.004,
    )  # fmt: skip
    validator = jsonschema.Draft202012Validator(contract("analysis"))
    for analysis in valid:
        validator.validate(analysis.model_dump(mode="json"))


def test_moondb_submission_xls_gives_the_long_csv(
    moondb: Path, long_csv: tuple[list[Analysis], list[RowError]]
) -> None:
    book = xlrd.open_workbook(str(moondb / "MoonDB_0623.xls"))
    rocks = book.sheet_by_name("ROCKS")
    analyte_columns = range(7, 29)  # H..AC: La .. MnO
    data_rows = [r for r in range(8, rocks.nrows) if rocks.cell_value(r, 2) not in ("", -1.0)]
    cells = sum(1 for r in data_rows for c in analyte_columns if rocks.cell_value(r, c) != "")
    assert (len(data_rows), cells) == (13, 234)

    rows = read_moondb_submission((moondb / "MoonDB_0623.xls").read_bytes(), file="MoonDB_0623.xls")
    assert len(rows) == 234
    assert {(row.sheet, row.row) for row in rows} == {("ROCKS", r + 1) for r in data_rows}
    valid, rejected = validate_analyses(rows, source=DROP, dataset="moondb:0623")
    assert (len(valid), rejected) == (234, [])

    def key(a: Analysis) -> tuple[Any, ...]:
        return (a.analysis_id, a.sample_id, a.analyte, a.value, a.unit, a.uncertainty)

    # The same measurements get the same ids, whichever form the partner sent.
    assert sorted(map(key, valid)) == sorted(map(key, long_csv[0]))
    paired = [a for a in valid if a.value_text == "0.130, 0.004"]
    assert [(a.sample_id, a.analyte, a.value, a.uncertainty) for a in paired] == [
        ("15415,177", "La", 0.13, 0.004)
    ]
    assert paired[0].source.row == 9


def test_analyses_resolve_to_catalogue_specimens(
    root_csv: tuple[list[Specimen], list[RowError]], moondb: Path
) -> None:
    known = {s.sample_id for s in root_csv[0]}
    rows = read_moondb_submission((moondb / "MoonDB_0623.xls").read_bytes(), file="MoonDB_0623.xls")
    valid, rejected = validate_analyses(rows, source=DROP, known_samples=known)
    assert (len(valid), rejected) == (234, [])  # 15415,177 -> 15415 and so on
    valid, rejected = validate_analyses(rows, source=DROP, known_samples=known - {"60025"})
    gone = Counter(a.sample_id for a in validate_analyses(rows, source=DROP)[0])
    lost = sum(n for sample, n in gone.items() if sample.startswith("60025,"))
    # One error per long row; they lie on the five spreadsheet rows of 60025's splits.
    assert (len(valid), len(rejected), rejected_rows(rejected)) == (234 - lost, lost, 5)
    error = rejected[0]
    assert (error.file, error.sheet, error.row, error.rule) == (
        "MoonDB_0623.xls", "ROCKS", 11, "sample_known",
    )  # fmt: skip
    assert error.column == "SAMPLE NAME (column C)"
    assert error.message == (
        "row 11, column SAMPLE NAME (column C): 60025,26 is not a specimen we hold "
        "(nor is any parent of it)"
    )


# ---------------------------------------------------------------------------------------------
# The demo archive's specimens (the current pipeline's table)


def test_demo_specimens_validate_fully(tmp_path: Path) -> None:
    write_demo_archive(tmp_path)
    data = (tmp_path / "samples" / "specimens.csv").read_bytes()
    valid, rejected = validate_specimens(read_csv_rows(data, file="specimens.csv"), source="demo")
    # independently, with the csv module: the same rows, the same numbers
    records = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    assert (len(valid), rejected) == (len(records), []) and len(valid) == 12
    for specimen, record in zip(valid, records, strict=True):
        assert specimen.sample_id == record["sample_id"]
        assert specimen.location is not None
        lon = float(record["lon_deg"])
        assert (specimen.location.lat_deg, specimen.location.lon_deg) == (
            float(record["lat_deg"]), lon - 360 if lon > 180 else lon,
        )  # fmt: skip
        assert specimen.mass_g == float(record["mass_g"])
        assert specimen.mission == record["mission"]
    grain = valid[-1]
    assert (grain.sample_id, grain.parent_id, grain.level) == (
        "CE5C0400YJFM00505-G1", "CE5C0400YJFM00505", "grain",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Generated broken tables: one rule per row

SPECIMEN_HEADER = [
    "sample_id", "parent_id", "level", "mission", "curator", "station", "lat_deg", "lon_deg",
    "location_uncertainty_m", "location_frame", "collection_method", "material",
    "classification_scheme", "mass_g", "mass_kind", "depth_top_cm", "depth_bottom_cm",
    "pristinity_pct", "pristinity_date", "description",
]  # fmt: skip
GOOD_SPECIMEN = {
    "sample_id": "70017", "mission": "Apollo 17", "lat_deg": "20.1908", "lon_deg": "30.77168",
    "location_uncertainty_m": "50", "material": "rock", "mass_g": "2957",
}  # fmt: skip
# (changes to a good row, column named in the error, value named, rule)
BAD_SPECIMENS: list[tuple[dict[str, str], str, str | None, str]] = [
    ({"sample_id": ""}, "sample_id", None, "required"),
    ({"sample_id": "7001"}, "sample_id", "7001", "sample_id_format"),
    ({"sample_id": "ABC123"}, "mission", "Apollo 17", "mission_consistent"),
    ({"parent_id": "70017,,1"}, "parent_id", "70017,,1", "parent_id_format"),
    ({"sample_id": "70017,5", "parent_id": "15415"}, "parent_id", "15415", "parent_consistent"),
    ({"level": "chunk"}, "level", "chunk", "level_vocabulary"),
    ({"sample_id": "70017,6", "level": "generic"}, "level", "generic", "level_consistent"),
    ({"mission": "Apollo 18"}, "mission", "Apollo 18", "mission_vocabulary"),
    ({"mission": "Apollo 15"}, "mission", "Apollo 15", "mission_consistent"),
    ({"sample_id": "NWA 032", "mission": ""}, "mission", None, "required"),
    ({"curator": "Houston"}, "curator", "Houston", "curator_vocabulary"),
    ({"lat_deg": "123.0"}, "lat_deg", "123.0", "latitude_range"),
    ({"lat_deg": "north"}, "lat_deg", "north", "number"),
    ({"lat_deg": "20,19"}, "lat_deg", "20,19", "number"),
    ({"lon_deg": "400"}, "lon_deg", "400", "longitude_range"),
    ({"lon_deg": ""}, "lon_deg", None, "location_complete"),
    ({"lat_deg": "", "lon_deg": ""}, "location_uncertainty_m", "50", "location_complete"),
    ({"location_uncertainty_m": "-5"}, "location_uncertainty_m", "-5", "uncertainty_range"),
    ({"location_frame": "EPSG:4326"}, "location_frame", "EPSG:4326", "location_frame"),
    ({"collection_method": "shovel"}, "collection_method", "shovel",
     "collection_method_vocabulary"),
    ({"material": "cheese"}, "material", "cheese", "material_vocabulary"),
    ({"classification_scheme": "vibes"}, "classification_scheme", "vibes",
     "classification_scheme_vocabulary"),
    ({"mass_g": "-1"}, "mass_g", "-1", "mass_range"),
    ({"mass_kind": "estimated"}, "mass_kind", "estimated", "mass_kind_vocabulary"),
    ({"depth_top_cm": "10", "depth_bottom_cm": "2"}, "depth_bottom_cm", "2", "depth_order"),
    ({"depth_top_cm": "10"}, "depth_bottom_cm", None, "depth_complete"),
    ({"depth_top_cm": "-3", "depth_bottom_cm": "5"}, "depth_top_cm", "-3", "depth_range"),
    ({"pristinity_pct": "112.5"}, "pristinity_pct", "112.5", "pristinity_range"),
    ({"pristinity_date": "10/01/2008"}, "pristinity_date", "10/01/2008", "date_format"),
    ({"description": "x" * 4001}, "description", "x" * 4001, "text_length"),
]  # fmt: skip
SPECIMEN_RULES = {
    "required", "sample_id_format", "parent_id_format", "parent_consistent", "level_vocabulary",
    "level_consistent", "mission_vocabulary", "mission_consistent", "curator_vocabulary",
    "latitude_range", "number", "longitude_range", "location_complete", "uncertainty_range",
    "location_frame", "collection_method_vocabulary", "material_vocabulary",
    "classification_scheme_vocabulary", "mass_range", "mass_kind_vocabulary", "depth_order",
    "depth_complete", "depth_range", "pristinity_range", "date_format", "text_length",
    "specimen_unique", "extra_cells",
}  # fmt: skip


def _csv(header: list[str], rows: list[dict[str, str]], extra: dict[int, list[str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for index, row in enumerate(rows):
        writer.writerow([row.get(column, "") for column in header] + extra.get(index, []))
    return out.getvalue().encode("utf-8")


def _check_errors(
    errors: list[RowError], file: str, expected: dict[int, tuple[str, str | None, str]]
) -> None:
    found = {error.row: error for error in errors}
    assert len(found) == len(errors), "one broken rule per generated row"
    assert set(found) == set(expected)
    for row, (column, value, rule) in expected.items():
        error = found[row]
        assert (error.file, error.row, error.column, error.value, error.rule) == (
            file, row, column, value, rule,
        ), error  # fmt: skip
        assert error.message.startswith(f"row {row}, column {column}: "), error.message
        assert len(error.message) < 400


def test_broken_specimen_table_names_every_rule() -> None:
    rows = [GOOD_SPECIMEN | {"sample_id": "70019"}]
    expected: dict[int, tuple[str, str | None, str]] = {}
    for index, (changes, column, value, rule) in enumerate(BAD_SPECIMENS):
        rows.append(GOOD_SPECIMEN | {"sample_id": f"7{index + 1000:04d}"} | changes)
        expected[len(rows) + 1] = (column, value, rule)
    rows.append(GOOD_SPECIMEN | {"sample_id": "70019"})  # repeats row 2
    expected[len(rows) + 1] = ("sample_id", "70019", "specimen_unique")
    rows.append(GOOD_SPECIMEN | {"sample_id": "70020"})
    extra = {len(rows) - 1: ["surplus"]}
    expected[len(rows) + 1] = ("(cells beyond the header)", "surplus", "extra_cells")
    rows.append(GOOD_SPECIMEN | {"sample_id": "70021", "lon_deg": "300.5"})

    table = read_csv_rows(_csv(SPECIMEN_HEADER, rows, extra), file="broken.csv")
    valid, rejected = validate_specimens(table, source="inbox/test/broken")
    assert len(valid) + rejected_rows(rejected) == len(table) == len(rows)
    assert [s.sample_id for s in valid] == ["70019", "70021"]
    _check_errors(rejected, "broken.csv", expected)
    assert {e.rule for e in rejected} == SPECIMEN_RULES
    lat = next(e for e in rejected if e.rule == "latitude_range")
    assert lat.message == (
        f"row {lat.row}, column lat_deg: 123.0 is not a latitude (must be between -90 and 90)"
    )
    comma = next(e for e in rejected if e.value == "20,19")
    assert "write decimals with a point: 20.19" in comma.message
    assert valid[1].location is not None and valid[1].location.lon_deg == -59.5


@pytest.mark.parametrize(
    ("given", "normalised"),
    [("300.5", -59.5), ("360", 0.0), ("180", 180.0), ("180.25", -179.75), ("-180", -180.0),
     ("0", 0.0), ("359.99999", -0.00001), ("-12.5", -12.5)],
)  # fmt: skip
def test_longitudes_0_360_become_minus_180_180(given: str, normalised: float) -> None:
    row = SourceRow(file="t.csv", row=2, cells=GOOD_SPECIMEN | {"lon_deg": given})
    (specimen,), rejected = validate_specimens([row], source="t")
    assert rejected == []
    assert specimen.location is not None and specimen.location.lon_deg == normalised


GOOD_ANALYSIS = {
    "sample_id": "15415,177", "sample": "15415", "material": "WR", "technique": "INAA",
    "analyte": "La", "value": "0.13", "unit": "ppm",
}  # fmt: skip
ANALYSIS_HEADER = [
    "analysis_id", "analysis_no", "sample_id", "sample", "material", "rim_core", "technique",
    "analyte", "value", "unit", "uncertainty", "uncertainty_type", "detection", "replicates",
    "calc_avge", "doi",
]  # fmt: skip
BAD_ANALYSES: list[tuple[dict[str, str], str, str | None, str]] = [
    ({"analysis_id": "bad id!"}, "analysis_id", "bad id!", "analysis_id_format"),
    ({"sample_id": ""}, "sample_id", None, "required"),
    ({"sample_id": "xyz"}, "sample_id", "xyz", "sample_id_format"),
    ({"sample": "15416"}, "sample", "15416", "parent_consistent"),
    ({"material": "rock soup"}, "material", "rock soup", "material_vocabulary"),
    ({"rim_core": "edge"}, "rim_core", "edge", "rim_core_vocabulary"),
    ({"technique": "divination"}, "technique", "divination", "technique_vocabulary"),
    ({"analyte": "LA"}, "analyte", "LA", "analyte_vocabulary"),
    ({"value": "n.d."}, "value", "n.d.", "number"),
    ({"unit": "furlongs"}, "unit", "furlongs", "unit_vocabulary"),
    ({"unit": "Ma"}, "unit", "Ma", "unit_analyte"),
    ({"value": "-0.5"}, "value", "-0.5", "value_range"),
    ({"analyte": "TiO2", "value": "120", "unit": "wt%"}, "value", "120", "value_range"),
    ({"analyte": "age_ArAr", "value": "5.1", "unit": "Ga"}, "value", "5.1", "age_range"),
    ({"uncertainty": "-0.1"}, "uncertainty", "-0.1", "uncertainty_range"),
    ({"value": "0.13, 0.004", "uncertainty": "0.004"}, "value", "0.13, 0.004", "uncertainty_twice"),
    ({"uncertainty": "0.004", "uncertainty_type": "3SD"}, "uncertainty_type", "3SD",
     "uncertainty_type_vocabulary"),
    ({"detection": "maybe"}, "detection", "maybe", "detection_vocabulary"),
    ({"replicates": "2.5"}, "replicates", "2.5", "replicates_integer"),
    ({"calc_avge": "X"}, "calc_avge", "X", "is_average_vocabulary"),
    ({"doi": "not a doi"}, "doi", "not a doi", "doi_format"),
]  # fmt: skip


def test_broken_analysis_table_names_every_rule() -> None:
    rows = [GOOD_ANALYSIS | {"analysis_no": "1"}]
    expected: dict[int, tuple[str, str | None, str]] = {}
    for index, (changes, column, value, rule) in enumerate(BAD_ANALYSES, start=2):
        rows.append(GOOD_ANALYSIS | {"analysis_no": str(index)} | changes)
        expected[len(rows) + 1] = (column, value, rule)
    rows.append(GOOD_ANALYSIS | {"analysis_no": "1"})  # the same measurement as row 2
    expected[len(rows) + 1] = ("analysis_id", None, "analysis_unique")
    table = read_csv_rows(_csv(ANALYSIS_HEADER, rows, {}), file="broken.csv")
    valid, rejected = validate_analyses(table, source="inbox/test/broken")
    assert len(valid) + rejected_rows(rejected) == len(table) == len(rows)
    assert len(valid) == 1
    _check_errors(rejected, "broken.csv", expected)
    hint = next(e for e in rejected if e.rule == "analyte_vocabulary")
    assert hint.message.endswith("'LA' is not an analyte we know (did you mean La?)")
    repeated = next(e for e in rejected if e.rule == "analysis_unique")
    assert repeated.message == (
        f"row {repeated.row}, column analysis_id: the same measurement as row 2 (same sample, "
        "technique, analyte, table and analysis number): give analysis_no or analysis_id to "
        "tell them apart"
    )
    unit = next(e for e in rejected if e.rule == "unit_analyte")
    assert "La is kept in ppm" in unit.message and "wt%" in unit.message


@pytest.mark.parametrize(
    ("value", "unit", "analyte", "expected"),
    [
        ("1", "wt%", "La", (10000.0, "ppm")),  # 1 wt% = 10 000 ppm
        ("0.130", "wt%", "La", (1300.0, "ppm")),
        ("5000", "ppm", "TiO2", (0.5, "wt%")),
        ("12.65", "wt%", "TiO2", (12.65, "wt%")),
        ("12", "µg/g", "La", (12.0, "ppm")),
        ("3", "mg/g", "Sr", (3000.0, "ppm")),
        ("1", "ppm", "Ir", (1000.0, "ppb")),
        ("2.5", "ng/g", "Ir", (2.5, "ppb")),
        ("250", "ppb", "La", (0.25, "ppm")),
        ("3.9", "Ga", "age_ArAr", (3900.0, "Ma")),
        ("3.85", "Ga", "age_ArAr", (3850.0, "Ma")),
        ("120", "ka", "age_exposure", (0.12, "Ma")),
        ("0.70169", "ratio", "87Sr/86Sr", (0.70169, "ratio")),
    ],
)
def test_unit_normalisation(
    value: str, unit: str, analyte: str, expected: tuple[float, str]
) -> None:
    assert normalise_value(value, unit, analyte) == expected


@pytest.mark.parametrize(
    ("unit", "analyte", "rule"),
    [("Ma", "La", "unit_analyte"), ("ppm", "age_ArAr", "unit_analyte"),
     ("furlong", "La", "unit_vocabulary"), ("ppm", "Kryptonite", "analyte_vocabulary")],
)  # fmt: skip
def test_unit_normalisation_refusals_name_the_rule(unit: str, analyte: str, rule: str) -> None:
    with pytest.raises(ProductRejected, match=f"rule: {rule}"):
        normalise_value("1", unit, analyte)


def test_normalised_analyses_keep_the_original() -> None:
    cells = [
        GOOD_ANALYSIS | {"analysis_no": "1", "analyte": "TiO2", "value": "5000", "unit": "µg/g",
                         "uncertainty": "100", "uncertainty_type": "2SD"},
        GOOD_ANALYSIS | {"analysis_no": "2", "value": "<0.5", "unit": "ng/g"},
        GOOD_ANALYSIS | {"analysis_no": "3", "analyte": "age_ArAr", "value": "3.92 ± 0.02",
                         "unit": "Ga", "technique": "Ar-Ar"},
    ]  # fmt: skip
    rows = [SourceRow(file="t.csv", row=n, cells=c) for n, c in enumerate(cells, start=2)]
    (tio2, la, age), rejected = validate_analyses(rows, source="t")
    assert rejected == []

    def fields(a: Analysis, *names: str) -> tuple[Any, ...]:
        return tuple(getattr(a, name) for name in names)

    measured = ("value", "unit", "uncertainty", "uncertainty_type")
    original = ("value_original", "unit_original", "uncertainty_original", "value_text")
    assert fields(tio2, *measured) == (0.5, "wt%", 0.01, "2SD")
    assert fields(tio2, *original) == (5000.0, "µg/g", 100.0, "5000")
    assert fields(la, *measured, "detection") == (0.0005, "ppm", None, None, "below_detection")
    assert fields(la, *original) == (0.5, "ng/g", None, "<0.5")
    assert fields(age, *measured) == (3920.0, "Ma", 20.0, "unknown")
    assert fields(age, *original) == (3.92, "Ga", 0.02, "3.92 ± 0.02")


# ---------------------------------------------------------------------------------------------
# Other formats: XLSX, JSON; whole-table problems


def test_xlsx_rows_keep_their_spreadsheet_numbers() -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "specimens"
    sheet.append(["sample_id", "mission", "lat_deg", "lon_deg", "mass_g", "pristinity_date"])
    sheet.append([70017, "Apollo 17", 20.1908, 30.77168, 2957, datetime(2015, 1, 26)])
    sheet.append([])  # a blank row is skipped, and the next row keeps its number
    sheet.append(["15415,177", "Apollo 15", 123.0, 3.6, 0.52, None])
    out = io.BytesIO()
    book.save(out)
    rows = read_table(out.getvalue(), file="drop.xlsx")
    assert [row.row for row in rows] == [2, 4]
    valid, rejected = validate_specimens(rows, source="t")
    assert [s.sample_id for s in valid] == ["70017"]
    assert valid[0].pristinity_date == date(2015, 1, 26) and valid[0].mass_g == 2957.0
    (error,) = rejected
    assert (error.file, error.sheet, error.row, error.column, error.value) == (
        "drop.xlsx", "specimens", 4, "lat_deg", "123",
    )  # fmt: skip
    assert (
        error.message == "row 4, column lat_deg: 123 is not a latitude (must be between -90 and 90)"
    )
    with pytest.raises(ProductRejected, match="no sheet 'other'"):
        read_xlsx_rows(out.getvalue(), file="drop.xlsx", sheet="other")


def test_json_records_in_the_contract_shape() -> None:
    records = [
        {"sample_id": "70017", "location": {"lat_deg": 20.1908, "lon_deg": 30.77168,
                                            "uncertainty_m": 50}, "references": ["a", "b"]},
        {"sample_id": "70018", "location": {"lat_deg": -91, "lon_deg": 30.7}},
    ]  # fmt: skip
    rows = read_json_rows(json.dumps({"specimens": records}).encode(), file="drop.json")
    valid, rejected = validate_specimens(rows, source="t")
    assert valid[0].references == ("a", "b") and valid[0].mission == "Apollo 17"
    assert valid[0].location is not None and valid[0].location.uncertainty_m == 50.0
    (error,) = rejected
    assert (error.row, error.column, error.rule) == (2, "location_lat_deg", "latitude_range")
    assert error.message.startswith("record 2, column location_lat_deg: -91 is not a latitude")


@pytest.mark.parametrize(
    ("data", "file", "says"),
    [
        (b"sample_id,colour\n70017,grey\n", "a.csv", "column 'colour' is not a specimen column"),
        (b"sample_id,sample_num\n70017,70017\n", "a.csv", "both give sample_id"),
        (b"sample_id,mission,mission\n70017,a,b\n", "a.csv", "column 'mission' appears twice"),
        (b"sample_id,,mission\n70017,,Apollo 17\n", "a.csv", "column 2 has no name"),
        (b"sample_id\n\xff\xfe7\n", "a.csv", "not UTF-8"),
        (b"{", "a.json", "not readable JSON"),
        (b'{"x": 1}', "a.json", "expected a list of records"),
        (b"[1]", "a.json", "record 1: not an object"),
        (b"not a workbook", "a.xlsx", "not a readable XLSX"),
        (b"not a workbook", "a.xls", "not a readable XLS"),
        (b"a,b", "a.txt", "not a table we read"),
    ],
)
def test_whole_table_problems_reject_the_file(data: bytes, file: str, says: str) -> None:
    with pytest.raises(ProductRejected, match=says):
        validate_specimens(read_table(data, file=file), source="t")


def test_oversized_tables_are_refused_unread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(samples, "MAX_TABLE_BYTES", 10)
    with pytest.raises(ProductRejected, match="more than the 10 bytes"):
        read_csv_rows(b"sample_id\n70017\n", file="a.csv")


def test_moondb_reader_refuses_other_workbooks(moondb: Path) -> None:
    with pytest.raises(ProductRejected, match="not a MoonDB submission"):
        read_moondb_submission((moondb / "rootspecimen.xls").read_bytes(), file="rootspecimen.xls")


# ---------------------------------------------------------------------------------------------
# GeoParquet and Parquet


def test_specimen_geoparquet_round_trip(tmp_path: Path) -> None:
    write_demo_archive(tmp_path / "demo")
    data = (tmp_path / "demo" / "samples" / "specimens.csv").read_bytes()
    valid, _ = validate_specimens(read_csv_rows(data, file="specimens.csv"), source="demo")
    source = {"drop": "t", "file": "t.csv", "row": 2}
    unlocated = Specimen.model_validate(
        {"sample_id": "NWA 032", "mission": "Lunar meteorite", "source": source}
    )
    path = specimens_to_geoparquet([*valid, unlocated], tmp_path / "specimens.parquet")

    frame = gpd.read_parquet(path)
    crs = assert_lunar(frame.crs, where="round trip")
    assert crs.to_authority() == ("IAU_2015", "30100")
    assert crs.is_geographic and crs.ellipsoid is not None
    assert crs.ellipsoid.semi_major_metre == MOON_RADIUS_M
    assert not crs.equals("EPSG:4326") and not crs.equals("OGC:CRS84")
    assert list(frame["sample_id"]) == sorted(s.sample_id for s in [*valid, unlocated])
    by_id = {s.sample_id: s for s in valid}
    for _, row in frame.iterrows():
        if row["sample_id"] == "NWA 032":
            assert row.geometry is None
            continue
        location = by_id[row["sample_id"]].location
        assert location is not None
        assert (row.geometry.x, row.geometry.y) == (location.lon_deg, location.lat_deg)
        assert (row["lat_deg"], row["lon_deg"]) == (location.lat_deg, location.lon_deg)

    geo = json.loads(pq.read_metadata(path).metadata[b"geo"])
    column = geo["columns"]["geometry"]
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    assert (column["encoding"], column["geometry_types"]) == ("WKB", ["Point"])
    assert column["crs"]["id"] == {"authority": "IAU", "code": 30100, "version": 2015}
    assert column["crs"]["datum"]["ellipsoid"]["radius"] == MOON_RADIUS_M
    lons = [s.location.lon_deg for s in valid if s.location]
    lats = [s.location.lat_deg for s in valid if s.location]
    assert column["bbox"] == [min(lons), min(lats), max(lons), max(lats)]
    assert specimens_from_geoparquet(path.read_bytes()) == sorted(
        [*valid, unlocated], key=lambda s: s.sample_id
    )


def test_real_specimens_round_trip_and_write_deterministic_bytes(
    root_csv: tuple[list[Specimen], list[RowError]], tmp_path: Path
) -> None:
    valid = root_csv[0]
    first = specimens_to_geoparquet(valid, tmp_path / "a.parquet")
    shuffled = valid[:]
    random.Random(5).shuffle(shuffled)
    second = specimens_to_geoparquet(shuffled, tmp_path / "b.parquet")
    again = specimens_to_geoparquet(valid, tmp_path / "a.parquet")  # a rerun over the file
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (first, second, again)}
    assert digests == {hashlib.sha256(specimens_geoparquet_bytes(valid)).hexdigest()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "b.parquet"]  # no temps
    assert specimens_from_geoparquet(first.read_bytes()) == sorted(valid, key=lambda s: s.sample_id)


def test_analyses_parquet_round_trip_and_deterministic_bytes(
    long_csv: tuple[list[Analysis], list[RowError]], tmp_path: Path
) -> None:
    valid = long_csv[0]
    path = analyses_to_parquet(valid, tmp_path / "analyses.parquet")
    assert path.read_bytes() == analyses_parquet_bytes(list(reversed(valid)))
    table = pq.read_table(path)
    assert table.num_rows == 234
    assert table.column_names[:3] == ["analysis_id", "sample_id", "material_analyzed"]
    back = analyses_from_parquet(path.read_bytes())
    assert back == sorted(valid, key=lambda a: a.analysis_id)
    assert analyses_parquet_bytes([]) == analyses_parquet_bytes([])
    assert pq.read_table(io.BytesIO(analyses_parquet_bytes([]))).num_rows == 0


# ---------------------------------------------------------------------------------------------
# Drop manifests


def _manifest_bytes(**changes: Any) -> bytes:
    document = {
        "partner": "jsc-curation",
        "contact": {"name": "A. Curator", "email": "curator@example.org"},
        "licence": "CC-BY-4.0",
        "embargo_until": "2027-06-30",
        "files": [{"path": "specimens.csv", "kind": "specimens", "sha256": SPECIMENS_SHA}],
    } | changes
    return json.dumps(document).encode()


SPECIMENS = b"sample_id,mission\n70017,Apollo 17\n"
SPECIMENS_SHA = hashlib.sha256(SPECIMENS).hexdigest()


def test_drop_manifest_and_its_checksums() -> None:
    manifest = read_drop_manifest(_manifest_bytes(), file="manifest.json")
    assert (manifest.partner, manifest.embargo_until) == ("jsc-curation", date(2027, 6, 30))
    check_drop_files(manifest, {"manifest.json": b"{}", "specimens.csv": SPECIMENS})
    with pytest.raises(ProductRejected, match=r"specimens\.csv: SHA-256 is [0-9a-f]{64}, the"):
        check_drop_files(manifest, {"specimens.csv": SPECIMENS + b"70018,Apollo 17\n"})
    with pytest.raises(
        ProductRejected, match=r"specimens\.csv: listed in the manifest but missing"
    ):
        check_drop_files(manifest, {})
    with pytest.raises(ProductRejected, match=r"extra\.csv: not listed in the manifest"):
        check_drop_files(manifest, {"specimens.csv": SPECIMENS, "extra.csv": b""})


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"{", "not readable JSON"),
        (_manifest_bytes(files=[{"path": "../x.csv", "kind": "specimens", "sha256": "0" * 64}]),
         r"files\.0\.path: String should match pattern"),
        (_manifest_bytes(embargo_until="soon"), "embargo_until: Input should be a valid date"),
        (_manifest_bytes(partner="JSC"), "partner: String should match pattern"),
    ],
)  # fmt: skip
def test_bad_drop_manifests_are_refused_with_the_field(data: bytes, says: str) -> None:
    with pytest.raises(ProductRejected, match=says):
        read_drop_manifest(data, file="manifest.json")


# ---------------------------------------------------------------------------------------------
# Oxide totals: a check across the rows of one analysis

OXIDE_HEADER = ["sample_id", "material", "mineral", "spot_id", "technique", "analyte", "value"]
OXIDE_HEADER += ["unit", "table_in_ref", "detection"]


def oxide_rows(
    spot: str, technique: str, oxides: dict[str, str], *, material: str = "mineral"
) -> list[dict[str, str]]:
    """One analysis of 70017 in long form: a row per oxide."""
    return [
        {"sample_id": "70017", "material": material, "mineral": "pyroxene", "spot_id": spot,
         "technique": technique, "analyte": analyte, "value": value, "unit": "wt%",
         "table_in_ref": "2", "detection": ""}
        for analyte, value in oxides.items()
    ]  # fmt: skip


def oxide_table(*analyses: list[dict[str, str]]) -> list[SourceRow]:
    rows = [row for analysis in analyses for row in analysis]
    return read_csv_rows(_csv(OXIDE_HEADER, rows, {}), file="oxides.csv")


def test_moondb_analyses_are_partial_and_never_flagged(
    long_csv: tuple[list[Analysis], list[RowError]], moondb: Path
) -> None:
    # INAA measures no silicon: the real anorthosite analyses hold 2 to 7 oxides, no SiO2
    raw = [r for r in _dicts(moondb / "moondb_0623_rocks_long.csv") if r["unit"] == "wt%"]
    per_split = Counter(r["specimen"] for r in raw)
    assert (len(raw), min(per_split.values()), max(per_split.values())) == (51, 2, 7)
    assert not any(r["analyte"] == "SiO2" for r in raw)
    assert oxide_totals(long_csv[0]) == []
    kept, errors, warned = check_oxide_totals(long_csv[0])
    assert (kept, errors, warned) == (long_csv[0], [], [])
    rows = read_moondb_submission((moondb / "MoonDB_0623.xls").read_bytes(), file="MoonDB_0623.xls")
    valid, _ = validate_analyses(rows, source=DROP, dataset="moondb:0623")
    assert oxide_totals(valid) == []


@pytest.mark.parametrize(
    ("technique", "oxides", "total", "window", "verdict"),
    [
        # a clinopyroxene by EPMA, 99.91 wt%: inside 97-101.5
        ("EPMA", {"SiO2": "50.12", "TiO2": "1.20", "Al2O3": "2.05", "FeO": "18.04",
                  "MnO": "0.30", "MgO": "15.70", "CaO": "12.20", "Na2O": "0.30"},
         99.91, (97.0, 101.5), "ok"),
        # 96.4 wt%: fine for a bulk analysis (95-102), low for a microprobe spot
        ("XRF", {"SiO2": "40.1", "TiO2": "10.2", "Al2O3": "9.1", "FeO": "18.5", "MgO": "8.1",
                 "CaO": "10.4"}, 96.4, (95.0, 102.0), "ok"),
        ("EPMA", {"SiO2": "40.1", "TiO2": "10.2", "Al2O3": "9.1", "FeO": "18.5", "MgO": "8.1",
                  "CaO": "10.4"}, 96.4, (97.0, 101.5), "warning"),
        ("EPMA", {"SiO2": "45.0", "Al2O3": "2.0", "FeO": "15.0", "MgO": "14.0", "CaO": "10.0"},
         86.0, (97.0, 101.5), "warning"),
        ("XRF", {"SiO2": "40.1", "TiO2": "10.2", "Al2O3": "9.1", "FeO": "18.5", "MgO": "8.1",
                 "CaO": "10.4", "Na2O": "7.0"}, 103.4, (95.0, 102.0), "warning"),
        # a value typed ten times too large: more than the whole sample
        ("XRF", {"SiO2": "47.8", "Al2O3": "27.0", "FeO": "17.8", "MgO": "10.0", "CaO": "10.4"},
         113.0, (95.0, 102.0), "rejected"),
    ],
)  # fmt: skip
def test_oxide_totals_by_technique(
    technique: str, oxides: dict[str, str], total: float, window: tuple[float, float], verdict: str
) -> None:
    material = "mineral" if technique == "EPMA" else "whole_rock"
    rows = oxide_table(oxide_rows("s1", technique, oxides, material=material))
    valid, errors = validate_analyses(rows, source="t")
    assert errors == [] and len(valid) == len(oxides)
    (found,) = oxide_totals(valid)
    assert found.total == pytest.approx(total) and found.window == window
    kept, refused, warned = check_oxide_totals(valid, rows)
    numbers = list(range(2, 2 + len(oxides)))
    if verdict == "ok":
        assert (kept, refused, warned) == (valid, [], [])
    elif verdict == "warning":
        (warning,) = warned
        assert (kept, refused) == (valid, [])
        assert (warning.file, warning.rows, warning.rule) == (
            "oxides.csv",
            tuple(numbers),
            "oxide_total",
        )
        assert warning.value == f"{total:.2f} wt%"
        assert warning.message.startswith(
            f"rows {', '.join(map(str, numbers))}: the major oxides of sample 70017 ({material}, "
            f"table 2) add up to {total:.2f} wt% ("
        )
        low, high = window
        assert f"analysis adds up to {low:g}-{high:g} wt%. The rows are kept" in warning.message
    else:
        assert (kept, warned) == ([], [])
        assert [(e.row, e.column, e.rule) for e in refused] == [
            (n, "value", "oxide_total") for n in numbers
        ]
        assert refused[0].message.startswith(f"row 2, column value: rows {numbers[0]}, ")
        assert "113.00 wt%" in refused[0].message and "more than 105 wt% cannot be" in (
            refused[0].message
        )


def test_oxide_totals_count_iron_once_and_skip_what_is_not_one_analysis() -> None:
    base = {"SiO2": "50.0", "Al2O3": "2.0", "MgO": "15.0", "CaO": "12.0"}
    # FeO + Fe2O3 given: FeO_T (the same iron) is not added again
    iron = oxide_rows("s1", "EPMA", base | {"FeO": "16.0", "Fe2O3": "2.0", "FeO_T": "17.8"})
    below = oxide_rows("s2", "EPMA", base | {"FeO": "19.0", "Na2O": "<0.05"})
    partial = oxide_rows("s3", "EPMA", {"SiO2": "50.0", "MgO": "15.0", "CaO": "12.0"})
    rows = oxide_table(iron, below, partial)
    valid, errors = validate_analyses(rows, source="t")
    assert errors == []
    totals = {found.analyses[0].spot_id: found.total for found in oxide_totals(valid)}
    assert totals == {"s1": pytest.approx(97.0), "s2": pytest.approx(98.0)}
    doubled = [
        Analysis.model_validate(a.model_dump() | {"spot_id": "s4", "analysis_id": f"x{i}"})
        for i, a in enumerate(v for v in valid if v.spot_id == "s2" and v.analyte != "Na2O")
    ]
    assert [found.total for found in oxide_totals(doubled)] == [pytest.approx(98.0)]
    extra = doubled[0].model_copy(update={"analysis_id": "x-extra"})
    assert oxide_totals([*doubled, extra]) == []  # SiO2 twice: not one analysis


# ---------------------------------------------------------------------------------------------
# Lunar meteorites: the find year or date is their time


@pytest.mark.parametrize(
    ("cells", "column", "rule"),
    [
        ({"sample_id": "NWA 032", "mission": "Lunar meteorite"}, "found_year", "found_required"),
        ({"sample_id": "NWA 032", "mission": "Lunar meteorite", "found_year": "1999",
          "found_date": "2000-01-12"}, "found_date", "found_consistent"),
        ({"sample_id": "NWA 032", "mission": "Lunar meteorite", "found_year": "99"},
         "found_year", "year_format"),
        ({"sample_id": "70017", "found_year": "1999"}, "found_year", "found_consistent"),
    ],
)  # fmt: skip
def test_lunar_meteorites_say_when_they_were_found(
    cells: dict[str, str], column: str, rule: str
) -> None:
    row = SourceRow(file="m.csv", row=2, cells=cells)
    valid, (error,) = validate_specimens([row], source="t")
    assert valid == [] and (error.column, error.rule) == (column, rule)
    assert error.message.startswith(f"row 2, column {column}: ")


def test_lunar_meteorite_find_dates_round_trip() -> None:
    rows = [
        SourceRow(file="m.csv", row=2, cells={"sample_id": "NWA 032", "mission": "Lunar meteorite",
                                              "found_year": "1999"}),
        SourceRow(file="m.csv", row=3, cells={"sample_id": "ALHA81005",
                                              "mission": "Lunar meteorite",
                                              "found_date": "1982-01-18"}),
    ]  # fmt: skip
    valid, errors = validate_specimens(rows, source="t")
    assert errors == []
    assert [(s.found_year, s.found_date) for s in valid] == [
        (1999, None), (None, date(1982, 1, 18)),
    ]  # fmt: skip
    assert specimens_from_geoparquet(specimens_geoparquet_bytes(valid)) == sorted(
        valid, key=lambda s: s.sample_id
    )
    validator = jsonschema.Draft202012Validator(contract("specimen"))
    for specimen in valid:
        validator.validate(specimen.model_dump(mode="json"))


# ---------------------------------------------------------------------------------------------
# Supersession: the row of the later drop stays


def test_supersession_follows_when_the_drops_were_received() -> None:
    def specimen(drop: str, mass: float) -> Specimen:
        source = {"drop": drop, "file": "s.csv", "row": 2}
        return Specimen.model_validate(
            {"sample_id": "70017", "mission": "Apollo 17", "mass_g": mass, "source": source}
        )

    old, new = specimen("lab/a-embargoed", 100.0), specimen("lab/b-public", 200.0)
    drops = [
        {"drop": "lab/a-embargoed", "received": "2026-01-01T00:00:00.000000+00:00"},
        {"drop": "lab/b-public", "received": "2026-02-01T00:00:00.000000+00:00"},
    ]
    # the older row arrives last (an embargo lifted): the newer one stays
    assert merge_rows(([new], []), ([old], []), drops) == ((new,), ())
    # the newer row arrives last: it supersedes
    assert merge_rows(([old], []), ([new], []), drops) == ((new,), ())
    # a drop recorded without a time ranks first; rows of dropped drops leave
    assert merge_rows(([new], []), ([old], []), drops[:1]) == ((old,), ())
    assert merge_rows(([new], []), ([], []), drops, without=frozenset({"lab/b-public"})) == (
        (),
        (),
    )
    assert merge_drop_entries(drops, [drops[0] | {"embargo_lifted": "x"}]) == drops

"""The sample contracts: JSON Schema files, pydantic models and vocabularies agree.

Each model's fields, required fields and enumerations equal those of its published JSON Schema
(2020-12); the vocabularies' data files equal the models' enumerations; sample numbers, drop
paths and units are held to the same rules by the schema files and by the models.
"""

from __future__ import annotations

import typing
from datetime import date
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, ValidationError

from lunarchive.schemas import samples as contracts
from lunarchive.schemas.samples import (
    CONTRACTS,
    Analysis,
    Citation,
    DepthCm,
    DropFile,
    DropManifest,
    Location,
    Provenance,
    RowError,
    Specimen,
    contract,
    literal_values,
    mission_of_sample_id,
    parent_of_sample_id,
)
from lunarchive.schemas.vocabularies import (
    analyte_aliases,
    analytes,
    collection_methods,
    materials,
    missions,
    techniques,
    unit_synonyms,
    units,
)

SHA = "0" * 64
PROVENANCE = {"drop": "inbox/jsc/2026-01", "file": "specimens.csv", "row": 2}


def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(contract(name))


@pytest.mark.parametrize("name", CONTRACTS)
def test_contract_files_are_2020_12_schemas(name: str) -> None:
    schema = contract(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{name}.schema.json")
    jsonschema.Draft202012Validator.check_schema(schema)


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow a $ref (or the non-null branch of anyOf) to the object schema it names."""
    for branch in node.get("anyOf", [node]):
        if "$ref" in branch:
            return _resolve(schema, schema["$defs"][branch["$ref"].split("/")[-1]])
        if branch.get("type") == "object":
            return branch
    return node


def _enum(node: dict[str, Any]) -> set[Any] | None:
    if "const" in node:
        return {node["const"]}
    for branch in node.get("anyOf", [node]):
        if "enum" in branch:
            return set(branch["enum"]) - {None}
    return None


def _literal(annotation: Any) -> set[Any] | None:
    """The values of a Literal annotation, looking inside Optional/Annotated."""
    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    for arg in typing.get_args(annotation):
        found = _literal(arg)
        if found is not None:
            return found
    return None


PAIRS: list[tuple[type[BaseModel], str, tuple[str, ...]]] = [
    (Specimen, "specimen", ()),
    (Location, "specimen", ("location",)),
    (DepthCm, "specimen", ("depth_cm",)),
    (Provenance, "specimen", ("source",)),
    (Analysis, "analysis", ()),
    (Citation, "analysis", ("citation",)),
    (DropManifest, "drop-manifest", ()),
    (contracts.Contact, "drop-manifest", ("contact",)),
    (DropFile, "drop-manifest", ("files",)),
]


@pytest.mark.parametrize(("model", "name", "path"), PAIRS)
def test_models_and_schema_files_agree(
    model: type[BaseModel], name: str, path: tuple[str, ...]
) -> None:
    schema = contract(name)
    node: dict[str, Any] = schema
    for step in path:
        node = node["properties"][step]
        node = _resolve(schema, node.get("items", node))
    assert node["additionalProperties"] is False
    assert set(node["properties"]) == set(model.model_fields)
    required = {key for key, info in model.model_fields.items() if info.is_required()}
    assert set(node.get("required", [])) == required
    for key, info in model.model_fields.items():
        assert _enum(node["properties"][key]) == _literal(info.annotation), key


def test_vocabulary_files_equal_the_model_enumerations() -> None:
    assert set(techniques()) == set(literal_values(contracts.Technique))
    assert set(units()) == set(literal_values(contracts.UnitCode))
    assert set(materials("specimen")) == set(literal_values(contracts.SpecimenMaterial))
    assert set(materials("analysed")) == set(literal_values(contracts.AnalysedMaterial))
    assert set(collection_methods()) == set(literal_values(contracts.CollectionMethod))
    assert set(missions()) | {"Lunar meteorite"} == set(literal_values(contracts.MissionName))
    assert set(unit_synonyms().values()) <= set(units())
    assert set(analyte_aliases().values()) <= set(analytes())


def test_analytes_keep_their_canonical_units() -> None:
    table = analytes()
    assert {a.unit for a in table.values()} <= set(units())
    assert {a.unit for a in table.values() if a.kind == "oxide"} == {"wt%"}
    assert {a.unit for a in table.values() if a.kind == "age"} == {"Ma"}
    assert {a.unit for a in table.values() if a.kind == "trace"} == {"ppm", "ppb"}
    assert (table["La"].unit, table["TiO2"].unit, table["Ir"].unit) == ("ppm", "wt%", "ppb")
    assert units()["wt%"].factor / units()["ppm"].factor == 10000
    assert units()["Ga"].factor / units()["Ma"].factor == 1000


GOOD_IDS = [
    "70017", "15415,177", "60025,59B", "62237,26A", "15415,177,3", "24170", "21000", "L1608",
    "CE5C0400YJFM00505", "CE5C0400YJFM00505-G1", "CE6Z0100YJYX00012", "NWA 032", "Dhofar 025",
    "ALHA81005",
]  # fmt: skip
BAD_IDS = [
    "", "7001", "700170", "15415,", ",177", "15415,,1", "15415,177b", "CE5C0400YJFM0050",
    "CE7C0400YJFM00505", "ce5c0400yjfm00505", "../70017", "L99", "12345 ", "70017\n70018",
]  # fmt: skip


@pytest.mark.parametrize("sample_id", GOOD_IDS)
def test_sample_numbers_the_contract_admits(sample_id: str) -> None:
    record = {"sample_id": sample_id, "mission": "Lunar meteorite", "source": PROVENANCE}
    if (numbered := mission_of_sample_id(sample_id)) is not None:
        record["mission"] = numbered
    if parent_of_sample_id(sample_id) is not None:
        record["level"] = "split"
    specimen = Specimen.model_validate(record)
    assert _validator("specimen").is_valid(specimen.model_dump(mode="json"))


@pytest.mark.parametrize("sample_id", BAD_IDS)
def test_sample_numbers_the_contract_refuses(sample_id: str) -> None:
    record = {"sample_id": sample_id, "mission": "Lunar meteorite", "source": PROVENANCE}
    with pytest.raises(ValidationError):
        Specimen.model_validate(record)
    assert not _validator("specimen").is_valid(record)


def test_a_trailing_newline_is_not_part_of_a_sample_number() -> None:
    # ECMA-262 '$' (the schema's dialect) ends the string; Python's re, which jsonschema uses,
    # also matches before a final newline. The model is the gate, and it refuses.
    with pytest.raises(ValidationError):
        Specimen.model_validate(
            {"sample_id": "70017\n", "mission": "Apollo 17", "source": PROVENANCE}
        )


def test_sample_numbers_say_their_mission_and_parent() -> None:
    assert mission_of_sample_id("70017") == "Apollo 17"
    assert mission_of_sample_id("60025,59B") == "Apollo 16"
    assert mission_of_sample_id("10084") == "Apollo 11"
    assert mission_of_sample_id("24170") == "Luna 24"
    assert mission_of_sample_id("L1608") == "Luna 16"
    assert mission_of_sample_id("CE5C0400YJFM00505-G1") == "Chang'e-5"
    assert mission_of_sample_id("NWA 032") is None
    assert parent_of_sample_id("15415,177") == "15415"
    assert parent_of_sample_id("15415,177,3") == "15415,177"
    assert parent_of_sample_id("CE5C0400YJFM00505-G1") == "CE5C0400YJFM00505"
    assert parent_of_sample_id("70017") is None
    assert parent_of_sample_id("CE5C0400YJFM00505") is None


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"sample_id": "70017", "mission": "Apollo 15"}, "numbered as Apollo 17"),
        ({"sample_id": "NWA 032", "mission": "Apollo 15"}, "not numbered as a Apollo 15"),
        ({"sample_id": "70017,12", "parent_id": "15415", "level": "split"}, "not a parent"),
        ({"sample_id": "70017,12"}, "is a split"),
        ({"pristinity_pct": 112.5}, "less than or equal to 100"),
        ({"location": {"lat_deg": 20.0, "lon_deg": 200.0}}, "less than or equal to 180"),
        ({"location": {"lat_deg": 20.0, "lon_deg": 30.0, "frame": "EPSG:4326"}}, "IAU_2015"),
        ({"depth_cm": {"top": 10.0, "bottom": 2.0}}, "lies above top"),
        ({"mass_g": float("nan")}, "finite"),
    ],
)
def test_specimen_model_refuses_inconsistent_records(changes: dict[str, Any], says: str) -> None:
    record = {"sample_id": "70017", "mission": "Apollo 17", "source": PROVENANCE} | changes
    with pytest.raises(ValidationError, match=says):
        Specimen.model_validate(record)


def _analysis(**changes: Any) -> dict[str, Any]:
    record = {
        "analysis_id": "an-1", "sample_id": "15415,177", "technique": "INAA", "analyte": "La",
        "value": 0.13, "unit": "ppm", "value_original": 0.13, "unit_original": "ppm",
        "value_text": "0.130", "source": PROVENANCE,
    }  # fmt: skip
    return record | changes


def test_analysis_model_keeps_values_in_the_canonical_unit() -> None:
    analysis = Analysis.model_validate(_analysis(uncertainty=0.004, uncertainty_type="unknown"))
    assert _validator("analysis").is_valid(analysis.model_dump(mode="json"))
    with pytest.raises(ValidationError, match="La is kept in ppm, not wt%"):
        Analysis.model_validate(_analysis(unit="wt%"))
    with pytest.raises(ValidationError, match="not a known analyte"):
        Analysis.model_validate(_analysis(analyte="Unobtainium"))
    with pytest.raises(ValidationError, match="needs its type"):
        Analysis.model_validate(_analysis(uncertainty=0.004))
    with pytest.raises(ValidationError):
        Analysis.model_validate(_analysis(uncertainty=-1.0, uncertainty_type="1SD"))
    assert not _validator("analysis").is_valid(_analysis(unit="furlong"))


def _manifest(**changes: Any) -> dict[str, Any]:
    record = {
        "partner": "jsc-curation",
        "contact": {"name": "A. Curator", "email": "curator@example.org"},
        "licence": "CC-BY-4.0",
        "embargo_until": "2027-06-30",
        "files": [{"path": "specimens.csv", "kind": "specimens", "sha256": SHA}],
    }
    return record | changes


def test_drop_manifest_round_trip() -> None:
    manifest = DropManifest.model_validate(_manifest())
    assert manifest.embargo_until == date(2027, 6, 30)
    assert manifest.files[0].kind == "specimens"
    assert _validator("drop-manifest").is_valid(manifest.model_dump(mode="json"))


@pytest.mark.parametrize(
    "path",
    ["../x.csv", "/etc/passwd", "a/../b.csv", "./a.csv", "a/./b.csv", "%2e%2e/x", "a\\b.csv",
     "x\x00.csv", "", "a//b.csv", "a/"],
)  # fmt: skip
def test_drop_manifest_refuses_paths_that_escape_the_drop(path: str) -> None:
    record = _manifest(files=[{"path": path, "kind": "analyses", "sha256": SHA}])
    with pytest.raises(ValidationError):
        DropManifest.model_validate(record)
    assert not _validator("drop-manifest").is_valid(record)


@pytest.mark.parametrize(
    "changes",
    [
        {"partner": "JSC Curation"},
        {"contact": {"name": "A. Curator", "email": "not-an-address"}},
        {"embargo_until": "next year"},
        {"files": []},
        {"files": [{"path": "a.csv", "kind": "specimens", "sha256": "ABC"}]},
        {"files": [{"path": "a.csv", "kind": "pictures", "sha256": SHA}]},
        {"licence": ""},
        {"surprise": 1},
    ],
)
def test_drop_manifest_refusals_agree_with_the_schema_file(changes: dict[str, Any]) -> None:
    record = _manifest(**changes)
    with pytest.raises(ValidationError):
        DropManifest.model_validate(record)
    validator = jsonschema.Draft202012Validator(
        contract("drop-manifest"), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    assert not validator.is_valid(record)


def test_drop_manifest_refuses_a_file_listed_twice() -> None:
    entry = {"path": "a.csv", "kind": "specimens", "sha256": SHA}
    with pytest.raises(ValidationError, match=r"files listed twice: a\.csv"):
        DropManifest.model_validate(_manifest(files=[entry, entry]))


def test_row_error_reads_as_a_sentence() -> None:
    error = RowError(
        file="drop.xlsx",
        sheet="SPECIMENS",
        row=14,
        column="lat_deg",
        value="123.0",
        rule="latitude_range",
        message="row 14, column lat_deg: 123.0 is not a latitude (must be between -90 and 90)",
    )
    assert str(error) == (
        "drop.xlsx [SPECIMENS], row 14, column lat_deg: 123.0 is not a latitude "
        "(must be between -90 and 90) (rule: latitude_range)"
    )
    with pytest.raises(ValidationError):
        error.row = 15  # type: ignore[misc]
    with pytest.raises(ValidationError):
        RowError.model_validate(error.model_dump() | {"row": 0})


def test_unknown_contract_is_named() -> None:
    with pytest.raises(KeyError, match="no contract 'sample'"):
        contract("sample")

"""STAC validation: offline against the schema map, core schemas always, nothing guessed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pystac
import pytest

from lunarchive.catalog.publish import draft_release
from lunarchive.catalog.stac import EXTENSIONS, create_catalog
from lunarchive.catalog.validate import SchemaUnavailable, StacInvalid, StacValidator


def lunar_item(**properties: object) -> pystac.Item:
    item = pystac.Item(
        "crater-1",
        {"type": "Point", "coordinates": [-51.9, 43.1]},
        [-51.9, 43.1, -51.9, 43.1],
        datetime(2020, 12, 1, tzinfo=UTC),
        {"ssys:targets": ["Moon"], "proj:code": "IAU_2015:30110", **properties},
        stac_extensions=[EXTENSIONS["ssys"], EXTENSIONS["proj"]],
    )
    return item


def release_files(item: pystac.Item) -> dict[str, bytes]:
    catalog = create_catalog("test", "validation test")
    collection = pystac.Collection(
        "c", "c", pystac.Extent(pystac.SpatialExtent([[-180, -90, 180, 90]]),
                               pystac.TemporalExtent([[None, None]])),
    )  # fmt: skip
    collection.add_item(item)
    catalog.add_child(collection)
    return dict(draft_release(catalog, []).files)


def test_a_valid_release_passes_every_schema_offline(shared: Path) -> None:
    validator = StacValidator(shared / "stac-schemas")
    files = release_files(lunar_item())
    assert sorted(validator.validate_files(files)) == sorted(
        k for k in files if k.endswith(".json")
    )
    item = json.loads(files["c/crater-1/crater-1.json"])
    assert validator.validate(item) == [
        "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json",
        EXTENSIONS["ssys"],
        EXTENSIONS["proj"],
    ]


def test_an_invalid_object_is_named_with_its_key_place_and_schema(shared: Path) -> None:
    validator = StacValidator(shared / "stac-schemas")
    files = release_files(lunar_item(**{"proj:code": 30110}))
    with pytest.raises(StacInvalid) as caught:
        validator.validate_files(files)
    message = str(caught.value)
    assert message.startswith("c/crater-1/crater-1.json: 'crater-1', at properties/proj:code")
    assert EXTENSIONS["proj"] in message


def test_ssys_targets_must_be_a_list(shared: Path) -> None:
    validator = StacValidator(shared / "stac-schemas")
    files = release_files(lunar_item(**{"ssys:targets": "Moon"}))
    with pytest.raises(StacInvalid, match="ssys:targets"):
        validator.validate_files(files)


def test_core_schemas_need_no_map_and_missing_extensions_are_never_guessed(
    tmp_path: Path,
) -> None:
    item = json.loads(release_files(lunar_item())["c/crater-1/crater-1.json"])
    strict = StacValidator(cache_dir=tmp_path, fetch=False)
    with pytest.raises(SchemaUnavailable, match="ssys"):
        strict.validate(item)
    lenient = StacValidator(cache_dir=tmp_path, fetch=False, strict=False)
    passed = lenient.validate(item)
    assert passed == ["https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"]
    assert lenient.unavailable == {EXTENSIONS["ssys"], EXTENSIONS["proj"]}
    broken = {key: value for key, value in item.items() if key != "links"}
    with pytest.raises(StacInvalid, match="'links' is a required property"):
        lenient.validate(broken)  # the core schema still catches it


def test_a_cached_schema_is_used_without_the_network(shared: Path, tmp_path: Path) -> None:
    index = json.loads((shared / "stac-schemas" / "index.json").read_text())
    source = shared / "stac-schemas" / index["schemas"][EXTENSIONS["ssys"]]
    first = StacValidator(cache_dir=tmp_path, fetch=False, strict=False)
    cache_file = first._cache_path(EXTENSIONS["ssys"])
    assert cache_file is not None
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(source.read_text())
    item = json.loads(release_files(lunar_item(**{"ssys:targets": 5}))["c/crater-1/crater-1.json"])
    with pytest.raises(StacInvalid, match="ssys:targets"):
        StacValidator(cache_dir=tmp_path, fetch=False, strict=False).validate(item)

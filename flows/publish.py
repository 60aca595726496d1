"""The ``publish`` flow: the processed products → a STAC release, then the pointer flips.

Items are built from what ``process`` returned (cube summaries, sample records), every asset
href is relative to the item inside the release tree, and the release lists every object its
catalog reaches. An unchanged input renders the same release, which publishes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

import pystac
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lunarchive.catalog.gc import collect_releases
from lunarchive.catalog.layout import safe_id
from lunarchive.catalog.publish import (
    ITEM_TO_ROOT,
    PublishResult,
    ReleaseDraft,
    draft_release,
    publish_release,
    read_current,
)
from lunarchive.catalog.stac import (
    QUERYABLES_REL,
    CubeDescription,
    create_catalog,
    create_collection,
    create_cube_item,
    create_queryables,
    create_specimen_item,
)
from lunarchive.catalog.validate import StacValidator
from lunarchive.flows._runtime import load_settings, store_for
from lunarchive.flows.settings import Settings
from lunarchive.schemas.errors import ProductRejected
from lunarchive.schemas.release import ManifestEntry
from lunarchive.schemas.vocabularies import missions

__all__ = ["publish"]

CATALOG_ID = "lunarchive"


def cube_items(cubes: Iterable[Mapping[str, Any]]) -> list[pystac.Item]:
    """One item per cube tile, from the record ``process`` left beside the cube."""
    items = []
    for cube in cubes:
        summary = cube["summary"]
        description = CubeDescription(
            shape=tuple(summary["shape"]),
            transform=tuple(summary["transform"]),
            proj_code=summary["proj_code"],
            wkt2=summary["wkt2"],
            projjson=summary["projjson"],
            bbox=tuple(summary["bbox"]),
            geometry=summary["geometry"],
            variable=summary["variable"],
            units="m",
            dtype=summary["dtype"],
            minimum=summary["height_min_m"],
            maximum=summary["height_max_m"],
            mean=summary["height_mean_m"],
            nodata_fraction=summary["nodata_fraction"],
        )
        items.append(
            create_cube_item(
                f"{cube['collection']}-{cube['tile']}",
                description,
                cube_href=ITEM_TO_ROOT + cube["key"],
                start=datetime.fromisoformat(cube["start"]),
                end=datetime.fromisoformat(cube["end"]),
                title=f"Heights above the lunar reference sphere, {cube['tile']} tile",
                derived_from=[ITEM_TO_ROOT + key for key in cube["inputs"]],
            )
        )
    return items


def specimen_items(tables: Iterable[Mapping[str, Any]]) -> list[pystac.Item]:
    """One item per sample record, dated by its mission's landing (the vocabulary)."""
    known = missions()
    items: dict[str, pystac.Item] = {}
    for table in tables:
        for row, record in enumerate(table["records"], start=2):
            mission = known.get(record.get("mission") or "")
            if mission is None:
                raise ProductRejected(
                    f"{table['key']}, row {row}, column 'mission': {record.get('mission')!r} "
                    f"is not a known sample-return mission (rule: one of {sorted(known)})"
                )
            item_id = "specimen-" + safe_id(record["sample_id"])
            if item_id in items:
                raise ProductRejected(
                    f"{table['key']}, row {row}, column 'sample_id': {record['sample_id']!r} "
                    f"gives the item id {item_id!r} that another record already has"
                )
            items[item_id] = create_specimen_item(
                record,
                item_id=item_id,
                collected=mission.landed,
                source_href=ITEM_TO_ROOT + table["key"],
                source_sha256=table["sha256"],
                source_size=table["size"],
            )
    return list(items.values())


def build_catalog(
    name: str, cubes: list[pystac.Item], samples: list[pystac.Item]
) -> tuple[pystac.Catalog, dict[str, bytes]]:
    """The release's catalog, and the queryables of each collection (keyed in the release)."""
    catalog = create_catalog(CATALOG_ID, "Lunar sample and remote-sensing data of lunarchive.")
    queryables: dict[str, bytes] = {}
    groups = [
        (f"{name}-dem", "Digital elevation models", "satellite", cubes),
        (f"{name}-samples", "Lunar sample records", "sample", samples),
    ]
    for collection_id, title, target_class, items in groups:
        if not items:
            continue
        collection = create_collection(
            collection_id,
            title=title,
            description=f"{title} of the {name} archive, harvested by lunarchive.",
            items=items,
            target_class=target_class,
        )
        collection.add_items(items)
        collection.add_link(
            pystac.Link(QUERYABLES_REL, "./queryables.json", "application/schema+json")
        )
        schema = create_queryables(f"Queryables of {collection_id}", items)
        queryables[f"{collection_id}/queryables.json"] = _json_bytes(schema)
        catalog.add_child(collection)
    return catalog, queryables


def _json_bytes(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def shared_objects(processed: Mapping[str, Any]) -> list[ManifestEntry]:
    """The objects outside the release prefix that the catalog reaches: cubes and raw files."""
    cubes = processed["cubes"]
    entries = [ManifestEntry(**o) for cube in cubes for o in [*cube["objects"], *cube["raw"]]]
    entries += [
        ManifestEntry(key=table["key"], size=table["size"], sha256=table["sha256"])
        for table in processed["samples"]
    ]
    return entries


@task(cache_policy=NO_CACHE)
def publish_catalog(settings: Settings, name: str, processed: dict[str, Any]) -> dict[str, Any]:
    store = store_for(settings)
    cubes, samples = cube_items(processed["cubes"]), specimen_items(processed["samples"])
    if not cubes and not samples:  # everything was quarantined: keep the current release
        current = read_current(store)
        version = current[0].version if current else None
        return asdict(PublishResult(version, published=False, objects_written=0))
    catalog, queryables = build_catalog(name, cubes, samples)
    draft = draft_release(catalog, shared_objects(processed), queryables)
    validate_release(settings, draft)  # an invalid object stops here: nothing is written
    result = asdict(publish_release(store, draft))
    collected = collect_releases(
        store, keep=settings.keep_releases, grace=timedelta(hours=settings.release_grace_hours)
    )
    if collected.deleted:
        get_run_logger().info(
            "collected %d old release(s) (%d objects): %s",
            len(collected.deleted), collected.objects_deleted, ", ".join(collected.deleted),
        )  # fmt: skip
    return result | {"collected": collected.deleted}


def validate_release(settings: Settings, draft: ReleaseDraft) -> None:
    """Every STAC document of the release against its schemas (strict with a schema map)."""
    validator = StacValidator(
        settings.stac_schema_dir,
        cache_dir=settings.stac_schema_cache.expanduser(),
        fetch=settings.stac_schema_dir is None,
        strict=settings.stac_schema_dir is not None,
        timeout_s=settings.http_timeout_s,
    )
    checked = validator.validate_files(draft.files)
    logger = get_run_logger()
    logger.info("validated %d STAC documents", len(checked))
    for url in sorted(validator.unavailable):
        logger.warning(
            "schema %s could not be fetched: not checked (set LUNARCHIVE_STAC_SCHEMA_DIR "
            "to a local schema map to validate offline)",
            url,
        )


@flow(name="publish")
def publish(processed: dict[str, Any], name: str, store_url: str | None = None) -> dict[str, Any]:
    """Publish the processed products as a release and make it the current one."""
    settings = load_settings(store_url=store_url)
    result = publish_catalog(settings, name, processed)
    logger = get_run_logger()
    if result["version"] is None:
        logger.warning("nothing to publish: no product made it through, and no release exists")
    elif result["published"]:
        logger.info(
            "published release %s (%d objects written, %d items)",
            result["version"],
            result["objects_written"],
            result["item_count"],
        )
    else:
        logger.info("release %s is current and unchanged: nothing written", result["version"])
    return result

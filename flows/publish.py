"""The ``publish`` flow: the processed products → a STAC release, then the pointer flips.

Cube items are built from what ``process`` returned; sample items from the partners' current
public tables (``tables/<partner>/latest.json``), one collection per programme, with the
cubes' values at each collection site beside the table. Every asset href is relative to the
item inside the release tree, and the release lists every object its catalog reaches (cubes,
raw labels, tables). An unchanged input renders the same release, which publishes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pystac
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lunarchive.catalog.gc import collect_releases
from lunarchive.catalog.layout import content_version, safe_id, table_key
from lunarchive.catalog.publish import (
    ITEM_TO_ROOT,
    PublishResult,
    ReleaseDraft,
    draft_release,
    paused_gc,
    publish_release,
    read_current,
)
from lunarchive.catalog.samples_stac import (
    TableAsset,
    create_sample_collection,
    create_sample_item,
    programme_of,
    sample_queryables,
    sample_time,
    specimen_families,
)
from lunarchive.catalog.stac import (
    QUERYABLES_REL,
    CubeDescription,
    FileAsset,
    create_catalog,
    create_collection,
    create_cube_item,
    create_queryables,
)
from lunarchive.catalog.store import Store, json_bytes
from lunarchive.catalog.validate import StacValidator
from lunarchive.flows._runtime import load_settings, store_for
from lunarchive.flows.samples import Table, read_table_version, table_partners
from lunarchive.flows.serve import update_api
from lunarchive.flows.settings import Settings
from lunarchive.processing.at_site import (
    AtSite,
    Site,
    at_site_from_parquet,
    at_site_parquet_bytes,
    open_cube,
    sample_tiles,
)
from lunarchive.schemas.release import ManifestEntry
from lunarchive.schemas.vocabularies import missions

__all__ = ["publish"]

CATALOG_ID = "lunarchive"
AT_SITE_RECIPE = "at-site-v2"  # v2: discs take the pixels of neighbouring tiles


def cube_items(cubes: Iterable[Mapping[str, Any]]) -> list[pystac.Item]:
    """One item per tile store, from the record ``process`` left beside it."""
    items = []
    for cube in cubes:
        proj = cube["proj"]
        description = CubeDescription(
            shape=tuple(proj["shape"]),
            transform=tuple(proj["transform"]),
            proj_code=proj["code"],
            wkt2=proj["wkt2"],
            projjson=proj["projjson"],
            bbox=tuple(cube["bbox"]),
            geometry=cube["geometry"],
            variable=cube["variable"],
            units=cube["units"],
            dtype=cube["dtype"],
            bands=cube["bands"],
            dimensions=cube["dimensions"],
        )
        files = {
            "thumbnail": FileAsset(
                href=ITEM_TO_ROOT + cube["quicklook"]["key"],
                sha256=cube["quicklook"]["sha256"],
                size=cube["quicklook"]["size"],
                media_type="image/png",
                title=f"Quicklook ({cube['quicklook'].get('style', 'hillshade')})",
                roles=("thumbnail",),
            ),
            "inventory": FileAsset(
                href=ITEM_TO_ROOT + cube["inventory"]["key"],
                sha256=cube["inventory"]["sha256"],
                size=cube["inventory"]["size"],
                media_type="application/json",
                title="Every object of the tile store with its size and SHA-256",
                roles=("metadata",),
            ),
        }
        items.append(
            create_cube_item(
                f"{cube['collection']}-{cube['tile']}",
                description,
                cube_href=ITEM_TO_ROOT + cube["key"],
                start=datetime.fromisoformat(cube["start"]),
                end=datetime.fromisoformat(cube["end"]),
                title=cube.get("title")
                or f"Heights above the lunar reference sphere, tile {cube['tile']} of "
                f"{cube['grid']}",
                derived_from=[ITEM_TO_ROOT + key for key in cube["labels"]],
                files=files,
                properties={
                    "lunarchive:grid": cube["grid"],
                    "lunarchive:tile": cube["tile"],
                    "lunarchive:resampling": cube["resampling"],
                    "lunarchive:overlap_rule": cube["overlap_rule"],
                    "lunarchive:inputs": cube["inputs"],
                    "lunarchive:time_basis": cube.get("time_basis", "observation"),
                    "lunarchive:collection": cube["collection"],
                },
            )
        )
    return items


@dataclass
class SampleGroup:
    """One programme's (or partner's) sample collection: its items, partners and licences."""

    collection_id: str
    title: str
    items: list[pystac.Item] = field(default_factory=list)
    partners: list[str] = field(default_factory=list)
    licences: list[str] = field(default_factory=list)


@dataclass
class SampleCatalog:
    groups: dict[str, SampleGroup] = field(default_factory=dict)
    shared: list[ManifestEntry] = field(default_factory=list)
    uncatalogued: list[str] = field(default_factory=list)

    def items(self) -> list[pystac.Item]:
        return [item for group in self.groups.values() for item in group.items]


def _table_asset(
    entry: Mapping[str, Any], title: str, description: str | None = None
) -> TableAsset:
    return TableAsset(
        href=ITEM_TO_ROOT + entry["key"],
        sha256=entry["sha256"],
        size=entry["size"],
        title=title,
        description=description,
    )


def add_sample_items(
    catalog: SampleCatalog, table: Table, at_site: Mapping[str, Any] | None
) -> None:
    """One item per root specimen of a partner's public table, in its programme's collection."""
    known = missions()
    objects = {entry["key"].split("/", 3)[3]: entry for entry in table.objects}
    licence = table.drops[-1]["licence"] if table.drops else "other"
    located = set(at_site["samples"]) if at_site else set()
    taken = {item.id for item in catalog.items()}
    for family in specimen_families(table.specimens, table.analyses):
        root = family.root
        mission = known.get(root.mission)
        when = sample_time(root, None if mission is None else mission.landed)
        if when is None:  # no landing date (nor a meteorite's find date) for the time
            catalog.uncatalogued.append(f"{table.partner}/{root.sample_id}")
            continue
        collection_id, title = programme_of(root.mission, table.partner)
        group = catalog.groups.setdefault(collection_id, SampleGroup(collection_id, title))
        item_id = "specimen-" + safe_id(root.sample_id)
        if item_id in taken:  # another partner holds the same sample
            item_id += "-" + table.partner
        taken.add(item_id)
        analyses = objects.get(f"by-specimen/{safe_id(root.sample_id)}.analyses.parquet")
        family_ids = {root.sample_id, *(s.sample_id for s in family.splits)}
        item = create_sample_item(
            family,
            item_id=item_id,
            collected=when,
            partner=table.partner,
            specimens=_table_asset(
                objects["specimens.parquet"],
                "Specimen records of the partner's table (GeoParquet)",
                f"Rows where sample_id is {root.sample_id} or one of its splits.",
            ),
            analyses=_table_asset(analyses, "Analyses of this specimen and its splits")
            if analyses
            else None,
            at_site=_table_asset(
                at_site,
                "Orbital cube values at the collection site",
                f"Rows where sample_id is {root.sample_id} or one of its splits.",
            )
            if at_site and family_ids & located
            else None,
            landing_site=None if mission is None else (mission.lat_deg, mission.lon_deg),
        )
        group.items.append(item)
        group.partners.append(table.partner)
        group.licences.append(licence)
    catalog.shared += [ManifestEntry(**entry) for entry in table.objects]
    if at_site and located:
        catalog.shared.append(ManifestEntry(**{k: at_site[k] for k in ("key", "size", "sha256")}))


def build_catalog(
    name: str, cubes: list[pystac.Item], samples: SampleCatalog
) -> tuple[pystac.Catalog, dict[str, bytes]]:
    """The release's catalog, and the queryables of each collection (keyed in the release)."""
    with paused_gc():  # pystac makes several objects per item: see paused_gc
        return _build_catalog(name, cubes, samples)


def _build_catalog(
    name: str, cubes: list[pystac.Item], samples: SampleCatalog
) -> tuple[pystac.Catalog, dict[str, bytes]]:
    catalog = create_catalog(CATALOG_ID, "Lunar sample and remote-sensing data of lunarchive.")
    queryables: dict[str, bytes] = {}
    for collection_id, items in _by_collection(name, cubes).items():
        multiband = any("eo:bands" in item.assets["zarr"].extra_fields for item in items)
        title = "Multi-band reflectance maps" if multiband else "Digital elevation models"
        collection = create_collection(
            collection_id,
            title=title,
            description=f"{title} of the {name} archive, harvested by lunarchive.",
            items=items,
            target_class="satellite",
        )
        queryables |= _add_collection(catalog, collection, items, create_queryables)
    for group in sorted(samples.groups.values(), key=lambda g: g.collection_id):
        collection = create_sample_collection(
            group.collection_id,
            title=group.title,
            items=group.items,
            partners=group.partners,
            licences=group.licences,
        )
        queryables |= _add_collection(catalog, collection, group.items, sample_queryables)
    return catalog, queryables


def _by_collection(name: str, cubes: list[pystac.Item]) -> dict[str, list[pystac.Item]]:
    """Cube items by the collection ``process`` gave their tiles (``<name>-dem`` when an item
    names none), in collection order."""
    groups: dict[str, list[pystac.Item]] = {}
    for item in cubes:
        groups.setdefault(item.properties.get("lunarchive:collection", f"{name}-dem"), []).append(
            item
        )
    return dict(sorted(groups.items()))


def _add_collection(
    catalog: pystac.Catalog,
    collection: pystac.Collection,
    items: list[pystac.Item],
    make_queryables: Callable[[str, list[pystac.Item]], dict[str, Any]],
) -> dict[str, bytes]:
    # Child first, under a catalog with a self href: pystac's add_item looks the parent's root
    # and self link up once per item, and without them it scans every link the collection
    # has (quadratic). The renderer writes its own relative links and ignores self hrefs.
    if catalog.get_self_href() is None:
        catalog.set_self_href(f"/{catalog.id}/catalog.json")
    catalog.add_child(collection)
    collection.add_items(items)
    collection.add_link(pystac.Link(QUERYABLES_REL, "./queryables.json", "application/schema+json"))
    schema = make_queryables(f"Queryables of {collection.id}", items)
    return {f"{collection.id}/queryables.json": json_bytes(schema)}


def shared_objects(processed: Mapping[str, Any]) -> list[ManifestEntry]:
    """The cubes and raw files outside the release prefix that the cube items reach."""
    cubes = processed["cubes"]
    return [ManifestEntry(**o) for cube in cubes for o in [*cube["objects"], *cube["raw"]]]


@task(cache_policy=NO_CACHE)
def sample_at_sites(
    settings: Settings, table: Table, cubes: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The cubes' values at the table's located specimens, kept beside the table version
    (``at-site/<hash of the cubes>.parquet``; an existing one is reused)."""
    sites = [
        Site(s.sample_id, s.location.lon_deg, s.location.lat_deg, s.location.uncertainty_m)
        for s in table.specimens
        if s.location is not None
    ]
    if not cubes or not sites or table.version is None:
        return None
    store = store_for(settings)
    digest = content_version(AT_SITE_RECIPE, [(c["key"], c["version"]) for c in cubes])
    key = table_key(table.partner, table.version, f"at-site/{digest}.parquet")
    if not store.exists(key):
        rows: list[AtSite] = []
        by_collection: dict[str, list[dict[str, Any]]] = {}
        for cube in cubes:
            by_collection.setdefault(cube["collection"], []).append(cube)
        for tiles in by_collection.values():  # a disc borrows pixels from its own collection
            found, refused = sample_tiles(
                [
                    (open_cube(store.zarr_store(c["key"])), f"{c['collection']}-{c['tile']}",
                     c["version"])
                    for c in tiles
                ],
                sites,
                max_pixels=settings.at_site_max_pixels,
            )  # fmt: skip
            rows += found
            for sentence in refused:
                get_run_logger().warning("at-site: %s", sentence)
        store.create(key, at_site_parquet_bytes(rows))
    data = store.read(key)
    samples = sorted({row.sample_id for row in at_site_from_parquet(data)})
    return {"key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()} | {
        "samples": samples
    }


@task(cache_policy=NO_CACHE)
def publish_catalog(settings: Settings, name: str, processed: dict[str, Any]) -> dict[str, Any]:
    store = store_for(settings)
    cubes = cube_items(processed["cubes"])
    samples = SampleCatalog()
    for partner in table_partners(store):
        table = read_table_version(store, partner)
        add_sample_items(samples, table, sample_at_sites(settings, table, processed["cubes"]))
    if samples.uncatalogued:
        get_run_logger().warning(
            "%d specimen(s) kept in their tables but not catalogued (their mission has no "
            "landing date): %s", len(samples.uncatalogued), ", ".join(samples.uncatalogued[:20]),
        )  # fmt: skip
    if not cubes and not samples.items():  # everything was quarantined: keep the release
        current = read_current(store)
        version = current[0].version if current else None
        result = asdict(PublishResult(version, published=False, objects_written=0))
        return result | {"api": serve_in_api(settings, store, version, None)}
    catalog, queryables = build_catalog(name, cubes, samples)
    draft = draft_release(catalog, [*shared_objects(processed), *samples.shared], queryables)
    validate_release(settings, draft)  # an invalid object stops here: nothing is written
    result = asdict(publish_release(store, draft))
    result["api"] = serve_in_api(settings, store, result["version"], draft.files)
    collected = collect_releases(
        store, keep=settings.keep_releases, grace=timedelta(hours=settings.release_grace_hours)
    )
    if collected.deleted:
        get_run_logger().info(
            "collected %d old release(s) (%d objects): %s",
            len(collected.deleted), collected.objects_deleted, ", ".join(collected.deleted),
        )  # fmt: skip
    return result | {
        "collected": collected.deleted,
        "samples": len(samples.items()),
        "uncatalogued": samples.uncatalogued,
    }


def serve_in_api(
    settings: Settings, store: Store, version: str | None, files: Mapping[str, bytes] | None
) -> dict[str, Any] | None:
    """Load the current release into the STAC API's pgstac, when a database is set (after
    the pointer flipped: a failed load leaves the release published and the API behind)."""
    if settings.database_url is None or version is None:
        return None
    state = update_api(store, settings.database_url.get_secret_value(), version, files)
    logger = get_run_logger()
    if state.error is not None:
        logger.error(
            "release %s is published, but the STAC API is behind: it still serves %s (loading "
            "pgstac failed: %s); the next publish or `lunarchive serve` loads it",
            version, state.served or "an older release, if any", state.error,
        )  # fmt: skip
    elif state.loaded:
        logger.info("the STAC API now serves release %s", version)
    return asdict(state) | {"behind": state.behind}


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
    if validator.unavailable:
        names = ", ".join(url.split("/")[-3] for url in sorted(validator.unavailable))
        logger.warning(
            "validated against the STAC core schemas only: the %s extension schemas could not "
            "be fetched (set LUNARCHIVE_STAC_SCHEMA_DIR to a local schema map to validate "
            "them offline)",
            names,
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

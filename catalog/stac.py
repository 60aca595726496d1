"""Pure STAC builders for lunarchive: one function per object kind, no I/O.

Every object is lunar: ``ssys:targets: ["Moon"]``, geometry in lunar planetocentric degrees
(−180..180), and a projection from the data (``proj:code`` only when it is an IAU code by
construction, plus ``proj:wkt2`` / ``proj:projjson``). Hrefs are given by the caller; a
builder never guesses sibling paths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pystac

__all__ = [
    "EXTENSIONS",
    "QUERYABLES_REL",
    "CubeDescription",
    "FileAsset",
    "create_catalog",
    "create_collection",
    "create_cube_item",
    "create_queryables",
    "multihash_sha256",
]

EXTENSIONS = {
    "ssys": "https://stac-extensions.github.io/ssys/v1.1.1/schema.json",
    "proj": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "file": "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "datacube": "https://stac-extensions.github.io/datacube/v2.2.0/schema.json",
    "eo": "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
}
ZARR_MEDIA_TYPE = "application/vnd+zarr"
PNG_MEDIA_TYPE = "image/png"
JSON_MEDIA_TYPE = "application/json"
_MOON = {"ssys:targets": ["Moon"]}
QUERYABLES_REL = "http://www.opengis.net/def/rel/ogc/1.0/queryables"
_TIME_PROPERTIES = {"datetime", "start_datetime", "end_datetime", "created", "updated"}
_NOT_QUERYABLE = {
    "proj:wkt2",
    "proj:projjson",
    "proj:transform",
    "proj:shape",
    "description",
    "cube:dimensions",
    "cube:variables",
    "lunarchive:inputs",
}
_ENUM_LIMIT = 32  # a text property with at most this many values lists them


@dataclass(frozen=True)
class CubeDescription:
    """What an item needs to know about one Zarr tile store (from the flow's tile record)."""

    shape: tuple[int, int]
    transform: tuple[float, float, float, float, float, float]
    proj_code: str | None
    wkt2: str
    projjson: Mapping[str, Any]
    bbox: tuple[float, float, float, float]
    geometry: Mapping[str, Any]
    variable: str
    units: str
    dtype: str
    bands: Sequence[Mapping[str, Any]]  # per band: name, statistics, histogram (raster ext.)
    dimensions: Mapping[str, Any]  # cube:dimensions of the datacube extension


@dataclass(frozen=True)
class FileAsset:
    """One stored file an item links to, with its checksum and size (file extension)."""

    href: str
    sha256: str
    size: int
    media_type: str
    title: str
    roles: tuple[str, ...]


def multihash_sha256(hex_digest: str) -> str:
    """``file:checksum`` wants a multihash: 0x12 (sha2-256), 0x20 (32 bytes), digest."""
    return "1220" + hex_digest


def create_catalog(catalog_id: str, description: str) -> pystac.Catalog:
    catalog = pystac.Catalog(id=catalog_id, description=description, title="lunarchive")
    catalog.stac_extensions = [EXTENSIONS["ssys"]]
    catalog.extra_fields.update(_MOON)
    return catalog


def create_collection(
    collection_id: str,
    *,
    title: str,
    description: str,
    items: Sequence[pystac.Item],
    license: str = "other",  # noqa: A002 - the STAC field's name
    target_class: str = "satellite",
) -> pystac.Collection:
    """A collection whose extent is the union of its items' bboxes and times."""
    bboxes = [list(item.bbox) for item in items if item.bbox] or [[-180.0, -90.0, 180.0, 90.0]]
    union = [
        min(b[0] for b in bboxes),
        min(b[1] for b in bboxes),
        max(b[2] for b in bboxes),
        max(b[3] for b in bboxes),
    ]
    times = [t for item in items for t in _item_times(item)]
    interval: list[datetime | None] = [min(times), max(times)] if times else [None, None]
    collection = pystac.Collection(
        id=collection_id,
        title=title,
        description=description,
        license=license,
        extent=pystac.Extent(pystac.SpatialExtent([union]), pystac.TemporalExtent([interval])),
        stac_extensions=[EXTENSIONS["ssys"]],
        extra_fields={**_MOON, "ssys:target_class": target_class},
    )
    return collection


def _item_times(item: pystac.Item) -> list[datetime]:
    common = item.common_metadata
    return [t for t in (item.datetime, common.start_datetime, common.end_datetime) if t]


def create_cube_item(
    item_id: str,
    cube: CubeDescription,
    *,
    cube_href: str,
    start: datetime,
    end: datetime,
    title: str,
    derived_from: Sequence[str] = (),
    files: Mapping[str, FileAsset] | None = None,
    properties: Mapping[str, Any] | None = None,
) -> pystac.Item:
    """The item of one Zarr tile store: projection from the data, the datacube's dimensions,
    per-band statistics on the ``zarr`` asset, and ``files`` (a ``thumbnail``, the tile's
    inventory) with their checksums. ``properties`` adds namespaced fields (provenance)."""
    extra = dict(properties or {})
    item_properties: dict[str, Any] = {
        "title": title,
        "start_datetime": _rfc3339(start),
        "end_datetime": _rfc3339(end),
        **_MOON,
        "ssys:target_class": "satellite",
        "proj:code": cube.proj_code,
        "proj:wkt2": cube.wkt2,
        "proj:projjson": dict(cube.projjson),
        "proj:shape": list(cube.shape),
        "proj:transform": list(cube.transform),
        "cube:dimensions": dict(cube.dimensions),
        "cube:variables": {
            cube.variable: {
                "dimensions": [d for d in ("band", "y", "x") if d in cube.dimensions],
                "type": "data",
                "unit": cube.units,
            }
        },
        **extra,
    }
    spectral = any(key.startswith(_EO) for band in cube.bands for key in band)
    extensions = ["ssys", "proj", "raster", "datacube"] + (["eo"] if spectral else [])
    extensions += ["file"] if files else []
    item = pystac.Item(
        id=item_id,
        geometry=dict(cube.geometry),
        bbox=list(cube.bbox),
        datetime=None,
        properties=item_properties,
        stac_extensions=[EXTENSIONS[name] for name in extensions],
    )
    item.add_asset("zarr", _cube_asset(cube, cube_href))
    for key, file in (files or {}).items():
        item.add_asset(
            key,
            pystac.Asset(
                href=file.href,
                media_type=file.media_type,
                roles=list(file.roles),
                title=file.title,
                extra_fields={
                    "file:checksum": multihash_sha256(file.sha256),
                    "file:size": file.size,
                },
            ),
        )
    for href in derived_from:
        item.add_link(pystac.Link("derived_from", href, media_type="application/xml"))
    return item


_EO = "eo:"


def _cube_asset(cube: CubeDescription, href: str) -> pystac.Asset:
    """The ``zarr`` asset: ``raster:bands`` (statistics, histogram), and ``eo:bands`` when the
    bands carry ``eo:`` fields (``eo:center_wavelength`` … in micrometres, eo v1.1)."""
    raster = [
        {"data_type": cube.dtype, "unit": cube.units, "nodata": "nan"}
        | {k: v for k, v in band.items() if not k.startswith(_EO)}
        for band in cube.bands
    ]
    fields: dict[str, Any] = {"raster:bands": raster}
    if any(key.startswith(_EO) for band in cube.bands for key in band):
        fields["eo:bands"] = [
            {"name": band["name"]}
            | {k.removeprefix(_EO): v for k, v in band.items() if k.startswith(_EO)}
            for band in cube.bands
        ]
    return pystac.Asset(
        href=href,
        media_type=ZARR_MEDIA_TYPE,
        roles=["data"],
        title=f"Zarr v3 tile store ({cube.variable}, with overviews)",
        extra_fields=fields,
    )


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def create_queryables(title: str, items: Sequence[pystac.Item]) -> dict[str, Any]:
    """The queryables (JSON Schema) of a collection: every property its items carry that a
    researcher can filter on, typed from the values; short text vocabularies as enums."""
    values: dict[str, list[Any]] = {}
    for item in items:
        for key, value in item.properties.items():
            if key not in _NOT_QUERYABLE and value is not None:
                values.setdefault(key, []).append(value)
    properties: dict[str, Any] = {
        "id": {"title": "Item identifier", "type": "string"},
        "collection": {"title": "Collection identifier", "type": "string"},
        "geometry": {
            "title": "Footprint, lunar lon/lat degrees",
            "$ref": "https://geojson.org/schema/Geometry.json",
        },
        "datetime": {"type": "string", "format": "date-time"},  # pystac keeps it apart
    }
    for key in sorted(values):
        properties[key] = _queryable(key, values[key])
    return {
        "$schema": "https://json-schema.org/draft/2019-09/schema",
        "type": "object",
        "title": title,
        "properties": properties,
        "additionalProperties": True,
    }


def _queryable(key: str, seen: list[Any]) -> dict[str, Any]:
    if key in _TIME_PROPERTIES:
        return {"type": "string", "format": "date-time"}
    if all(isinstance(v, bool) for v in seen):
        return {"type": "boolean"}
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in seen):
        return {"type": "number", "minimum": min(seen), "maximum": max(seen)}
    if all(isinstance(v, str) for v in seen):
        distinct = sorted(set(seen))
        return {"type": "string", **({"enum": distinct} if len(distinct) <= _ENUM_LIMIT else {})}
    if all(isinstance(v, list) for v in seen):
        return {"type": "array"}
    return {}

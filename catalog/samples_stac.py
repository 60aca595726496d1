"""STAC for lunar samples: one collection per programme, one item per root specimen.

Why this shape: researchers look for a *sample* (70017), not for each of its hundreds of
splits, so an item is a root specimen (one with no parent in the partner's table) and its
splits are listed inside it (``splits``) and described, row by row, in the specimens table
it links to. The analyses of the root and its splits travel as a Parquet asset of their own;
their major-element composition (mean of the detected bulk analyses, in wt%) and the count of
analyses per technique are item properties, declared in the collection's queryables, so that
CQL2 finds ``TiO2_wt_pct > 6`` or ``analyses_EPMA > 0 AND station = '...'``.

Lunar meteorites have no landing and no collection site on the Moon. They go to their own
collection, ``lunar-meteorites``; their time is when they were found on Earth (the day, or the
whole find year as ``start_datetime``/``end_datetime``). STAC would allow a null geometry, but
stac-geoparquet (the release's item table) and pgstac (``items.geometry`` is NOT NULL) cannot
hold one, so a meteorite's footprint is the whole Moon, the honest answer to "where on the
Moon did it come from", with ``location_source: "unknown_launch_site"`` saying why: a spatial
search finds meteorites as candidates anywhere, and ``mission <> 'Lunar meteorite'`` leaves
them out.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time
from statistics import fmean
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyproj
import pystac
from stac_geoparquet.arrow import stac_table_to_items

from lunarchive.catalog.layout import release_prefix
from lunarchive.catalog.publish import read_current
from lunarchive.catalog.stac import EXTENSIONS, create_collection, create_queryables
from lunarchive.catalog.store import Store, check_key
from lunarchive.schemas.errors import ConfigurationError
from lunarchive.schemas.parquet import read_parquet_bytes
from lunarchive.schemas.samples import Analysis, Specimen, parent_of_sample_id

__all__ = [
    "MAJOR_OXIDES",
    "METEORITES",
    "PARQUET_MEDIA_TYPE",
    "SCIENTIFIC",
    "WHOLE_MOON",
    "SampleTime",
    "SpecimenFamily",
    "TableAsset",
    "composition",
    "create_sample_collection",
    "create_sample_item",
    "programme_of",
    "read_at_site",
    "sample_queryables",
    "sample_time",
    "specimen_families",
    "technique_property",
]

SCIENTIFIC: Final = "https://stac-extensions.github.io/scientific/v1.0.0/schema.json"
PARQUET_MEDIA_TYPE: Final = "application/vnd.apache.parquet"
MAJOR_OXIDES: Final = (
    "SiO2", "TiO2", "Al2O3", "Cr2O3", "FeO", "FeO_T", "Fe2O3", "MnO", "MgO", "CaO", "Na2O",
    "K2O", "P2O5",
)  # fmt: skip
# Analyses that speak for the whole specimen (a glass bead or a mineral grain does not).
_BULK: Final = frozenset({"whole_rock", "bulk_soil", None})
_PROGRAMMES: Final = (
    ("Apollo ", "apollo-samples", "Apollo lunar samples"),
    ("Luna ", "luna-samples", "Luna lunar samples"),
    ("Chang'e-5", "change-5-samples", "Chang'e-5 lunar samples"),
    ("Chang'e-6", "change-6-samples", "Chang'e-6 lunar samples"),
    ("Lunar meteorite", "lunar-meteorites", "Lunar meteorites"),
)
METEORITES: Final = "Lunar meteorite"
WHOLE_MOON: Final = {
    "type": "Polygon",
    "coordinates": [
        [[-180.0, -90.0], [180.0, -90.0], [180.0, 90.0], [-180.0, 90.0], [-180.0, -90.0]]
    ],
}
_DISC_VERTICES: Final = 32
_MOON: Final = pyproj.Geod(a=1_737_400.0, b=1_737_400.0)


def programme_of(mission: str, partner: str) -> tuple[str, str]:
    """The collection id and title of a mission's programme (lunar meteorites are one); a
    sample of no programme goes to its partner's own collection."""
    for prefix, collection_id, title in _PROGRAMMES:
        if mission.startswith(prefix):
            return collection_id, title
    return f"{partner}-samples", f"Lunar samples of partner {partner}"


@dataclass(frozen=True)
class SampleTime:
    """A specimen's STAC time: an instant, or an interval when only the year is known."""

    instant: datetime | None
    start: datetime | None = None
    end: datetime | None = None


def sample_time(root: Specimen, landed: datetime | None = None) -> SampleTime | None:
    """When a specimen was collected: its mission's landing (``landed``), a lunar
    meteorite's find date, or its find year as an interval; None when nothing says."""
    if root.mission != METEORITES:
        return None if landed is None else SampleTime(landed)
    if root.found_date is not None:
        return SampleTime(datetime.combine(root.found_date, time(), UTC))
    if root.found_year is not None:
        return SampleTime(
            None,
            datetime(root.found_year, 1, 1, tzinfo=UTC),
            datetime(root.found_year, 12, 31, 23, 59, 59, tzinfo=UTC),
        )
    return None


@dataclass(frozen=True)
class SpecimenFamily:
    """A root specimen, its splits (any depth) and every analysis of any of them."""

    root: Specimen
    splits: tuple[Specimen, ...]
    analyses: tuple[Analysis, ...]


def specimen_families(
    specimens: Iterable[Specimen], analyses: Iterable[Analysis]
) -> list[SpecimenFamily]:
    """Group a partner's table by root specimen, sorted by the root's sample id.

    An analysis belongs to the family of the nearest specimen it names or descends from
    (``15415,177`` → ``15415``); one naming no specimen of the table belongs to none.
    """
    by_id = {s.sample_id: s for s in specimens}

    def root_of(sample_id: str) -> str | None:
        found = None
        current: str | None = sample_id
        while current is not None:
            if current in by_id:
                found = current
                current = by_id[current].parent_id or parent_of_sample_id(current)
            else:
                current = parent_of_sample_id(current)
        return found

    members: dict[str, list[Specimen]] = defaultdict(list)
    for specimen in by_id.values():
        root = root_of(specimen.sample_id)
        if root is not None and root != specimen.sample_id:
            members[root].append(specimen)
    measured: dict[str, list[Analysis]] = defaultdict(list)
    for analysis in analyses:
        root = root_of(analysis.sample_id)
        if root is not None:
            measured[root].append(analysis)
    roots = sorted(i for i in by_id if root_of(i) == i)
    return [
        SpecimenFamily(
            root=by_id[root],
            splits=tuple(sorted(members[root], key=lambda s: s.sample_id)),
            analyses=tuple(sorted(measured[root], key=lambda a: a.analysis_id)),
        )
        for root in roots
    ]


def composition(analyses: Iterable[Analysis]) -> dict[str, float]:
    """``{"TiO2_wt_pct": 12.4, ...}``: the mean of the detected bulk values of each major
    oxide (whole rock or bulk soil; glass and mineral analyses describe a part only)."""
    values: dict[str, list[float]] = defaultdict(list)
    for analysis in analyses:
        if (
            analysis.analyte in MAJOR_OXIDES
            and analysis.material_analyzed in _BULK
            and analysis.detection == "detected"
        ):
            values[analysis.analyte].append(analysis.value)
    return {f"{oxide}_wt_pct": round(fmean(v), 4) for oxide, v in sorted(values.items())}


def technique_property(technique: str) -> str:
    """The property counting a technique's analyses: ``analyses_EPMA``, ``analyses_Ar_Ar``."""
    return "analyses_" + re.sub(r"[^A-Za-z0-9]+", "_", technique).strip("_")


@dataclass(frozen=True)
class TableAsset:
    """A Parquet object an item links to (href relative to the item)."""

    href: str
    sha256: str
    size: int
    title: str
    description: str | None = None


def create_sample_item(
    family: SpecimenFamily,
    *,
    item_id: str,
    collected: datetime | SampleTime,
    partner: str,
    specimens: TableAsset,
    analyses: TableAsset | None = None,
    at_site: TableAsset | None = None,
    landing_site: tuple[float, float] | None = None,
) -> pystac.Item:
    """The item of one root specimen: geometry at its collection site (a point, or the
    uncertainty disc as a polygon), or at its mission's ``landing_site`` (lat, lon) when the
    record gives no position, or the whole Moon for a lunar meteorite of unknown origin
    (``location_source`` says which)."""
    root = family.root
    when = collected if isinstance(collected, SampleTime) else SampleTime(collected)
    geometry, bbox, source = _site_geometry(root, landing_site)
    properties = _specimen_properties(root) | {
        "title": f"Lunar sample {root.sample_id}",
        "ssys:targets": ["Moon"],
        "ssys:target_class": "sample",
        "partner": partner,
        "location_source": source,
        "splits": [s.sample_id for s in family.splits],
        "analysis_count": len(family.analyses),
        **_interval(when),
        **composition(family.analyses),
        **_technique_counts(family.analyses),
    }
    publications = _publications(family)
    extensions = [EXTENSIONS["ssys"], EXTENSIONS["file"]]
    if publications:
        properties["sci:publications"] = publications
        extensions.append(SCIENTIFIC)
    item = pystac.Item(
        id=item_id,
        geometry=geometry,
        bbox=bbox,
        datetime=when.instant,
        properties=properties,
        stac_extensions=extensions,
    )
    item.add_asset("specimens", _asset(specimens, roles=["metadata"]))
    if analyses is not None:
        item.add_asset("analyses", _asset(analyses, roles=["data"]))
    if at_site is not None:
        item.add_asset("at-site", _asset(at_site, roles=["data"]))
    return item


def _interval(when: SampleTime) -> dict[str, str]:
    if when.instant is not None or when.start is None or when.end is None:
        return {}
    return {
        "start_datetime": when.start.isoformat().replace("+00:00", "Z"),
        "end_datetime": when.end.isoformat().replace("+00:00", "Z"),
    }


_COPIED: Final = (
    "sample_id", "level", "mission", "curator", "station", "landmark", "collection_method",
    "return_container", "material", "classification", "mass_g", "mass_kind",
    "pristinity_pct", "description", "found_year", "found_date",
)  # fmt: skip


def _specimen_properties(root: Specimen) -> dict[str, Any]:
    values = root.model_dump(include=set(_COPIED), mode="json")
    properties = {key: values[key] for key in _COPIED if values.get(key) is not None}
    if root.location is not None and root.location.uncertainty_m is not None:
        properties["location_uncertainty_m"] = root.location.uncertainty_m
    if root.depth_cm is not None:
        properties |= {"depth_top_cm": root.depth_cm.top, "depth_bottom_cm": root.depth_cm.bottom}
    return properties


def _site_geometry(
    root: Specimen, landing_site: tuple[float, float] | None
) -> tuple[dict[str, Any] | None, list[float] | None, str]:
    if root.location is None:
        if root.mission == METEORITES:
            return WHOLE_MOON, [-180.0, -90.0, 180.0, 90.0], "unknown_launch_site"
        if landing_site is None:
            return None, None, "unknown"
        lat, lon = landing_site
        return _point(lon, lat), [lon, lat, lon, lat], "landing_site"
    lon, lat = root.location.lon_deg, root.location.lat_deg
    radius = root.location.uncertainty_m or 0.0
    if radius <= 0.0:
        return _point(lon, lat), [lon, lat, lon, lat], "specimen"
    azimuths = [360.0 * i / _DISC_VERTICES for i in range(_DISC_VERTICES)]
    lons, lats, _ = _MOON.fwd(
        [lon] * _DISC_VERTICES, [lat] * _DISC_VERTICES, azimuths, [radius] * _DISC_VERTICES
    )
    # clockwise azimuths give a clockwise ring: reverse it (GeoJSON outer rings are CCW)
    ring = [[round(x, 7), round(y, 7)] for x, y in zip(lons, lats, strict=True)][::-1]
    ring.append(ring[0])
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    polygon = {"type": "Polygon", "coordinates": [ring]}
    return polygon, [min(xs), min(ys), max(xs), max(ys)], "specimen"


def _point(lon: float, lat: float) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [lon, lat]}


def _technique_counts(analyses: Iterable[Analysis]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for analysis in analyses:
        counts[technique_property(analysis.technique)] += 1
    return dict(sorted(counts.items()))


def _publications(family: SpecimenFamily) -> list[dict[str, str]]:
    """The publications of the analyses (DOI and citation) and of the root's references."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    for analysis in family.analyses:
        cited = analysis.citation
        if cited is None or not (cited.doi or cited.citation_id):
            continue
        entry = {"doi": cited.doi} if cited.doi else {}
        if cited.citation_id:
            entry["citation"] = cited.citation_id
        found[(cited.doi or "", cited.citation_id or "")] = entry
    for reference in family.root.references:
        found.setdefault(("", reference), {"citation": reference})
    return [found[key] for key in sorted(found)]


def _asset(table: TableAsset, *, roles: list[str]) -> pystac.Asset:
    return pystac.Asset(
        href=table.href,
        media_type=PARQUET_MEDIA_TYPE,
        roles=roles,
        title=table.title,
        description=table.description,
        extra_fields={"file:checksum": "1220" + table.sha256, "file:size": table.size},
    )


def create_sample_collection(
    collection_id: str,
    *,
    title: str,
    items: Sequence[pystac.Item],
    partners: Sequence[str],
    licences: Sequence[str],
) -> pystac.Collection:
    """A programme's collection: extent from its items, the partners as producers."""
    distinct = sorted(set(licences))
    collection = create_collection(
        collection_id,
        title=title,
        description=f"{title}: specimen records and analyses shared by "
        f"{', '.join(sorted(set(partners)))}, one item per root specimen.",
        items=items,
        license=distinct[0] if len(distinct) == 1 else "other",
        target_class="sample",
    )
    collection.providers = [
        pystac.Provider(name=partner, roles=[pystac.ProviderRole.PRODUCER])
        for partner in sorted(set(partners))
    ]
    return collection


def sample_queryables(title: str, items: Sequence[pystac.Item]) -> dict[str, Any]:
    """The collection's queryables: every item property, and every major oxide (wt%) and
    technique count whether or not this release has a value for it."""
    schema = create_queryables(title, items)
    properties: dict[str, Any] = schema["properties"]
    for oxide in MAJOR_OXIDES:
        name = f"{oxide}_wt_pct"
        properties[name] = (
            {"type": "number"}
            | properties.get(name, {})
            | {
                "title": f"{oxide}, wt% (mean of the detected whole-rock / bulk-soil analyses)",
                "unit": "wt%",
            }
        )
    for name, node in properties.items():
        if name.startswith("analyses_"):
            node["title"] = f"Number of {name.removeprefix('analyses_')} analyses"
    schema["properties"] = dict(sorted(properties.items()))
    return schema


def read_at_site(store: Store, sample_id: str) -> tuple[str, str, list[dict[str, Any]]]:
    """The current release's version, the item holding ``sample_id`` (itself or a split of
    it), and the at-site rows of that sample (of its root when it has none of its own).

    Reads the release's stac-geoparquet with Arrow (a lookup by id needs no query engine).
    """
    current = read_current(store)
    if current is None:
        raise ConfigurationError(f"{store.url}: no release is published yet")
    version = current[0].version
    candidates = [sample_id]
    while (parent := parent_of_sample_id(candidates[-1])) is not None:
        candidates.append(parent)
    data = store.read(release_prefix(version) + "items.parquet")
    table = read_parquet_bytes(data, use_threads=False)
    if "sample_id" not in table.column_names:
        raise ConfigurationError(f"no specimen {sample_id} in release {version}")
    found = table.filter(pc.is_in(table["sample_id"], value_set=pa.array(candidates)))
    items = list(stac_table_to_items(found))
    if not items:
        raise ConfigurationError(f"no specimen {sample_id} in release {version}")
    item = max(items, key=lambda i: len(i["properties"]["sample_id"]))  # the nearest ancestor
    asset = item.get("assets", {}).get("at-site")
    if asset is None:
        return version, item["id"], []
    key = check_key(os.path.normpath(release_prefix(version) + asset["href"]))
    rows = read_parquet_bytes(store.read(key), use_threads=False).to_pylist()
    own = [row for row in rows if row["sample_id"] == sample_id]
    root = item["properties"]["sample_id"]
    return version, item["id"], own or [row for row in rows if row["sample_id"] == root]

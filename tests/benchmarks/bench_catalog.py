"""Benchmark: publishing and searching 100 000 lunar STAC items, against the user's baseline.

Input (generated, deterministic): items of five collections spread over the whole Moon —
narrow- and wide-angle camera strips, terrain-camera strips, mosaic tiles, and polar DEM
tiles — with realistic properties (mission, instrument, product type, resolution in m,
acquisition time). Footprints crossing ±180° are split into MultiPolygons (bbox west > east);
polar tiles are sectors and caps reaching the pole.

Measured in one run, on the services it starts itself (SeaweedFS, PostgreSQL with PostGIS and
pgstac, through ``infra/services.py run`` unless they are running already):

* **publish**: lunarchive's release of those items, stage by stage — the catalog tree
  (pystac), the static catalog rendered with relative links and the stac-geoparquet file,
  validation of every object against its schemas, the objects written to the store with the
  manifest and the pointer flip — then the load into pgstac (one transaction), against
  pypgstac's own ``Loader`` into a second database (``tests/benchmarks/catalog_api.py``);
* **search**, p50 / p95 over a fixed set of queries (bbox, datetime, CQL2 property,
  seam-crossing bbox, polar bbox), full items, limit 100:
  - the embedded search (``catalog.search.search_items`` over the release's stac-geoparquet);
  - the STAC API (``catalog.api.create_app`` under uvicorn, over HTTP, POST /search), and
    the anchor: plain stac-fastapi-pgstac over the pypgstac-loaded database, interleaved;
  - the baseline without lunarchive: pystac walking the release's static catalog from the
    store's folder and filtering in Python — time-boxed, with its rate extrapolated to all
    items when the box is too short (the report says so);
* peak memory (max RSS) of the benchmark process (the APIs run in child processes).

    python -m tests.benchmarks.bench_catalog [--items 100000] [--store s3|folder]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pystac

from lunarchive.catalog.publish import ITEM_TO_ROOT

ROOT = Path(__file__).resolve().parents[2]
SEED = 20261126
LIMIT = 100  # items per page, both engines (the anchor's figures are for 100 full items)
EPOCH = datetime(2009, 6, 18, tzinfo=UTC)  # LRO's launch; Kaguya's strips come earlier


@dataclass(frozen=True)
class Kind:
    """One collection of generated products."""

    collection: str
    title: str
    mission: str
    instrument: str
    product_type: str
    share: float  # of all items
    width_deg: tuple[float, float]  # footprint width (lon at the equator) range
    height_deg: tuple[float, float]
    gsd_m: tuple[float, float]
    start: datetime
    years: float
    max_lat: float = 88.0


KINDS = (
    Kind("lro-lroc-nac", "LROC narrow-angle camera images", "LRO", "LROC NAC", "EDR",
         0.45, (0.1, 0.2), (0.5, 1.0), (0.5, 2.0), EPOCH, 15.0),
    Kind("lro-lroc-wac", "LROC wide-angle camera images", "LRO", "LROC WAC", "CDR",
         0.2, (1.5, 2.5), (4.0, 8.0), (75.0, 100.0), EPOCH, 15.0),
    Kind("kaguya-tc", "Kaguya Terrain Camera strips", "SELENE", "TC", "TC_MAP",
         0.2, (0.4, 0.6), (2.0, 4.0), (7.0, 10.0), datetime(2007, 11, 1, tzinfo=UTC), 1.6),
    Kind("change2-ccd", "Chang'e-2 CCD mosaic tiles", "Chang'e-2", "CCD", "DOM",
         0.12, (4.0, 4.0), (4.0, 4.0), (7.0, 7.0), datetime(2010, 10, 24, tzinfo=UTC), 0.7,
         70.0),
    Kind("lro-lola-polar", "LOLA polar digital elevation models", "LRO", "LOLA", "GDR_POLAR",
         0.03, (30.0, 30.0), (5.0, 10.0), (5.0, 240.0), EPOCH, 15.0, 90.0),
)  # fmt: skip


# --- generated items -----------------------------------------------------------------------


def _ring(west: float, south: float, east: float, north: float) -> list[list[list[float]]]:
    return [[[west, south], [east, south], [east, north], [west, north], [west, south]]]


def footprint(lon0: float, width: float, south: float, north: float) -> tuple[Any, list[float]]:
    """A lon/lat box starting at ``lon0`` (−180..180), split at ±180° when it crosses it."""
    east = lon0 + width
    if east <= 180.0:
        geometry = {"type": "Polygon", "coordinates": _ring(lon0, south, east, north)}
        return geometry, [lon0, south, east, north]
    east -= 360.0
    parts = [_ring(lon0, south, 180.0, north), _ring(-180.0, south, east, north)]
    return {"type": "MultiPolygon", "coordinates": parts}, [lon0, south, east, north]


def polar_footprint(rng: random.Random, kind: Kind) -> tuple[Any, list[float]]:
    """A polar tile: a 30° sector from its edge latitude to the pole, or a whole cap."""
    north = rng.random() < 0.5
    edge = round(90.0 - rng.uniform(*kind.height_deg), 3)
    south, top = (edge, 90.0) if north else (-90.0, -edge)
    if rng.random() < 0.2:  # a cap: every longitude, to the pole
        geometry = {"type": "Polygon", "coordinates": _ring(-180.0, south, 180.0, top)}
        return geometry, [-180.0, south, 180.0, top]
    lon0 = -180.0 + 30.0 * rng.randrange(12)
    return footprint(lon0, 30.0, south, top)


def generate_items(count: int, seed: int = SEED) -> dict[str, list[pystac.Item]]:
    """``count`` items, by collection id (deterministic for a seed)."""
    rng = random.Random(seed)
    by_collection: dict[str, list[pystac.Item]] = {kind.collection: [] for kind in KINDS}
    weights = [kind.share for kind in KINDS]
    for index in range(count):
        kind = rng.choices(KINDS, weights)[0]
        by_collection[kind.collection].append(_item(rng, kind, index))
    return by_collection


def _item(rng: random.Random, kind: Kind, index: int) -> pystac.Item:
    if kind.max_lat >= 90.0:
        geometry, bbox = polar_footprint(rng, kind)
    else:
        height = rng.uniform(*kind.height_deg)
        south = rng.uniform(-kind.max_lat, kind.max_lat - height)
        # strips widen in longitude towards the poles (same ground width)
        stretch = min(1.0 / max(math.cos(math.radians(south + height / 2)), 0.05), 36.0)
        width = min(rng.uniform(*kind.width_deg) * stretch, 60.0)
        lon0 = rng.uniform(-180.0, 180.0)
        geometry, bbox = footprint(
            round(lon0, 5), round(width, 5), round(south, 5), round(south + height, 5)
        )
    when = kind.start + timedelta(days=rng.uniform(0.0, kind.years * 365.25))
    item_id = f"{kind.collection}-{index:07d}"
    properties: dict[str, Any] = {
        "title": f"{kind.instrument} {kind.product_type} {index:07d}",
        "mission": kind.mission,
        "instrument": kind.instrument,
        "product_type": kind.product_type,
        "gsd": round(rng.uniform(*kind.gsd_m), 2),
        "ssys:targets": ["Moon"],
        "proj:code": "IAU_2015:30100",
    }
    item = pystac.Item(
        id=item_id,
        geometry=geometry,
        bbox=bbox,
        datetime=when.replace(microsecond=0),
        properties=properties,
        stac_extensions=[
            "https://stac-extensions.github.io/ssys/v1.1.1/schema.json",
            "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
        ],
    )
    raw = f"{ITEM_TO_ROOT}raw/{kind.collection}/{item_id}"
    item.add_asset(
        "data",
        pystac.Asset(f"{raw}.IMG", title="Product", media_type="application/octet-stream",
                     roles=["data"]),
    )  # fmt: skip
    item.add_asset(
        "metadata",
        pystac.Asset(f"{raw}.xml", title="PDS4 label", media_type="application/xml",
                     roles=["metadata"]),
    )  # fmt: skip
    return item


# --- publish -------------------------------------------------------------------------------


@dataclass
class Stages:
    """Wall seconds of each publish stage, in order."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        print(f"  {name:<34} {self.seconds[name]:8.2f} s", file=sys.stderr, flush=True)


def publish_items(
    store: Any, by_collection: dict[str, list[pystac.Item]], schema_dir: Path, stages: Stages
) -> Any:
    """lunarchive's publish of one release holding the items: what the publish flow does."""
    from lunarchive.catalog.publish import draft_release, paused_gc, publish_release
    from lunarchive.catalog.stac import (
        QUERYABLES_REL,
        create_catalog,
        create_collection,
        create_queryables,
    )
    from lunarchive.catalog.store import json_bytes
    from lunarchive.catalog.validate import StacValidator

    with stages.time("catalog tree (pystac)"), paused_gc():  # as the flow's build_catalog
        catalog = create_catalog("lunarchive", "Generated lunar products (benchmark).")
        # pystac looks each parent's self link up once per item added: without one, it scans
        # every link the parent has (quadratic); the renderer ignores self links anyway
        catalog.set_self_href("/release/catalog.json")
        queryables: dict[str, bytes] = {}
        for kind in KINDS:
            items = by_collection[kind.collection]
            collection = create_collection(
                kind.collection,
                title=kind.title,
                description=f"{kind.title} (generated for the benchmark).",
                items=items,
            )
            catalog.add_child(collection)  # first: pystac's add_items is quadratic otherwise
            collection.add_items(items)
            collection.add_link(
                pystac.Link(QUERYABLES_REL, "./queryables.json", "application/schema+json")
            )
            schema = create_queryables(f"Queryables of {kind.collection}", items)
            queryables[f"{kind.collection}/queryables.json"] = json_bytes(schema)
    with stages.time("render static catalog + geoparquet"):
        draft = draft_release(catalog, [], queryables)
    with stages.time("validate every object"):
        checked = StacValidator(schema_dir).validate_files(draft.files)
    with stages.time("write objects + manifest + pointer"):
        result = publish_release(store, draft)
    print(f"  {len(checked)} objects validated, {result.objects_written} written",
          file=sys.stderr)  # fmt: skip
    return draft, result


# --- search --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One query of the fixed set, as the embedded search and the STAC API take it."""

    name: str
    bbox: tuple[float, float, float, float] | None = None
    datetime: str | None = None
    filter: str | None = None

    def api_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"limit": LIMIT}
        if self.bbox is not None:
            body["bbox"] = list(self.bbox)
        if self.datetime is not None:
            body["datetime"] = self.datetime
        if self.filter is not None:
            body |= {"filter": self.filter, "filter-lang": "cql2-text"}
        return body


QUERIES = (
    Query("bbox (equatorial, 10° × 10°)", bbox=(20.0, -10.0, 30.0, 0.0)),
    Query("datetime (one quarter)", datetime="2012-01-01T00:00:00Z/2012-03-31T23:59:59Z"),
    Query("CQL2 property", filter="instrument = 'LROC WAC' AND gsd < 80"),
    Query("seam-crossing bbox", bbox=(175.0, -30.0, -175.0, 30.0)),
    Query("polar bbox (south pole)", bbox=(0.0, -90.0, 30.0, -86.0)),
)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


@dataclass
class Latencies:
    """Seconds per call, by query name, and the number of items each call returned."""

    engine: str
    seconds: dict[str, list[float]] = field(default_factory=dict)
    returned: dict[str, int] = field(default_factory=dict)

    def p(self, share: float) -> float:
        return percentile([s for calls in self.seconds.values() for s in calls], share)


def measure(engine: str, run: Callable[[Query], int], repeats: int) -> Latencies:
    """Each query once to warm up, then ``repeats`` times, in turns."""
    found = Latencies(engine)
    for query in QUERIES:
        found.returned[query.name] = run(query)
    for _ in range(repeats):
        for query in QUERIES:
            start = time.perf_counter()
            run(query)
            found.seconds.setdefault(query.name, []).append(time.perf_counter() - start)
    return found


def embedded_engine(parquet: Path) -> Callable[[Query], int]:
    from lunarchive.catalog.search import SearchQuery, search_items

    def run(query: Query) -> int:
        found = search_items(
            parquet,
            SearchQuery(bbox=query.bbox, datetime=query.datetime, filter=query.filter,
                        limit=LIMIT),
        )  # fmt: skip
        return len(found)

    return run


def pystac_walk(folder: Path, time_box_s: float) -> dict[str, Any]:
    """The user's baseline without lunarchive: pystac reads the static catalog of a synced
    release and every query is a walk over all items, filtered in Python (shapely for the
    footprints; the seam-crossing box split in two). One walk evaluates all five queries;
    it stops at the time box, and its rate gives the time of a whole walk."""
    from shapely.geometry import box, shape

    def boxes(query: Query) -> list[Any]:
        if query.bbox is None:
            return []
        west, south, east, north = query.bbox
        if west <= east:
            return [box(west, south, east, north)]
        return [box(west, south, 180.0, north), box(-180.0, south, east, north)]

    areas = {query.name: boxes(query) for query in QUERIES}
    start_q, end_q = (
        datetime.fromisoformat(part)
        for part in QUERIES[1].datetime.split("/")  # type: ignore[union-attr]
    )
    matches = dict.fromkeys(areas, 0)
    started = time.perf_counter()
    catalog = pystac.Catalog.from_file(str(folder / "catalog.json"))
    walked, complete = 0, True
    for item in catalog.get_items(recursive=True):
        walked += 1
        footprint = shape(item.geometry) if item.geometry else None
        for query in QUERIES:
            if query.bbox is not None:
                hit = footprint is not None and any(
                    footprint.intersects(a) for a in areas[query.name]
                )
            elif query.datetime is not None:
                hit = item.datetime is not None and start_q <= item.datetime <= end_q
            else:
                props = item.properties
                hit = props.get("instrument") == "LROC WAC" and props.get("gsd", 1e9) < 80
            matches[query.name] += hit
        if time.perf_counter() - started > time_box_s:
            complete = False
            break
    seconds = time.perf_counter() - started
    return {"walked": walked, "seconds": seconds, "complete": complete,
            "items_per_s": walked / seconds, "matches": matches}  # fmt: skip


# --- the run -------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def open_bench_store(kind: str, scratch: Path) -> Any:
    import uuid

    from lunarchive.catalog.store import S3Options, open_store

    if kind == "folder":
        return open_store((scratch / "store").as_uri())
    env = os.environ
    options = S3Options(
        endpoint_url=env["LUNARCHIVE_S3_ENDPOINT_URL"],
        access_key_id=env["LUNARCHIVE_S3_ACCESS_KEY_ID"],
        secret_access_key=env["LUNARCHIVE_S3_SECRET_ACCESS_KEY"],
        region=env.get("LUNARCHIVE_S3_REGION", "us-east-1"),
    )
    bucket = env["LUNARCHIVE_TEST_S3_BUCKET"]
    return open_store(f"s3://{bucket}/bench-{uuid.uuid4().hex[:8]}", s3=options)


LOADERS = ("lunarchive, 1 transaction", "pypgstac Loader, anchor")


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from tests.benchmarks import catalog_api
    from tests.conftest import new_database

    schema_dir = Path(
        os.environ.get("LUNARCHIVE_STAC_SCHEMA_DIR", ROOT.parent / "shared" / "stac-schemas")
    )
    report: dict[str, Any] = {"items": args.items, "store": args.store, "cpus": os.cpu_count()}
    print(f"generating {args.items} items …", file=sys.stderr, flush=True)
    by_collection = generate_items(args.items)
    kinds = {"Polygon": 0, "MultiPolygon": 0}
    for items in by_collection.values():
        for item in items:
            kinds[item.geometry["type"]] += 1  # type: ignore[index]
    report["geometries"] = kinds
    report["rss_after_generation_mb"] = peak_rss_mb()
    with tempfile.TemporaryDirectory(prefix="lunarchive-bench-") as tmp:
        scratch = Path(tmp)
        store = open_bench_store(args.store, scratch)
        stages = Stages()
        print(f"publishing to {store.url} …", file=sys.stderr, flush=True)
        draft, result = publish_items(store, by_collection, schema_dir, stages)
        del by_collection
        report["publish_s"] = dict(stages.seconds)
        report["objects_written"] = result.objects_written
        report["rss_after_publish_mb"] = peak_rss_mb()
        parquet = scratch / "items.parquet"
        parquet.write_bytes(draft.files["items.parquet"])
        with new_database() as database_url, new_database() as anchor_url:
            print("loading pgstac (lunarchive, then pypgstac's Loader) …", file=sys.stderr,
                  flush=True)  # fmt: skip
            loads = catalog_api.timed_loads(
                store, result.version, draft.files, database_url, anchor_url
            )
            report["pgstac_s"] = {
                "pgstac: read the release's documents": loads["read"],
                f"pgstac: load ({LOADERS[0]})": loads["ours"],
                f"pgstac: load ({LOADERS[1]})": loads["anchor"],
            }
            report["rss_after_load_mb"] = peak_rss_mb()
            print("searching (embedded) …", file=sys.stderr, flush=True)
            engines = [measure("embedded", embedded_engine(parquet), args.repeats)]
            print("searching (STAC API and the anchor, over HTTP) …", file=sys.stderr, flush=True)
            bodies = {query.name: query.api_body() for query in QUERIES}
            with (
                catalog_api.serve("ours", database_url) as ours,
                catalog_api.serve("anchor", anchor_url) as anchor,
            ):
                timings = catalog_api.measure(
                    {"STAC API": catalog_api.searcher(ours),
                     "anchor": catalog_api.searcher(anchor, cql2_json=True)},
                    bodies,
                    args.repeats,
                )  # fmt: skip
            engines += [
                Latencies(name, seconds=timings.seconds[name], returned=timings.returned[name])
                for name in ("STAC API", "anchor")
            ]
            report["load_average"] = catalog_api.load_average()
        report["search"] = {
            e.engine: {"p50_ms": 1000 * e.p(0.5), "p95_ms": 1000 * e.p(0.95),
                       "per_query_p50_ms": {q: 1000 * statistics.median(s)
                                            for q, s in e.seconds.items()},
                       "returned": e.returned}
            for e in engines
        }  # fmt: skip
        for engine, figures in report["search"].items():
            print(f"  {engine}: p50 {figures['p50_ms']:.1f} ms, p95 {figures['p95_ms']:.1f} ms",
                  file=sys.stderr, flush=True)  # fmt: skip
        folder = static_folder(store, result.version, draft.files, scratch)
        del draft
        print(f"walking the static catalog with pystac (time box {args.walk_s:g} s) …",
              file=sys.stderr, flush=True)  # fmt: skip
        walk = pystac_walk(folder, args.walk_s)
        walk["full_walk_s"] = args.items / walk["items_per_s"]
        report["pystac_walk"] = walk
    report["peak_rss_mb"] = peak_rss_mb()
    return report


def static_folder(store: Any, version: str, files: dict[str, bytes], scratch: Path) -> Path:
    """The release's static catalog in a folder, as a user who synced it has it."""
    from lunarchive.catalog.layout import release_prefix

    if store.url.startswith("file://"):
        return Path(store.url.removeprefix("file://")) / release_prefix(version)
    folder = scratch / "static"
    for key, data in files.items():
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def print_report(report: dict[str, Any]) -> None:
    publish = report["publish_s"]
    total = sum(publish.values())
    pg = report["pgstac_s"]
    load_ratio = (
        pg["pgstac: load (lunarchive, 1 transaction)"]
        / pg["pgstac: load (pypgstac Loader, anchor)"]
    )
    lines = [
        f"lunarchive catalog benchmark: {report['items']} generated lunar items "
        f"({report['geometries']['MultiPolygon']} split at ±180°), store: {report['store']}, "
        f"{report['cpus']} CPUs",
        "",
        "publish (static catalog + stac-geoparquet + validation + manifest + pointer):",
        *(f"  {name:<38} {seconds:8.2f} s" for name, seconds in publish.items()),
        f"  {'total':<38} {total:8.2f} s",
        *(f"  {name:<38} {seconds:8.2f} s" for name, seconds in pg.items()),
        "",
        f"search, limit {LIMIT}, full items ({len(QUERIES)} queries):",
    ]
    walk = report["pystac_walk"]
    baseline_s = walk["full_walk_s"]
    for engine, figures in report["search"].items():
        lines.append(
            f"  {engine:<10} p50 {figures['p50_ms']:8.1f} ms   p95 {figures['p95_ms']:8.1f} ms"
            f"   ({baseline_s * 1000 / figures['p50_ms']:,.0f}× faster than the pystac walk)"
        )
        for name, p50 in figures["per_query_p50_ms"].items():
            lines.append(f"      {name:<32} p50 {p50:8.1f} ms  ({figures['returned'][name]} items)")
    api, embedded = report["search"]["STAC API"], report["search"]["embedded"]
    anchor = report["search"]["anchor"]
    lines += [
        f"  STAC API / embedded p50: {api['p50_ms'] / embedded['p50_ms']:.2f}",
        f"  STAC API / anchor (stac-fastapi-pgstac, same data) p50: "
        f"{api['p50_ms'] / anchor['p50_ms']:.2f}, p95: {api['p95_ms'] / anchor['p95_ms']:.2f}",
        f"  pgstac load, lunarchive / pypgstac: {load_ratio:.2f}",
        f"  pystac walk: {walk['walked']} items in {walk['seconds']:.1f} s "
        f"({walk['items_per_s']:.0f} items/s); one query over all {report['items']} items: "
        + (f"{baseline_s:.1f} s (measured)" if walk["complete"]
           else f"~{baseline_s:.0f} s (extrapolated: the walk was stopped at the time box)"),
        "",
        f"load average during the run: {report['load_average']}",
        f"peak memory (max RSS, one process): {report['peak_rss_mb']:.0f} MB "
        f"(after generation {report['rss_after_generation_mb']:.0f} MB, after publish "
        f"{report['rss_after_publish_mb']:.0f} MB, after the pgstac load "
        f"{report['rss_after_load_mb']:.0f} MB)",
    ]  # fmt: skip
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--store", choices=["s3", "folder"], default="s3")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per query")
    parser.add_argument("--walk-s", type=float, default=120.0, help="pystac walk time box")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if not os.environ.get("LUNARCHIVE_DATABASE_URL") or not os.environ.get(
        "LUNARCHIVE_S3_ENDPOINT_URL"
    ):  # start SeaweedFS and PostgreSQL for this run, and stop them after
        state = tempfile.mkdtemp(prefix="lunarchive-bench-services-")
        command = [sys.executable, str(ROOT / "infra" / "services.py"), "run", "--state", state,
                   "--", sys.executable, "-m", "tests.benchmarks.bench_catalog",
                   *(argv if argv is not None else sys.argv[1:])]  # fmt: skip
        return subprocess.run(command, cwd=ROOT, check=False).returncode
    report = run_benchmark(args)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

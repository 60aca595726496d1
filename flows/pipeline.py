"""The ``pipeline`` flow: ``harvest`` → ``process`` (on Dask) → ``harvest-samples`` → ``publish``.

Each stage is a subflow, so the Prefect UI shows one run per stage under the pipeline's run.
A stage hands the next one plain records (keys, sums, summaries), never open files or arrays.

Every run, failed ones included, ends by writing its run report (``reports/<run-id>.json``,
:class:`~lunarchive.schemas.run_report.RunReport`) with the coverage pictures of each cube
collection beside it, and the same figures as a Prefect markdown artifact: what was taken in
per source, the tiles built, the items published, the bytes moved and the time per stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from lunarchive.catalog.layout import LATEST_KEY, release_prefix, safe_id
from lunarchive.catalog.publish import read_current
from lunarchive.catalog.search import SearchQuery, search_release
from lunarchive.catalog.store import Store, json_bytes
from lunarchive.flows._runtime import dask_task_runner, load_settings, store_for
from lunarchive.flows.harvest import harvest
from lunarchive.flows.process import process
from lunarchive.flows.publish import publish
from lunarchive.flows.samples import harvest_samples
from lunarchive.flows.settings import Settings
from lunarchive.processing.coverage import draw_coverage, tile_states
from lunarchive.processing.crs import BBox, lunar_footprint
from lunarchive.processing.grids import EQC_LADDER_PPD, POLAR_LADDER_M, named_grid
from lunarchive.schemas.run_report import (
    CoverageReport,
    RunReport,
    SourceCounts,
    StageTime,
    ViewCoverage,
    coverage_picture_key,
    run_report_key,
)

__all__ = ["pipeline", "run_report_markdown"]

T = TypeVar("T")
_ACCEPTED = ("accepted", "accepted_with_rejections")


class _Run:
    """What the pipeline has seen so far: enough to write the report at any point."""

    def __init__(self, store: Store, source: str) -> None:
        self.store = store
        self.source = source
        self.started = datetime.now(UTC)
        self.stages: list[StageTime] = []
        current = read_current(store)
        self.released_before = {e.key for e in current[1].objects} if current else set()
        self.quarantined_before = _quarantine_records(store)
        self.products: list[dict[str, Any]] = []
        self.processed: dict[str, Any] = {"cubes": [], "unrecognised": []}
        self.drops: dict[str, Any] = {"drops": [], "lifted": [], "waiting": []}
        self.release: dict[str, Any] = {}

    def stage(self, name: str, call: Callable[[], T]) -> T:
        start = time.perf_counter()
        outcome: Literal["completed", "failed"] = "failed"
        try:
            result = call()
            outcome = "completed"
            return result
        finally:
            seconds = round(time.perf_counter() - start, 3)
            self.stages.append(StageTime(stage=name, seconds=seconds, outcome=outcome))


@flow(name="pipeline")
def pipeline(
    source_url: str,
    source: str,
    store_url: str | None = None,
    allow_local_sources: bool | None = None,
) -> dict[str, Any]:
    """Harvest ``source_url`` into ``raw/<source>/``, build its cube, take in the partners'
    sample drops from ``inbox/``, and publish a release; report the run."""
    settings = load_settings(store_url=store_url, allow_local_sources=allow_local_sources)
    run = _Run(store_for(settings), source)
    try:
        run.products = run.stage(
            "harvest",
            lambda: harvest(source_url, source, settings.store_url, settings.allow_local_sources),
        )
        on_dask = process.with_options(task_runner=dask_task_runner(settings))  # type: ignore[arg-type]
        run.processed = run.stage(
            "process", lambda: on_dask(run.products, source, settings.store_url)
        )
        run.drops = run.stage("harvest-samples", lambda: harvest_samples(settings.store_url))
        run.release = run.stage(
            "publish", lambda: publish(run.processed, source, settings.store_url)
        )
    except Exception as exc:
        try:
            _report(settings, run, error=f"{type(exc).__name__}: {exc}".splitlines()[0])
        except Exception:  # noqa: BLE001 - the run's own failure is what the caller needs
            get_run_logger().exception("pipeline %s: the run report could not be written", source)
        raise
    report, key = _report(settings, run, error=None)
    release = run.release
    get_run_logger().info(
        "pipeline %s: %d files fetched, %d cube(s), release %s%s; report %s",
        source, sum(len(p["fetched"]) for p in run.products), len(run.processed["cubes"]),
        release["version"], "" if release["published"] else " (unchanged)", key,
    )  # fmt: skip
    return {
        "source": source,
        "products": len(run.products),
        "fetched": sum(len(p["fetched"]) for p in run.products),
        "cubes": [cube["key"] for cube in run.processed["cubes"]],
        "samples": release.get("samples", 0),
        "drops": [
            {k: d.get(k) for k in ("partner", "drop", "status", "counts", "reason")}
            for d in run.drops["drops"]
        ],
        "embargoes_lifted": run.drops["lifted"],
        "drops_waiting": run.drops["waiting"],
        "unrecognised": run.processed["unrecognised"],
        "release": release,
        "report": key,
        "run_id": report.run_id,
    }


# --- the run report ---------------------------------------------------------------------------


def _report(settings: Settings, run: _Run, *, error: str | None) -> tuple[RunReport, str]:
    """Write ``reports/<run-id>.json``, its pictures, and the markdown artifact."""
    store = run.store
    run_id = str(flow_run.id)
    cubes = list(run.processed.get("cubes", []))
    built = _built(run.processed, run.released_before)
    release = run.release
    version = release.get("version")
    bytes_fetched = _fetched_bytes(store, run.products)
    bytes_released = _released_bytes(store, release)
    coverage: tuple[CoverageReport, ...] = ()
    if error is None and version is not None:
        failed = _failed_tiles(run.processed, run.source)
        coverage = _coverage(settings, store, run_id, cubes, built, failed)
    report = RunReport(
        run_id=run_id,
        source=run.source,
        outcome="failed" if error else "completed",
        error=error,
        started=run.started,
        finished=datetime.now(UTC),
        sources=(_archive_counts(store, run), *_partner_counts(store, run.drops)),
        tiles_built=len(built),
        tiles=len(cubes),
        cubes=tuple(str(cube["key"]) for cube in cubes),
        release=version,
        release_published=bool(release.get("published", False)),
        release_items=int(release.get("item_count", 0)),
        items_published=int(release.get("item_count", 0)) if release.get("published") else 0,
        bytes_fetched=bytes_fetched,
        bytes_released=bytes_released,
        bytes_moved=bytes_fetched + bytes_released,
        stages=tuple(run.stages),
        coverage=coverage,
    )
    key = run_report_key(run_id)
    store.write(key, json_bytes(report.model_dump(mode="json")))
    create_markdown_artifact(
        run_report_markdown(report, key),
        key=f"pipeline-{safe_id(run.source).lower().replace('_', '-').replace('.', '-')}",
        description=f"Run report of the {run.source} pipeline",
    )
    return report, key


def _built(processed: Mapping[str, Any], released: set[str]) -> list[dict[str, Any]]:
    """The cubes new in this run: the tiles ``process`` says it built, else the cubes the
    release before this run did not reference."""
    cubes = list(processed.get("cubes", []))
    if isinstance(processed.get("built"), list):
        built = {str(tile) for tile in processed["built"]}
        return [cube for cube in cubes if str(cube.get("tile")) in built]
    return [c for c in cubes if not any(k.startswith(str(c["key"]) + "/") for k in released)]


def _failed_tiles(processed: Mapping[str, Any], source: str) -> list[dict[str, Any]]:
    """The tiles ``process`` set out to build and did not (quarantined): collection, bbox."""
    cubes = list(processed.get("cubes", []))
    grid_name = processed.get("grid")
    if not isinstance(processed.get("built"), list) or not grid_name:
        return [dict(record) for record in processed.get("failed", [])]
    made = {str(cube.get("tile")) for cube in cubes}
    collection = str(cubes[0].get("collection") or f"{source}-dem") if cubes else f"{source}-dem"
    grid = named_grid(str(grid_name))
    failed = []
    for tile_id in sorted({str(t) for t in processed["built"]} - made):
        tile = grid.tile(tile_id)
        left, bottom, right, top = tile.geobox.boundingbox
        bbox, _ = lunar_footprint(grid.crs_code, (left, bottom, right, top))
        failed.append({"collection": collection, "tile": tile_id, "bbox": list(bbox)})
    return failed


def _quarantine_records(store: Store) -> set[str]:
    return {i.key for i in store.list("quarantine/") if i.key.endswith("/reason.json")}


def _fetched_bytes(store: Store, products: list[dict[str, Any]]) -> int:
    total = 0
    for product in products:
        fetched = set(product.get("fetched", []))
        folders = {key.rsplit("/", 1)[0] + "/" for key in fetched}
        for folder in sorted(folders):
            total += sum(i.size for i in store.list(folder) if i.key in fetched)
    return total


def _released_bytes(store: Store, release: Mapping[str, Any]) -> int:
    keys = set(release.get("keys", []))
    if not keys or not release.get("version"):
        return 0
    sizes = {i.key: i.size for i in store.list(release_prefix(str(release["version"])))}
    sizes |= {i.key: i.size for i in store.list(LATEST_KEY) if i.key == LATEST_KEY}
    return sum(sizes.get(key, 0) for key in keys)


def _archive_counts(store: Store, run: _Run) -> SourceCounts:
    """The harvested archive: products with a file fetched are new, the others unchanged;
    quarantined are the products (and cubes) this run set aside under ``quarantine/<source>/``."""
    prefix = f"quarantine/{safe_id(run.source)}/"
    fresh = _quarantine_records(store) - run.quarantined_before
    new = sum(1 for p in run.products if p.get("fetched"))
    return SourceCounts(
        source=run.source,
        kind="archive",
        new=new,
        unchanged=len(run.products) - new,
        quarantined=sum(1 for key in fresh if key.startswith(prefix)),
    )


def _partner_counts(store: Store, drops: Mapping[str, Any]) -> list[SourceCounts]:
    """Each partner's inbox: its drops taken in, waiting, rejected, or done before this run."""
    done: dict[str, set[str]] = {}
    for info in store.list("inbox/"):
        parts = info.key.split("/")
        if len(parts) == 4 and parts[3] == "report.json":
            done.setdefault(parts[1], set()).add(parts[2])
    this_run: dict[str, list[dict[str, Any]]] = {}
    for drop in drops.get("drops", []):
        this_run.setdefault(str(drop["partner"]), []).append(drop)
    waiting: dict[str, int] = {}
    for name in drops.get("waiting", []):
        partner = str(name).split("/", 1)[0]
        waiting[partner] = waiting.get(partner, 0) + 1
    counts = []
    for partner in sorted(set(done) | set(this_run) | set(waiting)):
        taken = this_run.get(partner, [])
        counts.append(
            SourceCounts(
                source=partner,
                kind="partner",
                new=sum(1 for d in taken if d.get("status") in _ACCEPTED),
                unchanged=len(done.get(partner, set()) - {str(d["drop"]) for d in taken}),
                failed=waiting.get(partner, 0),
                quarantined=sum(1 for d in taken if d.get("status") == "rejected"),
            )
        )
    return counts


def _bbox(record: Mapping[str, Any]) -> BBox | None:
    box = record.get("bbox") or (record.get("summary") or {}).get("bbox")
    if not box or len(box) != 4:
        return None
    west, south, east, north = (float(v) for v in box)
    return (west, south, east, north)


def _coverage(
    settings: Settings,
    store: Store,
    run_id: str,
    cubes: list[dict[str, Any]],
    built: list[dict[str, Any]],
    failed_tiles: list[dict[str, Any]],
) -> tuple[CoverageReport, ...]:
    """Per cube collection of the current release: its tiles that exist, changed, failed."""
    _, items = search_release(store, SearchQuery())
    exists: dict[str, list[BBox]] = {}
    for item in items:
        box = _bbox(item)
        if box and "zarr" in (item.get("assets") or {}):
            exists.setdefault(str(item["collection"]), []).append(box)
    changed: dict[str, list[BBox]] = {}
    for cube in built:
        box = _bbox(cube)
        if box and cube.get("collection"):
            changed.setdefault(str(cube["collection"]), []).append(box)
    failed: dict[str, list[BBox]] = {}
    for record in failed_tiles:
        box = _bbox(record)
        if box and record.get("collection"):
            failed.setdefault(str(record["collection"]), []).append(box)
    collections = sorted(set(exists) | set(changed) | set(failed))
    own = {
        str(c["collection"]): str(c["grid"]) for c in cubes if c.get("grid") and c.get("collection")
    }
    reports = []
    for collection in collections:
        views: dict[str, ViewCoverage] = {}
        for view, name in _view_grids(settings, own.get(collection)).items():
            grid = named_grid(name)
            states = tile_states(
                grid,
                exists=exists.get(collection, []),
                changed=changed.get(collection, []),
                failed=failed.get(collection, []),
            )
            key = coverage_picture_key(run_id, collection, view)
            store.write(key, draw_coverage(grid, states, title=f"{collection} ({view})"))
            views[view] = ViewCoverage(
                grid=name,
                tiles=len(states),
                exists=tuple(t for t, s in states.items() if s != "absent"),
                changed=tuple(t for t, s in states.items() if s == "changed"),
                failed=tuple(t for t, s in states.items() if s == "failed"),
                picture=key,
            )
        reports.append(CoverageReport(collection=collection, views=views))  # type: ignore[arg-type]
    return tuple(reports)


def _view_grids(settings: Settings, own: str | None) -> dict[str, str]:
    """The grids drawn: the settings', else the collection's own grid and the polar grids on
    the same rung of the ladder, else moon-eqc-128 and the 237 m polar grids."""
    eqc, north, south = "moon-eqc-128", "moon-np-237", "moon-sp-237"
    if own:
        kind, _, number = own.removeprefix("moon-").partition("-")
        if kind in ("eqc", "eqc180"):
            eqc = own
            ppd = int(float(number))
            if ppd in EQC_LADDER_PPD:
                metres = POLAR_LADDER_M[EQC_LADDER_PPD.index(ppd)]
                north, south = f"moon-np-{metres}", f"moon-sp-{metres}"
        elif kind == "np":
            north, south = own, f"moon-sp-{number}"
        elif kind == "sp":
            north, south = f"moon-np-{number}", own
    return {
        "global": settings.coverage_global_grid or eqc,
        "north": settings.coverage_north_grid or north,
        "south": settings.coverage_south_grid or south,
    }


def run_report_markdown(report: RunReport, key: str) -> str:
    """The Prefect artifact of a run report."""
    state = "published" if report.release_published else "unchanged"
    lines = [
        f"# Pipeline run of `{report.source}`: {report.outcome}",
        "",
        f"Report: `{key}`. Started {report.started:%Y-%m-%d %H:%M:%S}Z, "
        f"{(report.finished - report.started).total_seconds():.1f} s.",
    ]
    if report.error:
        lines += ["", f"**Error**: {report.error}"]
    lines += [
        "",
        "| source | kind | new | unchanged | failed | quarantined |",
        "|---|---|---:|---:|---:|---:|",
        *(
            f"| {s.source} | {s.kind} | {s.new} | {s.unchanged} | {s.failed} | {s.quarantined} |"
            for s in report.sources
        ),
        "",
        f"Tiles built: {report.tiles_built} of {report.tiles}. Release "
        f"`{report.release or 'none'}` ({state}): {report.items_published} item(s) published, "
        f"{report.release_items} in the release.",
        f"Bytes moved: {report.bytes_moved} ({report.bytes_fetched} fetched, "
        f"{report.bytes_released} of release objects written).",
        "",
        "| stage | seconds | outcome |",
        "|---|---:|---|",
        *(f"| {s.stage} | {s.seconds:.1f} | {s.outcome} |" for s in report.stages),
    ]
    for coverage in report.coverage:
        lines += ["", f"**Coverage of `{coverage.collection}`**:"]
        for view, seen in coverage.views.items():
            lines.append(
                f"- {view} ({seen.grid}): {len(seen.exists)} of {seen.tiles} tiles, "
                f"{len(seen.changed)} changed, {len(seen.failed)} failed: `{seen.picture}`"
            )
    return "\n".join(lines) + "\n"

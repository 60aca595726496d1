"""The ``lunarchive`` command line: ``demo``, ``pipeline``, ``search``, ``inspect``.

Settings come from ``LUNARCHIVE_*`` variables; options given here override them for one run.
Every failure ends with one readable line on stderr and a non-zero exit status: 1 when the
work failed, 2 when the request itself was malformed.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from pydantic import ValidationError
from rich.table import Table

from lunarchive.flows._cli_common import (
    StoreOption,
    absolute_store_url,
    err,
    one_line_errors,
    out,
)
from lunarchive.flows.settings import Settings
from lunarchive.schemas.errors import ConfigurationError, InvalidFilter
from lunarchive.schemas.product import ProductRecord

if TYPE_CHECKING:
    # Imported where used: the search stack (DuckDB, pyarrow, pandas) costs seconds of start-up
    # that `sync`, `status` or `inspect` should not pay.
    from lunarchive.catalog.search import SearchQuery

__all__ = ["app", "main"]

app = typer.Typer(
    name="lunarchive",
    help="Harvest lunar archives, build Zarr cubes on lunar grids, publish and search STAC.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _options(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the flows' log lines.")
    ] = False,
) -> None:
    """lunarchive: a data pipeline for lunar sample and remote-sensing archives."""
    # Read by Prefect when it is imported, which the commands do lazily, after this.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault(
        "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED", "info" if verbose else "warning"
    )
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"LUNARCHIVE_{str(e['loc'][0]).upper()}: {e['msg']}" for e in exc.errors()
        )
        err.print(f"[red]error:[/] invalid settings: {problems}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if settings.prefect_api_url:
        os.environ["PREFECT_API_URL"] = settings.prefect_api_url  # a server, not the local API
    if home := os.environ.get("PREFECT_HOME"):
        Path(home).expanduser().mkdir(parents=True, exist_ok=True)  # Prefect makes one level only


@app.command()
def demo(store: StoreOption = None) -> None:
    """Run the whole pipeline on a generated lunar archive, served from 127.0.0.1.

    The archive holds four PDS4 DEM tiles near the Chang'e-5 site and twelve sample records;
    the demo ends with a search. Deterministic: a second run writes nothing new.
    """
    from lunarchive.flows._runtime import load_settings, prefect_api
    from lunarchive.flows.demo import run_demo

    url = absolute_store_url(store)
    with (
        one_line_errors(),
        prefect_api(load_settings()),
        out.status("Harvest → process (Dask) → publish …"),
    ):
        result = run_demo(url)
    _print_run(result, url)
    from lunarchive.catalog.search import SearchQuery

    _search_and_print(url, SearchQuery(bbox=(-52.5, 42.5, -51.5, 43.5)), as_json=False)
    out.print(
        f"\nThe store is [bold]{url}[/]. Try: lunarchive search --store {url} "
        "--filter \"mission = 'Apollo 17'\"",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def pipeline(
    source_url: Annotated[str, typer.Argument(help="HTTP(S) directory listing to harvest.")],
    source: Annotated[
        str, typer.Option(help="Name of the source: raw/<source>/, collections <source>-*.")
    ],
    store: StoreOption = None,
    allow_local_sources: Annotated[
        bool,
        typer.Option(help="Allow a loopback or private source address (local mirrors only)."),
    ] = False,
) -> None:
    """Harvest SOURCE_URL, build its cube on Dask, and publish a release of the catalog."""
    from lunarchive.flows._runtime import load_settings, prefect_api
    from lunarchive.flows.pipeline import pipeline as pipeline_flow

    url = absolute_store_url(store)
    with (
        one_line_errors(),
        prefect_api(load_settings()),
        out.status(f"Harvest {source} → process (Dask) → publish …"),
    ):
        result = pipeline_flow(
            source_url, source, store_url=url, allow_local_sources=allow_local_sources or None
        )
    _print_run(result, url)


@app.command()
def search(
    store: StoreOption = None,
    bbox: Annotated[
        str | None,
        typer.Option(help="west,south,east,north in lunar degrees (-180..180 or 0..360)."),
    ] = None,
    intersects: Annotated[
        str | None, typer.Option(help="A GeoJSON geometry (text) the items must intersect.")
    ] = None,
    datetime: Annotated[
        str | None, typer.Option(help="RFC 3339 instant or interval: a/b, ../b, a/..")
    ] = None,
    collections: Annotated[str | None, typer.Option(help="Comma-separated collection ids.")] = None,
    ids: Annotated[str | None, typer.Option(help="Comma-separated item ids.")] = None,
    filter: Annotated[  # noqa: A002 - the STAC API's name for it
        str | None,
        typer.Option(help="CQL2 filter, e.g. \"mission = 'Apollo 17' AND mass_g > 100\"."),
    ] = None,
    filter_lang: Annotated[
        str | None, typer.Option(help="cql2-text or cql2-json [default: from the filter].")
    ] = None,
    sortby: Annotated[
        str | None,
        typer.Option(
            help="Sort keys, '-' for descending, e.g. -properties.datetime,id "
            "[default: -datetime, then collection and id]."
        ),
    ] = None,
    fields: Annotated[
        str | None,
        typer.Option(help="Fields to keep (+) or drop (-), e.g. id,properties.mission,-assets."),
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, help="Items read per page (all pages are printed).")
    ] = 100,
    max_items: Annotated[
        int | None, typer.Option(min=0, help="Stop after this many items [default: all].")
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="Start at this page (the 'next' of an earlier search).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a GeoJSON FeatureCollection.")
    ] = False,
) -> None:
    """Search the current release's items (DuckDB over its stac-geoparquet, CQL2 filters)."""
    from lunarchive.catalog.search import SearchQuery

    with one_line_errors():
        query = SearchQuery(
            bbox=_parse_bbox(bbox) if bbox else None,
            intersects=_parse_geojson(intersects) if intersects else None,
            datetime=datetime,
            collections=_parse_list(collections),
            ids=_parse_list(ids),
            filter=_parse_filter(filter, filter_lang),
            filter_lang=_check_lang(filter_lang),
            sortby=sortby,
            fields=fields,
            limit=limit,
            token=token,
        )
        _search_and_print(absolute_store_url(store), query, as_json=as_json, max_items=max_items)


@app.command()
def sync(
    source: Annotated[
        str, typer.Argument(help="The publishing store (s3://…, a folder) or an https:// copy.")
    ],
    dest: Annotated[str, typer.Argument(help="The mirror: a folder or s3://bucket/prefix.")],
    keep: Annotated[int, typer.Option(min=1, help="Releases kept in the mirror.")] = 2,
    concurrency: Annotated[int, typer.Option(min=1, help="Objects moved at once.")] = 8,
    collections: Annotated[
        str | None, typer.Option(help="Only the assets of these collections (a,b).")
    ] = None,
    bbox: Annotated[
        str | None, typer.Option(help="Only items meeting W,S,E,N (lunar degrees).")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Say what would move; write nothing.")] = False,
    verify: Annotated[
        bool, typer.Option(help="Re-hash the whole mirror and repair it from SOURCE.")
    ] = False,
) -> None:
    """Mirror SOURCE's current release into DEST, verified, moving only what is new.

    Each object is checked against the manifest before it is placed; DEST's pointer flips
    only when the whole release is there."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from lunarchive.flows.mirror import mirror  # Prefect-free: a no-op sync starts fast
    from lunarchive.flows.mirror import verify as verify_mirror

    settings = Settings()
    dest_url = absolute_store_url(dest)
    with one_line_errors():
        if verify:
            audit = verify_mirror(settings, dest_url, source)
            out.print(f"checked {audit.objects_checked} objects ({audit.bytes_checked} bytes): "
                      f"{len(audit.damaged)} damaged, {len(audit.repaired)} repaired, "
                      f"{len(audit.failed)} failed", highlight=False)  # fmt: skip
            raise typer.Exit(audit.exit_code())
        columns = (*Progress.get_default_columns()[:1], BarColumn(), DownloadColumn(),
                   TimeRemainingColumn())  # fmt: skip
        with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
            task = bar.add_task("sync", total=None)
            report = mirror(
                settings, source, dest_url, keep=keep, concurrency=concurrency,
                collections=collections.split(",") if collections else None, bbox=bbox,
                dry_run=dry_run,
                progress=lambda p: bar.update(task, completed=p.bytes_done, total=p.bytes_total),
            )  # fmt: skip
    out.print(report.summary(), highlight=False, soft_wrap=True)
    raise typer.Exit(report.exit_code())


@app.command()
def serve(
    store: StoreOption = None,
    database_url: Annotated[
        str | None,
        typer.Option(help="PostgreSQL with PostGIS [default: LUNARCHIVE_DATABASE_URL]."),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    asset_base: Annotated[
        str | None,
        typer.Option(help="Public URL of the store root, for asset links [default: the store]."),
    ] = None,
    load_only: Annotated[
        bool, typer.Option("--load-only", help="Load the current release, do not serve.")
    ] = False,
) -> None:
    """Load the store's current release into pgstac and serve the STAC API (stac-fastapi-pgstac)."""
    from lunarchive.flows._runtime import load_settings, store_for
    from lunarchive.flows.serve import load_current_release

    with one_line_errors():
        settings = load_settings(store_url=absolute_store_url(store))
        secret = settings.database_url.get_secret_value() if settings.database_url else None
        url = database_url or secret
        if not url:
            raise ConfigurationError("no database: give --database-url or LUNARCHIVE_DATABASE_URL")
        loaded = load_current_release(store_for(settings), url, asset_base=asset_base)
    state = "loaded" if loaded.loaded else "already loaded"
    err.print(f"release {loaded.version} {state}: {loaded.items} item(s)", highlight=False)
    if load_only:
        return
    import uvicorn

    from lunarchive.catalog.api import create_app

    uvicorn.run(create_app(url), host=host, port=port, log_level="warning")


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A product: its label, or a data file beside it.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
    label: Annotated[bool, typer.Option(help="Include the original label text.")] = False,
) -> None:
    """Read one product (PDS4, PDS3, ISIS3, GeoTIFF) and print its record."""
    from lunarchive.processing.products import read_product

    with one_line_errors():
        record = read_product(path)
    if as_json:
        exclude = None if label else {"label_text"}
        sys.stdout.write(record.model_dump_json(indent=2, exclude=exclude) + "\n")
        return
    _print_record(record)
    if label:
        out.print(record.label_text, highlight=False, markup=False)


def _print_record(record: ProductRecord) -> None:
    table = Table(show_header=False, title=f"{record.format} product {record.lidvid}")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    crs = record.crs
    rows = {
        "mission": record.mission,
        "instrument": record.instrument,
        "target": record.target,
        "product type": record.product_type,
        "processing level": record.processing_level,
        "time": f"{record.start} → {record.stop}" if record.start or record.stop else None,
        "CRS": f"{crs.code or 'no IAU code'} ({crs.projection}, R = {crs.radius_m:g} m)"
        if crs
        else "none (not map projected)",
        "resolution": f"{record.resolution_m:g} m" if record.resolution_m else None,
        "bbox (lunar deg)": ", ".join(f"{v:g}" for v in record.footprint.bbox)
        if record.footprint
        else None,
    }
    for name, value in rows.items():
        table.add_row(name, "—" if value is None else str(value))
    for array in record.arrays:
        shape = " × ".join(f"{n} {axis}" for n, axis in zip(array.shape, array.axes, strict=True))
        table.add_row(
            f"array {array.name or ''}".strip(),
            f"{shape}, {array.dtype} {array.byte_order}-endian at byte {array.offset_bytes} of "
            f"{array.file}; value = stored × {array.scale:g} + {array.offset:g}"
            + (f"; nodata {array.nodata:g}" if array.nodata is not None else "")
            + (f"; unit {array.unit}" if array.unit else ""),
        )
    for part in record.tables:
        table.add_row(
            f"table {part.name or ''}".strip(),
            f"{part.kind}, {part.records} records of {len(part.fields)} fields in {part.file}",
        )
    for file in record.files:
        size = f"{file.size} bytes" if file.size is not None else "size unknown"
        table.add_row(
            f"file ({file.role})",
            f"{file.name}, {size}" + (f", md5 {file.md5}" if file.md5 else ""),
        )
    out.print(table)


def _mount_subcommands() -> None:
    """Commands that live in their own modules (each imports what it needs lazily)."""
    from lunarchive.flows.cli_harvest import harvest_command
    from lunarchive.flows.cli_process import process_command
    from lunarchive.flows.cli_samples import app as samples_app
    from lunarchive.flows.cli_status import status_command

    app.command("harvest")(harvest_command)
    app.command("process")(process_command)
    app.command("status")(status_command)
    app.add_typer(samples_app, name="samples", help="Lunar sample records meet orbital data.")


_mount_subcommands()


def _parse_bbox(text: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(part) for part in text.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) not in (4, 6):
        raise InvalidFilter(f"--bbox {text!r}: give four numbers west,south,east,north")
    return numbers


def _parse_list(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip()) if text else ()


def _parse_geojson(text: str) -> dict[str, Any]:
    try:
        geometry = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidFilter(f"--intersects is not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(geometry, dict):
        raise InvalidFilter("--intersects: give a GeoJSON geometry object")
    return geometry


def _check_lang(lang: str | None) -> Literal["cql2-text", "cql2-json"] | None:
    if lang is None or lang in ("cql2-text", "cql2-json"):
        return lang  # type: ignore[return-value]
    raise InvalidFilter(f"--filter-lang {lang!r}: use cql2-text or cql2-json")


def _parse_filter(text: str | None, lang: str | None) -> str | dict[str, Any] | None:
    """cql2-json comes as JSON text on the command line; cql2-text stays text."""
    if text is None or lang != "cql2-json":
        return text
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidFilter(f"--filter is not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(parsed, dict):
        raise InvalidFilter("--filter: a cql2-json filter is a JSON object")
    return parsed


def _search_and_print(
    store_url: str, query: SearchQuery, *, as_json: bool, max_items: int | None = None
) -> None:
    """Every page of the search (up to ``max_items``), as one table or one FeatureCollection."""
    from lunarchive.catalog.search import release_items
    from lunarchive.flows._runtime import load_settings, store_for

    with one_line_errors():
        settings = load_settings(store_url=store_url)
        cache_dir = settings.search_cache.expanduser()
        with release_items(store_for(settings), cache_dir=cache_dir) as (version, path):
            items, more = _read_pages(path, query, max_items)
    if as_json:
        collection: dict[str, Any] = {"type": "FeatureCollection", "features": items}
        if more:
            collection["next"] = more
        sys.stdout.write(json.dumps(collection, indent=2, default=str) + "\n")
        return
    table = Table(title=f"{len(items)} item(s) in release {version}", title_justify="left")
    for column in ("id", "collection", "datetime", "title"):
        table.add_column(column, overflow="fold")
    for item in items:
        properties = item.get("properties", {})
        when = properties.get("datetime") or (
            f"{properties.get('start_datetime')} / {properties.get('end_datetime')}"
        )
        when = str(when).replace(".000000Z", "Z")
        table.add_row(item.get("id"), item.get("collection", ""), when, properties.get("title"))
    out.print(table)
    if more:
        err.print(f"more items: add --token {more}", highlight=False, soft_wrap=True)


def _read_pages(
    path: Path, query: SearchQuery, max_items: int | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Items page by page until the last page or ``max_items``; the token where it stopped."""
    from lunarchive.catalog.search import search_page

    items: list[dict[str, Any]] = []
    page_size = query.limit or 100
    while True:
        left = page_size if max_items is None else min(page_size, max_items - len(items))
        if left <= 0:
            return items, query.token
        page = search_page(path, replace(query, limit=left))
        items.extend(page.features)
        if page.next is None:
            return items, None
        query = replace(query, token=page.next)


def _print_run(result: dict[str, Any], store_url: str) -> None:
    release = result["release"]
    state = "published" if release["published"] else "unchanged, nothing written"
    lines = [
        f"harvested  {result['products']} product(s), {result['fetched']} file(s) fetched",
        f"processed  {len(result['cubes'])} cube(s), {result['samples']} sample record(s)",
        f"release    {release['version']} ({state}): {release['item_count']} item(s), "
        f"{release['objects_written']} object(s) written"
        if release["version"]
        else "release    none: nothing to publish (see quarantine/)",
    ]
    if result["unrecognised"]:
        lines.append(f"skipped    products of no known kind: {', '.join(result['unrecognised'])}")
    for cube in result["cubes"]:
        lines.append(f"cube       {store_url.rstrip('/')}/{cube}")
    out.print("\n".join(lines), highlight=False, soft_wrap=True)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()

"""Mirroring a release: ``lunarchive sync SOURCE DEST`` and the ``sync`` flow an institute
schedules. Both call :mod:`lunarchive.catalog.sync`; the flow fails when the mirror is not
complete, so that Prefect's notifications fire.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing, nullcontext
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lunarchive.catalog.store import open_store
from lunarchive.catalog.sync import (
    HttpSource,
    SyncProgress,
    SyncReport,
    VerifyReport,
    open_source,
    parse_bbox,
    sync_release,
    verify_mirror,
)
from lunarchive.flows._runtime import load_settings, s3_options
from lunarchive.flows.settings import Settings
from lunarchive.schemas.errors import LunarchiveError

__all__ = ["mirror", "sync", "verify"]


def mirror(
    settings: Settings,
    source_url: str,
    dest_url: str,
    *,
    keep: int = 2,
    concurrency: int = 8,
    collections: list[str] | None = None,
    bbox: str | None = None,
    dry_run: bool = False,
    progress: Callable[[SyncProgress], None] | None = None,
) -> SyncReport:
    """Mirror the current release of ``source_url`` into ``dest_url`` (both store URLs, or an
    ``http(s)://`` static copy of a store as the source)."""
    options = s3_options(settings)
    source = open_source(source_url, s3=options, allow_local=settings.allow_local_sources)
    with closing(source) if isinstance(source, HttpSource) else nullcontext():
        return sync_release(
            source,
            open_store(dest_url, s3=options),
            concurrency=concurrency,
            keep=keep,
            collections=collections,
            bbox=parse_bbox(bbox) if bbox else None,
            dry_run=dry_run,
            progress=progress,
        )


def verify(settings: Settings, dest_url: str, source_url: str | None) -> VerifyReport:
    """Re-hash the whole mirror; repair damaged objects from the source when one is given."""
    options = s3_options(settings)
    source = (
        open_source(source_url, s3=options, allow_local=settings.allow_local_sources)
        if source_url
        else None
    )
    return verify_mirror(open_store(dest_url, s3=options), source)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=30)
def sync_task(settings: Settings, source_url: str, dest_url: str, **options: Any) -> SyncReport:
    return mirror(settings, source_url, dest_url, **options)


@flow(name="sync")
def sync(
    source_url: str,
    dest_url: str,
    keep: int = 2,
    concurrency: int = 8,
    collections: list[str] | None = None,
    bbox: str | None = None,
) -> dict[str, Any]:
    """Mirror the source's current release into DEST; fail unless the mirror is complete."""
    settings = load_settings()
    report = sync_task(
        settings, source_url, dest_url,
        keep=keep, concurrency=concurrency, collections=collections, bbox=bbox,
    )  # fmt: skip
    get_run_logger().info(report.summary())
    if report.exit_code() != 0:
        raise LunarchiveError(report.summary())
    return {
        "version": report.version,
        "objects_transferred": report.objects_transferred,
        "bytes_transferred": report.bytes_transferred,
        "objects_pruned": report.objects_pruned,
    }

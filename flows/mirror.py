"""The sync calls behind ``lunarchive sync``, kept free of Prefect.

A mirror that has nothing new to fetch finishes in the time it takes to read the manifest;
importing Prefect (as :mod:`lunarchive.flows._runtime` and the ``sync`` flow do) costs
seconds more than that, so the CLI calls these, and the flow in :mod:`lunarchive.flows.sync`
wraps the same calls in a task.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing, nullcontext

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
from lunarchive.flows.settings import Settings, s3_options

__all__ = ["mirror", "verify"]


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

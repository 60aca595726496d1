"""The ``sync`` flow an institute schedules to mirror a release. It runs the same calls as
``lunarchive sync`` (:mod:`lunarchive.flows.mirror`, kept free of Prefect so the CLI starts
fast), and fails when the mirror is not complete, so that Prefect's notifications fire.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lunarchive.catalog.sync import SyncReport
from lunarchive.flows._runtime import load_settings
from lunarchive.flows.mirror import mirror, verify
from lunarchive.flows.settings import Settings
from lunarchive.schemas.errors import LunarchiveError

__all__ = ["mirror", "sync", "verify"]


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

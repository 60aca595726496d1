"""Running the harvest engine against a mirror, as the flow does, for the harvest tests."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from lunarchive.catalog.store import ObjectInfo, Store
from lunarchive.flows.harvest_engine import HarvestRun, HarvestSettings
from lunarchive.schemas.sources import CompletenessReport, RunCounts, SourceSpec

__all__ = ["CountingStore", "Harvested", "raw_listing", "run_harvest", "sha"]


class CountingStore:
    """The store, with a count of every object it was asked to write."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url
        self.writes: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def write(self, key: str, data: bytes) -> ObjectInfo:
        self.writes.append(key)
        return self.inner.write(key, data)

    def write_file(self, key: str, path: Path) -> ObjectInfo:
        self.writes.append(key)
        return self.inner.write_file(key, path)


@dataclass
class Harvested:
    counts: RunCounts
    report: CompletenessReport
    writes: list[str] = field(default_factory=list)


def run_harvest(
    store: Store,
    spec: SourceSpec,
    staging: Path,
    *,
    base_url: str | None,
    clock: datetime | None = None,
    per_host: int = 2,
) -> Harvested:
    """One run of the engine with no waits between retries or requests; loopback allowed.

    The registry's pacing (``min_interval_s``: 30 s for DARTS) is for the real hosts; a
    unit test checks that the fetcher keeps it.
    """
    spec = spec.model_copy(update={"min_interval_s": 0.0})
    counting = CountingStore(store)
    settings = HarvestSettings(
        harvest_staging_dir=staging,
        harvest_backoff_s=0,
        harvest_attempts=4,
        harvest_per_host=per_host,
    )
    run = HarvestRun.open(
        spec,
        counting,  # type: ignore[arg-type]
        settings=settings,
        allow_local=True,
        timeout_s=10,
        max_bytes=64 * 1024 * 1024,
        base_url=base_url,
    )
    if clock is not None:
        run.clock = lambda: clock
    try:
        for entry in run.list_upstream():
            run.fetch(entry)
        counts, report = run.finish()
    finally:
        run.close()
    return Harvested(counts, report, counting.writes)


def raw_listing(store: Store, source: str) -> dict[str, str]:
    return {info.key: store.sha256(info.key) for info in store.list(f"raw/{source}/")}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

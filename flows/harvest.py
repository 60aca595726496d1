"""The harvest flows.

``harvest-source`` harvests one registered source (``flows/registry/<name>.json``) with the
harvest engine: incremental against the state kept in the store, verified, resumable, with
a completeness report per source (see :mod:`lunarchive.flows.harvest_engine`).

``harvest`` is the walking skeleton's flow, kept for the pipeline and the demo: it fetches
every file below an HTTP directory listing into ``raw/<source>/<product>/``. A file already
under ``raw/`` is not fetched again (raw objects are never modified), so a rerun on an
unchanged source fetches nothing.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from itertools import chain
from pathlib import Path
from typing import Any

import httpx
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from lunarchive.catalog.layout import raw_key
from lunarchive.flows._runtime import load_settings, retry_transient, settle, store_for
from lunarchive.flows.harvest_engine import (
    HarvestRun,
    HarvestSettings,
    Outcome,
    load_source,
    report_markdown,
)
from lunarchive.flows.settings import Settings
from lunarchive.flows.sources import RemoteFile, fetch, list_directory
from lunarchive.schemas.sources import UpstreamEntry

__all__ = ["harvest", "harvest_source"]


def _client(settings: Settings) -> httpx.Client:
    return httpx.Client(timeout=settings.http_timeout_s, follow_redirects=False)


@task(cache_policy=NO_CACHE, retries=3, retry_delay_seconds=2, retry_condition_fn=retry_transient)
def list_source(settings: Settings, source_url: str) -> list[RemoteFile]:
    with _client(settings) as client:
        return list_directory(client, source_url, allow_local=settings.allow_local_sources)


@task(cache_policy=NO_CACHE, retries=3, retry_delay_seconds=2, retry_condition_fn=retry_transient)
def harvest_product(
    settings: Settings, source: str, product_id: str, files: list[RemoteFile]
) -> dict[str, Any]:
    """Fetch the files of one product that ``raw/`` does not hold yet."""
    store = store_for(settings)
    fetched, held = [], []
    with _client(settings) as client, tempfile.TemporaryDirectory() as tmp:
        for remote in files:
            key = raw_key(source, product_id, remote.filename)
            if store.exists(key):
                held.append(key)
                continue
            local = Path(tmp) / "download"
            fetch(
                client,
                remote,
                local,
                allow_local=settings.allow_local_sources,
                max_bytes=settings.max_download_bytes,
            )
            store.write_file(key, local)
            fetched.append(key)
    return {
        "source": source,
        "product_id": product_id,
        "keys": sorted(fetched + held),
        "fetched": fetched,
    }


@flow(name="harvest")
def harvest(
    source_url: str,
    source: str,
    store_url: str | None = None,
    allow_local_sources: bool | None = None,
) -> list[dict[str, Any]]:
    """Harvest every product below an HTTP directory listing into ``raw/<source>/``."""
    settings = load_settings(store_url=store_url, allow_local_sources=allow_local_sources)
    products: dict[str, list[RemoteFile]] = defaultdict(list)
    for remote in list_source(settings, source_url):
        products[remote.product_id].append(remote)
    futures = {
        pid: harvest_product.submit(settings, source, pid, files)
        for pid, files in sorted(products.items())
    }
    results = [
        settle(
            settings,
            future,
            source=source,
            product_id=pid,
            files=[remote.url for remote in products[pid]],
        )
        for pid, future in futures.items()
    ]
    done = [r for r in results if r is not None]
    fetched = list(chain.from_iterable(r["fetched"] for r in done))
    get_run_logger().info(
        "harvest %s: %d products, %d files fetched, %d quarantined",
        source,
        len(done),
        len(fetched),
        len(results) - len(done),
    )
    return done


@task(cache_policy=NO_CACHE)
def list_upstream(run: HarvestRun) -> list[UpstreamEntry]:
    """The upstream inventory, diffed against the holdings: what is new or changed."""
    return run.list_upstream()


@task(cache_policy=NO_CACHE)
def fetch_upstream_product(run: HarvestRun, entry: UpstreamEntry) -> Outcome:
    """Fetch, verify and store one product (quarantined or failed, never raising)."""
    return run.fetch(entry)


@flow(name="harvest-source", task_runner=ThreadPoolTaskRunner(max_workers=8))  # type: ignore[arg-type]
def harvest_source(
    source: str,
    store_url: str | None = None,
    base_url: str | None = None,
    allow_local_sources: bool | None = None,
) -> dict[str, Any]:
    """Harvest a registered source into ``raw/<source>/``; report its completeness.

    ``base_url`` replaces the registry's (a mirror of the same archive). Requests per host
    are limited by ``LUNARCHIVE_HARVEST_PER_HOST``; products run on up to 8 threads.
    """
    settings = load_settings(store_url=store_url, allow_local_sources=allow_local_sources)
    options = HarvestSettings()
    run = HarvestRun.open(
        load_source(source, options.harvest_registry_dir),
        store_for(settings),
        settings=options,
        allow_local=settings.allow_local_sources,
        timeout_s=settings.http_timeout_s,
        max_bytes=settings.max_download_bytes,
        base_url=base_url,
    )
    try:
        wanted = list_upstream(run)
        futures = [fetch_upstream_product.submit(run, entry) for entry in wanted]
        for future in as_completed(futures):
            future.result()
        counts, report = run.finish()
    finally:
        run.close()
    create_markdown_artifact(
        report_markdown(counts, report, run.clock()),
        key=f"harvest-{report.source}",
        description=f"Completeness of the {report.source} harvest",
    )
    get_run_logger().info(
        "harvest %s: %d upstream, %d new, %d fetched, %d unchanged, %d failed, %d quarantined",
        source,
        counts.upstream,
        counts.new,
        counts.fetched,
        counts.unchanged,
        counts.failed,
        counts.quarantined,
    )
    return {"run": counts.model_dump(), "report": report.model_dump(mode="json")}

"""The ``harvest`` flow: fetch a source's new products into ``raw/``, with sha256.

A file already under ``raw/`` is not fetched again (raw objects are never modified), so a
rerun on an unchanged source fetches nothing.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from itertools import chain
from pathlib import Path
from typing import Any

import httpx
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lunarchive.catalog.layout import raw_key
from lunarchive.flows._runtime import load_settings, retry_transient, settle, store_for
from lunarchive.flows.settings import Settings
from lunarchive.flows.sources import RemoteFile, fetch, list_directory

__all__ = ["harvest"]


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

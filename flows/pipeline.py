"""The ``pipeline`` flow: ``harvest`` → ``process`` (on Dask) → ``harvest-samples`` → ``publish``.

Each stage is a subflow, so the Prefect UI shows one run per stage under the pipeline's run.
A stage hands the next one plain records (keys, sums, summaries), never open files or arrays.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from lunarchive.flows._runtime import dask_task_runner, load_settings
from lunarchive.flows.harvest import harvest
from lunarchive.flows.process import process
from lunarchive.flows.publish import publish
from lunarchive.flows.samples import harvest_samples

__all__ = ["pipeline"]


@flow(name="pipeline")
def pipeline(
    source_url: str,
    source: str,
    store_url: str | None = None,
    allow_local_sources: bool | None = None,
) -> dict[str, Any]:
    """Harvest ``source_url`` into ``raw/<source>/``, build its cube, take in the partners'
    sample drops from ``inbox/``, and publish a release."""
    settings = load_settings(store_url=store_url, allow_local_sources=allow_local_sources)
    products = harvest(source_url, source, settings.store_url, settings.allow_local_sources)
    on_dask = process.with_options(task_runner=dask_task_runner(settings))  # type: ignore[arg-type]
    processed = on_dask(products, source, settings.store_url)
    drops = harvest_samples(settings.store_url)
    release = publish(processed, source, settings.store_url)
    fetched = sum(len(p["fetched"]) for p in products)
    get_run_logger().info(
        "pipeline %s: %d files fetched, %d cube(s), release %s%s",
        source, fetched, len(processed["cubes"]), release["version"],
        "" if release["published"] else " (unchanged)",
    )  # fmt: skip
    return {
        "source": source,
        "products": len(products),
        "fetched": fetched,
        "cubes": [cube["key"] for cube in processed["cubes"]],
        "samples": release.get("samples", 0),
        "drops": [
            {k: d.get(k) for k in ("partner", "drop", "status", "counts", "reason")}
            for d in drops["drops"]
        ],
        "embargoes_lifted": drops["lifted"],
        "drops_waiting": drops["waiting"],
        "unrecognised": processed["unrecognised"],
        "release": release,
    }

"""What every flow needs at its edge: the settings, the store, the Dask runner, retries."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from distributed import LocalCluster
from prefect import Task, get_run_logger
from prefect.client.schemas.objects import State, TaskRun
from prefect_dask.task_runners import DaskTaskRunner

from lunarchive.catalog.quarantine import quarantine
from lunarchive.catalog.store import Store, open_store
from lunarchive.flows.settings import Settings, s3_options
from lunarchive.processing.readers import GDAL_CACHE_MIB
from lunarchive.processing.worker import PRELOAD, spawning_workers
from lunarchive.schemas.errors import QUARANTINE, RETRY, decision_for

__all__ = [
    "dask_task_runner",
    "load_settings",
    "local_cluster",
    "prefect_api",
    "retry_transient",
    "s3_options",
    "settle",
    "store_for",
]

# distributed's LocalCluster carries no annotations, which mypy --strict refuses to call.
_new_local_cluster: Any = LocalCluster


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the non-secret overrides a flow was given."""
    settings = Settings()
    given = {key: value for key, value in overrides.items() if value is not None}
    return settings.model_copy(update=given) if given else settings


def store_for(settings: Settings) -> Store:
    return open_store(settings.store_url, s3=s3_options(settings))


def dask_task_runner(settings: Settings) -> DaskTaskRunner:
    """The scheduler from the settings, or a LocalCluster of worker processes."""
    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(
        cluster_class=local_cluster,
        cluster_kwargs={
            "n_workers": settings.dask_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
            # each worker imports the build's modules and freezes them for the garbage
            # collector before its first task (processing.worker)
            "preload": [PRELOAD],
            # a bounded GDAL block cache for the warp tasks' reads (GDAL_CACHE_MIB); what
            # must be there when a worker starts (zarr's write pipeline, glibc's
            # thresholds) is local_cluster's pre-spawn environment (worker.SPAWN_ENV)
            "env": {"GDAL_CACHEMAX": os.environ.get("GDAL_CACHEMAX", str(GDAL_CACHE_MIB))},
        },
    )


def local_cluster(**kwargs: Any) -> LocalCluster:
    """``LocalCluster(**kwargs)`` whose worker processes start with the build's environment
    (:data:`~lunarchive.processing.worker.SPAWN_ENV`, beside Dask's own)."""
    with spawning_workers():
        cluster: LocalCluster = _new_local_cluster(**kwargs)
    return cluster


def retry_transient(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect retry condition: retry transient I/O only, never a permanent error."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - we classify whatever the task raised
        return decision_for(exc) == RETRY
    return False


def settle(
    settings: Settings, future: Any, *, source: str, product_id: str, files: list[str]
) -> Any | None:
    """A task's result, or None once its rejected product is quarantined (the run goes on).

    Only a rejection is quarantined; any other failure propagates and fails the flow.
    """
    try:
        return future.result()
    except Exception as exc:
        if decision_for(exc) != QUARANTINE:
            raise
        quarantine(
            store_for(settings),
            source=source,
            product_id=product_id,
            reason=str(exc),
            rule=type(exc).__name__,
            files=files,
        )
        get_run_logger().warning("quarantined %s/%s: %s", source, product_id, exc)
        return None


@contextmanager
def prefect_api(settings: Settings) -> Iterator[None]:
    """The configured Prefect server, or one temporary local API for the whole run.

    Without a server each process that runs tasks, every Dask worker included, would start
    its own temporary API; one shared API (its URL in the environment the workers inherit)
    saves those start-ups and keeps every run of a pipeline in one database.
    """
    if settings.prefect_api_url or os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = SubprocessASGIServer()
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                yield
            finally:
                _drain_prefect_clients()
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def _drain_prefect_clients() -> None:
    """Send the queued logs and events while the API still answers (else exit waits on them)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)

"""The run report of one ``pipeline`` run: what it took in, built, published and moved.

Data engineers read it to see at a glance what a run changed and where it is stuck; the
watchdog and ``lunarchive status`` read the stored ones back. It lives at
``reports/<run-id>.json`` (the Prefect flow run id), its coverage pictures beside it under
``reports/<run-id>/``. Fields are only ever added, with defaults, so older reports still read.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "COVERAGE_VIEWS",
    "CoverageReport",
    "RunReport",
    "SourceCounts",
    "StageTime",
    "ViewCoverage",
    "coverage_picture_key",
    "run_id_of",
    "run_report_key",
]

RUN_REPORT_PREFIX: Final = "reports/"
COVERAGE_VIEWS: Final = ("global", "north", "south")
_RUN_ID: Final = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_REPORT_KEY: Final = re.compile(rf"reports/({_RUN_ID})\.json")
_SAFE: Final = re.compile(r"[A-Za-z0-9._-]+")

View = Literal["global", "north", "south"]


def _check_run_id(run_id: str) -> str:
    if not re.fullmatch(_RUN_ID, run_id):
        raise ValueError(f"run id {run_id!r} is not a Prefect flow run id (a lowercase UUID)")
    return run_id


def run_report_key(run_id: str) -> str:
    """``reports/<run-id>.json``."""
    return f"{RUN_REPORT_PREFIX}{_check_run_id(run_id)}.json"


def coverage_picture_key(run_id: str, collection: str, view: str) -> str:
    """``reports/<run-id>/coverage-<collection>-<view>.png``."""
    if not _SAFE.fullmatch(collection) or view not in COVERAGE_VIEWS:
        raise ValueError(f"coverage picture of {collection!r}/{view!r}: not a safe key segment")
    return f"{RUN_REPORT_PREFIX}{_check_run_id(run_id)}/coverage-{collection}-{view}.png"


def run_id_of(key: str) -> str | None:
    """The run id of a run report's key, or None for any other key under ``reports/``."""
    match = _REPORT_KEY.fullmatch(key)
    return match[1] if match else None


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceCounts(_Model):
    """One source of the run: the harvested archive, or one partner's inbox (drops)."""

    source: str
    kind: Literal["archive", "partner"]
    new: int = Field(default=0, ge=0, description="Products (drops) taken in by this run.")
    unchanged: int = Field(default=0, ge=0, description="Held already, nothing fetched.")
    failed: int = Field(default=0, ge=0, description="Transient failures; retried next run.")
    quarantined: int = Field(default=0, ge=0, description="Rejected by this run, kept aside.")


class StageTime(_Model):
    stage: str
    seconds: float = Field(ge=0)
    outcome: Literal["completed", "failed"] = "completed"


class ViewCoverage(_Model):
    """One picture: the grid drawn, its tiles by state, and the PNG's key."""

    grid: str
    tiles: int = Field(ge=0, description="Tiles in the grid.")
    exists: tuple[str, ...] = Field(default=(), description="Tiles a published item covers.")
    changed: tuple[str, ...] = Field(default=(), description="Tiles built anew by this run.")
    failed: tuple[str, ...] = Field(default=(), description="Tiles whose build failed.")
    picture: str = Field(description="Key of the PNG, relative to the store root.")


class CoverageReport(_Model):
    collection: str
    views: dict[View, ViewCoverage]


class RunReport(_Model):
    """``reports/<run-id>.json``."""

    run_id: str = Field(pattern=rf"^{_RUN_ID}$")
    flow: str = "pipeline"
    source: str
    outcome: Literal["completed", "failed"]
    error: str | None = Field(default=None, description="Why the run failed, in one line.")
    started: datetime
    finished: datetime
    sources: tuple[SourceCounts, ...] = ()
    tiles_built: int = Field(default=0, ge=0, description="Cubes (tiles) new in this run.")
    tiles: int = Field(default=0, ge=0, description="Cubes (tiles) the run's release holds.")
    cubes: tuple[str, ...] = ()
    release: str | None = None
    release_published: bool = False
    release_items: int = Field(default=0, ge=0, description="Items of the current release.")
    items_published: int = Field(
        default=0, ge=0, description="Items of the release this run published (0: unchanged)."
    )
    bytes_fetched: int = Field(default=0, ge=0, description="Raw bytes harvested by this run.")
    bytes_released: int = Field(
        default=0, ge=0, description="Bytes of the release objects this run wrote."
    )
    bytes_moved: int = Field(default=0, ge=0, description="bytes_fetched + bytes_released.")
    stages: tuple[StageTime, ...] = ()
    coverage: tuple[CoverageReport, ...] = ()

"""The one settings object of lunarchive (pydantic-settings, ``LUNARCHIVE_`` prefix).

Read once at the edge (CLI, flow entry) and passed down; nothing else reads the environment.
Every field is listed, with its default, in the README's settings table.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from lunarchive.catalog.store import S3Options
from lunarchive.schemas.errors import ConfigurationError

__all__ = ["Settings", "s3_options", "shared_dir"]


class Settings(BaseSettings):
    """Where the store is, which services to use, and the limits to hold."""

    model_config = SettingsConfigDict(env_prefix="LUNARCHIVE_", extra="ignore")

    store_url: str = Field(
        default="./lunarchive-data",
        description="Store root: a folder path, file:///abs/path, or s3://bucket/prefix.",
    )
    s3_endpoint_url: str | None = Field(default=None, description="S3 API endpoint (non-AWS).")
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    s3_anonymous: bool = Field(
        default=False, description="Send unsigned S3 requests (read what the store grants all)."
    )
    prefect_api_url: str | None = Field(
        default=None, description="A Prefect server's API; unset runs Prefect's local API."
    )
    dask_address: str | None = Field(
        default=None, description="An existing Dask scheduler; unset starts a LocalCluster."
    )
    dask_workers: int = Field(default=2, ge=1, description="LocalCluster worker processes.")
    max_download_bytes: int = Field(default=2 * 1024**3, ge=1, description="Per harvested file.")
    http_timeout_s: float = Field(default=60.0, gt=0)
    allow_local_sources: bool = Field(
        default=False,
        description="Allow loopback sources (demo and test mirrors only); private never.",
    )
    keep_releases: int = Field(
        default=5, ge=1, description="Releases kept after a publish; older ones are collected."
    )
    release_grace_hours: float = Field(
        default=24.0, ge=0, description="A release prefix younger than this is never collected."
    )
    stac_schema_dir: Path | None = Field(
        default=None,
        description="A local STAC schema map (index.json: URL → file); unset: fetch and cache.",
    )
    stac_schema_cache: Path = Field(
        default=Path("~/.cache/lunarchive/stac-schemas"),
        description="Where fetched STAC schemas are kept.",
    )
    search_cache: Path = Field(
        default=Path("~/.cache/lunarchive/search"),
        description="Where searches of a store keep the release's items.parquet (three newest).",
    )
    shared_dir: Path = Field(
        default=Path("../shared"), description="Test-only: the shared fixtures folder."
    )
    restricted_store_url: str | None = Field(
        default=None,
        description="Where a partner's embargoed sample tables go: a URL with '{partner}' "
        "(e.g. s3://lunarchive-restricted-{partner}); unset: <store>/restricted/<partner>/ "
        "on a folder store (required on S3, where embargoed drops otherwise wait).",
    )
    at_site_max_pixels: int = Field(
        default=1_000_000,
        ge=1,
        description="Most pixels read around one specimen site when sampling a cube (a larger "
        "position-uncertainty disc is refused for that specimen).",
    )
    database_url: SecretStr | None = Field(
        default=None, description="PostgreSQL for the STAC API (tests: made by infra/)."
    )
    coverage_global_grid: str | None = Field(
        default=None,
        pattern=r"^moon-(eqc|eqc180)-[0-9]+$",
        description="The equirectangular grid whose tiles a run report's global coverage "
        "picture draws; unset: the collection's own grid (else moon-eqc-128).",
    )
    coverage_north_grid: str | None = Field(
        default=None,
        pattern=r"^moon-np-[0-9]+(\.[0-9]+)?$",
        description="The north polar grid of the north cap's coverage picture; unset: the "
        "one on the collection grid's rung of the ladder (else moon-np-237).",
    )
    coverage_south_grid: str | None = Field(
        default=None,
        pattern=r"^moon-sp-[0-9]+(\.[0-9]+)?$",
        description="The south polar grid of the south cap's coverage picture; unset: as "
        "for the north cap (else moon-sp-237).",
    )
    watchdog_sources: list[str] = Field(
        default_factory=list,
        description="Registered sources the watchdog expects even before their first harvest "
        "(JSON list); every source with a completeness report is watched anyway.",
    )
    watchdog_failed_runs: int = Field(
        default=3,
        ge=1,
        description="A source whose last this-many harvest-source runs all failed is flagged.",
    )
    watchdog_inbox_cadence_days: float = Field(
        default=30.0,
        gt=0,
        description="A partner inbox with no new drop for longer than this is flagged.",
    )
    watchdog_release_max_age_days: float = Field(
        default=7.0, gt=0, description="A current release older than this is flagged."
    )


def s3_options(settings: Settings) -> S3Options:
    """The S3 endpoint and credentials of the settings (secrets revealed only here)."""
    key, secret = settings.s3_access_key_id, settings.s3_secret_access_key
    return S3Options(
        endpoint_url=settings.s3_endpoint_url,
        access_key_id=key.get_secret_value() if key is not None else None,
        secret_access_key=secret.get_secret_value() if secret is not None else None,
        region=settings.s3_region,
        anonymous=settings.s3_anonymous,
    )


def shared_dir(settings: Settings) -> Path:
    """The shared fixtures folder, for tests; loud when it is missing."""
    path = settings.shared_dir.resolve()
    if not (path / "fixtures" / "real").is_dir():
        raise ConfigurationError(
            f"LUNARCHIVE_SHARED_DIR={path} has no fixtures/real/: tests need ../shared"
        )
    return path

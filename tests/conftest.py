"""Shared fixtures: settings, the two store backends, and an isolated Prefect home.

The SeaweedFS endpoint and credentials come from the environment that `make test` sets up
(``infra/services.py run``). A test that needs them fails, loudly, when they are missing:
a skipped backend proves nothing.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# Before Prefect is imported anywhere: the suite's own Prefect home, never the user's.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="lunarchive-test-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect reads this when it is first imported; its 20 s default was too short on a loaded
# 2-core machine for the temporary API servers the flows start.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")

from lunarchive.catalog.store import S3Options, Store, open_store
from lunarchive.flows.settings import Settings, shared_dir

# Every publish in the suite validates strictly against the offline schema copies (the
# machines have no network); a missing ../shared fails here, loudly.
os.environ.setdefault("LUNARCHIVE_STAC_SCHEMA_DIR", str(shared_dir(Settings()) / "stac-schemas"))

HOW_TO_RUN = (
    "run the suite through `make test`, or `python infra/services.py run --state DIR -- "
    "pytest ...`, which starts SeaweedFS and PostgreSQL and sets the LUNARCHIVE_* variables"
)
S3_VARIABLES = (
    "LUNARCHIVE_S3_ENDPOINT_URL",
    "LUNARCHIVE_S3_ACCESS_KEY_ID",
    "LUNARCHIVE_S3_SECRET_ACCESS_KEY",
    "LUNARCHIVE_TEST_S3_BUCKET",
)


def require_s3_env() -> dict[str, str]:
    missing = [name for name in S3_VARIABLES if not os.environ.get(name)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not set: {HOW_TO_RUN}", pytrace=False)
    return {name: os.environ[name] for name in S3_VARIABLES}


@pytest.fixture(scope="session")
def shared() -> Path:
    """``../shared`` (or LUNARCHIVE_SHARED_DIR); fails when missing."""
    return shared_dir(Settings())


@pytest.fixture(scope="session")
def s3_options() -> S3Options:
    env = require_s3_env()
    return S3Options(
        endpoint_url=env["LUNARCHIVE_S3_ENDPOINT_URL"],
        access_key_id=env["LUNARCHIVE_S3_ACCESS_KEY_ID"],
        secret_access_key=env["LUNARCHIVE_S3_SECRET_ACCESS_KEY"],
        region=os.environ.get("LUNARCHIVE_S3_REGION", "us-east-1"),
    )


@pytest.fixture
def s3_url() -> str:
    """A fresh, empty prefix of the test bucket."""
    bucket = require_s3_env()["LUNARCHIVE_TEST_S3_BUCKET"]
    return f"s3://{bucket}/t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["folder", pytest.param("s3", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The same contract, on a local folder and on SeaweedFS."""
    if request.param == "folder":
        yield open_store((tmp_path / "store").as_uri())
    else:
        options = request.getfixturevalue("s3_options")
        yield open_store(request.getfixturevalue("s3_url"), s3=options)


@contextmanager
def new_database() -> Iterator[str]:
    """A new, empty database on the test PostgreSQL (with PostGIS), dropped afterwards."""
    import psycopg

    base = os.environ.get("LUNARCHIVE_DATABASE_URL")
    if not base:
        pytest.fail(f"LUNARCHIVE_DATABASE_URL is not set: {HOW_TO_RUN}", pytrace=False)
    name = f"lunarchive_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = base.rsplit("/", 1)[0] + "/" + name
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        yield url
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """A new, empty database on the test PostgreSQL (with PostGIS), dropped afterwards."""
    with new_database() as url:
        yield url

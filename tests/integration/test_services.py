"""The real services started by infra/services.py behave as lunarchive needs.

Run through `make test` (or `python infra/services.py run --state DIR -- pytest ...`), which
puts the endpoints and credentials in the environment. Missing settings are a failure, not a
skip: a suite that silently skips its service tests proves nothing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import boto3
import psycopg
import pytest
from botocore.exceptions import ClientError
from psycopg import sql
from psycopg.rows import TupleRow

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.integration

HOW_TO_RUN = (
    "run the integration tests through `make test` or "
    "`python infra/services.py run --state DIR -- pytest ...`, which start the services"
)


def required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: {HOW_TO_RUN}", pytrace=False)
    return value


@pytest.fixture(scope="module")
def s3() -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=required_env("LUNARCHIVE_S3_ENDPOINT_URL"),
        aws_access_key_id=required_env("LUNARCHIVE_S3_ACCESS_KEY_ID"),
        aws_secret_access_key=required_env("LUNARCHIVE_S3_SECRET_ACCESS_KEY"),
        region_name=os.environ.get("LUNARCHIVE_S3_REGION", "us-east-1"),
    )


@pytest.fixture(scope="module")
def bucket() -> str:
    return required_env("LUNARCHIVE_TEST_S3_BUCKET")


@pytest.fixture
def db() -> Iterator[psycopg.Connection[TupleRow]]:
    with psycopg.connect(required_env("LUNARCHIVE_DATABASE_URL"), autocommit=True) as conn:
        yield conn


def status_of(exc: ClientError) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def test_s3_refuses_second_create_and_stale_if_match(s3: S3Client, bucket: str) -> None:
    key = f"tests/services/{uuid.uuid4().hex}/pointer.json"
    original = b'{"version": "first"}'
    s3.put_object(Bucket=bucket, Key=key, Body=original, IfNoneMatch="*")
    try:
        with pytest.raises(ClientError) as second_create:
            s3.put_object(Bucket=bucket, Key=key, Body=b"second", IfNoneMatch="*")
        assert status_of(second_create.value) == 412

        with pytest.raises(ClientError) as stale_swap:
            s3.put_object(Bucket=bucket, Key=key, Body=b"third", IfMatch='"stale"')
        assert status_of(stale_swap.value) == 412

        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == original
    finally:
        s3.delete_object(Bucket=bucket, Key=key)


def test_s3_accepts_if_match_with_current_etag(s3: S3Client, bucket: str) -> None:
    key = f"tests/services/{uuid.uuid4().hex}/pointer.json"
    etag = s3.put_object(Bucket=bucket, Key=key, Body=b"v1", IfNoneMatch="*")["ETag"]
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=b"v2", IfMatch=etag)
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"v2"
    finally:
        s3.delete_object(Bucket=bucket, Key=key)


def test_database_has_postgis(db: psycopg.Connection[TupleRow]) -> None:
    row = db.execute("SELECT postgis_version()").fetchone()
    assert row is not None
    version = row[0]
    assert isinstance(version, str)
    assert version[:1].isdigit(), version


def test_geometry_round_trip(db: psycopg.Connection[TupleRow]) -> None:
    table = sql.Identifier(f"roundtrip_{uuid.uuid4().hex}")
    wkt = "POLYGON((10 -5,12.5 -5,12.5 -2,10 -2,10 -5))"
    db.execute(
        sql.SQL("CREATE TEMP TABLE {} (id int PRIMARY KEY, geom geometry(Polygon, 4326))").format(
            table
        )
    )
    db.execute(
        sql.SQL("INSERT INTO {} VALUES (1, ST_GeomFromText(%s, 4326))").format(table), (wkt,)
    )
    query = sql.SQL("SELECT ST_AsText(geom), ST_SRID(geom) FROM {} WHERE id = 1").format(table)
    assert db.execute(query).fetchone() == (wkt, 4326)

"""An embargo lift reaches an institute's mirror, on real SeaweedFS identities.

Partner ``a`` (institute A) drops one open row and one embargoed drop. The embargoed rows go
to the partner's restricted tree only (its own bucket, which institute A's key reads and
institute B's and anonymous requests do not); institute A's mirror of the public release, made
with ``lunarchive sync`` and its own key, holds none of them. When the embargo date has passed
(``harvest-samples`` is given "today", as its schedule would bring it), the next harvest and
publish move the rows public, and institute A's next sync brings exactly those rows into the
mirrored GeoParquet tables.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from lunarchive.catalog.layout import LATEST_KEY
from lunarchive.catalog.store import S3Options, Store, open_store
from lunarchive.flows.publish import publish
from lunarchive.flows.samples import harvest_samples
from lunarchive.schemas.errors import AccessRefused
from lunarchive.schemas.release import ReleaseManifest, ReleasePointer
from tests.conftest import require_s3_env
from tests.integration.test_harvest_samples import (
    GOOD_SPECIMEN,
    TODAY,
    csv_bytes,
    demo_drop,
    put_drop,
    table,
)

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("lunarchive"))
PARTNER = "inst-a"  # institute A is the partner: its key reads the restricted-a bucket
OPEN_ID = "70215"
UNTIL = TODAY + timedelta(days=365)


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the suite through `make test`", pytrace=False)
    return value


def institute(name: str) -> dict[str, str]:
    """The environment of a sync run with institute ``name``'s key (and nothing else)."""
    prefix = f"LUNARCHIVE_TEST_S3_INSTITUTE_{name.upper()}"
    return {
        "LUNARCHIVE_S3_ACCESS_KEY_ID": env(f"{prefix}_ACCESS_KEY_ID"),
        "LUNARCHIVE_S3_SECRET_ACCESS_KEY": env(f"{prefix}_SECRET_ACCESS_KEY"),
    }


def options(identity: dict[str, str] | None) -> S3Options:
    endpoint = require_s3_env()["LUNARCHIVE_S3_ENDPOINT_URL"]
    if identity is None:
        return S3Options(endpoint_url=endpoint, anonymous=True)
    return S3Options(
        endpoint_url=endpoint,
        access_key_id=identity["LUNARCHIVE_S3_ACCESS_KEY_ID"],
        secret_access_key=identity["LUNARCHIVE_S3_SECRET_ACCESS_KEY"],
    )


def sync(source: str, mirror: Path, identity: dict[str, str]) -> str:
    done = subprocess.run(
        [CLI, "sync", source, str(mirror)],
        capture_output=True, text=True, env={**os.environ, **identity},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def mirrored_release(mirror: Path) -> tuple[str, list[str]]:
    store = open_store(mirror.as_uri())
    pointer = ReleasePointer.model_validate_json(store.read(LATEST_KEY))
    manifest = ReleaseManifest.model_validate_json(store.read(pointer.manifest))
    return pointer.version, [entry.key for entry in manifest.objects]


def geoparquet(mirror: Path, name: str) -> list[dict[str, Any]]:
    """The rows of the partner's table ``name`` that the mirror's current release holds."""
    _, keys = mirrored_release(mirror)
    (key,) = [k for k in keys if k.startswith(f"tables/{PARTNER}/") and k.endswith("/" + name)]
    rows: list[dict[str, Any]] = pq.read_table(io.BytesIO((mirror / key).read_bytes())).to_pylist()
    return rows


def item_sample_ids(mirror: Path) -> set[str]:
    version, _ = mirrored_release(mirror)
    items = pq.read_table(mirror / f"releases/{version}/items.parquet").to_pylist()
    return {str(item["sample_id"]) for item in items if item.get("sample_id")}


@pytest.fixture
def stores(monkeypatch: pytest.MonkeyPatch) -> tuple[Store, str]:
    """The operator's public store (a fresh prefix) and the partner's restricted URL."""
    s3 = require_s3_env()
    run = f"embargo-{uuid.uuid4().hex[:10]}"
    # the partner's restricted root is institute A's bucket (infra/services.py names the
    # buckets by institute; a partner id has at least two characters, so no {partner} here)
    restricted_url = f"s3://{env('LUNARCHIVE_TEST_S3_RESTRICTED_A_BUCKET')}/{run}"
    monkeypatch.setenv("LUNARCHIVE_RESTRICTED_STORE_URL", restricted_url)
    operator = S3Options(
        endpoint_url=s3["LUNARCHIVE_S3_ENDPOINT_URL"],
        access_key_id=s3["LUNARCHIVE_S3_ACCESS_KEY_ID"],
        secret_access_key=s3["LUNARCHIVE_S3_SECRET_ACCESS_KEY"],
    )
    return open_store(f"s3://{s3['LUNARCHIVE_TEST_S3_BUCKET']}/{run}", s3=operator), restricted_url


def test_an_embargo_lift_reaches_the_institute_mirror(
    stores: tuple[Store, str], tmp_path: Path
) -> None:
    public, restricted_url = stores
    open_row = GOOD_SPECIMEN | {"sample_id": OPEN_ID, "mass_g": "8110"}
    put_drop(public, PARTNER, "a-open", {"specimens.csv": ("specimens", csv_bytes([open_row]))})
    secret = demo_drop(tmp_path, PARTNER)
    put_drop(public, PARTNER, "b-secret", secret, embargo_until=UNTIL.isoformat())
    secret_csv = io.StringIO(secret["specimens.csv"][1].decode())
    secret_ids = {row["sample_id"] for row in csv.DictReader(secret_csv)}
    assert len(secret_ids) == 12 and OPEN_ID not in secret_ids

    first = harvest_samples(public.url, today=TODAY)
    assert [d["table"]["restricted"] for d in first["drops"]] == [False, True]
    publish({"cubes": [], "unrecognised": []}, PARTNER, public.url)

    # the embargoed rows live in the partner's restricted tree, which only A (and the operator)
    # may read; the public tree holds no trace of them
    institute_a, institute_b = institute("a"), institute("b")
    held = open_store(restricted_url, s3=options(institute_a))
    held_rows = table(held, PARTNER, "specimens.parquet")
    assert {r["sample_id"] for r in held_rows} == secret_ids
    for outsider in (options(institute_b), options(None)):
        with pytest.raises(AccessRefused):
            open_store(restricted_url, s3=outsider).read(f"tables/{PARTNER}/latest.json")
    assert not any("74220" in info.key for info in public.list())

    # institute A mirrors the public release with its own key: no embargoed row in it
    mirror = tmp_path / "institute-a-mirror"
    sync(public.url, mirror, institute_a)
    before_version, before_keys = mirrored_release(mirror)
    assert not any(k.startswith("restricted") for k in before_keys)
    assert [r["sample_id"] for r in geoparquet(mirror, "specimens.parquet")] == [OPEN_ID]
    assert item_sample_ids(mirror) == {OPEN_ID}
    for path in mirror.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            assert b"74220" not in path.read_bytes(), path

    # the day before, nothing moves; on the day, the next run lifts the embargo
    assert harvest_samples(public.url, today=UNTIL - timedelta(days=1))["lifted"] == []
    assert harvest_samples(public.url, today=UNTIL)["lifted"] == [f"{PARTNER}/b-secret"]
    published = publish({"cubes": [], "unrecognised": []}, PARTNER, public.url)
    assert published["published"]

    # A's next sync with the same public key brings exactly those rows
    out = sync(public.url, mirror, institute_a)
    after_version, _ = mirrored_release(mirror)
    assert after_version != before_version
    assert f"release {after_version}: transferred" in out
    specimens = geoparquet(mirror, "specimens.parquet")
    assert len(specimens) == 1 + len(secret_ids)  # no row twice, none lost
    assert {r["sample_id"] for r in specimens} == {OPEN_ID} | secret_ids
    moved = {r["sample_id"]: r for r in specimens if r["sample_id"] in secret_ids}
    for sample_id, row in moved.items():  # the same rows as the restricted table held
        original = next(r for r in held_rows if r["sample_id"] == sample_id)
        assert row["mass_g"] == original["mass_g"] and row["geometry"] == original["geometry"]
    analyses = geoparquet(mirror, "analyses.parquet")
    assert len(analyses) == 60 and {r["sample_id"] for r in analyses} <= secret_ids
    assert OPEN_ID in item_sample_ids(mirror) and item_sample_ids(mirror) & secret_ids
    assert table(held, PARTNER, "specimens.parquet") == []  # they left the restricted tree

"""Access tiers, enforced where the data lives (RELIABILITY.md R16).

Real SeaweedFS identities, set up by infra/services.py: the operator (admin), institute A and
institute B (each reads the public bucket and its own restricted bucket), and anonymous
(reads the public bucket). Every cell of identity × tree × action is asserted.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from lunarchive.catalog.layout import LATEST_KEY
from lunarchive.catalog.publish import publish_release
from lunarchive.catalog.store import S3Options, Store, open_store
from lunarchive.catalog.sync import StoreSource, sync_release
from lunarchive.schemas.errors import AccessRefused
from tests.conftest import require_s3_env
from tests.integration.test_publish_protocol import draft

pytestmark = pytest.mark.integration

IDENTITIES = ("anonymous", "institute-a", "institute-b", "operator")
TREES = ("public", "restricted-a", "restricted-b")
ALLOWED = {
    "anonymous": {"public"},
    "institute-a": {"public", "restricted-a"},
    "institute-b": {"public", "restricted-b"},
    "operator": set(TREES),
}


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the suite through `make test`", pytrace=False)
    return value


def options_for(identity: str) -> S3Options:
    endpoint = require_s3_env()["LUNARCHIVE_S3_ENDPOINT_URL"]
    if identity == "anonymous":
        return S3Options(endpoint_url=endpoint, anonymous=True)
    prefix = (
        "LUNARCHIVE_S3"
        if identity == "operator"
        else f"LUNARCHIVE_TEST_S3_INSTITUTE_{identity[-1].upper()}"
    )
    return S3Options(
        endpoint_url=endpoint,
        access_key_id=env(f"{prefix}_ACCESS_KEY_ID"),
        secret_access_key=env(f"{prefix}_SECRET_ACCESS_KEY"),
    )


@pytest.fixture(scope="module")
def trees() -> dict[str, str]:
    """One published release in each tree, by the operator; the trees' URLs."""
    run = uuid.uuid4().hex[:10]
    urls = {
        "public": f"s3://{require_s3_env()['LUNARCHIVE_TEST_S3_BUCKET']}/tiers-{run}",
        "restricted-a": f"s3://{env('LUNARCHIVE_TEST_S3_RESTRICTED_A_BUCKET')}/tiers-{run}",
        "restricted-b": f"s3://{env('LUNARCHIVE_TEST_S3_RESTRICTED_B_BUCKET')}/tiers-{run}",
    }
    for tree, url in urls.items():
        publish_release(open_store(url, s3=options_for("operator")), draft(f"{tree} sample"))
    return urls


def store_as(identity: str, url: str) -> Store:
    return open_store(url, s3=options_for(identity))


CELLS = [(i, t) for i in IDENTITIES for t in TREES]


@pytest.mark.parametrize(("identity", "tree"), CELLS)
def test_list(identity: str, tree: str, trees: dict[str, str]) -> None:
    store = store_as(identity, trees[tree])
    if tree in ALLOWED[identity]:
        assert LATEST_KEY in {info.key for info in store.list("releases/")}
    else:
        with pytest.raises(AccessRefused):
            list(store.list("releases/"))


@pytest.mark.parametrize(("identity", "tree"), CELLS)
def test_read(identity: str, tree: str, trees: dict[str, str]) -> None:
    store = store_as(identity, trees[tree])
    if tree in ALLOWED[identity]:
        assert b'"version"' in store.read(LATEST_KEY)
    else:
        with pytest.raises(AccessRefused):
            store.read(LATEST_KEY)


@pytest.mark.parametrize(("identity", "tree"), CELLS)
def test_sync(identity: str, tree: str, trees: dict[str, str], tmp_path: Path) -> None:
    source = StoreSource(store_as(identity, trees[tree]))
    mirror = open_store((tmp_path / "mirror").as_uri())
    if tree in ALLOWED[identity]:
        report = sync_release(source, mirror)
        assert report.exit_code() == 0
        assert mirror.read(LATEST_KEY) == store_as("operator", trees[tree]).read(LATEST_KEY)
        titles = [k for k in (info.key for info in mirror.list()) if k.endswith("i0.json")]
        assert len(titles) == 1
    else:
        with pytest.raises(AccessRefused):
            sync_release(source, mirror)
        assert list(mirror.list("releases/")) == []


@pytest.mark.parametrize(("identity", "tree"), CELLS)
def test_only_the_operator_writes(identity: str, tree: str, trees: dict[str, str]) -> None:
    store = store_as(identity, trees[tree])
    key = f"probe/{identity}.txt"
    if identity == "operator":
        store.write(key, b"x")
        store.delete(key)
    else:
        with pytest.raises(AccessRefused):
            store.write(key, b"x")
        assert not store_as("operator", trees[tree]).exists(key)

"""The ``s3-prefix`` kind against a loopback mirror of the LROC RDR volume in the PDS store.

The mirror answers S3 ListObjectsV2 (``?list-type=2&prefix=…``) in AWS's XML shape, paged,
and throttles like LROC's origin when asked (SOURCES.md §3.1, §9.2). Every test runs on a
folder store and on SeaweedFS and asserts end states.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from lunarchive.catalog.store import Store
from lunarchive.flows.harvest_engine import load_source, state_key
from lunarchive.flows.source_kinds._s3_prefix import parse_list_objects
from lunarchive.schemas.errors import TransientError
from lunarchive.schemas.sources import HarvestState, RunCounts
from tests.mirrors import lroc
from tests.mirrors.harness import Harvested, raw_listing, run_harvest, sha
from tests.mirrors.server import MirrorServer, serve

E0450 = "WAC_GLD100_E300N0450_100M"
E1350 = "WAC_GLD100_E300N1350_100M"
E2250 = "WAC_GLD100_E300N2250_100M"


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    return tmp_path / "staging"


@pytest.fixture
def lroc_mirror(shared: Path) -> Iterator[MirrorServer]:
    mirror = MirrorServer(files=lroc.build_lroc(shared).files, buckets=(lroc.BUCKET,), page_cap=3)
    with serve(mirror) as served:
        yield served


def harvest(store: Store, mirror: MirrorServer, staging: Path) -> Harvested:
    spec = load_source("lroc-wac-gld100")
    return run_harvest(store, spec, staging, base_url=mirror.url + lroc.BUCKET)


def expected(files: dict[str, bytes], stems: dict[str, str]) -> dict[str, str]:
    return {
        f"raw/lroc-wac-gld100/{stem}/{version}/{stem}.{ext}": sha(
            files[lroc.BUCKET + lroc.GLD100 + f"{stem}.{ext}"]
        )
        for stem, version in stems.items()
        for ext in ("IMG", "xml")
    }


def test_the_bucket_is_listed_page_by_page_harvested_and_a_rerun_fetches_nothing(
    store: Store, lroc_mirror: MirrorServer, staging: Path, shared: Path
) -> None:
    first = harvest(store, lroc_mirror, staging)
    assert first.counts == RunCounts(upstream=2, new=2, fetched=2)
    files = lroc.build_lroc(shared).files
    assert raw_listing(store, "lroc-wac-gld100") == expected(files, {E0450: "1.0", E1350: "1.0"})
    listings = [r for r in lroc_mirror.log if "list-type=2" in r.query]
    gld = [parse_qs(r.query) for r in listings if "WAC_GLD100" in r.query]
    assert len(gld) == 2  # 4 objects, at most 3 a page
    assert "continuation-token" in gld[1] and "continuation-token" not in gld[0]
    state = HarvestState.model_validate_json(store.read(state_key("lroc-wac-gld100")))
    held = {f.name: f for f in state.products[E0450].versions[0].files}
    assert held[f"{E0450}.IMG"].size == 2073600
    everything = {info.key: info.size for info in store.list()}

    lroc_mirror.log.clear()
    second = harvest(store, lroc_mirror, staging)
    assert second.counts == RunCounts(upstream=2, unchanged=2)
    assert second.writes == []
    assert {info.key: info.size for info in store.list()} == everything
    assert all("list-type=2" in r.query for r in lroc_mirror.log)  # listings only


def test_a_tile_replaced_in_place_is_fetched_again_and_a_deleted_one_kept(
    store: Store, lroc_mirror: MirrorServer, staging: Path, shared: Path
) -> None:
    harvest(store, lroc_mirror, staging)
    before = raw_listing(store, "lroc-wac-gld100")
    release2 = lroc.build_lroc(shared, release=2).files
    lroc_mirror.replace(release2)

    run = harvest(store, lroc_mirror, staging)
    assert run.counts == RunCounts(upstream=2, new=2, fetched=2)
    after = raw_listing(store, "lroc-wac-gld100")
    assert {k: v for k, v in after.items() if k in before} == before
    assert {k: v for k, v in after.items() if k not in before} == expected(
        release2, {E0450: "1.1", E2250: "1.0"}
    )
    assert run.report.withdrawn == (E1350,)
    assert run.report.flags == ()  # 2 products before, 2 now


def test_a_corrupt_tile_fails_its_label_md5_and_is_quarantined_the_others_harvested(
    store: Store, lroc_mirror: MirrorServer, staging: Path
) -> None:
    image = lroc.BUCKET + lroc.GLD100 + f"{E1350}.IMG"
    lroc_mirror.fault(image, "corrupt", "corrupt")
    run = harvest(store, lroc_mirror, staging)
    assert run.counts == RunCounts(upstream=2, new=2, fetched=1, quarantined=1, missing=1)
    assert run.report.quarantined == (E1350,)
    why: dict[str, Any] = json.loads(
        store.read(f"quarantine/lroc-wac-gld100/{E1350}-unversioned/reason.json")
    )
    assert why["rule"] == "verification" and "its label declares" in why["reason"]
    assert sorted(raw_listing(store, "lroc-wac-gld100")) == [
        f"raw/lroc-wac-gld100/{E0450}/1.0/{E0450}.IMG",
        f"raw/lroc-wac-gld100/{E0450}/1.0/{E0450}.xml",
    ]


def test_lroc_throttling_is_waited_out(
    store: Store, lroc_mirror: MirrorServer, staging: Path
) -> None:
    lroc_mirror.throttle = 3  # every third request answers 429 with Retry-After
    run = harvest(store, lroc_mirror, staging)
    assert run.counts == RunCounts(upstream=2, new=2, fetched=2)
    assert len(raw_listing(store, "lroc-wac-gld100")) == 4


def test_a_listing_page_is_parsed_and_a_broken_one_refused() -> None:
    page = (
        b'<?xml version="1.0"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<IsTruncated>true</IsTruncated><Contents><Key>a/b.IMG</Key><Size>5</Size>"
        b"<ETag>&quot;0123456789abcdef0123456789abcdef&quot;</ETag></Contents>"
        b"<Contents><Key>a/</Key><Size>0</Size></Contents>"
        b"<NextContinuationToken>tok</NextContinuationToken></ListBucketResult>"
    )
    assert parse_list_objects(page, where="x") == (
        [("a/b.IMG", 5, "0123456789abcdef0123456789abcdef")],
        "tok",
    )
    with pytest.raises(TransientError, match="not a listing"):
        parse_list_objects(b"<Error><Code>AccessDenied</Code></Error>", where="x")

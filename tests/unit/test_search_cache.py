"""The embedded search of a store: its release file is fetched once into a cache named by the
manifest's sha256, checked against the manifest, bounded, shared safely by threads and
processes, and a new release is searched as soon as it is published. Also the pystac items
a search returns.

Every test asserts the items found and the files in the cache, never a timing.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pystac
import pytest
from stac_geoparquet.arrow import parse_stac_items_to_arrow, to_parquet

from lunarchive.catalog import search as search_module
from lunarchive.catalog.layout import release_prefix
from lunarchive.catalog.publish import ReleaseDraft, publish_release, read_current
from lunarchive.catalog.search import (
    CACHED_FILES,
    SearchQuery,
    release_items,
    search,
    search_items,
)
from lunarchive.catalog.store import Store, open_store
from lunarchive.schemas.errors import TransientError

PROJ_V2 = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"


def _item(item_id: str, lon: float) -> dict[str, Any]:
    west, south, east, north = lon, -1.0, lon + 1.0, 1.0
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [PROJ_V2],
        "id": item_id,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": [west, south, east, north],
        "properties": {
            "datetime": "2020-01-01T00:00:00Z",
            "mission": "LRO",
            "proj:code": "IAU_2015:30100",
        },
        "links": [],
        "assets": {"data": {"href": f"../../raw/{item_id}.IMG", "roles": ["data"]}},
        "collection": "strips",
    }


def _parquet(items: list[dict[str, Any]], path: Path) -> Path:
    to_parquet(parse_stac_items_to_arrow(items), path)
    return path


def _publish(store: Store, items: list[dict[str, Any]], tmp_path: Path) -> tuple[str, str]:
    """Publish ``items`` as the current release: its version and the sha256 of its file."""
    data = _parquet(items, tmp_path / "draft.parquet").read_bytes()
    result = publish_release(store, ReleaseDraft(files={"items.parquet": data}, shared=[]))
    assert result.published and result.version is not None
    return result.version, hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def nothing_open() -> Iterator[None]:
    """Each test starts with no release open in this process (the file cache is per test)."""
    search_module._releases.clear()
    search_module._manifests.clear()
    yield
    search_module._releases.clear()
    search_module._manifests.clear()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return open_store(str(tmp_path / "store"))


def _ids(found: pystac.ItemCollection) -> list[str]:
    return sorted(item.id for item in found)


def _cached(cache: Path) -> list[str]:
    return sorted(path.name for path in cache.iterdir()) if cache.exists() else []


def test_a_store_search_fetches_the_release_file_once_into_the_cache(
    store: Store, tmp_path: Path
) -> None:
    version, digest = _publish(store, [_item("a", 10.0), _item("b", 50.0)], tmp_path)
    cache = tmp_path / "cache"
    found = search(store, SearchQuery(bbox=(0.0, -5.0, 20.0, 5.0)), cache_dir=cache)
    assert _ids(found) == ["a"]
    assert found.extra_fields["lunarchive:release"] == version
    assert _cached(cache) == [f"{digest}.parquet"]
    # Without the store's copy and with nothing open, the cached file still answers.
    store.delete(release_prefix(version) + "items.parquet")
    search_module._releases.clear()
    again = search(store, SearchQuery(bbox=(40.0, -5.0, 60.0, 5.0)), cache_dir=cache)
    assert _ids(again) == ["b"]
    assert again.items[0].assets["data"].href == f"{store.url.rstrip('/')}/raw/b.IMG"


def test_a_new_release_is_searched_at_once(store: Store, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first, _ = _publish(store, [_item("a", 10.0)], tmp_path)
    assert _ids(search(store, SearchQuery(), cache_dir=cache)) == ["a"]
    second, digest = _publish(store, [_item("a", 10.0), _item("c", 90.0)], tmp_path)
    found = search(store, SearchQuery(), cache_dir=cache)
    assert (found.extra_fields["lunarchive:release"], _ids(found)) == (second, ["a", "c"])
    assert second != first and f"{digest}.parquet" in _cached(cache)


def test_a_damaged_cached_file_is_fetched_again(store: Store, tmp_path: Path) -> None:
    _, digest = _publish(store, [_item("a", 10.0), _item("b", 50.0)], tmp_path)
    cache = tmp_path / "cache"
    assert _ids(search(store, SearchQuery(), cache_dir=cache)) == ["a", "b"]
    copy = cache / f"{digest}.parquet"
    copy.write_bytes(b"not the release")
    search_module._releases.clear()
    assert _ids(search(store, SearchQuery(), cache_dir=cache)) == ["a", "b"]
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == digest


def test_a_store_object_unlike_its_manifest_is_refused_and_not_cached(
    store: Store, tmp_path: Path
) -> None:
    version, _ = _publish(store, [_item("a", 10.0)], tmp_path)
    key = release_prefix(version) + "items.parquet"
    store.write(key, _parquet([_item("z", 10.0)], tmp_path / "other.parquet").read_bytes())
    cache = tmp_path / "cache"
    with pytest.raises(TransientError, match="differ from the manifest"):
        search(store, SearchQuery(), cache_dir=cache)
    assert _cached(cache) == []


def test_the_cache_keeps_only_the_latest_release_files(store: Store, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    digests = []
    for count in range(1, CACHED_FILES + 3):
        _, digest = _publish(store, [_item(f"i{n}", 10.0 * n) for n in range(count)], tmp_path)
        digests.append(digest)
        assert len(search(store, SearchQuery(), cache_dir=cache)) == count
    assert _cached(cache) == sorted(f"{digest}.parquet" for digest in digests[-CACHED_FILES:])


def test_release_items_gives_the_verified_cached_file(store: Store, tmp_path: Path) -> None:
    version, digest = _publish(store, [_item("a", 10.0)], tmp_path)
    with release_items(store, cache_dir=tmp_path / "cache") as (found, path):
        assert (found, path.name) == (version, f"{digest}.parquet")
        assert [item["id"] for item in search_items(path, SearchQuery())] == ["a"]


def _search_ids(store_url: str, cache: str) -> list[str]:
    """One search in a fresh process (for the process-safety test)."""
    found = search(open_store(store_url), SearchQuery(sortby="id"), cache_dir=Path(cache))
    return [item.id for item in found]


def test_threads_and_processes_share_one_cache(store: Store, tmp_path: Path) -> None:
    items = [_item(f"i{n:02d}", float(n)) for n in range(30)]
    _, digest = _publish(store, items, tmp_path)
    expected = [item["id"] for item in items]
    cache = tmp_path / "cache"
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = [pool.submit(_search_ids, store.url, str(cache)) for _ in range(2)]
        assert [run.result() for run in runs] == [expected, expected]
    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(lambda _: _search_ids(store.url, str(cache)), range(8)))
    assert found == [expected] * 8
    assert _cached(cache) == [f"{digest}.parquet"]


def test_a_manifest_is_read_once_per_release(store: Store, tmp_path: Path) -> None:
    """The pointer is read on every search, the (large) manifest once: a damaged manifest
    after the first search does not matter, and the next release's manifest is read."""
    _publish(store, [_item("a", 10.0)], tmp_path)
    cache = tmp_path / "cache"
    assert _ids(search(store, SearchQuery(), cache_dir=cache)) == ["a"]
    current = read_current(store)
    assert current is not None
    manifest = store.read(current[0].manifest)
    store.write(current[0].manifest, b"{}")
    assert _ids(search(store, SearchQuery(), cache_dir=cache)) == ["a"]
    store.write(current[0].manifest, manifest)  # the next publish reads it
    _publish(store, [_item("b", 10.0)], tmp_path)
    assert _ids(search(store, SearchQuery(), cache_dir=cache)) == ["b"]


# --- pystac items ---------------------------------------------------------------------------


def test_items_are_what_pystac_reads_from_the_same_dicts(tmp_path: Path) -> None:
    """Current items skip pystac's migration, older ones still get it: either way the items
    are exactly what ``pystac.Item.from_dict`` makes of the page's dicts."""
    old = _item("old", 30.0) | {
        "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/projection/v1.1.0/schema.json"],
    }
    old["properties"] = {"datetime": "2020-01-01T00:00:00Z", "proj:epsg": 4326}
    path = _parquet([_item("new", 10.0), old], tmp_path / "items.parquet")
    found = {item.id: item for item in search(path, SearchQuery())}
    for page_item in search_items(path, SearchQuery()):
        expected = pystac.Item.from_dict(json.loads(json.dumps(page_item)))
        assert found[page_item["id"]].to_dict() == expected.to_dict()
    assert found["old"].stac_extensions == [PROJ_V2]
    assert found["old"].properties["proj:code"] == "EPSG:4326"
    assert found["new"].stac_extensions == [PROJ_V2]

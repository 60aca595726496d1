"""A loopback PDS Registry Search API (``/api/search/1/``) over the LOLA mirror (SOURCES.md §9.5).

Implements only what the harvester uses: ``/products/{id}`` and ``/products/{id}/latest``
(a LID resolves to its latest version), ``/products/{id}/all``, and
``/products/{collection LIDVID}/members`` with ``sort`` on
``ops:Harvest_Info.ops:harvest_date_time``, ``search-after``, ``limit`` and ``fields``;
``Accept: application/json`` (``{"summary": …, "data": [pdsProduct]}``) and
``application/kvp+json``. Missing → 404; nothing after the checkpoint → ``data: []``.

The collection is ``urn:nasa:pds:lro_lola_rdr:data_gridded`` (the lunar query public code
makes). Members, each with ``ops:`` file properties pointing at this same server:

* ``…:ldem_4::1.0`` — the real PDS4 label of LDEM_4 (``fixtures/real/derived/ldem_4_pds4.xml``)
  with the LOLA LID and ``file_name ldem_4.img``, marked synthetic, beside the LOLA mirror's
  real ``ldem_4.img``; md5 and size in ``ops:Data_File_Info``;
* ``…:ldem_16::1.0`` — a label whose data file is absent from the archive (md5 present, file
  absent: the product is quarantined on the 404).

Release 2 re-harvests ``ldem_4::1.0`` (a later ``harvest_date_time``, same LIDVID: it must
not be downloaded again). Release 3 is collection version 1.1 listing ``ldem_4::1.1`` (a new
label version over the same data file).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.mirrors import lola

__all__ = ["API", "COLLECTION", "SearchApi", "build_search_api"]

API = "/api/search/1/"
COLLECTION = "urn:nasa:pds:lro_lola_rdr:data_gridded"
TIME = "ops:Harvest_Info.ops:harvest_date_time"
LABEL_PATH = lola.ROOT + lola.GDR + "ldem_4.xml"
LABEL_1_1 = lola.ROOT + lola.GDR + "ldem_4_v1_1.xml"
ABSENT = lola.ROOT + lola.GDR + "ldem_16.img"


@dataclass
class SearchApi:
    products: list[dict[str, Any]]
    collections: dict[str, str]  # collection LID → its latest LIDVID
    files: dict[str, bytes]
    asked: list[str] = field(default_factory=list)

    def __call__(
        self, rest: str, query: dict[str, list[str]], headers: dict[str, str]
    ) -> tuple[int, bytes, dict[str, str]]:
        self.asked.append(rest)
        parts = rest.split("/")
        if len(parts) < 2 or parts[0] != "products":
            return 404, b'{"message": "not found"}', {"Content-Type": "application/json"}
        ident, tail = parts[1], parts[2:]
        if tail == ["latest"] or (not tail and "::" not in ident):
            lidvid = self.collections.get(ident) or self._latest(ident)
            found = [p for p in self._all() if p["id"] == lidvid]
            return self._answer(found, query, headers, single=True)
        if tail == ["all"]:
            return self._answer(
                [p for p in self._all() if p["id"].split("::")[0] == ident], query, headers
            )
        if tail == ["members"]:
            if ident not in self.collections.values():
                return (
                    404,
                    b'{"message": "no such collection"}',
                    {"Content-Type": "application/json"},
                )
            members = sorted(
                (p for p in self.products if p["collection"] == ident),
                key=lambda p: p["properties"][TIME][0],
            )
            after = query.get("search-after", [""])[0]
            members = [p for p in members if p["properties"][TIME][0] > after]
            limit = int(query.get("limit", ["100"])[0])
            return self._answer(members[:limit], query, headers, hits=len(members))
        if not tail:
            return self._answer(
                [p for p in self._all() if p["id"] == ident], query, headers, single=True
            )
        return 404, b'{"message": "not found"}', {"Content-Type": "application/json"}

    def _all(self) -> list[dict[str, Any]]:
        collections = [
            {"id": lidvid, "properties": {"lidvid": [lidvid]}}
            for lidvid in self.collections.values()
        ]
        return collections + self.products

    def _latest(self, lid: str) -> str:
        versions = [p["id"] for p in self.products if p["id"].split("::")[0] == lid]
        return (
            max(versions, key=lambda v: tuple(int(x) for x in v.split("::")[1].split(".")))
            if versions
            else ""
        )

    def _answer(
        self,
        found: list[dict[str, Any]],
        query: dict[str, list[str]],
        headers: dict[str, str],
        *,
        single: bool = False,
        hits: int | None = None,
    ) -> tuple[int, bytes, dict[str, str]]:
        kind = {"Content-Type": "application/json"}
        if single and not found:
            return 404, b'{"message": "not found"}', kind
        fields = [f for f in ",".join(query.get("fields", [])).split(",") if f]
        data = []
        for product in found:
            properties = product["properties"]
            if fields:
                properties = {k: v for k, v in properties.items() if k in fields}
            data.append(
                {"id": product["id"], "type": "Product_Observational", "properties": properties}
            )
        if headers.get("accept") == "application/kvp+json":
            data = [{"lidvid": p["id"], "title": p["id"].split(":")[-1]} for p in data]
        if single:
            return 200, json.dumps(data[0]).encode(), kind
        summary = {
            "hits": hits if hits is not None else len(data),
            "limit": int(query.get("limit", ["100"])[0]),
            "sort": query.get("sort", [""])[0],
            "search_after": [data[-1]["properties"].get(TIME, [""])[0]]
            if data and "properties" in data[-1]
            else [],
        }
        return 200, json.dumps({"summary": summary, "data": data}).encode(), kind


def _label(real: str, lid: str, version: str, data_name: str, comment: str) -> bytes:
    edits = {
        "URN:LUNARCHIVE:FIXTURES:DERIVED:LDEM_4_PDS4": lid,
        "<version_id>1.0</version_id>": f"<version_id>{version}</version_id>",
        "<file_name>ldem_4_pds4.img</file_name>": (
            f"<file_name>{data_name}</file_name>\n      <comment>{comment}</comment>"
        ),
    }
    for old, new in edits.items():
        assert old in real, old
        real = real.replace(old, new, 1)
    return real.encode()


def _member(
    base: str,
    lidvid: str,
    label_path: str,
    label: bytes,
    data_path: str,
    data: bytes | None,
    when: str,
) -> dict[str, Any]:
    md5 = hashlib.md5(data if data is not None else b"absent", usedforsecurity=False).hexdigest()
    return {
        "id": lidvid,
        "collection": "",
        "properties": {
            "lid": [lidvid.split("::")[0]],
            "lidvid": [lidvid],
            TIME: [when],
            "ops:Label_File_Info.ops:file_ref": [base + label_path],
            "ops:Label_File_Info.ops:file_size": [str(len(label))],
            "ops:Label_File_Info.ops:md5_checksum": [
                hashlib.md5(label, usedforsecurity=False).hexdigest()
            ],
            "ops:Data_File_Info.ops:file_ref": [base + data_path],
            "ops:Data_File_Info.ops:file_size": [str(len(data) if data is not None else 1036800)],
            "ops:Data_File_Info.ops:md5_checksum": [md5],
        },
    }


def build_search_api(shared: Path, base: str, release: int = 1) -> SearchApi:
    """The API and the files it points at (the LOLA mirror's, plus the PDS4 labels)."""
    files = dict(lola.build_lola(shared).files)
    real = (shared / "fixtures" / "real" / "derived" / "ldem_4_pds4.xml").read_text("utf-8")
    image = files[lola.ROOT + lola.GDR + "ldem_4.img"]
    lid4, lid16 = f"{COLLECTION}:ldem_4", f"{COLLECTION}:ldem_16"
    label4 = _label(real, lid4, "1.0", "ldem_4.img", "synthetic")
    label16 = _label(real, lid16, "1.0", "ldem_16.img", "synthetic: its data file is absent")
    files[LABEL_PATH] = label4
    files[lola.ROOT + lola.GDR + "ldem_16.xml"] = label16
    collection = f"{COLLECTION}::1.0"
    when4 = "2024-01-04T10:00:00.000000Z" if release == 1 else "2026-06-02T08:00:00.000000Z"
    products = [
        _member(
            base,
            f"{lid4}::1.0",
            LABEL_PATH,
            label4,
            lola.ROOT + lola.GDR + "ldem_4.img",
            image,
            when4,
        ),
        _member(
            base,
            f"{lid16}::1.0",
            lola.ROOT + lola.GDR + "ldem_16.xml",
            label16,
            ABSENT,
            None,
            "2024-01-04T10:00:01.000000Z",
        ),
    ]
    for product in products:
        product["collection"] = collection
    if release >= 3:
        collection = f"{COLLECTION}::1.1"
        label11 = _label(real, lid4, "1.1", "ldem_4.img", "synthetic: label-only update")
        files[LABEL_1_1] = label11
        newer = _member(
            base,
            f"{lid4}::1.1",
            LABEL_1_1,
            label11,
            lola.ROOT + lola.GDR + "ldem_4.img",
            image,
            "2026-06-03T08:00:00.000000Z",
        )
        products = [newer, products[1]]
        for product in products:
            product["collection"] = collection
    return SearchApi(products, {COLLECTION: collection}, files)

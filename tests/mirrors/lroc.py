"""A loopback mirror of the LROC RDR volume in the PDS cloud store (SOURCES.md §3 and §9.2).

LROC's RDRs with PDS4 labels are reported to be served from an S3-backed store,
``https://pds.mcp.nasa.gov/data/store/…``, answering ListObjectsV2
(``?list-type=2&prefix=…``). The mirror serves that bucket at ``/data/store/`` (keys below
it), with the real XML shape, paged, and LROC's throttling (429 every N requests) on demand.

Products under ``img/lunar_reconnaissance_orbiter/pds4/lroc/lro-l-lroc-5-rdr/LROLRC_2001/``:

* ``DATA/SDP/WAC_GLD100/WAC_GLD100_E300N0450_100M`` and ``…_E300N1350_100M`` (``.xml`` +
  ``.IMG``) — **synthetic** stand-ins: no real GLD100 tile fits in the fixtures, so each is the
  real LDEM_4 grid (``fixtures/real/derived/ldem_4_pds4.img``, the second with one DN flipped)
  under its real PDS4 label, edited to the LROC LID pattern, with ``file_size`` and
  ``md5_checksum`` declared as LROC labels do, and marked synthetic;
* ``DATA/MDR/WAC_EMP/…`` — a product the registry's prefixes leave out.

Release 2: ``E300N0450`` replaced in place by version 1.1 (new bytes, new md5, new ETag),
``E300N2250`` added, ``E300N1350`` deleted (withdrawn upstream).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BUCKET", "GLD100", "LrocMirror", "build_lroc"]

BUCKET = "/data/store/"
VOLUME = "img/lunar_reconnaissance_orbiter/pds4/lroc/lro-l-lroc-5-rdr/LROLRC_2001/"
GLD100 = VOLUME + "DATA/SDP/WAC_GLD100/"
EMP = VOLUME + "DATA/MDR/WAC_EMP/"
_LID = "urn:nasa:pds:lro-l-lroc-5-rdr:lrolrc_2001_data:sdp.wac_gld100."


@dataclass(frozen=True)
class LrocMirror:
    files: dict[str, bytes]

    def key(self, path: str) -> str:
        return BUCKET + path


def _product(label: str, image: bytes, stem: str, version: str) -> tuple[bytes, bytes]:
    md5 = hashlib.md5(image, usedforsecurity=False).hexdigest()
    edits = {
        "URN:LUNARCHIVE:FIXTURES:DERIVED:LDEM_4_PDS4": _LID + stem.lower(),
        "<version_id>1.0</version_id>": f"<version_id>{version}</version_id>",
        "<title>LRO LOLA LDEM_4 (GDR V3.0) CONVERTED TO PDS4 BY GDAL FOR TEST FIXTURES</title>": (
            f"<title>{stem} (SYNTHETIC stand-in of lunarchive's mirror: LDEM_4 heights)</title>"
        ),
        "<file_name>ldem_4_pds4.img</file_name>": (
            f"<file_name>{stem}.IMG</file_name>\n"
            f'      <file_size unit="byte">{len(image)}</file_size>\n'
            f"      <md5_checksum>{md5}</md5_checksum>\n"
            "      <comment>synthetic</comment>"
        ),
    }
    for old, new in edits.items():
        assert old in label, old
        label = label.replace(old, new, 1)
    return label.encode(), image


def build_lroc(shared: Path, release: int = 1) -> LrocMirror:
    derived = shared / "fixtures" / "real" / "derived"
    label = (derived / "ldem_4_pds4.xml").read_text("utf-8")
    image = (derived / "ldem_4_pds4.img").read_bytes()
    flipped = bytearray(image)
    flipped[4096] ^= 0x01
    tiles = {"WAC_GLD100_E300N0450_100M": (image, "1.0")}
    if release >= 2:
        again = bytearray(image)
        again[8192] ^= 0x01
        tiles["WAC_GLD100_E300N0450_100M"] = (bytes(again), "1.1")
        tiles["WAC_GLD100_E300N2250_100M"] = (bytes(flipped[::-1]), "1.0")
    else:
        tiles["WAC_GLD100_E300N1350_100M"] = (bytes(flipped), "1.0")
    files: dict[str, bytes] = {}
    for stem, (data, version) in tiles.items():
        files[GLD100 + stem + ".xml"], files[GLD100 + stem + ".IMG"] = _product(
            label, data, stem, version
        )
    (
        files[EMP + "WAC_EMP_643NM_E300N0450_304P.xml"],
        files[EMP + "WAC_EMP_643NM_E300N0450_304P.IMG"],
    ) = _product(label, image, "WAC_EMP_643NM_E300N0450_304P", "1.0")
    return LrocMirror({BUCKET + key: data for key, data in files.items()})

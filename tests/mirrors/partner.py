"""Payload drops of a partner team, as they land in ``inbox/<partner>/payload/<drop>/``.

The partner writes into the archive's own object storage, so this "mirror" is the store
itself: :func:`write_drop` puts the files first and ``manifest.json`` last, as a partner
must. Products come from the real fixtures: the south-polar GeoTIFF
(``fixtures/real/derived/ldem_4_spole_iau30135.tif``, IAU_2015:30135) and the PDS4 product
``ldem_4_pds4.xml`` + ``.img`` (its LID left as it is); a FITS file is generated (a minimal
primary HDU: one 2880-byte header block, 8×8 int16 pixels padded to a block).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from lunarchive.catalog.store import Store

__all__ = ["PARTNER", "fits_bytes", "manifest", "product", "write_drop"]

PARTNER = "cubesat-team"


def fits_bytes() -> bytes:
    cards = [
        "SIMPLE  =                    T",
        "BITPIX  =                   16",
        "NAXIS   =                    2",
        "NAXIS1  =                    8",
        "NAXIS2  =                    8",
        "OBJECT  = 'MOON    '",
        "COMMENT SYNTHETIC: lunarchive's test mirror",
        "END",
    ]
    header = "".join(card.ljust(80) for card in cards).ljust(2880).encode("ascii")
    pixels = bytes(range(128))
    return header + pixels.ljust(2880, b"\0")


def product(
    product_id: str, version: str, fmt: str, files: dict[str, bytes], label: str
) -> dict[str, Any]:
    return {
        "product_id": product_id,
        "version": version,
        "format": fmt,
        "label": label,
        "files": [
            {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for path, data in sorted(files.items())
        ],
    }


def manifest(products: list[dict[str, Any]], created: str = "2026-06-01T00:00:00Z") -> bytes:
    document = {
        "kind": "payload",
        "partner": PARTNER,
        "mission": "Chang'e-6 CubeSat (example partner payload)",
        "instrument": "wide-angle camera",
        "contact": "payload-team@example.org",
        "licence": "CC-BY-4.0",
        "created": datetime.fromisoformat(created).isoformat(),
        "products": products,
    }
    return json.dumps(document, indent=2).encode()


def real_products(shared: Path) -> tuple[dict[str, bytes], list[dict[str, Any]]]:
    """Drop 1: a GeoTIFF, a PDS4 product and a bare FITS file, with their manifest entries."""
    derived = shared / "fixtures" / "real" / "derived"
    tif = (derived / "ldem_4_spole_iau30135.tif").read_bytes()
    xml = (derived / "ldem_4_pds4.xml").read_bytes()
    img = (derived / "ldem_4_pds4.img").read_bytes()
    fits = fits_bytes()
    files = {
        "dem/south_pole_dem.tif": tif,
        "pds4/ldem_4_pds4.xml": xml,
        "pds4/ldem_4_pds4.img": img,
        "raw/frame_0001.fits": fits,
    }
    products = [
        product(
            "south-pole-dem",
            "1",
            "geotiff",
            {"dem/south_pole_dem.tif": tif},
            "dem/south_pole_dem.tif",
        ),
        product(
            "urn:lunarchive:fixtures:derived:ldem_4_pds4",
            "1.0",
            "pds4",
            {"pds4/ldem_4_pds4.xml": xml, "pds4/ldem_4_pds4.img": img},
            "pds4/ldem_4_pds4.xml",
        ),
        product("frame-0001", "1", "fits", {"raw/frame_0001.fits": fits}, "raw/frame_0001.fits"),
    ]
    return files, products


def write_drop(
    store: Store, drop: str, files: dict[str, bytes], manifest_bytes: bytes | None
) -> None:
    """The files first, the manifest last (its presence says the drop is complete)."""
    prefix = f"inbox/{PARTNER}/payload/{drop}/"
    for path, data in sorted(files.items()):
        store.write(prefix + path, data)
    if manifest_bytes is not None:
        store.write(prefix + "manifest.json", manifest_bytes)

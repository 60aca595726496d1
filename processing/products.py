"""One entry point for every product format: find the label, pick the reader.

A product is always read through its label: a PDS4 ``.xml``, a PDS3 ``.lbl`` (or the label
attached at the start of an ``.img``), an ISIS3 ``.cub``, a GeoTIFF. Given a data file with a
detached label beside it (same stem), the label is read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lunarchive.processing.geotiff import read_geotiff
from lunarchive.processing.isis3 import read_isis3
from lunarchive.processing.pds3 import read_pds3
from lunarchive.processing.pds4 import read_pds4
from lunarchive.schemas.errors import ProductRejected
from lunarchive.schemas.product import ProductRecord

__all__ = ["read_product"]

Reader = Callable[[Path], ProductRecord]
_BY_SUFFIX: dict[str, Reader] = {
    ".xml": read_pds4,
    ".lbl": read_pds3,
    ".cub": read_isis3,
    ".tif": read_geotiff,
    ".tiff": read_geotiff,
}
_PDS3_MAGIC = (b"PDS_VERSION_ID", b"ODL_VERSION_ID", b"CCSD3ZF")
_LABEL_SUFFIXES = (".xml", ".lbl")


def read_product(path: Path) -> ProductRecord:
    """The product record of ``path`` (a label, or a data file beside its label)."""
    if not path.is_file():
        raise ProductRejected(f"{path}: no such file")
    label, reader = _label_and_reader(path)
    return reader(label)


def _label_and_reader(path: Path) -> tuple[Path, Reader]:
    suffix = path.suffix.lower()
    if suffix in _BY_SUFFIX:
        return path, _BY_SUFFIX[suffix]
    with path.open("rb") as handle:
        head = handle.read(64).lstrip()
    if head.startswith(_PDS3_MAGIC):
        return path, read_pds3  # an attached PDS3 label
    for sibling in sorted(path.parent.iterdir()):
        if sibling.stem == path.stem and sibling.suffix.lower() in _LABEL_SUFFIXES:
            return sibling, _BY_SUFFIX[sibling.suffix.lower()]
    raise ProductRejected(
        f"{path.name}: no label found (rule: lunarchive reads PDS4 .xml and PDS3 labels, "
        "ISIS3 .cub and GeoTIFF; a data file needs its label beside it, with the same stem)"
    )

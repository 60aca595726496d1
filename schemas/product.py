"""The canonical record of one lunar product, whatever format it came in.

Every reader (PDS4, PDS3, ISIS3, GeoTIFF) returns a :class:`ProductRecord`; harvest, cubes
and the catalog only ever see this record. Geometry is lunar planetocentric lon/lat degrees
(IAU_2015:30100, east-positive, −180..180); a footprint crossing ±180° is a MultiPolygon.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ArrayLayout",
    "CrsInfo",
    "Footprint",
    "ProductFile",
    "ProductRecord",
    "TableLayout",
]

ProductFormat = Literal["PDS4", "PDS3", "ISIS3", "GeoTIFF"]
ByteOrder = Literal["little", "big"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProductFile(_Frozen):
    """One file of the product. ``md5`` / ``size`` as the label declares them, when it does."""

    name: str  # a bare file name inside the product folder: never a path
    role: Literal["label", "data", "browse", "other"]
    size: int | None = Field(default=None, ge=0)
    md5: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class ArrayLayout(_Frozen):
    """Where an image array lies in its file and how to decode it.

    ``shape`` is in storage order, with ``axes`` naming each axis (e.g. ``("band", "line",
    "sample")``). Physical value = stored × ``scale`` + ``offset``. ``radius_offset_m`` is set
    when the label's offset turns heights into radii (LOLA's 1 737 400 m): readers keep the
    stored value a *height* above the reference sphere and record the offset here instead.
    """

    name: str | None = None
    file: str
    offset_bytes: int = Field(ge=0)
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    dtype: str  # numpy kind and size, e.g. "int16", "float32", "uint8"
    byte_order: ByteOrder
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None
    unit: str | None = None
    radius_offset_m: float | None = None

    @model_validator(mode="after")
    def _axes_match_shape(self) -> ArrayLayout:
        if len(self.axes) != len(self.shape):
            raise ValueError(f"axes {self.axes} do not match shape {self.shape}")
        if any(n <= 0 for n in self.shape):
            raise ValueError(f"shape {self.shape} has an empty or negative axis")
        return self


class TableLayout(_Frozen):
    """A PDS4 table (binary or character): where it is, how many records, which fields."""

    name: str | None = None
    file: str
    kind: Literal["binary", "character", "delimited"]
    offset_bytes: int = Field(ge=0)
    records: int = Field(ge=0)
    record_bytes: int | None = Field(default=None, ge=1)
    fields: tuple[str, ...] = ()


class CrsInfo(_Frozen):
    """The product's map CRS: an IAU code only when the definition matches one exactly."""

    code: str | None = None  # e.g. "IAU_2015:30110"; None when no code fits
    wkt2: str
    radius_m: float  # the sphere (or semi-major axis) the CRS is defined on
    projection: str  # e.g. "Equirectangular", "Polar Stereographic", "Lambert Conformal Conic"


class Footprint(_Frozen):
    """Lunar lon/lat bbox and GeoJSON geometry (degrees, −180..180, split at ±180°)."""

    bbox: tuple[float, float, float, float]
    geometry: dict[str, Any]


class ProductRecord(_Frozen):
    """One product, described the same way whatever its format."""

    format: ProductFormat
    product_id: str  # the LID (PDS4) or PRODUCT_ID (PDS3) or file stem
    version: str | None = None  # the VID (PDS4) or PRODUCT_VERSION_ID
    mission: str | None = None
    instrument: str | None = None
    target: str = "Moon"
    product_type: str | None = None
    processing_level: str | None = None
    start: datetime | None = None
    stop: datetime | None = None
    footprint: Footprint | None = None  # None: unprojected, and no footprint in the label
    crs: CrsInfo | None = None  # None: not map projected (never an invented geotransform)
    transform: tuple[float, float, float, float, float, float] | None = None  # affine a..f
    resolution_m: float | None = Field(default=None, gt=0)
    files: tuple[ProductFile, ...]
    arrays: tuple[ArrayLayout, ...] = ()
    tables: tuple[TableLayout, ...] = ()
    label_file: str  # the file holding the label (== a data file for attached labels)
    label_text: str  # the original label, kept for the catalog

    @property
    def lidvid(self) -> str:
        return f"{self.product_id}::{self.version}" if self.version else self.product_id

    @model_validator(mode="after")
    def _consistent(self) -> ProductRecord:
        if self.start and self.stop and self.stop < self.start:
            raise ValueError(f"stop {self.stop} is before start {self.start}")
        if (self.transform is None) != (self.crs is None):
            raise ValueError("a transform needs a CRS and a CRS needs a transform")
        names = {f.name for f in self.files}
        parts = [a.file for a in self.arrays] + [t.file for t in self.tables]
        for name in parts:
            if name not in names:
                raise ValueError(f"{name!r} is not one of the product's files")
        return self

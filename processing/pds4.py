"""PDS4 labels to :class:`ProductRecord`: identity, times, files, arrays, tables, map CRS.

Labels are untrusted (RELIABILITY.md R10, R11, R13). They are parsed with the hardened
parser of :mod:`labels`; every ``file_name`` must be a bare PDS4 file name that resolves
inside the label's folder; every declared array is checked against its file's size and the
array byte limit before anything touches the data. Whatever is wrong with a label, the only
error raised is :class:`ProductRejected`, naming the label, the element and the rule.

Data files that are absent (a label shipped alone) are still described: each file keeps the
size its label declares (or None: a size is never invented), and arrays are checked against
that declared size, or against the byte limit alone when the label declares none.
"""

from __future__ import annotations

import math
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import pydantic
import pyproj
import pyproj.exceptions
from lxml import etree
from pyproj.crs import GeographicCRS, ProjectedCRS
from pyproj.crs.coordinate_operation import (
    EquidistantCylindricalConversion,
    PolarStereographicAConversion,
    PolarStereographicBConversion,
)
from pyproj.crs.datum import CustomDatum, CustomEllipsoid

from lunarchive.processing.arrays import check_array_fits, numpy_dtype
from lunarchive.processing.crs import MOON_RADIUS_M, BBox, assert_lunar, iau_code, lunar_footprint
from lunarchive.processing.labels import parse_label_bytes, read_label_bytes, time_range
from lunarchive.schemas.errors import ProductRejected
from lunarchive.schemas.product import (
    ArrayLayout,
    ByteOrder,
    CrsInfo,
    Footprint,
    ProductFile,
    ProductRecord,
    TableLayout,
)

__all__ = ["read_pds4"]

_PDS: Final = "{http://pds.nasa.gov/pds4/pds/v1}"
_CART: Final = "{http://pds.nasa.gov/pds4/cart/v1}"

# PDS Standards Reference §6C: file names use A-Z a-z 0-9 - _ . only. An allowlist refuses
# every traversal trick at once: separators, "..", NUL, %-encoding, drive letters.
_FILE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_INTEGER: Final = re.compile(r"[+-]?[0-9]{1,30}")
_HEX: Final = re.compile(r"0x[0-9A-Fa-f]{1,16}")
_AREA_ROLES: Final[dict[str, Literal["data", "browse"]]] = {
    "File_Area_Observational": "data",
    "File_Area_Browse": "browse",
}
_TABLE_KINDS: Final[dict[str, tuple[Literal["binary", "character", "delimited"], str | None]]] = {
    "Table_Binary": ("binary", "Record_Binary"),
    "Table_Character": ("character", "Record_Character"),
    "Table_Delimited": ("delimited", None),  # records have no fixed length
}
_FIELD_TAGS: Final = {f"{_PDS}Field_{kind}" for kind in ("Binary", "Character", "Delimited")}

_ORDERS: Final[tuple[tuple[str, ByteOrder], ...]] = (("LSB", "little"), ("MSB", "big"))
# PDS4 data_type -> (numpy kind and size, byte order). One-byte types have no byte order.
_DATA_TYPES: Final[dict[str, tuple[str, ByteOrder]]] = {
    "SignedByte": ("int8", "little"),
    "UnsignedByte": ("uint8", "little"),
    **{
        f"{sign}{order}{size}": (f"{kind}{8 * size}", byte_order)
        for sign, kind in (("Signed", "int"), ("Unsigned", "uint"))
        for order, byte_order in _ORDERS
        for size in (2, 4, 8)
    },
    **{
        f"IEEE754{order}{size}": (kind, byte_order)
        for order, byte_order in _ORDERS
        for size, kind in (("Single", "float32"), ("Double", "float64"))
    },
    **{
        f"Complex{order}{size}": (f"complex{8 * size}", byte_order)
        for order, byte_order in _ORDERS
        for size in (8, 16)
    },
}
_LENGTH_M: Final = {"m": 1.0, "km": 1000.0, "cm": 0.01, "mm": 0.001}
_RESOLUTION_M: Final = {f"{unit}/pixel": factor for unit, factor in _LENGTH_M.items()}
_ANGLE_DEG: Final = {
    "deg": 1.0,
    "rad": math.degrees(1.0),
    "mrad": math.degrees(1e-3),
    "arcmin": 1.0 / 60.0,
    "arcsec": 1.0 / 3600.0,
}
_RADIUS_TOLERANCE_M: Final = 1e-3

Transform = tuple[float, float, float, float, float, float]
_Role = Literal["label", "data", "browse", "other"]
_TableKind = Literal["binary", "character", "delimited"]


@dataclass(frozen=True)
class _Label:
    """The parsed label and what every error message needs to name it."""

    path: Path
    root: etree._Element

    def where(self, element: etree._Element, child: str | None = None) -> str:
        """``"x.xml, File_Area_Observational/Array_2D_Image[2]/offset"``-style location."""
        steps: list[str] = [] if child is None else [child]
        node: etree._Element | None = element
        while node is not None and node is not self.root:
            parent = node.getparent()
            step = etree.QName(node).localname
            same = [] if parent is None else [s for s in parent if s.tag == node.tag]
            steps.append(f"{step}[{same.index(node) + 1}]" if len(same) > 1 else step)
            node = parent
        return f"{self.path.name}, {'/'.join(reversed(steps)) or etree.QName(self.root).localname}"

    def reject(self, element: etree._Element, child: str | None, problem: str) -> ProductRejected:
        return ProductRejected(f"{self.where(element, child)}: {problem}")


@dataclass(frozen=True)
class _DataFile:
    """One ``File`` of a file area: the product file and, when present, its verified size."""

    record: ProductFile
    actual_size: int | None  # None: the file is not beside the label


def read_pds4(label: Path) -> ProductRecord:
    """Describe the PDS4 product whose detached label is ``label``.

    Raises :class:`ProductRejected` for any malformed or hostile label (and
    :class:`FileNotFoundError` when ``label`` itself does not exist).
    """
    data = read_label_bytes(label)
    root = parse_label_bytes(data, name=label.name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProductRejected(
            f"{label.name}: not UTF-8 at byte {exc.start} (rule: PDS4 labels are UTF-8)"
        ) from None
    try:
        return _record(_Label(label, root), text, label_size=len(data))
    except pydantic.ValidationError as exc:
        problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ProductRejected(
            f"{label.name}: {problem} (rule: a label describes a valid product)"
        ) from None


def _record(label: _Label, text: str, *, label_size: int) -> ProductRecord:
    root = label.root
    start, stop = time_range(root, where=label.path.name)
    files, arrays, tables = _file_areas(label)
    crs, transform, resolution, footprint = _georeference(label, arrays)
    label_file = ProductFile(name=label.path.name, role="label", size=label_size)
    return ProductRecord(
        format="PDS4",
        product_id=_required_text(
            label, root, f"{_PDS}Identification_Area/{_PDS}logical_identifier"
        ),
        version=_text(root, f"{_PDS}Identification_Area/{_PDS}version_id"),
        mission=_text(root, f".//{_PDS}Investigation_Area/{_PDS}name"),
        instrument=_instrument(root),
        target=_target(root),
        product_type=_text(root, f"{_PDS}Identification_Area/{_PDS}product_class"),
        processing_level=_text(root, f".//{_PDS}Primary_Result_Summary/{_PDS}processing_level"),
        start=start,
        stop=stop,
        footprint=footprint,
        crs=crs,
        transform=transform,
        resolution_m=resolution,
        files=(label_file, *files),
        arrays=tuple(arrays),
        tables=tuple(tables),
        label_file=label.path.name,
        label_text=text,
    )


# --- identity ---------------------------------------------------------------------------


def _text(element: etree._Element, path: str) -> str | None:
    """The whitespace-collapsed text at ``path``, or None when absent, nil or empty."""
    found = element.find(path)
    if found is None:
        return None
    return " ".join((found.text or "").split()) or None


def _required_text(label: _Label, element: etree._Element, path: str) -> str:
    value = _text(element, path)
    if value is None:
        child = path.rsplit("}", 1)[-1]
        raise label.reject(element, child, "missing or empty (rule: it is required)")
    return value


def _instrument(root: etree._Element) -> str | None:
    for component in root.iterfind(f".//{_PDS}Observing_System_Component"):
        if (_text(component, f"{_PDS}type") or "").lower() == "instrument":
            return _text(component, f"{_PDS}name")
    return None


def _target(root: etree._Element) -> str:
    name = _text(root, f".//{_PDS}Target_Identification/{_PDS}name")
    if name is None or name.lower() == "moon":
        return "Moon"  # labels spell it MOON or Moon; the archive spells it one way
    return name


# --- numbers ----------------------------------------------------------------------------


def _integer(label: _Label, parent: etree._Element, tag: str, *, minimum: int) -> int:
    found = parent.find(f"{_PDS}{tag}")
    text = (found.text or "").strip() if found is not None else ""
    if not _INTEGER.fullmatch(text):
        problem = f"{text!r} is not an integer" if found is not None else "missing"
        raise label.reject(parent, tag, f"{problem} (rule: it is a required integer)")
    value = int(text)
    if value < minimum:
        raise label.reject(parent, tag, f"{value} is below {minimum} (rule: sizes are positive)")
    return value


def _optional_integer(label: _Label, parent: etree._Element, tag: str) -> int | None:
    if parent.find(f"{_PDS}{tag}") is None:
        return None
    return _integer(label, parent, tag, minimum=0)


def _number(label: _Label, element: etree._Element) -> float:
    text = (element.text or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise label.reject(element, None, f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise label.reject(element, None, f"{text!r} is not finite (rule: numbers are finite)")
    return value


def _optional_number(label: _Label, parent: etree._Element, path: str) -> float | None:
    found = parent.find(path)
    return None if found is None else _number(label, found)


def _measure(
    label: _Label,
    parent: etree._Element,
    tag: str,
    units: dict[str, float],
    *,
    default: float | None = None,
) -> float:
    """A ``cart:`` value with a ``unit`` attribute, in the table's base unit (m or deg)."""
    found = parent.find(f"{_CART}{tag}")
    if found is None:
        if default is not None:
            return default
        raise label.reject(parent, f"cart:{tag}", "missing (rule: it is required)")
    unit = found.get("unit", next(iter(units)))
    if unit not in units:
        raise label.reject(
            found, None, f"unit {unit!r} is not one of {sorted(units)} (rule: known units only)"
        )
    return _number(label, found) * units[unit]


# --- files, arrays, tables --------------------------------------------------------------


def _file_areas(
    label: _Label,
) -> tuple[list[ProductFile], list[ArrayLayout], list[TableLayout]]:
    files: list[ProductFile] = []
    arrays: list[ArrayLayout] = []
    tables: list[TableLayout] = []
    for area in label.root:
        kind = etree.QName(area).localname
        if not kind.startswith("File_Area"):
            continue
        data_file = _data_file(label, area, role=_AREA_ROLES.get(kind, "other"))
        if data_file.record.name in {f.name for f in files} | {label.path.name}:
            raise label.reject(
                area,
                "File/file_name",
                f"{data_file.record.name!r} is listed twice (rule: each file once)",
            )
        files.append(data_file.record)
        for element in area:
            tag = etree.QName(element).localname
            if tag == "Array" or tag.startswith("Array_"):
                arrays.append(_array(label, element, data_file))
            elif tag in _TABLE_KINDS:
                tables.append(_table(label, element, data_file))
    return files, arrays, tables


def _data_file(label: _Label, area: etree._Element, *, role: _Role) -> _DataFile:
    file = area.find(f"{_PDS}File")
    if file is None:
        raise label.reject(area, "File", "missing (rule: a file area names its file)")
    name = _safe_file_name(label, file)
    declared = _optional_integer(label, file, "file_size")
    md5 = _text(file, f"{_PDS}md5_checksum")
    actual = _actual_size(label, file, name)
    if declared is not None and actual is not None and declared != actual:
        raise label.reject(
            file,
            "file_size",
            f"{name} has {actual} bytes, the label declares {declared} "
            "(rule: a data file has the size its label declares)",
        )
    size = declared if declared is not None else actual
    record = ProductFile(name=name, role=role, size=size, md5=md5.lower() if md5 else None)
    return _DataFile(record, actual)


def _safe_file_name(label: _Label, file: etree._Element) -> str:
    """``file_name`` when it is a bare PDS4 file name (R11), else a rejection naming it."""
    found = file.find(f"{_PDS}file_name")
    raw = found.text if found is not None and found.text is not None else ""
    name = raw.strip()
    if not _FILE_NAME.fullmatch(name) or name.strip(".") == "":
        raise label.reject(
            file,
            "file_name",
            f"{raw!r} is not a bare file name (rule: file names use only "
            "A-Z a-z 0-9 . _ -, start with a letter or digit, and never name another folder)",
        )
    return name


def _actual_size(label: _Label, file: etree._Element, name: str) -> int | None:
    """The data file's size when it lies beside the label, None when it is absent."""
    folder = label.path.parent.resolve()
    path = (folder / name).resolve()
    if not path.is_relative_to(folder) or path.parent != folder:
        raise label.reject(
            file,
            "file_name",
            f"{name!r} resolves outside the label's folder "
            "(rule: data files lie beside their label)",
        )
    if not path.exists():
        return None
    if not path.is_file():
        raise label.reject(file, "file_name", f"{name!r} is not a regular file")
    return path.stat().st_size


def _array(label: _Label, element: etree._Element, data_file: _DataFile) -> ArrayLayout:
    where = label.where(element)
    order = _text(element, f"{_PDS}axis_index_order")
    if order is not None and order != "Last Index Fastest":
        raise label.reject(
            element, "axis_index_order", f"{order!r} (rule: PDS4 arrays are 'Last Index Fastest')"
        )
    axes = sorted(
        element.iterfind(f"{_PDS}Axis_Array"),
        key=lambda axis: _integer(label, axis, "sequence_number", minimum=1),
    )
    declared_axes = _integer(label, element, "axes", minimum=1)
    if not axes or len(axes) != declared_axes:
        raise label.reject(
            element,
            "axes",
            f"declares {declared_axes} axes, {len(axes)} Axis_Array given "
            "(rule: one Axis_Array per axis)",
        )
    values = element.find(f"{_PDS}Element_Array")
    if values is None:
        raise label.reject(element, "Element_Array", "missing (rule: it is required)")
    dtype, byte_order = _data_type(label, values)
    scale = _optional_number(label, values, f"{_PDS}scaling_factor")
    offset = _optional_number(label, values, f"{_PDS}value_offset") or 0.0
    # LOLA's value_offset turns heights into radii: keep heights, record the radius apart.
    radius_offset = offset if math.isclose(offset, MOON_RADIUS_M) else None
    layout = ArrayLayout(
        name=_text(element, f"{_PDS}local_identifier") or _text(element, f"{_PDS}name"),
        file=data_file.record.name,
        offset_bytes=_integer(label, element, "offset", minimum=0),
        shape=tuple(_integer(label, axis, "elements", minimum=1) for axis in axes),
        axes=tuple(
            (_text(axis, f"{_PDS}axis_name") or f"axis_{i}").lower() for i, axis in enumerate(axes)
        ),
        dtype=dtype,
        byte_order=byte_order,
        scale=1.0 if scale is None else scale,
        offset=0.0 if radius_offset is not None else offset,
        nodata=_nodata(label, element, dtype=dtype),
        unit=_text(values, f"{_PDS}unit"),
        radius_offset_m=radius_offset,
    )
    # Before anything touches the data: it must lie inside its file and under the limit.
    known_size = (
        data_file.actual_size if data_file.actual_size is not None else data_file.record.size
    )
    # No size known (file absent, none declared): only the byte limit can be checked.
    check_array_fits(
        layout, file_size=sys.maxsize if known_size is None else known_size, where=where
    )
    return layout


def _data_type(label: _Label, values: etree._Element) -> tuple[str, ByteOrder]:
    name = _text(values, f"{_PDS}data_type") or ""
    if name not in _DATA_TYPES:
        raise label.reject(values, "data_type", f"{name!r} is not a PDS4 array data type")
    return _DATA_TYPES[name]


def _nodata(label: _Label, array: etree._Element, *, dtype: str) -> float | None:
    """``missing_constant`` (else ``invalid_constant``), in stored units.

    PDS4 writes float constants either as decimals or as ``0x`` bit patterns (LROC's
    ``0xFF7FFFFB``); a bit pattern is read as the array's own type.
    """
    constants = array.find(f"{_PDS}Special_Constants")
    if constants is None:
        return None
    found = constants.find(f"{_PDS}missing_constant")
    if found is None:
        found = constants.find(f"{_PDS}invalid_constant")
    if found is None:
        return None
    text = (found.text or "").strip()
    if _HEX.fullmatch(text):
        return _from_bit_pattern(label, found, int(text, 16), dtype=dtype)
    return _number(label, found)


def _from_bit_pattern(label: _Label, element: etree._Element, bits: int, *, dtype: str) -> float:
    layout = ArrayLayout(
        file="x", offset_bytes=0, shape=(1,), axes=("x",), dtype=dtype, byte_order="big"
    )
    numpy_type = numpy_dtype(layout, where=label.where(element))
    if bits >= 1 << (8 * numpy_type.itemsize):
        raise label.reject(
            element, None, f"{hex(bits)} does not fit a {dtype} (rule: constants fit the data type)"
        )
    raw = bits.to_bytes(numpy_type.itemsize, "big")
    if numpy_type.kind == "f":
        (value,) = struct.unpack(">f" if numpy_type.itemsize == 4 else ">d", raw)
        return float(value)
    return float(int.from_bytes(raw, "big", signed=numpy_type.kind == "i"))


def _table(label: _Label, element: etree._Element, data_file: _DataFile) -> TableLayout:
    kind, record_tag = _TABLE_KINDS[etree.QName(element).localname]
    record_bytes = None
    if record_tag is not None:
        record = element.find(f"{_PDS}{record_tag}")
        if record is None:
            raise label.reject(element, record_tag, "missing (rule: it is required)")
        record_bytes = _integer(label, record, "record_length", minimum=1)
    layout = TableLayout(
        name=_text(element, f"{_PDS}local_identifier") or _text(element, f"{_PDS}name"),
        file=data_file.record.name,
        kind=kind,
        offset_bytes=_integer(label, element, "offset", minimum=0),
        records=_integer(label, element, "records", minimum=0),
        record_bytes=record_bytes,
        fields=tuple(_text(field, f"{_PDS}name") or "" for field in element.iter(*_FIELD_TAGS)),
    )
    known_size = (
        data_file.actual_size if data_file.actual_size is not None else data_file.record.size
    )
    end = layout.offset_bytes + layout.records * (layout.record_bytes or 0)
    if known_size is not None and end > known_size:
        raise label.reject(
            element,
            None,
            f"table ends at byte {end} but {layout.file} has {known_size} bytes "
            "(rule: a declared table must lie inside its file)",
        )
    return layout


# --- map projection ---------------------------------------------------------------------


def _georeference(
    label: _Label, arrays: list[ArrayLayout]
) -> tuple[CrsInfo | None, Transform | None, float | None, Footprint | None]:
    cartography = label.root.find(f".//{_CART}Cartography")
    if cartography is None:
        return None, None, None, None
    reference = cartography.find(f"{_CART}Spatial_Reference_Information")
    projection = cartography.find(f".//{_CART}Map_Projection")
    if reference is None:
        return None, None, None, _bounding_footprint(label, cartography)
    if projection is None:
        raise label.reject(
            reference,
            "cart:Map_Projection",
            "missing (rule: supported georeferencing is a "
            "cart:Equirectangular or cart:Polar_Stereographic map projection)",
        )
    crs, name = _projected_crs(label, reference, projection)
    transform = _transform(label, reference)
    footprint = _grid_footprint(label, crs, transform, _mapped_array(cartography, arrays))
    if footprint is None:
        footprint = _bounding_footprint(label, cartography)
    radius = crs.ellipsoid.semi_major_metre if crs.ellipsoid else MOON_RADIUS_M
    info = CrsInfo(code=iau_code(crs), wkt2=crs.to_wkt(), radius_m=radius, projection=name)
    return info, transform, transform[0], footprint


def _projected_crs(
    label: _Label, reference: etree._Element, projection: etree._Element
) -> tuple[pyproj.CRS, str]:
    geographic = _geographic_crs(label, reference)
    equirectangular = projection.find(f"{_CART}Equirectangular")
    polar = projection.find(f"{_CART}Polar_Stereographic")
    conversion: (
        EquidistantCylindricalConversion
        | PolarStereographicAConversion
        | PolarStereographicBConversion
    )
    if equirectangular is not None:
        conversion, name = _equirectangular(label, equirectangular), "Equirectangular"
    elif polar is not None:
        conversion, name = _polar_stereographic(label, polar), "Polar Stereographic"
    else:
        given = _text(projection, f"{_CART}map_projection_name")
        raise label.reject(
            projection,
            None,
            f"projection {given!r} (rule: supported map projections are "
            "cart:Equirectangular and cart:Polar_Stereographic)",
        )
    try:
        crs = ProjectedCRS(conversion, name=f"{name} {geographic.name}", geodetic_crs=geographic)
    except pyproj.exceptions.CRSError as exc:
        raise label.reject(projection, None, f"no valid CRS from its parameters ({exc})") from None
    return assert_lunar(crs, where=label.where(reference, "cart:Geodetic_Model")), name


def _geographic_crs(label: _Label, reference: etree._Element) -> GeographicCRS:
    model = reference.find(f".//{_CART}Geodetic_Model")
    if model is None:
        raise label.reject(reference, "cart:Geodetic_Model", "missing (rule: it is required)")
    direction = (_text(model, f"{_CART}longitude_direction") or "Positive East").lower()
    if direction != "positive east":
        raise label.reject(
            model,
            "cart:longitude_direction",
            f"{direction!r} (rule: lunar longitudes are positive east)",
        )
    a = _measure(label, model, "a_axis_radius", _LENGTH_M)
    c = _measure(label, model, "c_axis_radius", _LENGTH_M, default=a)
    if not (a > 0 and c > 0):
        raise label.reject(model, "cart:a_axis_radius", "radii must be positive")
    body = _text(model, f"{_CART}spheroid_name") or "Moon"
    try:
        ellipsoid = CustomEllipsoid(name=body, semi_major_axis=a, semi_minor_axis=c)
        return GeographicCRS(name=body, datum=CustomDatum(name=f"D_{body}", ellipsoid=ellipsoid))
    except pyproj.exceptions.CRSError as exc:
        raise label.reject(model, None, f"no valid ellipsoid ({exc})") from None


def _equirectangular(label: _Label, params: etree._Element) -> EquidistantCylindricalConversion:
    return EquidistantCylindricalConversion(
        latitude_first_parallel=_measure(
            label, params, "standard_parallel_1", _ANGLE_DEG, default=0.0
        ),
        latitude_natural_origin=_measure(
            label, params, "latitude_of_projection_origin", _ANGLE_DEG, default=0.0
        ),
        longitude_natural_origin=_measure(
            label, params, "longitude_of_central_meridian", _ANGLE_DEG
        ),
        false_easting=_measure(label, params, "false_easting", _LENGTH_M, default=0.0),
        false_northing=_measure(label, params, "false_northing", _LENGTH_M, default=0.0),
    )


def _polar_stereographic(
    label: _Label, params: etree._Element
) -> PolarStereographicAConversion | PolarStereographicBConversion:
    """Variant A at a pole, else variant B true to scale at the label's latitude (as GDAL).

    ISIS (and so ShadowCam) writes the latitude of true scale as the projection origin, with
    a scale factor of 1: LUNAR-DATA.md §2.1.
    """
    lon_tag = "longitude_of_central_meridian"
    if params.find(f"{_CART}{lon_tag}") is None:
        lon_tag = "straight_vertical_longitude_from_pole"
    lon_0 = _measure(label, params, lon_tag, _ANGLE_DEG)
    lat_0 = _measure(label, params, "latitude_of_projection_origin", _ANGLE_DEG)
    scale = _optional_number(label, params, f"{_CART}scale_factor_at_projection_origin")
    parallel = params.find(f"{_CART}standard_parallel_1")
    false_origin = {
        "false_easting": _measure(label, params, "false_easting", _LENGTH_M, default=0.0),
        "false_northing": _measure(label, params, "false_northing", _LENGTH_M, default=0.0),
    }
    if parallel is not None:
        lat_ts = _measure(label, params, "standard_parallel_1", _ANGLE_DEG)
        return PolarStereographicBConversion(lat_ts, lon_0, **false_origin)
    if math.isclose(abs(lat_0), 90.0):
        return PolarStereographicAConversion(
            math.copysign(90.0, lat_0), lon_0, scale or 1.0, **false_origin
        )
    if scale is None or math.isclose(scale, 1.0):
        return PolarStereographicBConversion(lat_0, lon_0, **false_origin)
    raise label.reject(
        params,
        "cart:scale_factor_at_projection_origin",
        f"{scale} with an origin at {lat_0}° "
        "(rule: a polar stereographic origin off the pole needs a scale factor of 1)",
    )


def _transform(label: _Label, reference: etree._Element) -> Transform:
    """The affine transform of the upper-left pixel corner, as GDAL's PDS4 driver reads it."""
    corner = reference.find(f".//{_CART}Geo_Transformation")
    pixels = reference.find(f".//{_CART}Coordinate_Representation")
    if corner is None or pixels is None:
        missing = "cart:Geo_Transformation" if corner is None else "cart:Coordinate_Representation"
        raise label.reject(reference, missing, "missing (rule: a map projection needs its grid)")
    x_res = _measure(label, pixels, "pixel_resolution_x", _RESOLUTION_M)
    y_res = _measure(label, pixels, "pixel_resolution_y", _RESOLUTION_M)
    if not (x_res > 0 and y_res > 0):
        raise label.reject(pixels, "cart:pixel_resolution_x", "resolutions must be positive")
    x_0 = _measure(label, corner, "upperleft_corner_x", _LENGTH_M)
    y_0 = _measure(label, corner, "upperleft_corner_y", _LENGTH_M)
    return (x_res, 0.0, x_0, 0.0, -y_res, y_0)


def _mapped_array(cartography: etree._Element, arrays: list[ArrayLayout]) -> ArrayLayout | None:
    """The array the cartography describes: the one it references, else the only one."""
    reference = _text(
        cartography, f"{_PDS}Local_Internal_Reference/{_PDS}local_identifier_reference"
    )
    named = [a for a in arrays if reference is not None and a.name == reference]
    if named:
        return named[0]
    return arrays[0] if len(arrays) == 1 else None


def _grid_footprint(
    label: _Label, crs: pyproj.CRS, transform: Transform, array: ArrayLayout | None
) -> Footprint | None:
    if array is None or len(array.shape) < 2:
        return None
    sizes = dict(zip(array.axes, array.shape, strict=True))
    width = sizes.get("sample", array.shape[-1])
    height = sizes.get("line", array.shape[-2])
    x_res, _, left, _, y_step, top = transform
    bounds: BBox = (left, top + height * y_step, left + width * x_res, top)
    try:
        bbox, geometry = lunar_footprint(crs, bounds)
    except (pyproj.exceptions.ProjError, ValueError) as exc:
        if isinstance(exc, ProductRejected):
            raise
        raise ProductRejected(
            f"{label.path.name}: no lunar footprint for {bounds} ({exc})"
        ) from None
    return Footprint(bbox=bbox, geometry=geometry)


def _bounding_footprint(label: _Label, cartography: etree._Element) -> Footprint | None:
    """The footprint from ``cart:Bounding_Coordinates`` (for products without a grid)."""
    box = cartography.find(f".//{_CART}Bounding_Coordinates")
    if box is None:
        return None
    west, east, north, south = (
        _measure(label, box, f"{side}_bounding_coordinate", _ANGLE_DEG)
        for side in ("west", "east", "north", "south")
    )
    if not (-90.0 <= south <= north <= 90.0):
        raise label.reject(
            box, None, f"latitudes {south}..{north} (rule: -90 <= south <= north <= 90)"
        )
    if east - west >= 360.0:
        return _lon_lat_footprint(-180.0, south, 180.0, north)
    west, east = _wrap(west), _wrap(east)
    west = -180.0 if west == 180.0 else west
    east = 180.0 if east == -180.0 else east
    return _lon_lat_footprint(west, south, east, north)


def _wrap(lon: float) -> float:
    wrapped = (lon + 180.0) % 360.0 - 180.0
    return 180.0 if wrapped == -180.0 and lon > 0 else wrapped


def _lon_lat_footprint(west: float, south: float, east: float, north: float) -> Footprint:
    """A lon/lat box; ``west > east`` crosses ±180° and becomes two polygons."""

    def ring(w: float, e: float) -> list[list[list[float]]]:
        return [[[w, south], [e, south], [e, north], [w, north], [w, south]]]

    if west <= east:
        geometry = {"type": "Polygon", "coordinates": ring(west, east)}
    else:
        geometry = {"type": "MultiPolygon", "coordinates": [ring(west, 180.0), ring(-180.0, east)]}
    return Footprint(bbox=(west, south, east, north), geometry=geometry)

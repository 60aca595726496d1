"""Partner sample tables: read, validate row by row, normalise units, write (Geo)Parquet.

Readers turn CSV, XLSX, XLS and JSON tables (and the MoonDB data-submission template) into
:class:`SourceRow` s: the cells as text, with the file, sheet and spreadsheet row they came
from. :func:`validate_specimens` and :func:`validate_analyses` turn every row into either a
contract record (:class:`~lunarchive.schemas.samples.Specimen`, ``Analysis``) or one or more
:class:`~lunarchive.schemas.samples.RowError` s naming file, row, column, value and rule; no row
is ever dropped. A problem with a whole table (unreadable file, unknown or repeated column)
raises :class:`ProductRejected`: quarantine the file.

Analyses are normalised to their analyte's canonical unit (oxides wt%, traces ppm or ppb, ages
Ma) with exact decimal arithmetic; the partner's value and unit are kept beside. Longitudes
given as 0..360 become −180..180. The oxides of one complete analysis must add up to about
100 wt% (:func:`check_oxide_totals`: a warning outside the window, a refusal beyond 105 wt%).

The drop-level logic is here too, as pure functions the flow wires to the store: a whole
drop validated (:func:`validate_drop`), rows merged into a table with the later drop's row
winning (:func:`merge_rows`), the report and its spreadsheet (:func:`drop_report`,
:func:`report_csv`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pydantic import ValidationError

from lunarchive.processing.crs import assert_lunar, moon_geographic
from lunarchive.schemas.errors import ProductRejected
from lunarchive.schemas.parquet import read_parquet_bytes
from lunarchive.schemas.samples import (
    MOON_FRAME,
    SAMPLE_ID_PATTERN,
    AnalysedMaterial,
    Analysis,
    ClassificationScheme,
    CollectionMethod,
    Curator,
    Detection,
    DropManifest,
    IsAverage,
    MassKind,
    MissionName,
    RimCore,
    RowError,
    RowWarning,
    SampleLevel,
    Specimen,
    SpecimenMaterial,
    Technique,
    UncertaintyType,
    literal_values,
    mission_of_sample_id,
    parent_of_sample_id,
)
from lunarchive.schemas.vocabularies import (
    analyte_aliases,
    analytes,
    collection_methods,
    materials,
    techniques,
    unit_synonyms,
    units,
)

__all__ = [
    "ANALYSIS_COLUMNS",
    "MAX_TABLE_BYTES",
    "MICROBEAM_TECHNIQUES",
    "OXIDE_TOTAL_BULK",
    "OXIDE_TOTAL_IMPOSSIBLE",
    "OXIDE_TOTAL_MICROBEAM",
    "REPORT_COLUMNS",
    "SPECIMEN_COLUMNS",
    "OxideTotal",
    "SourceRow",
    "ValidatedDrop",
    "analyses_from_parquet",
    "analyses_parquet_bytes",
    "analyses_to_parquet",
    "check_drop_files",
    "check_oxide_totals",
    "drop_ranks",
    "drop_report",
    "merge_drop_entries",
    "merge_rows",
    "normalise_value",
    "oxide_totals",
    "quarantine_document",
    "read_csv_rows",
    "read_drop_manifest",
    "read_json_rows",
    "read_moondb_submission",
    "read_table",
    "read_xls_rows",
    "read_xlsx_rows",
    "rejected_rows",
    "report_csv",
    "specimens_from_geoparquet",
    "specimens_geoparquet_bytes",
    "specimens_to_geoparquet",
    "table_files",
    "validate_analyses",
    "validate_drop",
    "validate_specimens",
]

MAX_TABLE_BYTES: Final = 64 * 1024 * 1024  # a partner table larger than this is refused unread
AGE_OF_SOLAR_SYSTEM_MA: Final = Decimal("4568")
_SAMPLE_ID_RE: Final = re.compile(SAMPLE_ID_PATTERN)


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One row of a partner table: its cells as text ('' when empty), keyed by column name.

    ``row`` counts as a spreadsheet does (header = row 1); JSON files count records from 1
    (``record`` is then True). ``labels`` names a key's cell for messages when it differs
    from the key (the MoonDB template spreads an analysis over several rows and columns).
    """

    file: str
    row: int
    cells: Mapping[str, str]
    sheet: str | None = None
    record: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)

    def label(self, key: str) -> str:
        return self.labels.get(key, key)


# ---------------------------------------------------------------------------------------------
# Readers


def read_table(data: bytes, *, file: str, sheet: str | None = None) -> list[SourceRow]:
    """Read a CSV, XLSX, XLS or JSON table, chosen by the file name's suffix."""
    suffix = Path(file).suffix.lower()
    if suffix == ".csv":
        return read_csv_rows(data, file=file)
    if suffix == ".xlsx":
        return read_xlsx_rows(data, file=file, sheet=sheet)
    if suffix == ".xls":
        return read_xls_rows(data, file=file, sheet=sheet)
    if suffix == ".json":
        return read_json_rows(data, file=file)
    raise ProductRejected(
        f"{file}: {suffix or 'no suffix'} is not a table we read (csv, xlsx, xls, json)"
    )


def _check_size(data: bytes, file: str) -> None:
    if len(data) > MAX_TABLE_BYTES:
        raise ProductRejected(
            f"{file}: {len(data)} bytes, more than the {MAX_TABLE_BYTES} bytes a table may have"
        )


def read_csv_rows(data: bytes, *, file: str) -> list[SourceRow]:
    """A UTF-8 CSV with a header row; blank lines are skipped, rows keep their number."""
    _check_size(data, file)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ProductRejected(f"{file}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        grid = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise ProductRejected(f"{file}: not a readable CSV ({exc})") from None
    return _rows_from_grid(grid, file=file, sheet=None, first_row=1)


def read_xlsx_rows(data: bytes, *, file: str, sheet: str | None = None) -> list[SourceRow]:
    """One sheet (the first unless named) of an Excel 2007+ workbook."""
    import openpyxl  # type: ignore[import-untyped]

    _check_size(data, file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # openpyxl warns about styles and extensions it skips
        try:
            book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        except Exception as exc:  # noqa: BLE001 - openpyxl raises many kinds for a bad file
            raise ProductRejected(f"{file}: not a readable XLSX workbook ({exc})") from None
        try:
            names = list(book.sheetnames)
            name = _pick_sheet(names, sheet, file)
            grid = [
                [_text(value) for value in row] for row in book[name].iter_rows(values_only=True)
            ]
        finally:
            book.close()
    return _rows_from_grid(grid, file=file, sheet=name, first_row=1)


def read_xls_rows(data: bytes, *, file: str, sheet: str | None = None) -> list[SourceRow]:
    """One sheet (the first unless named) of an Excel 97 workbook (MoonDB's format)."""
    book = _open_xls(data, file)
    name = _pick_sheet(book.sheet_names(), sheet, file)
    return _rows_from_grid(_xls_grid(book, name), file=file, sheet=name, first_row=1)


def read_json_rows(data: bytes, *, file: str) -> list[SourceRow]:
    """A JSON list of objects (or an object holding one under ``rows``, ``specimens`` or
    ``analyses``). Nested objects flatten to ``outer_inner`` columns; lists of strings join
    with ``; ``."""
    _check_size(data, file)
    try:
        document = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProductRejected(f"{file}: not readable JSON ({exc})") from None
    if isinstance(document, dict):
        lists = [document[key] for key in ("rows", "specimens", "analyses") if key in document]
        document = lists[0] if len(lists) == 1 else None
    if not isinstance(document, list):
        raise ProductRejected(
            f"{file}: expected a list of records (or an object with one list under "
            "'rows', 'specimens' or 'analyses')"
        )
    rows = []
    for number, record in enumerate(document, start=1):
        if not isinstance(record, dict):
            raise ProductRejected(f"{file}, record {number}: not an object")
        rows.append(SourceRow(file=file, row=number, cells=_flatten(record), record=True))
    return rows


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    cells: dict[str, str] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            cells.update(_flatten(value, prefix=f"{name}_"))
        elif isinstance(value, list):
            cells[name] = "; ".join(_text(item) for item in value)
        else:
            cells[name] = _text(value)
    return cells


def _text(value: object) -> str:
    """A cell as text: numbers without a spurious '.0', dates as ISO 8601."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, datetime):
        return (
            value.date().isoformat() if value.time() == datetime.min.time() else value.isoformat()
        )
    if isinstance(value, date):
        return value.isoformat()
    return str(value).strip()


def _pick_sheet(names: Sequence[str], sheet: str | None, file: str) -> str:
    if not names:
        raise ProductRejected(f"{file}: the workbook has no sheets")
    if sheet is None:
        return names[0]
    if sheet not in names:
        raise ProductRejected(f"{file}: no sheet {sheet!r} (sheets: {', '.join(names)})")
    return sheet


def _rows_from_grid(
    grid: Sequence[Sequence[str]], *, file: str, sheet: str | None, first_row: int
) -> list[SourceRow]:
    """Header = the first non-blank row; later blank rows are skipped (they hold nothing)."""
    numbered = [(number, row) for number, row in enumerate(grid, start=first_row) if any(row)]
    if not numbered:
        return []
    header_row, header = numbered[0]
    columns = [cell.strip() for cell in header]
    while columns and not columns[-1]:
        columns.pop()
    where = f"{file} [{sheet}]" if sheet else file
    for index, name in enumerate(columns):
        if not name:
            raise ProductRejected(f"{where}, row {header_row}: column {index + 1} has no name")
        if columns.index(name) != index:
            raise ProductRejected(f"{where}, row {header_row}: column {name!r} appears twice")
    rows = []
    for number, row in numbered[1:]:
        cells = {name: (row[i].strip() if i < len(row) else "") for i, name in enumerate(columns)}
        extra = [cell for cell in row[len(columns) :] if cell.strip()]
        if extra:
            cells[_EXTRA] = ", ".join(extra)
        rows.append(SourceRow(file=file, row=number, cells=cells, sheet=sheet))
    return rows


_EXTRA: Final = "(cells beyond the header)"


def _open_xls(data: bytes, file: str) -> Any:
    import xlrd  # type: ignore[import-untyped]

    _check_size(data, file)
    try:
        book = xlrd.open_workbook(file_contents=data, on_demand=False)
    except Exception as exc:  # noqa: BLE001 - xlrd raises many kinds for a bad file
        raise ProductRejected(f"{file}: not a readable XLS workbook ({exc})") from None
    return book


def _xls_grid(book: Any, name: str) -> list[list[str]]:
    import xlrd

    sheet = book.sheet_by_name(name)
    grid: list[list[str]] = []
    for r in range(sheet.nrows):
        row = []
        for cell in sheet.row(r):
            if cell.ctype == xlrd.XL_CELL_DATE:
                row.append(_text(xlrd.xldate_as_datetime(cell.value, book.datemode)))
            elif cell.ctype == xlrd.XL_CELL_BOOLEAN:
                row.append(_text(bool(cell.value)))
            elif cell.ctype == xlrd.XL_CELL_ERROR:
                row.append(xlrd.error_text_from_code.get(cell.value, "#ERROR"))
            else:
                row.append(_text(cell.value))
        grid.append(row)
    return grid


# The MoonDB data-submission template: analyte names in row 3, method codes in row 4, units in
# row 5, the column headers in the row whose first cell is "ANALYSES NO.", data two rows later.
_MOONDB_DATA_SHEETS: Final = ("ROCKS", "MINERALS", "INCLUSIONS")
_MOONDB_COLUMNS: Final = {
    "ANALYSES NO.": "analysis_no",
    "TAB_IN_REF": "table_in_ref",
    "SAMPLE NAME": "sample_id",
    "ANALYSIS COMMENT": "comment",
    "NUMBER OF REPLICATES": "replicates",
    "CALC_AVGE": "is_average",
    "MATERIAL": "material_analyzed",
    "SPOT_ID": "spot_id",
    "MINERAL": "mineral",
    "GRAIN": "grain",
    "RIM/CORE": "rim_core",
    "INCLUSION MINERAL": "mineral",
}
_MOONDB_SHEET_MATERIAL: Final = {"MINERALS": "mineral", "INCLUSIONS": "inclusion"}


def read_moondb_submission(data: bytes, *, file: str) -> list[SourceRow]:
    """The analyses of a MoonDB submission workbook (XLS), one row per analysis and analyte.

    Sheets ROCKS, MINERALS and INCLUSIONS hold one analysis per row and one analyte per
    column; cells read ``value`` or ``value, uncertainty``. Each non-empty cell becomes a row
    in the long form of ``moondb_0623_rocks_long.csv``, numbered by its spreadsheet row, with
    technique and lab from sheet METHODS and table titles from TABLE_TITLES.
    """
    book = _open_xls(data, file)
    names = book.sheet_names()
    if "ROCKS" not in names or "METHODS" not in names:
        raise ProductRejected(f"{file}: not a MoonDB submission (no ROCKS or METHODS sheet)")
    methods = _moondb_methods(_xls_grid(book, "METHODS"))
    titles = _moondb_titles(_xls_grid(book, "TABLE_TITLES")) if "TABLE_TITLES" in names else {}
    rows: list[SourceRow] = []
    for sheet in _MOONDB_DATA_SHEETS:
        if sheet in names:
            grid = _xls_grid(book, sheet)
            rows.extend(
                _moondb_sheet_rows(grid, file=file, sheet=sheet, methods=methods, titles=titles)
            )
    return rows


def _moondb_methods(grid: Sequence[Sequence[str]]) -> dict[str, tuple[str, str]]:
    methods: dict[str, tuple[str, str]] = {}
    for row in grid[1:]:
        cells = [*row, "", "", "", ""]
        if cells[0] == "METHOD RELATED INFORMATION":
            break
        if cells[1] and cells[2]:
            methods[cells[1]] = (cells[2], cells[3])
    return methods


def _moondb_titles(grid: Sequence[Sequence[str]]) -> dict[str, str]:
    return {row[0]: row[1] for row in grid[1:] if len(row) > 1 and row[0] and row[1]}


def _column_letter(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def _moondb_sheet_rows(
    grid: Sequence[Sequence[str]],
    *,
    file: str,
    sheet: str,
    methods: Mapping[str, tuple[str, str]],
    titles: Mapping[str, str],
) -> Iterator[SourceRow]:
    header_at = next((i for i, row in enumerate(grid) if row and row[0] == "ANALYSES NO."), None)
    if header_at is None or len(grid) < 5:
        raise ProductRejected(f"{file} [{sheet}]: no 'ANALYSES NO.' header row")
    width = max(len(row) for row in grid)
    pad = [[*row, *[""] * (width - len(row))] for row in grid]
    header, analyte_row, method_row, unit_row = pad[header_at], pad[2], pad[3], pad[4]
    annotations = {
        i: _MOONDB_COLUMNS[name] for i, name in enumerate(header) if name in _MOONDB_COLUMNS
    }
    analyte_columns = []
    for i, name in enumerate(analyte_row):
        if name == "-1":
            break
        if name and i not in annotations:
            analyte_columns.append(i)
    for r in range(header_at + 2, len(pad)):
        cells = pad[r]
        sample = cells[next((i for i, key in annotations.items() if key == "sample_id"), 2)]
        if sample == "-1" and not any(cells[i] for i in analyte_columns):
            continue
        base = {key: cells[i] for i, key in annotations.items()}
        base["material_analyzed"] = base.get("material_analyzed") or _MOONDB_SHEET_MATERIAL.get(
            sheet, ""
        )
        base["table_title"] = titles.get(base.get("table_in_ref", ""), "")
        labels = {
            key: f"{header[i]} (column {_column_letter(i)})" for i, key in annotations.items()
        }
        for i in analyte_columns:
            if not cells[i]:
                continue
            letter = _column_letter(i)
            code = method_row[i]
            technique, lab = methods.get(code, ("", ""))
            long = {
                **base,
                "method_code": code,
                "technique": technique,
                "lab": lab,
                "analyte": analyte_row[i],
                "value": cells[i],
                "unit": unit_row[i],
            }
            yield SourceRow(
                file=file,
                row=r + 1,
                cells=long,
                sheet=sheet,
                labels={
                    **labels,
                    "value": f"{analyte_row[i]} (column {letter})",
                    "analyte": f"analyte name (row 3, column {letter})",
                    "unit": f"UNIT (row 5, column {letter})",
                    "method_code": f"METHOD_CODE (row 4, column {letter})",
                    "technique": f"TECHNIQUE of method {code} (sheet METHODS)",
                },
            )


# ---------------------------------------------------------------------------------------------
# Validation: cells to typed values, each failure a rule with a sentence


class _Bad(Exception):
    """A cell breaks a rule; ``says`` completes "row 14, column lat_deg: ..."."""

    def __init__(self, rule: str, says: str) -> None:
        super().__init__(says)
        self.rule = rule
        self.says = says


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9%#/]", "", text.lower())


def _choose(text: str, choices: Mapping[str, str], rule: str, what: str) -> str:
    found = choices.get(_key(text))
    if found is None:
        canonical = sorted(set(choices.values()))
        raise _Bad(rule, f"{text!r} is not a {what} we know (use one of: {', '.join(canonical)})")
    return found


def _choices(
    canonical: Iterable[str], codes: Mapping[str, Iterable[str]] | None = None
) -> dict[str, str]:
    table = {_key(name): name for name in canonical}
    for name, aliases in (codes or {}).items():
        table.update({_key(alias): name for alias in aliases})
    return table


def _decimal(text: str) -> Decimal:
    if re.fullmatch(r"[-+]?\d+,\d+", text):
        raise _Bad(
            "number",
            f"{text!r} is not a number (write decimals with a point: {text.replace(',', '.')})",
        )
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise _Bad("number", f"{text!r} is not a number") from None
    if not value.is_finite() or (value and value.adjusted() > 300):
        raise _Bad("number", f"{text!r} is not a number we can hold")
    return value


def _number(text: str) -> float:
    return float(_decimal(text))


def _in_range(
    rule: str, what: str, low: float | None, high: float | None, unit: str = ""
) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = _number(text)
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = (
                f"between {low:g} and {high:g}{unit}"
                if low is not None and high is not None
                else f"{low:g}{unit} or more"
                if low is not None
                else f"{high:g}{unit} or less"
            )
            raise _Bad(rule, f"{text} is not {what} (must be {bounds})")
        return value

    return parse


def _longitude(text: str) -> float:
    value = _decimal(text)
    if not Decimal(-180) <= value <= Decimal(360):
        raise _Bad(
            "longitude_range",
            f"{text} is not a longitude (must be between -180 and 180, or 0 and 360)",
        )
    return float(value - 360 if value > 180 else value)


def _sample_id(rule: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        normal = re.sub(r"\s*,\s*", ",", text)
        if not _SAMPLE_ID_RE.fullmatch(normal):
            raise _Bad(
                rule,
                f"{text!r} is not a sample number we know (like 70017, 15415,177, 60025,59B, "
                "24170, L1608 or CE5C0400YJFM00505)",
            )
        return normal

    return parse


def _date(text: str) -> date:
    try:
        return date.fromisoformat(
            text[:10] if re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z?", text) else text
        )
    except ValueError:
        raise _Bad(
            "date_format", f"{text!r} is not a date (write it as YYYY-MM-DD, e.g. 2014-12-03)"
        ) from None


def _year(text: str) -> int:
    if not re.fullmatch(r"\d{4}", text) or not 1800 <= int(text) <= date.today().year:
        raise _Bad(
            "year_format",
            f"{text!r} is not a year we can accept (four digits, 1800 to {date.today().year})",
        )
    return int(text)


def _plain_text(text: str) -> str:
    if len(text) > 4000:
        raise _Bad("text_length", f"{len(text)} characters, more than the 4000 a cell may hold")
    return text


def _vocab(
    kind: Any, rule: str, what: str, codes: Mapping[str, Iterable[str]] | None = None
) -> Callable[[str], str]:
    table = _choices(literal_values(kind), codes)
    return lambda text: _choose(text, table, rule, what)


def _frame(text: str) -> str:
    if _key(text) != _key(MOON_FRAME):
        raise _Bad(
            "location_frame",
            f"{text!r} is not a frame we can place (give positions in {MOON_FRAME})",
        )
    return MOON_FRAME


def _references(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(";") if part.strip())


_MISSION_ALIASES: Final = {
    "Chang'e-5": ("CE-5", "Chang'e 5", "Change5"),
    "Chang'e-6": ("CE-6", "Chang'e 6"),
}


@dataclass(frozen=True)
class _Field:
    """A contract field: the columns that may carry it and how to read one cell."""

    name: str
    columns: tuple[str, ...]
    parse: Callable[[str], Any]


SPECIMEN_FIELDS: Final = (
    _Field(
        "sample_id",
        ("sample_id", "sample_num", "sample", "sample_name"),
        _sample_id("sample_id_format"),
    ),
    _Field("parent_id", ("parent_id", "parent"), _sample_id("parent_id_format")),
    _Field("level", ("level",), _vocab(SampleLevel, "level_vocabulary", "sample level")),
    _Field(
        "mission",
        ("mission",),
        _vocab(MissionName, "mission_vocabulary", "mission", _MISSION_ALIASES),
    ),
    _Field("curator", ("curator",), _vocab(Curator, "curator_vocabulary", "curator")),
    _Field("station", ("station", "lunar_station", "station_name"), _plain_text),
    _Field("landmark", ("landmark",), _plain_text),
    _Field(
        "lat_deg",
        ("lat_deg", "latitude", "location_lat_deg"),
        _in_range("latitude_range", "a latitude", -90, 90),
    ),
    _Field("lon_deg", ("lon_deg", "longitude", "location_lon_deg"), _longitude),
    _Field(
        "location_uncertainty_m",
        ("location_uncertainty_m", "uncertainty_m"),
        _in_range("uncertainty_range", "a position uncertainty", 0, None, " m"),
    ),
    _Field("location_frame", ("location_frame", "frame"), _frame),
    _Field(
        "collection_method",
        ("collection_method", "sampling_technique"),
        _vocab(
            CollectionMethod,
            "collection_method_vocabulary",
            "collection method",
            collection_methods(),
        ),
    ),
    _Field("collection_method_code", ("collection_method_code",), _plain_text),
    _Field("return_container", ("return_container",), _plain_text),
    _Field(
        "material",
        ("material",),
        _vocab(SpecimenMaterial, "material_vocabulary", "specimen material", materials("specimen")),
    ),
    _Field("classification", ("classification", "taxonimy", "taxonomy"), _plain_text),
    _Field(
        "classification_scheme",
        ("classification_scheme",),
        _vocab(ClassificationScheme, "classification_scheme_vocabulary", "classification scheme"),
    ),
    _Field(
        "mass_g",
        ("mass_g", "weight", "weight_g", "mass"),
        _in_range("mass_range", "a mass", 0, None, " g"),
    ),
    _Field("mass_kind", ("mass_kind",), _vocab(MassKind, "mass_kind_vocabulary", "kind of mass")),
    _Field(
        "depth_top_cm",
        ("depth_top_cm", "depth_cm_top"),
        _in_range("depth_range", "a depth", 0, None, " cm"),
    ),
    _Field(
        "depth_bottom_cm",
        ("depth_bottom_cm", "depth_cm_bottom"),
        _in_range("depth_range", "a depth", 0, None, " cm"),
    ),
    _Field(
        "pristinity_pct",
        ("pristinity_pct", "pristiny", "pristinity"),
        _in_range("pristinity_range", "a percentage", 0, 100),
    ),
    _Field("pristinity_date", ("pristinity_date", "pristiny_date"), _date),
    _Field("description", ("description",), _plain_text),
    _Field("comment", ("comment", "comments", "remarks"), _plain_text),
    _Field("references", ("references", "reference"), _references),
    _Field("found_year", ("found_year", "find_year", "year_found"), _year),
    _Field("found_date", ("found_date", "find_date", "recovered_date"), _date),
)


def _analyte(text: str) -> str:
    known = analytes()
    code = analyte_aliases().get(text, text)
    if code in known:
        return code
    near = [name for name in known if name.lower() == text.lower()]
    hint = (
        f"did you mean {near[0]}?"
        if near
        else "use element symbols like La, oxides like TiO2, ages like age_ArAr"
    )
    raise _Bad("analyte_vocabulary", f"{text!r} is not an analyte we know ({hint})")


def _unit(text: str) -> str:
    code = unit_synonyms().get(text, text)
    if code in units():
        return code
    raise _Bad(
        "unit_vocabulary", f"{text!r} is not a unit we know (use one of: {', '.join(units())})"
    )


def _integer(rule: str, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _decimal(text) if re.fullmatch(r"[-+]?\d+(\.0*)?", text) else None
        if value is None or value < 1:
            raise _Bad(rule, f"{text!r} is not {what} (must be a whole number, 1 or more)")
        return int(value)

    return parse


def _doi(text: str) -> str:
    doi = re.sub(r"^(?:https?://(?:dx\.)?doi\.org/|doi:)", "", text, flags=re.IGNORECASE)
    if not re.fullmatch(r"10\.\d{4,9}/\S+", doi):
        raise _Bad("doi_format", f"{text!r} is not a DOI (like 10.1016/j.gca.2019.01.001)")
    return doi


def _analysis_id(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:,\-]{0,127}", text):
        raise _Bad(
            "analysis_id_format",
            f"{text!r} is not an analysis id (letters, digits and _ . : , - only)",
        )
    return text


ANALYSIS_FIELDS: Final = (
    _Field("analysis_id", ("analysis_id",), _analysis_id),
    _Field("analysis_no", ("analysis_no", "analyses_no"), _plain_text),
    _Field("sample_id", ("sample_id", "specimen", "sample_name"), _sample_id("sample_id_format")),
    _Field(
        "parent_sample", ("sample", "parent_id", "generic_sample"), _sample_id("parent_id_format")
    ),
    _Field(
        "material_analyzed",
        ("material_analyzed", "material"),
        _vocab(AnalysedMaterial, "material_vocabulary", "analysed material", materials("analysed")),
    ),
    _Field("mineral", ("mineral",), _plain_text),
    _Field("grain", ("grain",), _plain_text),
    _Field("spot_id", ("spot_id",), _plain_text),
    _Field(
        "rim_core",
        ("rim_core",),
        _vocab(
            RimCore,
            "rim_core_vocabulary",
            "rim/core position",
            {"rim": ["R"], "core": ["C"], "intermediate": ["I"]},
        ),
    ),
    _Field(
        "technique",
        ("technique",),
        _vocab(Technique, "technique_vocabulary", "technique", techniques()),
    ),
    _Field("method_code", ("method_code",), _plain_text),
    _Field("lab", ("lab", "laboratory"), _plain_text),
    _Field("instrument", ("instrument",), _plain_text),
    _Field("analyte", ("analyte", "variable"), _analyte),
    _Field("value", ("value",), _plain_text),  # parsed with the unit in _analysis_dict
    _Field("unit", ("unit", "units"), _unit),
    _Field("uncertainty", ("uncertainty", "unc", "error"), _plain_text),
    _Field(
        "uncertainty_type",
        ("uncertainty_type",),
        _vocab(UncertaintyType, "uncertainty_type_vocabulary", "kind of uncertainty"),
    ),
    _Field(
        "detection",
        ("detection", "detection_flag"),
        _vocab(
            Detection,
            "detection_vocabulary",
            "detection flag",
            {"below_detection": ["bdl", "<", "below"]},
        ),
    ),
    _Field(
        "replicates",
        ("replicates", "number_of_replicates"),
        _integer("replicates_integer", "a number of replicates"),
    ),
    _Field(
        "is_average",
        ("is_average", "calc_avge"),
        _vocab(IsAverage, "is_average_vocabulary", "average flag"),
    ),
    _Field("comment", ("comment", "analysis_comment"), _plain_text),
    _Field("citation_id", ("citation_id", "citation"), _plain_text),
    _Field("doi", ("doi",), _doi),
    _Field("table_in_ref", ("table_in_ref",), _plain_text),
    _Field("table_title", ("table_title",), _plain_text),
    _Field("dataset", ("dataset",), _plain_text),
)

SPECIMEN_COLUMNS: Final = {f.name: f.columns for f in SPECIMEN_FIELDS}
ANALYSIS_COLUMNS: Final = {f.name: f.columns for f in ANALYSIS_FIELDS}


def _column_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def _resolve_columns(row: SourceRow, fields: Sequence[_Field], kind: str) -> dict[str, _Field]:
    """Column name -> field; a column no field takes, or two columns for one field, refuse
    the whole table: quarantine the file and say which column."""
    by_alias = {alias: f for f in fields for alias in f.columns}
    resolved: dict[str, _Field] = {}
    taken: dict[str, str] = {}
    where = f"{row.file} [{row.sheet}]" if row.sheet else row.file
    for column in row.cells:
        if column == _EXTRA:
            continue
        found = by_alias.get(_column_key(column))
        if found is None:
            raise ProductRejected(
                f"{where}: column {column!r} is not a {kind} column "
                f"(known: {', '.join(f.name for f in fields)})"
            )
        if found.name in taken:
            raise ProductRejected(
                f"{where}: columns {taken[found.name]!r} and {column!r} both give {found.name}"
            )
        taken[found.name] = column
        resolved[column] = found
    return resolved


@dataclass
class _RowReader:
    """Reads one source row into field values, collecting every broken rule."""

    row: SourceRow
    columns: dict[str, _Field]
    values: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)
    errors: list[RowError] = field(default_factory=list)

    def read(self) -> None:
        extra = self.row.cells.get(_EXTRA)
        if extra:
            self.fail(
                _EXTRA, extra, "extra_cells", "this row has more cells than the header has columns"
            )
        for column, spec in self.columns.items():
            text = self.row.cells[column]
            self.where[spec.name] = column
            if not text:
                continue
            self.raw[spec.name] = text
            try:
                self.values[spec.name] = spec.parse(text)
            except _Bad as bad:
                self.fail(column, text, bad.rule, bad.says)

    def fail(self, column: str, value: str | None, rule: str, says: str) -> None:
        unit = "record" if self.row.record else "row"
        label = self.row.label(column)
        self.errors.append(
            RowError(
                file=self.row.file,
                sheet=self.row.sheet,
                row=self.row.row,
                column=label,
                value=value,
                rule=rule,
                message=f"{unit} {self.row.row}, column {label}: {says}",
            )
        )

    def fail_field(self, name: str, rule: str, says: str) -> None:
        self.fail(self.where.get(name, name), self.raw.get(name), rule, says)

    def require(self, name: str, what: str) -> bool:
        if name in self.values:
            return True
        if name not in self.raw:  # empty or missing; a bad value has been reported already
            self.fail_field(name, "required", f"empty, but {what} is required")
        return False

    def contract_errors(self, exc: ValidationError) -> None:
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "(row)"
            self.fail_field(name, "contract", str(error["msg"]).removeprefix("Value error, "))


def _validate(
    rows: Iterable[SourceRow],
    fields: Sequence[_Field],
    kind: str,
    build: Callable[[_RowReader], Any | None],
    identity: Callable[[Any], str],
) -> tuple[list[Any], list[RowError]]:
    valid: list[Any] = []
    rejected: list[RowError] = []
    seen: dict[str, SourceRow] = {}
    headers: dict[tuple[str, ...], dict[str, _Field]] = {}
    total = refused = 0
    for row in rows:
        total += 1
        columns = headers.get(tuple(row.cells))
        if columns is None:
            columns = headers[tuple(row.cells)] = _resolve_columns(row, fields, kind)
        reader = _RowReader(row, columns)
        reader.read()
        record = build(reader)
        if record is not None and not reader.errors:
            first = seen.setdefault(identity(record), row)
            if first is not row:
                _repeated(reader, kind, identity(record), first)
        if reader.errors:
            rejected.extend(reader.errors)
            refused += 1
        else:
            valid.append(record)
    if len(valid) + refused != total:  # every row is valid or rejected, never dropped
        raise AssertionError(f"{total} rows in, {len(valid)} valid and {refused} rejected")
    return valid, rejected


def _repeated(reader: _RowReader, kind: str, identity: str, first: SourceRow) -> None:
    there = f"{_unit_word(first)} {first.row}" + (
        "" if first.file == reader.row.file else f" of {first.file}"
    )
    if kind == "specimen":
        reader.fail_field("sample_id", "specimen_unique", f"{identity} repeats {there}")
    elif "analysis_id" in reader.raw:
        reader.fail_field("analysis_id", "analysis_unique", f"{identity} repeats {there}")
    else:
        reader.fail_field(
            "analysis_id",
            "analysis_unique",
            f"the same measurement as {there} (same sample, technique, analyte, table and "
            "analysis number): give analysis_no or analysis_id to tell them apart",
        )


def rejected_rows(errors: Iterable[RowError]) -> int:
    """How many spreadsheet rows the errors reject (a row may break several rules; in a
    MoonDB submission one spreadsheet row holds the analyses of many analytes)."""
    return len({(error.file, error.sheet, error.row) for error in errors})


def validate_specimens(
    rows: Iterable[SourceRow], *, source: str
) -> tuple[list[Specimen], list[RowError]]:
    """Every row becomes a :class:`Specimen` or is rejected with the rules it breaks.

    ``source`` names the partner drop (it goes into each record's provenance). Missing
    ``mission``, ``parent_id`` and ``level`` are inferred from the sample number; given ones
    must agree with it. Raises :class:`ProductRejected` for an unknown or repeated column.
    """
    return _validate(
        rows, SPECIMEN_FIELDS, "specimen", lambda r: _specimen(r, source), lambda s: s.sample_id
    )


_SPECIMEN_COPIED: Final = (
    "station", "landmark", "return_container", "material", "classification",
    "classification_scheme", "mass_g", "mass_kind", "pristinity_pct", "pristinity_date",
    "description", "comment", "curator", "found_year", "found_date",
)  # fmt: skip


def _unit_word(row: SourceRow) -> str:
    return "record" if row.record else "row"


def _specimen(reader: _RowReader, drop: str) -> Specimen | None:
    v = reader.values
    if not reader.require("sample_id", "a sample number"):
        return None
    sample_id: str = v["sample_id"]
    numbered = mission_of_sample_id(sample_id)
    if "mission" not in v and "mission" not in reader.raw:
        if numbered is None:
            reader.require("mission", "the mission (the sample number does not say)")
        v["mission"] = numbered
    elif "mission" in v and numbered is not None and v["mission"] != numbered:
        reader.fail_field(
            "mission",
            "mission_consistent",
            f"sample {sample_id} is numbered as {numbered}, not {v['mission']}",
        )
    elif "mission" in v and numbered is None and v["mission"] != "Lunar meteorite":
        reader.fail_field(
            "mission",
            "mission_consistent",
            f"sample {sample_id} is not numbered as a {v['mission']} sample "
            "(only lunar meteorites have names)",
        )
    _found(reader, sample_id)
    natural_parent = parent_of_sample_id(sample_id)
    parent = v.get("parent_id", natural_parent if "parent_id" not in reader.raw else None)
    if parent is not None and not (
        sample_id.startswith(parent) and sample_id[len(parent) : len(parent) + 1] in {",", "-"}
    ):
        reader.fail_field(
            "parent_id",
            "parent_consistent",
            f"{parent} is not a parent of {sample_id} in the split numbering",
        )
    level = v.get("level", "generic" if parent is None else "split")
    if level == "generic" and parent is not None:
        reader.fail_field(
            "level", "level_consistent", f"{sample_id} is a split of {parent}, not a generic sample"
        )
    location = _location(reader)
    depth = _pair(reader, "depth_top_cm", "depth_bottom_cm", "a depth")
    if depth is not None and depth[1] < depth[0]:
        reader.fail_field(
            "depth_bottom_cm",
            "depth_order",
            f"the bottom ({depth[1]:g} cm) lies above the top ({depth[0]:g} cm)",
        )
    method_text = reader.raw.get("collection_method", "")
    code = v.get("collection_method_code") or (
        method_text if method_text and method_text != v.get("collection_method") else None
    )
    if reader.errors:
        return None
    record: dict[str, Any] = {name: v[name] for name in _SPECIMEN_COPIED if name in v}
    record |= {
        "sample_id": sample_id, "parent_id": parent, "level": level, "mission": v["mission"],
        "location": location, "collection_method": v.get("collection_method", "unknown"),
        "collection_method_code": code, "references": v.get("references", ()),
        "depth_cm": None if depth is None else {"top": depth[0], "bottom": depth[1]},
        "source": _provenance(reader.row, drop),
    }  # fmt: skip
    try:
        return Specimen.model_validate(record)
    except ValidationError as exc:
        reader.contract_errors(exc)
        return None


def _found(reader: _RowReader, sample_id: str) -> None:
    """A lunar meteorite says when it was found (the catalogue's time for it, as the landing
    is for a mission's samples); a mission's sample has no find date."""
    v = reader.values
    given = [name for name in ("found_year", "found_date") if name in reader.raw]
    if v.get("mission") == "Lunar meteorite":
        if not given:
            reader.fail_field(
                "found_year",
                "found_required",
                f"empty, but lunar meteorite {sample_id} needs the year it was found "
                "(found_year, e.g. 1982) or the day (found_date, e.g. 1982-01-18)",
            )
        elif "found_year" in v and "found_date" in v and v["found_date"].year != v["found_year"]:
            reader.fail_field(
                "found_date",
                "found_consistent",
                f"{v['found_date']} is not in the year {v['found_year']} given in found_year",
            )
    elif given and "mission" in v:
        reader.fail_field(
            given[0],
            "found_consistent",
            f"a find year or date is for lunar meteorites; {sample_id} was collected by "
            f"{v['mission']}",
        )


def _pair(reader: _RowReader, first: str, second: str, what: str) -> tuple[float, float] | None:
    have = [name in reader.raw for name in (first, second)]
    if have[0] != have[1]:
        missing = second if have[0] else first
        reader.fail_field(
            missing,
            "location_complete" if "deg" in first else "depth_complete",
            f"empty, but {what} needs both {first} and {second}",
        )
        return None
    if not all(have) or first not in reader.values or second not in reader.values:
        return None
    return reader.values[first], reader.values[second]


def _location(reader: _RowReader) -> dict[str, Any] | None:
    point = _pair(reader, "lat_deg", "lon_deg", "a position")
    if point is None:
        for name in ("location_uncertainty_m", "location_frame"):
            if name in reader.values and not any(n in reader.raw for n in ("lat_deg", "lon_deg")):
                reader.fail_field(
                    name, "location_complete", "given, but the position (lat_deg, lon_deg) is empty"
                )
        return None
    return {
        "lat_deg": point[0],
        "lon_deg": point[1],
        "uncertainty_m": reader.values.get("location_uncertainty_m"),
        "frame": reader.values.get("location_frame", MOON_FRAME),
    }


def _provenance(row: SourceRow, drop: str) -> dict[str, Any]:
    return {"drop": drop, "file": row.file, "sheet": row.sheet, "row": row.row}


def validate_analyses(
    rows: Iterable[SourceRow],
    *,
    source: str,
    dataset: str | None = None,
    known_samples: Iterable[str] | None = None,
) -> tuple[list[Analysis], list[RowError]]:
    """Every row becomes an :class:`Analysis` (value normalised to the analyte's canonical
    unit) or is rejected with the rules it breaks.

    ``dataset`` is used where a row names none (e.g. ``moondb:0623``); it is part of the
    stable ``analysis_id`` derived for rows without one. With ``known_samples``, each
    ``sample_id`` (or a parent of it in the split numbering) must be one of them.
    """
    known = None if known_samples is None else frozenset(known_samples)
    return _validate(
        rows,
        ANALYSIS_FIELDS,
        "analysis",
        lambda r: _analysis(r, source, dataset, known),
        lambda a: a.analysis_id,
    )


_PAIR_RE: Final = re.compile(r"^(?P<value>[^,±]+?)\s*(?:,|±|\+/-)\s*(?P<unc>[^,±]+)$")


_ANALYSIS_REQUIRED: Final = (
    ("sample_id", "the sample number"), ("technique", "the technique"),
    ("analyte", "the analyte"), ("value", "a value"), ("unit", "the unit"),
)  # fmt: skip


def _analysis(
    reader: _RowReader, drop: str, dataset: str | None, known: frozenset[str] | None
) -> Analysis | None:
    v = reader.values
    present = [reader.require(name, what) for name, what in _ANALYSIS_REQUIRED]
    sample_id = v.get("sample_id")
    if sample_id is not None and "parent_sample" in v:
        parent = v["parent_sample"]
        if parent != sample_id and not sample_id.startswith((f"{parent},", f"{parent}-")):
            reader.fail_field(
                "parent_sample",
                "parent_consistent",
                f"{parent} is not a parent of {sample_id} in the split numbering",
            )
    if sample_id is not None and known is not None and not _resolves(sample_id, known):
        reader.fail_field(
            "sample_id",
            "sample_known",
            f"{sample_id} is not a specimen we hold (nor is any parent of it)",
        )
    if not all(present):
        return None
    measured = _measurement(reader)
    if measured is None or reader.errors:
        return None
    record: dict[str, Any] = {name: v[name] for name in (
        "sample_id", "material_analyzed", "mineral", "grain", "spot_id", "rim_core", "technique",
        "method_code", "lab", "instrument", "analyte", "replicates", "is_average", "comment",
    ) if name in v}  # fmt: skip
    record |= measured
    citation = {
        name: v[name] for name in ("citation_id", "doi", "table_in_ref", "table_title") if name in v
    }
    record["citation"] = citation or None
    record["dataset"] = v.get("dataset", dataset)
    record["analysis_id"] = v.get("analysis_id") or _derived_analysis_id(
        record, v.get("analysis_no")
    )
    record["source"] = _provenance(reader.row, drop)
    try:
        return Analysis.model_validate(record)
    except ValidationError as exc:
        reader.contract_errors(exc)
        return None


def _resolves(sample_id: str, known: frozenset[str]) -> bool:
    current: str | None = sample_id
    while current is not None:
        if current in known:
            return True
        current = parent_of_sample_id(current)
    return False


def _measurement(reader: _RowReader) -> dict[str, Any] | None:
    """Value, uncertainty and detection from the cells, normalised to the canonical unit."""
    v = reader.values
    text: str = v["value"]
    detection = v.get("detection", "detected")
    value_part, unc_part = text, v.get("uncertainty")
    if text.startswith(("<", "≤")):
        value_part, detection = text.lstrip("<≤ "), "below_detection"
    elif (pair := _PAIR_RE.match(text)) is not None:
        if unc_part is not None:
            reader.fail_field(
                "value",
                "uncertainty_twice",
                f"{text!r} holds an uncertainty, and so does column uncertainty",
            )
            return None
        value_part, unc_part = pair["value"], pair["unc"]
    try:
        value = _decimal(value_part.strip())
    except _Bad as bad:
        hint = (
            " (for a value below the detection limit write <limit, e.g. <0.5)"
            if not re.search(r"\d", text)
            else ""
        )
        reader.fail_field("value", bad.rule, f"{text!r} is not a number{hint}")
        return None
    uncertainty = None
    if unc_part is not None:
        try:
            uncertainty = _decimal(unc_part.strip())
        except _Bad as bad:
            reader.fail_field("uncertainty" if "uncertainty" in v else "value", bad.rule, bad.says)
            return None
        if uncertainty < 0:
            reader.fail_field(
                "uncertainty" if "uncertainty" in v else "value",
                "uncertainty_range",
                f"{unc_part} is not an uncertainty (must be 0 or more)",
            )
            return None
    try:
        normal, unit = _normalise(value, v["unit"], v["analyte"])
        normal_unc = (
            None if uncertainty is None else _normalise(uncertainty, v["unit"], v["analyte"])[0]
        )
        _check_range(normal, unit, v["analyte"])
    except _Bad as bad:
        reader.fail_field("unit" if bad.rule == "unit_analyte" else "value", bad.rule, bad.says)
        return None
    return {
        "value": float(normal), "unit": unit,
        "uncertainty": None if normal_unc is None else float(normal_unc),
        "uncertainty_type": v.get("uncertainty_type", None if uncertainty is None else "unknown"),
        "value_original": float(value), "unit_original": reader.raw["unit"],
        "uncertainty_original": None if uncertainty is None else float(uncertainty),
        "value_text": text, "detection": detection,
    }  # fmt: skip


def _normalise(value: Decimal, unit: str, analyte: str) -> tuple[Decimal, str]:
    target = analytes()[analyte].unit
    table = units()
    given, wanted = table[unit], table[target]
    if given.dimension != wanted.dimension:
        same = [code for code, u in table.items() if u.dimension == wanted.dimension]
        raise _Bad(
            "unit_analyte",
            f"{unit!r} is not a unit for {analyte} "
            f"({analyte} is kept in {target}; use {', '.join(same)})",
        )
    return value * given.factor / wanted.factor, target


def _check_range(value: Decimal, unit: str, analyte: str) -> None:
    dimension = units()[unit].dimension
    if (
        dimension == "mass_fraction"
        and not Decimal(0) <= value <= Decimal(10) ** 6 / units()[unit].factor
    ):
        raise _Bad(
            "value_range",
            f"{_plain(value)} {unit} of {analyte} is not a concentration "
            "(must be between 0 and 100 wt%)",
        )
    if dimension == "time" and not Decimal(0) <= value <= AGE_OF_SOLAR_SYSTEM_MA:
        raise _Bad(
            "age_range",
            f"{_plain(value)} {unit} is not an age (must be between 0 and "
            f"{AGE_OF_SOLAR_SYSTEM_MA} Ma, the age of the Solar System)",
        )


def _plain(value: Decimal) -> str:
    return f"{value:f}"


def normalise_value(value: str | float | Decimal, unit: str, analyte: str) -> tuple[float, str]:
    """``value`` in ``unit`` expressed in ``analyte``'s canonical unit (exact decimal
    arithmetic): ``normalise_value("1", "wt%", "La") == (10000.0, "ppm")``.

    Raises :class:`ProductRejected` naming the rule for an unknown analyte or unit, or a unit
    of another kind (an age in ppm).
    """
    try:
        number = value if isinstance(value, Decimal) else _decimal(str(value))
        normal, target = _normalise(number, _unit(unit), _analyte(analyte))
    except _Bad as bad:
        raise ProductRejected(f"{bad.says} (rule: {bad.rule})") from None
    return float(normal), target


def _derived_analysis_id(record: Mapping[str, Any], analysis_no: str | None) -> str:
    """A stable id from what identifies a measurement, never from the drop or file: a
    corrected re-drop of the same measurement gets the same id."""
    citation = record.get("citation") or {}
    parts = [
        record.get("dataset"), record["sample_id"], record["technique"], record.get("method_code"),
        record["analyte"], citation.get("citation_id"), citation.get("doi"),
        citation.get("table_in_ref"), analysis_no, record.get("material_analyzed"),
        record.get("mineral"), record.get("grain"), record.get("spot_id"),
    ]  # fmt: skip
    digest = hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()
    return f"an-{digest[:20]}"


# ---------------------------------------------------------------------------------------------
# (Geo)Parquet: one explicit Arrow schema per table, rows sorted by id, so the same records
# always give the same bytes.

_STR = pa.string()
_F64 = pa.float64()
SPECIMEN_SCHEMA: Final = pa.schema([
    ("sample_id", _STR), ("parent_id", _STR), ("level", _STR), ("mission", _STR),
    ("curator", _STR), ("station", _STR), ("landmark", _STR), ("lat_deg", _F64),
    ("lon_deg", _F64), ("location_uncertainty_m", _F64), ("location_frame", _STR),
    ("collection_method", _STR), ("collection_method_code", _STR), ("return_container", _STR),
    ("material", _STR), ("classification", _STR), ("classification_scheme", _STR),
    ("mass_g", _F64), ("mass_kind", _STR), ("depth_top_cm", _F64), ("depth_bottom_cm", _F64),
    ("pristinity_pct", _F64), ("pristinity_date", pa.date32()), ("description", _STR),
    ("comment", _STR), ("references", pa.list_(_STR)), ("found_year", pa.int64()),
    ("found_date", pa.date32()), ("source_drop", _STR),
    ("source_file", _STR), ("source_sheet", _STR), ("source_row", pa.int64()),
    ("geometry", pa.binary()),
])  # fmt: skip
ANALYSIS_SCHEMA: Final = pa.schema([
    ("analysis_id", _STR), ("sample_id", _STR), ("material_analyzed", _STR), ("mineral", _STR),
    ("grain", _STR), ("spot_id", _STR), ("rim_core", _STR), ("technique", _STR),
    ("method_code", _STR), ("lab", _STR), ("instrument", _STR), ("analyte", _STR),
    ("value", _F64), ("unit", _STR), ("uncertainty", _F64), ("uncertainty_type", _STR),
    ("value_original", _F64), ("unit_original", _STR), ("uncertainty_original", _F64),
    ("value_text", _STR), ("detection", _STR), ("replicates", pa.int64()),
    ("is_average", _STR), ("comment", _STR), ("citation_id", _STR), ("doi", _STR),
    ("table_in_ref", _STR), ("table_title", _STR), ("dataset", _STR), ("source_drop", _STR),
    ("source_file", _STR), ("source_sheet", _STR), ("source_row", pa.int64()),
])  # fmt: skip
_WRITE_OPTIONS: Final[dict[str, Any]] = {"compression": "zstd", "write_statistics": True}
_PROVENANCE_COLUMNS: Final = {
    "source_drop": "drop",
    "source_file": "file",
    "source_sheet": "sheet",
    "source_row": "row",
}


def _specimen_row(specimen: Specimen) -> dict[str, Any]:
    row = specimen.model_dump(exclude={"location", "depth_cm", "source"})
    location, depth = specimen.location, specimen.depth_cm
    row |= {
        "lat_deg": location and location.lat_deg, "lon_deg": location and location.lon_deg,
        "location_uncertainty_m": location and location.uncertainty_m,
        "location_frame": location and location.frame,
        "depth_top_cm": depth and depth.top, "depth_bottom_cm": depth and depth.bottom,
        "references": list(specimen.references),
        "geometry": None if location is None else shapely.to_wkb(
            shapely.Point(location.lon_deg, location.lat_deg), byte_order=1, output_dimension=2
        ),
    }  # fmt: skip
    row |= {column: getattr(specimen.source, name) for column, name in _PROVENANCE_COLUMNS.items()}
    return row


def _geo_metadata(specimens: Sequence[Specimen]) -> dict[str, Any]:
    crs = assert_lunar(moon_geographic(), where="specimen GeoParquet")
    points = [s.location for s in specimens if s.location is not None]
    column: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": ["Point"],
        "crs": crs.to_json_dict(),
        "edges": "planar",
    }
    if points:
        lons, lats = [p.lon_deg for p in points], [p.lat_deg for p in points]
        column["bbox"] = [min(lons), min(lats), max(lons), max(lats)]
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}


def specimens_geoparquet_bytes(specimens: Iterable[Specimen]) -> bytes:
    """GeoParquet 1.1 of the specimens, sorted by ``sample_id``: a WKB point (lunar lon, lat)
    per located specimen, null otherwise; the CRS is the Moon's IAU_2015:30100 as PROJJSON."""
    ordered = sorted(specimens, key=lambda s: s.sample_id)
    table = pa.Table.from_pylist([_specimen_row(s) for s in ordered], schema=SPECIMEN_SCHEMA)
    metadata = {b"geo": json.dumps(_geo_metadata(ordered), sort_keys=True).encode("utf-8")}
    return _parquet_bytes(table.replace_schema_metadata(metadata))


def analyses_parquet_bytes(analyses: Iterable[Analysis]) -> bytes:
    """Parquet of the analyses in long form (one row per analyte), sorted by ``analysis_id``."""
    rows = []
    for analysis in sorted(analyses, key=lambda a: a.analysis_id):
        row = analysis.model_dump(exclude={"citation", "source"})
        citation = analysis.citation.model_dump() if analysis.citation else {}
        row |= {
            name: citation.get(name)
            for name in ("citation_id", "doi", "table_in_ref", "table_title")
        }
        row |= {
            column: getattr(analysis.source, name) for column, name in _PROVENANCE_COLUMNS.items()
        }
        rows.append(row)
    return _parquet_bytes(pa.Table.from_pylist(rows, schema=ANALYSIS_SCHEMA))


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **_WRITE_OPTIONS)
    return sink.getvalue()


def specimens_to_geoparquet(specimens: Iterable[Specimen], path: str | os.PathLike[str]) -> Path:
    """Write :func:`specimens_geoparquet_bytes` to ``path`` atomically."""
    return _write_atomically(Path(path), specimens_geoparquet_bytes(specimens))


def analyses_to_parquet(analyses: Iterable[Analysis], path: str | os.PathLike[str]) -> Path:
    """Write :func:`analyses_parquet_bytes` to ``path`` atomically."""
    return _write_atomically(Path(path), analyses_parquet_bytes(analyses))


def _write_atomically(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def specimens_from_geoparquet(data: bytes) -> list[Specimen]:
    """The specimens of a table written by :func:`specimens_geoparquet_bytes`."""
    table = read_parquet_bytes(data)
    specimens = []
    for row in table.to_pylist():
        row.pop("geometry")
        lat, lon = row.pop("lat_deg"), row.pop("lon_deg")
        uncertainty, frame = row.pop("location_uncertainty_m"), row.pop("location_frame")
        top, bottom = row.pop("depth_top_cm"), row.pop("depth_bottom_cm")
        row["location"] = (
            None
            if lat is None
            else {"lat_deg": lat, "lon_deg": lon, "uncertainty_m": uncertainty, "frame": frame}
        )
        row["depth_cm"] = None if top is None else {"top": top, "bottom": bottom}
        row["source"] = {name: row.pop(column) for column, name in _PROVENANCE_COLUMNS.items()}
        specimens.append(Specimen.model_validate(row))
    return specimens


def analyses_from_parquet(data: bytes) -> list[Analysis]:
    """The analyses of a table written by :func:`analyses_parquet_bytes`."""
    analyses = []
    for row in read_parquet_bytes(data).to_pylist():
        citation = {
            name: row.pop(name) for name in ("citation_id", "doi", "table_in_ref", "table_title")
        }
        row["citation"] = (
            citation if any(value is not None for value in citation.values()) else None
        )
        row["source"] = {name: row.pop(column) for column, name in _PROVENANCE_COLUMNS.items()}
        analyses.append(Analysis.model_validate(row))
    return analyses


# ---------------------------------------------------------------------------------------------
# Drop manifests


def read_drop_manifest(data: bytes, *, file: str) -> DropManifest:
    """Parse and check a drop's manifest (JSON); :class:`ProductRejected` names each fault."""
    try:
        document = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProductRejected(f"{file}: not readable JSON ({exc})") from None
    try:
        return DropManifest.model_validate(document)
    except ValidationError as exc:
        faults = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(manifest)'}: "
            f"{str(error['msg']).removeprefix('Value error, ')}"
            for error in exc.errors()
        )
        raise ProductRejected(f"{file}: {faults}") from None


def check_drop_files(manifest: DropManifest, contents: Mapping[str, bytes]) -> None:
    """Each file the manifest lists is present with its SHA-256, and nothing else is there.

    ``contents`` maps paths inside the drop (as the manifest writes them) to bytes; the
    manifest itself and a previous ``report.*`` are not data files and are ignored.
    """
    listed = {item.path: item for item in manifest.files}
    faults = [
        f"{path}: listed in the manifest but missing" for path in listed if path not in contents
    ]
    for path, data in sorted(contents.items()):
        if path in _DROP_SIDE_FILES:
            continue
        if path not in listed:
            faults.append(f"{path}: not listed in the manifest")
        elif (digest := hashlib.sha256(data).hexdigest()) != listed[path].sha256:
            faults.append(f"{path}: SHA-256 is {digest}, the manifest says {listed[path].sha256}")
    if faults:
        raise ProductRejected(f"drop of {manifest.partner}: {'; '.join(faults)}")


_DROP_SIDE_FILES: Final = frozenset({"manifest.json", "report.json", "report.csv"})


# ---------------------------------------------------------------------------------------------
# Oxide totals: a check across the rows of one analysis
#
# The major-element oxides of one complete analysis add up to about 100 wt%. The windows
# follow common practice: for electron-microprobe (and other microbeam) analyses, totals of
# about 98.5-101.5 wt% are the usual acceptance filter in mineral chemistry; we widen the low
# end to 97 wt% because partners often leave out minor oxides (Cr2O3, P2O5, NiO) that a lunar
# phase may hold. For bulk analyses (XRF, ICP, wet chemistry, and sets mixing techniques) the
# project's data notes (LUNAR-DATA.md §3.2) give 95-102 wt% for a complete analysis. A total
# beyond 105 wt% is no analytical error: more than the whole sample cannot be there, so a value
# is in the wrong unit or mistyped.
#
# Outside the window the rows are kept and the report warns: a low total can be real (an
# unanalysed component, a porous or altered grain) and each value passed its own checks, so
# refusing published values would lose data. Beyond 105 wt% the set is rejected: kept, it
# would corrupt the composition researchers search on (TiO2 > 6 wt%).

OXIDE_TOTAL_MICROBEAM: Final = (97.0, 101.5)
OXIDE_TOTAL_BULK: Final = (95.0, 102.0)
OXIDE_TOTAL_IMPOSSIBLE: Final = 105.0
MICROBEAM_TECHNIQUES: Final = frozenset({"EPMA", "SEM-EDS", "TEM-EELS"})
# Without SiO2 (INAA measures no Si) or with fewer than five oxides, a set is a partial
# analysis (the MoonDB anorthosites: INAA FeO, CaO, Na2O ...), and its sum says nothing.
_OXIDES_FOR_A_TOTAL: Final = 5


@dataclass(frozen=True)
class OxideTotal:
    """The major-oxide sum of one analysis: the rows it read and the window it must meet."""

    analyses: tuple[Analysis, ...]
    total: float
    window: tuple[float, float]
    technique: str

    @property
    def outside(self) -> bool:
        return not self.window[0] <= self.total <= self.window[1]

    @property
    def impossible(self) -> bool:
        return self.total > OXIDE_TOTAL_IMPOSSIBLE

    def describe(self) -> str:
        first = self.analyses[0]
        rows = _row_list(a.source.row for a in self.analyses)
        cited = first.citation
        table = (
            ", ".join(
                part
                for part in (
                    cited and cited.table_in_ref and f"table {cited.table_in_ref}",
                    cited and (cited.doi or cited.citation_id),
                    first.dataset,
                )
                if part
            )
            or "no citation"
        )
        low, high = self.window
        parts = " + ".join(
            f"{a.analyte} {_plain_number(a.value if a.detection == 'detected' else 0.0)}"
            for a in self.analyses
        )
        return (
            f"{rows}: the major oxides of sample {first.sample_id} "
            f"({first.material_analyzed or 'material not given'}, {table}) add up to "
            f"{self.total:.2f} wt% ({parts}); a complete {self.technique} analysis adds up to "
            f"{low:g}-{high:g} wt%"
        )


def _row_list(numbers: Iterable[int]) -> str:
    distinct = sorted(set(numbers))
    return ("row " if len(distinct) == 1 else "rows ") + ", ".join(map(str, distinct))


def _plain_number(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".")


def oxide_totals(analyses: Iterable[Analysis]) -> list[OxideTotal]:
    """The oxide total of every complete major-element analysis among ``analyses``.

    One analysis is the oxides of one sample in one file and sheet, one dataset and citation
    table, one material, mineral, grain and spot. Below-detection values count as 0. Total
    iron is counted once: FeO + Fe2O3 when either is given, else FeO_T. A set holding an
    oxide twice is several analyses we cannot tell apart: it is not summed.
    """
    groups: dict[tuple[Any, ...], list[Analysis]] = {}
    known = analytes()
    for analysis in analyses:
        if known[analysis.analyte].kind != "oxide" or analysis.detection == "not_analyzed":
            continue
        cited = analysis.citation
        key = (
            analysis.source.file, analysis.source.sheet, analysis.sample_id, analysis.dataset,
            cited and cited.citation_id, cited and cited.doi, cited and cited.table_in_ref,
            analysis.material_analyzed, analysis.mineral, analysis.grain, analysis.spot_id,
            analysis.rim_core,
        )  # fmt: skip
        groups.setdefault(key, []).append(analysis)
    totals = []
    for members in groups.values():
        by_oxide = {a.analyte: a for a in members}
        if len(by_oxide) != len(members) or "SiO2" not in by_oxide:
            continue
        if len(by_oxide) < _OXIDES_FOR_A_TOTAL:
            continue
        if "FeO" in by_oxide or "Fe2O3" in by_oxide:
            by_oxide.pop("FeO_T", None)
        counted = sorted(by_oxide.values(), key=lambda a: (a.source.row, a.analyte))
        total = math.fsum(a.value for a in counted if a.detection == "detected")
        techniques = {a.technique for a in counted}
        microbeam = techniques <= MICROBEAM_TECHNIQUES
        technique = "/".join(sorted(techniques)) if microbeam else "bulk"
        window = OXIDE_TOTAL_MICROBEAM if microbeam else OXIDE_TOTAL_BULK
        totals.append(OxideTotal(tuple(counted), round(total, 6), window, technique))
    return totals


def check_oxide_totals(
    analyses: Sequence[Analysis], rows: Sequence[SourceRow] = ()
) -> tuple[list[Analysis], list[RowError], list[RowWarning]]:
    """Apply the oxide-total rule: the analyses kept, the errors of the sets refused (total
    beyond 105 wt%: every row of the set), and a warning per set outside its window.

    ``rows`` (the source rows the analyses came from) name each error's column as the file
    does (a MoonDB sheet holds an analyte per column).
    """
    refused: set[str] = set()
    errors: list[RowError] = []
    warnings_: list[RowWarning] = []
    for found in oxide_totals(analyses):
        if found.impossible:
            says = (
                f"{found.describe()}; more than {OXIDE_TOTAL_IMPOSSIBLE:g} wt% cannot be: "
                "a value is in the wrong unit or mistyped, so the analysis is refused"
            )
            for analysis in found.analyses:
                refused.add(analysis.analysis_id)
                column = _value_label(analysis, rows)
                unit = "record" if analysis.source.file.lower().endswith(".json") else "row"
                errors.append(
                    RowError(
                        file=analysis.source.file,
                        sheet=analysis.source.sheet,
                        row=analysis.source.row,
                        column=column,
                        value=analysis.value_text,
                        rule="oxide_total",
                        message=f"{unit} {analysis.source.row}, column {column}: {says}",
                    )
                )
        elif found.outside:
            first = found.analyses[0]
            warnings_.append(
                RowWarning(
                    file=first.source.file,
                    sheet=first.source.sheet,
                    rows=tuple(sorted({a.source.row for a in found.analyses})),
                    column=", ".join(a.analyte for a in found.analyses),
                    value=f"{found.total:.2f} wt%",
                    rule="oxide_total",
                    message=(
                        f"{found.describe()}. The rows are kept; check for a missing oxide, a "
                        "value in the wrong unit or a typing error, and send a correction if "
                        "one is wrong"
                    ),
                )
            )
    return [a for a in analyses if a.analysis_id not in refused], errors, warnings_


def _value_label(analysis: Analysis, rows: Sequence[SourceRow]) -> str:
    for row in rows:
        if (row.file, row.sheet, row.row) == (
            analysis.source.file, analysis.source.sheet, analysis.source.row,
        ) and analyte_aliases().get(row.cells.get("analyte", ""), row.cells.get("analyte")) == (
            analysis.analyte
        ):  # fmt: skip
            return row.label("value")
    return f"value ({analysis.analyte})"


# ---------------------------------------------------------------------------------------------
# Drops: every file of a drop validated, its rows merged into a table, its report


@dataclass
class ValidatedDrop:
    """What a drop's files gave: valid records, each rejected row and why, per-file counts."""

    specimens: list[Specimen] = field(default_factory=list)
    analyses: list[Analysis] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    warnings: list[RowWarning] = field(default_factory=list)
    rejected_rows: list[SourceRow] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)


def validate_drop(
    manifest: DropManifest, contents: Mapping[str, bytes], drop_id: str, known: Iterable[str]
) -> ValidatedDrop:
    """Every file of the drop, specimens first (an analysis must name a specimen of the drop
    or of ``known``), then the oxide totals of the analyses. A file that cannot be read as a
    table is refused whole and named in ``files``."""
    out = ValidatedDrop()
    known_ids = set(known)
    rows_read: list[SourceRow] = []
    for entry in sorted(manifest.files, key=lambda f: (f.kind != "specimens", f.path)):
        data = contents[entry.path]
        try:
            if entry.kind == "moondb_submission":
                rows = read_moondb_submission(data, file=entry.path)
            else:
                rows = read_table(data, file=entry.path, sheet=entry.sheet)
            if entry.kind == "specimens":
                specimens, errors = validate_specimens(rows, source=drop_id)
                out.specimens += specimens
                known_ids |= {s.sample_id for s in specimens}
                valid = len(specimens)
            else:
                analyses, errors = validate_analyses(
                    rows, source=drop_id, dataset=manifest.dataset, known_samples=known_ids
                )
                out.analyses += analyses
                valid = len(analyses)
        except ProductRejected as exc:  # the whole file is unreadable: say so, keep it
            out.files.append(
                {"path": entry.path, "kind": entry.kind, "status": "rejected", "reason": str(exc)}
                | {"rows": None, "valid": 0, "rejected": None}
            )
            continue
        rows_read += rows
        out.errors += errors
        out.files.append(
            {"path": entry.path, "kind": entry.kind, "status": "read", "rows": len(rows)}
            | {"valid": valid, "rejected": len(rows) - valid}
        )
    kept, refused, out.warnings = check_oxide_totals(out.analyses, rows_read)
    if refused:
        staying = {a.analysis_id for a in kept}
        gone = [a for a in out.analyses if a.analysis_id not in staying]
        out.analyses = kept
        out.errors += refused
        for file in out.files:
            lost = sum(1 for a in gone if a.source.file == file["path"])
            file["valid"] -= lost
            file["rejected"] += lost
    bad = {(e.file, e.sheet, e.row) for e in out.errors}
    out.rejected_rows = [r for r in rows_read if (r.file, r.sheet, r.row) in bad]
    return out


def _rank(drops: Mapping[str, tuple[str, str]], drop: str) -> tuple[str, str]:
    return drops.get(drop, ("", drop))


def drop_ranks(entries: Iterable[Mapping[str, Any]]) -> dict[str, tuple[str, str]]:
    """Drop id -> its place in time: (when the pipeline received it, its id). A drop recorded
    without a time (tables written before it was kept) ranks before every timed drop."""
    return {e["drop"]: (str(e.get("received") or ""), str(e["drop"])) for e in entries}


def merge_rows(
    held: tuple[Sequence[Specimen], Sequence[Analysis]],
    incoming: tuple[Sequence[Specimen], Sequence[Analysis]],
    drops: Iterable[Mapping[str, Any]],
    *,
    without: frozenset[str] = frozenset(),
) -> tuple[tuple[Specimen, ...], tuple[Analysis, ...]]:
    """A table's rows after ``incoming`` rows arrive: a row whose id (``sample_id``,
    ``analysis_id``) the table holds supersedes it unless the held row comes from a later
    drop (``drops``: the table entries of every drop involved, see :func:`drop_ranks`). So
    an embargoed drop lifted today never overwrites what a newer public drop said. Rows of
    the drops in ``without`` leave the table."""
    ranks = drop_ranks(drops)

    def supersede(old: Iterable[Any], new: Iterable[Any], identity: str) -> tuple[Any, ...]:
        merged = {getattr(r, identity): r for r in old if r.source.drop not in without}
        for row in new:
            there = merged.get(getattr(row, identity))
            if there is None or _rank(ranks, row.source.drop) >= _rank(ranks, there.source.drop):
                merged[getattr(row, identity)] = row
        return tuple(merged.values())

    return (
        supersede(held[0], incoming[0], "sample_id"),
        supersede(held[1], incoming[1], "analysis_id"),
    )


def merge_drop_entries(
    held: Iterable[Mapping[str, Any]],
    added: Iterable[Mapping[str, Any]],
    *,
    without: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """A table's drop list, oldest first: each drop once (as first recorded)."""
    out: dict[str, dict[str, Any]] = {}
    for entry in [*held, *added]:
        if entry["drop"] not in without:
            out.setdefault(entry["drop"], dict(entry))
    return list(out.values())


def table_files(
    specimens: Iterable[Specimen],
    analyses: Iterable[Analysis],
    by_root: Mapping[str, Sequence[Analysis]],
    *,
    file_name: Callable[[str], str],
) -> dict[str, bytes]:
    """The objects of one table version: the specimens' GeoParquet, the analyses' Parquet,
    and the analyses of each root specimen (``by_root``) on their own, named by
    ``file_name(sample_id)``."""
    files = {
        "specimens.parquet": specimens_geoparquet_bytes(specimens),
        "analyses.parquet": analyses_parquet_bytes(analyses),
    }
    for sample_id, measured in by_root.items():
        if measured:
            files[file_name(sample_id)] = analyses_parquet_bytes(measured)
    return files


REPORT_COLUMNS: Final = ("file", "sheet", "row", "column", "value", "rule", "message")


def drop_report(
    base: Mapping[str, Any],
    manifest: DropManifest,
    validated: ValidatedDrop,
    *,
    embargoed: bool,
    table_version: str | None,
    received: str,
) -> dict[str, Any]:
    """The drop's report: status, per-file and per-kind counts, every error and warning."""
    report = dict(base)
    counts = {
        kind: {
            "rows": sum(f["rows"] or 0 for f in validated.files if _is_kind(f, kind)),
            "valid": sum(f["valid"] for f in validated.files if _is_kind(f, kind)),
            "rejected": sum(f["rejected"] or 0 for f in validated.files if _is_kind(f, kind)),
        }
        for kind in ("specimens", "analyses")
    }
    refused = [f["path"] for f in validated.files if f["status"] == "rejected"]
    if len(refused) == len(validated.files):
        status = "rejected"
        report["reason"] = f"every file was refused: {', '.join(refused)} (see files)"
    elif refused or any(c["rejected"] for c in counts.values()):
        status = "accepted_with_rejections"
    else:
        status = "accepted"
    report |= {
        "status": status,
        "received": received,
        "licence": manifest.licence,
        "embargo_until": manifest.embargo_until,
        "embargoed": embargoed,
        "files": validated.files,
        "counts": counts,
        "errors": [e.model_dump() for e in validated.errors],
        "warnings": [w.model_dump() for w in validated.warnings],
        "table": {"partner": base["partner"], "version": table_version, "restricted": embargoed},
    }
    return dict(json.loads(json.dumps(report, default=str)))


def _is_kind(file: Mapping[str, Any], kind: str) -> bool:
    return bool((file["kind"] == "specimens") == (kind == "specimens"))


def report_csv(errors: Iterable[RowError], warnings: Iterable[RowWarning] = ()) -> bytes:
    """The report as a spreadsheet: a line per broken rule of a rejected row, then a line per
    warning (its rows listed in ``row``; its message starts with WARNING, rows kept)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS)
    for error in errors:
        writer.writerow(["" if (v := getattr(error, c)) is None else v for c in REPORT_COLUMNS])
    for warning in warnings:
        cells = warning.model_dump() | {
            "row": ", ".join(map(str, warning.rows)),
            "message": f"WARNING (rows kept): {warning.message}",
        }
        writer.writerow(["" if cells.get(c) is None else cells[c] for c in REPORT_COLUMNS])
    return buffer.getvalue().encode("utf-8")


def quarantine_document(partner: str, drop: str, validated: ValidatedDrop) -> dict[str, Any] | None:
    """What a drop's quarantine keeps: every rejected row (its cells as read, and the rules
    it breaks) and every refused file; None when nothing was rejected."""
    files = [f for f in validated.files if f["status"] == "rejected"]
    if not validated.rejected_rows and not files:
        return None
    by_row: dict[tuple[str, str | None, int], list[dict[str, Any]]] = {}
    for error in validated.errors:
        by_row.setdefault((error.file, error.sheet, error.row), []).append(error.model_dump())
    rows = [
        {"file": r.file, "sheet": r.sheet, "row": r.row, "cells": dict(r.cells)}
        | {"errors": by_row[(r.file, r.sheet, r.row)]}
        for r in validated.rejected_rows
    ]
    return {"partner": partner, "drop": drop, "rows": rows, "rejected_files": files}

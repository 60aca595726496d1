"""Sample contracts: specimens, analyses and partner drop manifests.

The JSON Schema (2020-12) files in :mod:`lunarchive.schemas.contracts` are the published
contracts; the pydantic models here mirror them field for field (a unit test holds them
together) and add the checks JSON Schema cannot say: an analysis's unit is its analyte's
canonical unit, a parent is an ancestor in the split numbering, a sample number belongs to its
mission. Vocabularies (techniques, analytes, units, materials) are data files, see
:mod:`lunarchive.schemas.vocabularies`.
"""

from __future__ import annotations

import json
import re
from datetime import date
from functools import cache
from importlib import resources
from typing import Annotated, Any, Final, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lunarchive.schemas.vocabularies import analytes

__all__ = [
    "CONTRACTS",
    "MOON_FRAME",
    "SAMPLE_ID_PATTERN",
    "AnalysedMaterial",
    "Analysis",
    "Citation",
    "CollectionMethod",
    "Curator",
    "DepthCm",
    "Detection",
    "DropFile",
    "DropManifest",
    "Location",
    "MissionName",
    "Provenance",
    "RowError",
    "RowWarning",
    "SampleLevel",
    "Specimen",
    "SpecimenMaterial",
    "Technique",
    "UnitCode",
    "contract",
    "literal_values",
    "mission_of_sample_id",
    "parent_of_sample_id",
]

MOON_FRAME: Final = "IAU_2015:30100"
CONTRACTS: Final = ("specimen", "analysis", "drop-manifest")

# Apollo and NASA-held Luna numbers (5 digits, e.g. 70017, 24170), Soviet-catalogue Luna
# numbers (L1608), lunar meteorite names (NWA 032, Dhofar 025, ALHA81005); all with optional
# splits (15415,177 and 60025,59B). Chang'E-5/6 allocation codes with grain or foil suffixes.
SAMPLE_ID_PATTERN: Final = (
    r"^(?:\d{5}|L(?:16|20|24)[0-9A-Z]{1,4}|[A-Z][A-Za-z]+(?: [A-Z][a-z]+)* ?\d{3,6}[A-Za-z]?)"
    r"(?:,\d+[A-Z]?)*$"
    r"|^CE[56][CZ]\d{4}[A-Z]{4}\d{5}(?:-[A-Z0-9]+)*$"
)
ANALYSIS_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:,\-]{0,127}$"
PARTNER_PATTERN: Final = r"^[a-z0-9][a-z0-9-]{1,62}$"
SHA256_PATTERN: Final = r"^[0-9a-f]{64}$"
# A relative POSIX path inside the drop: every segment starts with a letter, digit or '_', so
# there is no '..', no '.', no leading '/', no backslash, NUL or '%'.
DROP_PATH_PATTERN: Final = r"^[A-Za-z0-9_][A-Za-z0-9_. ()-]*(?:/[A-Za-z0-9_][A-Za-z0-9_. ()-]*)*$"

MissionName = Literal[
    "Apollo 11", "Apollo 12", "Apollo 14", "Apollo 15", "Apollo 16", "Apollo 17",
    "Luna 16", "Luna 20", "Luna 24", "Chang'e-5", "Chang'e-6", "Lunar meteorite",
]  # fmt: skip
SampleLevel = Literal["generic", "split", "subsplit", "grain", "section", "foil"]
Curator = Literal["NASA-JSC", "CNSA", "IKI/Vernadsky", "other"]
CollectionMethod = Literal[
    "rake", "scoop", "drive_tube", "drill_core", "grab", "surface_sampler", "unknown"
]
SpecimenMaterial = Literal[
    "rock", "soil", "regolith_breccia", "core", "glass", "mineral_separate", "other"
]
MassKind = Literal["original", "current", "allocated"]
ClassificationScheme = Literal["curation", "petrologic", "other"]
AnalysedMaterial = Literal[
    "whole_rock", "glass", "mineral", "matrix", "inclusion", "bulk_soil", "size_fraction"
]
Technique = Literal[
    "INAA", "XRF", "EPMA", "ICP-MS", "LA-ICP-MS", "SIMS", "NanoSIMS", "TIMS", "MC-ICP-MS",
    "Ar-Ar", "noble_gas_MS", "SEM-EDS", "TEM-EELS", "Mossbauer", "FTIR", "Raman", "XRD", "other",
]  # fmt: skip
UnitCode = Literal[
    "wt%", "mg/g", "ppm", "ppb", "ppt", "Ga", "Ma", "ka", "mol%", "atom%", "permil", "epsilon",
    "ratio", "cm3STP/g", "g/cm3", "K", "none",
]  # fmt: skip
UncertaintyType = Literal["1SD", "2SD", "1SE", "2SE", "95CI", "range", "unknown"]
Detection = Literal["detected", "below_detection", "not_analyzed"]
IsAverage = Literal["Y", "N", "A"]
RimCore = Literal["rim", "core", "intermediate"]
FileKind = Literal["specimens", "analyses", "moondb_submission"]

SampleId = Annotated[str, Field(pattern=SAMPLE_ID_PATTERN, max_length=64)]
Text = Annotated[str, Field(min_length=1, max_length=4000)]
Finite = Annotated[float, Field(allow_inf_nan=False)]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def literal_values(kind: Any) -> tuple[str, ...]:
    """The allowed values of one of the ``Literal`` vocabularies above."""
    return tuple(get_args(kind))


# Generic numbers by mission: Apollo 16 and 17 use 6xxxx and 7xxxx, the others their flight.
_MISSION_PREFIXES: Final = (
    ("10", "Apollo 11"), ("12", "Apollo 12"), ("14", "Apollo 14"), ("15", "Apollo 15"),
    ("6", "Apollo 16"), ("7", "Apollo 17"), ("21", "Luna 16"), ("22", "Luna 20"),
    ("24", "Luna 24"), ("L16", "Luna 16"), ("L20", "Luna 20"), ("L24", "Luna 24"),
    ("CE5", "Chang'e-5"), ("CE6", "Chang'e-6"),
)  # fmt: skip


def mission_of_sample_id(sample_id: str) -> str | None:
    """The mission a curation number belongs to (``15415,177`` -> ``Apollo 15``), or None
    for numbers that do not say (lunar meteorites, unknown series)."""
    if not re.fullmatch(r"\d{5}(?:,.*)?|L\d.*|CE[56].*", sample_id):
        return None
    for prefix, mission in _MISSION_PREFIXES:
        if sample_id.startswith(prefix):
            return mission
    return None


def parent_of_sample_id(sample_id: str) -> str | None:
    """The parent in the split numbering (``15415,177`` -> ``15415``, ``CE5...-G1`` -> the
    allocation code), or None for a generic number."""
    cut = max(sample_id.rfind(","), sample_id.rfind("-") if sample_id.startswith("CE") else -1)
    return sample_id[:cut] if cut > 0 else None


def _is_ancestor(parent: str, child: str) -> bool:
    return child.startswith(parent) and child[len(parent) : len(parent) + 1] in {",", "-"}


class RowError(BaseModel):
    """Why one row of a partner's table was rejected, in words a lab technician understands.

    ``row`` counts as a spreadsheet does (the header is row 1); for JSON files it is the
    record number (the first record is 1). ``column`` is the column as the file names it.
    """

    model_config = _FROZEN

    file: str
    sheet: str | None = None
    row: int = Field(ge=1)
    column: str | None
    value: str | None
    rule: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file} [{self.sheet}]" if self.sheet else self.file
        return f"{where}, {self.message} (rule: {self.rule})"


class RowWarning(BaseModel):
    """Something a lab technician should check in rows that were kept (not rejected).

    A check across rows (the oxide total of one analysis) names every row it read; ``value``
    is what it found (``"92.41 wt%"``).
    """

    model_config = _FROZEN

    file: str
    sheet: str | None = None
    rows: tuple[Annotated[int, Field(ge=1)], ...] = Field(min_length=1)
    column: str | None
    value: str | None
    rule: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file} [{self.sheet}]" if self.sheet else self.file
        return f"{where}, {self.message} (rule: {self.rule}; rows kept)"


class Provenance(BaseModel):
    """Where a record came from: the partner drop, the file, the sheet and the row."""

    model_config = _FROZEN

    drop: Text
    file: Text
    sheet: str | None = None
    row: int = Field(ge=1)


class Location(BaseModel):
    """The collection site: planetocentric, east-positive degrees in −180..180."""

    model_config = _FROZEN

    lat_deg: Finite = Field(ge=-90.0, le=90.0)
    lon_deg: Finite = Field(ge=-180.0, le=180.0)
    uncertainty_m: Finite | None = Field(default=None, ge=0.0)
    frame: Literal["IAU_2015:30100"] = MOON_FRAME


class DepthCm(BaseModel):
    """Depth below the surface in centimetres (for cores): top above bottom."""

    model_config = _FROZEN

    top: Finite = Field(ge=0.0)
    bottom: Finite = Field(ge=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.bottom < self.top:
            raise ValueError(f"depth bottom {self.bottom} cm lies above top {self.top} cm")
        return self


class Specimen(BaseModel):
    """One physical sample at any level: generic sample, split, grain (LUNAR-DATA §3.2)."""

    model_config = _FROZEN

    sample_id: SampleId
    parent_id: SampleId | None = None
    level: SampleLevel = "generic"
    mission: MissionName
    curator: Curator | None = None
    station: Text | None = None
    landmark: Text | None = None
    location: Location | None = None
    collection_method: CollectionMethod = "unknown"
    collection_method_code: Text | None = None
    return_container: Text | None = None
    material: SpecimenMaterial | None = None
    classification: Text | None = None
    classification_scheme: ClassificationScheme | None = None
    mass_g: Finite | None = Field(default=None, ge=0.0)
    mass_kind: MassKind | None = None
    depth_cm: DepthCm | None = None
    pristinity_pct: Finite | None = Field(default=None, ge=0.0, le=100.0)
    pristinity_date: date | None = None
    description: Text | None = None
    comment: Text | None = None
    references: tuple[Text, ...] = ()
    found_year: int | None = Field(default=None, ge=1800, le=2999)
    found_date: date | None = None
    source: Provenance

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        found = self.found_year is not None or self.found_date is not None
        if found and self.mission != "Lunar meteorite":
            raise ValueError("a find year or date is for lunar meteorites only")
        if self.found_year and self.found_date and self.found_date.year != self.found_year:
            raise ValueError(f"found {self.found_date} is not in the year {self.found_year}")
        numbered = mission_of_sample_id(self.sample_id)
        if numbered is not None and numbered != self.mission:
            raise ValueError(f"sample {self.sample_id} is numbered as {numbered}")
        if numbered is None and self.mission != "Lunar meteorite":
            raise ValueError(f"sample {self.sample_id} is not numbered as a {self.mission} sample")
        if self.parent_id is not None and not _is_ancestor(self.parent_id, self.sample_id):
            raise ValueError(f"{self.parent_id} is not a parent of {self.sample_id}")
        if self.level == "generic" and parent_of_sample_id(self.sample_id) is not None:
            raise ValueError(f"{self.sample_id} is a split, not a generic sample")
        return self


class Citation(BaseModel):
    """The publication and table a value comes from."""

    model_config = _FROZEN

    citation_id: Text | None = None
    doi: Annotated[str, Field(pattern=r"^10\.\d{4,9}/\S+$")] | None = None
    table_in_ref: Text | None = None
    table_title: Text | None = None


class Analysis(BaseModel):
    """One measured value of one analyte in one sample (the long form, LUNAR-DATA §3.2).

    ``value``/``unit``/``uncertainty`` are in the analyte's canonical unit; ``value_original``,
    ``unit_original`` and ``uncertainty_original`` keep what the partner wrote, and
    ``value_text`` the cell exactly as read.
    """

    model_config = _FROZEN

    analysis_id: Annotated[str, Field(pattern=ANALYSIS_ID_PATTERN)]
    sample_id: SampleId
    material_analyzed: AnalysedMaterial | None = None
    mineral: Text | None = None
    grain: Text | None = None
    spot_id: Text | None = None
    rim_core: RimCore | None = None
    technique: Technique
    method_code: Text | None = None
    lab: Text | None = None
    instrument: Text | None = None
    analyte: Annotated[str, Field(min_length=1, max_length=32)]
    value: Finite
    unit: UnitCode
    uncertainty: Finite | None = Field(default=None, ge=0.0)
    uncertainty_type: UncertaintyType | None = None
    value_original: Finite
    unit_original: Annotated[str, Field(min_length=1, max_length=32)]
    uncertainty_original: Finite | None = Field(default=None, ge=0.0)
    value_text: Annotated[str, Field(min_length=1, max_length=200)]
    detection: Detection = "detected"
    replicates: int | None = Field(default=None, ge=1)
    is_average: IsAverage | None = None
    comment: Text | None = None
    citation: Citation | None = None
    dataset: Text | None = None
    source: Provenance

    @model_validator(mode="after")
    def _canonical_unit(self) -> Self:
        known = analytes().get(self.analyte)
        if known is None:
            raise ValueError(f"{self.analyte!r} is not a known analyte")
        if self.unit != known.unit:
            raise ValueError(f"{self.analyte} is kept in {known.unit}, not {self.unit}")
        if self.uncertainty is not None and self.uncertainty_type is None:
            raise ValueError("an uncertainty needs its type (1SD, 2SE ... or unknown)")
        return self


class Contact(BaseModel):
    """Who answers for a drop."""

    model_config = _FROZEN

    name: Text
    email: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)]


class DropFile(BaseModel):
    """One file of a drop: its path inside the drop folder, what it holds, its SHA-256."""

    model_config = _FROZEN

    path: Annotated[str, Field(pattern=DROP_PATH_PATTERN, max_length=255)]
    kind: FileKind
    sha256: Annotated[str, Field(pattern=SHA256_PATTERN)]
    sheet: Text | None = None


class DropManifest(BaseModel):
    """A partner's drop: who sent it, under what licence, until when it is embargoed."""

    model_config = _FROZEN

    partner: Annotated[str, Field(pattern=PARTNER_PATTERN)]
    contact: Contact
    licence: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.+-]{1,63}$")]
    embargo_until: date | None = None
    dataset: Text | None = None
    description: Text | None = None
    files: tuple[DropFile, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_paths(self) -> Self:
        paths = [item.path for item in self.files]
        repeated = sorted({path for path in paths if paths.count(path) > 1})
        if repeated:
            raise ValueError(f"files listed twice: {', '.join(repeated)}")
        return self


def contract(name: str) -> dict[str, Any]:
    """The JSON Schema of a contract: ``specimen``, ``analysis`` or ``drop-manifest`` (a
    fresh copy: change it freely)."""
    if name not in CONTRACTS:
        raise KeyError(f"no contract {name!r}; known: {', '.join(CONTRACTS)}")
    schema: dict[str, Any] = json.loads(_contract_text(name))
    return schema


@cache
def _contract_text(name: str) -> str:
    files = resources.files("lunarchive.schemas.contracts")
    return files.joinpath(f"{name}.schema.json").read_text("utf-8")

"""A small, deterministic, realistic lunar archive for the demo and the tests.

``write_demo_archive(root)`` writes, byte for byte the same on every run:

* ``dem/dem_t{row}{col}.xml`` + ``.img``: four PDS4 DEM tiles in a 2 × 2 layout, 256 × 256
  pixels each, at LOLA's 512 pixels per degree (59.2 m), in IAU_2015:30110
  (equirectangular on the 1 737 400 m sphere), covering 52.5°W–51.5°W, 42.5°N–43.5°N around
  the Chang'e-5 landing site (43.06°N, 51.92°W) in northern Oceanus Procellarum. Heights
  above the reference sphere are int16 DN with ``scaling_factor`` 0.5 and ``missing_constant``
  −32768 (33 pixels of gaps); the terrain is synthetic: a mare plain about 2 km below the
  sphere with smooth relief, a wrinkle ridge and simple craters.
* ``samples/specimens.csv``: 12 synthetic specimen records (Apollo, Luna, Chang'e-5) in the
  flattened sample schema of LUNAR-DATA.md §3.2, at real landing-site coordinates.

``write_demo_drop(folder, partner=...)`` writes the same specimens as a partner drop, the way
a laboratory would put it into ``inbox/<partner>/<drop>/``: ``specimens.csv``,
``analyses.csv`` (major oxides by XRF and EPMA, traces by INAA, in long form) and the
``manifest.json`` naming both with their SHA-256.

The labels are written by GDAL's PDS4 driver (a real ``cart:Equirectangular`` mapping); every
``${...}`` placeholder of its template is filled through ``VAR_*`` options, and the two fields
the template gets wrong are set afterwards (LUNAR-DATA.md §2.3 pitfall 7).
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
from pathlib import Path
from typing import Final

import numpy as np
import rasterio  # type: ignore[import-untyped]
from lxml import etree
from rasterio.transform import from_origin  # type: ignore[import-untyped]

from lunarchive.processing.crs import MOON_RADIUS_M, BBox, lunar_footprint

__all__ = ["DEMO_ANALYSES", "demo_heights_dn", "write_demo_archive", "write_demo_drop"]

_TILE_PX: Final = 256
_TILES: Final = 2  # per side
_PX_PER_DEG: Final = 512  # LOLA's 512 ppd grid: 59.2 m per pixel
_RESOLUTION_M: Final = 2.0 * math.pi * MOON_RADIUS_M / 360.0 / _PX_PER_DEG
_WEST_DEG: Final = -52.5  # north-west corner of the demo region
_NORTH_DEG: Final = 43.5
_HEIGHT_SCALE: Final = 0.5
_NODATA: Final = -32768
_SEED: Final = 20201201  # Chang'e-5 landed on 2020-12-01
_BASE_HEIGHT_M: Final = -2000.0
# Data gaps (rows, cols of the whole 512 × 512 grid): a missing track piece, a small hole.
_GAPS: Final = ((slice(100, 102), slice(300, 312)), (slice(400, 403), slice(60, 63)))
# The larger craters: (east, south) ground offsets from the north-west corner (m), diameter (m).
_CRATERS: Final = ((6500.0, 9000.0, 2400.0), (16000.0, 21000.0, 1500.0), (12000.0, 6000.0, 600.0))
_SMALL_CRATERS: Final = 25

_CRS: Final = "IAU_2015:30110"
_LID_PREFIX: Final = "urn:nasa:pds:lunarchive_demo:data_dem:"
_TARGET_LID: Final = "urn:nasa:pds:context:target:satellite.earth.moon"
_INVESTIGATION_LID: Final = "urn:nasa:pds:context:investigation:mission.lunarchive_demo"
_PDS: Final = "{http://pds.nasa.gov/pds4/pds/v1}"
_NIL: Final = "{http://www.w3.org/2001/XMLSchema-instance}nil"
# The synthetic heights stand for a LOLA-era product: its observation window.
_START: Final = "2009-07-13T00:00:00Z"
_STOP: Final = "2020-12-31T23:59:59Z"


def write_demo_archive(root: Path) -> list[Path]:
    """Write the demo archive under ``root`` and return the files written, sorted."""
    dn = demo_heights_dn()
    dem_dir = root / "dem"
    dem_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for row, col in itertools.product(range(_TILES), repeat=2):
        tile = dn[row * _TILE_PX : (row + 1) * _TILE_PX, col * _TILE_PX : (col + 1) * _TILE_PX]
        written += _write_tile(dem_dir, f"dem_t{row}{col}", tile, row=row, col=col)
    written.append(_write_specimens(root / "samples" / "specimens.csv"))
    return sorted(written)


def demo_heights_dn() -> np.ndarray:
    """The demo's whole 512 × 512 int16 grid (height = DN × 0.5 m; −32768 marks gaps).

    Tile ``dem_t{row}{col}`` is rows ``row*256:(row+1)*256``, columns ``col*256:(col+1)*256``.
    """
    heights = _terrain(np.random.default_rng(_SEED))
    dn = np.round(heights / _HEIGHT_SCALE).astype(np.int16)
    for rows, cols in _GAPS:
        dn[rows, cols] = _NODATA
    return dn


def _terrain(rng: np.random.Generator) -> np.ndarray:
    """Synthetic mare heights (m) on the demo grid, from the north-west corner."""
    size = _TILES * _TILE_PX
    south, east = np.mgrid[0:size, 0:size] * _RESOLUTION_M
    # Equirectangular with lat_ts = 0 stretches east-west by 1/cos(lat): shapes are drawn on
    # the ground so that craters come out round on the Moon.
    east = east * math.cos(math.radians(_NORTH_DEG - size / _PX_PER_DEG / 2))
    heights: np.ndarray = _BASE_HEIGHT_M - 0.004 * east + 0.003 * south
    heights += 25.0 * _value_noise(rng, size, cells=6) + 6.0 * _value_noise(rng, size, cells=24)
    ridge_axis = 0.7 * east.max() + 1500.0 * np.sin(2.0 * math.pi * south / 25_000.0)
    heights += 55.0 * np.exp(-(((east - ridge_axis) / 900.0) ** 2))
    small = zip(
        rng.uniform(0, east.max(), _SMALL_CRATERS),
        rng.uniform(0, south.max(), _SMALL_CRATERS),
        rng.uniform(80.0, 300.0, _SMALL_CRATERS),
        strict=True,
    )
    for x, y, diameter in (*_CRATERS, *small):
        heights += _crater(np.hypot(east - x, south - y), diameter)
    return heights


def _value_noise(rng: np.random.Generator, size: int, *, cells: int) -> np.ndarray:
    """Smooth noise: a coarse random lattice, interpolated with a smoothstep."""
    lattice = rng.standard_normal((cells + 1, cells + 1))
    position = np.linspace(0.0, cells, size, endpoint=False)
    index = position.astype(int)
    t = position - index
    t = t * t * (3.0 - 2.0 * t)
    top = lattice[index][:, index] * (1 - t) + lattice[index][:, index + 1] * t
    bottom = lattice[index + 1][:, index] * (1 - t) + lattice[index + 1][:, index + 1] * t
    result: np.ndarray = top * (1 - t[:, None]) + bottom * t[:, None]
    return result


def _crater(distance: np.ndarray, diameter: float) -> np.ndarray:
    """A fresh simple crater: a parabolic bowl 0.2 D deep, a 0.04 D rim, ejecta decaying as r⁻³."""
    r = distance / (diameter / 2.0)
    depth, rim = 0.2 * diameter, 0.04 * diameter
    bowl = rim - depth * (1.0 - r**2)
    ejecta = rim * np.maximum(r, 1.0) ** -3
    result: np.ndarray = np.where(r < 1.0, bowl, ejecta)
    return result


def _write_tile(dem_dir: Path, name: str, dn: np.ndarray, *, row: int, col: int) -> list[Path]:
    label, image = dem_dir / f"{name}.xml", dem_dir / f"{name}.img"
    for stale in (label, image):
        stale.unlink(missing_ok=True)
    bounds = _tile_bounds(row, col)
    transform = from_origin(bounds[0], bounds[3], _RESOLUTION_M, _RESOLUTION_M)
    bbox, _ = lunar_footprint(_CRS, bounds)
    profile = {"driver": "PDS4", "width": _TILE_PX, "height": _TILE_PX, "count": 1}
    profile |= {"dtype": "int16", "crs": _CRS, "transform": transform, "nodata": _NODATA}
    with rasterio.open(label, "w", **profile, **_label_options(name, bbox)) as dst:
        dst.write(dn, 1)
        dst.scales, dst.offsets = (_HEIGHT_SCALE,), (0.0,)
    _fix_label(label, lid=_LID_PREFIX + name)
    return [label, image]


def _tile_bounds(row: int, col: int) -> BBox:
    """Projected ``(left, bottom, right, top)`` of a tile, on whole pixels of the 512 ppd grid."""
    west_px = round(_WEST_DEG * _PX_PER_DEG) + col * _TILE_PX
    north_px = round(_NORTH_DEG * _PX_PER_DEG) - row * _TILE_PX
    return (
        west_px * _RESOLUTION_M,
        (north_px - _TILE_PX) * _RESOLUTION_M,
        (west_px + _TILE_PX) * _RESOLUTION_M,
        north_px * _RESOLUTION_M,
    )


def _label_options(name: str, bbox: BBox) -> dict[str, str]:
    """Creation options: a value for every ``${...}`` of GDAL's PDS4 template, the bounds."""
    return {
        # GDAL's own bounding box is degenerate for some grids (LUNAR-DATA.md §2.3 pitfall 6).
        "BOUNDING_DEGREES": ",".join(repr(v) for v in bbox),
        "VAR_LOGICAL_IDENTIFIER": _LID_PREFIX + name,
        "VAR_TITLE": f"Lunarchive demo DEM tile {name}: synthetic heights near Chang'e-5",
        "VAR_TARGET": "Moon",
        "VAR_TARGET_TYPE": "Satellite",
        "VAR_INVESTIGATION_AREA_NAME": "Lunarchive demo",
        "VAR_INVESTIGATION_AREA_LID_REFERENCE": _INVESTIGATION_LID,
        "VAR_OBSERVING_SYSTEM_NAME": "Lunarchive synthetic terrain generator",
    }


def _fix_label(label: Path, *, lid: str) -> None:
    """Set the fields GDAL's template gets wrong, deterministically, and check no ``${`` is left.

    GDAL writes ``Time_Coordinates`` as nil; the demo gives its observation window. The
    template builds the target LID as ``...target:satellite.moon`` (the official one is
    ``satellite.earth.moon``), and some GDAL/rasterio versions upper-case ``VAR_*`` values,
    which PDS4 forbids in LIDs.
    """
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    tree = etree.parse(str(label), parser)
    fields = {
        f"{_PDS}Identification_Area/{_PDS}logical_identifier": lid,
        f"{_PDS}Observation_Area/{_PDS}Investigation_Area//{_PDS}lid_reference": _INVESTIGATION_LID,
        f"{_PDS}Observation_Area/{_PDS}Target_Identification//{_PDS}lid_reference": _TARGET_LID,
        f"{_PDS}Observation_Area/{_PDS}Time_Coordinates/{_PDS}start_date_time": _START,
        f"{_PDS}Observation_Area/{_PDS}Time_Coordinates/{_PDS}stop_date_time": _STOP,
    }
    for path, value in fields.items():
        element = tree.getroot().find(path)
        if element is None:
            raise RuntimeError(f"{label.name}: GDAL's PDS4 template has no {path}")
        if _NIL in element.attrib:
            del element.attrib[_NIL]
        element.text = value
    data = etree.tostring(tree, xml_declaration=True, encoding="UTF-8")
    if b"${" in data:
        raise RuntimeError(f"{label.name}: a ${{...}} placeholder is left in the label")
    label.write_bytes(data)


_SPECIMEN_COLUMNS: Final = (
    "sample_id", "parent_id", "level", "mission", "curator", "station", "lat_deg", "lon_deg",
    "location_uncertainty_m", "location_frame", "collection_method", "return_container",
    "material", "classification", "mass_g", "mass_kind", "pristinity_pct", "description",
)  # fmt: skip
# Landing sites, planetocentric degrees east (LRO-derived positions of the landers).
_SITES: Final = {
    "Apollo 11": (0.67416, 23.47314),
    "Apollo 12": (-3.01239, -23.42157),
    "Apollo 15": (26.13222, 3.63386),
    "Apollo 16": (-8.97301, 15.50019),
    "Apollo 17": (20.19080, 30.77168),
    "Luna 24": (12.71450, 62.21290),
    "Chang'e-5": (43.05760, -51.91610),
}


def _specimen(sample_id: str, mission: str, **fields: object) -> dict[str, object]:
    """One flattened sample record at its landing site; station samples carry a larger
    location uncertainty, since only the lander's position is given."""
    lat, lon = _SITES[mission]
    record: dict[str, object] = {
        "sample_id": sample_id, "level": "generic", "mission": mission, "curator": "NASA-JSC",
        "lat_deg": lat, "lon_deg": lon, "location_uncertainty_m": 50.0,
        "location_frame": "IAU_2015:30100", "mass_kind": "original",
    }  # fmt: skip
    record.update(fields)
    record["description"] = f"Synthetic demo record, not curation data. {record['description']}"
    return record


_SPECIMENS: Final = (
    _specimen("70017", "Apollo 17", station="LM", collection_method="grab",
              return_container="SCB 2", material="rock", classification="Ilmenite Basalt",
              mass_g=2957.0, pristinity_pct=90.0, description="High-Ti mare basalt."),
    _specimen("70017,12", "Apollo 17", parent_id="70017", level="split", station="LM",
              collection_method="grab", return_container="SCB 2", material="rock",
              classification="Ilmenite Basalt", mass_g=1.25, mass_kind="allocated",
              description="Interior chip for petrography."),
    _specimen("74220", "Apollo 17", station="Apollo 17 Station 4",
              location_uncertainty_m=5000.0, collection_method="scoop",
              return_container="SCB 4", material="soil", classification="Soil:Orange glass",
              mass_g=1180.0, pristinity_pct=85.0, description="Orange soil from a crater rim."),
    _specimen("76535", "Apollo 17", station="Apollo 17 Station 6",
              location_uncertainty_m=5000.0, collection_method="rake",
              return_container="SCB 7", material="rock", classification="Crustal:Troctolite",
              mass_g=155.5, pristinity_pct=95.0, description="Coarse troctolite from a rake."),
    _specimen("10084", "Apollo 11", station="LM", collection_method="scoop",
              return_container="ALSRC 1004", material="soil", classification="Soil:Unsieved",
              mass_g=3830.0, pristinity_pct=60.0, description="Bulk fines from the LM area."),
    _specimen("12002", "Apollo 12", station="LM", location_uncertainty_m=300.0,
              collection_method="grab", return_container="ALSRC 1006", material="rock",
              classification="Olivine Basalt", mass_g=1529.0, pristinity_pct=80.0,
              description="Olivine-rich mare basalt."),
    _specimen("15415", "Apollo 15", station="Apollo 15 Station 7",
              location_uncertainty_m=4000.0, collection_method="grab",
              return_container="SCB 2", material="rock", classification="Crustal:Anorthosite",
              mass_g=269.4, pristinity_pct=75.0, description="Coarse-grained anorthosite."),
    _specimen("15415,177", "Apollo 15", parent_id="15415", level="split",
              station="Apollo 15 Station 7", location_uncertainty_m=4000.0,
              collection_method="grab", return_container="SCB 2", material="rock",
              classification="Crustal:Anorthosite", mass_g=0.52, mass_kind="allocated",
              description="Split allocated for Ar-Ar dating."),
    _specimen("60025", "Apollo 16", station="Apollo 16 Station 10",
              location_uncertainty_m=300.0, collection_method="grab",
              return_container="SCB 1", material="rock", classification="Crustal:Anorthosite",
              mass_g=1836.0, pristinity_pct=70.0, description="Ferroan anorthosite."),
    _specimen("24170", "Luna 24", level="section", station="Luna 24 drill site",
              location_uncertainty_m=100.0, collection_method="drill_core", material="core",
              classification="Soil:Drill core", mass_g=0.8, mass_kind="current",
              description="Section of the drill core."),
    _specimen("CE5C0400YJFM00505", "Chang'e-5", level="split", curator="CNSA",
              station="Chang'e-5 lander", location_uncertainty_m=150.0, collection_method="scoop",
              return_container="CE5 scoop container", material="soil",
              classification="Soil:Unsieved", mass_g=1.5, mass_kind="allocated",
              description="Scooped regolith powder allocated for research."),
    _specimen("CE5C0400YJFM00505-G1", "Chang'e-5", parent_id="CE5C0400YJFM00505",
              level="grain", curator="CNSA", station="Chang'e-5 lander",
              location_uncertainty_m=150.0, collection_method="scoop",
              return_container="CE5 scoop container",
              material="mineral_separate", classification="basalt clast", mass_g=0.00012,
              mass_kind="allocated", description="Basalt grain picked from the powder."),
)  # fmt: skip


def _write_specimens(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_SPECIMEN_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in _SPECIMENS:
        writer.writerow({key: _csv_cell(value) for key, value in record.items()})
    path.write_bytes(buffer.getvalue().encode("utf-8"))
    return path


def _csv_cell(value: object) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


# Synthetic analyses, close to published values for these rocks and soils (wt% oxides by XRF
# on whole rock or bulk soil, EPMA on a mineral or glass, INAA traces in ppm). Rows:
# (sample, material analysed, mineral, spot, technique, {analyte: value}, unit).
_MAJORS: Final = ("SiO2", "TiO2", "Al2O3", "FeO", "MgO", "CaO", "Na2O", "K2O")
DEMO_ANALYSES: Final = (
    ("70017", "whole_rock", None, None, "XRF",
     dict(zip(_MAJORS, (37.8, 12.97, 8.85, 17.8, 10.1, 10.3, 0.38, 0.06), strict=True)), "wt%"),
    ("70017", "whole_rock", None, None, "INAA", {"La": 5.9, "Sm": 8.1}, "ppm"),
    ("70017,12", "mineral", "ilmenite", "1", "EPMA", {"TiO2": 53.1, "FeO": 45.0}, "wt%"),
    ("74220", "bulk_soil", None, None, "XRF",
     dict(zip(_MAJORS, (38.6, 8.81, 6.3, 22.0, 14.4, 7.7, 0.36, 0.09), strict=True)), "wt%"),
    ("74220", "glass", None, "1", "EPMA", {"TiO2": 9.12, "FeO": 22.3, "MgO": 14.6}, "wt%"),
    ("74220", "glass", None, "2", "EPMA", {"TiO2": 9.05, "FeO": 22.1, "MgO": 14.8}, "wt%"),
    ("12002", "whole_rock", None, None, "XRF",
     dict(zip(_MAJORS, (43.6, 2.6, 7.9, 21.7, 14.9, 8.3, 0.22, 0.05), strict=True)), "wt%"),
    ("10084", "bulk_soil", None, None, "XRF",
     dict(zip(_MAJORS, (42.0, 7.5, 13.6, 15.8, 7.9, 12.0, 0.47, 0.14), strict=True)), "wt%"),
    ("60025", "whole_rock", None, None, "XRF",
     dict(zip(_MAJORS, (44.3, 0.02, 35.0, 0.6, 0.3, 19.6, 0.37, 0.01), strict=True)), "wt%"),
    ("CE5C0400YJFM00505", "bulk_soil", None, None, "XRF",
     dict(zip(_MAJORS, (42.2, 5.0, 10.8, 22.5, 6.5, 11.0, 0.3, 0.2), strict=True)), "wt%"),
    ("CE5C0400YJFM00505-G1", "matrix", None, "1", "EPMA", {"TiO2": 5.6, "FeO": 21.9}, "wt%"),
)  # fmt: skip
_ANALYSIS_COLUMNS: Final = (
    "sample_id", "material_analyzed", "mineral", "spot_id", "technique", "lab", "analyte",
    "value", "unit", "uncertainty", "uncertainty_type", "citation_id",
)  # fmt: skip


def write_demo_drop(folder: Path, *, partner: str) -> list[Path]:
    """A partner drop: ``specimens.csv``, ``analyses.csv`` and the ``manifest.json`` that lists
    them with their SHA-256 (written last, as a partner would)."""
    folder.mkdir(parents=True, exist_ok=True)
    specimens = _write_specimens(folder / "specimens.csv")
    analyses = folder / "analyses.csv"
    analyses.write_bytes(_analyses_csv())
    manifest = {
        "partner": partner,
        "contact": {"name": "Demo laboratory curator", "email": "curator@demo-lab.example"},
        "licence": "CC-BY-4.0",
        "dataset": "lunarchive-demo:2021-01",
        "description": "Synthetic demo drop: specimen records and analyses, not real data.",
        "files": [
            {
                "path": path.name,
                "kind": kind,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            }
            for path, kind in ((specimens, "specimens"), (analyses, "analyses"))
        ],
    }
    target = folder / "manifest.json"
    target.write_bytes((json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return [specimens, analyses, target]


def _analyses_csv() -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_ANALYSIS_COLUMNS)
    for sample, material, mineral, spot, technique, values, unit in DEMO_ANALYSES:
        lab = "Demo laboratory"
        for analyte, value in values.items():
            uncertainty = round(value * 0.02, 4) if unit == "wt%" else round(value * 0.05, 4)
            writer.writerow([
                sample, material, mineral or "", spot or "", technique, lab, analyte,
                repr(value), unit, repr(uncertainty), "1SD", "lunarchive demo (synthetic)",
            ])  # fmt: skip
    return buffer.getvalue().encode("utf-8")

"""A loopback mirror of JAXA DARTS's SELENE/Kaguya PDS3 tree (SOURCES.md §4 and §9.3).

Served under ``/pub/pds3/`` as Apache-style listings (the real DARTS has no index table for
the map data sets), without Range support (DARTS answers 200 with the whole body):

* ``sln-l-mi-5-map-v3.0/lon124/data/MI_MAP_03_N51E124N50E125SC_cropped.img`` + ``.lbl`` —
  the real cropped MI tile from ``fixtures/real``, unmodified (its label's
  ``^GEOMETRIC_DATA_ALTITUDE`` still points at the absent full-size file: a real dangling
  pointer);
* ``sln-l-tc-3-sp-support-level2b0-v1.0/data/TC1S2B0_01_00811N526E0443_mini.*`` — the real
  TC level-2B0 strip (not a map product; the real sub-path is unverified);
* ``sln-l-tc-5-dtm-map-v2.0/lon030/data/DTM_MAP_02_S69E030S72E033SC.img`` + ``.lbl`` —
  **synthetic**: a small int16 MSB tile (heights resampled from the real LDEM_4) with a label
  modelled on the MI label's keywords, marked SYNTHETIC.

Release 2: a new data-set version ``sln-l-tc-5-dtm-map-v3.0/`` holding the same tile as
``DTM_MAP_03_…``; one more tile in ``v2.0/lon030/data/`` (``DTM_MAP_02_S72E030S75E033SC``);
and ``DTM_MAP_02_S69E030S72E033SC`` replaced in place under the same name and version (a new
creation time, one height changed, a later date in the listing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ROOT", "DartsMirror", "build_darts"]

ROOT = "/pub/pds3/"
MI = "sln-l-mi-5-map-v3.0/lon124/data/"
TC = "sln-l-tc-3-sp-support-level2b0-v1.0/data/"
DTM2 = "sln-l-tc-5-dtm-map-v2.0/lon030/data/"
DTM3 = "sln-l-tc-5-dtm-map-v3.0/lon030/data/"
_SIDE = 24  # pixels: 3 degrees at 8 pixels/degree
_RELEASE_2 = 1_780_000_000.0  # the listing date of what release 2 changes


@dataclass(frozen=True)
class DartsMirror:
    files: dict[str, bytes]
    modified: dict[str, float]


def _tile(
    name: str, version: str, north: float, created: str, ldem: bytes, bump: int
) -> tuple[bytes, bytes]:
    """A synthetic DTM label (SELENE keywords, simple cylindrical, 16-bit MSB metres)."""
    south, west = north - 3, 30.0
    resolution = _SIDE / 3
    return (
        f"""/* SYNTHETIC: lunarchive's test mirror (heights from LDEM_4), not a SELENE product */
PDS_VERSION_ID             = PDS3
RECORD_TYPE                = UNDEFINED
FILE_NAME                  = {name}.img
^IMAGE                     = ({name}.img, 1 <BYTES>)
MISSION_NAME               = SELENE
DATA_SET_ID                = SLN-L-TC-5-DTM-MAP-V{version[-1]}.0
DATA_SET_NAME              = "SELENE MOON TC 5 DTM MAP V{version[-1]}.0"
PRODUCT_ID                 = {name}
INSTRUMENT_ID              = TC
INSTRUMENT_NAME            = "TERRAIN CAMERA"
INSTRUMENT_HOST_NAME       = "SELENE MAIN ORBITER"
TARGET_TYPE                = SATELLITE
TARGET_NAME                = MOON
START_TIME                 = UNK
STOP_TIME                  = UNK
PRODUCT_CREATION_TIME      = {created}
PRODUCER_ID                = LISM
PRODUCT_SET_ID             = DTM_MAP
PRODUCT_VERSION_ID         = "{version}"
Object = IMAGE
  LINES                          = {_SIDE}
  LINE_SAMPLES                   = {_SIDE}
  SAMPLE_TYPE                    = MSB_INTEGER
  SAMPLE_BITS                    = 16
  IMAGE_VALUE_TYPE               = HEIGHT
  UNIT                           = m
  SCALING_FACTOR                 = 1.0
  OFFSET                         = 0.0
  INVALID_VALUE                  = -9999
End_Object = IMAGE
Object = IMAGE_MAP_PROJECTION
  MAP_PROJECTION_TYPE          = "SIMPLE CYLINDRICAL"
  COORDINATE_SYSTEM_TYPE       = "BODY-FIXED ROTATING"
  COORDINATE_SYSTEM_NAME       = PLANETOCENTRIC
  A_AXIS_RADIUS                = 1737.4 <km>
  B_AXIS_RADIUS                = 1737.4 <km>
  C_AXIS_RADIUS                = 1737.4 <km>
  POSITIVE_LONGITUDE_DIRECTION = EAST
  CENTER_LATITUDE              = 0.0 <deg>
  CENTER_LONGITUDE             = 0.0 <deg>
  LINE_FIRST_PIXEL             = 1
  LINE_LAST_PIXEL              = {_SIDE}
  SAMPLE_FIRST_PIXEL           = 1
  SAMPLE_LAST_PIXEL            = {_SIDE}
  MAP_PROJECTION_ROTATION      = 0.0 <deg>
  MAP_RESOLUTION               = {resolution} <pixel/deg>
  MAP_SCALE                    = {1737.4 * np.pi / 180 / resolution:.9f} <km/pixel>
  MAXIMUM_LATITUDE             = {north} <deg>
  MINIMUM_LATITUDE             = {south} <deg>
  EASTERNMOST_LONGITUDE        = {west + 3} <deg>
  WESTERNMOST_LONGITUDE        = {west} <deg>
  LINE_PROJECTION_OFFSET       = {north * resolution} <pixel>
  SAMPLE_PROJECTION_OFFSET     = {-west * resolution} <pixel>
End_Object = IMAGE_MAP_PROJECTION
END
""".replace("\n", "\r\n").encode("ascii"),
        _heights(ldem, north, bump),
    )


def _heights(ldem: bytes, north: float, bump: int) -> bytes:
    grid = np.frombuffer(ldem, dtype="<i2").reshape(720, 1440)
    row = int((90 - north) * 4)
    block = grid[row : row + 12, 120:132].astype(np.int32) // 2  # metres above 1737.4 km
    tile = np.kron(block, np.ones((2, 2), dtype=np.int32))
    tile[0, 0] += bump
    return tile.astype(">i2").tobytes()


def build_darts(shared: Path, release: int = 1) -> DartsMirror:
    real = shared / "fixtures" / "real" / "pds3"
    mi = real / "kaguya_mi_map_cropped"
    tc = real / "kaguya_tc_cropped"
    ldem = (real / "lro_lola_ldem_4" / "LDEM_4.IMG").read_bytes()
    files = {
        "00readme.txt": b"SELENE (KAGUYA) data: a loopback mirror of DARTS for lunarchive\r\n",
        **{MI + p.name: p.read_bytes() for p in sorted(mi.iterdir())},
        **{TC + p.name: p.read_bytes() for p in sorted(tc.iterdir())},
    }
    modified: dict[str, float] = {}
    first = "DTM_MAP_02_S69E030S72E033SC"
    created, bump = "2016-03-01T00:00:00", 0
    if release >= 2:
        created, bump = "2026-06-01T00:00:00", 7
        modified = {
            ROOT + DTM2 + first + ".img": _RELEASE_2,
            ROOT + DTM2 + first + ".lbl": _RELEASE_2,
        }
    label, data = _tile(first, "02", -69.0, created, ldem, bump)
    files[DTM2 + first + ".lbl"], files[DTM2 + first + ".img"] = label, data
    if release >= 2:
        second = "DTM_MAP_02_S72E030S75E033SC"
        files[DTM2 + second + ".lbl"], files[DTM2 + second + ".img"] = _tile(
            second, "02", -72.0, "2016-03-01T00:00:00", ldem, 0
        )
        third = "DTM_MAP_03_S69E030S72E033SC"
        files[DTM3 + third + ".lbl"], files[DTM3 + third + ".img"] = _tile(
            third, "03", -69.0, "2026-06-01T00:00:00", ldem, 0
        )
    return DartsMirror({ROOT + name: data for name, data in files.items()}, modified)

"""A loopback mirror of LOLA's PDS3 volume LROLOL_1XXX (SOURCES.md §2 and §9.1).

Lower-case paths under ``/lro/lro-l-lola-3-rdr-v1/lrolol_1xxx/``, as at the PDS Geosciences
Node. ``LDEM_4`` (label, image, JPEG2000 copy and its label) is the real product from
``fixtures/real``, unmodified; ``LDEM_1`` and ``LDEM_2`` are **synthetic**, resampled from it
with labels edited from the real one (marked SYNTHETIC). The index (``rdrindex.lbl`` +
``.tab``) is generated: the four verified columns first, then this mirror's own (marked
synthetic), fixed-width quoted fields, CR LF rows; one row names a ``.LBL`` and one an
``.IMG``, one creation time is a date and another a full timestamp, as the real index mixes
them. Rows for products the registry's filter leaves out (a JP2 copy, an RDR track, a polar
grid) are listed too.

Releases: 1 is the above; 2 replaces ``LDEM_4`` in place with version ``V3.1`` (one DN
flipped, a new creation time) and adds ``LDEM_2``; 3 is release 2 with ``LDEM_1`` withdrawn
from the index (the inventory shrinks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ROOT", "LolaMirror", "build_lola"]

ROOT = "/lro/lro-l-lola-3-rdr-v1/lrolol_1xxx/"
GDR = "data/lola_gdr/cylindrical/img/"
_SYNTHETIC = "/* SYNTHETIC: made by lunarchive's test mirror from LDEM_4, not a LOLA product */\r\n"

# (name, start byte, bytes, quoted); the first four are verified (SOURCES.md §2.3)
_COLUMNS: tuple[tuple[str, int, bool], ...] = (
    ("VOLUME_ID", 12, True),
    ("FILE_SPECIFICATION_NAME", 72, True),
    ("MISSION_PHASE_NAME", 31, True),
    ("TARGET_NAME", 12, True),
    ("DATA_SET_ID", 24, True),
    ("PRODUCT_ID", 30, True),
    ("PRODUCT_VERSION_ID", 6, True),
    ("INSTRUMENT_ID", 6, True),
    ("PRODUCT_TYPE", 8, True),
    ("START_TIME", 19, False),
    ("STOP_TIME", 19, False),
    ("PRODUCT_CREATION_TIME", 19, False),
    ("ORBIT_NUMBER", 6, False),
)


@dataclass(frozen=True)
class LolaMirror:
    files: dict[str, bytes]  # served path → bytes
    products: tuple[str, ...]  # the product ids the lola-gdr registry filter takes

    def path(self, relative: str) -> str:
        return ROOT + relative


def _starts() -> list[tuple[str, int, int, bool]]:
    out, position = [], 1
    for name, size, quoted in _COLUMNS:
        start = position + (1 if quoted else 0)
        out.append((name, start, size, quoted))
        position = start + size + (1 if quoted else 0) + 1  # closing quote, comma
    return out


def _row(values: dict[str, str]) -> bytes:
    fields = []
    for name, size, quoted in _COLUMNS:
        value = values.get(name, "N/A")
        assert len(value) <= size, (name, value)
        fields.append(f'"{value.ljust(size)}"' if quoted else value.rjust(size))
    return (",".join(fields) + "\r\n").encode()


def _data_type(name: str, quoted: bool) -> str:
    if quoted:
        return "CHARACTER"
    return "ASCII_INTEGER" if name == "ORBIT_NUMBER" else "TIME"


def _index_label(rows: int) -> bytes:
    row_bytes = len(_row({}))
    columns = "".join(
        f"  OBJECT = COLUMN\r\n    COLUMN_NUMBER = {n}\r\n    NAME = {name}\r\n"
        f"    DATA_TYPE = {_data_type(name, quoted)}\r\n"
        f"    START_BYTE = {start}\r\n    BYTES = {size}\r\n"
        + ('    DESCRIPTION = "SYNTHETIC column of lunarchive\'s mirror"\r\n' if n > 4 else "")
        + "  END_OBJECT = COLUMN\r\n"
        for n, (name, start, size, quoted) in enumerate(_starts(), start=1)
    )
    text = (
        "PDS_VERSION_ID = PDS3\r\n"
        "RECORD_TYPE    = FIXED_LENGTH\r\n"
        f"RECORD_BYTES   = {row_bytes}\r\n"
        f"FILE_RECORDS   = {rows}\r\n"
        '^INDEX_TABLE   = "RDRINDEX.TAB"\r\n'
        "VOLUME_ID      = LROLOL_1XXX\r\n"
        'DATA_SET_ID    = {"LRO-L-LOLA-3-RDR-V1.0", "LRO-L-LOLA-4-GDR-V1.0", '
        '"LRO-L-LOLA-5-SHADR-V1.0", "LRO-L-LOLA-3-RADR-V1.0"}\r\n'
        "OBJECT = INDEX_TABLE\r\n"
        "  INDEX_TYPE = SINGLE\r\n  INTERCHANGE_FORMAT = ASCII\r\n"
        f"  ROWS = {rows}\r\n  ROW_BYTES = {row_bytes}\r\n  COLUMNS = {len(_COLUMNS)}\r\n"
        '  DESCRIPTION = "comma delimited data columns followed by an ASCII carriage-return '
        'and line-feed."\r\n'
        f"{columns}"
        "END_OBJECT = INDEX_TABLE\r\nEND\r\n"
    )
    return text.encode()


def _resampled(label: str, image: bytes, factor: int, product: str) -> tuple[bytes, bytes]:
    """A synthetic LDEM at 4/factor pixels per degree, with a label edited from LDEM_4's."""
    grid = np.frombuffer(image, dtype="<i2").reshape(720, 1440)[::factor, ::factor]
    lines, samples = grid.shape
    edits = {
        '"LDEM_4"': f'"{product}"',
        '"LDEM_4.IMG"': f'"{product}.IMG"',
        "FILE_RECORDS              = 720": f"FILE_RECORDS              = {lines}",
        "RECORD_BYTES              = 2880": f"RECORD_BYTES              = {samples * 2}",
        "LINES                 = 720": f"LINES                 = {lines}",
        "LINE_SAMPLES          = 1440": f"LINE_SAMPLES          = {samples}",
        "MAP_RESOLUTION               = 4 <pix/deg>": (
            f"MAP_RESOLUTION               = {4 // factor} <pix/deg>"
        ),
        "MAP_SCALE                    = 7580.84 <m/pix>": (
            f"MAP_SCALE                    = {7580.84 * factor:.2f} <m/pix>"
        ),
        "LINE_LAST_PIXEL              = 720": f"LINE_LAST_PIXEL              = {lines}",
        "SAMPLE_LAST_PIXEL            = 1440": f"SAMPLE_LAST_PIXEL            = {samples}",
        "LINE_PROJECTION_OFFSET       = 359.5": (
            f"LINE_PROJECTION_OFFSET       = {lines / 2 - 0.5}"
        ),
        "SAMPLE_PROJECTION_OFFSET     = 719.5": (
            f"SAMPLE_PROJECTION_OFFSET     = {samples / 2 - 0.5}"
        ),
    }
    for old, new in edits.items():
        assert old in label, old
        label = label.replace(old, new)
    return (_SYNTHETIC + label).encode("latin-1"), grid.astype("<i2").tobytes()


def _gdr_row(path: str, product: str, version: str, created: str) -> dict[str, str]:
    return {
        "VOLUME_ID": "LROLOL_1XXX",
        "FILE_SPECIFICATION_NAME": path,
        "MISSION_PHASE_NAME": "SCIENCE MISSION",
        "TARGET_NAME": "MOON",
        "DATA_SET_ID": "LRO-L-LOLA-4-GDR-V1.0",
        "PRODUCT_ID": product,
        "PRODUCT_VERSION_ID": version,
        "INSTRUMENT_ID": "LOLA",
        "PRODUCT_TYPE": "GDR",
        "START_TIME": "2009-07-13T17:33:17",
        "STOP_TIME": "2016-11-29T05:48:19",
        "PRODUCT_CREATION_TIME": created,
        "ORBIT_NUMBER": "N/A",
    }


def build_lola(shared: Path, release: int = 1) -> LolaMirror:
    """The mirror's files for ``release`` 1, 2 or 3 (see the module docstring)."""
    real = shared / "fixtures" / "real" / "pds3" / "lro_lola_ldem_4"
    label = (real / "LDEM_4.LBL").read_bytes()
    image = (real / "LDEM_4.IMG").read_bytes()
    text = label.decode("latin-1")
    ldem1 = _resampled(text, image, 4, "LDEM_1")
    ldem2 = _resampled(text, image, 2, "LDEM_2")
    version, created = "V3.0", "2017-09-15"
    if release >= 2:
        version, created = "V3.1", "2026-06-01T00:00:00"
        label = label.replace(b'"V3.0"', b'"V3.1"').replace(
            b"PRODUCT_CREATION_TIME     = 2017-09-15",
            f"PRODUCT_CREATION_TIME     = {created}".encode(),
        )
        flipped = bytearray(image)
        flipped[1000] ^= 0x01
        image = bytes(flipped)
    files = {
        "aareadme.txt": b"LROLOL_1XXX: a loopback mirror of the LOLA volume (lunarchive tests)\r\n",
        "voldesc.cat": (
            b"PDS_VERSION_ID = PDS3\r\nOBJECT = VOLUME\r\n  VOLUME_ID = LROLOL_1XXX\r\n"
            b"END_OBJECT = VOLUME\r\nEND\r\n"
        ),
        GDR + "ldem_4.lbl": label,
        GDR + "ldem_4.img": image,
        "data/lola_gdr/cylindrical/jp2/ldem_4_jp2.lbl": (real / "LDEM_4_JP2.LBL").read_bytes(),
        "data/lola_gdr/cylindrical/jp2/ldem_4.jp2": (real / "LDEM_4.JP2").read_bytes(),
        GDR + "ldem_1.lbl": ldem1[0],
        GDR + "ldem_1.img": ldem1[1],
    }
    rows = [
        {
            **_gdr_row(
                "DATA/LOLA_RDR/LRO_NO_01/LOLARDR_091840003.DAT",
                "LOLARDR_091840003",
                "V1.0",
                "2010-06-15",
            ),
            "DATA_SET_ID": "LRO-L-LOLA-3-RDR-V1.0",
            "PRODUCT_TYPE": "RDR",
            "MISSION_PHASE_NAME": "COMMISSIONING",
            "ORBIT_NUMBER": "00370",
        },
        _gdr_row(
            "DATA/LOLA_GDR/CYLINDRICAL/IMG/LDEM_1.IMG", "LDEM_1", "V3.0", "2017-09-15T00:00:00"
        ),
        _gdr_row("DATA/LOLA_GDR/CYLINDRICAL/IMG/LDEM_4.LBL", "LDEM_4", version, created),
        _gdr_row("DATA/LOLA_GDR/CYLINDRICAL/JP2/LDEM_4_JP2.LBL", "LDEM_4", "V3.0", "2017-09-15"),
        _gdr_row("DATA/LOLA_GDR/POLAR/IMG/LDEM_85S_40M.LBL", "LDEM_85S_40M", "V3.0", "2017-09-15"),
    ]
    products = ["LDEM_1", "LDEM_4"]
    if release >= 2:
        files[GDR + "ldem_2.lbl"], files[GDR + "ldem_2.img"] = ldem2
        rows.append(
            _gdr_row(
                "DATA/LOLA_GDR/CYLINDRICAL/IMG/LDEM_2.LBL", "LDEM_2", "V3.0", "2026-06-01T00:00:00"
            )
        )
        products.append("LDEM_2")
    if release >= 3:
        rows = [row for row in rows if row["PRODUCT_ID"] != "LDEM_1"]
        products.remove("LDEM_1")
    files["index/rdrindex.tab"] = b"".join(_row(row) for row in rows)
    files["index/rdrindex.lbl"] = _index_label(len(rows))
    return LolaMirror({ROOT + name: data for name, data in files.items()}, tuple(sorted(products)))

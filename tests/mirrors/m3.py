"""A loopback mirror of the Chandrayaan-1 M3 PDS4 bundle ``urn:nasa:pds:ch1_m3`` (SOURCES.md §9.4).

The bundle root's real host path is unverified; like SOURCES.md we use
``/img/data/pds4/ch1_m3/``. Its ``document`` collection holds:

* ``m3t20070912_rdn_spc`` — the real label and table from ``fixtures/real``, unmodified (no
  ``md5_checksum``, no ``file_size``: the harvester's "compute your own" path);
* ``m3g20081211_rdn_spc`` — **synthetic**: the same table under a label edited from the real
  one that declares ``file_size`` and ``md5_checksum`` (marked with a synthetic comment).

``collection_document.xml`` is a synthetic ``Product_Collection`` whose ``File_Area_Inventory``
names ``collection_document_inventory.csv``: CR LF lines, ``P,<LIDVID>`` members, one
``S`` secondary member and one member the registry's filter leaves out.

Release 2 publishes ``m3t20070912_rdn_spc`` version 1.1 (a new label with a
``Modification_Detail`` and one changed table value, beside the 1.0 files that stay on
disk) in collection version 1.1, whose inventory lists ``::1.1``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ROOT", "M3Mirror", "build_m3"]

ROOT = "/img/data/pds4/ch1_m3/"
CALIB = "document/calibration/"
_PDS = "http://pds.nasa.gov/pds4/pds/v1"
REAL = "urn:nasa:pds:ch1_m3:document:m3t20070912_rdn_spc"
SYNTHETIC = "urn:nasa:pds:ch1_m3:document:m3g20081211_rdn_spc"


@dataclass(frozen=True)
class M3Mirror:
    files: dict[str, bytes]
    products: tuple[str, ...]  # the LIDs the m3 registry filter takes

    def path(self, relative: str) -> str:
        return ROOT + relative


def _edit(text: str, edits: dict[str, str]) -> str:
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def _collection(version: str, records: int) -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Product_Collection xmlns="{_PDS}">
  <Identification_Area>
    <logical_identifier>urn:nasa:pds:ch1_m3:document</logical_identifier>
    <version_id>{version}</version_id>
    <title>Chandrayaan-1 M3 Document Collection (SYNTHETIC label of lunarchive's mirror)</title>
    <information_model_version>1.15.0.0</information_model_version>
    <product_class>Product_Collection</product_class>
  </Identification_Area>
  <Collection><collection_type>Document</collection_type></Collection>
  <File_Area_Inventory>
    <File><file_name>collection_document_inventory.csv</file_name></File>
    <Inventory>
      <offset unit="byte">0</offset>
      <parsing_standard_id>PDS DSV 1</parsing_standard_id>
      <records>{records}</records>
      <record_delimiter>Carriage-Return Line-Feed</record_delimiter>
      <field_delimiter>Comma</field_delimiter>
      <Record_Delimited>
        <fields>2</fields>
        <groups>0</groups>
        <Field_Delimited><name>Member Status</name><field_number>1</field_number>
          <data_type>ASCII_String</data_type>
          <maximum_field_length unit="byte">1</maximum_field_length></Field_Delimited>
        <Field_Delimited><name>LIDVID_LID</name><field_number>2</field_number>
          <data_type>ASCII_LIDVID_LID</data_type>
          <maximum_field_length unit="byte">255</maximum_field_length></Field_Delimited>
      </Record_Delimited>
      <reference_type>inventory_has_member_product</reference_type>
    </Inventory>
  </File_Area_Inventory>
</Product_Collection>
""".encode()


def _bundle() -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Product_Bundle xmlns="{_PDS}">
  <Identification_Area>
    <logical_identifier>urn:nasa:pds:ch1_m3</logical_identifier>
    <version_id>1.0</version_id>
    <title>Chandrayaan-1 M3 bundle (SYNTHETIC label of lunarchive's mirror)</title>
    <information_model_version>1.15.0.0</information_model_version>
    <product_class>Product_Bundle</product_class>
  </Identification_Area>
  <Bundle><bundle_type>Archive</bundle_type></Bundle>
  <Bundle_Member_Entry>
    <lid_reference>urn:nasa:pds:ch1_m3:document</lid_reference>
    <member_status>Primary</member_status>
    <reference_type>bundle_has_document_collection</reference_type>
  </Bundle_Member_Entry>
</Product_Bundle>
""".encode()


def synthetic_product(label: str, table: bytes) -> tuple[bytes, bytes]:
    """``m3g20081211_rdn_spc``: the real table under a label declaring its size and md5."""
    md5 = hashlib.md5(table, usedforsecurity=False).hexdigest()
    text = _edit(
        label.replace("m3t20070912_rdn_spc", "m3g20081211_rdn_spc"),
        {
            "<creation_date_time>2008-07-22T20:23:47Z</creation_date_time>": (
                "<creation_date_time>2008-07-22T20:23:47Z</creation_date_time>\n"
                f'\t\t\t<file_size unit="byte">{len(table)}</file_size>'
            ),
            "<records>260</records>\n\t\t</File>": (
                f"<records>260</records>\n\t\t\t<md5_checksum>{md5}</md5_checksum>\n"
                "\t\t\t<comment>SYNTHETIC: lunarchive's mirror, edited from "
                "m3t20070912_rdn_spc</comment>\n\t\t</File>"
            ),
        },
    )
    return text.encode(), table


def _version_1_1(label: str, table: bytes) -> tuple[bytes, bytes]:
    text = _edit(
        label,
        {
            "<version_id>1.0</version_id>": "<version_id>1.1</version_id>",
            "<file_name>m3t20070912_rdn_spc.tab</file_name>": (
                "<file_name>m3t20070912_rdn_spc_1_1.tab</file_name>"
            ),
            "\t</Identification_Area>": (
                "\t\t<Modification_History><Modification_Detail>"
                "<modification_date>2026-06-01</modification_date><version_id>1.1</version_id>"
                "<description>SYNTHETIC: channel 1 centre corrected (lunarchive's mirror)"
                "</description></Modification_Detail></Modification_History>\n"
                "\t</Identification_Area>"
            ),
        },
    )
    assert table.startswith(b"001     0404.20")
    return text.encode(), table.replace(b"0404.20", b"0404.21", 1)


def build_m3(shared: Path, release: int = 1) -> M3Mirror:
    real = shared / "fixtures" / "real" / "pds4" / "m3_spectral_calibration"
    label = (real / "m3t20070912_rdn_spc.xml").read_bytes()
    table = (real / "m3t20070912_rdn_spc.tab").read_bytes()
    synthetic = synthetic_product(label.decode(), table)
    members = [
        f"P,{REAL}::1.0",
        f"P,{SYNTHETIC}::1.0",
        "P,urn:nasa:pds:ch1_m3:document:m3_archive_sis::1.0",
        "S,urn:nasa:pds:context:instrument:m3.ch1-orb::1.0",
    ]
    files = {
        "readme.txt": b"urn:nasa:pds:ch1_m3 - a loopback mirror for lunarchive's tests.\r\n",
        "bundle_ch1_m3.xml": _bundle(),
        CALIB + "m3t20070912_rdn_spc.xml": label,
        CALIB + "m3t20070912_rdn_spc.tab": table,
        CALIB + "m3g20081211_rdn_spc.xml": synthetic[0],
        CALIB + "m3g20081211_rdn_spc.tab": synthetic[1],
    }
    version = "1.0"
    if release >= 2:
        version = "1.1"
        newer = _version_1_1(label.decode(), table)
        (
            files[CALIB + "m3t20070912_rdn_spc_1_1.xml"],
            files[CALIB + "m3t20070912_rdn_spc_1_1.tab"],
        ) = newer
        members[0] = f"P,{REAL}::1.1"
    files["document/collection_document.xml"] = _collection(version, len(members))
    files["document/collection_document_inventory.csv"] = "".join(
        m + "\r\n" for m in members
    ).encode()
    return M3Mirror({ROOT + name: data for name, data in files.items()}, (SYNTHETIC, REAL))

"""One entry point for every format, and the same product in three formats read alike."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyproj
import pytest

from lunarchive.processing.crs import MOON_RADIUS_M
from lunarchive.processing.products import read_product
from lunarchive.schemas.errors import ProductRejected
from lunarchive.schemas.product import ProductRecord

CLI = str(Path(sys.executable).with_name("lunarchive"))


def projection_parameters(wkt: str) -> dict[str, float | str]:
    """What defines the CRS, whatever its names: method, sphere and parameters."""
    with pytest.warns(UserWarning, match="PROJ string"):  # to_dict() warns that it is lossy
        params = pyproj.CRS.from_wkt(wkt).to_dict()
    defaults: dict[str, float | str] = {"lat_0": 0.0, "lat_ts": 0.0, "x_0": 0.0, "y_0": 0.0}
    wanted = ("proj", "lon_0", "lat_0", "lat_ts", "x_0", "y_0")
    radius = params.get("R", params.get("a"))
    return {key: params.get(key, defaults.get(key, "")) for key in wanted} | {"R": radius}


@pytest.fixture(scope="module")
def ldem_4_forms(shared: Path) -> dict[str, ProductRecord]:
    real = shared / "fixtures" / "real"
    return {
        "PDS3": read_product(real / "pds3" / "lro_lola_ldem_4" / "LDEM_4.LBL"),
        "PDS4": read_product(real / "derived" / "ldem_4_pds4.xml"),
        "ISIS3": read_product(real / "isis3" / "ldem_4_reduced.cub"),
    }


def test_ldem_4_has_one_footprint_and_one_crs_in_pds3_pds4_and_isis3(
    ldem_4_forms: dict[str, ProductRecord],
) -> None:
    assert {form: r.format for form, r in ldem_4_forms.items()} == {
        "PDS3": "PDS3", "PDS4": "PDS4", "ISIS3": "ISIS3",
    }  # fmt: skip
    reference = ldem_4_forms["PDS3"]
    assert reference.crs is not None
    assert reference.footprint is not None
    for form, record in ldem_4_forms.items():
        assert record.crs is not None, form
        assert record.footprint is not None, form
        assert projection_parameters(record.crs.wkt2) == projection_parameters(
            reference.crs.wkt2
        ), form
        assert record.crs.radius_m == MOON_RADIUS_M, form
        assert record.crs.code == "IAU_2015:30115", form  # equirectangular, lon_0 = 180
        assert record.footprint.bbox == pytest.approx((-180.0, -90.0, 180.0, 90.0)), form
    # PDS3 and PDS4 hold the same 1440 x 720 grid at 4 pixels per degree (7580.84 m)
    for form in ("PDS3", "PDS4"):
        (array,) = ldem_4_forms[form].arrays
        assert (array.shape[-2], array.shape[-1]) == (720, 1440), form
        assert array.dtype == "int16"
        assert array.scale == 0.5
        resolution = ldem_4_forms[form].resolution_m
        assert resolution == pytest.approx(2 * 3.141592653589793 * MOON_RADIUS_M / 1440)


def test_a_data_file_is_read_through_the_label_beside_it(shared: Path) -> None:
    folder = shared / "fixtures" / "real" / "pds3" / "lro_lola_ldem_4"
    through_data = read_product(folder / "LDEM_4.IMG")
    through_label = read_product(folder / "LDEM_4.LBL")
    assert through_data == through_label
    assert through_data.label_file == "LDEM_4.LBL"


def test_a_file_without_a_label_is_refused_by_name(tmp_path: Path) -> None:
    stray = tmp_path / "mystery.dat"
    stray.write_bytes(b"\x00" * 128)
    with pytest.raises(ProductRejected, match=r"mystery\.dat: no label found"):
        read_product(stray)


def test_inspect_prints_the_record_as_json(shared: Path) -> None:
    label = shared / "fixtures" / "real" / "derived" / "ldem_4_pds4.xml"
    done = subprocess.run([CLI, "inspect", str(label), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["format"] == "PDS4"
    assert record["crs"]["code"] == "IAU_2015:30115"
    assert record["arrays"][0]["shape"] == [1, 720, 1440]
    assert "label_text" not in record
    readable = subprocess.run([CLI, "inspect", str(label)], capture_output=True, text=True)
    assert readable.returncode == 0
    assert "IAU_2015:30115" in readable.stdout


def test_inspect_refuses_a_hostile_label_in_one_line(tmp_path: Path) -> None:
    label = tmp_path / "evil.xml"
    label.write_text(
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        '<Product_Observational xmlns="http://pds.nasa.gov/pds4/pds/v1">&e;'
        "</Product_Observational>"
    )
    done = subprocess.run([CLI, "inspect", str(label)], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: ")
    assert "evil.xml" in done.stderr
    assert "root:" not in done.stderr + done.stdout  # nothing of /etc/passwd leaks

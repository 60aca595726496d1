"""Hostile PDS4 labels: XML attacks (R10), path traversal (R11), malformed arrays (R13).

Every hostile label must end in :class:`ProductRejected` naming the label, quickly, without
a single request to the loopback canary and without allocating what the label declares.
"""

from __future__ import annotations

import http.server
import math
import re
import tempfile
import threading
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lunarchive.processing.labels import read_label_bytes
from lunarchive.processing.pds4 import read_pds4
from lunarchive.schemas.errors import ProductRejected

pytestmark = pytest.mark.timeout(60)

_NAMESPACES = (
    'xmlns="http://pds.nasa.gov/pds4/pds/v1" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
)


def _array(*, offset: str = "0", elements: tuple[str, ...] = ("4", "8"), axes: str | None = None,
           data_type: str = "SignedMSB2") -> str:  # fmt: skip
    axis_arrays = "".join(
        f"<Axis_Array><axis_name>A{i}</axis_name><elements>{n}</elements>"
        f"<sequence_number>{i + 1}</sequence_number></Axis_Array>"
        for i, n in enumerate(elements)
    )
    return (
        f"<Array><offset unit='byte'>{offset}</offset><axes>{axes or len(elements)}</axes>"
        "<axis_index_order>Last Index Fastest</axis_index_order>"
        f"<Element_Array><data_type>{data_type}</data_type></Element_Array>{axis_arrays}</Array>"
    )


def _label(*, file_name: str = "data.img", body: str | None = None, prolog: str = "",
            attributes: str = "", title: str = "t") -> str:  # fmt: skip
    """A small, valid PDS4 label (a 4 x 8 int16 array) with the given hostile parts."""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>{prolog}'
        f"<Product_Observational {_NAMESPACES} {attributes}>"
        "<Identification_Area><logical_identifier>urn:nasa:pds:test:data:x</logical_identifier>"
        f"<version_id>1.0</version_id><title>{title}</title>"
        "<product_class>Product_Observational</product_class></Identification_Area>"
        "<Observation_Area><Time_Coordinates><start_date_time>2020-01-01T00:00:00Z"
        "</start_date_time><stop_date_time>2020-01-02T00:00:00Z</stop_date_time>"
        "</Time_Coordinates></Observation_Area>"
        f"<File_Area_Observational><File><file_name>{file_name}</file_name></File>"
        f"{_array() if body is None else body}</File_Area_Observational>"
        "</Product_Observational>"
    )


def _write(folder: Path, label: str, *, data_bytes: int = 64, encoding: str = "utf-8") -> Path:
    (folder / "data.img").write_bytes(bytes(data_bytes))
    path = folder / "x.xml"
    path.write_bytes(label.encode(encoding))
    return path


@dataclass
class Canary:
    url: str
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def canary() -> Iterator[Canary]:
    """A loopback HTTP server that records every request made to it."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            body = b'<!ENTITY x "leak">'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Canary(f"http://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_valid_template_is_read(tmp_path: Path) -> None:
    """The base label is valid: each hostile variant below differs from it in one part."""
    record = read_pds4(_write(tmp_path, _label()))
    assert record.product_id == "urn:nasa:pds:test:data:x"
    (array,) = record.arrays
    assert (array.shape, array.dtype, array.byte_order) == ((4, 8), "int16", "big")


# --- R10: XML attacks --------------------------------------------------------------------


def test_external_entity_to_a_local_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("SENTINEL-7f3a")
    prolog = f'<!DOCTYPE Product_Observational [<!ENTITY xxe SYSTEM "{secret.as_uri()}">]>'
    path = _write(tmp_path, _label(prolog=prolog, title="&xxe;"))
    with pytest.raises(ProductRejected, match=r"x\.xml: DOCTYPE.*rule") as caught:
        read_pds4(path)
    assert "SENTINEL" not in str(caught.value)


def test_external_entity_to_the_canary_is_refused_without_a_request(
    tmp_path: Path, canary: Canary
) -> None:
    prolog = f'<!DOCTYPE Product_Observational [<!ENTITY xxe SYSTEM "{canary.url}/xxe">]>'
    path = _write(tmp_path, _label(prolog=prolog, title="&xxe;"))
    with pytest.raises(ProductRejected, match=r"x\.xml: DOCTYPE"):
        read_pds4(path)
    assert canary.requests == []


def test_parameter_entity_to_the_canary_is_refused_without_a_request(
    tmp_path: Path, canary: Canary
) -> None:
    prolog = f'<!DOCTYPE Product_Observational [<!ENTITY % p SYSTEM "{canary.url}/dtd"> %p;]>'
    path = _write(tmp_path, _label(prolog=prolog))
    with pytest.raises(ProductRejected, match=r"x\.xml: DOCTYPE"):
        read_pds4(path)
    assert canary.requests == []


def test_utf16_doctype_is_refused_by_the_parsed_tree_check(tmp_path: Path, canary: Canary) -> None:
    """A UTF-16 label slips past the byte scan; the parsed DOCTYPE still refuses it."""
    prolog = f'<!DOCTYPE Product_Observational SYSTEM "{canary.url}/external.dtd">'
    label = _label(prolog=prolog).replace('encoding="UTF-8"', 'encoding="UTF-16"')
    path = _write(tmp_path, label, encoding="utf-16")
    with pytest.raises(ProductRejected, match=r"x\.xml: DOCTYPE"):
        read_pds4(path)
    assert canary.requests == []


def test_billion_laughs_is_refused(tmp_path: Path) -> None:
    levels = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)
    ]
    prolog = f"<!DOCTYPE Product_Observational [{''.join(levels)}]>"
    path = _write(tmp_path, _label(prolog=prolog, title="&lol9;"))
    with pytest.raises(ProductRejected, match=r"x\.xml: DOCTYPE"):
        read_pds4(path)


def test_plain_doctype_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, _label(prolog="<!DOCTYPE Product_Observational>"))
    with pytest.raises(ProductRejected, match=r"x\.xml: DOCTYPE.*DTDs and entities are refused"):
        read_pds4(path)


def test_remote_schema_location_and_xinclude_are_never_fetched(
    tmp_path: Path, canary: Canary
) -> None:
    attributes = (
        f'xsi:schemaLocation="http://pds.nasa.gov/pds4/pds/v1 {canary.url}/PDS4_PDS.xsd" '
        'xmlns:xi="http://www.w3.org/2001/XInclude"'
    )
    prolog = f'<?xml-model href="{canary.url}/rules.sch" schematypens="http://purl.oclc.org/dsdl/schematron"?>'
    title = f'<xi:include href="{canary.url}/include.xml" parse="text"/>'
    path = _write(tmp_path, _label(attributes=attributes, prolog=prolog, title=title))
    record = read_pds4(path)
    assert record.product_id == "urn:nasa:pds:test:data:x"
    assert canary.requests == []


def test_oversized_label_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.xml"
    path.write_bytes(b"<a>" + b" " * (16 * 1024 * 1024) + b"</a>")
    with pytest.raises(ProductRejected, match=r"big\.xml: label is over the 16777216-byte limit"):
        read_pds4(path)
    with pytest.raises(ProductRejected, match="over the 100-byte limit"):
        read_label_bytes(_write(tmp_path, _label()), max_bytes=100)


def test_deeply_nested_label_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, _label(title="<a>" * 100_000 + "</a>" * 100_000))
    with pytest.raises(ProductRejected, match=r"x\.xml: not well-formed XML"):
        read_pds4(path)


def test_malformed_xml_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, _label()[:-10])
    with pytest.raises(ProductRejected, match=r"x\.xml: not well-formed XML"):
        read_pds4(path)


# --- R11: path traversal in file_name ----------------------------------------------------

_TRAVERSALS = [
    "../x",
    "/etc/x",
    "%2e%2e/x",
    "%2e%2e%2fx",
    "..\\x",
    "..",
    ".",
    "...",
    "sub/data.img",
    "C:\\x",
    "~/x",
    " ../x",
    "data.img/",
    "",
    "-rf",
]


@pytest.mark.parametrize("name", _TRAVERSALS)
def test_traversal_file_names_are_refused(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, _label(file_name=name.replace("&", "&amp;")))
    with pytest.raises(
        ProductRejected, match=r"x\.xml, File_Area_Observational/File/file_name: .*rule"
    ) as caught:
        read_pds4(path)
    assert repr(name) in str(caught.value) or name.strip() == ""


def test_nul_in_file_name_is_refused(tmp_path: Path) -> None:
    """A raw NUL is not XML at all; a character reference to NUL is not XML either."""
    for name in ("data\x00.img", "data&#0;.img"):
        path = _write(tmp_path, _label(file_name=name))
        with pytest.raises(ProductRejected, match=r"x\.xml: not well-formed XML"):
            read_pds4(path)


def test_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target.img").write_bytes(bytes(64))
    folder = tmp_path / "product"
    folder.mkdir()
    (folder / "link.img").symlink_to(outside / "target.img")
    path = _write(folder, _label(file_name="link.img"))
    with pytest.raises(ProductRejected, match=r"'link\.img' resolves outside the label's folder"):
        read_pds4(path)


# --- R13: malformed array descriptions ----------------------------------------------------


def test_offset_past_the_end_of_the_file_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, _label(body=_array(offset="1")), data_bytes=64)
    with pytest.raises(
        ProductRejected,
        match=r"x\.xml, File_Area_Observational/Array: array ends at byte 65 but data\.img "
        r"has 64 bytes \(rule: a declared array must lie inside its file\)",
    ):
        read_pds4(path)


def test_declared_file_size_must_match_the_file(tmp_path: Path) -> None:
    label = _label().replace(
        "<file_name>data.img</file_name>",
        "<file_name>data.img</file_name><file_size unit='byte'>65</file_size>",
    )
    with pytest.raises(
        ProductRejected, match=r"file_size: data\.img has 64 bytes, the label declares 65"
    ):
        read_pds4(_write(tmp_path, label))


def test_bad_checksum_is_a_product_rejection(tmp_path: Path) -> None:
    label = _label().replace(
        "<file_name>data.img</file_name>",
        "<file_name>data.img</file_name><md5_checksum>not-an-md5</md5_checksum>",
    )
    with pytest.raises(ProductRejected, match=r"x\.xml: .*md5.*rule"):
        read_pds4(_write(tmp_path, label))


def test_table_past_the_end_of_the_file_is_refused(tmp_path: Path) -> None:
    table = (
        "<Table_Binary><offset unit='byte'>0</offset><records>9</records><Record_Binary>"
        "<fields>1</fields><groups>0</groups><record_length unit='byte'>8</record_length>"
        "<Field_Binary><name>F</name></Field_Binary></Record_Binary></Table_Binary>"
    )
    with pytest.raises(ProductRejected, match=r"table ends at byte 72 but data\.img has 64 bytes"):
        read_pds4(_write(tmp_path, _label(body=table)))


_ABSURD = st.one_of(
    st.integers(min_value=-3, max_value=12),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**31, 2**32 + 1, 2**63, 10**29]),
)
_TEXT = st.one_of(_ABSURD.map(str), st.sampled_from(["", "abc", "1e3", "1.5", "0x10", "９", "-0"]))
_TYPES = {"UnsignedByte": 1, "SignedMSB2": 2, "IEEE754LSBSingle": 4, "IEEE754MSBDouble": 8}


def _as_int(text: str) -> int | None:
    return int(text) if re.fullmatch(r"[+-]?[0-9]+", text) else None


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    elements=st.lists(_TEXT, min_size=1, max_size=4),
    offset=_TEXT,
    data_type=st.sampled_from(sorted(_TYPES)),
    data_bytes=st.integers(min_value=0, max_value=4096),
)
def test_array_descriptions_are_refused_before_allocation(
    elements: list[str], offset: str, data_type: str, data_bytes: int
) -> None:
    sizes = [_as_int(text) for text in elements]
    start = _as_int(offset)
    valid = (
        start is not None
        and start >= 0
        and all(n is not None and n >= 1 for n in sizes)
        and start + math.prod(n or 0 for n in sizes) * _TYPES[data_type] <= data_bytes
    )
    with tempfile.TemporaryDirectory() as folder:
        body = _array(offset=offset, elements=tuple(elements), data_type=data_type)
        path = _write(Path(folder), _label(body=body), data_bytes=data_bytes)
        tracemalloc.start()
        try:
            if valid:
                (array,) = read_pds4(path).arrays
                assert array.shape == tuple(sizes)
            else:
                with pytest.raises(ProductRejected, match=r"x\.xml, File_Area_Observational/Array"):
                    read_pds4(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 32 * 1024 * 1024  # the label is read; what it declares is never allocated


@settings(max_examples=50, deadline=None)
@given(declared=st.integers(min_value=-5, max_value=10), given_axes=st.integers(1, 4))
def test_axis_count_must_match_the_axis_arrays(declared: int, given_axes: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        body = _array(elements=("1",) * given_axes, axes=str(declared))
        path = _write(Path(folder), _label(body=body))
        if declared == given_axes:
            assert read_pds4(path).arrays[0].shape == (1,) * given_axes
        else:
            with pytest.raises(ProductRejected, match=r"File_Area_Observational/Array.*axes"):
                read_pds4(path)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (_array(data_type="SignedMSB3"), "'SignedMSB3' is not a PDS4 array data type"),
        (_array(elements=("1", "2", "3")).replace("Last Index Fastest", "First Index Fastest"),
         "rule: PDS4 arrays are 'Last Index Fastest'"),
        (_array().replace("<Element_Array><data_type>SignedMSB2</data_type></Element_Array>", ""),
         "Element_Array: missing"),
        (_array().replace("<sequence_number>1<", "<sequence_number>x<"),
         "sequence_number: 'x' is not an integer"),
    ],
)  # fmt: skip
def test_malformed_array_elements_are_refused(tmp_path: Path, array: str, message: str) -> None:
    with pytest.raises(ProductRejected, match=re.escape(message)):
        read_pds4(_write(tmp_path, _label(body=array)))

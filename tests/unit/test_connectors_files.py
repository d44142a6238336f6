"""The csv, excel and json connectors: shapes, forgiving equality, the parse cache."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
import sys
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO

import openpyxl
import pytest
from pydantic import ValidationError

from connectors.base import (
    Bound,
    ConfigError,
    ConnectionSettings,
    Limits,
    SourceError,
    SourceUnavailable,
)
from connectors.files import (
    CSVConnector,
    CSVSettings,
    ExcelConnector,
    FileSettings,
    JSONConnector,
    TabularFileConnector,
)
from connectors.registry import load
from connectors.testing import RawQuery
from tests.support.connectors import ConnectorFactory, ContractCase
from tests.support.connectors import read_rows as read
from worker.errors import ConnectorMissing

HEADER = ["sku", "name", "qty", "price", "restock"]
PRODUCTS: list[list[Any]] = [
    [12345, "Widget", 3, 9.5, dt.datetime(2024, 9, 12)],  # noqa: DTZ001 - as Excel has it
    ["A-1", "Gadget", 0, 12.0, None],
    ["a-1", "gadget (small)", 1, 1.25, None],
    [777.0, "Sprocket", 2, 3.0, None],
    ["TRUE", "Flag", 1, 1.0, None],
]
KINDS = ["csv", "excel", "json"]
CONNECTORS: dict[str, type[TabularFileConnector[Any]]] = {
    "csv": CSVConnector,
    "excel": ExcelConnector,
    "json": JSONConnector,
}
FILES = {"csv": "stock.csv", "excel": "stock.xlsx", "json": "stock.json"}
#: a query on the products in each kind's file, plus a filter
WHERE: dict[str, dict[str, Any]] = {
    "csv": {},
    "excel": {"sheet": "Stock"},
    "json": {"items": "data.products"},
}
BY_SKU = {"sku": "{sku}"}

MakeConnector = Callable[..., TabularFileConnector[Any]]


def cell_text(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


def write_csv(path: Path, rows: list[list[Any]], *, delimiter: str = ",", **kw: Any) -> None:
    with path.open("w", newline="", **kw) as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(HEADER)
        writer.writerows([[cell_text(v) for v in row] for row in rows])


def write_xlsx(path: Path, rows: list[list[Any]]) -> None:
    workbook = openpyxl.Workbook()
    notes = workbook.active
    assert notes is not None
    notes.title = "Notes"
    notes.append(["not the stock"])
    stock = workbook.create_sheet("Stock")
    stock.append(HEADER)
    for row in rows:
        stock.append(row)
    workbook.save(path)
    workbook.close()


def write_json(path: Path, rows: list[list[Any]]) -> None:
    items = [
        {
            k: v.date().isoformat() if isinstance(v, dt.datetime) else v
            for k, v in zip(HEADER, row, strict=True)
        }
        for row in rows
    ]
    path.write_text(json.dumps({"data": {"products": items}}))


WRITERS: dict[str, Callable[[Path, list[list[Any]]], None]] = {
    "csv": write_csv,
    "excel": write_xlsx,
    "json": write_json,
}


def query(kind: str, **extra: Any) -> dict[str, Any]:
    return {**WHERE[kind], "filter": BY_SKU, **extra}


def touch_later(path: Path) -> None:
    """Move the mtime on, so a rewrite is seen even on a coarse-grained file system."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    for kind, write in WRITERS.items():
        write(tmp_path / FILES[kind], PRODUCTS)
    return tmp_path


@pytest.fixture
async def make_connector(data_dir: Path) -> AsyncIterator[MakeConnector]:
    factory = ConnectorFactory(TabularFileConnector, "stock", data_dir)

    def make(
        kind: str, path: str | None = None, limits: Limits | None = None, **settings: Any
    ) -> TabularFileConnector[Any]:
        cls = CONNECTORS[kind]
        connection = cls.Settings.model_validate({"path": path or FILES[kind], **settings})
        return factory.build(connection, limits=limits, source_id=f"{kind}_stock", cls=cls)

    yield make
    await factory.aclose()


class TestFileContract(ContractCase):
    FOUND_PARAMS = Bound(params={"sku": "12345"})
    MISSING_PARAMS = Bound(params={"sku": "nope"})

    @pytest.fixture
    def connector(self, make_connector: MakeConnector, kind: str) -> TabularFileConnector[Any]:
        return make_connector(kind)

    @pytest.fixture
    def found_query(self, kind: str) -> RawQuery:
        return query(kind)


# -- prepare -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "raw"),
    [
        pytest.param(CSVConnector, "sku = {sku}", id="csv-text"),
        pytest.param(CSVConnector, {"filter": "sku"}, id="csv-filter-not-a-map"),
        pytest.param(CSVConnector, {"filter": {"sku": {"$ne": None}}}, id="csv-operator"),
        pytest.param(CSVConnector, {"filter": {"sku": ["a", "b"]}}, id="csv-list-value"),
        pytest.param(CSVConnector, {"filter": BY_SKU, "sheet": "x"}, id="csv-unknown-key"),
        pytest.param(CSVConnector, {"filter": BY_SKU, "limit": 0}, id="csv-limit-zero"),
        pytest.param(ExcelConnector, {"sheet": "", "filter": BY_SKU}, id="excel-empty-sheet"),
        pytest.param(ExcelConnector, {"sheet": 3, "filter": BY_SKU}, id="excel-sheet-number"),
        pytest.param(JSONConnector, {"items": "a..b", "filter": BY_SKU}, id="json-bad-path"),
        pytest.param(JSONConnector, {"collection": "x"}, id="json-unknown-key"),
    ],
)
def test_prepare__refuses_bad_shapes(cls: type[TabularFileConnector[Any]], raw: RawQuery) -> None:
    with pytest.raises(ConfigError, match=f"{cls.type_name} query"):
        cls.prepare(raw)


def test_prepare__bad_shape_says_where_and_what_is_expected() -> None:
    with pytest.raises(ConfigError, match=r"limit: .*greater than or equal to 1.*expected \{"):
        JSONConnector.prepare({"items": "products", "limit": -1})


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("{sku}", id="braces"),
        pytest.param("{{sku}}", id="double-braces"),
        pytest.param("{{$json.sku}}", id="n8n"),
    ],
)
def test_prepare__names_the_placeholders(value: str) -> None:
    prepared = CSVConnector.prepare({"filter": {"sku": value, "name": "{name}", "qty": 3}})

    assert prepared.names == ("sku", "name")
    assert prepared.positional == 0


def test_prepare__excel_without_openpyxl_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "openpyxl", None)

    with pytest.raises(ConnectorMissing, match=r"pip install 'data-lookup-worker\[excel\]'"):
        ExcelConnector.prepare(query("excel"))


# -- matching ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sku", "names"),
    [
        pytest.param("12345", ["Widget"], id="text-matches-number"),
        pytest.param(12345, ["Widget"], id="int-param"),
        pytest.param(12345.0, ["Widget"], id="integral-float-param"),
        pytest.param(" 12345 ", ["Widget"], id="spaces-stripped"),
        pytest.param("777", ["Sprocket"], id="integral-float-cell"),
        pytest.param("A-1", ["Gadget"], id="case-sensitive-upper"),
        pytest.param("a-1", ["gadget (small)"], id="case-sensitive-lower"),
        pytest.param(True, ["Flag"], id="booleans-ignore-case"),
        pytest.param("012345", [], id="leading-zero-is-other-text"),
        pytest.param("12345.5", [], id="other-number"),
    ],
)
async def test_run__matches_values_as_a_spreadsheet_user_expects(
    make_connector: MakeConnector, kind: str, sku: Any, names: list[str]
) -> None:
    rows = await read(make_connector(kind), query(kind), sku=sku)

    assert [row["name"] for row in rows] == names


@pytest.mark.parametrize(
    "sku",
    [
        pytest.param({"$ne": None}, id="operator-dict"),
        pytest.param('{"$ne": null}', id="operator-text"),
        pytest.param("*", id="wildcard"),
        pytest.param("", id="empty"),
        pytest.param(["12345"], id="list"),
    ],
)
async def test_run__operator_shaped_param_is_just_data(
    make_connector: MakeConnector, kind: str, sku: Any
) -> None:
    assert await read(make_connector(kind), query(kind), sku=sku) == []


async def test_run__every_filter_key_must_match(make_connector: MakeConnector, kind: str) -> None:
    raw = {**WHERE[kind], "filter": {"name": "{name}", "qty": "{qty}"}}
    connector = make_connector(kind)

    assert [r["sku"] for r in await read(connector, raw, name="Gadget", qty="0")] == ["A-1"]
    assert await read(connector, raw, name="Gadget", qty="1") == []


async def test_run__constant_filter_values_need_no_params(
    make_connector: MakeConnector, kind: str
) -> None:
    raw = {**WHERE[kind], "filter": {"name": "Sprocket"}}

    assert [r["qty"] in (2, "2") for r in await read(make_connector(kind), raw)] == [True]


async def test_run__no_filter_returns_every_row_up_to_the_limit(
    make_connector: MakeConnector, kind: str
) -> None:
    connector = make_connector(kind, limits=Limits(max_rows=4))

    assert len(await read(connector, WHERE[kind])) == 4
    assert len(await read(connector, {**WHERE[kind], "limit": 2})) == 2


async def test_run__typed_cells_come_back_as_json_values(make_connector: MakeConnector) -> None:
    rows = await read(make_connector("excel"), query("excel"), sku="12345")

    assert rows == [
        {"sku": 12345, "name": "Widget", "qty": 3, "price": 9.5, "restock": "2024-09-12T00:00:00"}
    ]


async def test_run__csv_values_are_text(make_connector: MakeConnector) -> None:
    rows = await read(make_connector("csv"), query("csv"), sku="12345")

    assert rows == [
        {"sku": "12345", "name": "Widget", "qty": "3", "price": "9.5", "restock": "2024-09-12"}
    ]


# -- the files themselves --------------------------------------------------------------


async def test_run__cache_reads_an_unchanged_file_once(
    make_connector: MakeConnector, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connector = make_connector(kind)
    parses: list[object] = []
    real_parse = connector._parse

    def counting_parse(fh: BinaryIO) -> Any:
        parses.append(fh)
        return real_parse(fh)

    monkeypatch.setattr(connector, "_parse", counting_parse)

    for _ in range(3):
        assert await read(connector, query(kind), sku="12345")

    assert len(parses) == 1


async def test_run__cache_reloads_a_changed_file(
    make_connector: MakeConnector, kind: str, data_dir: Path
) -> None:
    connector = make_connector(kind)
    assert await read(connector, query(kind), sku="NEW-1") == []

    path = data_dir / FILES[kind]
    WRITERS[kind](path, [*PRODUCTS, ["NEW-1", "Brand new", 1, 1.0, None]])
    touch_later(path)

    assert [r["name"] for r in await read(connector, query(kind), sku="NEW-1")] == ["Brand new"]


async def test_run__missing_file_is_unavailable(
    make_connector: MakeConnector, kind: str, data_dir: Path
) -> None:
    connector = make_connector(kind, path="gone/stock.dat")

    with pytest.raises(SourceUnavailable, match=r"'gone/stock\.dat' does not exist") as caught:
        await read(connector, query(kind), sku="12345")
    assert str(data_dir) not in str(caught.value)
    with pytest.raises(SourceUnavailable):
        await connector.health_check()


@pytest.mark.parametrize(
    ("kind", "content"),
    [
        pytest.param("csv", b"sku,name\n\xff\xfe\xfa,broken\n", id="csv-not-utf8"),
        pytest.param("excel", b"PK\x03\x04 not really a zip", id="excel-not-a-workbook"),
        pytest.param("excel", b"sku,name\n1,2\n", id="excel-given-a-csv"),
        pytest.param("json", b'{"data": {"products": [', id="json-truncated"),
    ],
)
async def test_run__unparsable_file_is_a_source_error(
    make_connector: MakeConnector, data_dir: Path, kind: str, content: bytes
) -> None:
    (data_dir / "broken.dat").write_bytes(content)
    connector = make_connector(kind, path="broken.dat")

    with pytest.raises(SourceError, match=f"cannot parse 'broken.dat' as {kind}"):
        await read(connector, query(kind), sku="12345")
    with pytest.raises(SourceError, match="cannot parse"):
        await connector.health_check()


@pytest.mark.parametrize("kind", ["csv", "excel"])
async def test_run__unknown_column_is_a_source_error(
    make_connector: MakeConnector, kind: str
) -> None:
    raw = {**WHERE[kind], "filter": {"skuu": "{sku}"}}

    with pytest.raises(SourceError, match="no column 'skuu' in the header"):
        await read(make_connector(kind), raw, sku="12345")


async def test_run__excel_with_a_wrong_used_range_is_read_whole(
    make_connector: MakeConnector, data_dir: Path
) -> None:
    # Some writers record the used range as "A1:A1"; read-only openpyxl trusts it.
    with (
        zipfile.ZipFile(data_dir / FILES["excel"]) as good,
        zipfile.ZipFile(data_dir / "lying.xlsx", "w") as lying,
    ):
        for item in good.infolist():
            content = good.read(item)
            if item.filename.startswith("xl/worksheets/"):
                content = re.sub(rb'<dimension ref="[^"]*"', b'<dimension ref="A1:A1"', content)
            lying.writestr(item, content)

    rows = await read(make_connector("excel", path="lying.xlsx"), query("excel"), sku="A-1")

    assert [r["name"] for r in rows] == ["Gadget"]


async def test_run__unknown_sheet_is_a_source_error(make_connector: MakeConnector) -> None:
    with pytest.raises(SourceError, match=r"no sheet 'Stok' \(sheets: Notes, Stock\)"):
        await read(make_connector("excel"), {"sheet": "Stok", "filter": BY_SKU}, sku="1")


async def test_run__excel_without_sheet_reads_the_first(make_connector: MakeConnector) -> None:
    rows = await read(make_connector("excel"), {})

    assert rows == []  # "Notes" has a header and nothing under it


@pytest.mark.parametrize(
    ("document", "items", "message"),
    [
        pytest.param({"data": {}}, "data.products", "has no 'data.products'", id="missing"),
        pytest.param({"products": {"a": 1}}, "products", "is not a list", id="not-a-list"),
        pytest.param({"products": [1, 2]}, "products", "other than objects", id="not-objects"),
        pytest.param({"products": []}, None, "the document is not a list", id="root-not-list"),
    ],
)
async def test_run__json_items_that_are_not_a_list_of_objects_is_a_source_error(
    make_connector: MakeConnector, data_dir: Path, document: Any, items: str | None, message: str
) -> None:
    (data_dir / "odd.json").write_text(json.dumps(document))
    raw = {"filter": BY_SKU} if items is None else {"items": items, "filter": BY_SKU}

    with pytest.raises(SourceError, match=message):
        await read(make_connector("json", path="odd.json"), raw, sku="1")


@pytest.mark.parametrize(
    ("document", "raw"),
    [
        pytest.param([{"sku": 1}, {"sku": 2}], {"filter": BY_SKU}, id="root-list"),
        pytest.param(
            {"a": [{"b": [{"sku": 2}]}]}, {"items": "a.0.b", "filter": BY_SKU}, id="index"
        ),
        pytest.param({"products": None}, {"items": "products"}, id="null-is-empty"),
    ],
)
async def test_run__json_items_paths(
    make_connector: MakeConnector, data_dir: Path, document: Any, raw: dict[str, Any]
) -> None:
    (data_dir / "doc.json").write_text(json.dumps(document))
    found = document != {"products": None}

    assert bool(await read(make_connector("json", path="doc.json"), raw, sku="2")) is found


async def test_run__csv_delimiter_encoding_and_byte_order_mark(
    make_connector: MakeConnector, data_dir: Path
) -> None:
    write_csv(
        data_dir / "latin.csv", [["ÄÖ-1", "Größe", 1, 1.0, None]], delimiter=";", encoding="latin-1"
    )
    (data_dir / "bom.csv").write_bytes(b"\xef\xbb\xbf sku ,name\n12345,Widget\n")

    latin = make_connector("csv", path="latin.csv", delimiter=";", encoding="latin-1")
    assert [r["name"] for r in await read(latin, query("csv"), sku="ÄÖ-1")] == ["Größe"]
    bom = make_connector("csv", path="bom.csv")
    assert await read(bom, query("csv"), sku="12345") == [{"sku": "12345", "name": "Widget"}]


async def test_run__csv_short_and_blank_lines(
    make_connector: MakeConnector, data_dir: Path
) -> None:
    (data_dir / "ragged.csv").write_text("sku,name,qty\n\n1,one\n2,two,2,extra\n,,\n")

    rows = await read(make_connector("csv", path="ragged.csv"), {})

    assert rows == [
        {"sku": "1", "name": "one", "qty": None},
        {"sku": "2", "name": "two", "qty": "2"},
    ]


# -- settings and discovery ----------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "connection"),
    [
        pytest.param(CSVSettings, {"path": "a.csv", "delimiter": ";;"}, id="csv-long-delimiter"),
        pytest.param(CSVSettings, {"path": "a.csv", "encoding": "utf-99"}, id="csv-encoding"),
        pytest.param(FileSettings, {"path": "a.json", "delimiter": ","}, id="json-delimiter"),
        pytest.param(FileSettings, {"path": ""}, id="empty-path"),
    ],
)
def test_settings__refuses_bad_connections(
    settings: type[ConnectionSettings], connection: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError):
        settings.model_validate(connection)


def test_connector__refuses_another_types_settings(data_dir: Path) -> None:
    with pytest.raises(TypeError, match="CSVSettings"):
        CSVConnector("x", FileSettings(path="a.csv"), base_dir=data_dir)


@pytest.mark.parametrize("kind", KINDS)
def test_registry__loads_the_entry_points(kind: str) -> None:
    assert load(kind) is CONNECTORS[kind]

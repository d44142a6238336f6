"""File sources: CSV, Excel and JSON files read as tables of rows.

The three share one base, `TabularFileConnector`: a query is a small document
(``{"filter": {"sku": "{sku}"}, "limit": 5}`` plus ``sheet`` for Excel and
``items`` for JSON), a filter means equality on every key, and the parsed file
is cached until its modification time or size changes. Reading and parsing
block, so they run in ``asyncio.to_thread``.

Values compare the way a spreadsheet user expects: both sides as text, stripped,
so the parameter ``"12345"`` matches the JSON number ``12345`` and the Excel
cell ``12345.0``; dates compare by their ISO text; booleans ignore case
(``TRUE`` = ``true``); everything else is case-sensitive. A parameter is only
ever a value to compare with, never an operator.

A file may also be read over the network: ``url`` instead of ``path``
(``https://files.example.com/stock.csv``). It goes through the HTTP sources'
safe layer (`connectors.http_base.SafeHTTP`): the egress rules of an
engine-served config (public addresses only, unless ``WORKER_ALLOW_NETWORKS``),
redirects only within the same origin, the download streamed and cut off at
``max_bytes`` with a clear error, the read's deadline over connect, TLS and
body. ``http://`` is for the operator only: an engine-served config must use
``https://``. The parsed file is kept ``cache_s`` seconds (default 60); after
that the next read asks again with ``If-None-Match`` / ``If-Modified-Since``,
and a ``304`` keeps the parsed copy for another ``cache_s``. Concurrent reads
share one download. A failed download is a source failure (the fallback),
even with a copy in the cache; a 404 too (the file is missing, not the row).
"""

from __future__ import annotations

import abc
import asyncio
import codecs
import contextlib
import csv
import dataclasses
import io
import json
import os
import threading
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, BinaryIO, ClassVar, Generic, TypeVar, cast
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from connectors.base import (
    Bound,
    ConfigError,
    ConnectionSettings,
    Connector,
    PreparedQuery,
    ReadResult,
    SourceTimeout,
    SourceUnavailable,
    bind_placeholders,
    jsonable,
    placeholder_names,
    validate_query,
)
from connectors.http_base import HTTPSettings, SafeHTTP
from connectors.network import TLSSettings
from worker.errors import ConnectorMissing

__all__ = [
    "CSVConnector",
    "CSVQuery",
    "CSVSettings",
    "ExcelConnector",
    "ExcelQuery",
    "FileQuery",
    "FileSettings",
    "JSONConnector",
    "JSONQuery",
    "Table",
    "TabularFileConnector",
    "compare_text",
]

_HEALTH_TIMEOUT_S = 30.0

Scalar = str | int | float | bool | None


# -- settings and queries ----------------------------------------------------


class FileSettings(ConnectionSettings):
    """``connection`` of a file source: a ``path``, or a ``url`` and how to fetch it."""

    # A rejected url could carry a token in its query string: never echo it.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    #: the file, relative to the tenant config's folder
    path: str | None = Field(default=None, min_length=1)
    #: or the file's https:// URL (http:// only in an operator's config)
    url: str | None = Field(default=None, min_length=1)
    #: sent with the download; ``{api_key}`` names the field below
    headers: dict[str, str] = Field(default_factory=dict)
    api_key: SecretStr | None = None
    #: the download is cut off past this
    max_bytes: int = Field(default=20_000_000, ge=1_000, le=500_000_000)
    #: how long a downloaded file is used before it is asked for again
    cache_s: float = Field(default=60.0, ge=0, le=86_400)
    ssl: TLSSettings | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an https:// URL (or http://), with a host")
        if parts.username is not None or parts.password is not None or parts.fragment:
            raise ValueError("must not hold credentials or a #fragment: use headers and api_key")
        return value

    @model_validator(mode="after")
    def _path_or_url(self) -> FileSettings:
        if (self.path is None) == (self.url is None):
            raise ValueError("give either path (a local file) or url (a download), not both")
        if self.url is None and (self.headers or self.api_key or self.ssl):
            raise ValueError("headers, api_key and ssl are for a url")
        return self

    @property
    def where(self) -> str:
        """The file as errors name it: the path, or the URL without its query."""
        if self.url is not None:
            parts = urlsplit(self.url)
            return f"{parts.scheme}://{parts.netloc}{parts.path}"
        return self.path or ""


class CSVSettings(FileSettings):
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    encoding: str = "utf-8"

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        return value


class FileQuery(BaseModel):
    """A read on a file: rows equal to ``filter`` on every key, at most ``limit``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    filter: dict[str, Scalar] = Field(default_factory=dict)
    limit: int | None = Field(default=None, ge=1)


class CSVQuery(FileQuery):
    pass


class ExcelQuery(FileQuery):
    #: the sheet's name; the first sheet when absent
    sheet: str | None = Field(default=None, min_length=1)


class JSONQuery(FileQuery):
    #: a dotted path to the list of items; the document itself when absent
    items: str | None = Field(default=None, pattern=r"^[^.]+(\.[^.]+)*$")


# -- the shared machinery -----------------------------------------------------


@dataclass(frozen=True)
class Table:
    """Rows read from a file; ``columns`` when a header row names them."""

    rows: list[dict[str, Any]]
    columns: tuple[str, ...] | None = None


class _Unreadable(Exception):
    """The file parsed, but not into what the query needs."""


QueryT = TypeVar("QueryT", bound=FileQuery)


class TabularFileConnector(Connector, Generic[QueryT]):
    """A file parsed into tables of rows and filtered by equality.

    Subclasses say how to parse the file (`_parse`, blocking, from a binary
    handle), which errors mean "this file does not parse" (`_parse_errors`),
    and where a query's rows are in the parsed document (`_table`).
    """

    #: the query model; subclasses narrow it
    Query: ClassVar[type[FileQuery]]

    settings: FileSettings

    def setup(self) -> None:
        self._cache: tuple[tuple[int, int], Any] | None = None
        self._cache_lock = threading.Lock()
        self._download: _Download | None = None
        self._downloading = asyncio.Lock()
        self._http: SafeHTTP | None = None

    @classmethod
    def prepare(cls, raw: str | Mapping[str, Any]) -> PreparedQuery:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"a {cls.type_name} query is a mapping: {cls.query_shape}")
        spec = validate_query(cls.Query, raw, cls)
        return PreparedQuery(spec=spec, names=placeholder_names(spec.filter))

    async def close(self) -> None:
        self._cache = None
        self._download = None
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    async def health_check(self) -> None:
        with self._translating():
            async with asyncio.timeout(_HEALTH_TIMEOUT_S):
                await self._loaded(_HEALTH_TIMEOUT_S)

    async def run(self, query: PreparedQuery, bound: Bound, *, timeout_s: float) -> ReadResult:
        if not isinstance(query.spec, self.Query):
            raise TypeError(f"not a query prepared by {type(self).__name__}.prepare")
        spec = cast(QueryT, query.spec)
        wanted = bind_placeholders(spec.filter, bound.params)
        limit = min(spec.limit or self.limits.max_rows, self.limits.max_rows)
        with self._translating():
            # A parse cannot be stopped half-way; it runs on to fill the cache.
            async with asyncio.timeout(timeout_s):
                document = await self._loaded(timeout_s)
                rows = await asyncio.to_thread(self._select, spec, wanted, limit, document)
        return ReadResult.of_rows(self.cap_rows(rows))

    async def _loaded(self, timeout_s: float) -> Any:
        """The parsed file: from disk (`_document`) or downloaded (`_fetched`)."""
        if self.settings.url is None:
            return await asyncio.to_thread(self._document)
        return await self._fetched(self.settings.url, timeout_s)

    async def _fetched(self, url: str, timeout_s: float) -> Any:
        """The downloaded file, parsed; from the cache for ``cache_s``, then revalidated."""
        async with self._downloading:  # concurrent reads share one download
            cached = self._download
            if cached is not None and time.monotonic() < cached.fresh_until:
                return cached.document
            if url.startswith("http://") and not self.reach.trusted:
                raise SourceUnavailable(
                    self.source_id,
                    "a config served by the engine may download files over https:// only",
                )
            http = self._client(url)
            ask = {} if cached is None else cached.conditions()
            response = await http.request(
                "GET", url, timeout_s=timeout_s, idempotent=True, headers=ask
            )
            fresh_until = time.monotonic() + self.settings.cache_s
            if response.status == 304 and cached is not None:
                self._download = cached.renewed(fresh_until)
                return cached.document
            if response.status == 404:
                raise SourceUnavailable(
                    self.source_id, f"the file {self.settings.where!r} was not found (404)"
                )
            http.check(response, not_found_ok=False)  # 401/403, 429, other errors
            if response.status != 200:
                raise self.fail(f"downloading the file answered {response.status}, not 200")
            download = _Download(
                None,
                fresh_until,
                response.headers.get("etag"),
                response.headers.get("last-modified"),
            )
            # Like a local file's, the parse fills the cache even if the read gives up on it.
            return await asyncio.to_thread(self._store, response.body, download)

    def _store(self, body: bytes, download: _Download) -> Any:
        document = self._parse(io.BytesIO(body))
        self._download = dataclasses.replace(download, document=document)
        return document

    def _client(self, url: str) -> SafeHTTP:
        if self._http is None:
            parts = urlsplit(url)
            settings = HTTPSettings(
                base_url=f"{parts.scheme}://{parts.netloc}",
                headers=self.settings.headers,
                api_key=self.settings.api_key,
                max_response_bytes=self.settings.max_bytes,
                ssl=self.settings.ssl,
            )
            self._http = SafeHTTP(self.source_id, settings, base_dir=self.base_dir)
        return self._http

    @abc.abstractmethod
    def _parse(self, fh: BinaryIO) -> Any:
        """Parse the whole file (blocking); the result is cached."""

    @abc.abstractmethod
    def _parse_errors(self) -> tuple[type[Exception], ...]:
        """The exceptions `_parse` raises on a file that does not parse."""

    @abc.abstractmethod
    def _table(self, document: Any, spec: QueryT) -> Table:
        """The rows the query reads in the parsed document; `_Unreadable` if none."""

    def _select(
        self, spec: QueryT, wanted: Mapping[str, Any], limit: int, document: Any
    ) -> list[dict[str, Any]]:
        table = self._table(document, spec)
        if table.columns is not None:
            unknown = [key for key in wanted if key not in table.columns]
            if unknown:
                raise _Unreadable(
                    f"no column {unknown[0]!r} in the header (columns: {', '.join(table.columns)})"
                )
        texts = {key: compare_text(value) for key, value in wanted.items()}
        found = []
        for row in table.rows:
            if all(compare_text(row.get(key)) == text for key, text in texts.items()):
                found.append(row)
                if len(found) >= limit:
                    break
        return found

    def _document(self) -> Any:
        """The parsed file, from the cache while its mtime and size are unchanged."""
        path = self.settings.path or ""
        with self._cache_lock, self.resolve_path(path).open("rb") as fh:
            stat = os.fstat(fh.fileno())
            key = (stat.st_mtime_ns, stat.st_size)
            if self._cache is None or self._cache[0] != key:
                self._cache = (key, self._parse(fh))
            return self._cache[1]

    @contextlib.contextmanager
    def _translating(self) -> Iterator[None]:
        """File and parser errors into the `SourceError` family, in one place."""
        path = self.settings.where
        try:
            yield
        except TimeoutError as exc:  # before OSError: it is one
            raise SourceTimeout(self.source_id, f"reading {path!r} passed its deadline") from exc
        except FileNotFoundError as exc:
            raise SourceUnavailable(self.source_id, f"the file {path!r} does not exist") from exc
        except OSError as exc:
            raise SourceUnavailable(
                self.source_id, f"cannot read the file {path!r}: {exc.strerror or exc}"
            ) from exc
        except _Unreadable as exc:
            raise self.fail(f"{path!r}: {exc}") from exc
        except self._parse_errors() as exc:
            raise self.fail(f"cannot parse {path!r} as {self.type_name}: {exc}") from exc


@dataclass(frozen=True)
class _Download:
    """A downloaded, parsed file and what revalidates it."""

    document: Any
    fresh_until: float
    etag: str | None
    last_modified: str | None

    def conditions(self) -> dict[str, str]:
        """The conditional-request headers that let the server answer 304."""
        ask = {}
        if self.etag:
            ask["If-None-Match"] = self.etag
        if self.last_modified:
            ask["If-Modified-Since"] = self.last_modified
        return ask

    def renewed(self, fresh_until: float) -> _Download:
        return _Download(self.document, fresh_until, self.etag, self.last_modified)


def compare_text(value: Any) -> str:
    """A cell or parameter as the text it is compared by: trimmed, ``12.0`` as ``12``,
    booleans as ``true``/``false`` (see the module docstring)."""
    value = jsonable(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text.lower() if text.lower() in ("true", "false") else text


def _header_table(records: Iterable[Sequence[Any]]) -> Table:
    """The first non-blank record names the columns; blank records are skipped."""
    columns: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    header_seen = False
    for record in records:
        if all(cell is None or str(cell).strip() == "" for cell in record):
            continue
        if not header_seen:
            header_seen = True
            for index, cell in enumerate(record):
                name = "" if cell is None else str(jsonable(cell)).strip()
                if name:
                    columns.setdefault(name, index)  # a repeated name keeps its first column
            continue
        rows.append(
            {
                name: jsonable(record[index]) if index < len(record) else None
                for name, index in columns.items()
            }
        )
    return Table(rows=rows, columns=tuple(columns))


# -- the three types -----------------------------------------------------------


class CSVConnector(TabularFileConnector[CSVQuery]):
    """A CSV file whose header row names the columns."""

    type_name: ClassVar[str] = "csv"
    Settings: ClassVar[type[ConnectionSettings]] = CSVSettings
    Query: ClassVar[type[FileQuery]] = CSVQuery
    query_shape: ClassVar[str] = '{"filter": {"sku": "{sku}"}} (the header row names the columns)'

    settings: CSVSettings

    def _parse(self, fh: BinaryIO) -> Table:
        encoding = self.settings.encoding
        if codecs.lookup(encoding).name == "utf-8":
            encoding = "utf-8-sig"  # spreadsheets often write a byte-order mark
        text = io.TextIOWrapper(fh, encoding=encoding, newline="")
        try:
            return _header_table(csv.reader(text, delimiter=self.settings.delimiter))
        finally:
            text.detach()  # the handle is closed by its opener

    def _parse_errors(self) -> tuple[type[Exception], ...]:
        return (csv.Error, ValueError)

    def _table(self, document: Table, spec: CSVQuery) -> Table:
        return document


def _openpyxl() -> ModuleType:
    """The driver, imported when first needed: it is an optional extra."""
    try:
        import openpyxl
    except ImportError as exc:
        raise ConnectorMissing(
            "the excel source type needs openpyxl: pip install 'data-lookup-worker[excel]'"
        ) from exc
    module: ModuleType = openpyxl
    return module


class ExcelConnector(TabularFileConnector[ExcelQuery]):
    """An .xlsx workbook; each sheet's header row names its columns."""

    type_name: ClassVar[str] = "excel"
    Settings: ClassVar[type[ConnectionSettings]] = FileSettings
    Query: ClassVar[type[FileQuery]] = ExcelQuery
    query_shape: ClassVar[str] = '{"sheet": "Stock", "filter": {"sku": "{sku}"}}'

    @classmethod
    def prepare(cls, raw: str | Mapping[str, Any]) -> PreparedQuery:
        _openpyxl()  # a missing driver is a configuration error, found at load time
        return super().prepare(raw)

    def _parse(self, fh: BinaryIO) -> dict[str, Table]:
        workbook = _openpyxl().load_workbook(fh, read_only=True, data_only=True)
        try:
            tables = {}
            for sheet in workbook.worksheets:
                # Some writers record a wrong used range ("A1:A1"); read every row.
                sheet.reset_dimensions()
                tables[sheet.title] = _header_table(sheet.iter_rows(values_only=True))
            return tables
        finally:
            workbook.close()

    def _parse_errors(self) -> tuple[type[Exception], ...]:
        # What openpyxl raises on a file that is not a workbook, or a broken one.
        errors: tuple[type[Exception], ...] = (zipfile.BadZipFile, KeyError, ValueError, TypeError)
        try:
            from openpyxl.utils.exceptions import InvalidFileException
        except ImportError:  # `_parse` has already said what is missing
            return errors
        return (InvalidFileException, *errors)

    def _table(self, document: dict[str, Table], spec: ExcelQuery) -> Table:
        if spec.sheet is None:
            if not document:
                raise _Unreadable("the workbook has no sheet")
            return next(iter(document.values()))
        if spec.sheet not in document:
            raise _Unreadable(f"no sheet {spec.sheet!r} (sheets: {', '.join(document)})")
        return document[spec.sheet]


class JSONConnector(TabularFileConnector[JSONQuery]):
    """A JSON document holding a list of objects (at ``items``, or the whole)."""

    type_name: ClassVar[str] = "json"
    Settings: ClassVar[type[ConnectionSettings]] = FileSettings
    Query: ClassVar[type[FileQuery]] = JSONQuery
    query_shape: ClassVar[str] = (
        '{"items": "products", "filter": {"sku": "{sku}"}} (items: a dotted path to the list)'
    )

    def _parse(self, fh: BinaryIO) -> Any:
        return json.loads(fh.read())

    def _parse_errors(self) -> tuple[type[Exception], ...]:
        return (ValueError, RecursionError)

    def _table(self, document: Any, spec: JSONQuery) -> Table:
        node = document
        for step in spec.items.split(".") if spec.items else ():
            if isinstance(node, Mapping) and step in node:
                node = node[step]
            elif isinstance(node, list) and step.isdigit() and int(step) < len(node):
                node = node[int(step)]
            else:
                raise _Unreadable(f"the document has no {spec.items!r}")
        where = repr(spec.items) if spec.items else "the document"
        if node is None:
            return Table(rows=[])
        if not isinstance(node, list):
            raise _Unreadable(f"{where} is not a list")
        if not all(isinstance(item, dict) for item in node):
            raise _Unreadable(f"{where} holds something other than objects")
        return Table(rows=node)

"""CSV, Excel and JSON files read from a URL: a real HTTPS server on loopback.

The server (aiohttp, TLS with the test CA of `tests.support.tls`) serves the
same stock files the local-file tests write, with ``ETag`` / ``Last-Modified``
and real ``304`` answers; its `Recorder` sees every request and can misbehave
(an endless or stalled body, a redirect to another host, a status).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from connectors.base import (
    ReadResult,
    SourceAuthError,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
)
from connectors.egress import Reach, parse_networks, reaching, refusal_in
from connectors.files import CSVSettings, FileSettings, TabularFileConnector
from connectors.registry import load
from tests.servers.hostile import (
    RECORDERS,
    Recorder,
    endless,
    recorded_app,
    redirect,
    serve,
    stall,
    status,
)
from tests.support.connectors import ConnectorFactory
from tests.support.connectors import read as read_query
from tests.support.tls import Certs
from tests.unit.test_connectors_files import FILES, KINDS, PRODUCTS, WRITERS, query

TOKEN = "files-Token-77c1e0"

MakeConnector = Callable[..., TabularFileConnector[Any]]


# -- the server --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bodies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Each kind's stock file, as bytes to serve."""
    folder = tmp_path_factory.mktemp("served")
    out = {}
    for kind in KINDS:
        path = folder / FILES[kind]
        WRITERS[kind](path, PRODUCTS)
        out[FILES[kind]] = path.read_bytes()
    return out


def files_app(recorder: Recorder, bodies: dict[str, bytes]) -> web.Application:
    """``GET /files/{name}`` with a strong ETag and Last-Modified; ``/private/{name}`` needs
    ``Authorization: Bearer TOKEN``."""

    async def serve_file(request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/private/") and (
            request.headers.get("Authorization") != f"Bearer {TOKEN}"
        ):
            return web.json_response({"error": "unauthorized"}, status=401)
        body = bodies.get(request.match_info["name"])
        if body is None:
            return web.Response(status=404, text="no such file")
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        headers = {"ETag": etag, "Last-Modified": "Mon, 07 Sep 2026 10:00:00 GMT"}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers=headers, content_type="application/octet-stream")

    app = recorded_app(recorder)
    app.router.add_get("/files/{name}", serve_file)
    app.router.add_get("/private/{name}", serve_file)
    return app


@contextlib.asynccontextmanager
async def serve_tls(app: web.Application, certs: Certs) -> AsyncIterator[str]:
    """Serve ``app`` over TLS on a free loopback port; yields ``https://127.0.0.1:port``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        for recorder in app.get(RECORDERS, []):
            recorder.close()
        await runner.cleanup()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def https(
    recorder: Recorder, bodies: dict[str, bytes], tls_certs: Certs
) -> AsyncIterator[str]:
    async with serve_tls(files_app(recorder, bodies), tls_certs) as url:
        yield url


@pytest.fixture
async def plain_http(recorder: Recorder, bodies: dict[str, bytes]) -> AsyncIterator[str]:
    async with serve(files_app(recorder, bodies)) as url:
        yield url


@pytest.fixture
async def make_connector(tmp_path: Path, tls_certs: Certs) -> AsyncIterator[MakeConnector]:
    factory = ConnectorFactory(TabularFileConnector, "stock", tmp_path)

    def make(kind: str, url: str, reach: Reach | None = None, **extra: Any) -> Any:
        settings_cls = CSVSettings if kind == "csv" else FileSettings
        if url.startswith("https://"):
            extra.setdefault("ssl", {"ca_file": str(tls_certs.ca)})
        settings = settings_cls.model_validate({"url": url, **extra})
        kwargs = {} if reach is None else {"reach": reach}
        return factory.build(settings, cls=load(kind), **kwargs)

    yield make
    await factory.aclose()


async def read(
    connector: TabularFileConnector[Any], kind: str, timeout_s: float = 5, **params: Any
) -> ReadResult:
    with reaching(connector.reach):
        return await read_query(connector, query(kind), timeout_s, **params)


def untrusted(certs: Certs, allow: str = "") -> Reach:
    """An engine-served config's reach; the CA file lies in its data dir (a file rule too)."""
    return Reach(trusted=False, data_dir=certs.folder, allow_networks=parse_networks(allow))


def gets(recorder: Recorder) -> int:
    return sum(1 for seen in recorder.seen if seen.method == "GET")


# -- reads ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_url__reads_each_kind_over_https(
    make_connector: MakeConnector, https: str, kind: str
) -> None:
    connector = make_connector(kind, f"{https}/files/{FILES[kind]}")

    result = await read(connector, kind, sku="A-1")

    assert [row["name"] for row in result.rows] == ["Gadget"]
    assert not (await read(connector, kind, sku="NOPE")).found


async def test_url__cached_for_cache_s_then_revalidated_with_a_304(
    make_connector: MakeConnector, https: str, recorder: Recorder
) -> None:
    cached = make_connector("csv", f"{https}/files/stock.csv")
    for _ in range(3):
        assert (await read(cached, "csv", sku="A-1")).found
    assert gets(recorder) == 1

    recorder.seen.clear()
    revalidated = make_connector("csv", f"{https}/files/stock.csv", cache_s=0)
    for _ in range(3):
        assert (await read(revalidated, "csv", sku="A-1")).found

    assert gets(recorder) == 3
    first, *again = recorder.seen
    assert "If-None-Match" not in first.headers
    assert all(seen.headers["If-None-Match"].startswith('"') for seen in again)
    assert all(seen.headers["If-Modified-Since"].endswith("GMT") for seen in again)


async def test_url__concurrent_reads_share_one_download(
    make_connector: MakeConnector, https: str, recorder: Recorder
) -> None:
    connector = make_connector("json", f"{https}/files/stock.json")

    results = await asyncio.gather(*(read(connector, "json", sku="A-1") for _ in range(8)))

    assert all(result.found for result in results)
    assert gets(recorder) == 1


async def test_url__headers_name_the_api_key_and_a_401_is_an_auth_error(
    make_connector: MakeConnector, https: str
) -> None:
    url = f"{https}/private/stock.csv"
    anonymous = make_connector("csv", url)
    keyed = make_connector("csv", url, api_key=TOKEN, headers={"Authorization": "Bearer {api_key}"})

    with pytest.raises(SourceAuthError, match="401") as caught:
        await read(anonymous, "csv", sku="A-1")
    assert (await read(keyed, "csv", sku="A-1")).found
    assert TOKEN not in repr(keyed.settings)
    assert TOKEN not in str(caught.value)


async def test_url__a_missing_file_is_unavailable_not_not_found(
    make_connector: MakeConnector, https: str
) -> None:
    connector = make_connector("csv", f"{https}/files/gone.csv?sig=Secret-sig")

    with pytest.raises(SourceUnavailable, match=r"/files/gone\.csv' was not found \(404\)") as e:
        await read(connector, "csv", sku="A-1")
    assert "Secret-sig" not in str(e.value)


async def test_url__a_download_past_max_bytes_is_cut_off(
    make_connector: MakeConnector, https: str, recorder: Recorder
) -> None:
    recorder.misbehave = endless(recorder, "text/csv")
    connector = make_connector("csv", f"{https}/files/stock.csv", max_bytes=100_000)

    with pytest.raises(SourceError, match="larger than 100000 bytes; cut off"):
        await read(connector, "csv", sku="A-1")
    assert recorder.streamed < 50_000_000  # stopped near the cap, not at the stream's end


async def test_url__a_stalled_download_ends_at_the_deadline(
    make_connector: MakeConnector, https: str, recorder: Recorder
) -> None:
    recorder.misbehave = stall(recorder, "text/csv")
    connector = make_connector("csv", f"{https}/files/stock.csv")

    started = time.monotonic()
    with pytest.raises(SourceTimeout):
        await read(connector, "csv", timeout_s=0.5, sku="A-1")
    assert time.monotonic() - started < 0.5 + 4


async def test_url__a_redirect_to_another_host_is_not_followed(
    make_connector: MakeConnector, https: str, recorder: Recorder
) -> None:
    recorder.misbehave = redirect("https://127.0.0.2:1/stock.csv")
    connector = make_connector("csv", f"{https}/files/stock.csv")

    with pytest.raises(SourceError, match="redirected to another host; not followed"):
        await read(connector, "csv", sku="A-1")


async def test_url__a_server_error_is_a_source_error(
    make_connector: MakeConnector, https: str, recorder: Recorder
) -> None:
    recorder.misbehave = status(500)
    connector = make_connector("csv", f"{https}/files/stock.csv")

    with pytest.raises(SourceError, match="answered 500"):
        await read(connector, "csv", sku="A-1")


async def test_url__a_certificate_from_another_ca_is_refused(
    make_connector: MakeConnector, https: str, tls_certs: Certs
) -> None:
    connector = make_connector(
        "csv", f"{https}/files/stock.csv", ssl={"ca_file": str(tls_certs.other_ca)}
    )

    with pytest.raises(SourceUnavailable, match="cannot reach"):
        await read(connector, "csv", sku="A-1")


# -- egress: the rules of an engine-served config ------------------------------------------------


async def test_egress__an_untrusted_config_cannot_download_from_loopback(
    make_connector: MakeConnector, https: str, recorder: Recorder, tls_certs: Certs
) -> None:
    connector = make_connector("csv", f"{https}/files/stock.csv", reach=untrusted(tls_certs))

    with pytest.raises(SourceError) as caught:
        await read(connector, "csv", sku="A-1")

    refusal = refusal_in(caught.value)
    assert refusal is not None, repr(caught.value)
    assert "is not a public address" in str(refusal)
    assert recorder.seen == []


async def test_egress__worker_allow_networks_lets_it_through(
    make_connector: MakeConnector, https: str, tls_certs: Certs
) -> None:
    reach = untrusted(tls_certs, "127.0.0.0/8")
    connector = make_connector("csv", f"{https}/files/stock.csv", reach=reach)

    assert (await read(connector, "csv", sku="A-1")).found


async def test_egress__http_is_for_the_operators_config_only(
    make_connector: MakeConnector, plain_http: str, recorder: Recorder, tls_certs: Certs
) -> None:
    url = f"{plain_http}/files/stock.csv"
    operators = make_connector("csv", url)
    tenants = make_connector("csv", url, reach=untrusted(tls_certs, "127.0.0.0/8"))

    assert (await read(operators, "csv", sku="A-1")).found
    with pytest.raises(SourceUnavailable, match="over https:// only"):
        await read(tenants, "csv", sku="A-1")
    assert gets(recorder) == 1


def test_egress__the_url_is_a_target_checked_before_open(tmp_path: Path) -> None:
    settings = CSVSettings.model_validate({"url": "https://files.example.com:8443/s.csv"})
    connector = load("csv")("stock", settings, base_dir=tmp_path)

    assert connector.targets() == [("files.example.com", 8443)]


# -- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("connection", "problem"),
    [
        pytest.param({}, "either path", id="neither"),
        pytest.param({"path": "a.csv", "url": "https://h/a.csv"}, "not both", id="both"),
        pytest.param({"url": "ftp://h/a.csv"}, "https://", id="ftp"),
        pytest.param({"url": "https://u:Secret-pw@h/a.csv"}, "credentials", id="credentials"),
        pytest.param({"path": "a.csv", "api_key": "Secret-pw"}, "for a url", id="key-for-path"),
        pytest.param({"url": "https://h/a.csv", "max_bytes": 10}, "max_bytes", id="tiny-cap"),
        pytest.param({"url": "https://h/a.csv", "cache_s": -1}, "cache_s", id="negative-ttl"),
    ],
)
def test_settings__refuse_bad_urls(connection: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem) as caught:
        FileSettings.model_validate(connection)

    assert "Secret-pw" not in str(caught.value)

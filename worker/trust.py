"""Where a config came from decides what it may reach (contract §5.0).

A config file on the worker's disk is the operator's; a config the engine
serves (written through tenant settings) is the tenant's, and untrusted. For
both, ``${env:NAME}`` and ``enc:v1:`` values are resolved only inside
connection settings: a source's ``connection``, and a file config's
``engine``, ``queue`` and ``audit``. Anywhere else (templates, texts, queries)
they would carry the operator's environment or a decrypted secret into a
customer's reply, so they are config errors naming the path.

An engine-served config further gets:

- no ``${env:…}`` at all, and no ``engine``, ``queue`` or ``audit.dsn``
  blocks (the operator's settings, not a tenant's);
- no ``templates_dir``: templates are inline, or named files of the worker's
  own ``templates/`` (`worker_templates_dir`);
- file sources only below ``WORKER_DATA_DIR`` (none when it is unset), and
  network sources only to public addresses or ``WORKER_ALLOW_NETWORKS``.
  What can be seen in the document (an address literal, ``localhost``, a path
  leaving the data folder) is refused at load, so the engine's PUT answers 422;
  the sources check again where they really connect (`connectors.egress`).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from connectors.egress import UNRESTRICTED, Reach, parse_networks
from worker import secrets
from worker.errors import ConfigError
from worker.settings import Settings, env_name

__all__ = [
    "ENV_ALLOW_NETWORKS",
    "ENV_DATA_DIR",
    "ENV_TEMPLATES_DIR",
    "Origin",
    "check_untrusted",
    "reach_for",
    "resolve_values",
    "worker_templates_dir",
]

Origin = Literal["file", "engine"]
Path_ = tuple[str | int, ...]
Report = Callable[[Path_, str], None]

ENV_DATA_DIR = env_name("data_dir")
ENV_ALLOW_NETWORKS = env_name("allow_networks")
ENV_TEMPLATES_DIR = env_name("templates_dir")

_ENV = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
_FILE_TYPES = frozenset({"sqlite", "csv", "excel", "json"})
_HOST_KEYS = frozenset({"host", "hostname", "server"})
_OPERATOR_BLOCKS = ("engine", "queue")


def _settings_zone(path: Path_, origin: Origin) -> bool:
    """Whether a value at ``path`` is connection settings, where secrets resolve."""
    if len(path) >= 3 and path[0] == "data_sources" and path[2] == "connection":
        return True
    return origin == "file" and bool(path) and path[0] in ("engine", "queue", "audit")


def resolve_values(
    node: Any,
    *,
    origin: Origin,
    tenant_id: str,
    decrypt: bool,
    report: Report,
    environ: Mapping[str, str] | None = None,
) -> Any:
    """The document with ``enc:v1:`` and ``${env:…}`` resolved where they may be.

    Values in the wrong place are reported, never resolved. With ``decrypt``
    off (the engine checking a config it holds no key for) nothing is resolved,
    but the places are still checked. ``${env:NAME}`` is looked up in ``environ``
    (default: the environment as `Settings.load` finds it now).
    """
    settings = functools.cache(Settings.load)  # read once, and only if a value needs it

    def walk(value: Any, path: Path_) -> Any:
        if isinstance(value, str):
            return _one(value, path)
        if isinstance(value, Mapping):
            return {k: walk(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*path, i)) for i, v in enumerate(value)]
        return value

    def _one(text: str, path: Path_) -> str:
        encrypted = secrets.PREFIX in text
        env = _ENV.search(text) is not None
        if not (encrypted or env):
            return text
        if env and origin == "engine":
            report(path, "${env:…} is not allowed in a config the engine serves")
            return ""
        if not _settings_zone(path, origin):
            what = "an enc:v1: value" if encrypted else "${env:…}"
            report(path, f"{what} is resolved only inside connection settings, not here")
            return ""
        if not decrypt:
            return text
        if text.startswith(secrets.PREFIX):
            keys = settings().secret_keys.get_secret_value()
            return _decrypted(text, path, keys, tenant_id, report)
        return _from_env(text, path, settings().environ() if environ is None else environ, report)

    return walk(node, ())


def _decrypted(text: str, path: Path_, keys: str, tenant_id: str, report: Report) -> str:
    """The plaintext of an ``enc:v1:`` value; '' (and a report) if it does not decrypt."""
    try:
        return secrets.decrypt(text, keys=keys, tenant=tenant_id)
    except ConfigError as exc:
        report(path, exc.message)
        return ""


def _from_env(text: str, path: Path_, environ: Mapping[str, str], report: Report) -> str:
    """``text`` with each ``${env:NAME}`` replaced from ``environ``; '' if one is unset."""
    missing = [m.group(1) for m in _ENV.finditer(text) if m.group(1) not in environ]
    if missing:
        report(path, f"environment variable {missing[0]} is not set")
        return ""
    return _ENV.sub(lambda m: environ[m.group(1)], text)


def reach_for(origin: Origin, settings: Settings | None = None) -> Reach:
    """What the sources of a config from ``origin`` may reach, from the operator's settings."""
    if origin == "file":
        return UNRESTRICTED
    settings = settings or Settings.load()
    try:
        networks = parse_networks(settings.allow_networks)
    except ValueError as exc:
        raise ConfigError(f"{ENV_ALLOW_NETWORKS}: {exc}") from None
    return Reach(
        trusted=False,
        data_dir=settings.data_dir.resolve() if settings.data_dir else None,
        allow_networks=networks,
    )


def worker_templates_dir(settings: Settings | None = None) -> Path | None:
    """The worker's own ``templates/``: ``WORKER_TEMPLATES_DIR``, else the one it ships with."""
    configured = (settings or Settings.load()).templates_dir
    if configured:
        return configured.resolve()
    for candidate in (Path(__file__).resolve().parents[1] / "templates", Path.cwd() / "templates"):
        if candidate.is_dir():
            return candidate
    return None


def check_untrusted(data: Mapping[str, Any], reach: Reach, report: Report) -> None:
    """Report what an engine-served document may not say, as far as the text shows it."""
    for key in _OPERATOR_BLOCKS:
        if key in data:
            report((key,), f"`{key}` is the operator's setting, not a tenant's")
    audit = data.get("audit")
    if isinstance(audit, Mapping) and "dsn" in audit:
        report(("audit", "dsn"), "where the audit log goes is the operator's setting")
    if "templates_dir" in data:
        report(
            ("templates_dir",),
            "templates come inline or from the worker's own templates/, not from a folder "
            "a tenant names",
        )
    sources = data.get("data_sources")
    for index, source in enumerate(sources if isinstance(sources, list) else []):
        if isinstance(source, Mapping) and isinstance(source.get("connection"), Mapping):
            at: Path_ = ("data_sources", index, "connection")
            if source.get("type") in _FILE_TYPES:
                _check_file(source["connection"], at, reach, report)
            for where, host in _hosts(source["connection"], at):
                _check_host(host, where, reach, report)


def _check_file(connection: Mapping[str, Any], at: Path_, reach: Reach, report: Report) -> None:
    raw = connection.get("path")
    if not isinstance(raw, str):
        return
    if reach.data_dir is None:
        report(
            (*at, "path"),
            f"file sources are not available to engine-served configs ({ENV_DATA_DIR} is not set)",
        )
        return
    target = (reach.data_dir / raw).resolve()
    if not target.is_relative_to(reach.data_dir):
        report((*at, "path"), f"must name a file below {ENV_DATA_DIR}")


def _hosts(node: Any, path: Path_) -> Iterator[tuple[Path_, str]]:
    """Every host a connection block names: host fields and the hosts of URLs."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if isinstance(value, str) and str(key).lower() in _HOST_KEYS:
                yield (*path, key), value
            else:
                yield from _hosts(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _hosts(value, (*path, i))
    elif isinstance(node, str) and "://" in node:
        netloc = urlsplit(node.strip()).netloc.rpartition("@")[2]
        for member in netloc.split(","):  # mongodb://a:1,b:2/
            try:
                host = urlsplit("//" + member).hostname
            except ValueError:
                host = None
            if host:
                yield path, host


def _check_host(host: str, path: Path_, reach: Reach, report: Report) -> None:
    name = host.strip().lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        name = "127.0.0.1"
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return  # a name: checked where the source connects, after DNS
    if not reach.allows_ip(name):
        report(
            path,
            f"{host} is not a public address; the operator can allow it with {ENV_ALLOW_NETWORKS}",
        )

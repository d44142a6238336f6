"""Where one tenant's sources may reach: files below a folder, networks the operator allows.

A config on the worker's disk is the operator's and is trusted (`UNRESTRICTED`).
A config the engine serves was written by the tenant (contract §5.0), so its
sources get a `Reach` with ``trusted=False``:

- file sources (``sqlite``, ``csv``, ``excel``, ``json``, and every file a
  connection names: CA files, keys, a local WSDL) read only below ``data_dir``
  (``WORKER_DATA_DIR``), after following symlinks; none when it is unset;
- network sources connect only to public addresses, unless the address is in
  ``allow_networks`` (``WORKER_ALLOW_NETWORKS``).

The network rule is enforced where a connection is really made: an audit hook
(PEP 578) sees every Python ``socket.connect``, after DNS and on every redirect,
reconnect and pool member, in whatever driver. It applies while `reaching` holds
an untrusted reach in the current context; asyncio tasks and
``asyncio.to_thread`` copy the context, so whatever a source's driver starts
while serving a read is checked, and the worker's own connections are not.
Sockets opened in C (FreeTDS) are not audited: such a connector connects to an
address it checked itself (`Reach.check_host`). A plain ``threading.Thread``
does not copy the context either: a connector must not connect from one.

Two exceptions keep drivers working: a UDP ``connect`` to port 53 (a resolver
may live on loopback) and the local end of the source's own SSH tunnel (the
bastion was checked when the tunnel was opened).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr

from worker.errors import SourceUnavailable

__all__ = [
    "UNRESTRICTED",
    "EgressRefused",
    "Network",
    "Reach",
    "current",
    "parse_networks",
    "reaching",
    "refusal_in",
    "targets_of",
    "tunnel_end",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_ALLOW_HINT = "the operator can allow it with WORKER_ALLOW_NETWORKS"
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class EgressRefused(PermissionError):
    """A tenant's source tried to reach an address or file its config may not reach."""


@dataclass(frozen=True)
class Reach:
    """Where one tenant's sources may go (contract §5.0)."""

    #: an operator's file config: no limits
    trusted: bool = True
    #: untrusted: file sources only below this (None: none at all)
    data_dir: Path | None = None
    #: untrusted: private addresses the operator allows anyway
    allow_networks: tuple[Network, ...] = ()

    def allows_ip(self, ip: str) -> bool:
        """True when trusted, when ``ip`` is public, or when it is in ``allow_networks``."""
        if self.trusted:
            return True
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])  # an IPv6 zone is no part of it
        except ValueError:
            return False
        for candidate in {address, _unwrapped(address)}:
            if any(
                candidate.version == net.version and candidate in net for net in self.allow_networks
            ):
                return True
        return _public(_unwrapped(address))  # a mapped address is judged by what it carries

    def file(self, raw: str, base_dir: Path) -> Path:
        """A configured file path, resolved: relative to ``base_dir`` when trusted, else
        relative to ``data_dir`` and checked by `check_file`."""
        if self.trusted:
            path = Path(raw).expanduser()
            return path if path.is_absolute() else base_dir / path
        if self.data_dir is None:
            raise EgressRefused(
                f"the file {raw!r} is refused: this config is served by the engine and the "
                "operator has set no WORKER_DATA_DIR, so it may read no files"
            )
        return self.check_file(self.data_dir / raw)  # an absolute `raw` replaces data_dir

    def check_file(self, path: Path) -> Path:
        """``path`` resolved (symlinks followed), if it lies below ``data_dir``; else refused."""
        if self.trusted:
            return path
        if self.data_dir is None:
            raise EgressRefused(f"the file {str(path)!r} is refused: WORKER_DATA_DIR is not set")
        root = self.data_dir.resolve()
        real = path.resolve()
        if not real.is_relative_to(root):
            raise EgressRefused(
                f"the file {str(path)!r} is refused: a config served by the engine reads "
                f"files only below WORKER_DATA_DIR ({root})"
            )
        return real

    async def check_host(self, source_id: str, host: str, port: int) -> list[str]:
        """Resolve ``host`` and check every address; the addresses, or `SourceUnavailable`.

        A name that does not resolve passes (the driver will say so, and its
        connection would be checked anyway).
        """
        if self.trusted:
            return []
        if host.startswith(("/", "@")):
            raise SourceUnavailable(
                source_id,
                f"{host!r} is a local socket: a config served by the engine cannot use one",
            )
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port or None, type=socket.SOCK_STREAM
            )
        except (socket.gaierror, UnicodeError):
            return []
        ips = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for ip in ips:
            if not self.allows_ip(ip):
                shown = ip if ip == host else f"{host} ({ip})"
                raise SourceUnavailable(
                    source_id,
                    f"cannot connect to {shown}: {ip} is not a public address; {_ALLOW_HINT}",
                )
        return ips


UNRESTRICTED = Reach()


def _unwrapped(address: _Address) -> _Address:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64), else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def _public(address: _Address) -> bool:
    return address.is_global and not (address.is_multicast or address.is_reserved)


def parse_networks(text: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 192.168.1.5"`` as networks (a bare address is a /32 or /128)."""
    networks: list[Network] = []
    for item in text.split(","):
        entry = item.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an address or a network (CIDR)") from None
    return tuple(networks)


# -- the reach in force, and the audit hook that enforces it ------------------------------

_CURRENT: contextvars.ContextVar[Reach] = contextvars.ContextVar(
    "egress_reach", default=UNRESTRICTED
)
# Local ends of SSH tunnels (host, port): their bastion was checked when they opened.
_TUNNEL_ENDS: set[tuple[str, int]] = set()


def current() -> Reach:
    """The reach in force in this context (`UNRESTRICTED` outside `reaching`)."""
    return _CURRENT.get()


@contextlib.contextmanager
def reaching(reach: Reach) -> Iterator[None]:
    """Hold ``reach`` for the code inside, and for the tasks and threads it starts."""
    token = _CURRENT.set(reach)
    try:
        yield
    finally:
        _CURRENT.reset(token)


@contextlib.contextmanager
def tunnel_end(host: str, port: int) -> Iterator[None]:
    """Let connections to an SSH tunnel's local end through while it is open."""
    _TUNNEL_ENDS.add((host, port))
    try:
        yield
    finally:
        _TUNNEL_ENDS.discard((host, port))


def refusal_in(exc: BaseException) -> EgressRefused | None:
    """The `EgressRefused` behind ``exc`` (its causes, contexts, groups), if any."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        err = todo.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, EgressRefused):
            return err
        if isinstance(err, BaseExceptionGroup):
            todo.extend(err.exceptions)
        todo.extend(e for e in (err.__cause__, err.__context__) if e is not None)
        # asyncio's create_connection, pymongo's server selection… fold failures into text.
        if _MARK in str(err):
            return EgressRefused(str(err)[str(err).index(_MARK) :])
    return None


_MARK = "refused by the worker:"


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event != "socket.connect":
        return
    reach = _CURRENT.get()
    if reach.trusted:
        return
    sock, address = args
    _check_connect(reach, sock, address)


def _check_connect(reach: Reach, sock: socket.socket, address: Any) -> None:
    family = sock.family
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise EgressRefused(
            f"{_MARK} a {getattr(family, 'name', family)} connection from a config served by "
            "the engine (a local socket is a file on the worker's host)"
        )
    host, port = str(address[0]), int(address[1])
    if sock.type == socket.SOCK_DGRAM and port == 53:
        return  # name resolution; the system's resolver may be on loopback
    if (host, port) in _TUNNEL_ENDS:
        return
    for ip in _addresses(host, port, family):
        if not reach.allows_ip(ip):
            shown = ip if ip == host else f"{host} ({ip})"
            raise EgressRefused(f"{_MARK} {shown}:{port} is not a public address; {_ALLOW_HINT}")


def _addresses(host: str, port: int, family: int) -> list[str]:
    """``host`` itself when it is an address; else what it resolves to (connect resolves too)."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    else:
        return [host]
    try:
        infos = socket.getaddrinfo(host, port, family)
    except (OSError, UnicodeError):
        return [host]  # unresolvable: allows_ip refuses a name, and connect would fail
    return [str(info[4][0]) for info in infos]


# -- where a connection's settings point ------------------------------------------------


def targets_of(settings: BaseModel) -> list[tuple[str, int]]:
    """The (host, port) pairs a source's settings name: ``host``/``port`` fields and the
    hosts of URLs and DSNs; only the bastion's when an ``ssh`` block is set."""
    ssh = getattr(settings, "ssh", None)
    bastion = getattr(ssh, "host", None)
    if isinstance(bastion, str):
        return [(bastion, int(getattr(ssh, "port", 22)))]
    found: list[tuple[str, int]] = []
    host = getattr(settings, "host", None)
    if isinstance(host, str) and host:
        port = getattr(settings, "port", 0)
        found.append((host, port if isinstance(port, int) else 0))
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str) and "://" in value:
            found.extend(_url_targets(value))
    return list(dict.fromkeys(found))


def _url_targets(url: str) -> list[tuple[str, int]]:
    parts = urlsplit(url)
    if parts.scheme.endswith("+srv"):
        return []  # a DNS SRV name: the hosts it names are checked as they are connected to
    default = {"http": 80, "https": 443}.get(parts.scheme, 0)
    netloc = parts.netloc.rpartition("@")[2]
    found = []
    for item in netloc.split(","):
        host, port = _host_port(item)
        if host:
            found.append((host, port or default))
    return found


def _host_port(item: str) -> tuple[str, int]:
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = item.partition(":")
    return host, int(port) if port.isdigit() else 0


sys.addaudithook(_audit)

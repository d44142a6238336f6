"""Reaching private sources: TLS settings and an SSH tunnel, for every network connector.

The seed's tenants keep their systems off the internet. As n8n's database
credentials do, a network source's ``connection`` takes::

    ssl:                      # TLS; verified by default once the block is there
      mode: verify-full       # disable | require | verify-ca | verify-full
      ca_file: certs/ca.pem   # relative to the config file
      cert_file: …            # client certificate and key, for mutual TLS
      key_file: …
    ssh:                      # an SSH bastion in front of the source
      host: bastion.example.com
      port: 22
      username: tunnel
      private_key: enc:v1:…   # PEM text (a secret), or private_key_file
      known_host_key: "ssh-ed25519 AAAA…"   # or known_hosts_file; never unchecked

A connector builds its TLS context with `TLSSettings.context` and, when ``ssh``
is set, connects through `SSHTunnel`: a local port forwarded to the source's
host and port, opened with the connector's pool and closed with it.

For a config the engine serves, the files named here are read only below
``WORKER_DATA_DIR`` and the bastion must be a public address (or one the
operator allows): see `connectors.egress`. The tunnel's local end is let
through while it is open.
"""

from __future__ import annotations

import contextlib
import ipaddress
import ssl
import warnings
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from connectors import egress
from worker.errors import ConfigError, ConnectorMissing, SourceAuthError, SourceUnavailable

__all__ = [
    "NetworkAccess",
    "NetworkSettings",
    "SSHSettings",
    "SSHTunnel",
    "TLSSettings",
    "is_loopback",
    "plain_on_loopback",
    "use_pgsslmode",
]

#: libpq's ``PGSSLMODE`` as the worker found it at start (`use_pgsslmode`): a connector
#: reads no environment of its own
_PGSSLMODE = {"value": ""}


def use_pgsslmode(value: str) -> None:
    """The operator's ``PGSSLMODE`` for `plain_on_loopback`; the worker tells it once, at start."""
    _PGSSLMODE["value"] = value


def is_loopback(host: str) -> bool:
    """``localhost``, ``127.0.0.0/8`` or ``::1``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_on_loopback(dsn: str) -> str | None:
    """asyncpg's ``ssl`` for a PostgreSQL URL the operator wrote: ``"allow"`` (plain
    first, TLS only if the server refuses plain) when every host it names is this
    machine and neither it nor ``PGSSLMODE`` names an ``sslmode``; otherwise None
    (asyncpg's ``prefer``: TLS whenever the server offers it). Loopback traffic never
    leaves the host, and TLS costs a round trip about a third of its client CPU."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    if "sslmode" in query or "ssl" in query or _PGSSLMODE["value"]:
        return None
    hosts = [
        h[1 : h.index("]")] if h.startswith("[") else h.rsplit(":", 1)[0]
        for h in (query.get("host") or parts.netloc.rpartition("@")[2].split(","))
        if h
    ]
    return "allow" if hosts and all(is_loopback(h) for h in hosts) else None


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TLSSettings(_Frozen):
    """TLS to the source; with the block present, certificates are verified unless told not."""

    mode: Literal["disable", "require", "verify-ca", "verify-full"] = "verify-full"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password: SecretStr | None = None

    @model_validator(mode="after")
    def _pairs(self) -> TLSSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        return self

    def context(self, base_dir: Path) -> ssl.SSLContext | None:
        """The client context, or None for ``mode: disable``."""
        if self.mode == "disable":
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.ca_file:
            ctx.load_verify_locations(cafile=str(_path(base_dir, self.ca_file)))
        if self.mode == "require":
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.mode == "verify-ca":
            ctx.check_hostname = False
        if self.cert_file and self.key_file:
            password = self.key_password.get_secret_value() if self.key_password else None
            ctx.load_cert_chain(
                str(_path(base_dir, self.cert_file)),
                str(_path(base_dir, self.key_file)),
                password=password,
            )
        return ctx


class SSHSettings(_Frozen):
    """An SSH bastion; the source's host and port are reached from it."""

    host: str
    port: int = Field(default=22, ge=1, le=65535)
    username: str
    private_key: SecretStr | None = None
    private_key_file: str | None = None
    passphrase: SecretStr | None = None
    password: SecretStr | None = None
    known_host_key: str | None = None
    known_hosts_file: str | None = None
    connect_timeout_s: float = Field(default=10, gt=0, le=120)

    @model_validator(mode="after")
    def _complete(self) -> SSHSettings:
        if not (self.private_key or self.private_key_file or self.password):
            raise ValueError("give private_key, private_key_file or password")
        if not (self.known_host_key or self.known_hosts_file):
            raise ValueError(
                "give known_host_key or known_hosts_file: the bastion's host key is always checked"
            )
        return self


class NetworkSettings(BaseModel):
    """Mix into a connector's settings: the optional ``ssl`` and ``ssh`` blocks."""

    ssl: TLSSettings | None = None
    ssh: SSHSettings | None = None


def _path(base_dir: Path, raw: str) -> Path:
    """A configured file, as the reach in force allows it (`egress.Reach.file`)."""
    return egress.current().file(raw, base_dir)


class SSHTunnel:
    """A local port forwarded through an SSH bastion to ``dest_host:dest_port``."""

    def __init__(self, settings: SSHSettings, *, source_id: str, base_dir: Path) -> None:
        self.settings = settings
        self.source_id = source_id
        self.base_dir = base_dir
        self._conn: Any = None
        self._listener: Any = None
        self._end = contextlib.ExitStack()

    async def open(self, dest_host: str, dest_port: int) -> tuple[str, int]:
        """Connect to the bastion and forward; returns the local (host, port) to use."""
        try:
            with warnings.catch_warnings():
                # asyncssh names DSA key types at import, which cryptography 47+ warns
                # about; tunnels never offer DSA keys, so the warning tells an operator nothing.
                warnings.filterwarnings("ignore", "DSA is deprecated", category=UserWarning)
                import asyncssh
        except ImportError as exc:
            raise ConnectorMissing(
                "an ssh tunnel needs asyncssh: pip install 'data-lookup-worker[ssh]'"
            ) from exc
        s = self.settings
        known_hosts = self._known_hosts(asyncssh)
        client_keys = self._client_keys(asyncssh)
        try:
            self._conn = await asyncssh.connect(
                s.host,
                s.port,
                username=s.username,
                password=s.password.get_secret_value() if s.password else None,
                client_keys=client_keys,
                passphrase=s.passphrase.get_secret_value() if s.passphrase else None,
                known_hosts=known_hosts,
                connect_timeout=s.connect_timeout_s,
                agent_path=None,
                config=[],
            )
            self._listener = await self._conn.forward_local_port(
                "127.0.0.1", 0, dest_host, dest_port
            )
        except asyncssh.PermissionDenied as exc:
            await self.close()
            raise SourceAuthError(
                self.source_id, "the SSH bastion refused the credentials"
            ) from exc
        except asyncssh.HostKeyNotVerifiable as exc:
            await self.close()
            raise SourceAuthError(
                self.source_id, "the SSH bastion's host key does not match the configured one"
            ) from exc
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            await self.close()
            raise SourceUnavailable(
                self.source_id,
                f"cannot open the SSH tunnel via {s.host}:{s.port} ({type(exc).__name__})",
            ) from exc
        local = ("127.0.0.1", int(self._listener.get_port()))
        self._end.enter_context(egress.tunnel_end(*local))
        return local

    def _client_keys(self, asyncssh: Any) -> Any:
        s = self.settings
        passphrase = s.passphrase.get_secret_value() if s.passphrase else None
        try:
            if s.private_key is not None:
                return [asyncssh.import_private_key(s.private_key.get_secret_value(), passphrase)]
            if s.private_key_file is not None:
                return [
                    asyncssh.read_private_key(
                        str(_path(self.base_dir, s.private_key_file)), passphrase
                    )
                ]
        except (asyncssh.KeyImportError, OSError) as exc:
            raise ConfigError(
                f"source {self.source_id!r}: the SSH private key does not load"
            ) from exc
        return None

    def _known_hosts(self, asyncssh: Any) -> Any:
        s = self.settings
        if s.known_host_key is not None:
            try:
                key = asyncssh.import_public_key(s.known_host_key)
            except (asyncssh.KeyImportError, ValueError) as exc:
                raise ConfigError(
                    f"source {self.source_id!r}: known_host_key is not an SSH public key"
                ) from exc
            return ([key], [], [])
        return str(_path(self.base_dir, s.known_hosts_file or ""))

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        conn, self._conn = self._conn, None
        self._end.close()
        if listener is not None:
            listener.close()
        if conn is not None:
            conn.close()
            await conn.wait_closed()


class NetworkAccess:
    """How one source is reached: straight, or through its SSH tunnel; with its TLS context.

    A connector makes one in `setup`, awaits `route` before it opens its pool
    (the tunnel, if any, opens then), and awaits `close` after closing the pool.
    """

    def __init__(
        self,
        source_id: str,
        *,
        ssl: TLSSettings | None,
        ssh: SSHSettings | None,
        base_dir: Path,
    ) -> None:
        self.source_id = source_id
        self.ssl = ssl
        self.ssh = ssh
        self.base_dir = base_dir
        self._tunnel: SSHTunnel | None = None
        self._local: tuple[str, int] | None = None

    def tls(self) -> ssl.SSLContext | None:
        return self.ssl.context(self.base_dir) if self.ssl else None

    async def route(self, host: str, port: int) -> tuple[str, int]:
        """The address to connect to for ``host:port`` (a tunnel's local end with ``ssh``)."""
        if self.ssh is None:
            return host, port
        if self._local is None:
            tunnel = SSHTunnel(self.ssh, source_id=self.source_id, base_dir=self.base_dir)
            self._local = await tunnel.open(host, port)
            self._tunnel = tunnel
        return self._local

    async def close(self) -> None:
        tunnel, self._tunnel, self._local = self._tunnel, None, None
        if tunnel is not None:
            await tunnel.close()

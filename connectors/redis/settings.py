"""The ``connection`` of a ``redis`` source: a ``url``, or ``host`` and the rest."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from pydantic import ConfigDict, Field, SecretStr, model_validator

from connectors.base import ConnectionSettings
from connectors.network import SSHSettings, TLSSettings

__all__ = ["RedisSettings", "RedisTarget", "parse_url"]


class RedisSettings(ConnectionSettings):
    """``connection`` of a ``redis`` source: a ``url``, or ``host`` and the rest."""

    # A bad url would otherwise be echoed, password and all, in the error's text.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    #: ``redis://[user:password@]host[:port][/db]``, or ``rediss://`` for TLS
    url: SecretStr | None = None
    host: str | None = Field(default=None, min_length=1)
    port: int = Field(default=6379, ge=1, le=65535)
    db: int = Field(default=0, ge=0)
    username: str | None = Field(default=None, min_length=1)
    password: SecretStr | None = None
    #: connections kept open; one read uses one at a time
    pool_size: int = Field(default=10, ge=1, le=256)
    #: how long opening a connection may take (and never longer than the read's deadline)
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60)
    #: shown by CLIENT LIST; the ACL user needs ``+client|setname`` for it
    client_name: str | None = Field(default=None, pattern=r"^[!-~]{1,64}$")
    #: TLS to the server, and an SSH bastion in front of it (connectors.network)
    ssl: TLSSettings | None = None
    ssh: SSHSettings | None = None

    @model_validator(mode="after")
    def _url_or_host(self) -> RedisSettings:
        if self.url is None:
            if self.host is None:
                raise ValueError("give either url or host")
            return self
        spelled = {"host", "port", "db", "username", "password"} & self.model_fields_set
        if spelled:
            raise ValueError(
                f"url already says where and who; leave out {', '.join(sorted(spelled))}"
            )
        parse_url(self.url.get_secret_value())  # fails here, at load time
        return self


@dataclass(frozen=True)
class RedisTarget:
    """Where and as whom to connect, from ``url`` or the separate fields."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: bool


def parse_url(url: str) -> RedisTarget:
    # Messages here never quote the URL: it may hold the password.
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("url must start with redis:// or rediss://")
    if parts.query or parts.fragment:
        raise ValueError("url takes no ?query or #fragment; set db, pool_size… as fields")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("url has a port that is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError("url names no host")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError("url path must be a database number, like redis://host:6379/0")
    return RedisTarget(
        host=parts.hostname,
        port=port,
        db=int(path or 0),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=parts.scheme == "rediss",
    )

"""Secrets are known one way: the connector settings' ``SecretStr`` marks, walked.

The redactor, the plaintext warnings and ``worker connectors`` read the same walk;
a name rule decides only where no settings model describes the data.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

import pytest
from click.testing import CliRunner
from pydantic import AfterValidator, BaseModel, Field, SecretStr

from connectors.registry import available
from worker.cli import cli
from worker.redact import secrets_in
from worker.secret_fields import (
    ANY,
    config_secrets,
    names_a_secret,
    open_paths,
    secret_fields,
    secret_paths,
)
from worker.secrets import plaintext_warnings


class _Key(BaseModel):
    type: Literal["key"] = "key"
    value: Annotated[SecretStr, AfterValidator(lambda v: v)]


class _Basic(BaseModel):
    type: Literal["basic"] = "basic"
    username: str
    password: SecretStr


class _Tunnel(BaseModel):
    host: str
    private_key: SecretStr | None = None
    private_key_file: str | None = None


class _Settings(BaseModel):
    host: str
    password: SecretStr | None = None
    auth: Annotated[_Key | _Basic, Field(discriminator="type")] | None = None
    tunnels: list[_Tunnel] = Field(default_factory=list)
    tokens: dict[str, SecretStr] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    api_key: SecretStr | None = Field(default=None, alias="apiKey")


def test_secret_paths__walk_nested_models_unions_lists_and_maps() -> None:
    assert secret_paths(_Settings) == {
        ("password",),
        ("auth", "value"),
        ("auth", "password"),
        ("tunnels", ANY, "private_key"),
        ("tokens", ANY),
        ("apiKey",),
    }
    assert open_paths(_Settings) == {("headers",)}
    assert secret_fields(_Settings) == {"password", "tokens", "apiKey"}


def test_worker_connectors__marks_the_fields_that_are_secret_values() -> None:
    done = CliRunner().invoke(cli, ["connectors", "--json"])
    assert done.exit_code == 0, done.output
    rows = {row["type"]: row for row in json.loads(done.output)}
    rest = rows["rest_api"]["connection"]
    assert rest["api_key"]["secret"] and not rest["base_url"]["secret"]
    assert not rest["auth"]["secret"]  # it holds secrets; it is not one
    for info in available():
        if info.cls is not None:
            marked = {name for name, f in rows[info.type_name]["connection"].items() if f["secret"]}
            assert marked == secret_fields(info.cls.Settings), info.type_name


@pytest.mark.parametrize(
    ("key", "parent", "secret"),
    [
        pytest.param("password", "connection", True, id="password"),
        pytest.param("X-Auth-Token", "headers", True, id="token-header"),
        pytest.param("client_secret", "auth", True, id="client-secret"),
        pytest.param("value", "auth", True, id="auth-value"),
        pytest.param("value", "filter", False, id="filter-value"),
        pytest.param("private_key_file", "ssh", False, id="key-file"),
        pytest.param("token_url", "auth", False, id="token-url"),
        pytest.param("username", "connection", False, id="username"),
    ],
)
def test_names_a_secret__where_no_model_says(key: str, parent: str, secret: bool) -> None:
    assert names_a_secret(key, parent) is secret


def _source(type_name: str, connection: dict[str, object]) -> dict[str, object]:
    return {"data_sources": [{"id": "s", "type": type_name, "connection": connection}]}


def test_secrets_in__a_dsn_gives_its_password_not_the_whole_url() -> None:
    document = _source("postgresql", {"dsn": "postgresql://crm:pa%24s-word@db/crm"})
    assert secrets_in(document) == {"pa%24s-word", "pa$s-word"}


def test_secrets_in__nested_marks_headers_by_name_and_the_engine_block() -> None:
    connection = {
        "host": "db",
        "database": "crm",
        "username": "reader",
        "ssh": {"host": "jump", "username": "tunnel", "passphrase": "ssh-phrase-1"},
        "ssl": {"mode": "require", "key_password": "tls-key-pw"},
    }
    document = {**_source("postgresql", connection), "engine": {"token": "engine-tok-1"}}
    assert secrets_in(document) == {"ssh-phrase-1", "tls-key-pw", "engine-tok-1"}
    headers = {"X-Auth-Token": "hdr-token-1", "Accept": "application/json"}
    api = _source("rest_api", {"base_url": "https://api.example.com", "headers": headers})
    assert secrets_in(api) == {"hdr-token-1"}


def test_secrets_in__a_type_that_cannot_load_falls_back_to_the_name_rule() -> None:
    connection = {"host": "db", "username": "reader", "password": "hunter22", "pin": "1234"}
    assert secrets_in(_source("acme_erp", connection)) == {"hunter22"}


def test_secrets_in__a_service_account_written_as_a_mapping() -> None:
    key = {"type": "service_account", "private_key": "-----BEGIN KEY-----x", "client_id": "1"}
    document = _source("google_sheets", {"spreadsheet_id": "abc", "service_account": key})
    assert secrets_in(document) == {"-----BEGIN KEY-----x"}


def test_plaintext_warnings__every_marked_secret_in_clear_and_only_those() -> None:
    connection = {
        "host": "db",
        "username": "reader",
        "password": "${env:DB_PASSWORD}",
        "ssl": {"mode": "require", "key_password": "in-clear"},
        "ssh": {"host": "jump", "username": "t", "private_key": "enc:v1:abc"},
    }
    document = {"data_sources": [
        {"id": "a", "type": "postgresql", "connection": connection},
        {"id": "b", "type": "postgresql", "connection": {"dsn": "postgresql://db/crm"}},
        {"id": "c", "type": "redis", "connection": {"url": "redis://:pw@cache:6379/0"}},
    ]}  # fmt: skip
    assert [w.split(": ")[1].split(" is ")[0] for w in plaintext_warnings(document, "t")] == [
        "data_sources[0].connection.ssl.key_password",
        "data_sources[2].connection.url",
    ]


def test_config_secrets__name_where_each_was_found() -> None:
    document = _source("rest_api", {"base_url": "https://x.example", "api_key": "k3y-1"})
    assert [(s.where, s.value) for s in config_secrets(document)] == [
        (("data_sources", 0, "connection", "api_key"), "k3y-1")
    ]

"""The redaction layer blanks credentials out of text, log records and results."""

from __future__ import annotations

import logging

import pytest

from worker.redact import MASK, Redactor, secrets_in


def test_secrets_in__finds_credentials_and_dsn_passwords() -> None:
    document = {
        "data_sources": [
            {"connection": {"host": "db", "password": "hunter22", "username": "reader"}},
            {"connection": {"dsn": "postgresql://u:p%40ss-word@db/crm"}},
            {
                "connection": {
                    "api_key": "k3y-abcdef",
                    "headers": {"Authorization": "Bearer {api_key}"},
                }
            },
            {"connection": {"service_account": {"private_key": "-----BEGIN KEY-----xyz"}}},
        ],
        "engine": {"token": "engine-token-1"},
    }
    found = secrets_in(document)
    assert {"hunter22", "p%40ss-word", "p@ss-word", "k3y-abcdef", "engine-token-1"} <= found
    assert "-----BEGIN KEY-----xyz" in found
    assert "reader" not in found and "db" not in found


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        pytest.param("login failed for hunter22", f"login failed for {MASK}", id="value"),
        pytest.param(
            "Authorization: Bearer abcdefghijkl", f"Authorization: Bearer {MASK}", id="bearer"
        ),
        pytest.param("nothing to hide", "nothing to hide", id="clean"),
    ],
)
def test_scrub__blanks_known_secrets_and_bearer_tokens(text: str, clean: str) -> None:
    assert Redactor(["hunter22"]).scrub(text) == clean


def test_filter__log_records_lose_secrets_in_messages_and_exceptions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    redactor = Redactor(["hunter22"])
    logger = logging.getLogger("redact-test")
    caplog.handler.addFilter(redactor)
    try:
        logger.warning("connecting with %s", "hunter22")
        try:
            raise RuntimeError("password hunter22 refused")
        except RuntimeError:
            logger.exception("boom")
    finally:
        caplog.handler.removeFilter(redactor)
    assert "hunter22" not in caplog.text
    assert MASK in caplog.text


def test_scrub_any__walks_results() -> None:
    result = {"error": "bad hunter22", "rows": [{"note": "hunter22"}], "n": 3}
    assert Redactor(["hunter22"]).scrub_any(result) == {
        "error": f"bad {MASK}",
        "rows": [{"note": MASK}],
        "n": 3,
    }


def test_an_http_sources_auth_value_is_a_secret_wherever_it_is_written() -> None:
    """``auth: {type: header|query, name, value}``: the value is the API key; a
    ``value`` anywhere else (a filter's, say) is not."""
    from worker.secrets import plaintext_warnings

    auth = {"type": "header", "name": "X-Api-Key", "value": "k3y-of-the-tenant"}
    document = {
        "data_sources": [
            {"id": "api", "connection": {"base_url": "https://api.example.com", "auth": auth},
             "queries": {"q": {"filter": {"value": "not-a-secret"}}}},
        ]
    }  # fmt: skip
    assert secrets_in(document) == {"k3y-of-the-tenant"}
    assert plaintext_warnings(document, "t.yaml") == [
        "t.yaml: data_sources[0].connection.auth.value is a plaintext secret; "
        "encrypt it with `worker secrets encrypt`"
    ]
    assert "k3y-of-the-tenant" not in Redactor(secrets_in(document)).scrub(
        "GET /items?api_key=k3y-of-the-tenant"
    )

"""Job payloads (contract §2) and parameter validation, with property tests."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.config import Lookup, load_tenant
from worker.errors import ConfigError, InvalidInput, NotOurs
from worker.jobs import (
    JobRequest,
    normalise_query_type,
    read_payload,
    validate_params,
)

TENANT = "whappstream"

#: The contract's example job, first spelling.
SEED_JOB: dict[str, Any] = {
    "job_type": "data_lookup",
    "tenant_id": TENANT,
    "query_type": "order_status",
    "parameters": {"order_id": "12345", "customer_phone": "+1234567890"},
    "data_source": "primary_crm",
    "customer_context": {"phone": "+1234567890", "name": "Ana", "locale": "en"},
}

#: Lookups built the way the worker builds them: by loading a config.
CONFIG: dict[str, Any] = {
    "tenant_id": TENANT,
    "data_sources": [
        {
            "id": "db",
            "type": "sqlite",
            "connection": {"path": "shop.db"},
            "queries": {"order_status": "SELECT status FROM orders WHERE order_id = $1"},
        }
    ],
    "lookups": {
        "order_status": {
            "args": ["order_id"],
            "params": {"order_id": {"pattern": "[0-9]{1,12}", "max_length": 12}},
        },
        "typed": {
            "query": "SELECT 1",
            "params": {
                "s": {"type": "string", "required": False},
                "i": {"type": "integer", "required": False},
                "n": {"type": "number", "required": False},
                "b": {"type": "boolean", "required": False},
                "phone": {"type": "phone", "required": False},
                "email": {"type": "email", "required": False},
                "day": {"type": "date", "required": False},
            },
        },
        "sku": {
            "query": "SELECT 1",
            "params": {"sku": {"pattern": "[A-Za-z0-9-]{1,32}", "max_length": 32}},
        },
        "note": {"query": "SELECT 1", "params": {"note": {"max_length": 40}}},
        "big": {"query": "SELECT 1", "params": {"text": {"max_length": 10_000}}},
    },
}
LOOKUPS: dict[str, Lookup] = load_tenant(document=CONFIG, name="test config").lookups


def _job(**changes: Any) -> dict[str, Any]:
    job = {**SEED_JOB, **changes}
    return {k: v for k, v in job.items() if v is not None}


# --- read_payload: the two spellings ---------------------------------------------------


def test_read_payload__seed_spelling() -> None:
    request = read_payload(SEED_JOB, TENANT)

    assert request.tenant_id == TENANT
    assert request.query_type == "order_status"
    assert request.parameters == {"order_id": "12345", "customer_phone": "+1234567890"}
    assert request.data_source == "primary_crm"
    assert request.customer == SEED_JOB["customer_context"]
    assert request.reply_to == "+1234567890"


def test_read_payload__query_alias() -> None:
    job = _job(query_type=None, query="order status", data_source=None)

    request = read_payload(job, TENANT)

    assert request.query_type == "order_status"
    assert request.data_source is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("order status", "order_status", id="space"),
        pytest.param("Order-Status  now", "order_status_now", id="case-dash-spaces"),
        pytest.param("  Order status ", "order_status", id="outer-blanks"),
        pytest.param("order - status", "order_status", id="run-of-space-and-dash"),
        pytest.param("order_status", "order_status", id="already-normal"),
    ],
)
def test_normalise_query_type(text: str, expected: str) -> None:
    assert normalise_query_type(text) == expected
    assert read_payload(_job(query_type=None, query=text), TENANT).query_type == expected


def test_read_payload__query_type_wins_over_query() -> None:
    request = read_payload(_job(query="stock check"), TENANT)

    assert request.query_type == "order_status"


def test_read_payload__json_text_and_bytes() -> None:
    text = json.dumps(SEED_JOB)

    assert read_payload(text, TENANT) == read_payload(SEED_JOB, TENANT)
    assert read_payload(text.encode(), TENANT).query_type == "order_status"


# --- the reply address -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({"reply_to": "+1999"}, "+1999", id="reply_to-first"),
        pytest.param({}, "+1234567890", id="customer-phone-second"),
        pytest.param(
            {"customer_context": {"name": "Ana"}, "parameters": {"customer_phone": "+1555"}},
            "+1555",
            id="parameter-phone-third",
        ),
        pytest.param(
            {"customer_context": {"phone": "  "}, "parameters": {"customer_phone": "+1555"}},
            "+1555",
            id="blank-phone-skipped",
        ),
        pytest.param(
            {"reply_to": "", "customer_context": {"phone": "+1777"}}, "+1777", id="empty-reply_to"
        ),
        pytest.param(
            {"customer_context": {}, "parameters": {"order_id": "1"}}, None, id="no-address"
        ),
    ],
)
def test_read_payload__reply_address_precedence(
    changes: dict[str, Any], expected: str | None
) -> None:
    assert read_payload(_job(**changes), TENANT).reply_to == expected


# --- not this worker's -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        pytest.param(_job(tenant_id="other"), "tenant", id="wrong-tenant"),
        pytest.param(_job(tenant_id=None), "tenant", id="no-tenant"),
        pytest.param(_job(job_type="send_message"), "job_type", id="wrong-job-type"),
        pytest.param(_job(job_type=None), "job_type", id="no-job-type"),
        pytest.param(["data_lookup"], "not a JSON object", id="list"),
        pytest.param(42, "not a JSON object", id="number"),
        pytest.param(None, "not a JSON object", id="none"),
        pytest.param('"data_lookup"', "not a JSON object", id="json-string"),
        pytest.param("{not json", "not valid JSON", id="invalid-json-text"),
        pytest.param(b"\xff\xfe", "not valid JSON", id="invalid-bytes"),
        pytest.param(
            _job(data_source_config={"id": "primary_crm", "host": "evil.example"}),
            "connection settings",
            id="source-config-host",
        ),
        pytest.param(
            _job(data_source_config={"password": "x"}), "connection settings", id="source-config-pw"
        ),
    ],
)
def test_read_payload__not_ours(payload: Any, match: str) -> None:
    with pytest.raises(NotOurs, match=match):
        read_payload(payload, TENANT)


def test_read_payload__source_config_credentials_never_in_the_error() -> None:
    job = _job(data_source_config={"id": "db", "password": "hunter2-secret"})

    with pytest.raises(NotOurs) as info:
        read_payload(job, TENANT)

    assert "hunter2-secret" not in str(info.value)


def test_read_payload__source_config_names_the_source() -> None:
    request = read_payload(_job(data_source=None, data_source_config={"id": "x"}), TENANT)

    assert request.data_source == "x"


def test_read_payload__data_source_wins_over_source_config() -> None:
    request = read_payload(_job(data_source_config={"id": "x"}), TENANT)

    assert request.data_source == "primary_crm"


# --- malformed, but ours: invalid_input ---------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        pytest.param({"parameters": ["12345"]}, "parameters", id="parameters-list"),
        pytest.param({"customer_context": "+1234567890"}, "customer_context", id="context-text"),
        pytest.param({"data_source_config": "primary_crm"}, "data_source_config", id="cfg-text"),
        pytest.param({"query_type": "x" * 101}, "query_type", id="query-type-too-long"),
        pytest.param({"query_type": 7}, "query_type", id="query-type-number"),
        pytest.param({"query_type": None}, "no query_type", id="no-query-type"),
    ],
)
def test_read_payload__wrong_types_are_invalid_input(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInput, match=match) as info:
        read_payload(_job(**changes), TENANT)

    assert info.value.reply_to == "+1234567890"


def test_read_payload__invalid_input_keeps_the_reply_address() -> None:
    job = _job(customer_context="not an object", reply_to=None)

    with pytest.raises(InvalidInput) as info:
        read_payload(job, TENANT)

    assert info.value.reply_to == "+1234567890"  # parameters.customer_phone


def test_read_payload__blank_query_type_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="no query_type"):
        read_payload(_job(query_type="   "), TENANT)


def test_read_payload__source_config_id_must_be_text() -> None:
    with pytest.raises(InvalidInput, match="data_source_config"):
        read_payload(_job(data_source=None, data_source_config={"id": ["a"]}), TENANT)


def test_read_payload__deeply_nested_json_text_is_not_ours() -> None:
    with pytest.raises(NotOurs, match="not valid JSON"):
        read_payload("[" * 100_000, TENANT)


# --- property: read_payload never raises anything else -----------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
KEYS = [
    "query_type",
    "query",
    "parameters",
    "data_source",
    "data_source_config",
    "customer_context",
    "reply_to",
]
#: Payloads that pass the first checks, with anything in the other fields.
OUR_PAYLOADS = st.fixed_dictionaries(
    {"job_type": st.just("data_lookup"), "tenant_id": st.just(TENANT)},
    optional={
        **{key: JSON_VALUES for key in KEYS},
        "query_type": st.text(max_size=30) | JSON_VALUES,
        "parameters": st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=4),
        "customer_context": st.dictionaries(st.sampled_from(["phone", "name"]), JSON_VALUES),
        "data_source_config": st.dictionaries(st.sampled_from(["id", "host"]), JSON_VALUES),
    },
)
ANY_PAYLOAD = JSON_VALUES | OUR_PAYLOADS


@settings(max_examples=300, deadline=None)
@given(payload=ANY_PAYLOAD, as_text=st.booleans())
def test_read_payload__property_request_or_known_error(payload: Any, as_text: bool) -> None:
    try:
        request = read_payload(json.dumps(payload) if as_text else payload, TENANT)
    except (NotOurs, InvalidInput):
        return
    assert isinstance(request, JobRequest)
    assert request.tenant_id == TENANT
    assert isinstance(request.query_type, str)
    assert request.reply_to is None or isinstance(request.reply_to, str)


# --- validate_params ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        pytest.param("s", "  hello  ", "hello", id="string-stripped"),
        pytest.param("s", 42, "42", id="string-from-number"),
        pytest.param("i", "12", 12, id="integer-text"),
        pytest.param("i", 12, 12, id="integer"),
        pytest.param("i", "-7", -7, id="integer-negative"),
        pytest.param("n", "12.5", 12.5, id="number-text"),
        pytest.param("n", 3, 3.0, id="number-int"),
        pytest.param("b", "yes", True, id="boolean-yes"),
        pytest.param("b", "FALSE", False, id="boolean-false-text"),
        pytest.param("b", "1", True, id="boolean-1"),
        pytest.param("b", False, False, id="boolean"),
        pytest.param("phone", "+1 (234) 567-890", "+1234567890", id="phone-punctuated"),
        pytest.param("phone", "0612345678", "0612345678", id="phone-local"),
        pytest.param("email", "ana@example.com", "ana@example.com", id="email"),
        pytest.param("day", "2025-09-12", "2025-09-12", id="date"),
    ],
)
def test_validate_params__types_accept(name: str, value: Any, expected: Any) -> None:
    values = validate_params(LOOKUPS["typed"], {name: value}, reply_to=None)

    assert values == {name: expected}
    assert type(values[name]) is type(expected)


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        pytest.param("i", "12.5", "the i must be a whole number", id="integer-fraction"),
        pytest.param("i", "twelve", "must be a whole number", id="integer-word"),
        pytest.param("i", 12.5, "must be a whole number", id="integer-float"),
        pytest.param("i", "9" * 19, "must be a whole number", id="integer-huge"),
        pytest.param("n", "nan", "must be a number", id="number-nan"),
        pytest.param("n", "inf", "must be a number", id="number-inf"),
        pytest.param("n", "12,5", "must be a number", id="number-comma"),
        pytest.param("b", "maybe", "must be yes or no", id="boolean-word"),
        pytest.param("phone", "call me", "must be a phone number", id="phone-words"),
        pytest.param("phone", "+12", "must be a phone number", id="phone-short"),
        pytest.param("email", "ana@", "must be an email address", id="email-no-domain"),
        pytest.param("email", "ana example.com", "must be an email address", id="email-space"),
        pytest.param("day", "12/09/2025", "must be a date", id="date-slashes"),
        pytest.param("day", "2025-02-30", "must be a date", id="date-impossible"),
        pytest.param("s", True, "must be text or a number", id="string-boolean"),
        pytest.param("i", True, "must be text or a number", id="integer-boolean"),
        pytest.param("s", {"$ne": None}, "must be text or a number", id="dict-refused"),
        pytest.param("s", ["a", "b"], "must be text or a number", id="list-refused"),
        pytest.param("s", "a\x00b", "not allowed", id="nul-byte"),
    ],
)
def test_validate_params__types_refuse(name: str, value: Any, match: str) -> None:
    with pytest.raises(InvalidInput, match=match) as info:
        validate_params(LOOKUPS["typed"], {name: value}, reply_to="+1555")

    assert info.value.reply_to == "+1555"
    assert len(info.value.errors) == 1


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({}, id="absent"),
        pytest.param({"order_id": None}, id="null"),
        pytest.param({"order_id": ""}, id="empty"),
        pytest.param({"order_id": "   "}, id="blank"),
    ],
)
def test_validate_params__required_missing(raw: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match="the order id is missing"):
        validate_params(LOOKUPS["order_status"], raw, reply_to=None)


def test_validate_params__optional_missing_is_left_out() -> None:
    assert validate_params(LOOKUPS["typed"], {"s": "", "i": None}, reply_to=None) == {}


def test_validate_params__every_problem_reported() -> None:
    raw = {"i": "x", "n": "y", "email": "z"}

    with pytest.raises(InvalidInput) as info:
        validate_params(LOOKUPS["typed"], raw, reply_to=None)

    assert len(info.value.errors) == 3


@pytest.mark.parametrize(
    ("value", "match"),
    [
        pytest.param("12a45", "not in the expected format", id="pattern-letter"),
        pytest.param("12345 OR 1=1", "not in the expected format", id="pattern-injection"),
        pytest.param("1234567890123", "too long", id="max-length"),
    ],
)
def test_validate_params__pattern_and_max_length(value: str, match: str) -> None:
    with pytest.raises(InvalidInput, match=match) as info:
        validate_params(LOOKUPS["order_status"], {"order_id": value}, reply_to=None)

    assert value not in str(info.value)


def test_validate_params__pattern_is_a_full_match() -> None:
    lookup = LOOKUPS["order_status"]

    assert validate_params(lookup, {"order_id": " 12345 "}, reply_to=None) == {"order_id": "12345"}
    with pytest.raises(InvalidInput, match="expected format"):
        validate_params(lookup, {"order_id": "12345\n6"}, reply_to=None)


def test_validate_params__megabyte_string_refused_without_echo() -> None:
    value = "A" * 1_000_000

    with pytest.raises(InvalidInput, match="too long") as info:
        validate_params(LOOKUPS["big"], {"text": value}, reply_to=None)

    message = str(info.value)
    assert "AAAAAAAAAA" not in message
    assert len(message) < 200


def test_validate_params__unknown_params_dropped() -> None:
    raw = {"order_id": "12345", "customer_phone": "+1234567890", "$where": "1=1"}

    assert validate_params(LOOKUPS["order_status"], raw, reply_to=None) == {"order_id": "12345"}


# --- property: validate_params keeps its rule or refuses without echoing -----------------


def _assert_safe(lookup: Lookup, name: str, value: str) -> None:
    rule = lookup.params[name]
    refused: InvalidInput | None = None
    try:
        values = validate_params(lookup, {name: value}, reply_to=None)
    except InvalidInput as exc:
        refused = exc
    if refused is not None:
        assert refused.errors
        if len(value) > 20:
            assert all(value not in error for error in refused.errors)
            assert value not in str(refused)
        return
    result = values[name]
    assert isinstance(result, str)
    assert len(result) <= rule.max_length
    assert "\x00" not in result
    if rule.pattern is not None:
        assert re.fullmatch(rule.pattern, result)


TEXT = st.text() | st.text(alphabet="abcXYZ019- \t\n\x00", max_size=60)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=TEXT)
def test_validate_params__property_pattern_rule(value: str) -> None:
    _assert_safe(LOOKUPS["sku"], "sku", value)


@settings(max_examples=300, deadline=None)
@given(value=TEXT | st.text(min_size=35, max_size=80))
def test_validate_params__property_length_rule(value: str) -> None:
    _assert_safe(LOOKUPS["note"], "note", value)


# --- the customer's strings, made safe once in read_payload --------------------------------

LONE = "\ud800"


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        pytest.param(
            {"parameters": {"order_id": "12" + LONE}},
            "the order id contains characters that cannot be read",
            id="parameter",
        ),
        pytest.param(
            {"parameters": {"order_id": {"deep": ["x", LONE]}}},
            "the order id contains characters that cannot be read",
            id="nested-parameter",
        ),
        pytest.param(
            {"parameters": {LONE: "12345"}},
            "a detail contains characters that cannot be read",
            id="parameter-name",
        ),
        pytest.param(
            {"customer_context": {"phone": "+1234567890", "name": "An" + LONE}},
            "the customer details contain characters that cannot be read",
            id="customer-name",
        ),
        pytest.param(
            {"query_type": "order" + LONE},
            "the question type contains characters that cannot be read",
            id="query-type",
        ),
        pytest.param(
            {"data_source": LONE},
            "the data source contains characters that cannot be read",
            id="data-source",
        ),
        pytest.param(
            {"parameters": {"order_id": "123\x0045"}},
            "the order id contains characters that are not allowed",
            id="nul",
        ),
        pytest.param(
            {"parameters": {"order_id": "12\x1b[2J"}},
            "the order id contains characters that are not allowed",
            id="escape",
        ),
    ],
)
def test_read_payload__unsafe_text_is_invalid_input_with_the_reply_address(
    changes: dict[str, Any], error: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        read_payload(json.dumps(_job(**changes)), TENANT)  # a surrogate is valid JSON text
    assert caught.value.errors == [error]
    assert caught.value.reply_to == "+1234567890"
    assert LONE not in str(caught.value) and "\x00" not in str(caught.value)


def test_read_payload__tab_newline_and_return_in_parameters_pass() -> None:
    request = read_payload(_job(parameters={"note": "one\ttwo\r\nthree"}), TENANT)
    assert request.parameters == {"note": "one\ttwo\r\nthree"}


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"reply_to": "+1" + LONE}, id="reply-to"),
        pytest.param({"customer_context": {"phone": "+1" + LONE}}, id="customer-phone"),
        pytest.param({"reply_to": "+1234\x00567890"}, id="nul-in-reply-to"),
    ],
)
def test_read_payload__an_unreadable_address_leaves_no_reply_address(
    changes: dict[str, Any],
) -> None:
    with pytest.raises(InvalidInput) as caught:
        read_payload(_job(**changes), TENANT)
    assert caught.value.reply_to is None


def test_validate_params__unreadable_text_refused_when_called_directly() -> None:
    with pytest.raises(InvalidInput, match="the sku contains characters that cannot be read"):
        validate_params(LOOKUPS["sku"], {"sku": "ab" + LONE}, reply_to=None)


#: Any code point, lone surrogates and control characters included (`st.text` leaves
#: surrogates out, so characters are joined by hand).
ANY_CHAR = st.characters(codec=None, exclude_categories=[]) | st.sampled_from(
    ["\ud800", "\udfff", "\x00", "\x1b", "\t"]
)
WILD_TEXT = st.lists(ANY_CHAR, max_size=12).map("".join)
WILD_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | WILD_TEXT,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(WILD_TEXT, children, max_size=3)
    ),
    max_leaves=12,
)
WILD_PAYLOADS = st.fixed_dictionaries(
    {"job_type": st.just("data_lookup"), "tenant_id": st.just(TENANT)},
    optional={key: WILD_VALUES | WILD_TEXT for key in KEYS},
)


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in (*_texts(k), *_texts(v))]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    return []


@settings(max_examples=400, deadline=None)
@given(payload=WILD_PAYLOADS | WILD_VALUES, as_text=st.booleans())
def test_read_payload__property_any_json_is_a_request_or_a_known_error(
    payload: Any, as_text: bool
) -> None:
    refused: InvalidInput | None = None
    try:
        request = read_payload(json.dumps(payload) if as_text else payload, TENANT)
    except NotOurs:
        return
    except InvalidInput as exc:
        refused = exc
    if refused is not None:  # its texts and address can be sent as they are
        assert refused.reply_to is None or refused.reply_to.encode("utf-8")
        assert all(error.encode("utf-8") for error in refused.errors)
        return
    # What comes out can be written by every driver, and parameters hold no control bytes.
    texts = [request.query_type, request.reply_to or "", request.data_source or ""]
    texts += _texts(dict(request.parameters)) + _texts(dict(request.customer))
    for text in texts:
        text.encode("utf-8")
    for text in _texts(dict(request.parameters)):
        assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", text)


# --- tenant patterns run on RE2 --------------------------------------------------------------


def test_validate_params__backtracking_pattern_runs_in_linear_time() -> None:
    document = {
        **CONFIG,
        "lookups": {"evil": {"query": "SELECT 1", "params": {"sku": {"pattern": "(a+)+b"}}}},
    }
    lookup = load_tenant(document=document, name="test config").lookups["evil"]
    # On Python's `re` this input backtracks for minutes; the test's timeout would fail it.
    for attack in ("a" * 30, "a" * 150 + "c"):
        with pytest.raises(InvalidInput, match="the sku is not in the expected format"):
            validate_params(lookup, {"sku": attack}, reply_to=None)
    assert validate_params(lookup, {"sku": "aaab"}, reply_to=None) == {"sku": "aaab"}


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        pytest.param(r"(a)\1", "invalid escape sequence", id="backreference"),
        pytest.param(r"a(?=b)", "invalid perl operator", id="lookahead"),
        pytest.param(r"(a", "missing )", id="unbalanced"),
    ],
)
def test_config__pattern_re2_cannot_run_is_a_config_error_with_its_path(
    pattern: str, reason: str
) -> None:
    document = {
        **CONFIG,
        "lookups": {"evil": {"query": "SELECT 1", "params": {"sku": {"pattern": pattern}}}},
    }
    with pytest.raises(ConfigError) as caught:
        load_tenant(document=document, name="test config")
    text = str(caught.value)
    assert "lookups.evil.params.sku.pattern" in text
    assert "RE2" in text and reason in text

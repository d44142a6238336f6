"""Routing a customer's words to a lookup (contract §5 ``route``, §7 ``worker route``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.config import Tenant, load_tenant
from worker.errors import ConfigErrors
from worker.router import Route, normalise, route_text

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "config" / "tenants" / "demo.yaml"


@pytest.fixture(scope="module")
def demo() -> Tenant:
    return load_tenant(DEMO)


# --- real customer sentences on the demo tenant ------------------------------------

ORDER = "order_status"
STOCK = "check_stock"
ACCOUNT = "customer_lookup"

SENTENCES = [
    # English
    pytest.param("where's my order #12345??", ORDER, {"order_id": "12345"}, id="en-hash-number"),
    pytest.param("Order status 12345", ORDER, {"order_id": "12345"}, id="en-seed-dev-call"),
    pytest.param("ordr 12345 status", ORDER, {"order_id": "12345"}, id="en-typo-ordr"),
    pytest.param("WHERE IS MY ORDER 55501!!!", ORDER, {"order_id": "55501"}, id="en-shouting"),
    pytest.param("tracking for #987654 pls 🙏", ORDER, {"order_id": "987654"}, id="en-emoji"),
    pytest.param("is SKU-789 in stock 🙏", STOCK, {"sku": "SKU-789"}, id="en-stock-emoji"),
    pytest.param("Is sku-791 available?", STOCK, {"sku": "sku-791"}, id="en-stock-lower"),
    pytest.param("what's my balance?", ACCOUNT, {}, id="en-account-no-sender"),
    # Spanish
    pytest.param("¿Dónde está mi PEDIDO 12346?", ORDER, {"order_id": "12346"}, id="es-accents"),
    pytest.param("estado del pedido #555", ORDER, {"order_id": "555"}, id="es-estado"),
    pytest.param("pedido nº １２３４５", ORDER, {"order_id": "12345"}, id="es-full-width"),
    pytest.param("pedidio 12345 porfa", ORDER, {"order_id": "12345"}, id="es-typo-pedidio"),
    pytest.param("¿Hay existencias del SKU-791?", STOCK, {"sku": "SKU-791"}, id="es-stock"),
    pytest.param("¿cuál es mi saldo?", ACCOUNT, {}, id="es-account"),
    # Portuguese
    pytest.param("Qual o status do meu pedido 12345?", ORDER, {"order_id": "12345"}, id="pt"),
    pytest.param("rastreio da encomenda #987654", ORDER, {"order_id": "987654"}, id="pt-enc"),
    pytest.param("tem o SKU-790 em estoque?", STOCK, {"sku": "SKU-790"}, id="pt-stock"),
    pytest.param("o produto SKU-789 está disponível?", STOCK, {"sku": "SKU-789"}, id="pt-acc"),
    pytest.param("quero ver minha conta", ACCOUNT, {}, id="pt-account"),
]


@pytest.mark.parametrize(("text", "query_type", "parameters"), SENTENCES)
def test_route__real_sentences(
    demo: Tenant, text: str, query_type: str, parameters: dict[str, str]
) -> None:
    found = route_text(demo, text)

    assert (found.query_type, found.parameters) == (query_type, parameters), found.reasons
    assert found.routed
    assert found.ambiguous == ()


SMALL_TALK = ["hi", "thanks!", "👍", "Hola, buenos días", "obrigado!!", "ok", "", "   ", "12345"]


@pytest.mark.parametrize("text", SMALL_TALK)
def test_route__small_talk_goes_nowhere(demo: Tenant, text: str) -> None:
    found = route_text(demo, text, sender="+1234567890")

    assert found == Route(None, {"customer_phone": "+1234567890"}, reasons=found.reasons)
    assert not found.routed
    assert "no lookup matches" in found.reasons[-1]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("order stock", id="one-keyword-each"),
        pytest.param("pedido estoque", id="pt-es-one-each"),
    ],
)
def test_route__a_tie_is_ambiguous_and_routes_nowhere(demo: Tenant, text: str) -> None:
    found = route_text(demo, text)

    assert found.query_type is None
    assert found.ambiguous == (STOCK, ORDER)
    assert "ambiguous" in found.reasons[-1]


@pytest.mark.parametrize(
    ("text", "query_type", "missing"),
    [
        pytest.param("where is my order?", ORDER, ("order_id",), id="en-order-no-number"),
        pytest.param("¿dónde está mi pedido?", ORDER, ("order_id",), id="es-order-no-number"),
        pytest.param("is it in stock?", STOCK, ("sku",), id="en-stock-no-sku"),
        pytest.param("minha conta", ACCOUNT, ("customer_phone",), id="pt-account-no-sender"),
    ],
)
def test_route__missing_required_parameters_are_named(
    demo: Tenant, text: str, query_type: str, missing: tuple[str, ...]
) -> None:
    found = route_text(demo, text)

    assert found.query_type == query_type
    assert found.missing == missing


def test_route__sender_is_customer_phone_and_wins_over_the_text(demo: Tenant) -> None:
    found = route_text(demo, "my account, my number is +1 555 000 1111", sender="+1234567890")

    assert found.query_type == ACCOUNT
    assert found.parameters == {"customer_phone": "+1234567890"}
    assert found.missing == ()


def test_route__order_number_is_not_taken_from_a_sku(demo: Tenant) -> None:
    # the demo's order extractor skips digits glued to letters or a dash
    found = route_text(demo, "where is my order X-790 or ab12345?")

    assert found.query_type == ORDER
    assert found.missing == ("order_id",)


def test_route__explains_scores(demo: Tenant) -> None:
    found = route_text(demo, "ordr #12345")

    assert found.reasons[0] == "normalised text: 'ordr 12345'"
    assert any("'order' within a typo" in r and "order_id='12345'" in r for r in found.reasons)
    assert found.reasons[-1] == "routed to order_status (score 2)"


def test_route__exact_keyword_beats_a_typo(tmp_path: Path) -> None:
    tenant = _tenant(
        tmp_path,
        """
        a:
          source: db
          query: q
          route: {keywords: [order]}
        b:
          source: db
          query: q
          route: {keywords: [ordem]}
        """,
    )

    assert route_text(tenant, "my order").query_type == "a"
    assert route_text(tenant, "minha ordem").query_type == "b"


def test_route__keywords_are_whole_words_and_short_words_never_fuzzy(tmp_path: Path) -> None:
    tenant = _tenant(
        tmp_path,
        """
        a:
          source: db
          query: q
          route: {keywords: [where is my, tax]}
        """,
    )

    assert route_text(tenant, "somewhere is myself").query_type is None
    assert route_text(tenant, "the taxi").query_type is None
    assert route_text(tenant, "tex").query_type is None
    assert route_text(tenant, "Where is my thing").query_type == "a"
    assert route_text(tenant, "TAX!").query_type == "a"


def test_route__only_lookups_with_a_route_take_part(demo: Tenant) -> None:
    # the demo's faq lookup has no route: its words route nowhere
    assert route_text(demo, "faq topic opening_hours").query_type is None


def test_normalise__accents_case_punctuation_emoji() -> None:
    assert normalise("¿Dónde está mi PEDIDO #12346?") == "donde esta mi pedido 12346"
    assert normalise("Where's my order??? 👍🏽") == "wheres my order"
    assert normalise("ＯＲＤＥＲ １２３") == "order 123"  # full-width forms (NFKD)
    assert normalise("Ação—já") == "acao ja"


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(), sender=st.none() | st.text(max_size=20))
def test_route__never_raises(demo: Tenant, text: str, sender: str | None) -> None:
    found = route_text(demo, text, sender=sender)

    assert isinstance(found, Route)
    assert found.routed == (found.query_type is not None)
    assert not (found.routed and found.ambiguous)


def test_route__fast_on_a_tenant_with_many_lookups(tmp_path: Path) -> None:
    lookups = "".join(
        f"""
        lookup_{i}:
          source: db
          query: q
          route:
            keywords: [word{i}a, palavra{i}, "phrase number {i}", termino{i}, schluessel{i}]
            extract: {{param_{i}: '#?([0-9]{{3,12}})'}}
        """
        for i in range(20)
    )
    tenant = _tenant(tmp_path, lookups)
    text = "¿Dónde está mi palavra7 pedido #12346? gracias 🙏 por favor rápido, phrase number 3"
    route_text(tenant, text)  # builds the index once

    rounds = 500
    start = time.perf_counter()
    for _ in range(rounds):
        route_text(tenant, text, sender="+1234567890")
    per_call = (time.perf_counter() - start) / rounds

    # well under a millisecond on a quiet machine; the bound leaves room for a busy CI
    assert per_call < 0.005


# --- config errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "message"),
    [
        pytest.param("{extract: {order_id: '([0-9]+'}}", "cannot run on RE2", id="bad-regex"),
        pytest.param("{extract: {order_id: '(?=x)([0-9]+)'}}", "cannot run on RE2", id="lookahd"),
        pytest.param("{extract: {order_id: '[0-9]+'}}", "capturing group", id="no-group"),
        pytest.param("{keywords: ['🙏']}", "no letters or digits", id="emoji-keyword"),
        pytest.param("{keywords: [order], other: 1}", "unknown key 'other'", id="unknown-key"),
    ],
)
def test_config__bad_route_is_an_error_with_its_path(
    tmp_path: Path, route: str, message: str
) -> None:
    path = _write(tmp_path, f"a:\n  source: db\n  query: q\n  route: {route}\n")

    with pytest.raises(ConfigErrors) as info:
        load_tenant(path)

    text = str(info.value)
    assert message in text
    assert "lookups.a.route" in text


# --- worker route ------------------------------------------------------------------


def _worker(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "WORKER_"))}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "route", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_cli__routes_to_json() -> None:
    done = _worker("--tenant", "demo", "where is my order 12345", "--json")

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "query_type": "order_status",
        "parameters": {"order_id": "12345"},
    }


@pytest.mark.slow
def test_cli__sender_explain_and_text(tmp_path: Path) -> None:
    done = _worker(
        "--config", str(DEMO), "¿cuál es mi saldo?", "--from", "+1234567890", "--explain"
    )

    assert done.returncode == 0, done.stderr
    assert "normalised text: 'cual es mi saldo'" in done.stdout
    assert "lookup:     customer_lookup" in done.stdout
    assert "parameters: customer_phone=+1234567890" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("text", ["thanks!", "👍"])
def test_cli__small_talk_exits_1(text: str) -> None:
    done = _worker("--tenant", "demo", text)

    assert done.returncode == 1
    assert f"no lookup matches: {text!r}" in done.stdout


@pytest.mark.slow
def test_cli__ambiguity_and_missing_are_said() -> None:
    tie = _worker("--tenant", "demo", "order stock", "--json")
    missing = _worker("--tenant", "demo", "where is my order?")

    assert tie.returncode == 1
    assert json.loads(tie.stdout)["ambiguous"] == ["check_stock", "order_status"]
    assert missing.returncode == 0, missing.stderr
    assert "missing:    order_id" in missing.stdout


# --- helpers ----------------------------------------------------------------------

BASE = """\
tenant_id: acme
data_sources:
  - id: db
    type: sqlite
    connection:
      path: shop.db
    queries:
      q: SELECT 1 AS one
lookups:
"""


def _write(tmp_path: Path, lookups: str) -> Path:
    body = textwrap.indent(textwrap.dedent(lookups).strip("\n"), "  ")
    path = tmp_path / "acme.yaml"
    path.write_text(BASE + body + "\n", encoding="utf-8")
    return path


def _tenant(tmp_path: Path, lookups: str) -> Tenant:
    return load_tenant(_write(tmp_path, lookups))


SEED = REPO / "config" / "tenants" / "whappstream.json"


@pytest.fixture(scope="module")
def seed() -> Tenant:
    return load_tenant(SEED)


@pytest.mark.parametrize(
    ("text", "query_type", "params"),
    [
        pytest.param("Order status 12345", "order_status", {"order_id": "12345"}, id="seed-dev"),
        pytest.param(
            "What is the status of order #12345?",
            "order_status",
            {"order_id": "12345"},
            id="seed-customer",
        ),
        pytest.param("is SKU-789 in stock?", "check_stock", {"sku": "SKU-789"}, id="stock"),
        pytest.param(
            "product details SKU-790", "product_details", {"sku": "SKU-790"}, id="details"
        ),
    ],
)
def test_route__a_config_without_routes_routes_by_its_read_names(
    seed: Tenant, text: str, query_type: str, params: dict[str, str]
) -> None:
    """The seed's config has no `route` block: its query and endpoint names route it."""
    routed = route_text(seed, text, sender="+1234567890")
    assert routed.query_type == query_type, routed.reasons
    assert routed.parameters == {**params, "customer_phone": "+1234567890"}
    assert routed.missing == ()


@pytest.mark.parametrize("text", ["hi", "thanks!", "👍", "12345"])
def test_route__implicit_routes_leave_small_talk_alone(seed: Tenant, text: str) -> None:
    assert not route_text(seed, text, sender="+1234567890").routed


def test_route__explicit_routes_turn_implicit_ones_off(demo: Tenant) -> None:
    """Once any lookup has a `route`, only those take part (the demo has some)."""
    assert not route_text(demo, "faq shipping", sender="+1234567890").routed

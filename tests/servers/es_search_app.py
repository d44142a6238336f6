"""A small stand-in for Elasticsearch's ``_search`` API, for the aggregation tests.

No Elasticsearch runs on this machine (see the elasticsearch tests' docstring).
This aiohttp app answers what the official client sends, in the shapes the
Elasticsearch 9 REST reference documents: ``GET /`` (the product check: every
answer carries ``X-Elastic-Product: Elasticsearch``) and ``POST
/{index}/_search`` over a few in-memory documents. It evaluates only what the
tests use — ``match_all``, ``term``, ``bool.filter`` of terms; the terms, avg,
sum, min, max, value_count, cardinality, filter, filters, range, histogram and
top_hits aggregations, with ``size`` — and answers anything else with a 400
``{"error": {"type": "parsing_exception"}}`` as Elasticsearch does for what it
cannot parse. It is not Elasticsearch: relevance, analysis, date histograms and
the rest are not there. Every request is kept by the app's `Recorder`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from tests.servers.hostile import Recorder, recorded_app

__all__ = ["ORDERS", "es_search_app"]

_PRODUCT = {"X-Elastic-Product": "Elasticsearch"}

ORDERS: list[dict[str, Any]] = [
    {"_id": "1", "order_id": "12345", "phone": "+1234567890", "status": "shipped", "total": 19.5},
    {"_id": "2", "order_id": "12346", "phone": "+1234567890", "status": "processing", "total": 5.0},
    {"_id": "3", "order_id": "12347", "phone": "+1234567890", "status": "shipped", "total": 40.0},
    {"_id": "4", "order_id": "20000", "phone": "+1999999999", "status": "delivered", "total": 7.25},
]


class _Unsupported(Exception):
    """Something this stand-in does not evaluate: a 400, as ES answers a bad request."""


def _answer(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(body), status=status, content_type="application/json", headers=_PRODUCT
    )


def _matches(query: Any, doc: dict[str, Any]) -> bool:
    if not isinstance(query, dict) or len(query) != 1:
        raise _Unsupported("a query is one clause")
    ((kind, spec),) = query.items()
    if kind == "match_all":
        return True
    if kind == "term":
        ((field, value),) = spec.items()
        value = value.get("value") if isinstance(value, dict) else value
        return doc.get(field) == value
    if kind == "bool" and set(spec) <= {"filter", "must"}:
        clauses = [*spec.get("filter", []), *spec.get("must", [])]
        return all(_matches(clause, doc) for clause in clauses)
    raise _Unsupported(f"query {kind}")


def _numbers(docs: Iterable[dict[str, Any]], field: str) -> list[float]:
    return [float(d[field]) for d in docs if isinstance(d.get(field), int | float)]


def _metric(kind: str, spec: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, Any]:
    values = _numbers(docs, spec["field"])
    present = [d[spec["field"]] for d in docs if spec["field"] in d]
    compute: dict[str, Callable[[], Any]] = {
        "avg": lambda: sum(values) / len(values) if values else None,
        "sum": lambda: sum(values),
        "min": lambda: min(values) if values else None,
        "max": lambda: max(values) if values else None,
        "value_count": lambda: len(present),
        "cardinality": lambda: len({json.dumps(v) for v in present}),
    }
    return {"value": compute[kind]()}


def _bucket(key: Any, docs: list[dict[str, Any]], subs: dict[str, Any]) -> dict[str, Any]:
    return {"key": key, "doc_count": len(docs), **_aggregate(subs, docs)}


def _terms(spec: dict[str, Any], docs: list[dict[str, Any]], subs: dict[str, Any]) -> Any:
    counts: dict[Any, list[dict[str, Any]]] = {}
    for doc in docs:
        if spec["field"] in doc:
            counts.setdefault(doc[spec["field"]], []).append(doc)
    ordered = sorted(counts.items(), key=lambda kv: (-len(kv[1]), str(kv[0])))
    size = spec.get("size", 10)
    return {
        "doc_count_error_upper_bound": 0,
        "sum_other_doc_count": sum(len(v) for _, v in ordered[size:]),
        "buckets": [_bucket(k, v, subs) for k, v in ordered[:size]],
    }


def _filters(spec: dict[str, Any], docs: list[dict[str, Any]], subs: dict[str, Any]) -> Any:
    named = spec["filters"]
    if not isinstance(named, dict):
        raise _Unsupported("anonymous filters")
    buckets = {}
    for name, query in named.items():
        bucket = _bucket(name, [d for d in docs if _matches(query, d)], subs)
        del bucket["key"]  # keyed by name, as ES answers named filters
        buckets[name] = bucket
    return {"buckets": buckets}


def _range(spec: dict[str, Any], docs: list[dict[str, Any]], subs: dict[str, Any]) -> Any:
    field, buckets = spec["field"], []
    for r in spec["ranges"]:
        low, high = r.get("from"), r.get("to")
        inside = [
            d
            for d in docs
            if isinstance(d.get(field), int | float)
            and (low is None or d[field] >= low)
            and (high is None or d[field] < high)
        ]
        key = f"{'*' if low is None else float(low)}-{'*' if high is None else float(high)}"
        bucket = _bucket(key, inside, subs)
        bucket.update({k: float(v) for k, v in (("from", low), ("to", high)) if v is not None})
        buckets.append(bucket)
    return {"buckets": buckets}


def _histogram(spec: dict[str, Any], docs: list[dict[str, Any]], subs: dict[str, Any]) -> Any:
    interval = float(spec["interval"])
    groups: dict[float, list[dict[str, Any]]] = {}
    for doc in docs:
        if isinstance(doc.get(spec["field"]), int | float):
            groups.setdefault(doc[spec["field"]] // interval * interval, []).append(doc)
    return {"buckets": [_bucket(k, groups[k], subs) for k in sorted(groups)]}


def _top_hits(spec: dict[str, Any], docs: list[dict[str, Any]], subs: dict[str, Any]) -> Any:
    hits = [_hit(d) for d in docs[: spec.get("size", 3)]]
    return {"hits": {"total": {"value": len(docs), "relation": "eq"}, "hits": hits}}


def _filter(spec: dict[str, Any], docs: list[dict[str, Any]], subs: dict[str, Any]) -> Any:
    matched = [d for d in docs if _matches(spec, d)]
    return {"doc_count": len(matched), **_aggregate(subs, matched)}


_BUCKETING: dict[str, Callable[[dict[str, Any], list[dict[str, Any]], dict[str, Any]], Any]] = {
    "terms": _terms,
    "filters": _filters,
    "range": _range,
    "histogram": _histogram,
    "top_hits": _top_hits,
    "filter": _filter,
}


def _agg(body: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, Any]:
    subs = body.get("aggs", {})
    (kind,) = [k for k in body if k != "aggs"]
    if kind in ("avg", "sum", "min", "max", "value_count", "cardinality"):
        return _metric(kind, body[kind], docs)
    if kind not in _BUCKETING:
        raise _Unsupported(f"aggregation {kind}")
    result: dict[str, Any] = _BUCKETING[kind](body[kind], docs, subs)
    return result


def _aggregate(aggs: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {name: _agg(body, docs) for name, body in aggs.items()}


def _hit(doc: dict[str, Any]) -> dict[str, Any]:
    source = {k: v for k, v in doc.items() if k != "_id"}
    return {"_index": "orders", "_id": doc["_id"], "_score": 1.0, "_source": source}


def es_search_app(
    recorder: Recorder, documents: list[dict[str, Any]] | None = None
) -> web.Application:
    """The stand-in over ``documents`` (default `ORDERS`), recording into ``recorder``."""
    docs = ORDERS if documents is None else documents

    async def info(request: web.Request) -> web.Response:
        return _answer(
            {
                "name": "stand-in",
                "cluster_name": "lookup-tests",
                "version": {"number": "9.0.0", "build_flavor": "default"},
                "tagline": "You Know, for Search",
            }
        )

    async def search(request: web.Request) -> web.Response:
        body = json.loads(await request.read() or b"{}")
        try:
            matched = [d for d in docs if _matches(body.get("query", {"match_all": {}}), d)]
            aggregations = _aggregate(body.get("aggs", {}), matched)
        except (_Unsupported, KeyError, TypeError, ValueError) as exc:
            error = {"type": "parsing_exception", "reason": f"not evaluated here: {exc}"}
            return _answer({"error": {"root_cause": [error], **error}, "status": 400}, 400)
        answer: dict[str, Any] = {
            "took": 1,
            "timed_out": False,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {"max_score": 1.0, "hits": [_hit(d) for d in matched[: body.get("size", 10)]]},
        }
        if "aggs" in body:
            answer["aggregations"] = aggregations
        return _answer(answer)

    app = recorded_app(recorder)
    app.router.add_get("/", info)
    app.router.add_post("/{index}/_search", search)
    return app

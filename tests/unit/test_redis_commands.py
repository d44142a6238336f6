"""The pure half of the redis connector: prepare, bind, window, shape (no server)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.base import ConfigError, NotARead
from connectors.redis.commands import (
    COMMANDS,
    READ_COMMANDS,
    BadArgument,
    BoundRead,
    InfoSpec,
    RedisQuery,
    RedisSpec,
    ScanSpec,
    glob_escape,
    info_result,
    prepare_spec,
    refusal_message,
    scan_line,
    scan_pattern,
    scanned_rows,
    shape_reply,
    value_lines,
    window,
    wire_text,
)

CAP = 5


def spec(command: str, key: str = "k", **fields: Any) -> RedisSpec:
    return prepare_spec(RedisQuery(command=command, key=key, **fields))


def line(command: str, params: dict[str, Any] | None = None, **fields: Any) -> list[str]:
    call = BoundRead.bind(spec(command, **fields), params or {})
    return call.line(CAP)


def redis_range(items: list[int], start: int, stop: int) -> list[int]:
    """LRANGE/ZRANGE as Redis reads an index window (both ends included)."""
    n = len(items)
    start = max(n + start, 0) if start < 0 else start
    stop = n + stop if stop < 0 else stop
    return items[start : stop + 1] if start <= stop else []


# -- prepare -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({"command": "HGETALL", "key": "order:{order_id}"}, id="hgetall"),
        pytest.param(
            {"command": "HGET", "key": "order:{order_id}", "field": "status"}, id="hget-field"
        ),
        pytest.param(
            {"command": "ZREVRANGE", "key": "orders:{customer_phone}", "args": [0, 4]},
            id="zrevrange",
        ),
        pytest.param({"command": " get ", "key": "x"}, id="normalised-name"),
    ],
)
def test_prepare_spec__the_readmes_queries(raw: dict[str, Any]) -> None:
    prepared = prepare_spec(RedisQuery.model_validate(raw))
    assert prepared.command in COMMANDS


@pytest.mark.parametrize("command", ["SET", "DEL", "EVAL", "CONFIG", "FLUSHALL", "KEYS"])
def test_prepare_spec__refuses_anything_but_reads(command: str) -> None:
    with pytest.raises(NotARead, match="not one of the read commands"):
        spec(command)


def test_prepare_spec__the_command_cannot_be_a_parameter() -> None:
    with pytest.raises(ConfigError, match="cannot be a parameter"):
        spec("{command}")


@pytest.mark.parametrize(
    ("command", "fields", "message"),
    [
        pytest.param("GET", {"args": ["x"]}, "wrong args for GET", id="get-takes-no-args"),
        pytest.param("LRANGE", {"args": [0]}, "wrong args for LRANGE", id="lrange-one-arg"),
        pytest.param("HGET", {}, 'HGET needs "field"', id="hget-without-field"),
        pytest.param("GET", {"field": "f"}, 'GET takes no "field"', id="get-with-field"),
        pytest.param("LRANGE", {"args": ["a", "1"]}, "whole number", id="lrange-not-a-number"),
        pytest.param("LINDEX", {"args": ["1_000"]}, "whole number", id="underscored-number"),
        pytest.param(
            "ZRANGE", {"args": [0, 1, "LIMIT", 0, 5]}, "LIMIT only with", id="limit-without-by"
        ),
        pytest.param(
            "ZRANGE", {"args": [0, 1, "BYLEX", "WITHSCORES"]}, "BYLEX", id="bylex-withscores"
        ),
        pytest.param(
            "ZRANGE", {"args": [0, 1, "{opt}"]}, "cannot be parameters", id="option-as-parameter"
        ),
        pytest.param("ZREVRANGE", {"args": [0, 1, "REV"]}, "unexpected 'REV'", id="rev-twice"),
        pytest.param(
            "ZRANGEBYSCORE", {"args": [0, 1, "LIMIT", 0]}, "offset and a count", id="short-limit"
        ),
    ],
)
def test_prepare_spec__refuses_args_that_do_not_fit(
    command: str, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        spec(command, **fields)


def test_prepare_spec__names_the_placeholders_of_key_field_args_and_limit() -> None:
    prepared = spec("ZRANGE", "z:{a}", args=["{b}", "{c}", "BYSCORE", "LIMIT", "{d}", "{e}"])
    assert prepared.names == ("a", "b", "c", "d", "e")


def test_read_commands__are_the_table_plus_scan_and_info() -> None:
    assert frozenset({*COMMANDS, "SCAN", "INFO"}) == READ_COMMANDS
    assert not READ_COMMANDS & {"SET", "DEL", "EVAL", "KEYS", "CONFIG"}


# -- binding: hostile values stay one argument ---------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("1\r\nDEL order:1\r\n", id="crlf-injection"),
        pytest.param("x FLUSHALL", id="space-and-command"),
        pytest.param("{other}", id="a-placeholder-in-the-value"),
        pytest.param("*", id="glob"),
        pytest.param("é\u0000", id="nul-and-unicode"),
    ],
)
def test_bind__a_hostile_value_is_exactly_one_argument(value: str) -> None:
    sent = line("HGET", {"id": value, "other": "nope"}, key="order:{id}", field="{id}")
    assert sent == ["HGET", f"order:{value}", value]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param(None, "", id="none"),
        pytest.param(True, "true", id="true"),
        pytest.param(12, "12", id="int"),
        pytest.param(1.5, "1.5", id="float"),
        pytest.param({"a": [1]}, '{"a": [1]}', id="mapping-as-json"),
    ],
)
def test_wire_text__what_redis_receives(value: Any, text: str) -> None:
    assert wire_text(value) == text


def test_bind__a_bound_range_that_is_not_a_number_is_a_bad_argument() -> None:
    call = BoundRead.bind(spec("LRANGE", args=["{from}", -1]), {"from": "ten"})
    with pytest.raises(BadArgument, match="not a whole number"):
        call.needs_length(CAP)


# -- the caps: never ask the server for more than max_rows --------------------------------


@pytest.mark.parametrize(
    ("command", "fields", "sent"),
    [
        pytest.param("SMEMBERS", {}, ["SRANDMEMBER", "k", "5"], id="smembers"),
        pytest.param("HKEYS", {}, ["HRANDFIELD", "k", "5"], id="hkeys"),
        pytest.param("HVALS", {}, ["HRANDFIELD", "k", "5", "WITHVALUES"], id="hvals"),
        pytest.param(
            "MGET", {"args": list("abcdefg")}, ["MGET", "k", "a", "b", "c", "d"], id="mget-keys"
        ),
        pytest.param("LRANGE", {"args": [0, -1]}, ["LRANGE", "k", "0", "4"], id="lrange-all"),
        pytest.param("LRANGE", {"args": [2, 3]}, ["LRANGE", "k", "2", "3"], id="lrange-small"),
        pytest.param(
            "ZREVRANGE",
            {"args": [0, 100, "WITHSCORES"]},
            ["ZREVRANGE", "k", "0", "4", "WITHSCORES"],
            id="zrevrange-withscores",
        ),
        pytest.param(
            "ZRANGE",
            {"args": ["-inf", "+inf", "BYSCORE"]},
            ["ZRANGE", "k", "-inf", "+inf", "BYSCORE", "LIMIT", "0", "5"],
            id="zrange-byscore-gets-a-limit",
        ),
        pytest.param(
            "ZRANGEBYSCORE",
            {"args": [0, 10, "LIMIT", 2, 50]},
            ["ZRANGEBYSCORE", "k", "0", "10", "LIMIT", "2", "5"],
            id="zrangebyscore-limit-narrowed",
        ),
        pytest.param(
            "ZRANGE",
            {"args": ["[a", "[z", "BYLEX", "REV", "LIMIT", 0, -1]},
            ["ZRANGE", "k", "[a", "[z", "BYLEX", "REV", "LIMIT", "0", "5"],
            id="negative-count-is-the-cap",
        ),
        pytest.param("HGETALL", {}, ["HGETALL", "k"], id="hgetall-whole"),
    ],
)
def test_line__asks_for_at_most_max_rows(
    command: str, fields: dict[str, Any], sent: list[str]
) -> None:
    assert line(command, **fields) == sent


def test_needs_length__only_for_windows_counted_from_the_end() -> None:
    from_end = BoundRead.bind(spec("LRANGE", args=[-3, -1]), {})
    assert from_end.needs_length(CAP) == "LLEN"
    assert from_end.line(CAP, length=10) == ["LRANGE", "k", "7", "9"]
    assert BoundRead.bind(spec("ZRANGE", args=[0, -2]), {}).needs_length(CAP) == "ZCARD"
    assert BoundRead.bind(spec("LRANGE", args=[0, -1]), {}).needs_length(CAP) is None


@given(
    items=st.lists(st.integers(), max_size=30),
    start=st.integers(-40, 40),
    stop=st.integers(-40, 40),
    cap=st.integers(1, 10),
)
def test_window__reads_the_first_cap_items_of_the_window_asked_for(
    items: list[int], start: int, stop: int, cap: int
) -> None:
    wanted = redis_range(items, start, stop)[:cap]
    known = window(start, stop, cap, len(items))
    assert known is not None
    assert redis_range(items, *known) == wanted
    unknown = window(start, stop, cap, None)
    if unknown is not None:  # narrowed without the length: right whatever the length
        assert redis_range(items, *unknown) == wanted


# -- replies as rows -------------------------------------------------------------------


def shape(command: str, reply: Any, **fields: Any) -> tuple[Any, Any]:
    result = shape_reply(BoundRead.bind(spec(command, **fields), {}), reply, CAP)
    return result.rows, result.data


@pytest.mark.parametrize(
    ("command", "fields", "reply", "rows", "data"),
    [
        pytest.param("GET", {}, "shipped", [{"value": "shipped"}], "shipped", id="string"),
        pytest.param("GET", {}, None, [], None, id="nil-not-found"),
        pytest.param("HLEN", {}, 3, [{"value": 3}], 3, id="number"),
        pytest.param("HEXISTS", {"field": "f"}, 1, [{"value": True}], True, id="bool"),
        pytest.param(
            "ZSCORE", {"args": ["m"]}, "inf", [{"value": "inf"}], "inf", id="inf-score-as-text"
        ),
        pytest.param(
            "HGETALL",
            {},
            ["status", "shipped", "total", "19.5"],
            [{"status": "shipped", "total": "19.5"}],
            {"status": "shipped", "total": "19.5"},
            id="hash-is-the-row",
        ),
        pytest.param("HGETALL", {}, [], [], None, id="empty-hash-not-found"),
        pytest.param(
            "HMGET",
            {"args": ["a", "b"]},
            ["1", None],
            [{"a": "1", "b": None}],
            {"a": "1", "b": None},
            id="hmget-by-field",
        ),
        pytest.param("HMGET", {"args": ["a", "b"]}, [None, None], [], None, id="hmget-nils"),
        pytest.param("MGET", {"args": ["b"]}, [None, None], [], None, id="mget-nils"),
        pytest.param(
            "SMEMBERS", {}, ["b", "a"], [{"value": "a"}, {"value": "b"}], ["a", "b"], id="sorted"
        ),
        pytest.param("HVALS", {}, ["f", "v"], [{"value": "v"}], ["v"], id="hvals-values"),
        pytest.param(
            "ZRANGE",
            {"args": [0, -1, "WITHSCORES"]},
            ["a", "1", "b", "2.5"],
            [{"value": "a", "score": 1.0}, {"value": "b", "score": 2.5}],
            [{"value": "a", "score": 1.0}, {"value": "b", "score": 2.5}],
            id="withscores",
        ),
        pytest.param(
            "LRANGE",
            {"args": [0, -1]},
            [str(n) for n in range(9)],
            [{"value": str(n)} for n in range(CAP)],
            [str(n) for n in range(CAP)],
            id="list-capped",
        ),
        pytest.param(
            "JSON.GET", {}, '{"status": "x"}', [{"status": "x"}], {"status": "x"}, id="json"
        ),
    ],
)
def test_shape_reply__rows_and_data(
    command: str, fields: dict[str, Any], reply: Any, rows: Any, data: Any
) -> None:
    assert shape(command, reply, **fields) == (rows, data)


# -- SCAN and INFO -----------------------------------------------------------------------

SCAN = ScanSpec(match="order:{customer_phone}:*", count=100, max_keys=20, type="hash", values=True)


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        pytest.param("+1234567890", "order:+1234567890:*", id="plain"),
        pytest.param("*", r"order:\*:*", id="star"),
        pytest.param("a?[b]\\", r"order:a\?\[b\]\\:*", id="every-glob-character"),
    ],
)
def test_scan_pattern__a_parameter_cannot_widen_it(value: str, pattern: str) -> None:
    assert scan_pattern(SCAN, {"customer_phone": value}) == pattern


@given(st.text(max_size=20))
def test_glob_escape__leaves_no_unescaped_glob_character(text: str) -> None:
    unescaped = re.sub(r"\\.", "", glob_escape(text))
    assert not set(unescaped) & set("*?[]\\")


def test_scan_line__never_keys_and_the_type_when_asked() -> None:
    assert scan_line("0", "p*", SCAN) == [
        "SCAN",
        "0",
        "MATCH",
        "p*",
        "COUNT",
        "100",
        "TYPE",
        "hash",
    ]
    untyped = ScanSpec(match="p*", count=10, max_keys=None, type=None, values=False)
    assert scan_line("17", "p*", untyped) == ["SCAN", "17", "MATCH", "p*", "COUNT", "10"]


def test_scanned_rows__values_by_type_capped() -> None:
    keys = ["h", "l", "s", "x"]
    types = ["hash", "list", "set", "stream"]
    lines = value_lines(keys, types, CAP)
    assert lines == {
        "h": ["HGETALL", "h"],
        "l": ["LRANGE", "l", "0", "4"],
        "s": ["SRANDMEMBER", "s", "5"],
    }
    replies = {"h": ["a", "1"], "l": ["1", "2"], "s": ["z", "y"]}
    assert scanned_rows(keys, types, replies, CAP) == [
        {"key": "h", "type": "hash", "value": {"a": "1"}},
        {"key": "l", "type": "list", "value": ["1", "2"]},
        {"key": "s", "type": "set", "value": ["y", "z"]},
        {"key": "x", "type": "stream", "value": None},
    ]


INFO_TEXT = "# Memory\r\nused_memory:1024\r\nused_memory_human:1.00K\r\n\r\n# Server\r\nx:y:z\r\n"


def test_info_result__one_row_of_every_field() -> None:
    result = info_result(InfoSpec(section="memory", rows="row"), INFO_TEXT, CAP)
    assert result.rows == [{"used_memory": "1024", "used_memory_human": "1.00K", "x": "y:z"}]


def test_info_result__a_row_per_field_capped() -> None:
    result = info_result(InfoSpec(section=None, rows="fields"), INFO_TEXT, 2)
    assert result.rows == [
        {"section": "memory", "field": "used_memory", "value": "1024"},
        {"section": "memory", "field": "used_memory_human", "value": "1.00K"},
    ]


def test_info_result__nothing_is_not_found() -> None:
    assert info_result(InfoSpec(section=None, rows="row"), "", CAP).rows == []


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "command", "message"),
    [
        pytest.param(
            "unknown command 'JSON.GET', with args beginning with: 'secret'",
            "JSON.GET",
            "no RedisJSON module",
            id="no-json-module",
        ),
        pytest.param(
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "HGETALL",
            "WRONGTYPE",
            id="wrongtype",
        ),
        pytest.param(
            "ERR value is out of range, with args beginning with: '+1234567890'",
            "LINDEX",
            "Redis refused LINDEX: ERR value is out of range",
            id="echoed-args-dropped",
        ),
    ],
)
def test_refusal_message__never_repeats_the_arguments(
    text: str, command: str, message: str
) -> None:
    said = refusal_message(text, command)
    assert message in said
    assert "+1234567890" not in said and "secret" not in said

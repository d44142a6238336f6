"""Redis sources: allow-listed read commands on a small pool of connections.

A query names one read command and its key (``{"command": "HGETALL", "key":
"order:{order_id}"}``), or walks the keyspace (SCAN), or reads INFO. The
package is three concepts, each its own module:

- `connectors.redis.commands`: the command table, the query models, binding,
  windowing, SCAN and INFO shaping, replies as rows: pure functions, no I/O
  (its docstring tells what a query may say and what a read returns);
- `connectors.redis.pool`: connections (TLS, the socket deadline, a dead
  pooled connection replaced, one exchange of commands);
- `connectors.redis.connector`: `RedisConnector`, the `Connector` over both;
- `connectors.redis.settings`: the ``connection`` model.
"""

from __future__ import annotations

from connectors.redis.commands import (
    READ_COMMANDS,
    InfoSpec,
    RedisInfoQuery,
    RedisQuery,
    RedisScanQuery,
    RedisSpec,
    ScanSpec,
    glob_escape,
)
from connectors.redis.connector import RedisConnector
from connectors.redis.pool import PoolStats
from connectors.redis.settings import RedisSettings

__all__ = [
    "READ_COMMANDS",
    "InfoSpec",
    "PoolStats",
    "RedisConnector",
    "RedisInfoQuery",
    "RedisQuery",
    "RedisScanQuery",
    "RedisSettings",
    "RedisSpec",
    "ScanSpec",
    "glob_escape",
]

"""GraphQL sources: a configured query document, its variables bound from parameters.

A query, as the contract writes it::

    {"document": "query ($id: ID!) { order(id: $id) { status tracking } }",
     "variables": {"id": "{order_id}"},
     "result": "order"}

- ``document`` is parsed with gql when the config loads: a syntax error is a
  configuration error, and a ``mutation`` or ``subscription`` anywhere in it
  is refused as not a read. With several operations, ``operation_name`` picks
  one. ``variables`` must name variables the operation declares, and give
  every required one. A parameter is never put into the document: a string
  literal holding ``{name}`` there is refused (use a ``$variable``).
- In ``variables``, a string that is exactly ``{name}`` becomes the
  parameter's typed value (a longer string gets it as text). The request is a
  POST of ``{"query", "variables"}`` JSON to the connection's ``url`` through
  the safe HTTP layer; being a query it is idempotent, so retried on a connect
  error, 429 or 503 within the deadline.
- The answer: a non-empty ``errors`` list is a source failure whose text is
  the first error's message, on one line, trimmed, with parameter values and
  secrets masked. Otherwise ``result`` (a dotted path) is read inside ``data``:
  a null, an empty list or a 404 is *not found*, a list one row per item, an
  object one row.

Connection: ``url`` (the endpoint; ``base_url``, the origin every request and
redirect must stay on, is derived from it), ``headers`` (``"Bearer
{api_key}"`` names the ``api_key`` field) and the other `HTTPSettings` fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

from gql import gql
from graphql import (
    DocumentNode,
    ExecutableDefinitionNode,
    GraphQLError,
    NonNullTypeNode,
    OperationDefinitionNode,
    OperationType,
    StringValueNode,
    Visitor,
    visit,
)
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from connectors.base import (
    Bound,
    ConfigError,
    Connector,
    NotARead,
    PreparedQuery,
    ReadResult,
    bind_placeholders,
    first_error,
    placeholder_names,
)
from connectors.http_base import (
    HTTPResponse,
    HTTPSettings,
    SafeHTTP,
    dig,
    result_of,
    safe_message,
)

__all__ = ["GraphQLConnector", "GraphQLQuery", "GraphQLSettings", "GraphQLSpec"]

_HEALTH_TIMEOUT_S = 10.0
_HEALTH_DOCUMENT = "query { __typename }"
_ACCEPT = "application/graphql-response+json, application/json;q=0.9"
_DOTTED = r"^[^.\s]+(\.[^.\s]+)*$"


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    return f"{parts.scheme}://{parts.netloc}"


class GraphQLSettings(HTTPSettings):
    """``connection`` of a ``graphql`` source: the endpoint ``url`` and ``headers``."""

    # A rejected value would otherwise be echoed, api_key and all, in the error's text.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    #: the GraphQL endpoint, e.g. ``https://shop.example/graphql``
    url: str
    #: derived from ``url``; give it only to say the same origin again
    base_url: str = ""

    @model_validator(mode="before")
    @classmethod
    def _derive_base_url(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("url"), str):
            origin = _origin(data["url"])
            if origin is not None and not data.get("base_url"):
                return {**data, "base_url": origin}
        return data

    @field_validator("url")
    @classmethod
    def _absolute(cls, value: str) -> str:
        parts = urlsplit(value)
        if _origin(value) is None:
            raise ValueError("url must be an absolute http(s) URL without credentials")
        if parts.fragment:
            raise ValueError("url takes no fragment")
        return value

    @model_validator(mode="after")
    def _same_origin(self) -> GraphQLSettings:
        if _origin(self.url) != _origin(self.base_url) or urlsplit(self.base_url).path not in (
            "",
            "/",
        ):
            raise ValueError("base_url, when given, must be the origin of url")
        return self


class GraphQLQuery(BaseModel):
    """One configured GraphQL read, as written in the config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    document: str = Field(min_length=1)
    variables: dict[str, Any] = Field(default_factory=dict)
    result: str | None = Field(default=None, pattern=_DOTTED)
    operation_name: str | None = Field(default=None, pattern=r"^[_A-Za-z][_0-9A-Za-z]*$")


@dataclass(frozen=True)
class GraphQLSpec:
    """A checked query: the document text to send and what to bind and read."""

    document: str
    operation_name: str | None
    variables: dict[str, Any]
    result: str | None


class GraphQLConnector(Connector):
    """Runs configured GraphQL queries against one endpoint."""

    type_name: ClassVar[str] = "graphql"
    Settings = GraphQLSettings
    query_shape: ClassVar[str] = (
        '{"document": "query ($id: ID!) { order(id: $id) { status } }", '
        '"variables": {"id": "{order_id}"}, "result": "order"}'
    )

    settings: GraphQLSettings

    def setup(self) -> None:
        self._http = SafeHTTP.within(
            self.source_id, self.settings, max_bytes=self.limits.max_bytes, base_dir=self.base_dir
        )

    @classmethod
    def prepare(cls, raw: str | Mapping[str, Any]) -> PreparedQuery:
        body: Any = {"document": raw} if isinstance(raw, str) else raw
        if not isinstance(body, Mapping):
            raise ConfigError('a graphql query is a mapping with "document" and "variables"')
        try:
            query = GraphQLQuery.model_validate(body)
        except ValidationError as exc:
            raise ConfigError("graphql query: " + first_error(exc)) from None
        operation = _operation(_parse(query.document), query.operation_name)
        _check_variables(operation, query.variables)
        spec = GraphQLSpec(
            query.document.strip(), query.operation_name, query.variables, query.result
        )
        return PreparedQuery(spec=spec, names=placeholder_names(query.variables))

    async def close(self) -> None:
        await self._http.close()

    async def health_check(self) -> None:
        document = await self._post(
            {"query": _HEALTH_DOCUMENT}, timeout_s=_HEALTH_TIMEOUT_S, hide=()
        )
        if not isinstance(dig(document, "data.__typename"), str):
            raise self.fail("the endpoint did not answer a GraphQL query")

    async def run(self, query: PreparedQuery, bound: Bound, *, timeout_s: float) -> ReadResult:
        spec = query.spec
        if not isinstance(spec, GraphQLSpec):
            raise self.fail("the query was not prepared by the graphql connector")
        payload: dict[str, Any] = {
            "query": spec.document,
            "variables": bind_placeholders(spec.variables, bound.params),
        }
        if spec.operation_name:
            payload["operationName"] = spec.operation_name
        document = await self._post(payload, timeout_s=timeout_s, hide=bound.params.values())
        if document is None:
            return ReadResult(rows=[])
        return result_of(dig(document.get("data"), spec.result), max_rows=self.limits.max_rows)

    async def _post(
        self, payload: dict[str, Any], *, timeout_s: float, hide: Any
    ) -> dict[str, Any] | None:
        """The decoded answer, None for a 404; errors for failures and ``errors`` lists."""
        response = await self._http.request(
            "POST",
            self.settings.url,
            timeout_s=timeout_s,
            idempotent=True,  # queries only: prepare() refused everything else
            json_body=payload,
            headers=self._accept(),
        )
        if response.status in (401, 403):
            self._http.check(response)
        document = response.json()
        if isinstance(document, dict) and document.get("errors"):
            raise self.fail("the source answered an error: " + self._first_message(document, hide))
        if self._http.check(response) is None:
            return None
        if not isinstance(document, dict) or "data" not in document:
            raise self.fail(f"the answer is not a GraphQL response ({_kind(response)})")
        return document

    def _first_message(self, document: dict[str, Any], hide: Any) -> str:
        errors = document["errors"]
        first = errors[0] if isinstance(errors, list) else errors
        message = first.get("message") if isinstance(first, dict) else first
        secrets = [
            v.get_secret_value()
            for v in (getattr(self.settings, n) for n in type(self.settings).model_fields)
            if isinstance(v, SecretStr)
        ]
        return safe_message(str(message or "no message"), [*hide, *secrets]) or "no message"

    def _accept(self) -> dict[str, str]:
        configured = {name.lower() for name in self.settings.headers}
        return {} if "accept" in configured else {"Accept": _ACCEPT}


# -- checking a document ------------------------------------------------------------


def _parse(document: str) -> DocumentNode:
    try:
        parsed: DocumentNode = gql(document).document
    except GraphQLError as exc:
        where = "".join(f" (line {loc.line}, column {loc.column})" for loc in exc.locations or [])
        raise ConfigError(f"the GraphQL document does not parse: {exc.message}{where}") from None
    for definition in parsed.definitions:
        if not isinstance(definition, ExecutableDefinitionNode):
            raise ConfigError("the GraphQL document may hold only operations and fragments")
    visit(parsed, _NoPlaceholders())
    return parsed


class _NoPlaceholders(Visitor):
    """``{name}`` in a string literal would be sent as is, never a parameter."""

    def enter_string_value(self, node: StringValueNode, *_: Any) -> None:
        if placeholder_names(node.value):
            raise ConfigError(
                f"the GraphQL document holds {node.value!r}: parameters go in variables "
                '(declare "$name" in the operation and bind it under "variables")'
            )


def _operation(document: DocumentNode, name: str | None) -> OperationDefinitionNode:
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    for operation in operations:
        if operation.operation is not OperationType.QUERY:
            raise NotARead(
                f"a GraphQL {operation.operation.value} is not a read: only queries are allowed"
            )
    if not operations:
        raise ConfigError("the GraphQL document has no query")
    if name is not None:
        for operation in operations:
            if operation.name is not None and operation.name.value == name:
                return operation
        raise ConfigError(f"the GraphQL document has no operation named {name!r}")
    if len(operations) > 1:
        raise ConfigError(
            "the GraphQL document has several operations: say which in operation_name"
        )
    return operations[0]


def _check_variables(operation: OperationDefinitionNode, variables: Mapping[str, Any]) -> None:
    declared = {v.variable.name.value: v for v in operation.variable_definitions or ()}
    unknown = sorted(set(variables) - set(declared))
    if unknown:
        raise ConfigError(
            f"variables {', '.join(unknown)} are not declared by the operation"
            f" (it declares: {', '.join(declared) or 'none'})"
        )
    missing = [
        name
        for name, definition in declared.items()
        if isinstance(definition.type, NonNullTypeNode)
        and definition.default_value is None
        and name not in variables
    ]
    if missing:
        raise ConfigError(f"required variables {', '.join(missing)} are not bound under variables")


def _kind(response: HTTPResponse) -> str:
    media: str = response.headers.get("content-type", "no content type")
    return media.split(";")[0]

"""The tenant config's JSON Schema (``worker config schema``), for editors and linters.

It is drawn from the same pydantic models that load a config (`worker.config_model`),
so it cannot drift from them: `TenantConfig` for the document, and for each
source type whose connector is installed, that connector's own settings model
under ``connection`` (an ``if``/``then`` on the source's ``type``). Where a
value may be a secret reference (``enc:v1:…`` or ``${env:NAME}``, resolved
before the settings are checked) the schema says so, so an example written
with references validates as the worker would load it.

What the schema does not say, ``worker config check`` still checks: queries
(free-form here: their shape is each connector's), templates, lookups naming
sources, and everything a connection model checks in code.
"""

from __future__ import annotations

from typing import Any

from pydantic.errors import PydanticUserError

from connectors.registry import available
from worker.config_model import TenantConfig

__all__ = ["DIALECT", "tenant_schema"]

#: draft-07: what editors' YAML support (VS Code's, from vscode-json-languageservice) reads;
#: pydantic's output uses nothing newer (``$defs`` is only where the ``$ref``s point)
DIALECT = "http://json-schema.org/draft-07/schema#"

_REFERENCE = "SecretReference"
_KEPT_OUTSIDE = ("title", "description", "default")


def tenant_schema() -> dict[str, Any]:
    """The JSON Schema (draft-07) of a tenant config, as a plain dict."""
    schema = TenantConfig.model_json_schema()
    # A config without tenant_id takes its file's name (config/tenants/<tenant>.yaml).
    schema["required"] = [name for name in schema.get("required", []) if name != "tenant_id"]
    if not schema["required"]:
        del schema["required"]
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    defs[_REFERENCE] = {
        "description": "enc:v1:… (worker secrets encrypt) or ${env:NAME}: resolved when "
        "the config loads, only inside connection settings",
        "type": "string",
        "pattern": r"^enc:v1:|\$\{env:[A-Za-z_][A-Za-z0-9_]*\}",
    }
    source = defs["SourceConfig"]
    names, branches = _connections(defs)
    source["properties"]["type"]["enum"] = names
    source["properties"]["connection"]["description"] = (
        "The source's connection settings: their keys depend on `type` "
        "(see `worker connectors`); secrets as enc:v1:… or ${env:NAME}"
    )
    if branches:
        source["allOf"] = branches
    schema["title"] = "Tenant config of the data-lookup worker"
    return {"$schema": DIALECT, **schema}


def _connections(defs: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """Every source type's name, and an ``if type is T then connection is T's settings``
    for each whose connector is installed (its models added to ``defs`` as ``T.…``)."""
    names, branches = [], []
    for info in available():
        names.append(info.type_name)
        if info.cls is None:
            continue  # its driver is not installed: its connection stays free-form
        prefix = f"{info.type_name}."
        try:
            settings = info.cls.Settings.model_json_schema(
                ref_template=f"#/$defs/{prefix}{{model}}"
            )
        except PydanticUserError:
            continue  # a settings model pydantic cannot draw: free-form too
        for name, sub in settings.pop("$defs", {}).items():
            defs[prefix + name] = _allow_references(sub)
        defs[prefix + "connection"] = _allow_references(settings)
        when = {"properties": {"type": {"const": info.type_name}}, "required": ["type"]}
        then = {"properties": {"connection": {"$ref": f"#/$defs/{prefix}connection"}}}
        branches.append({"if": when, "then": then})
    return sorted(names), branches


def _allow_references(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every value inside it also allowed as a secret reference."""
    properties = schema.get("properties")
    if isinstance(properties, dict):
        for key, sub in properties.items():
            properties[key] = _or_reference(sub)
    for key in ("additionalProperties", "items"):
        if isinstance(schema.get(key), dict):
            schema[key] = _or_reference(schema[key])
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            _allow_references(sub)
    return schema


def _or_reference(schema: dict[str, Any]) -> dict[str, Any]:
    inner = _allow_references(dict(schema))
    outer = {key: inner.pop(key) for key in _KEPT_OUTSIDE if key in inner}
    return {**outer, "anyOf": [inner, {"$ref": f"#/$defs/{_REFERENCE}"}]}

"""Examples of every JSON success response in the OpenAPI document (what `/docs` shows).

Each response schema carries its own example (`model_config = ConfigDict(json_schema_extra=
{"examples": [...]})`); lists and pages of them (`list[RunOut]`, `Page[RunOut]`) get theirs made
from their items' example here, so a new response model needs only its own example.
FastAPI leaves every null out of the document, the nulls of examples too; those of required
fields are put back here (`"error": null` of a run that did not fail).
`tests/unit/test_openapi_client.py` checks that every operation has one and that each example
matches its schema. Error responses get theirs in `backend.errors`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

JSON = "application/json"


def example_of(schema: dict[str, Any], components: dict[str, Any], depth: int = 0) -> Any:
    """An example value for `schema`: its own example, else one made from the examples of its
    parts (a `$ref`, array items, object properties, the non-null branch of `anyOf`); None where
    a required part has none."""
    if depth > 20:
        return None
    if "example" in schema:
        return schema["example"]
    if schema.get("examples"):
        return schema["examples"][0]
    if "$ref" in schema:
        target = components.get(schema["$ref"].rsplit("/", 1)[-1])
        return None if target is None else example_of(target, components, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        options = [s for s in schema.get(key, []) if s.get("type") != "null"]
        if options:
            return example_of(options[0], components, depth + 1)
    if schema.get("type") == "array" and "items" in schema:
        item = example_of(schema["items"], components, depth + 1)
        return None if item is None else [item]
    if "properties" in schema:
        out: dict[str, Any] = {}
        required = set(schema.get("required", []))
        for name, prop in schema["properties"].items():
            value = example_of(prop, components, depth + 1)
            if value is not None:
                out[name] = value
            elif "default" in prop:
                out[name] = prop["default"]
            elif name in required:
                return None
        return out
    return None


def _resolve(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    for _ in range(20):
        if "$ref" not in schema:
            break
        schema = components.get(schema["$ref"].rsplit("/", 1)[-1], {})
    return schema


def _nullable(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "null" or any(
        s.get("type") == "null" for s in schema.get("anyOf", []) + schema.get("oneOf", [])
    )


def restore_nulls(
    value: Any, schema: dict[str, Any], components: dict[str, Any], depth: int = 0
) -> None:
    """Put back, in place, the nulls of `value`'s required fields that may be null."""
    schema = _resolve(schema, components)
    if depth > 20:
        return
    branches = [
        s for s in schema.get("anyOf", []) + schema.get("oneOf", []) if s.get("type") != "null"
    ]
    if branches:
        restore_nulls(value, branches[0], components, depth + 1)
    if isinstance(value, list) and "items" in schema:
        for item in value:
            restore_nulls(item, schema["items"], components, depth + 1)
    if isinstance(value, dict) and "properties" in schema:
        required = set(schema.get("required", []))
        for name, prop in schema["properties"].items():
            if name in value:
                restore_nulls(value[name], prop, components, depth + 1)
            elif name in required and _nullable(prop):
                value[name] = None


def add_examples(schema: dict[str, Any]) -> dict[str, Any]:
    """Give each 2xx JSON response of `schema` (an OpenAPI document) an `example` where it has
    none, and put back the nulls FastAPI left out of examples; idempotent."""
    components = schema.get("components", {}).get("schemas", {})
    for component in components.values():
        for example in component.get("examples") or []:
            restore_nulls(example, component, components)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for code, response in operation.get("responses", {}).items():
                media = response.get("content", {}).get(JSON)
                if not code.startswith("2") or media is None:
                    continue
                if media.get("example") is not None or media.get("examples"):
                    continue
                value = example_of(media.get("schema", {}), components)
                if value is not None:
                    media["example"] = value
    return schema


def install(app: FastAPI) -> None:
    """Fill in the success examples each time the OpenAPI document is built."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        return add_examples(build())

    app.openapi = openapi  # type: ignore[method-assign]

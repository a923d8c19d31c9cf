"""The REST API documents itself completely, and the typed client covers every route.

No database is needed: both read the app's routes and its OpenAPI document only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

PUBLIC = {("post", "/api/v1/auth/token"), ("get", "/api/v1/health")}
ERROR_REF = "#/components/schemas/ErrorOut"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    from backend.app import create_app

    return create_app().openapi()


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, ops in spec["paths"].items()
        if path.startswith("/api/v1/")
        for method, op in ops.items()
    ]


def _has_example(spec: dict[str, Any], media: dict[str, Any]) -> bool:
    if media.get("example") is not None or media.get("examples"):
        return True
    schema = media.get("schema", {})
    ref = schema.get("$ref") or next(
        (s.get("$ref") for s in schema.get("anyOf", []) if "$ref" in s), None
    )
    if ref:
        schema = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return bool(schema.get("examples") or schema.get("example"))


def test_every_route_is_documented(spec: dict[str, Any]) -> None:
    problems = []
    for method, path, op in _operations(spec):
        where = f"{method.upper()} {path}"
        responses = op.get("responses", {})
        if not op.get("summary"):
            problems.append(f"{where}: no summary")
        success = {code: r for code, r in responses.items() if code.startswith("2")}
        if not success:
            problems.append(f"{where}: no success response")
        for code, response in success.items():
            if code != "204" and not response.get("content"):
                problems.append(f"{where}: {code} has no response model or content type")
        needed = {"503"}
        if (method, path) not in PUBLIC:
            needed.add("401")
        if "{" in path:
            needed |= {"404", "422"}
        if op.get("parameters") or op.get("requestBody"):
            needed.add("422")
        for code in sorted(needed - set(responses)):
            problems.append(f"{where}: {code} not documented")
        for code, response in responses.items():
            media = response.get("content", {}).get("application/json")
            if code[0] in "45" and (method, path) != ("get", "/api/v1/health"):
                if (media or {}).get("schema", {}).get("$ref") != ERROR_REF:
                    problems.append(f'{where}: {code} does not use the {{"detail"}} schema')
                elif not isinstance((media.get("example") or {}).get("detail"), str):
                    problems.append(f'{where}: {code} has no example {{"detail": ...}}')
            elif media is not None and media.get("example") is None and not media.get("examples"):
                problems.append(f"{where}: the JSON of {code} has no example")
        for kind, body in op.get("requestBody", {}).get("content", {}).items():
            if not _has_example(spec, body):
                problems.append(f"{where}: the {kind} body has no example")
    assert not problems, "\n".join(problems)


def _examples(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any], Any]]:
    """(where, schema, example) for every example of the document: of operations' bodies and
    responses, and of the component schemas."""
    found = []
    for method, path, op in _operations(spec):
        medias = [
            (f"{method.upper()} {path} body {kind}", media)
            for kind, media in op.get("requestBody", {}).get("content", {}).items()
        ]
        medias += [
            (f"{method.upper()} {path} {code} {kind}", media)
            for code, response in op.get("responses", {}).items()
            for kind, media in response.get("content", {}).items()
        ]
        for where, media in medias:
            schema = media.get("schema", {})
            if "example" in media:
                found.append((where, schema, media["example"]))
            for name, example in (media.get("examples") or {}).items():
                found.append((f"{where} [{name}]", schema, example["value"]))
    for name, schema in spec["components"]["schemas"].items():
        for i, example in enumerate(schema.get("examples") or []):
            found.append((f"components.schemas.{name}.examples[{i}]", schema, example))
    return found


def test_every_example_matches_its_schema(spec: dict[str, Any]) -> None:
    from jsonschema import Draft202012Validator

    examples = _examples(spec)
    problems = []
    for where, schema, example in examples:
        # refs (#/components/schemas/...) resolve against the document itself
        validator = Draft202012Validator({**schema, "components": spec["components"]})
        problems += [f"{where}: {e.json_path}: {e.message}" for e in validator.iter_errors(example)]
    assert not problems, "\n".join(problems)
    counted = {
        (m, p)
        for m, p, op in _operations(spec)
        for code, r in op["responses"].items()
        if code.startswith("2") and "example" in r.get("content", {}).get("application/json", {})
    }
    print(
        f"{len(examples)} examples checked; {len(counted)} operations with a JSON success example"
    )


def test_run_config_examples(spec: dict[str, Any]) -> None:
    body = spec["paths"]["/api/v1/runs"]["post"]["requestBody"]["content"]["application/json"]
    examples = body["examples"]
    assert {"kd_at", "kd_only", "from_registered_student"} <= set(examples)
    from core.config import RunConfig

    for example in examples.values():  # every example is a valid run config
        RunConfig.model_validate(example["value"])
    error = spec["components"]["schemas"]["ErrorOut"]
    assert error["required"] == ["detail"] and error["properties"]["detail"]["type"] == "string"


def test_the_client_covers_every_route() -> None:
    """Each (method, path) of the app is called by some method of `client.Client`."""
    import client
    from backend.app import create_app

    package = Path(client.__file__).parent  # one module per resource
    source = "\n".join(path.read_text() for path in sorted(package.glob("*.py")))
    calls = {
        (m, p) for m, p in re.findall(r'_(?:json|send|stream)\(\s*"(\w+)",\s*f?"([^"]+)"', source)
    }
    calls |= {("GET", p) for p in re.findall(r'_download\(\s*f?"([^"]+)"', source)}
    calls |= {("GET", p) for p in re.findall(r'_read\(\s*f?"([^"]+)"', source)}  # conditional
    calls |= {("POST", p) for p in re.findall(r'_upload\(\s*f?"([^"]+)"', source)}
    covered = {(m, re.sub(r"{[^}]*}", "{}", p)) for m, p in calls}

    try:
        from fastapi.routing import iter_route_contexts

        routes = list(iter_route_contexts(create_app().routes))
    except ImportError:  # pragma: no cover - older FastAPI
        routes = list(create_app().routes)
    missing = []
    for route in routes:
        path = getattr(route, "path", "") or ""
        if not path.startswith("/api/v1/"):
            continue
        for method in getattr(route, "methods", None) or ():
            if method != "HEAD" and (method, re.sub(r"{[^}]*}", "{}", path[7:])) not in covered:
                missing.append(f"{method} {path}")
    assert not missing, "no client method calls: " + ", ".join(sorted(missing))

"""The OpenAPI document: valid 3.1, and it covers every endpoint of docs/protocol.md."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from backend.api.routes import ROUTE_TABLE
from backend.openapi import ERROR_CODES, build_openapi
from federated.protocol import convert, to_wire
from federated.protocol.examples import EXAMPLES
from federated.protocol.schema import MESSAGES

PROTOCOL = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"


def protocol_endpoints() -> list[tuple[str, str]]:
    """(method, path) for each row of the protocol's endpoint table."""
    rows: list[tuple[str, str]] = []
    for line in PROTOCOL.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\|\s*(GET|POST|PUT|DELETE|PATCH)\s*\|\s*(.+?)\s*\|", line)
        if not m:
            continue
        for path in re.findall(r"`([^`]+)`", m.group(2)):
            rows.append((m.group(1).lower(), path.split("?")[0]))
    return rows


def resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def all_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        refs = [node["$ref"]] if "$ref" in node else []
        return refs + [r for v in node.values() for r in all_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in all_refs(v)]
    return []


def test_document_is_valid_openapi_31() -> None:
    validator = pytest.importorskip(
        "openapi_spec_validator", reason="openapi-spec-validator is a dev dependency"
    )
    doc = build_openapi("https://barn.example")
    validator.validate(doc)
    assert doc["openapi"].startswith("3.1")
    json.dumps(doc, allow_nan=False)


def test_every_protocol_endpoint_is_documented() -> None:
    endpoints = protocol_endpoints()
    assert len(endpoints) >= 18, "the protocol table parser found too few rows"
    paths = build_openapi()["paths"]
    missing = [(m, p) for m, p in endpoints if m not in paths.get(p, {})]
    assert missing == []
    documented = {(m, p) for p, item in paths.items() for m in item if m != "parameters"}
    assert documented == set(endpoints), "the document has endpoints the protocol lacks"


def test_path_parameters_have_patterns() -> None:
    doc = build_openapi()
    for path, item in doc["paths"].items():
        names = set(re.findall(r"\{(\w+)\}", path))
        params = [resolve(doc, p["$ref"]) if "$ref" in p else p for p in item.get("parameters", [])]
        declared = {p["name"] for p in params if p["in"] == "path"}
        assert declared == names, path
        for p in params:
            schema = p["schema"]
            if "$ref" in schema:
                schema = resolve(doc, schema["$ref"])
            assert "pattern" in schema, (path, p["name"])


def test_refs_resolve_and_operation_ids_are_unique() -> None:
    doc = build_openapi()
    for ref in all_refs(doc):
        resolve(doc, ref)
    ids = [
        op["operationId"]
        for item in doc["paths"].values()
        for k, op in item.items()
        if k != "parameters"
    ]
    assert len(ids) == len(set(ids))


def test_upload_binary_headers_and_statuses() -> None:
    doc = build_openapi()
    put = doc["paths"]["/api/v1/projects/{project}/tasks/{task_id}/update"]["put"]
    headers = {p["name"] for p in put["parameters"] if p["in"] == "header"}
    assert headers == {
        "X-Barnraise-Manifest",
        "X-Barnraise-Signature",
        "Content-Range",  # a resumed chunk (issue 13)
        "Content-Digest",
    }
    assert "application/octet-stream" in put["requestBody"]["content"]
    assert {"200", "201", "202", "409", "413", "422", "429"} <= set(put["responses"])
    assert put["security"] == [{"bearerAuth": []}]
    model = doc["paths"]["/api/v1/projects/{project}/models/{digest}"]["get"]
    assert {"200", "206", "304"} <= set(model["responses"])
    lease = doc["paths"]["/api/v1/projects/{project}/tasks/lease"]["post"]
    assert "Retry-After" in lease["responses"]["204"]["headers"]
    assert [p["name"] for p in lease["parameters"]] == ["wait"]
    release = doc["paths"]["/api/v1/projects/{project}/tasks/{task_id}/release"]["post"]
    assert "204" in release["responses"]


def test_request_schemas_carry_the_protocol_limits() -> None:
    schemas = build_openapi()["components"]["schemas"]
    join = schemas["JoinRequest"]
    assert join["properties"]["display_name"]["maxLength"] == 64
    assert join["properties"]["team"]["anyOf"][0]["maxLength"] == 64
    assert join["additionalProperties"] is False
    assert schemas["UpdateManifest"]["additionalProperties"] is False
    assert schemas["UpdateManifest"]["properties"]["metrics"]["maxProperties"] == 32
    assert schemas["ProjectName"]["pattern"] == r"^[a-z0-9][a-z0-9-]{0,62}$"
    assert schemas["Digest"]["pattern"] == r"^[0-9a-f]{64}$"
    assert schemas["ErrorBody"]["required"] == ["error"]


def test_no_pattern_is_in_python_only_syntax() -> None:
    text = json.dumps(build_openapi())
    assert r"\\Z" not in text  # Python's end anchor; JSON Schema patterns are ECMA-262


def test_every_route_is_documented_with_its_method() -> None:
    paths = build_openapi()["paths"]
    for route in ROUTE_TABLE:
        op = paths[route.path][route.method.lower()]
        assert op["operationId"] == route.name
        assert route.regex.match(
            route.path.replace("{project}", "digits")
            .replace("{task_id}", "t" * 22)
            .replace("{digest}", "0" * 64)
        )
    assert sum(len([k for k in item if k != "parameters"]) for item in paths.values()) == len(
        ROUTE_TABLE
    )


def test_every_example_validates_against_its_schema_and_its_type() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    doc = build_openapi()
    schemas = doc["components"]["schemas"]
    assert set(EXAMPLES) >= set(MESSAGES), "every message has an example"
    for message, example in EXAMPLES.items():
        schema = schemas[message.__name__]
        [shown] = schema["examples"]
        assert shown == to_wire(example)
        resolver_doc = {**schema, "components": doc["components"]}
        jsonschema.Draft202012Validator(resolver_doc).validate(shown)
        assert convert(shown, message, what=message.__name__) == example


def test_error_codes_match_the_protocol() -> None:
    text = PROTOCOL.read_text(encoding="utf-8")
    section = text.split("## Error codes", 1)[1]
    assert set(re.findall(r"`([a-z_]+)`", section)) == set(ERROR_CODES)


def test_security_scheme_is_bearer() -> None:
    doc = build_openapi()
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"],
    }

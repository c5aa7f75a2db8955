"""The OpenAPI 3.1 document, generated from the route table and the protocol's types.

Paths come from ``backend.api.routes.ROUTE_TABLE`` (the table the router matches), bodies
and answers from the message types of ``federated.protocol`` (their JSON Schema, with one
example each), error answers from ``federated.protocol.ERROR_STATUS``. Nothing here is
written twice, so the document cannot disagree with the code. Each ``operationId`` is the
route's name. Request schemas are closed (unknown fields are refused); answer schemas are
open (the server may add fields).
"""

from __future__ import annotations

import copy
import functools
from collections import defaultdict
from http import HTTPStatus
from typing import Any

from backend.api.routes import ROUTE_TABLE, Answer, Route
from federated import protocol
from federated.protocol.examples import EXAMPLES
from federated.protocol.ids import B64_32_PATTERN, B64_64_PATTERN
from federated.protocol.schema import message_schemas
from federated.protocol.wire import to_wire

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1"

Schema = dict[str, Any]

ERROR_CODES: tuple[str, ...] = tuple(protocol.ERROR_STATUS)
"""Every stable error code, in the protocol's order."""

_HEADERS: dict[str, Schema] = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 0},
        "required": True,
    },
    "ETag": {
        "description": 'A sha256 in quotes, "<hex>": of the model, or of the export file.',
        "schema": {"type": "string", "pattern": r'^"[0-9a-f]{64}"$'},
    },
    "Accept-Ranges": {"schema": {"const": "bytes"}},
    "Last-Modified": {
        "description": "When the export was generated (HTTP date).",
        "schema": {"type": "string"},
    },
    "Cache-Control": {
        "description": "public, max-age=SECONDS: until the next export is due.",
        "schema": {"type": "string", "pattern": r"^public, max-age=\d+$"},
    },
    "Content-Range": {
        "description": "bytes START-END/TOTAL",
        "schema": {"type": "string", "pattern": r"^bytes (\d+-\d+|\*)/\d+$"},
    },
    "Upload-Offset": {
        "description": "Bytes of the upload the coordinator holds: the next chunk's first.",
        "schema": {"type": "integer", "minimum": 0},
        "required": True,
    },
}
_HEADER_KEYS = {name: name.replace("-", "") for name in _HEADERS}
_MEDIA = {
    "json": "application/json",
    "binary": "application/octet-stream",
    "html": "text/html",
    "text": "text/plain",
    "gzip": "application/gzip",
}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _schemas() -> dict[str, Schema]:
    schemas = message_schemas()
    for message, example in EXAMPLES.items():
        schemas[message.__name__]["examples"] = [to_wire(example)]
    named = {
        "ProjectName": (protocol.PROJECT_NAME_PATTERN, "Lower-case letters, digits, '-'."),
        "Id": (protocol.ID_PATTERN, "A server-made id."),
        "Digest": (protocol.DIGEST_PATTERN, "sha256, hex."),
        "VersionNumber": (r"^(0|[1-9][0-9]{0,9})$", "A model version number, from 0."),
        "PublicKey": (B64_32_PATTERN, "Raw 32-byte Ed25519 public key, base64."),
        "Signature": (B64_64_PATTERN, "Raw 64-byte Ed25519 signature, base64."),
        "TeamName": (
            rf"^[^/]{{1,{protocol.MAX_TEAM_CHARS}}}$",
            "A team's name as stored, URL-encoded (UTF-8); a name holding '/' has no page.",
        ),
    }
    for name, (pattern, description) in named.items():
        schemas[name] = {"type": "string", "pattern": pattern, "description": description}
    detail = schemas["ErrorDetail"]["properties"]["code"]
    detail["description"] = "Stable machine-readable code, one of: " + ", ".join(ERROR_CODES)
    return schemas


def _error_responses() -> dict[str, Schema]:
    by_status: dict[int, list[str]] = defaultdict(list)
    for code, status in protocol.ERROR_STATUS.items():
        by_status[status].append(code)
    out: dict[str, Schema] = {}
    for status, codes in sorted(by_status.items()):
        response: Schema = {
            "description": HTTPStatus(status).phrase + ": " + ", ".join(codes) + ".",
            "content": {"application/json": {"schema": _ref("ErrorBody")}},
        }
        if status in (429, 503, 507):
            response["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
        out[str(status)] = response
    return out


def _answer(answer: Answer) -> Schema:
    out: Schema = {"description": answer.description}
    if answer.headers:
        out["headers"] = {
            h: {"$ref": f"#/components/headers/{_HEADER_KEYS[h]}"} for h in answer.headers
        }
    if answer.media is not None:
        schema = _ref(answer.message.__name__) if answer.message else {"type": "object"}
        if answer.media == "gzip" and answer.message:
            schema = {
                "type": "string",
                "contentMediaType": "application/gzip",
                "description": f"gzip of a {answer.message.__name__} JSON document (schema "
                f"in components: {answer.message.__name__}).",
            }
        elif answer.media != "json":
            schema = {"type": "string"}
        out["content"] = {_MEDIA[answer.media]: {"schema": schema}}
    return out


def _operation(route: Route) -> Schema:
    op: Schema = {"operationId": route.name, "summary": route.summary, "tags": [route.tag]}
    if route.description:
        op["description"] = route.description
    if route.bearer:
        op["security"] = [{"bearerAuth": []}]
    if route.params:
        op["parameters"] = [
            {
                "name": param.name,
                "in": param.where,
                "required": param.required,
                "description": param.description,
                "schema": param.schema,
            }
            for param in route.params
        ]
    if route.body == "binary":
        op["requestBody"] = {
            "required": True,
            "description": "The payload from federated.codec.encode_update (safetensors, "
            "optionally zstd).",
            "content": {
                "application/octet-stream": {
                    "schema": {"type": "string", "contentMediaType": "application/octet-stream"}
                }
            },
        }
    elif route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(route.body.__name__)}},
        }
    responses: Schema = {str(s): _answer(a) for s, a in route.answers.items()}
    for status in route.errors:
        if route.html_errors:
            responses[str(status)] = {
                "description": HTTPStatus(status).phrase + " (HTML).",
                "content": {"text/html": {"schema": {"type": "string"}}},
            }
        else:
            responses[str(status)] = {"$ref": f"#/components/responses/{status}"}
    op["responses"] = responses
    return op


_PATH_PARAM_SCHEMA = {
    "project": "ProjectName",
    "task_id": "Id",
    "update_id": "Id",
    "digest": "Digest",
    "version": "VersionNumber",
    "client_id": "Id",
    "team": "TeamName",
}


def _paths() -> dict[str, Schema]:
    paths: dict[str, Schema] = {}
    for route in ROUTE_TABLE:
        item = paths.setdefault(route.path, {})
        if route.path_params:
            item["parameters"] = [
                {"$ref": f"#/components/parameters/{name}"} for name in route.path_params
            ]
        item[route.method.lower()] = _operation(route)
    return paths


@functools.cache
def _document(server_url: str | None) -> dict[str, Any]:
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Barnraise coordinator",
            "version": API_VERSION,
            "summary": "Federated training on the computers people already own.",
            "description": "The wire contract between the Barnraise coordinator and its "
            "contributors (docs/protocol.md). JSON control messages, safetensors bodies, "
            "Ed25519 signatures over canonical JSON.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [{"name": tag} for tag in dict.fromkeys(r.tag for r in ROUTE_TABLE)],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "responses": _error_responses(),
            "headers": {_HEADER_KEYS[name]: h for name, h in _HEADERS.items()},
            "parameters": {
                name: {"name": name, "in": "path", "required": True, "schema": _ref(schema)}
                for name, schema in _PATH_PARAM_SCHEMA.items()
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The token from join; the server stores only its sha256.",
                }
            },
        },
    }
    if server_url:
        document["servers"] = [{"url": server_url.rstrip("/") or "/"}]
    return document


def build_openapi(server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document, a fresh deep copy each call (callers may mutate it)."""
    return copy.deepcopy(_document(server_url))

"""What the route table is made of: ``Route``, its ``Answer``s and ``Param``s.

``backend.api.routes`` holds the table itself (and re-exports these names), and
``backend.api.public_routes`` the public stats pages and exports; the router and the
OpenAPI document read only the table.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

API = "/api/v1"

Media = Literal["json", "binary", "html", "text", "gzip"]


@dataclass(frozen=True)
class Answer:
    """One success answer of a route: its description, body and headers."""

    description: str
    message: type[Any] | None = None
    media: Media | None = "json"
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Param:
    """A query or header parameter, with its JSON Schema."""

    name: str
    where: Literal["query", "header"]
    description: str
    schema: dict[str, Any]
    required: bool = False


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str
    handler: Callable[..., Any]
    summary: str
    tag: str
    answers: dict[int, Answer]
    errors: tuple[int, ...] = ()
    bearer: bool = False
    body: type[Any] | Literal["binary"] | None = None
    params: tuple[Param, ...] = ()
    description: str = ""
    html_errors: bool = False
    trailing_slash: bool = False
    regex: re.Pattern[str] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", _compile(self.path, self.trailing_slash))

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)


def _compile(path: str, trailing_slash: bool) -> re.Pattern[str]:
    """``/p/{project}`` -> ``^/p/(?P<project>[^/]+)$``: a segment per name, the rest literal."""
    parts = re.split(r"(\{\w+\})", path)
    body = "".join(f"(?P<{s[1:-1]}>[^/]+)" if s.startswith("{") else re.escape(s) for s in parts)
    return re.compile(f"^{body}{'/?' if trailing_slash else ''}$")
